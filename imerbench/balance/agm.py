"""AGM (Li et al., ICCV 2023): adaptive gradient modulation. A Shapley split of the fused
output over modality subsets gives each modality's share r_m; each encoder's gradient is
scaled so that its share's loss keeps its long-run level relative to the others.

Per step, over the active modalities A (present at `min_present` utterances or more),
M' = |A|: f(S) = the fused prediction with only the modalities in S present (availability
bits cleared, as a missing modality is; each utterance keeps S within what it has), for
every non-empty S of A, in evaluation mode without gradient; f(empty) = 0; r_m = the
Shapley value of m (M' = 3: (f(atv) - f(tv) + f(a)) / 3 + (f(at) - f(t) + f(av) - f(v)) / 6;
the shares sum to f(A)). s_m = mean over the utterances where m is present of
-log max(softmax(r_m)[y], 1e-8) (regression: |r_m - y|); ratio_m = exp(M'/(M'-1)
(mean_A s - s_m)); S_m = the running mean of s_m over the steps m was active (0 before its
first), opt_m = the same formula on S; k_m = exp(alpha min(opt_m - ratio_m, cap)) (above 1
where m lags its own history); then S is updated. Every parameter of m's encoder has its
gradient times k_m.

The released code scales the gradient reaching r_m through a backward hook on the model's
own Shapley outputs; scaling the encoder gradients after backward is BalanceBenchmark's
form, which needs no change to a model (the two agree where fusion is additive). Outside
the window k is 1 (the released hook keeps the last k); the released gradient-norm clipping
is not applied (methods clip as they do without AGM). Defaults: alpha 1 and the window of
epochs 0-20 (released), cap 7 (the released three-modality run, UR-Funny).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import torch
from torch import Tensor, nn

from imerbench.balance import register_strategy
from imerbench.balance.base import WINDOW_PARAMS, BalanceState, Strategy, presence
from imerbench.data import MODALITIES, Batch
from imerbench.losses import masked_mean
from imerbench.method import Param, Part

Subset = frozenset[str]


def subset_predictions(
    model: nn.Module, batch: Batch, players: Sequence[str], stage: str
) -> dict[Subset, Tensor]:
    """f(S) for every non-empty S of `players`: the fused prediction [B, L, C] with only the
    modalities of S present, in evaluation mode, without gradient; 0 at an utterance that
    has none of S (f(empty) = 0, not the model's output on no input)."""
    was_training = model.training
    model.eval()
    out = {}
    try:
        with torch.no_grad():
            device = batch.valid.device
            for size in range(1, len(players) + 1):
                for subset in combinations(players, size):
                    keep = torch.tensor([m in subset for m in MODALITIES], device=device)
                    available = batch.available & keep
                    features = {
                        m: batch.features[m] * available[..., k : k + 1]
                        for k, m in enumerate(MODALITIES)
                    }
                    view = batch.replace(features=features, available=available, complete=None)
                    shown = available.any(-1, keepdim=True)
                    out[frozenset(subset)] = model(view, stage).fused.float() * shown
    finally:
        model.train(was_training)
    return out


def shapley(f: dict[Subset, Tensor], players: Sequence[str]) -> dict[str, Tensor]:
    """Each player's Shapley value of the set function f (f(empty) = 0)."""
    n = len(players)
    shares = {}
    for m in players:
        others = [p for p in players if p != m]
        total = torch.zeros_like(f[frozenset(players)])
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in map(frozenset, combinations(others, size)):
                without = f[subset] if subset else 0.0
                total = total + weight * (f[subset | {m}] - without)
        shares[m] = total
    return shares


def share_losses(shares: dict[str, Tensor], batch: Batch) -> dict[str, float]:
    """s_m: each share's loss, averaged over the utterances where m is present."""
    present = presence(batch)
    out = {}
    for m, r in shares.items():
        if batch.labels.dtype.is_floating_point:
            per_utterance = (r.squeeze(-1) - batch.labels).abs()
        else:
            p = r.softmax(-1).gather(-1, batch.labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            per_utterance = -torch.log(p.clamp(min=1e-8))
        out[m] = float(masked_mean(per_utterance, present[m]))
    return out


def relative(values: dict[str, float]) -> dict[str, float]:
    """exp(M/(M-1) (mean - value)) for each of the M values."""
    n = len(values)
    mean = sum(values.values()) / n
    return {m: math.exp(n / (n - 1) * (mean - v)) for m, v in values.items()}


def coefficients(
    scores: dict[str, float], history: dict[str, float], alpha: float, cap: float
) -> dict[str, float]:
    """k_m from this step's share losses and their running means (same modalities)."""
    ratio, optimal = relative(scores), relative({m: history[m] for m in scores})
    return {m: math.exp(alpha * min(optimal[m] - ratio[m], cap)) for m in scores}


def remember(history: dict[str, float], steps: dict[str, int], scores: dict[str, float]) -> None:
    """Fold this step's share losses into their running means (each over its own steps)."""
    for m, score in scores.items():
        steps[m] += 1
        history[m] += (score - history[m]) / steps[m]


@register_strategy("agm")
class AGM(Strategy):
    """Adaptive gradient modulation from Shapley shares of the fused output."""

    summary = "scales each encoder so its Shapley share's loss keeps its own long-run level"
    params = {
        "alpha": Param(1.0, low=0.0, help="modulation strength"),
        "cap": Param(7.0, low=0.0, help="upper bound of opt_m - ratio_m"),
        **WINDOW_PARAMS,
        "end_epoch": Param(20, low=0, help="last epoch it acts in"),
    }
    needs = frozenset({"encoders"})

    def build_state(self, state: BalanceState, spec: Any, method: Any) -> None:
        state.values["history"] = {m: 0.0 for m in MODALITIES}
        state.values["steps"] = {m: 0 for m in MODALITIES}

    def after_backward(
        self, model: nn.Module, out: Any, batch: Batch, parts: dict[str, list[Part]],
        state: BalanceState,
    ) -> None:  # fmt: skip
        acting = self.balancing(batch, state)
        if acting is None:
            return
        players = acting[1]
        shares = shapley(subset_predictions(model, batch, players, state.stage), players)
        scores = share_losses(shares, batch)
        history, steps = state.values["history"], state.values["steps"]
        k = coefficients(scores, history, self.hp["alpha"], self.hp["cap"])
        remember(history, steps, scores)
        state.values["coefficients"] = k
        for m in players:
            for part in parts[m]:
                grad = part.grad()
                if grad is not None:
                    grad.mul_(k[m])
