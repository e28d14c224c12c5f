"""Small charts as inline SVG, drawn on the server: no JavaScript charting library, nothing to load.

`bar_chart` draws one or more series of daily values as grouped bars, `line_chart` one series as a line
with its points; both take the days (x) and series of numbers or None (a day without data: a gap), and
return markup safe to put in a template. The numbers are ints; names and dates are escaped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from config.display import number

WIDTH, HEIGHT = 640, 150
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 10, 22  # room for the axis labels


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[int | None]
    color: str  # a CSS colour, from the code (never user input)


def _frame(days: Sequence[date], top_value: int, title: str, body: list[str], series: Sequence[Series]) -> SafeString:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" style="max-width:{WIDTH}px" class="history-chart">',
        f"<title>{escape(title)}</title>",
        # Axis: the top value and zero on the left, the first and last days below.
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#999"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{WIDTH - RIGHT}" y2="{TOP}" stroke="#eee"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" font-size="10" fill="#666">'
        f"{escape(number(top_value))}</text>",
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" font-size="10" fill="#666">0</text>',
    ]
    if days:
        parts.append(
            f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="10" fill="#666">{escape(days[0].isoformat())}</text>'
            f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end" font-size="10" fill="#666">'
            f"{escape(days[-1].isoformat())}</text>"
        )
    parts += body
    legend_x = LEFT + 90
    for s in series:
        parts.append(
            f'<rect x="{legend_x}" y="{HEIGHT - 15}" width="9" height="9" fill="{s.color}"/>'
            f'<text x="{legend_x + 12}" y="{HEIGHT - 7}" font-size="10" fill="#333">{escape(s.name)}</text>'
        )
        legend_x += 14 + 7 * len(s.name)
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (every interpolated text above is escaped; numbers are ints)


def _top(series: Sequence[Series]) -> int:
    return max([v for s in series for v in s.values if v is not None] + [1])


def bar_chart(days: Sequence[date], series: Sequence[Series], *, title: str) -> SafeString:
    top = _top(series)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(days), 1)
    bar = max(slot * 0.8 / max(len(series), 1), 1)
    body = []
    for index, day in enumerate(days):
        for k, s in enumerate(series):
            value = s.values[index]
            if not value:
                continue
            h = value / top * plot_h
            x = LEFT + index * slot + slot * 0.1 + k * bar
            body.append(
                f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{s.color}">'
                f"<title>{escape(day.isoformat())}: {escape(s.name)} {escape(number(value))}</title></rect>"
            )
    return _frame(days, top, title, body, series)


def line_chart(days: Sequence[date], series: Series, *, title: str) -> SafeString:
    top = _top([series])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(days), 1)
    points = [
        (LEFT + index * slot + slot / 2, TOP + plot_h - value / top * plot_h, day, value)
        for index, (day, value) in enumerate(zip(days, series.values, strict=True))
        if value is not None
    ]
    body = []
    if len(points) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        body.append(f'<polyline points="{path}" fill="none" stroke="{series.color}" stroke-width="2"/>')
    for x, y, day, value in points:
        body.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{series.color}">'
            f"<title>{escape(day.isoformat())}: {escape(series.name)} {escape(number(value))}</title></circle>"
        )
    return _frame(days, top, title, body, [series])


def no_history_note() -> SafeString:
    return format_html('<p class="help">{}</p>', "No snapshot yet: they are taken hourly (manage.py snapshot_history).")
