"""Two evaluators, one meaning (docs/criteria.md): for generated profiles and criteria trees, the set-based SQL
evaluator (audiences.criteria.sql.member_sql) selects exactly the profiles the per-profile evaluator
(audiences.criteria.matches) accepts, given what the real loader (audiences.membership.evaluation.load_facts)
reads of them for that tree: the window of events it loads is part of what is checked. PostgreSQL only.

Generated text uses a few letters, digits, space and `*?%_\\` so that case folding, LIKE escaping, numeric
strings and patterns all get exercised; event timestamps fall on whole hours around `now`, so that recency
windows are hit exactly on their bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audiences.criteria import event_window_start, matches, vocabulary
from audiences.criteria.sql import member_sql
from audiences.membership.evaluation import load_facts
from audiences.models import Audience, AudienceMembership, Event, Identity, Profile
from tests.conftest import service_missing

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)

ATTRIBUTE_NAMES = ["status", "city", "score", "tags", "born"]
EVENT_NAMES = ["Destination Intro", "purchase"]
EVENT_ATTRIBUTE_NAMES = ["city", "amount"]
IDENTITY_TYPES = ["email", "customer", "other"]

# Hours relative to NOW, mostly on and around the bounds of the windows the criteria use, so that inclusive and
# exclusive bounds are told apart.
BOUNDARY_HOURS = [-24 * 30 - 1, -24 * 30, -24 * 30 + 1, -25, -24, -23, -1, 0, 1]
hours = st.one_of(st.sampled_from(BOUNDARY_HOURS), st.sampled_from(BOUNDARY_HOURS), st.integers(-24 * 40, 24 * 2))
amounts = st.one_of(st.sampled_from([1, 24, 30]), st.sampled_from([1, 24, 30]), st.integers(1, 40))

# --- values ------------------------------------------------------------------------------------

text = st.text(alphabet="aAbB1 *?%_\\", max_size=4)
# Words that LIKE would confuse unless %, _ and \ are escaped: x%y must not match xaay, x_y not xay.
words = st.sampled_from(
    ["paris", "Paris", "PARIS", "premium", "Premium ", "par", "", "x\\y", "x%y", "x_y", "xay", "xaay", "X\\Y"]
)
patterns = st.one_of(words, text, st.sampled_from(["*", "a*", "*1", "?", "x?y", "x*y", "*\\*", "*%", "*_*", "p*s"]))
numbers = st.one_of(st.integers(-3, 3), st.sampled_from([0.1, 1.5, -2.25, 3.0, 10]))
numeric_strings = st.sampled_from(["1", " 2 ", "-3", "1.5", "3.0", "0.10", "1.", "+1", "1e1", "- 1", ".5"])
boolean_strings = st.sampled_from(["true", "FALSE", "True", "true ", "yes", "t"])


@st.composite
def date_strings(draw, valid_only: bool = False) -> str:
    """Dates around NOW in every accepted form; unless valid_only, also impossible or malformed ones."""
    if valid_only:
        instant = NOW + timedelta(hours=draw(hours))
        form = draw(st.sampled_from(["day", "T", "space", "seconds", "fraction", "Z", "offset", "offset_short"]))
        if form == "day":
            return instant.strftime("%Y-%m-%d")
        if form == "offset" or form == "offset_short":
            shifted = instant + timedelta(hours=2)
            return shifted.strftime("%Y-%m-%dT%H:%M:%S") + ("+02:00" if form == "offset" else "+0200")
        body = instant.strftime("%Y-%m-%d" + (" " if form == "space" else "T") + "%H:%M")
        if form in ("seconds", "fraction", "Z"):
            body += instant.strftime(":%S")
        if form == "fraction":
            body += ".000001"
        if form == "Z":
            body += "Z"
        return body
    month = draw(st.integers(1, 13))
    day = draw(st.sampled_from([1, 14, 15, 16, 28, 29, 30, 31, 0]))
    result = f"2026-{month:02d}-{day:02d}"
    if draw(st.booleans()):
        hour = draw(st.sampled_from([0, 11, 12, 13, 23, 24]))
        minute = draw(st.sampled_from([0, 30, 59, 60]))
        result += draw(st.sampled_from(["T", " ", "t"])) + f"{hour:02d}:{minute:02d}"
        result += draw(st.sampled_from(["", ":00", ":59", ":60", ":30.5", ":30.123456", ":30.1234567"]))
        result += draw(st.sampled_from(["", "Z", "z", "+02:00", "-0530", "+24:00", "+01:60", "+1"]))
    return result


scalars = st.one_of(
    text, words, words, numbers, numeric_strings, st.booleans(), boolean_strings, date_strings(), st.none()
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))

# --- criteria ----------------------------------------------------------------------------------


def mixed_case(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.upper(), name.capitalize()])


comparable = st.one_of(words, text, numbers, st.booleans())


# Written out, not read from the vocabulary: the test states the spec (docs/criteria.md) on its own.
ATTRIBUTE_OPERATORS = [
    "exists", "not_exists", "equals", "not_equals", "contains", "not_contains", "matches",
    "not_matches", "greater_than", "greater_or_equal", "less_than", "less_or_equal", "between",
    "includes", "not_includes", "partial_match", "date_before", "date_after", "date_on",
    "date_between", "within_last",
]  # fmt: skip


def test_every_operator_of_the_vocabulary_is_drawn():
    # An operator added to the language must be shown to mean the same in both evaluators.
    assert set(ATTRIBUTE_OPERATORS) == vocabulary.OPERATORS


@st.composite
def attribute_conditions(draw, names: list[str]) -> dict:
    name = draw(st.sampled_from(names).flatmap(mixed_case))
    operator = draw(st.sampled_from(ATTRIBUTE_OPERATORS))
    node: dict = {"attribute": name, "operator": operator}
    if operator in ("exists", "not_exists"):
        return node
    if operator in ("equals", "not_equals", "includes", "not_includes"):
        node["value"] = draw(comparable)
    elif operator in ("matches", "not_matches"):
        node["value"] = draw(patterns)
    elif operator in ("contains", "not_contains", "partial_match"):
        node["value"] = draw(st.one_of(words, text))
    elif operator == "between":
        node["value"] = sorted(draw(st.lists(numbers, min_size=2, max_size=2)))
    elif operator in ("greater_than", "greater_or_equal", "less_than", "less_or_equal"):
        node["value"] = draw(numbers)
    elif operator == "date_on":
        node["value"] = (NOW + timedelta(hours=draw(hours))).strftime("%Y-%m-%d")
    elif operator == "date_between":
        first, second = sorted(draw(st.lists(hours, min_size=2, max_size=2)))
        node["value"] = [_instant_text(first, draw(st.booleans())), _instant_text(second, draw(st.booleans()))]
    elif operator == "within_last":
        node["value"] = {"amount": draw(amounts), "unit": draw(st.sampled_from(["days", "hours"]))}
    else:
        node["value"] = draw(date_strings(valid_only=True))
    return node


def _instant_text(hours: int, as_day: bool) -> str:
    instant = NOW + timedelta(hours=hours)
    return instant.strftime("%Y-%m-%d") if as_day else instant.strftime("%Y-%m-%dT%H:%M:%SZ")


@st.composite
def identity_conditions(draw) -> dict:
    operator = draw(st.sampled_from(["exists", "not_exists", "matches", "not_matches"]))
    node = {"identity": draw(st.sampled_from(IDENTITY_TYPES)), "operator": operator}
    if operator in ("matches", "not_matches"):
        node["value"] = draw(patterns)
    return node


@st.composite
def event_conditions(draw) -> dict:
    node: dict = {"event": draw(st.sampled_from(EVENT_NAMES).flatmap(mixed_case))}
    if draw(st.booleans()):
        node["attributes"] = draw(st.lists(attribute_conditions(EVENT_ATTRIBUTE_NAMES), max_size=2))
    if draw(st.booleans()):
        operator = draw(st.sampled_from(["at_least", "more_than", "fewer_than"]))
        low = 1 if operator == "fewer_than" else 0
        node["frequency"] = {"operator": operator, "count": draw(st.integers(low, 3))}
    if draw(st.booleans()):
        if draw(st.booleans()):
            unit = draw(st.sampled_from(["days", "hours"]))
            node["recency"] = {"within_last": {"amount": draw(amounts), "unit": unit}}
        else:
            first, second = sorted(draw(st.lists(hours, min_size=2, max_size=2)))
            node["recency"] = {
                "between": [_instant_text(first, draw(st.booleans())), _instant_text(second, draw(st.booleans()))]
            }
    return node


# An audience condition names one of the two other audiences by its index; replaced by the id per example.
audience_conditions = st.builds(
    lambda index, operator: {"audience": index, "operator": operator},
    st.sampled_from([0, 1]),
    st.sampled_from(["member", "not_member"]),
)

split_conditions = st.builds(
    lambda seed, bounds: {"split": seed, "buckets": sorted(bounds)},
    st.one_of(st.sampled_from(["a", "test 1", "é%_"]), st.integers(0, 10**6)),
    st.lists(st.integers(0, 100), min_size=2, max_size=2, unique=True),
)

leaves = st.one_of(
    split_conditions,
    attribute_conditions(ATTRIBUTE_NAMES),
    attribute_conditions(ATTRIBUTE_NAMES),
    event_conditions(),
    event_conditions(),
    identity_conditions(),
    audience_conditions,
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(lambda nodes: {"and": nodes}, st.lists(children, max_size=3)),
        st.builds(lambda nodes: {"or": nodes}, st.lists(children, max_size=3)),
        st.builds(lambda node: {"exclude": node}, children),
    ),
    max_leaves=6,
)

# --- profiles ----------------------------------------------------------------------------------

events = st.builds(
    lambda name, attributes, hours: (name, attributes, NOW + timedelta(hours=hours)),
    st.sampled_from(EVENT_NAMES).flatmap(mixed_case),
    st.dictionaries(st.sampled_from(EVENT_ATTRIBUTE_NAMES), values, max_size=2),
    hours,
)
profiles = st.fixed_dictionaries(
    {
        "attributes": st.dictionaries(st.sampled_from(ATTRIBUTE_NAMES), values, max_size=4),
        "identities": st.lists(st.tuples(st.sampled_from(IDENTITY_TYPES), text), max_size=2),
        "events": st.lists(events, max_size=6),
        "memberships": st.sets(st.sampled_from([0, 1])),
    }
)


def _with_audience_ids(node: dict, audience_ids: list[int]) -> dict:
    if "audience" in node:
        return {**node, "audience": audience_ids[node["audience"]]}
    if "exclude" in node:
        return {"exclude": _with_audience_ids(node["exclude"], audience_ids)}
    for kind in ("and", "or"):
        if kind in node:
            return {kind: [_with_audience_ids(child, audience_ids) for child in node[kind]]}
    return node


def _store(generated: list[dict], audience_ids: list[int]) -> list[int]:
    """Write the generated profiles to the database; return their ids."""
    rows = Profile.objects.bulk_create([Profile(attributes=spec["attributes"]) for spec in generated])
    identities, event_rows, memberships, seen = [], [], [], set()
    for profile, spec in zip(rows, generated, strict=True):
        for pair in spec["identities"]:
            if pair not in seen:  # an identity belongs to one profile
                seen.add(pair)
                identities.append(Identity(profile=profile, type=pair[0], value=pair[1]))
        for name, attributes, timestamp in spec["events"]:
            event_rows.append(
                Event(
                    profile=profile,
                    event_type="custom_event",
                    name=name,
                    attributes=attributes,
                    timestamp=timestamp,
                    received_at=NOW,
                )
            )
        for index in spec["memberships"]:
            memberships.append(AudienceMembership(audience_id=audience_ids[index], profile=profile, entered_at=NOW))
    Identity.objects.bulk_create(identities)
    Event.objects.bulk_create(event_rows)
    AudienceMembership.objects.bulk_create(memberships)
    return [profile.pk for profile in rows]


def _sql_members(tree: dict) -> set[int]:
    sql, params = member_sql(tree, now=NOW)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.django_db
def test_sql_evaluator_selects_exactly_the_profiles_matches_accepts():
    if connection.vendor != "postgresql":
        service_missing("the set-based evaluator needs PostgreSQL")

    # Several trees per example: writing the profiles is the expensive part.
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(generated=st.lists(profiles, min_size=3, max_size=10), some_trees=st.lists(trees, min_size=1, max_size=8))
    def check(generated: list[dict], some_trees: list[dict]) -> None:
        with transaction.atomic():
            audience_ids = [Audience.objects.create(name=f"other {i}").pk for i in range(2)]
            profile_ids = _store(generated, audience_ids)
            for tree in some_trees:
                tree = _with_audience_ids(tree, audience_ids)
                # What real-time evaluation reads for this tree: the events of its window, no more.
                facts = load_facts(profile_ids, now=NOW, events_since=event_window_start(tree, NOW))
                assert set(facts) == set(profile_ids)
                expected = {pid for pid, profile in facts.items() if matches(tree, profile, NOW)}
                assert _sql_members(tree) & set(profile_ids) == expected, tree
            transaction.set_rollback(True)

    check()
