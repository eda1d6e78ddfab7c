"""Deterministic random streams.

Every random draw of a condition is taken from a generator seeded by
``(run seed, condition name, sample id)``, so numbers do not depend on batch size, order, worker
count or executor. Ground floor: imports nothing of medfail, so every layer may use it.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(run_seed: int, *parts: str) -> int:
    """A 64-bit seed from the run seed and any number of string parts (stable across processes)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(run_seed)).encode())
    for part in parts:
        h.update(b"\x00")
        h.update(str(part).encode())
    return int.from_bytes(h.digest(), "little")


def sample_rng(run_seed: int, condition: str, sample_id: str) -> np.random.Generator:
    """The numpy generator for one sample under one condition."""
    return np.random.default_rng(derive_seed(run_seed, condition, sample_id))
