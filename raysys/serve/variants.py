"""Which A/B variant a user is in: a pure function of the user id, the salt and the weights.

    split = VariantSplit.of(settings, model_dir)     # serve.variants (or one variant, "default")
    split.assign("u42")                              # -> "b"; None (no user id) -> the first variant
    bucket("u42", "raysys-ab")                       # -> 0..9999: sha256(salt + user_id) mod 10,000

The 10,000 buckets are cut into consecutive ranges, one per variant in config order, each as wide as its
weight's share (the last range ends at 10,000). The assignment depends on nothing but the id, the salt and
the weights, so a user keeps its variant across requests, replicas and restarts; a weight change moves
only the buckets whose range changes hands (50/50 -> 60/40 moves buckets 5,000..5,999, 10 % of the users,
from the second variant to the first). A light module (no Ray, no torch).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from raysys.config import ReplicaOptions

BUCKETS = 10_000
DEFAULT_VARIANT = "default"  # the one variant of an endpoint without serve.variants


def bucket(user_id: str, salt: str) -> int:
    """The user's bucket, 0..BUCKETS-1: sha256(salt + user_id) read as a big-endian integer, mod BUCKETS."""
    return int.from_bytes(hashlib.sha256((salt + user_id).encode()).digest(), "big") % BUCKETS


@dataclass(frozen=True)
class Variant:
    name: str
    model_dir: str
    weight: float


@dataclass(frozen=True)
class VariantSplit:
    """The variants in order and the end (exclusive) of each one's bucket range."""

    variants: tuple[Variant, ...]
    ends: tuple[int, ...]
    salt: str

    @classmethod
    def of(cls, options: ReplicaOptions, model_dir: str) -> VariantSplit:
        """The split `options.variants` describe (a variant without a model_dir serves `model_dir`)."""
        if not options.variants:
            return cls.weighted([Variant(DEFAULT_VARIANT, model_dir, 1.0)], options.ab_salt)
        variants = [Variant(v.name, v.model_dir or model_dir, v.weight) for v in options.variants]
        return cls.weighted(variants, options.ab_salt)

    @classmethod
    def weighted(cls, variants: list[Variant], salt: str) -> VariantSplit:
        total, running, ends = sum(v.weight for v in variants), 0.0, []
        for variant in variants:
            running += variant.weight
            ends.append(min(BUCKETS, int(BUCKETS * running / total)))
        ends[-1] = BUCKETS
        return cls(tuple(variants), tuple(ends), salt)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    def assign(self, user_id: str | None) -> str:
        """The user's variant; the first one for a request without a user id."""
        if user_id is None:
            return self.variants[0].name
        b = bucket(user_id, self.salt)
        return next(v.name for v, end in zip(self.variants, self.ends, strict=True) if b < end)

    def shares(self) -> dict[str, float]:
        """Each variant's share of the buckets (of the users, in expectation)."""
        starts = (0, *self.ends[:-1])
        return {v.name: (end - start) / BUCKETS for v, start, end in zip(self.variants, starts, self.ends, strict=True)}
