"""Gradient blending (Wang, Tran & Feiszli, CVPR 2020): train on a weighted sum of the fused
output's loss and every unimodal head's, each output weighted by how much it generalizes
for how much it overfits, measured on training dialogues held out for it.

Loss: w_0 L + sum_m w_m L_m, L the method's own loss (it stands for the fused output's),
L_m head m's task loss over the utterances where m is present; the weights start equal
and sum to 1. The strategy holds out `holdout` of the training dialogues (drawn per cell;
the method trains on the rest, so a G-Blending cell sees less training data than its base)
under a mask drawn as the training masks are. For each output k, L_T is its task loss
averaged over the epoch's training batches (as trained) and L_V its loss on the held-out
dialogues (evaluation mode; a head over the utterances where its modality is present).
These are recorded at the end of the stage's first epoch and every `super_epoch` epochs
after; at each record N + n after N: O = L_V - L_T, dG_k = max(L_V(N) - L_V(N+n), 0),
dO_k = O(N+n) - O(N), w_k = dG_k / max(dO_k^2, 1e-8), normalized to sum 1 (if every dG is
0 the weights stay as they were).

This is the online form measured along the run itself. The paper's (and BalanceBenchmark's)
trains a copy of the model per output for n epochs from each checkpoint to measure its
gains: M+1 extra trainings per super-epoch, which this form avoids; BalanceBenchmark also
measures on the selection split, which here stays untouched. Defaults: super-epoch 10
(BalanceBenchmark), holdout 0.1 (10%, as the tsai implementation; MultiBench holds out 8%).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from imerbench.balance import register_strategy
from imerbench.balance.base import BalanceState, Strategy, presence
from imerbench.data import MODALITIES, Batch
from imerbench.evaluation import predict
from imerbench.losses import masked_mean, per_utterance_loss, task_loss
from imerbench.method import DataSpec, Param

OUTPUTS = ("fused", *MODALITIES)


def blend_weights(
    before: tuple[Tensor, Tensor], after: tuple[Tensor, Tensor], floor: float = 1e-8
) -> Tensor | None:
    """Weights from (L_T, L_V) of every output at two records, or None where no output
    generalized better (every dG is 0)."""
    (train0, val0), (train1, val1) = before, after
    gain = (val0 - val1).clamp(min=0.0)
    overfit = (val1 - train1) - (val0 - train0)
    weights = gain / (overfit**2).clamp(min=floor)
    total = weights.sum()
    return None if float(total) <= 0.0 else weights / total


@register_strategy("g-blending")
class GBlending(Strategy):
    """Output losses weighted by generalization over overfitting, on held-out dialogues."""

    summary = "weights fused and unimodal losses by held-out generalization / overfitting"
    params = {
        "super_epoch": Param(10, low=1, help="epochs between two weight estimates"),
        "holdout": Param(0.1, low=0.01, high=0.5, help="share of training dialogues held out"),
    }
    needs = frozenset({"heads"})
    trains_heads = True

    def holdout(self) -> float:
        return float(self.hp["holdout"])

    def build_state(self, state: BalanceState, spec: DataSpec, method: Any) -> None:
        state.values["method"] = method
        state.values["weights"] = torch.full((len(OUTPUTS),), 1.0 / len(OUTPUTS))
        state.values["train_sum"] = torch.zeros(len(OUTPUTS))
        state.values["train_steps"] = 0
        state.values["record"] = None  # (L_T, L_V) at the last record

    def loss(
        self, model: nn.Module, out: Any, batch: Batch, base: Tensor, state: BalanceState
    ) -> Tensor:
        present = presence(batch)
        heads = [task_loss(out.heads[m], batch, where=present[m]) for m in MODALITIES]
        weights = state.values["weights"].to(base.device)
        state.values["weights"] = weights
        if torch.is_grad_enabled():
            fused = task_loss(out.fused, batch)
            losses = torch.stack([fused, *heads]).detach().float()
            state.values["train_sum"] = state.values["train_sum"].to(base.device) + losses
            state.values["train_steps"] += 1
        return weights[0] * base + (weights[1:] * torch.stack(heads)).sum()

    def held_out_losses(self, model: nn.Module, state: BalanceState) -> Tensor:
        """L_V of every output on the held-out dialogues."""
        data = state.holdout
        if data is None:
            raise RuntimeError("g-blending measures on held-out dialogues; none were given")
        preds = predict(model, state.values["method"], data, state.stage)
        available = data.available[data.valid]  # [n, M], split order
        keep = [torch.ones_like(data.target, dtype=torch.bool)]
        keep += [available[:, k] for k in range(len(MODALITIES))]
        names = ["fused", *(f"head-{m}" for m in MODALITIES)]
        return torch.stack(
            [
                masked_mean(per_utterance_loss(preds[name], data.target), where)
                for name, where in zip(names, keep, strict=True)
            ]
        ).float()

    def on_epoch_end(self, model: nn.Module, state: BalanceState) -> None:
        steps = state.values["train_steps"]
        train = state.values["train_sum"] / max(steps, 1)
        state.values["train_sum"] = torch.zeros_like(train)
        state.values["train_steps"] = 0
        if state.epoch % self.hp["super_epoch"]:
            return
        record = (train, self.held_out_losses(model, state).to(train.device))
        if state.values["record"] is not None:
            weights = blend_weights(state.values["record"], record)
            if weights is not None:
                state.values["weights"] = weights
        state.values["record"] = record
