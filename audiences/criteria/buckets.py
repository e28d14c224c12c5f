"""A/B splits: the bucket (0..99) of a profile for a seed, the same in Python and in PostgreSQL.

A split node `{"split": <seed>, "buckets": [from, to]}` holds for the profiles whose bucket is in
[from, to). The bucket is the first 32 bits of md5("<seed>:<profile id>") modulo 100: deterministic (a
profile stays in its variation for as long as the seed is kept), independent between seeds, and uniform
enough that each variation's share is its percentage (tests/audiences/criteria/test_splits.py: ±2% over
100,000 profiles). md5 because PostgreSQL computes it natively and so the SQL compiler and the per-profile
evaluator agree bit for bit; it is no security measure.
"""

from __future__ import annotations

import hashlib

BUCKETS = 100  # a split's buckets are whole percentages
MAX_VARIATIONS = 5

# The same computation in SQL, over a profile id column and a text seed parameter.
# mod(), not %: the text goes through the driver's %s placeholders.
BUCKET_SQL = "mod(('x' || substr(md5({seed} || ':' || {profile_id}::text), 1, 8))::bit(32)::bigint, 100)"


def seed_text(seed: str | int) -> str:
    """The seed as hashed: a whole number seed and its decimal text are the same seed."""
    return str(seed)


def profile_bucket(profile_id: int, seed: str | int) -> int:
    """The profile's bucket (0..99) for this seed."""
    digest = hashlib.md5(f"{seed_text(seed)}:{profile_id}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16) % BUCKETS
