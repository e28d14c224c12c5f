"""The identity funnel of a connection: why the partner's count is not the audience's size, in numbers.

mParticle's tutorial explains it in words (an audience of 100 users, 50 with an email: Mailchimp shows 50);
this counts each step for one connection, from the audience to what the partner holds:

    audience size (members)
    → members with an identity of a type the partner accepts          lost: no such identity
    → accepted identities (a member with two emails counts twice)
    → valid after the partner's normalisation (Partner.identity_checks) lost: invalid, per type
    → delivered (sent to the partner)                                   lost: waiting, retrying, not queued
    → accepted by the partner                                           lost: rejected (reasons, grouped and
                                                                        counted), sent without a recorded answer
    → the partner's own count, where it reports one (Capability.REPORTS_COUNT)

Each identity is counted at the first step it is lost, so the steps add up. Set-wise: two aggregate queries
whatever the audience's size (size and reach; identities by type, fate and rejection reason), plus the
partner's count, asked with a short deadline and cached for a minute, never an error.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection as db

from audiences.models import AudienceMembership, Identity
from connections.models import Connection, ConnectionMember
from forwarding.delivery import attempt_error
from forwarding.models import PendingChange
from forwarding.partner_calls import audience_ref
from forwarding.selectors import audience_reach
from outputs.partners.base import Capability, IdentityCheck
from outputs.partners.http import CallScope, PartnerError

logger = logging.getLogger(__name__)

# Rejection reasons shown one by one; the rest are summed as "other reasons".
TOP_REASONS = 10
# The partner's count: the longest the funnel waits for it, and how long an answer (or a failure) is kept.
PARTNER_COUNT_TIMEOUT_SECONDS = 3.0
PARTNER_COUNT_CACHE_SECONDS = 60

ADDED = ConnectionMember.State.ADDED
MAYBE_HELD = ConnectionMember.State.MAYBE_HELD
REJECTED = ConnectionMember.State.REJECTED
# What becomes of an accepted identity (FATES_SQL), besides "identities", their total.
FATES = ("identities", "invalid", "accepted", "rejected", "maybe_held", "waiting", "retrying", "not_queued")

# The members' identities of the accepted types, each with whether it passes the partner's check.
ACCEPTED_IDENTITIES_SQL = """
(SELECT i.type, i.value, {valid} AS valid
 FROM {membership} m
 JOIN {identity} i ON i.profile_id = m.profile_id
 WHERE m.audience_id = %s AND i.type IN ({types})) a
"""

# Each accepted identity's fate, one CASE per row (the validity check, a regular expression, runs once per
# identity): invalid; else the partner's last answer (added, rejected, maybe held) where it was sent; else the
# outbox (waiting, retrying); else nothing (not queued). Counted per (type, fate, the partner's reason for a
# refused identity, its own value masked so that reasons group): the reasons come out of the same pass.
FATES_SQL = """
SELECT a.type,
       CASE WHEN NOT a.valid THEN 'invalid'
            WHEN cm.state = %s THEN 'accepted'
            WHEN cm.state = %s THEN 'rejected'
            WHEN cm.state = %s THEN 'maybe_held'
            WHEN pc.attempts = 0 THEN 'waiting'
            WHEN pc.attempts > 0 THEN 'retrying'
            ELSE 'not_queued' END AS fate,
       CASE WHEN cm.state = %s THEN REPLACE(cm.reason, cm.value, '[identity]') END AS reason,
       COUNT(*)
FROM {source}
LEFT JOIN {member} cm ON cm.connection_id = %s AND cm.identity_type = a.type AND cm.value = a.value
LEFT JOIN {pending} pc ON pc.connection_id = %s AND pc.identity_type = a.type AND pc.value = a.value
GROUP BY 1, 2, 3
"""


def _placeholders(values: Sequence[object]) -> str:
    return ", ".join(["%s"] * len(values))


@dataclass(frozen=True)
class Loss:
    """People (or identities) lost at a step, and why."""

    reason: str
    count: int


@dataclass(frozen=True)
class Stage:
    key: str
    label: str
    count: int
    unit: str  # "members" or "identities"
    lost: list[Loss] = field(default_factory=list)
    # Counts by identity type, where the step is about identities.
    by_type: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PartnerCount:
    supported: bool  # the partner reports a count (Capability.REPORTS_COUNT)
    available: bool
    count: int | None = None
    reason: str = ""  # why it is unavailable
    note: str = ""  # what the partner's count counts (Partner.audience_count_note)


@dataclass(frozen=True)
class IdentityFunnel:
    connection_id: int
    partner: str  # its key
    partner_name: str
    accepted_identity_types: list[str]
    stages: list[Stage]
    rejected: int
    rejection_reasons: list[Loss]
    partner_count: PartnerCount

    def stage(self, key: str) -> Stage:
        return next(s for s in self.stages if s.key == key)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the queries ------------------------------------------------------------------------------


def _valid_sql(checks: Mapping[str, IdentityCheck]) -> tuple[str, list[Any]]:
    """A boolean SQL expression over the identity `i`: its value passes its type's check. Values are stored
    trimmed (audiences.identities), so only the lower-casing is left to redo."""
    if not checks:
        return "1 = 1", []
    # The backend's own regex operator: PostgreSQL's "~", SQLite's REGEXP (Python's re, registered by Django).
    regex = "%s " + db.operators["regex"]
    cases, params = [], []
    for identity_type, check in sorted(checks.items()):
        value = "LOWER(i.value)" if check.lower else "i.value"
        cases.append(f"WHEN i.type = %s THEN ({regex % (value, '%s')})")
        params += [identity_type, f"^(?:{check.pattern})$"]
    return f"(CASE {' '.join(cases)} ELSE 1 = 1 END)", params


def _accepted_identities_sql(audience_id: int, types: Sequence[str], checks: Mapping[str, IdentityCheck]):
    """The members' identities of the accepted types, each with its validity, as a FROM clause and params."""
    valid, valid_params = _valid_sql(checks)
    sql = ACCEPTED_IDENTITIES_SQL.format(
        valid=valid,
        membership=AudienceMembership._meta.db_table,
        identity=Identity._meta.db_table,
        types=_placeholders(types),
    )
    return sql, [*valid_params, audience_id, *types]


def _identity_fates(
    connection: Connection, types: Sequence[str], checks: Mapping[str, IdentityCheck]
) -> tuple[dict[str, dict[str, int]], list[Loss]]:
    """Per accepted type: identities, invalid ones, and the valid ones' fate at this connection (what the
    partner answered, else what the outbox holds); and the partner's reasons for the valid identities it refused,
    grouped and counted, most frequent first. One pass over the members' identities. Partners quote the address
    they refuse: the identity's own value is masked in SQL (so reasons group), any other address here, as
    delivery attempts keep them."""
    source, params = _accepted_identities_sql(connection.audience_id, types, checks)
    sql = FATES_SQL.format(source=source, member=ConnectionMember._meta.db_table, pending=PendingChange._meta.db_table)
    with db.cursor() as cursor:
        cursor.execute(sql, [ADDED, REJECTED, MAYBE_HELD, REJECTED, *params, connection.pk, connection.pk])
        rows = cursor.fetchall()
    fates: dict[str, dict[str, int]] = {}
    reasons: Counter[str] = Counter()
    for identity_type, fate, reason, count in rows:
        counts = fates.setdefault(identity_type, dict.fromkeys(FATES, 0))
        counts[fate] += int(count)
        counts["identities"] += int(count)
        if fate == "rejected":
            reasons[attempt_error(reason or "").strip() or "no reason given"] += int(count)
    ranked = [Loss(reason, n) for reason, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))]
    return fates, ranked


# --- the partner's count ----------------------------------------------------------------------


def _count_cache_key(connection: Connection) -> str:
    # The output's configuration and the connection's settings are in the key: a fixed key or list asks anew.
    material = json.dumps([connection.output.configuration(), connection.settings], sort_keys=True, default=str)
    digest = hashlib.sha256(material.encode()).hexdigest()[:16]
    return f"forwarding:funnel:partner-count:{connection.pk}:{digest}"


def partner_count(connection: Connection, *, use_cache: bool = True) -> PartnerCount:
    """The partner's own count of the connection's audience, or why it is unavailable: asked with a deadline of
    PARTNER_COUNT_TIMEOUT_SECONDS (the page never waits on a slow partner), kept PARTNER_COUNT_CACHE_SECONDS
    (an answer or a failure: a page refreshed in a loop does not hammer the partner). Never raises."""
    partner_class = connection.output.partner_class
    note = partner_class.audience_count_note
    if not partner_class.has(Capability.REPORTS_COUNT):
        return PartnerCount(supported=False, available=False, reason=f"{partner_class.name} reports no count.")
    try:
        key = _count_cache_key(connection)
        cached = cache.get(key) if use_cache else None
    except Exception:  # the cache down, or a configuration no key decrypts: ask (and say) without it
        key, cached = None, None
    if cached is not None:
        return PartnerCount(**cached)
    result = _ask_partner_count(connection, note)
    if key is not None:
        try:
            cache.set(key, asdict(result), PARTNER_COUNT_CACHE_SECONDS)
        except Exception:
            logger.warning("could not cache the partner's count", extra={"connection_id": connection.pk})
    return result


def _ask_partner_count(connection: Connection, note: str) -> PartnerCount:
    timeout = float(getattr(settings, "FUNNEL_PARTNER_COUNT_TIMEOUT_SECONDS", PARTNER_COUNT_TIMEOUT_SECONDS))
    scope = CallScope()
    try:
        partner = connection.output.partner()
        audience = audience_ref(connection.audience)
    except Exception as exc:  # e.g. a secret no key decrypts: the output's own page says what to do
        return PartnerCount(supported=True, available=False, reason=f"unavailable: {exc}"[:300], note=note)

    def ask() -> int | None:
        with scope:  # cut at the deadline, so the thread does not outlive the page by long
            return partner.audience_count(connection.settings, audience)

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="partner-count")
    started = time.monotonic()
    try:
        count = executor.submit(ask).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        scope.cut("the funnel stopped waiting")
        reason = f"unavailable: {partner.name} did not answer within {timeout:g} s"
        return PartnerCount(supported=True, available=False, reason=reason, note=note)
    except PartnerError as exc:
        return PartnerCount(supported=True, available=False, reason=f"unavailable: {exc.message}"[:300], note=note)
    except Exception as exc:
        logger.exception("the partner's count failed", extra={"connection_id": connection.pk})
        reason = f"unavailable: {type(exc).__name__}"
        return PartnerCount(supported=True, available=False, reason=reason, note=note)
    finally:
        executor.shutdown(wait=False)
    logger.debug("partner count in %.3f s", time.monotonic() - started)
    if count is None:
        return PartnerCount(supported=True, available=False, reason="unavailable: the partner gave no count", note=note)
    return PartnerCount(supported=True, available=True, count=int(count), note=note)


# --- the funnel -------------------------------------------------------------------------------


def identity_funnel(connection: Connection, *, with_partner_count: bool = True) -> IdentityFunnel:
    """Every step of the connection's funnel, with what is lost at each and why (see the module's docstring)."""
    partner_class = connection.output.partner_class
    types = sorted(partner_class.accepted_identity_types)
    try:
        checks = {t: c for t, c in connection.output.partner().identity_checks().items() if t in types}
    except Exception:  # an output whose configuration cannot be read still has a funnel
        checks = {}
    type_names = ", ".join(types) or "none"
    size, reachable = audience_reach(connection.audience_id, types)
    fates, reasons = _identity_fates(connection, types, checks) if types else ({}, [])

    def total(key: str) -> int:
        return sum(f[key] for f in fates.values())

    def per_type(key: str) -> dict[str, int]:
        return {t: f[key] for t, f in sorted(fates.items()) if f[key]}

    identities = total("identities")
    invalid = total("invalid")
    valid = identities - invalid
    accepted, rejected, maybe_held = total("accepted"), total("rejected"), total("maybe_held")
    sent = accepted + rejected + maybe_held
    invalid_losses = [
        Loss(checks[t].reason if t in checks else f"invalid {t}", n) for t, n in per_type("invalid").items()
    ]
    shown = reasons[:TOP_REASONS]
    # The reasons beyond the first ones are summed, so the step adds up.
    others = sum(r.count for r in reasons[TOP_REASONS:])
    rejected_losses = [Loss(f"rejected: {r.reason}", r.count) for r in shown]
    if others:
        rejected_losses.append(Loss("rejected: other reasons", others))
    stages = [
        Stage("audience", "Audience size", size, "members"),
        Stage(
            "with_accepted_identity",
            f"Members with an identity of an accepted type ({type_names})",
            reachable,
            "members",
            _nonzero([Loss(f"no identity of an accepted type ({type_names})", size - reachable)]),
        ),
        Stage(
            "accepted_identities",
            "Accepted identities (each of a member's identities is sent)",
            identities,
            "identities",
            by_type=per_type("identities"),
        ),
        Stage(
            "valid",
            "Valid after normalisation",
            valid,
            "identities",
            _nonzero(invalid_losses),
            by_type={t: f["identities"] - f["invalid"] for t, f in sorted(fates.items())},
        ),
        Stage(
            "delivered",
            "Delivered (sent to the partner)",
            sent,
            "identities",
            _nonzero(
                [
                    Loss("waiting to be sent", total("waiting")),
                    Loss("retrying after an error", total("retrying")),
                    Loss("not queued (neither sent nor waiting: resync the connection)", total("not_queued")),
                ]
            ),
        ),
        Stage(
            "accepted",
            "Accepted by the partner",
            accepted,
            "identities",
            _nonzero([*rejected_losses, Loss("sent, the partner's answer not recorded (maybe held)", maybe_held)]),
            by_type=per_type("accepted"),
        ),
    ]
    count = (
        partner_count(connection)
        if with_partner_count
        else PartnerCount(supported=partner_class.has(Capability.REPORTS_COUNT), available=False, reason="not asked")
    )
    return IdentityFunnel(
        connection_id=connection.pk,
        partner=partner_class.key,
        partner_name=partner_class.name,
        accepted_identity_types=types,
        stages=stages,
        rejected=rejected,
        rejection_reasons=reasons[:TOP_REASONS] + ([Loss("other reasons", others)] if others else []),
        partner_count=count,
    )


def _nonzero(losses: list[Loss]) -> list[Loss]:
    return [loss for loss in losses if loss.count]
