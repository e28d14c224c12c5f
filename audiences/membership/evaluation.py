"""Real-time evaluation: the active audiences, for the profiles a request touched, in a handful of queries.

`evaluate_profiles` runs on every profile upsert and every Events API batch, inside the caller's
transaction. It loads the active audiences (their compiled criteria are cached by id and criteria
version), loads what the criteria can see of the profiles set-wise (`load_facts`: attributes,
identities, events of the window the audiences need, memberships), evaluates in Python, and applies
the entering / leaving profiles of all audiences together through the membership ledger
(`apply_membership_deltas`), so membership rows, the change log and what its consumers write (forwarding's
outbox) are written in the same transaction.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection as db
from django.utils import timezone

from audiences import criteria as criteria_lang
from audiences.criteria.facts import EventFact, ProfileFacts
from audiences.membership.ledger import apply_membership_deltas
from audiences.membership.locks import (
    LOCK_NAMESPACE,
    lock_audiences_for_evaluation,
    try_lock_audiences_for_evaluation,
)
from audiences.models import Audience, AudienceMembership, Event, Identity, Profile

logger = logging.getLogger(__name__)

# Profile ids per query: well under the bound-parameter limits of SQLite and PostgreSQL.
ID_CHUNK = 5000
MAX_COMPILED = 1000


@dataclass(frozen=True)
class CompiledAudience:
    id: int
    criteria_version: int
    criteria: Mapping[str, Any]
    predicate: criteria_lang.Predicate
    references: frozenset[int]
    # How far back its event conditions look (criteria.event_lookback); both None without events.
    event_window: timedelta | None
    event_start: datetime | None
    # The criteria as the database handed them over (JSON text from a raw cursor): compared as they come,
    # so that an unchanged audience's criteria are not decoded on every request.
    stored: Any = None

    def events_since(self, now: datetime) -> datetime | None:
        return criteria_lang.lookback_start(self.event_window, self.event_start, now)


# (audience id, criteria version) -> CompiledAudience; compiled once per process, not per profile.
_compiled: dict[tuple[int, int], CompiledAudience] = {}


def _compile(audience_id: int, version: int, stored: Any) -> CompiledAudience:
    """`stored`: the criteria tree, or its JSON text as a raw cursor reads it."""
    key = (audience_id, version)
    cached = _compiled.get(key)
    # The criteria are compared too: a write that forgot to bump the version must not serve stale criteria.
    if cached is not None and cached.stored == stored:
        return cached
    tree = _json(stored)
    if len(_compiled) >= MAX_COMPILED:
        _compiled.clear()
    window, start = criteria_lang.event_lookback(tree)
    compiled = CompiledAudience(
        id=audience_id,
        criteria_version=version,
        criteria=tree,
        predicate=criteria_lang.compile_criteria(tree),
        references=frozenset(criteria_lang.referenced_audiences(tree)),
        event_window=window,
        event_start=start,
        stored=stored,
    )
    _compiled[key] = compiled
    return compiled


ACTIVE_AUDIENCES_SQL = (
    f"SELECT id, criteria_version, criteria FROM {Audience._meta.db_table} WHERE status = %s ORDER BY id"  # noqa: S608
)


# The same, taking each one's shared membership lock where it is free (locks.py, without waiting): the
# Events API's evaluation reads the audiences and locks them in one statement. Last column: held exclusively.
ACTIVE_AUDIENCES_TRY_LOCK_SQL = (
    "SELECT id, criteria_version, criteria, NOT pg_try_advisory_xact_lock_shared(%s, (id & 2147483647)::int) "  # noqa: S608
    f"FROM {Audience._meta.db_table} WHERE status = %s ORDER BY id"
)


def active_audiences(*, now: datetime | None = None) -> list[CompiledAudience]:
    """The active audiences, compiled, referenced audiences before those that refer to them. One query.
    An audience whose criteria fail to compile is recorded as failed and left out (the others go on)."""
    with db.cursor() as cursor:
        cursor.execute(ACTIVE_AUDIENCES_SQL, [Audience.Status.ACTIVE.value])
        rows = cursor.fetchall()
    return _compiled_in_order(rows, now=now)


def _compiled_in_order(rows: Sequence[tuple], *, now: datetime | None) -> list[CompiledAudience]:
    compiled = []
    for pk, version, stored, *_ in rows:
        try:
            compiled.append(_compile(pk, version, stored))
        except Exception as exc:  # any failure of one audience stays with that audience
            record_evaluation_failure(pk, version, exc, now=now or timezone.now())
    return dependency_order(compiled)


def _active_audiences_locked_without_waiting(*, now: datetime) -> tuple[list[CompiledAudience], set[int]]:
    """active_audiences(), their shared locks taken where free (as try_lock_audiences_for_evaluation takes
    them), in one statement on PostgreSQL; returns them and the ids left out (_left_out). The lock of an
    audience whose criteria fail to compile is taken too: harmless, it is shared."""
    if db.vendor != "postgresql":
        return active_audiences(now=now), set()
    with db.cursor() as cursor:
        cursor.execute(ACTIVE_AUDIENCES_TRY_LOCK_SQL, [LOCK_NAMESPACE, Audience.Status.ACTIVE.value])
        rows = cursor.fetchall()
    audiences = _compiled_in_order(rows, now=now)
    return audiences, _left_out(audiences, {row[0] for row in rows if row[3]})


# Repeated failures are written at most this often (each write locks the audience's row until the
# request's transaction ends, and every request meets the same failure).
FAILURE_RECORD_INTERVAL = timedelta(minutes=1)
# (audience id, criteria version) already logged by this process: the log says it once, not per request.
_logged_failures: set[tuple[int, int]] = set()


def record_evaluation_failure(audience_id: int, version: int, exc: BaseException, *, now: datetime) -> None:
    """Record on the audience that real-time evaluation failed and why, in the caller's transaction (the
    request it failed in is still stored). Cleared by new criteria (audiences/services.py)."""
    reason = f"{type(exc).__name__}: {exc}"[:1000]
    if (audience_id, version) not in _logged_failures:
        _logged_failures.add((audience_id, version))
        logger.error("real-time evaluation of audience %s failed; left out", audience_id, exc_info=exc)
    Audience.objects.filter(pk=audience_id).exclude(
        evaluation_error=reason, evaluation_failed_at__gt=now - FAILURE_RECORD_INTERVAL
    ).update(evaluation_error=reason, evaluation_failed_at=now)


def dependency_order(audiences: Sequence[CompiledAudience]) -> list[CompiledAudience]:
    """Referenced audiences first, so a dependent sees the fresh membership. Validation refuses cycles;
    should one exist anyway (data written around the services), its audiences come last, by id."""
    by_id = {a.id: a for a in audiences}
    ordered: list[CompiledAudience] = []
    done: set[int] = set()
    pending = list(audiences)
    while pending:
        ready = [a for a in pending if all(r in done or r not in by_id for r in a.references)]
        if not ready:
            ready = pending[:1]
        for audience in ready:
            ordered.append(audience)
            done.add(audience.id)
        pending = [a for a in pending if a.id not in done]
    return ordered


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), ID_CHUNK):
        yield list(ids[start : start + ID_CHUNK])


# Plain SQL rather than the ORM: these run on every Events API batch, and building an ORM query costs
# more than running these on a handful of rows. Table names come from model metadata; values are parameters.
ATTRIBUTES_SQL = f"SELECT id, attributes FROM {Profile._meta.db_table} WHERE id IN ({{ids}})"  # noqa: S608
LOCK_SUFFIX = " ORDER BY id FOR NO KEY UPDATE"
IDENTITIES_SQL = f"SELECT profile_id, type, value FROM {Identity._meta.db_table} WHERE profile_id IN ({{ids}})"  # noqa: S608
EVENTS_SQL = (
    f"SELECT profile_id, name, attributes, timestamp FROM {Event._meta.db_table} "  # noqa: S608
    "WHERE profile_id IN ({ids}) AND timestamp >= %s"
)
MEMBERSHIPS_SQL = (
    f"SELECT profile_id, audience_id FROM {AudienceMembership._meta.db_table} WHERE profile_id IN ({{ids}})"  # noqa: S608
)


def _rows(sql: str, ids: Sequence[int], *params: Any) -> list[tuple]:
    with db.cursor() as cursor:
        cursor.execute(sql.format(ids=", ".join(["%s"] * len(ids))), [*ids, *params])
        return cursor.fetchall()


def _json(value: Any) -> Any:
    # Raw cursors hand JSON columns over as text (PostgreSQL through Django, and SQLite).
    if isinstance(value, str | bytes):
        return json.loads(value)
    return value or {}


def _aware(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite without column type detection
        value = datetime.fromisoformat(value)
    # SQLite stores UTC without a zone.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def load_facts(
    profile_ids: Sequence[int],
    *,
    now: datetime,
    events_since: datetime | None,
    lock: bool = False,
    created: Mapping[int, ProfileFacts] | None = None,
) -> dict[int, ProfileFacts]:
    """What the criteria see of these profiles (docs/criteria.md, "The data a tree sees"), in four set-wise
    queries (per 5,000 profiles): attributes, identities, events since `events_since` (none are read when
    it is None), memberships. Profiles that do not exist are left out.

    `lock` (PostgreSQL): lock the profile rows until the caller's transaction ends, in id order so that
    evaluations never deadlock each other. Two requests evaluating one profile at once would otherwise
    both see it outside an audience and both enter it. NO KEY UPDATE leaves inserts of rows referencing
    the profile (its events) free. SQLite serialises writers anyway.

    `created`: facts of profiles the caller created in this transaction (all their attributes, identities and
    events; no memberships yet), which are not read again: no other transaction sees these rows, so there
    is nothing to lock either. Their events are kept from `events_since` on, as the query would."""
    created = created or {}
    ids = sorted(set(profile_ids) - set(created))
    facts: dict[int, ProfileFacts] = {}
    for pk in sorted(set(profile_ids) & set(created)):
        given = created[pk]
        events = [e for e in given.events if e.timestamp >= events_since] if events_since is not None else []
        facts[pk] = ProfileFacts(
            profile_id=pk, attributes=given.attributes, identities=list(given.identities), events=events
        )
    if not ids:
        return facts
    read: dict[int, ProfileFacts] = {}
    attributes_sql = ATTRIBUTES_SQL + (LOCK_SUFFIX if lock and db.vendor == "postgresql" else "")
    for chunk in _chunks(ids):
        for pk, attributes in _rows(attributes_sql, chunk):
            read[pk] = ProfileFacts(profile_id=pk, attributes=_json(attributes), identities=[], events=[])
    if not read:
        return facts
    since = db.ops.adapt_datetimefield_value(events_since) if events_since is not None else None
    for chunk in _chunks(sorted(read)):
        for pk, identity_type, value in _rows(IDENTITIES_SQL, chunk):
            read[pk].identities.append((identity_type, value))
        if events_since is not None:
            # No upper bound: a `between` recency may reach past `now`.
            for pk, name, attributes, at in _rows(EVENTS_SQL, chunk, since):
                read[pk].events.append(EventFact(name=name.lower(), attributes=_json(attributes), timestamp=_aware(at)))
        for pk, audience_id in _rows(MEMBERSHIPS_SQL, chunk):
            read[pk].memberships.add(audience_id)
    facts.update(read)
    return dict(sorted(facts.items())) if created else facts


def evaluate_profiles(
    profile_ids: Sequence[int], *, now: datetime | None = None, reason: str
) -> dict[int, tuple[list[int], list[int]]]:
    """Evaluate every active audience for these profiles and apply what changed (membership rows, change
    log, and the ledger's consumers) in the caller's transaction. Waits for a recompute of any of them to
    commit. Returns profile id -> (entered audience ids, left audience ids) for the profiles whose
    membership changed."""
    return _evaluate(profile_ids, now=now, reason=reason, wait=True).changes


@dataclass(frozen=True)
class Evaluation:
    changes: dict[int, tuple[list[int], list[int]]]  # as evaluate_profiles returns
    left_out: frozenset[int]  # audiences not evaluated: their membership lock was held exclusively


def evaluate_profiles_without_waiting(
    profile_ids: Sequence[int],
    *,
    now: datetime | None = None,
    reason: str,
    created: Mapping[int, ProfileFacts] | None = None,
) -> Evaluation:
    """As evaluate_profiles, but never waits for a recompute (or a connect) holding an audience's lock:
    that audience, and those whose criteria refer to it, are left out and returned in `left_out`; the
    caller defers them (audiences/membership/deferred.py). A recompute of one audience then costs
    the Events API nothing on the others. `created`: the facts of profiles the caller created in this
    transaction, not read again (load_facts)."""
    return _evaluate(profile_ids, now=now, reason=reason, wait=False, created=created)


def _lock_without_waiting(audiences: Sequence[CompiledAudience]) -> set[int]:
    """Take the shared locks of these audiences (in dependency order) that are free, until the end of the
    transaction; returns the ids left out: those held exclusively, and those whose criteria refer to one
    left out (they would read a membership that is being rewritten, so they wait for the same later
    evaluation)."""
    return _left_out(audiences, try_lock_audiences_for_evaluation(a.id for a in audiences))


def _left_out(audiences: Sequence[CompiledAudience], busy: set[int]) -> set[int]:
    """Those held exclusively (`busy`), and those whose criteria refer to one left out (in dependency order)."""
    left_out: set[int] = set()
    if busy:
        for audience in audiences:
            if audience.id in busy or audience.references & left_out:
                left_out.add(audience.id)
    return left_out


def audiences_held(*, now: datetime | None = None) -> set[int]:
    """The active audiences an evaluation would leave out now (see evaluate_profiles_without_waiting);
    the shared locks of the others are taken until the end of the current transaction, as an evaluation
    takes them. Empty on SQLite."""
    return _lock_without_waiting(active_audiences(now=now or timezone.now()))


def _evaluate(
    profile_ids: Sequence[int],
    *,
    now: datetime | None,
    reason: str,
    wait: bool,
    created: Mapping[int, ProfileFacts] | None = None,
) -> Evaluation:
    if not profile_ids:
        return Evaluation({}, frozenset())
    now = now or timezone.now()
    # Locks before reading any membership: a recompute applying its difference meanwhile would otherwise
    # undo what this evaluation writes (audiences/membership/locks.py).
    left_out: set[int] = set()
    if wait:
        audiences = active_audiences(now=now)
        lock_audiences_for_evaluation(a.id for a in audiences)
    else:
        audiences, left_out = _active_audiences_locked_without_waiting(now=now)
        audiences = [a for a in audiences if a.id not in left_out]
    if not audiences:
        return Evaluation({}, frozenset(left_out))
    starts = [start for start in (audience.events_since(now) for audience in audiences) if start is not None]
    facts = load_facts(profile_ids, now=now, events_since=min(starts) if starts else None, lock=True, created=created)
    changes: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    profiles = list(facts.values())
    deltas: dict[int, tuple[list[int], list[int]]] = {}
    for audience in audiences:
        try:
            # Every profile first, then the changes: a failure half-way leaves nothing of this audience.
            verdicts = [(profile, audience.predicate(profile, now)) for profile in profiles]
        except Exception as exc:  # any failure of one audience stays with that audience
            # Left out: its members stay as they were, the request and the other audiences go on.
            record_evaluation_failure(audience.id, audience.criteria_version, exc, now=now)
            continue
        entered: list[int] = []
        left: list[int] = []
        for profile, member in verdicts:
            was_member = audience.id in profile.memberships
            if member and not was_member:
                entered.append(profile.profile_id)
                # Dependents evaluated after this audience see the fresh membership.
                profile.memberships.add(audience.id)
                changes[profile.profile_id][0].append(audience.id)
            elif was_member and not member:
                left.append(profile.profile_id)
                profile.memberships.discard(audience.id)
                changes[profile.profile_id][1].append(audience.id)
        if entered or left:
            deltas[audience.id] = (entered, left)
    # All audiences' changes written together: a few statements, not a few per audience.
    # The identities just read go along: the outbox planner need not read them again.
    apply_membership_deltas(
        deltas, now=now, reason=reason, identities={p.profile_id: p.identities for p in profiles} if deltas else None
    )
    return Evaluation(dict(changes), frozenset(left_out))
