"""Seeds derived from the cell, so that every random stream can be replayed alone."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' string forms: stable across runs, machines and Pythons."""
    text = "|".join(str(p) for p in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def rng(*parts: object) -> np.random.Generator:
    """A numpy generator seeded from the parts (see `derive_seed`)."""
    return np.random.default_rng(derive_seed(*parts))
