"""A/B split nodes: stable per profile, each variation's share its percentage (±2 points over 100,000
profiles), the SQL compiler and the per-profile evaluator selecting the same profiles, validation naming
the path."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from audiences.criteria import compile_criteria, validate_criteria
from audiences.criteria.buckets import profile_bucket
from audiences.criteria.facts import ProfileFacts
from audiences.criteria.sql import member_sql
from audiences.models import Profile
from tests.conftest import service_missing

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
PROFILES = 100_000
# Five variations with set percentages, as an audience split into A..E.
VARIATIONS = [(0, 10), (10, 30), (30, 60), (60, 85), (85, 100)]


def _split(low: int, high: int, seed: str = "homepage-test") -> dict:
    return {"split": seed, "buckets": [low, high]}


def test_a_profile_keeps_its_bucket_and_seeds_are_independent():
    assert [profile_bucket(42, "s") for _ in range(3)] == [profile_bucket(42, "s")] * 3
    # A whole number seed is the same seed as its text.
    assert profile_bucket(42, 7) == profile_bucket(42, "7")
    # Another seed reshuffles: the buckets of 1,000 profiles are not the same under two seeds.
    same = sum(profile_bucket(pid, "one") == profile_bucket(pid, "two") for pid in range(1000))
    assert same < 50


def test_each_variation_holds_its_percentage_of_100000_profiles_and_every_profile_exactly_one():
    predicates = [compile_criteria(_split(low, high)) for low, high in VARIATIONS]
    counts = [0] * len(VARIATIONS)
    for pid in range(1, PROFILES + 1):
        facts = ProfileFacts(profile_id=pid, attributes={})
        held = [index for index, predicate in enumerate(predicates) if predicate(facts, NOW)]
        assert len(held) == 1, pid  # the variations partition the profiles
        counts[held[0]] += 1
    for (low, high), count in zip(VARIATIONS, counts, strict=True):
        assert abs(count / PROFILES * 100 - (high - low)) <= 2, (low, high, count)


@pytest.mark.django_db
def test_the_sql_compiler_selects_exactly_the_profiles_the_evaluator_puts_in_each_variation():
    if connection.vendor != "postgresql":
        service_missing("the set-based evaluator needs PostgreSQL")
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Profile._meta.db_table} (mpid, attributes, created_at, updated_at) "
            "SELECT n, '{}'::jsonb, now(), now() FROM generate_series(1, %s) n",
            [PROFILES],
        )
    ids = list(Profile.objects.values_list("pk", flat=True))
    for low, high in VARIATIONS:
        tree = {"and": [_split(low, high)]}
        sql, params = member_sql(tree, now=NOW)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            in_sql = {row[0] for row in cursor.fetchall()}
        predicate = compile_criteria(tree)
        in_python = {pid for pid in ids if predicate(ProfileFacts(profile_id=pid, attributes={}), NOW)}
        assert in_sql == in_python
        assert abs(len(in_sql) / PROFILES * 100 - (high - low)) <= 2


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"split": "", "buckets": [0, 50]}, "criteria.split: expected a seed"),
        ({"split": True, "buckets": [0, 50]}, "criteria.split: expected a seed"),
        ({"split": "s"}, "criteria.buckets: expected [from, to]"),
        ({"split": "s", "buckets": [50, 50]}, "criteria.buckets: expected [from, to]"),
        ({"split": "s", "buckets": [0, 101]}, "criteria.buckets: expected [from, to]"),
        ({"split": "s", "buckets": [0.5, 10]}, "criteria.buckets: expected [from, to]"),
        ({"and": [{"split": "s", "buckets": [0, 10], "x": 1}]}, "criteria.and[0].x: unknown key"),
    ],
)
def test_validation_names_the_path_of_a_bad_split(tree, message):
    with pytest.raises(ValidationError) as caught:
        validate_criteria(tree)
    assert caught.value.messages[0].startswith(message)


def test_a_valid_split_is_accepted():
    assert validate_criteria({"and": [_split(0, 100), {"split": 12, "buckets": [0, 1]}]})
