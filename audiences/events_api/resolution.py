"""Identity resolution: which profile an Events API batch belongs to.

The rule:

1. A batch's identities are ranked: `mpid` first, then `customer` (customer_id), `email`, the other user
   ids (`other`, `other2`..`other10`, `mobile_number`, `phone_number_2`, `phone_number_3`, `facebook`,
   `twitter`, `google`, `microsoft`, `yahoo`), then the device ids (`ios_advertising_id`,
   `ios_vendor_id`, `google_advertising_id`, `android_id`, ... in `DEVICE_IDENTITY_TYPES` order). The
   `mpid` is Profile.mpid; the others are Identity rows.
2. The batch goes to the profile of the highest-ranked identity that is known.
3. The batch's identities that nobody has yet are added to that profile.
4. An identity belongs to one profile and is never moved: when the batch's known identities point to
   more than one profile, the batch still goes to the profile chosen in 2, the identities of the other
   profiles stay where they are, and the conflict is recorded (IdentityConflict: the batch's identities,
   every profile they pointed to, the chosen profile, the identities not attached, and this rule).
   Nothing is merged silently; merging profiles is a decision for a person.
5. When no identity of the batch is known, a new profile is created, with the batch's `mpid` if it gave
   one (else a random one). An `mpid` nobody has, in a batch whose other identities are known, is
   ignored: a profile has one mpid.

Resolution is set-wise: `lookup` finds every identity of a whole bulk request in two queries, then
`Resolver` decides each batch in memory, in request order, so that a later batch of the same request
sees the profiles and identities the earlier ones created.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import connection

from audiences.events_api.parsing import ParsedBatch
from audiences.identities import DEVICE_IDENTITY_TYPES, USER_IDENTITY_TYPES
from audiences.models import Identity, Profile

# mpid, then customer id, email, other ids, phone numbers and social ids, then device ids: the
# order in which audiences/identities.py declares the types is the documented priority.
PRIORITY: tuple[str, ...] = ("mpid", *USER_IDENTITY_TYPES, *DEVICE_IDENTITY_TYPES)
RANK = {identity_type: rank for rank, identity_type in enumerate(PRIORITY)}
RULE = "the profile of the highest-priority known identity ({}) is chosen; identities of other profiles are not moved"


@dataclass(eq=False)
class Target:
    """The profile a batch goes to: an existing one, or one to create (profile_id set once created)."""

    profile_id: int | None
    mpid: int | None = None  # for a new profile: the batch's mpid, if it gave one
    new: bool = False


@dataclass
class Conflict:
    identities: list[str]  # the batch's identities, "type:value", mpid first
    targets: list[Target]  # every profile they pointed to (the chosen one first)
    chosen: Target
    not_attached: list[str]
    rule: str


@dataclass
class Resolution:
    target: Target
    new_identities: list[tuple[str, str]] = field(default_factory=list)
    conflict: Conflict | None = None


@dataclass
class Known:
    by_mpid: dict[int, int]  # mpid -> profile id
    by_identity: dict[tuple[str, str], int]  # (type, value) -> profile id


def lookup(batches: Iterable[ParsedBatch]) -> Known:
    """The profiles already holding any mpid or identity of these batches: two queries."""
    mpids: set[int] = set()
    values_by_type: dict[str, set[str]] = defaultdict(set)
    for batch in batches:
        if batch.mpid is not None:
            mpids.add(batch.mpid)
        for identity_type, value in batch.identities:
            values_by_type[identity_type].add(value)
    by_mpid: dict[int, int] = {}
    by_identity: dict[tuple[str, str], int] = {}
    # Plain SQL, not the ORM: on every request, building the query cost more than running it.
    with connection.cursor() as cursor:
        if mpids:
            cursor.execute(MPIDS_SQL.format(mpids=", ".join(["%s"] * len(mpids))), sorted(mpids))
            by_mpid = dict(cursor.fetchall())
        if values_by_type:
            # One `type = t AND value IN (...)` per type: each uses the (type, value) unique index.
            matches, params = [], []
            for identity_type, values in values_by_type.items():
                matches.append(f"(type = %s AND value IN ({', '.join(['%s'] * len(values))}))")
                params += [identity_type, *sorted(values)]
            cursor.execute(IDENTITIES_SQL.format(matches=" OR ".join(matches)), params)
            for identity_type, value, profile_id in cursor.fetchall():
                by_identity[(identity_type, value)] = profile_id
    return Known(by_mpid=by_mpid, by_identity=by_identity)


MPIDS_SQL = f"SELECT mpid, id FROM {Profile._meta.db_table} WHERE mpid IN ({{mpids}})"  # noqa: S608 (table name)
IDENTITIES_SQL = f"SELECT type, value, profile_id FROM {Identity._meta.db_table} WHERE {{matches}}"  # noqa: S608


class Resolver:
    """Decides batches one after another against what `lookup` found plus what earlier batches added."""

    def __init__(self, known: Known):
        self._existing: dict[int, Target] = {}
        self.by_mpid: dict[int, Target] = {m: self._target(p) for m, p in known.by_mpid.items()}
        self.by_identity: dict[tuple[str, str], Target] = {k: self._target(p) for k, p in known.by_identity.items()}

    def _target(self, profile_id: int) -> Target:
        if profile_id not in self._existing:
            self._existing[profile_id] = Target(profile_id=profile_id)
        return self._existing[profile_id]

    def resolve(self, batch: ParsedBatch) -> Resolution:
        labels = [f"mpid:{batch.mpid}"] if batch.mpid is not None else []
        labels += [f"{t}:{v}" for t, v in batch.identities]
        candidates: list[tuple[int, str, Target]] = []  # (rank, "type:value", target)
        if batch.mpid is not None and batch.mpid in self.by_mpid:
            candidates.append((RANK["mpid"], f"mpid:{batch.mpid}", self.by_mpid[batch.mpid]))
        for pair in batch.identities:
            if pair in self.by_identity:
                candidates.append((RANK[pair[0]], f"{pair[0]}:{pair[1]}", self.by_identity[pair]))
        if candidates:
            candidates.sort(key=lambda c: c[0])  # stable: equal ranks keep the order sent
            chosen_label, target = candidates[0][1], candidates[0][2]
        else:
            target = Target(profile_id=None, mpid=batch.mpid, new=True)
            if batch.mpid is not None:
                self.by_mpid[batch.mpid] = target
        new_identities = [pair for pair in batch.identities if pair not in self.by_identity]
        for pair in new_identities:
            self.by_identity[pair] = target
        resolution = Resolution(target=target, new_identities=new_identities)
        others = [(label, t) for _, label, t in candidates if t is not target]
        if others:
            targets = [target]
            for _, other in others:
                if other not in targets:
                    targets.append(other)
            resolution.conflict = Conflict(
                identities=labels,
                targets=targets,
                chosen=target,
                not_attached=[label for label, _ in others],
                rule=RULE.format(chosen_label),
            )
        return resolution
