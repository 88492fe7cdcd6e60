"""PMR (Fan et al., CVPR 2023): prototypical modal rebalance. Each modality's class centroids
(prototypes) of its features make a non-parametric unimodal classifier; the modalities it
finds weaker get an extra prototype cross-entropy that reaches their encoders without
passing through the fusion.

Prototypes c_mk: the mean feature of modality m over the training utterances of class k
where m is present, accumulated (detached) during each epoch of the stage and updated at its
end: the first time c = new, then c <- (1 - mu) new + mu c; a class absent from the epoch
keeps its prototype, a class never seen is left out of the softmax. From the second epoch,
per step: d_mik = ||h_mi - c_mk|| (a square root with 1e-8 inside: finite gradient at 0),
q_mi = softmax_k(-d_mik), s_m = mean over P_m of q_mi[y_i]; every active modality whose s_m
is below the best active one's gets alpha CE(-d_m, y) over P_m (two modalities: the released
rule, which gives the weaker one alpha and the other 0). The released code builds its
prototypes before epoch 0 from a tenth of the training batches; here they come from the
previous epoch's batches (`../shared/specs/balance.md`, incomplete inputs). The paper's
entropy regulariser is not in the released code, nor here. Regression: prototypes of
label bins, the sign (`bins="sign"`) or the seven rounded values -3..3 (`bins="seven"`).
Defaults: alpha 1, mu 0.2 (the released arguments).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imerbench.balance import register_strategy
from imerbench.balance.base import (
    WINDOW_PARAMS,
    BalanceState,
    Strategy,
    active,
    modality_features,
    presence,
)
from imerbench.data import MODALITIES, Batch
from imerbench.method import DataSpec, Param

SEVEN = 3  # bins -3..3


def class_index(batch: Batch, bins: str) -> Tensor:
    """[B, L] the class (or label bin) of every utterance (0 at padding)."""
    if not batch.labels.dtype.is_floating_point:
        return batch.labels.clamp(min=0)
    if bins == "sign":
        return (batch.labels >= 0).long()
    return torch.round(batch.labels.clamp(-SEVEN, SEVEN)).long() + SEVEN


def distances(features: Tensor, prototypes: Tensor) -> Tensor:
    """Euclidean distances [N, K] of N features to K prototypes."""
    diff = features[:, None, :] - prototypes[None, :, :]
    return torch.sqrt((diff**2).sum(-1) + 1e-8)


@register_strategy("pmr")
class PMR(Strategy):
    """Prototype cross-entropy for the modalities the prototypes find weaker."""

    summary = "prototype cross-entropy for the weaker modalities, bypassing the fusion"
    params = {
        "alpha": Param(1.0, low=0.0, help="weight of the prototype cross-entropy"),
        "mu": Param(0.2, low=0.0, high=1.0, help="momentum of the prototypes"),
        "bins": Param("sign", choices=("sign", "seven"), help="regression label bins"),
        **WINDOW_PARAMS,
    }
    needs = frozenset({"features"})

    def build_state(self, state: BalanceState, spec: DataSpec, method: Any) -> None:
        regression = spec.task == "regression"
        classes = (2 if self.hp["bins"] == "sign" else 2 * SEVEN + 1) if regression else None
        widths = method.feature_widths(spec)
        k = classes or spec.num_classes
        state.values["sums"] = {m: torch.zeros(k, widths[m]) for m in MODALITIES}
        state.values["counts"] = {m: torch.zeros(k) for m in MODALITIES}
        state.values["prototypes"] = None  # m -> [K, d]; none before the first epoch ends
        state.values["seen"] = torch.zeros(len(MODALITIES), k, dtype=torch.bool)

    def accumulate(self, features: dict[str, Tensor], batch: Batch, state: BalanceState) -> None:
        y = class_index(batch, self.hp["bins"])
        for m, present in presence(batch).items():
            sums, counts = state.values["sums"][m], state.values["counts"][m]
            if sums.device != features[m].device:
                sums, counts = sums.to(features[m].device), counts.to(features[m].device)
                state.values["sums"][m], state.values["counts"][m] = sums, counts
            sums.index_add_(0, y[present], features[m][present].detach().float())
            counts += torch.bincount(y[present], minlength=counts.numel()).float()

    def on_epoch_end(self, model: nn.Module, state: BalanceState) -> None:
        old = state.values["prototypes"]
        new = {}
        for i, m in enumerate(MODALITIES):
            sums, counts = state.values["sums"][m], state.values["counts"][m]
            here = counts > 0
            fresh = sums / counts.clamp(min=1.0)[:, None]
            seen = state.values["seen"].to(here.device)
            if old is None:
                new[m] = fresh
            else:  # a class's first prototype is its mean, not a blend with nothing
                mixed = (1 - self.hp["mu"]) * fresh + self.hp["mu"] * old[m]
                mixed = torch.where(seen[i][:, None], mixed, fresh)
                new[m] = torch.where(here[:, None], mixed, old[m])
            seen[i] |= here
            state.values["seen"] = seen
            sums.zero_()
            counts.zero_()
        state.values["prototypes"] = new

    def prototype_logits(
        self, features: dict[str, Tensor], batch: Batch, state: BalanceState
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """Per modality, -d [N_m, K] over the utterances where it is present and whose class
        it has seen (classes never seen: -inf), and their labels [N_m]."""
        y = class_index(batch, self.hp["bins"])
        out = {}
        for i, (m, present) in enumerate(presence(batch).items()):
            seen = state.values["seen"][i].to(y.device)
            keep = present & seen[y]
            logits = -distances(features[m][keep].float(), state.values["prototypes"][m])
            out[m] = (logits.masked_fill(~seen, float("-inf")), y[keep])
        return out

    def loss(
        self, model: nn.Module, out: Any, batch: Batch, base: Tensor, state: BalanceState
    ) -> Tensor:
        features = modality_features(out)
        self.accumulate(features, batch, state)
        if state.values["prototypes"] is None or not self.in_window(state):
            return base
        present = presence(batch)
        counts = {m: int(present[m].sum()) for m in MODALITIES}
        modalities = active(counts, self.hp["min_present"])
        if len(modalities) < 2:
            return base
        logits = self.prototype_logits(features, batch, state)
        scores = {}
        for m in modalities:
            z, y = logits[m]
            if len(y) == 0:
                continue
            scores[m] = float(z.detach().softmax(-1).gather(1, y[:, None]).mean())
        if len(scores) < 2:
            return base
        best = max(scores.values())
        weaker = [m for m in scores if scores[m] < best]
        state.values["weaker"] = weaker
        extra = [F.cross_entropy(logits[m][0], logits[m][1]) for m in weaker]
        if not extra:
            return base
        return base + self.hp["alpha"] * torch.stack(extra).sum()
