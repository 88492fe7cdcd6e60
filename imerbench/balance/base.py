"""The strategy interface: what a balance strategy declares, what a method offers it, and the
per-run state a strategy keeps in the model.

A strategy acts through the loop's hooks of the method it is composed with
(`imerbench/balance/compose.py`): an extra loss term, a gradient change after backward, an
update at the end of an epoch. It acts in the method's last stage only (a first stage that
trains modalities apart, as MoMKE's, has no imbalance to correct). What it needs of the
method is declared in `needs`, and checked against the method's `offers` before anything
runs (`../shared/specs/balance.md` is the source of every rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from imerbench.data import MODALITIES, Batch
from imerbench.errors import ImerbenchError, did_you_mean
from imerbench.method import DataSpec, HParams, Param, Part

# What a method may offer a strategy (`Method.offers`), and what each means.
OFFERS: dict[str, str] = {
    "heads": "out.heads[m]: unimodal predictions [B, L, C] of modality m alone, every modality",
    "features": "out.extras['modality_features'][m]: modality m's input to the fusion [B, L, d]",
    "encoders": "Method.modality_parts(model): each modality's own (disjoint) parameters",
}


def modality_features(out: Any) -> dict[str, Tensor]:
    """The features a method offers (`OFFERS["features"]`)."""
    return out.extras["modality_features"]


def presence(batch: Batch) -> dict[str, Tensor]:
    """P_m as masks [B, L]: the real utterances where modality m is present."""
    return {m: batch.available[..., k] & batch.valid for k, m in enumerate(MODALITIES)}


def true_class_score(pred: Tensor, batch: Batch) -> Tensor:
    """Per utterance [B, L], how well a prediction fits its label: the softmax probability of
    the true class, or exp(-|error|) for regression (as p = exp(-cross-entropy))."""
    if batch.labels.dtype.is_floating_point:
        return torch.exp(-(pred.squeeze(-1) - batch.labels).abs())
    probs = pred.float().softmax(-1)
    return probs.gather(-1, batch.labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)


class BalanceState(nn.Module):
    """A strategy's per-run state, kept in the model it balances (`model.balance_state`):
    modules a strategy trains alongside (e.g. linear probes) are registered here before the
    optimizer is built; running statistics live in `values`. `epoch` counts the epochs of
    the current stage that have ended; `stage` is the stage the strategy acts in (for its
    own forward passes); `holdout` the training dialogues held out for it, when it asked
    for some (`Strategy.holdout`), set when the stage starts."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.values: dict[str, Any] = {}
        self.epoch = 0
        self.stage = stage
        self.holdout: Any = None


class Strategy:
    """Base class of every balance strategy. A created strategy is configuration only (its
    hyper-parameters frozen); what a run learns lives in the model's `BalanceState`.

    Class attributes a subclass sets: `params` (its hyper-parameters, with the published
    defaults), `needs` (names of `OFFERS` the method must offer; `needs_any`: at least one
    of these), `summary` (one line for `imerbench list`), `trains_heads`."""

    params: ClassVar[dict[str, Param]] = {}
    needs: ClassVar[frozenset[str]] = frozenset()
    needs_any: ClassVar[frozenset[str]] = frozenset()
    summary: ClassVar[str] = ""
    trains_heads: ClassVar[bool] = False  # adds every head's loss (MMPareto, G-Blending)

    def __init__(self, name: str, **hparams: Any) -> None:
        self.name = name
        self.hp = HParams(hparams)

    @classmethod
    def resolve(cls, name: str, overrides: Mapping[str, Any]) -> HParams:
        """Defaults, then the user's overrides, validated."""
        values = {k: p.default for k, p in cls.params.items()}
        for key, value in overrides.items():
            if key not in cls.params:
                raise ImerbenchError(
                    f"{name}: unknown hyper-parameter '{key}'{did_you_mean(key, cls.params)}; "
                    f"declared: {', '.join(sorted(cls.params)) or 'none'}"
                )
            values[key] = cls.params[key].validate(name, key, value)
        return HParams(values)

    @classmethod
    def missing(cls, offers: frozenset[str]) -> list[str]:
        """What a method offering `offers` lacks for this strategy (empty: it can carry it)."""
        lacking = sorted(cls.needs - offers)
        if cls.needs_any and not cls.needs_any & offers:
            lacking.append(" or ".join(sorted(cls.needs_any)))
        return lacking

    def holdout(self) -> float:
        """The fraction of the training dialogues the strategy holds out for its own
        measurements (0: none); the harness trains on the rest (`imerbench/compute.py`)."""
        return 0.0

    def in_window(self, state: BalanceState) -> bool:
        """Whether the current epoch of the stage (from 0) is in [start_epoch, end_epoch]."""
        return self.hp["start_epoch"] <= state.epoch <= self.hp["end_epoch"]

    def balancing(
        self, batch: Batch, state: BalanceState
    ) -> tuple[dict[str, Tensor], list[str]] | None:
        """(P_m, the active modalities) where the strategy acts on this batch: inside its
        window, with two active modalities at least; else None."""
        if not self.in_window(state):
            return None
        present = presence(batch)
        counts = {m: int(present[m].sum()) for m in MODALITIES}
        modalities = active(counts, self.hp["min_present"])
        return (present, modalities) if len(modalities) >= 2 else None

    # ---- hooks ---------------------------------------------------------------------------
    def build_state(self, state: BalanceState, spec: DataSpec, method: Any) -> None:
        """Register what the strategy trains or tracks (once, before the optimizer is built);
        `method` is the base method (its `offers`, `feature_widths`)."""

    def loss(
        self, model: nn.Module, out: Any, batch: Batch, base: Tensor, state: BalanceState
    ) -> Tensor:
        """The training loss given the method's own (`base`)."""
        return base

    def after_backward(
        self, model: nn.Module, out: Any, batch: Batch, parts: dict[str, list[Part]],
        state: BalanceState,
    ) -> None:  # fmt: skip
        """Change the gradients before the optimizer step."""

    def on_epoch_end(self, model: nn.Module, state: BalanceState) -> None:
        """After each epoch of the balanced stage (before `state.epoch` advances)."""


def active(counts: Mapping[str, int], min_present: int) -> list[str]:
    """The modalities present at `min_present` utterances or more of the batch."""
    return [m for m in MODALITIES if counts[m] >= min_present]


WINDOW_PARAMS = {
    "start_epoch": Param(0, low=0, help="first epoch of the stage it acts in (from 0)"),
    "end_epoch": Param(1000, low=0, help="last epoch it acts in"),
    "min_present": Param(4, low=1, help="a modality present at fewer utterances is left alone"),
}
