"""OGM-GE (Peng et al., CVPR 2022): slow down the encoders of the modalities whose unimodal
predictions fit the labels better than the weakest one's, and add Gaussian noise to every
active encoder's gradient (generalization enhancement).

Per step, over the active modalities A (present at `min_present` utterances or more):
s_m = mean over the utterances where m is present of p_m (the softmax probability of the
true class; exp(-|error|) for regression); rho_m = s_m / min_{k in A} s_k (two modalities:
the released ratio); k_m = 1 - tanh(alpha rho_m) if rho_m > 1, else 1; each matrix of m's
encoder: g <- k_m g + N(0, sd^2), sd the standard deviation of its unmodulated gradient
(`noise=false`: the OGM variant, no noise). Vectors (biases, norms) are left alone, as
BalanceBenchmark does (the released code changes 4-D convolution weights only).

The unimodal predictions are the method's heads where it offers them; otherwise linear
probes on its detached per-modality features, trained alongside by their own loss (it
never reaches the model). Defaults: alpha 0.3 (BalanceBenchmark; the released README uses
0.1 and 0.8), acting from the stage's first epoch to its end (the released window is the
first half of 100 epochs).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from imerbench.balance import register_strategy
from imerbench.balance.base import (
    WINDOW_PARAMS,
    BalanceState,
    Strategy,
    modality_features,
    presence,
    true_class_score,
)
from imerbench.data import MODALITIES, Batch
from imerbench.losses import masked_mean, task_loss
from imerbench.method import DataSpec, Param, Part


def coefficients(scores: dict[str, float], alpha: float) -> dict[str, float]:
    """k_m from the active modalities' mean scores s_m."""
    low = min(scores.values())
    out = {}
    for m, s in scores.items():
        rho = s / (low + 1e-5) if low < s else 1.0
        out[m] = 1.0 - math.tanh(alpha * rho) if rho > 1.0 else 1.0
    return out


@register_strategy("ogm-ge")
class OGMGE(Strategy):
    """On-the-fly gradient modulation with generalization enhancement."""

    summary = "slows the encoders of better-fitting modalities; noise on every active encoder"
    params = {
        "alpha": Param(0.3, low=0.0, help="modulation strength"),
        "noise": Param(True, help="add the Gaussian noise (false: OGM without GE)"),
        **WINDOW_PARAMS,
    }
    needs = frozenset({"encoders"})
    needs_any = frozenset({"heads", "features"})

    def build_state(self, state: BalanceState, spec: DataSpec, method: Any) -> None:
        if "heads" not in method.offers:  # linear probes on the detached features
            widths = method.feature_widths(spec)
            state.probes = nn.ModuleDict(
                {m: nn.Linear(widths[m], spec.num_classes) for m in MODALITIES}
            )

    def unimodal(self, out: Any, state: BalanceState) -> dict[str, Tensor]:
        if hasattr(state, "probes"):
            features = modality_features(out)
            return {m: state.probes[m](features[m].detach()) for m in MODALITIES}
        return dict(out.heads)

    def loss(
        self, model: nn.Module, out: Any, batch: Batch, base: Tensor, state: BalanceState
    ) -> Tensor:
        if not hasattr(state, "probes"):
            return base
        present = presence(batch)
        probes = self.unimodal(out, state)
        fit = [task_loss(probes[m], batch, where=present[m]) for m in MODALITIES]
        return base + torch.stack(fit).sum()

    def after_backward(
        self, model: nn.Module, out: Any, batch: Batch, parts: dict[str, list[Part]],
        state: BalanceState,
    ) -> None:  # fmt: skip
        acting = self.balancing(batch, state)
        if acting is None:
            return
        present, modalities = acting
        with torch.no_grad():
            unimodal = self.unimodal(out, state)
            scores = {
                m: float(masked_mean(true_class_score(unimodal[m], batch), present[m]))
                for m in modalities
            }
        k = coefficients(scores, self.hp["alpha"])
        state.values["coefficients"] = k
        for m in modalities:
            for part in parts[m]:
                grad = part.grad()
                if grad is None or not part.is_matrix:
                    continue
                sd = grad.std() + 1e-8 if grad.numel() > 1 else grad.new_zeros(())
                grad.mul_(k[m])
                if self.hp["noise"]:
                    grad.add_(torch.randn_like(grad) * sd)
