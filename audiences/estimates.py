"""Reads for the criteria builder: how many profiles a criteria tree matches right now (without saving
anything), and which names the data holds (attribute names, event names and their attribute names, with
counts), so the builder can offer them and warn about names never seen.

The estimate is the recompute's own query (criteria/sql.py's member_sql) counted instead of stored, so
its figure is the one a recompute would reach at the same instant. It runs under a statement timeout and
writes nothing. On SQLite, the per-profile evaluator counts instead, up to SQLITE_ESTIMATE_MAX_PROFILES.

The names come from a bounded sample (the newest NAME_SAMPLE_PROFILES profiles and NAME_SAMPLE_EVENTS
events, read with jsonb_object_keys on PostgreSQL), not from a catalogue maintained on every write: a
catalogue would put one more write (on a few hot rows) into every Events API request, while a sample
costs nothing until someone opens the builder and stays fast whatever the data's size. What a sample may
miss (a rare name), the warnings check exactly before calling a name unseen: an event name through the
index on lower(name), an attribute name by one bounded query.
"""

# ruff: noqa: S608 (the SQL text holds table names from model metadata; values are parameters)
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db import connection as db
from django.utils import timezone

from audiences import criteria as criteria_lang
from audiences.criteria.facts import ProfileFacts
from audiences.criteria.reading import attribute_names, event_conditions
from audiences.criteria.sql import member_sql
from audiences.membership.evaluation import load_facts
from audiences.models import Event, Profile

PROFILE_TABLE = Profile._meta.db_table
EVENT_TABLE = Event._meta.db_table
# The longest an estimate may run (PostgreSQL statement timeout), in milliseconds.
ESTIMATE_TIMEOUT_MS = 5000
# How many profiles the SQLite fallback evaluates one by one before giving up.
SQLITE_ESTIMATE_MAX_PROFILES = 20_000
SQLITE_CHUNK = 2000
NAME_SAMPLE_PROFILES = 10_000
# Read by index in timestamp order, the newest events are scattered over the table: 10,000 random reads
# take about 0.15 s at 1,000,000 profiles (5,000,000 events), 50,000 took 0.6 s (bench/estimate.py).
NAME_SAMPLE_EVENTS = 10_000
NAMES_SHOWN = 200
# The exact check of one attribute name missing from the sample may take this long at most.
NAME_CHECK_TIMEOUT_MS = 1000


@dataclass
class Estimate:
    """What the builder shows beside the criteria."""

    available: bool  # False: no count (timeout, too many profiles for SQLite); `reason` says why
    count: int | None = None  # profiles matching now
    total_profiles: int | None = None
    matches_everybody: bool = False  # the tree has no condition at all
    reason: str = ""
    warnings: list[str] = field(default_factory=list)  # names never seen in the data
    milliseconds: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_timeout_ms() -> int:
    return int(getattr(settings, "AUDIENCE_ESTIMATE_TIMEOUT_MS", ESTIMATE_TIMEOUT_MS))


def has_conditions(tree: Any) -> bool:
    """True when the tree holds at least one condition (an `{"and": []}` holds none: it matches everybody)."""
    if not isinstance(tree, Mapping):
        return False
    if "and" in tree or "or" in tree:
        return any(has_conditions(child) for child in tree.get("and", tree.get("or")) or ())
    if "exclude" in tree:
        return has_conditions(tree["exclude"])
    return True


def criteria_estimate(*, criteria: Any, audience_id: int | None = None, now: datetime | None = None) -> Estimate:
    """Validate `criteria` (raises ValidationError naming the path, as saving would) and count the profiles
    it matches at `now`, without writing anything."""
    criteria_lang.validate_criteria(criteria, audience_id=audience_id)
    now = now or timezone.now()
    started = time.perf_counter()
    estimate = Estimate(available=False, matches_everybody=not has_conditions(criteria))
    estimate.warnings = unseen_name_warnings(criteria)
    if db.vendor == "postgresql":
        _count_in_sql(estimate, criteria, now)
    else:
        _count_by_profile(estimate, criteria, now)
    estimate.milliseconds = int((time.perf_counter() - started) * 1000)
    return estimate


def _count_in_sql(estimate: Estimate, criteria: Mapping, now: datetime) -> None:
    sql, params = member_sql(criteria, now=now)
    timeout = estimate_timeout_ms()
    try:
        estimate.count, estimate.total_profiles = timed_counts(
            [(f"SELECT count(*) FROM ({sql}) AS members", params), (f"SELECT count(*) FROM {PROFILE_TABLE}", [])],
            timeout_ms=timeout,
        )
    except DatabaseError:
        estimate.reason = (
            f"The estimate took longer than {timeout / 1000:g} s and was stopped. "
            "Save the audience to calculate it in the background."
        )
        return
    estimate.available = True


def timed_counts(queries: list[tuple[str, list]], *, timeout_ms: int) -> list[int]:
    """Run counting queries under a statement timeout, in a savepoint of their own (a timeout rolls back
    only that, and the timeout itself ends with it). Raises DatabaseError on a timeout."""
    results = []
    with transaction.atomic(), db.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        (before,) = cursor.fetchone()
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{int(timeout_ms)}ms"])
        for sql, params in queries:
            cursor.execute(sql, params)
            results.append(cursor.fetchone()[0])
        # Inside a caller's transaction the setting would outlive the savepoint: put it back.
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [before])
    return results


def _count_by_profile(estimate: Estimate, criteria: Mapping, now: datetime) -> None:
    total = Profile.objects.count()
    estimate.total_profiles = total
    if total > SQLITE_ESTIMATE_MAX_PROFILES:
        estimate.reason = (
            f"Estimates need PostgreSQL beyond {SQLITE_ESTIMATE_MAX_PROFILES:,} profiles; this database has {total:,}."
        )
        return
    events_since = criteria_lang.event_window_start(criteria, now)
    matching = 0
    for ids in _profile_id_chunks():
        facts = load_facts(ids, now=now, events_since=events_since)
        matching += sum(
            1
            for pk in ids
            if criteria_lang.matches(criteria, facts.get(pk) or ProfileFacts(profile_id=pk, attributes={}), now)
        )
    estimate.count = matching
    estimate.available = True


def _profile_id_chunks() -> Iterator[list[int]]:
    last_id = 0
    while True:
        ids = list(Profile.objects.filter(pk__gt=last_id).order_by("pk").values_list("pk", flat=True)[:SQLITE_CHUNK])
        if not ids:
            return
        last_id = ids[-1]
        yield ids


# --- names seen in the data ------------------------------------------------------------------


@dataclass(frozen=True)
class NameCount:
    name: str
    count: int  # profiles (attributes) or events (events, event attributes) of the sample that have it


@dataclass
class NamesSeen:
    """Names in a bounded sample of the data, most frequent first."""

    attributes: list[NameCount]
    events: list[NameCount]
    event_attributes: list[NameCount]  # of `event` only, when one was asked for
    event: str | None
    sample_profiles: int
    sample_events: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def names_seen(*, event: str | None = None) -> NamesSeen:
    """Attribute names of the newest profiles, event names of the newest events, and with `event`, the
    attribute names of that event's newest occurrences; each with its count in the sample."""
    event = event.strip() if isinstance(event, str) and event.strip() else None
    if db.vendor == "postgresql":
        return _names_in_sql(event)
    return _names_in_python(event)


ATTRIBUTE_NAMES_SQL = f"""
SELECT key, count(*) FROM (SELECT attributes FROM {PROFILE_TABLE} ORDER BY id DESC LIMIT %s) AS sample,
LATERAL jsonb_object_keys(CASE WHEN jsonb_typeof(attributes) = 'object' THEN attributes ELSE '{{}}' END) AS key
GROUP BY key ORDER BY count(*) DESC, key LIMIT %s
"""
EVENT_NAMES_SQL = f"""
SELECT min(name), count(*) FROM (SELECT name FROM {EVENT_TABLE} ORDER BY timestamp DESC LIMIT %s) AS sample
GROUP BY lower(name) ORDER BY count(*) DESC, min(name) LIMIT %s
"""
# The index on (lower(name), timestamp) serves the newest occurrences of one event.
EVENT_ATTRIBUTE_NAMES_SQL = f"""
SELECT key, count(*) FROM (
    SELECT attributes FROM {EVENT_TABLE} WHERE lower(name) = lower(%s) ORDER BY lower(name), timestamp DESC LIMIT %s
) AS sample,
LATERAL jsonb_object_keys(CASE WHEN jsonb_typeof(attributes) = 'object' THEN attributes ELSE '{{}}' END) AS key
GROUP BY key ORDER BY count(*) DESC, key LIMIT %s
"""


def _names_in_sql(event: str | None) -> NamesSeen:
    with db.cursor() as cursor:
        cursor.execute(ATTRIBUTE_NAMES_SQL, [NAME_SAMPLE_PROFILES, NAMES_SHOWN])
        attributes = [NameCount(name, n) for name, n in cursor.fetchall()]
        cursor.execute(EVENT_NAMES_SQL, [NAME_SAMPLE_EVENTS, NAMES_SHOWN])
        events = [NameCount(name, n) for name, n in cursor.fetchall()]
        event_attributes = []
        if event is not None:
            cursor.execute(EVENT_ATTRIBUTE_NAMES_SQL, [event, NAME_SAMPLE_EVENTS, NAMES_SHOWN])
            event_attributes = [NameCount(name, n) for name, n in cursor.fetchall()]
    return NamesSeen(attributes, events, event_attributes, event, NAME_SAMPLE_PROFILES, NAME_SAMPLE_EVENTS)


def _ranked(counts: dict[str, int]) -> list[NameCount]:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [NameCount(name, n) for name, n in ordered[:NAMES_SHOWN]]


def _names_in_python(event: str | None) -> NamesSeen:
    """SQLite: the same sample, its keys counted in Python (SQLite has no jsonb_object_keys over a sample
    as cheap; the sample is bounded, so the work is too)."""
    attribute_counts: dict[str, int] = {}
    for attributes in Profile.objects.order_by("-id").values_list("attributes", flat=True)[:NAME_SAMPLE_PROFILES]:
        for key in attributes if isinstance(attributes, dict) else ():
            attribute_counts[key] = attribute_counts.get(key, 0) + 1
    event_counts: dict[str, int] = {}
    shown_as: dict[str, str] = {}
    for name in Event.objects.order_by("-timestamp").values_list("name", flat=True)[:NAME_SAMPLE_EVENTS]:
        key = name.lower()
        shown_as[key] = min(shown_as.get(key, name), name)
        event_counts[key] = event_counts.get(key, 0) + 1
    events = [NameCount(shown_as[c.name], c.count) for c in _ranked(event_counts)]
    event_attribute_counts: dict[str, int] = {}
    if event is not None:
        rows = (Event.objects.filter(name__iexact=event).order_by("-timestamp").values_list("attributes", flat=True))[
            :NAME_SAMPLE_EVENTS
        ]
        for attributes in rows:
            for key in attributes if isinstance(attributes, dict) else ():
                event_attribute_counts[key] = event_attribute_counts.get(key, 0) + 1
    return NamesSeen(
        _ranked(attribute_counts),
        events,
        _ranked(event_attribute_counts),
        event,
        NAME_SAMPLE_PROFILES,
        NAME_SAMPLE_EVENTS,
    )


# --- warnings: names never seen ----------------------------------------------------------------


def _events_named(tree: Mapping) -> dict[str, set[str]]:
    """Event name (as first written) -> the names of its attribute conditions, lower-cased."""
    events: dict[str, set[str]] = {}
    for node in event_conditions(tree):
        names = events.setdefault(node["event"].strip(), set())
        names.update(c["attribute"].lower() for c in node.get("attributes", ()))
    return events


def unseen_name_warnings(tree: Mapping) -> list[str]:
    """One sentence per attribute or event name the tree uses that the data has never held (a typo
    would otherwise give an empty audience without a word)."""
    attributes, events = attribute_names(tree), _events_named(tree)
    warnings = [
        f"No profile has the attribute “{name}”: check its spelling."
        for name in sorted(attributes)
        if not attribute_seen(name)
    ]
    for event in sorted(events):
        if not event_seen(event):
            warnings.append(f"No event named “{event}” has been received (in the events kept): check its spelling.")
            continue
        warnings.extend(
            f"No “{event}” event has the attribute “{name}”: check its spelling."
            for name in sorted(events[event])
            if not event_attribute_seen(event, name)
        )
    return warnings


def attribute_seen(name: str) -> bool:
    """Whether any profile has this user attribute (names are stored lower-cased)."""
    if db.vendor != "postgresql":
        return Profile.objects.filter(attributes__has_key=name).exists()
    try:
        (found,) = timed_counts(
            [(f"SELECT count(*) FROM (SELECT 1 FROM {PROFILE_TABLE} WHERE attributes ? %s LIMIT 1) AS s", [name])],
            timeout_ms=NAME_CHECK_TIMEOUT_MS,
        )
    except DatabaseError:
        return True  # not known to be missing: no warning rather than a wrong one
    return bool(found)


def event_seen(name: str) -> bool:
    return Event.objects.filter(name__iexact=name).exists() if db.vendor != "postgresql" else _event_exists(name)


def _event_exists(name: str) -> bool:
    with db.cursor() as cursor:
        # lower(name) = lower(%s): the expression index answers it.
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {EVENT_TABLE} WHERE lower(name) = lower(%s))", [name])
        return bool(cursor.fetchone()[0])


def event_attribute_seen(event: str, name: str) -> bool:
    """Whether any kept event of this name has this attribute (bounded like attribute_seen)."""
    if db.vendor != "postgresql":
        return Event.objects.filter(name__iexact=event, attributes__has_key=name).exists()
    sql = (
        f"SELECT count(*) FROM (SELECT 1 FROM {EVENT_TABLE} WHERE lower(name) = lower(%s) AND attributes ? %s "
        "LIMIT 1) AS s"
    )
    try:
        (found,) = timed_counts([(sql, [event, name])], timeout_ms=NAME_CHECK_TIMEOUT_MS)
    except DatabaseError:
        return True
    return bool(found)
