"""The audience download, as mParticle does it: a ZIP with one CSV per audience
(`mpid,scanned_timestamp_ms,identity_value,identity_type`, one row per member and identity of a
chosen type) and a manifest.json counting rows and users by identity type.

Streamed: rows come from a server-side cursor, go through zipfile into a small buffer that is
drained after every chunk, and the counts are kept while writing. Memory does not grow with the
audience; nothing is read twice.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import unicodedata
import zipfile
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import StreamingHttpResponse
from django.utils import timezone

from audiences.identities import IDENTITY_TYPES
from audiences.models import Audience, Identity

CSV_HEADER = ("mpid", "scanned_timestamp_ms", "identity_value", "identity_type")
CHUNK_ROWS = 5000  # rows fetched per round trip, and written between two drains of the buffer
MANIFEST_NAME = "manifest.json"


class _Sink:
    """A write-only, non-seekable file for zipfile: it writes data descriptors after each member
    instead of seeking back, so what it wrote can be handed out and forgotten."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


@dataclass
class _FileCounts:
    """What manifest.json says about one audience file, counted while its rows are written."""

    rows: int = 0
    users: int = 0  # members with at least one row
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)  # type -> {"rows", "users"}


def clean_identity_types(identity_types: Any) -> list[str]:
    """A list (or comma-separated string) of known identity types, without duplicates, in order."""
    if isinstance(identity_types, str):
        identity_types = [t for t in identity_types.split(",")]
    if not isinstance(identity_types, list | tuple):
        raise ValidationError({"identity_types": ["Give a list of identity types."]})
    types = [t.strip() if isinstance(t, str) else t for t in identity_types]
    types = [t for t in types if t != ""]
    if not types:
        raise ValidationError({"identity_types": ["Choose at least one identity type."]})
    unknown = [str(t) for t in types if t not in IDENTITY_TYPES]
    if unknown:
        raise ValidationError({"identity_types": [f"Unknown identity type(s): {', '.join(unknown)}."]})
    return list(dict.fromkeys(types))


def safe_file_stem(name: str, fallback: str) -> str:
    """An audience name as a portable file name: ASCII letters, digits, '.', '-', '_'."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_name).strip("._")[:100]
    return stem or fallback


def file_names(audiences: Sequence[Audience]) -> dict[int, str]:
    """audience id -> CSV name; two names that clean up alike are told apart by the audience id."""
    names: dict[int, str] = {}
    taken: set[str] = {MANIFEST_NAME.lower()}
    for audience in audiences:
        stem = safe_file_stem(audience.name, f"audience_{audience.pk}")
        name = f"{stem}.csv"
        if name.lower() in taken:
            name = f"{stem}_{audience.pk}.csv"
        taken.add(name.lower())
        names[audience.pk] = name
    return names


def stream_audience_zip(audience_ids: Iterable[int], identity_types: Any) -> Iterator[bytes]:
    """The ZIP of these audiences' members, as an iterator of bytes.

    Checks its arguments now (ValidationError naming "audiences" or "identity_types") so a view can
    answer 400 before it starts streaming; the rows are read while the iterator is consumed."""
    types = clean_identity_types(identity_types)
    ids = list(dict.fromkeys(audience_ids))
    if not ids:
        raise ValidationError({"audiences": ["Choose at least one audience."]})
    found = Audience.objects.in_bulk(ids)
    missing = [str(pk) for pk in ids if pk not in found]
    if missing:
        raise ValidationError({"audiences": [f"Unknown audience(s): {', '.join(missing)}."]})
    audiences = [found[pk] for pk in ids]
    return _stream(audiences, types)


def zip_response(audience_ids: Iterable[int], identity_types: Any, *, stem: str) -> StreamingHttpResponse:
    """The download as a streamed attachment `<stem>_<UTC time>.zip`, for the API and the admin.
    Bad arguments raise ValidationError before anything is sent."""
    response = StreamingHttpResponse(stream_audience_zip(audience_ids, identity_types), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{stem}_{timezone.now():%Y%m%dT%H%M%SZ}.zip"'
    return response


def _stream(audiences: list[Audience], types: list[str]) -> Iterator[bytes]:
    sink = _Sink()
    manifest_files: list[dict[str, Any]] = []
    names = file_names(audiences)
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
        for audience in audiences:
            scanned_ms, counts = yield from _write_audience_csv(archive, sink, audience, names[audience.pk], types)
            manifest_files.append(
                {
                    "file": names[audience.pk],
                    "audience_id": audience.pk,
                    "audience_name": audience.name,
                    "scanned_timestamp_ms": scanned_ms,
                    "rows": counts.rows,
                    "users": counts.users,
                    "identity_types": counts.by_type,
                }
            )
        manifest = {"identity_types": types, "files": manifest_files}
        archive.writestr(MANIFEST_NAME, json.dumps(manifest, indent=2, ensure_ascii=False))
    # Closing the archive wrote the central directory.
    tail = sink.drain()
    if tail:
        yield tail


def _write_audience_csv(
    archive: zipfile.ZipFile, sink: _Sink, audience: Audience, name: str, types: list[str]
) -> Generator[bytes, None, tuple[int, _FileCounts]]:
    """Write one audience's CSV into the archive, yielding the compressed bytes chunk by chunk;
    returns (scanned_timestamp_ms, counts) to the caller's `yield from`."""
    counts = _FileCounts(by_type={t: {"rows": 0, "users": 0} for t in types})
    rows = (
        Identity.objects.filter(type__in=types, profile__memberships__audience_id=audience.pk)
        .order_by("profile_id", "type", "value")
        .values_list("profile_id", "profile__mpid", "value", "type")
    )
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
    info.compress_type = archive.compression  # a ZipInfo does not take the archive's own
    info.external_attr = 0o644 << 16  # a regular file, rw-r--r--
    # force_zip64: the size is not known in advance and may pass 4 GiB.
    with archive.open(info, mode="w", force_zip64=True) as member:
        # A transaction so that PostgreSQL's server-side cursor streams rows as they are read
        # (outside one, Django declares it WITH HOLD and the server materialises the whole result first).
        # The scan's time is taken when its query starts: one value for the whole file.
        with transaction.atomic():
            scanned_ms = int(time.time() * 1000)
            scanned = str(scanned_ms)
            current_profile: int | None = None
            current_types: set[str] = set()
            pending = 0
            for profile_id, mpid, value, identity_type in rows.iterator(chunk_size=CHUNK_ROWS):
                if profile_id != current_profile:
                    _count_user(counts, current_types)
                    current_profile = profile_id
                    current_types = set()
                current_types.add(identity_type)
                counts.rows += 1
                counts.by_type[identity_type]["rows"] += 1
                writer.writerow((mpid, scanned, value, identity_type))
                pending += 1
                if pending >= CHUNK_ROWS:
                    member.write(text.getvalue().encode())
                    text.seek(0)
                    text.truncate()
                    pending = 0
                    data = sink.drain()
                    if data:
                        yield data
            _count_user(counts, current_types)
        member.write(text.getvalue().encode())
    data = sink.drain()
    if data:
        yield data
    return scanned_ms, counts


def _count_user(counts: _FileCounts, types: set[str]) -> None:
    """Rows are ordered by profile: a profile's rows are all seen when the next profile starts."""
    if not types:
        return
    counts.users += 1
    for identity_type in types:
        counts.by_type[identity_type]["users"] += 1
