"""Store parsed Events API batches: profiles, identities, attributes, events, receipts, conflicts; then
re-evaluate the active audiences for the touched profiles. One transaction per request.

Set-wise, so a bulk request costs a fixed handful of queries whatever its size: receipts (1), lookup of
every mpid and identity (2), lock of the existing profiles touched (1), new profiles (1), changed
attributes (1), new identities (1), events (1, COPY on PostgreSQL), conflicts (0-1), then one
evaluation that never waits for a recompute (audiences it cannot lock are deferred: membership/deferred.py).
New identities of profiles that stay in an audience are then published to its connections (1 query, and one
publish per such profile: rare, as most requests bring identities already known).

A batch repeating a `source_request_id` already received from the same input is skipped (it answered 202
the first time); so is a repeat inside one request. Two requests creating the same identity or mpid at
once: the loser's transaction fails on the unique constraint and is retried once, when it finds them.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DataError, IntegrityError, connection
from django.utils import timezone
from psycopg.types.json import Jsonb

from audiences.criteria.facts import EventFact, ProfileFacts
from audiences.events_api.parsing import ParsedBatch
from audiences.events_api.resolution import Resolution, Resolver, Target, lookup
from audiences.membership.deferred import defer_evaluations
from audiences.membership.evaluation import evaluate_profiles_without_waiting
from audiences.membership.ledger import publish_members_updated
from audiences.models import (
    Audience,
    AudienceMembership,
    BatchReceipt,
    Event,
    Identity,
    IdentityConflict,
    Input,
    Profile,
    new_mpid,
)
from config.db import atomic_with_reconnect, insert_rows

logger = logging.getLogger(__name__)

# Input.last_used_at is a hint for people, not an audit log: written at most once a minute.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass
class IngestResult:
    stored: list[int] = field(default_factory=list)  # indexes (in the batches given) stored
    duplicates: list[int] = field(default_factory=list)  # indexes skipped as repeats of a source_request_id
    profile_ids: list[int] = field(default_factory=list)  # touched profiles
    events: int = 0
    conflicts: int = 0


def ingest_batches(input: Input, batches: Sequence[ParsedBatch], *, now: datetime | None = None) -> IngestResult:
    """Store these (already validated) batches from `input` and evaluate the audiences of the profiles they
    touched, in one transaction."""
    now = now or timezone.now()
    # Replayed after a connection lost in COMMIT only if every batch has a source_request_id:
    # a second run then skips the batches the first one stored (config/db.py).
    replay_safe = all(batch.source_request_id for batch in batches)
    for attempt in range(2):
        try:
            result = atomic_with_reconnect(lambda: _ingest(input, batches, now), replay_safe=replay_safe)
            break
        except IntegrityError:
            if attempt:
                raise
            logger.info("events api: a concurrent request created the same identity or mpid; retrying")
    if input.last_used_at is None or now - input.last_used_at > LAST_USED_RESOLUTION:
        Input.objects.filter(pk=input.pk).update(last_used_at=now)
        input.last_used_at = now
    return result


# What the database may refuse in a batch's own data although parsing let it through (a value PostgreSQL
# cannot store, a number out of a column's range): that batch's fault, not the others'.
BATCH_DATA_ERRORS = (DataError, ValueError, OverflowError)


def ingest_each_alone(input: Input, batches: Sequence[ParsedBatch], *, now: datetime | None = None) -> dict[int, str]:
    """Store the batches of a bulk request so that each stands alone: together in one transaction (the
    usual case, a fixed handful of queries), and should the database refuse the data of one, again one by
    one, so the good ones are stored all the same. Returns {index: reason} of the batches refused."""
    try:
        ingest_batches(input, batches, now=now)
        return {}
    except BATCH_DATA_ERRORS as exc:
        if len(batches) == 1:
            return {0: refusal(exc)}
        logger.warning("events api: the database refused a batch of a bulk request; storing them one by one")
    refused: dict[int, str] = {}
    for index, batch in enumerate(batches):
        try:
            ingest_batches(input, [batch], now=now)
        except BATCH_DATA_ERRORS as exc:
            refused[index] = refusal(exc)
    return refused


def refusal(exc: Exception) -> str:
    # The first line of the database's message says what (e.g. a NUL byte); its DETAIL may quote data.
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"The batch could not be stored: {first_line[:200]}"


def _new_receipts(input: Input, source_request_ids: list[str], now: datetime) -> set[str]:
    """Insert receipts, skipping those already there (ON CONFLICT DO NOTHING); return the ids inserted.

    A concurrent request inserting the same id waits for ours to commit and then skips it, so a batch is
    stored once. PostgreSQL, and SQLite >= 3.35, both speak this SQL."""
    if not source_request_ids:
        return set()
    table = connection.ops.quote_name(BatchReceipt._meta.db_table)
    rows = ", ".join(["(%s, %s, %s)"] * len(source_request_ids))
    params: list[Any] = []
    # Sorted, like the identities below: two requests inserting the same keys wait for each other in one
    # order, instead of deadlocking.
    for source_request_id in sorted(source_request_ids):
        params += [input.pk, source_request_id, now]
    sql = (
        f"INSERT INTO {table} (input_id, source_request_id, received_at) VALUES {rows} "  # noqa: S608 (table name)
        "ON CONFLICT (input_id, source_request_id) DO NOTHING RETURNING source_request_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def _update_attributes(profiles: list[Profile], now: datetime) -> None:
    """Write the merged attributes of existing profiles: one UPDATE ... FROM (VALUES ...) on PostgreSQL
    (Django's bulk_update builds a CASE per row, several times slower), bulk_update elsewhere."""
    if connection.vendor != "postgresql":
        Profile.objects.bulk_update(profiles, ["attributes", "updated_at"])
        return
    table = connection.ops.quote_name(Profile._meta.db_table)
    rows = ", ".join(["(%s, %s::jsonb)"] * len(profiles))
    params: list[Any] = [now]
    for profile in profiles:
        params += [profile.pk, json.dumps(profile.attributes)]
    sql = (
        f"UPDATE {table} AS p SET attributes = v.attributes, updated_at = %s "  # noqa: S608 (table name)
        f"FROM (VALUES {rows}) AS v(id, attributes) WHERE p.id = v.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


EVENT_COLUMNS = (
    "profile_id",
    "input_id",
    "event_type",
    "name",
    "custom_event_type",
    "attributes",
    "timestamp",
    "source_message_id",
    "received_at",
)


def _insert_events(rows: list[tuple]) -> None:
    """Insert events given as tuples in EVENT_COLUMNS order: COPY on PostgreSQL (the bulk of a request's
    rows, and the fastest way in; no model instances either), else bulk_create."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        Event.objects.bulk_create([Event(**dict(zip(EVENT_COLUMNS, row, strict=True))) for row in rows])
        return
    table = connection.ops.quote_name(Event._meta.db_table)
    attributes = EVENT_COLUMNS.index("attributes")
    with connection.cursor() as cursor:
        # The psycopg cursor under Django's wrapper: COPY is not part of the DB-API. Its errors go
        # through Django's wrapper too, so a dropped connection is django.db's OperationalError,
        # which atomic_with_reconnect (config/db.py) retries, not psycopg's, which it cannot see.
        with (
            connection.wrap_database_errors,
            cursor.cursor.copy(f"COPY {table} ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row((*row[:attributes], Jsonb(row[attributes]), *row[attributes + 1 :]))


def _ingest(input: Input, batches: Sequence[ParsedBatch], now: datetime) -> IngestResult:
    result = IngestResult()
    # Deduplicate: repeats inside this request, then those received before.
    seen: set[str] = set()
    first_of_id: list[str] = []
    candidates: list[int] = []
    for index, batch in enumerate(batches):
        srid = batch.source_request_id
        if srid and srid in seen:
            result.duplicates.append(index)
            continue
        if srid:
            seen.add(srid)
            first_of_id.append(srid)
        candidates.append(index)
    inserted = _new_receipts(input, first_of_id, now)
    kept: list[int] = []
    for index in candidates:
        srid = batches[index].source_request_id
        (kept if not srid or srid in inserted else result.duplicates).append(index)
    result.duplicates.sort()
    if not kept:
        return result

    resolver = Resolver(lookup(batches[i] for i in kept))
    resolutions: list[tuple[ParsedBatch, Resolution]] = [(batches[i], resolver.resolve(batches[i])) for i in kept]
    result.stored = kept

    # Lock the existing profiles in id order (no deadlock between requests), and read their attributes.
    # FOR NO KEY UPDATE, not FOR UPDATE: rows pointing at a profile (a connection's backfill, a recompute's
    # outbox) check it with KEY SHARE while holding the audience lock this request waits for next.
    existing_ids = sorted({r.target.profile_id for _, r in resolutions if not r.target.new})
    current = dict(
        Profile.objects.select_for_update(no_key=True)
        .filter(pk__in=existing_ids)
        .order_by("pk")
        .values_list("pk", "attributes")
    )

    # Merge attributes, batch after batch: set user_attributes, then delete deleted_user_attributes
    # (a name in both is deleted: the deletion is the explicit word).
    merged: dict[Target, dict[str, Any]] = {}
    for batch, resolution in resolutions:
        target = resolution.target
        if target not in merged:
            merged[target] = {} if target.new else dict(current.get(target.profile_id) or {})
        attributes = merged[target]
        attributes.update(batch.attributes)
        for name in batch.deleted_attributes:
            attributes.pop(name, None)

    new_targets = [t for t in merged if t.new]
    created_ids = insert_rows(
        Profile._meta.db_table,
        ("mpid", "attributes", "created_at", "updated_at"),
        [(t.mpid or new_mpid(), merged[t], now, now) for t in new_targets],
        json_columns=("attributes",),
        returning="id",
    )
    for target, (profile_id,) in zip(new_targets, created_ids, strict=True):
        target.profile_id = profile_id
    changed = [
        Profile(pk=t.profile_id, attributes=merged[t], updated_at=now)
        for t in merged
        if not t.new and merged[t] != (current.get(t.profile_id) or {})
    ]
    if changed:
        _update_attributes(changed, now)

    new_identities = sorted(
        (identity_type, value, r.target.profile_id) for _, r in resolutions for identity_type, value in r.new_identities
    )
    created_identities = insert_rows(
        Identity._meta.db_table,
        ("profile_id", "type", "value", "created_at"),
        [(p, t, v, now) for t, v, p in new_identities],
        returning="id, profile_id",
    )
    events = [
        (
            resolution.target.profile_id,
            input.pk,
            event.event_type,
            event.name,
            event.custom_event_type,
            event.attributes,
            event.timestamp,
            event.source_message_id,
            now,
        )
        for batch, resolution in resolutions
        for event in batch.events
    ]
    _insert_events(events)
    result.events = len(events)

    conflicts = [
        IdentityConflict(
            at=now,
            input=input,
            source_request_id=batch.source_request_id,
            identities=r.conflict.identities,
            profile_ids=sorted(t.profile_id for t in r.conflict.targets),
            chosen_profile_id=r.conflict.chosen.profile_id,
            not_attached=r.conflict.not_attached,
            rule=r.conflict.rule,
        )
        for batch, r in resolutions
        if r.conflict is not None
    ]
    if conflicts:
        IdentityConflict.objects.bulk_create(conflicts)
        logger.info("events api: %d identity conflict(s) recorded", len(conflicts))
    result.conflicts = len(conflicts)

    result.profile_ids = sorted({t.profile_id for t in merged})
    # Without waiting for a recompute (or a connect) holding an audience's lock: the audiences left out
    # are evaluated for these profiles once it commits (audiences/membership/deferred.py). The profiles
    # this request created are evaluated on what it wrote, not read back.
    evaluation = evaluate_profiles_without_waiting(
        result.profile_ids, now=now, reason="events api", created=_created_facts(new_targets, merged, resolutions)
    )
    new_ids: dict[int, list[int]] = defaultdict(list)
    for identity_id, profile_id in created_identities:
        new_ids[profile_id].append(identity_id)
    # A profile created here is a member only of the audiences it just entered: nobody stays.
    created_profiles = {t.profile_id for t in new_targets}
    _publish_new_identities_of_staying_members(
        {p: ids for p, ids in new_ids.items() if p not in created_profiles}, evaluation.changes, evaluation.left_out
    )
    if evaluation.left_out:
        defer_evaluations(
            result.profile_ids,
            audience_ids=sorted(evaluation.left_out),
            identity_ids=new_ids,
            reason="events api",
            now=now,
        )
    return result


def _created_facts(
    new_targets: Sequence[Target],
    merged: Mapping[Target, dict[str, Any]],
    resolutions: Sequence[tuple[ParsedBatch, Resolution]],
) -> dict[int, ProfileFacts]:
    """What the criteria see of the profiles this request created: exactly what it wrote for them."""
    facts = {
        t.profile_id: ProfileFacts(profile_id=t.profile_id, attributes=merged[t], identities=[], events=[])
        for t in new_targets
    }
    for batch, resolution in resolutions:
        profile = facts.get(resolution.target.profile_id)
        if profile is None:
            continue
        profile.identities.extend(resolution.new_identities)
        profile.events.extend(
            EventFact(name=event.name.lower(), attributes=event.attributes, timestamp=event.timestamp)
            for event in batch.events
        )
    return facts


def _publish_new_identities_of_staying_members(
    new_ids: Mapping[int, list[int]],
    changes: Mapping[int, tuple[list[int], list[int]]],
    left_out: frozenset[int] = frozenset(),
) -> None:
    """Members who stay in an audience and got a new identity: the consumers forward it (a member who
    entered goes with all its identities already). Runs under the audience locks evaluate_profiles took,
    like the membership changes, so a connection made meanwhile misses none; not to the audiences it left
    out (their locks were held), where the deferred evaluation publishes them."""
    if not new_ids:
        return
    stayed: dict[int, list[int]] = defaultdict(list)
    memberships = AudienceMembership.objects.filter(
        profile_id__in=list(new_ids), audience__status=Audience.Status.ACTIVE
    ).values_list("profile_id", "audience_id")
    for profile_id, audience_id in memberships:
        if audience_id not in changes.get(profile_id, ([], []))[0] and audience_id not in left_out:
            stayed[profile_id].append(audience_id)
    for profile_id, audience_ids in sorted(stayed.items()):
        publish_members_updated(profile_id=profile_id, audience_ids=audience_ids, identity_ids=new_ids[profile_id])
