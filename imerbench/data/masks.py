"""Availability masks: which modalities each utterance shows to a model.

Masks are data, not randomness. Evaluation masks are drawn once per
(dataset, fold, split, mask spec, mask seed), stored, and shared by every method; training masks
are drawn for a whole training split per epoch from the cell. No stream depends on the method or
its batch size. A mask is a bool array [n, 3] over the modalities ("a", "t", "v"); True means the
modality is present.

The missing-rate procedure is the one of CPM-Nets as released with GCNet (`random_mask`), which
every paper of this line uses; see `draw_rate_mask` for what is kept of it and why. Stored
evaluation masks: `mask_store.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from imerbench.data.corpus import MODALITIES, SUBSETS
from imerbench.errors import ImerbenchError
from imerbench.seeding import rng as derived_rng

MAX_MISSING_RATE = 0.7
# The published code draws masks over one batch of padded positions: 65 x 32 = 2080 for MOSI.
# The protocol's statistics table was measured at that size, and the redraw-until-close loop
# makes the per-utterance statistics depend on it, so every draw is made in blocks of this size.
BLOCK_SIZE = 65 * 32
ACCEPT_ERROR = 0.005  # the published loop redraws while |kept - (1 - MR)| >= 0.005
# The published loop redraws forever where no block can pass (e.g. MR 0.66, where both integer
# percentages truncate to 0): give up after this many candidate blocks without an accepted one.
_MAX_CANDIDATES = 4096
_NUM_M = len(MODALITIES)


def _fmt(x: float) -> str:
    """The shortest text that reads back as the same float (the stable form of a rate)."""
    return repr(float(x))


@dataclass(frozen=True)
class MaskSpec:
    """How availability masks are drawn: exactly one of the three fields is set.

    - `rate`: a missing rate in [0, 0.7], drawn with the published procedure;
    - `condition`: a fixed subset of "atv"; every utterance keeps exactly those modalities;
    - `rates`: per-modality missing rates (r_a, r_t, r_v), each in [0, 1), dropped
      independently; an utterance left with nothing keeps one modality, drawn with probability
      proportional to 1 - r_m.
    """

    rate: float | None = None
    condition: str | None = None
    rates: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        set_fields = sum(x is not None for x in (self.rate, self.condition, self.rates))
        if set_fields != 1:
            raise ImerbenchError(
                "a mask spec is exactly one of: a missing rate, a condition, per-modality rates"
            )
        if self.rate is not None:
            object.__setattr__(self, "rate", _check_rate(self.rate))
        if self.condition is not None:
            object.__setattr__(self, "condition", _check_condition(self.condition))
        if self.rates is not None:
            object.__setattr__(self, "rates", _check_rates(self.rates))

    @classmethod
    def missing_rate(cls, rate: float) -> MaskSpec:
        return cls(rate=rate)

    @classmethod
    def fixed(cls, condition: str) -> MaskSpec:
        return cls(condition=condition)

    @classmethod
    def per_modality(cls, r_a: float, r_t: float, r_v: float) -> MaskSpec:
        return cls(rates=(r_a, r_t, r_v))

    @property
    def kind(self) -> str:
        """'rate', 'condition' or 'rates'."""
        if self.rate is not None:
            return "rate"
        return "condition" if self.condition is not None else "rates"

    def __str__(self) -> str:
        """The form `parse_mask_spec` reads back: '0.3', 'at', 'a=0.1,t=0.2,v=0.6'."""
        if self.rate is not None:
            return _fmt(self.rate)
        if self.condition is not None:
            return self.condition
        assert self.rates is not None
        return ",".join(f"{m}={_fmt(r)}" for m, r in zip(MODALITIES, self.rates, strict=True))

    @property
    def key(self) -> str:
        """A file-name-safe stable form: 'mr0.3', 'cond-at', 'rates-a0.1-t0.2-v0.6'."""
        if self.rate is not None:
            return f"mr{_fmt(self.rate)}"
        if self.condition is not None:
            return f"cond-{self.condition}"
        assert self.rates is not None
        parts = "-".join(f"{m}{_fmt(r)}" for m, r in zip(MODALITIES, self.rates, strict=True))
        return f"rates-{parts}"


def _as_float(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise ImerbenchError(f"{what} {value!r} is not a number")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ImerbenchError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ImerbenchError(f"{what} {value!r} is not a finite number")
    return x


def _check_rate(value: object) -> float:
    x = _as_float(value, "missing rate")
    if not 0.0 <= x <= MAX_MISSING_RATE + 1e-9:
        raise ImerbenchError(
            f"missing rate {value!r} is outside [0, {MAX_MISSING_RATE}]: every utterance keeps "
            "at least one of three modalities, so at most 2/3 (written 0.7, as in the papers) "
            "can be missing"
        )
    return min(x, MAX_MISSING_RATE)


def _check_condition(value: object) -> str:
    text = str(value).strip().lower()
    if not text or len(set(text)) != len(text) or not set(text) <= set(MODALITIES):
        raise ImerbenchError(
            f"mask condition {value!r} is not a set of modalities; valid: {', '.join(SUBSETS)}"
        )
    return "".join(m for m in MODALITIES if m in text)


def _check_rates(value: object) -> tuple[float, float, float]:
    try:
        items = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        items = ()
    if len(items) != _NUM_M:
        raise ImerbenchError(f"per-modality rates {value!r} must be three numbers (a, t, v)")
    out = []
    for m, r in zip(MODALITIES, items, strict=True):
        x = _as_float(r, f"missing rate of '{m}'")
        if not 0.0 <= x < 1.0:
            raise ImerbenchError(
                f"missing rate of '{m}' {r!r} is outside [0, 1): a modality that is always "
                "missing is a condition (e.g. 'at'), not a rate"
            )
        out.append(x)
    return (out[0], out[1], out[2])


def parse_mask_spec(text: str | float | MaskSpec) -> MaskSpec:
    """Read a mask spec: '0.3' (missing rate), 'at' (condition), 'a=0.1,t=0.2,v=0.6' (rates).

    In the per-modality form a modality left out has rate 0 ('v=0.5' drops only video).
    """
    if isinstance(text, MaskSpec):
        return text
    if isinstance(text, int | float) and not isinstance(text, bool):
        return MaskSpec(rate=float(text))
    raw = str(text)
    s = raw.strip().lower().replace(" ", "")
    allowed = (
        "a missing rate in [0, 0.7] (e.g. '0.3'), a condition "
        f"({', '.join(SUBSETS)}) or per-modality rates (e.g. 'a=0.1,t=0.2,v=0.6')"
    )
    if not s:
        raise ImerbenchError(f"mask spec {raw!r} is empty; expected {allowed}")
    if "=" in s:
        rates = dict.fromkeys(MODALITIES, 0.0)
        seen: set[str] = set()
        for part in s.split(","):
            m, sep, r = part.partition("=")
            if not sep or m not in MODALITIES or m in seen:
                raise ImerbenchError(
                    f"mask spec {raw!r}: '{part}' is not 'm=rate' with m one of a, t, v "
                    "(each at most once)"
                )
            seen.add(m)
            rates[m] = _as_float(r, f"missing rate of '{m}'")
        return MaskSpec(rates=(rates["a"], rates["t"], rates["v"]))
    if s[0].isdigit() or s[0] in ".-+":
        try:
            x = float(s)
        except ValueError:
            raise ImerbenchError(f"mask spec {raw!r} is not {allowed}") from None
        return MaskSpec(rate=x)
    if set(s) <= set(MODALITIES):
        return MaskSpec(condition=s)
    raise ImerbenchError(f"mask spec {raw!r} is not {allowed}")


# --------------------------------------------------------------------------------------------
# Drawing


def _rate_blocks(count: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """`count` accepted blocks [count, BLOCK_SIZE, 3] of the published multi-view branch.

    Candidate blocks are drawn in batches and the accepted ones used in order; this is the
    published sequential redraw loop, since each accepted block is the first accepted candidate
    after the previous one.
    """
    n, m = BLOCK_SIZE, _NUM_M
    one_rate = 1 - rate
    # The published arithmetic, in the same order, so that the integer percentages truncate at
    # the same places (e.g. int(0.57 * 100) is 56).
    one_num = m * n * one_rate - n  # extra positions still to fill after the one-hot step
    ratio1 = one_num / (m * n)
    pct1 = int(ratio1 * 100)
    out = np.empty((count, n, m), dtype=bool)
    filled = 0
    tried = 0
    batch = min(64, 4 * count)
    while filled < count:
        idx = rng.integers(0, m, size=(batch, n))
        onehot = idx[:, :, None] == np.arange(m)
        first = rng.integers(0, 100, size=(batch, n, m), dtype=np.uint8) < pct1
        overlap = (first & onehot).sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            one_num_iter = one_num / (1 - overlap / one_num)
            ratio2 = one_num_iter / (m * n) * 100
        # Beyond 100% every draw is kept; a non-finite ratio (overlap == one_num) keeps all too.
        pct2 = np.where(np.isfinite(ratio2), np.clip(np.trunc(ratio2), -1, 100), 100)
        second = rng.integers(0, 100, size=(batch, n, m), dtype=np.uint8) < pct2[:, None, None]
        block = second | onehot
        kept = block.sum(axis=(1, 2)) / (m * n)
        accepted = np.flatnonzero(np.abs(one_rate - kept) < ACCEPT_ERROR)
        take = accepted[: count - filled]
        out[filled : filled + len(take)] = block[take]
        filled += len(take)
        tried += batch
        if tried >= _MAX_CANDIDATES * max(filled, 1) and filled < count:
            raise ImerbenchError(
                f"missing rate {_fmt(rate)}: the published procedure cannot realize it (its "
                f"kept fraction does not come within {ACCEPT_ERROR} of {1 - rate:.3f}); "
                "choose another rate, e.g. a multiple of 0.1"
            )
        # Aim the next batch at what is left, from the acceptance seen so far.
        need = count - filled
        rate_seen = max(filled, 1) / tried
        batch = int(min(256, max(4, 1.5 * need / rate_seen)))
    return out


def draw_rate_mask(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A [n, 3] bool mask with missing rate `rate`, by the published CPM-Nets/GCNet procedure.

    - rate 0: all present.
    - 1 - rate <= 1/3 (rate 0.7): one modality per utterance, uniformly (realized rate 2/3).
    - otherwise, per block: a uniform one-hot guaranteed modality per utterance; a first guess
      of the extra-draw probability, (3 * keep - 1) / 3, used once only to count how many of its
      draws fall on the one-hot positions (the overlap); the guess corrected for that overlap,
      one_num / (1 - overlap / one_num); a fresh independent draw of extras at that probability
      ORed with the one-hot. Each Bernoulli draw compares a uniform integer in 0..99 with the
      truncated integer percentage, as the released code does. The whole block is redrawn until
      its kept fraction is within 0.005 of 1 - rate.

    Blocks: the released code draws over one batch of padded positions, and its redraw loop
    makes the per-utterance statistics depend on the block size (the acceptance picks blocks
    whose truncated percentage lands on one side). The protocol table was measured on blocks of
    65 x 32 = 2080 positions (a MOSI batch), so every block here, the last partial one included,
    is drawn at 2080 and cut to the needed count. This gives the table's per-utterance
    statistics for any n (the released code draws fewer than 32 utterances at 32; 2080 covers
    that), at the price that a short draw's realized rate is not forced to within 0.005.
    """
    rate = _check_rate(rate)
    one_rate = 1.0 - rate
    if n < 0:
        raise ImerbenchError(f"cannot draw a mask for {n} utterances")
    if one_rate == 1.0:
        return np.ones((n, _NUM_M), dtype=bool)
    if one_rate <= 1 / _NUM_M:
        idx = rng.integers(0, _NUM_M, size=n)
        return idx[:, None] == np.arange(_NUM_M)
    if n == 0:
        return np.zeros((0, _NUM_M), dtype=bool)
    count = -(-n // BLOCK_SIZE)
    blocks = _rate_blocks(count, rate, rng)
    return blocks.reshape(-1, _NUM_M)[:n].copy()


def _draw_rates_mask(
    n: int, rates: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    keep = 1.0 - np.asarray(rates, dtype=np.float64)
    mask = rng.random((n, _NUM_M)) < keep
    empty = np.flatnonzero(~mask.any(axis=1))
    if len(empty):
        pick = rng.choice(_NUM_M, size=len(empty), p=keep / keep.sum())
        mask[empty, pick] = True
    return mask


def _draw_one(spec: MaskSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    if spec.rate is not None:
        return draw_rate_mask(n, spec.rate, rng)
    if spec.condition is not None:
        row = np.array([m in spec.condition for m in MODALITIES], dtype=bool)
        return np.tile(row, (n, 1))
    assert spec.rates is not None
    return _draw_rates_mask(n, spec.rates, rng)


def draw_mask(
    spec: MaskSpec,
    n: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """A [n, 3] bool mask for `spec`.

    With `groups` (e.g. IEMOCAP speaker ids, one per utterance), each group is drawn on its own,
    as the published code draws the two speakers' masks independently: groups in ascending
    order of their value, each over its utterances in index order.
    """
    if n < 0:
        raise ImerbenchError(f"cannot draw a mask for {n} utterances")
    if groups is None:
        return _draw_one(spec, n, rng)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ImerbenchError(f"mask groups have shape {groups.shape}, expected ({n},)")
    mask = np.empty((n, _NUM_M), dtype=bool)
    for g in np.unique(groups):
        where = np.flatnonzero(groups == g)
        mask[where] = _draw_one(spec, len(where), rng)
    return mask


def eval_mask(
    corpus_name: str,
    fold: int,
    split: str,
    spec: MaskSpec,
    mask_seed: int,
    n: int,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """The evaluation mask of one (dataset, fold, split, spec, mask seed): no method enters."""
    gen = derived_rng("eval-mask", corpus_name, int(fold), split, spec.key, int(mask_seed))
    return draw_mask(spec, n, gen, groups)


def train_mask(
    corpus_name: str,
    fold: int,
    spec: MaskSpec,
    seed: int,
    epoch: int,
    n: int,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """One epoch's mask over the whole training split, from the cell: no method, no batch size."""
    gen = derived_rng("train-mask", corpus_name, int(fold), spec.key, int(seed), int(epoch))
    return draw_mask(spec, n, gen, groups)


def holdout_mask(
    corpus_name: str, fold: int, spec: MaskSpec, seed: int, n: int, groups: np.ndarray | None
) -> np.ndarray:
    """The mask of the training dialogues a method held out (`hold_out`): drawn as the
    training masks are, once, from its own stream."""
    gen = derived_rng("holdout-mask", corpus_name, int(fold), spec.key, int(seed))
    return draw_mask(spec, n, gen, groups)


def realized_missing_rate(mask: np.ndarray) -> float:
    """The fraction of (utterance, modality) entries that are missing; NaN for no utterance."""
    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        return float("nan")
    return float(1.0 - mask.mean())
