"""Fusion references: the floor any IMER method must clear.

- `early-fusion`: the present modalities (zeroed where missing) and the availability flags,
  concatenated per utterance, into an MLP. No dialogue context.
- `late-fusion`: one MLP per modality; the fused prediction averages the present
  modalities' predictions; each per-modality head is also trained on its own.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from imerbench.data import MODALITIES, Batch
from imerbench.losses import task_loss
from imerbench.method import DataSpec, Method, ModelOutput, Param, Part
from imerbench.registry import register_method

PROFILES = {
    "quick": {"epochs": 40, "batch_size": 16, "hidden": 128},  # a cap: plateaus end runs
    "iemocap": {"epochs": 100, "batch_size": 16},
    "mosi": {"epochs": 100, "batch_size": 32},
    "mosei": {"epochs": 50, "batch_size": 32},
}


def present_features(batch: Batch) -> list[Tensor]:
    """Each modality's features with missing positions zeroed, whatever the input held."""
    avail = batch.available.to(batch.features["a"].dtype)
    return [batch.features[m] * avail[..., k : k + 1] for k, m in enumerate(MODALITIES)]


def mlp(dim_in: int, hidden: int, dim_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim_in, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, dim_out),
    )


class EarlyFusionNet(nn.Module):
    def __init__(self, spec: DataSpec, hidden: int, dropout: float) -> None:
        super().__init__()
        self.widths = {m: spec.widths[m] for m in MODALITIES}
        dim_in = sum(spec.widths.values()) + len(MODALITIES)
        self.net = mlp(dim_in, hidden, spec.num_classes, dropout)

    def forward(self, batch: Batch, stage: str) -> ModelOutput:
        flags = batch.available.to(batch.features["a"].dtype)  # [B, L, M]
        xs = present_features(batch)
        x = torch.cat([*xs, flags], dim=-1)  # [B, L, sum d_m + M]
        features = dict(zip(MODALITIES, xs, strict=True))
        return ModelOutput(fused=self.net(x), extras={"modality_features": features})


@register_method("early-fusion", role="reference")
class EarlyFusion(Method):
    """Mask-aware concatenation of the present modalities into an MLP (no context)."""

    params = {"hidden": Param(256, low=1), "dropout": Param(0.3, low=0.0, high=0.9)}
    profiles = PROFILES
    model = EarlyFusionNet
    stackable = True
    # Its features are the present inputs; its "encoders" the first layer's input columns of
    # each modality (`imerbench/balance/base.py`).
    offers = frozenset({"features", "encoders"})

    def modality_parts(self, model: nn.Module) -> dict[str, list[Part]]:
        assert isinstance(model, EarlyFusionNet)
        first = model.net[0]
        assert isinstance(first, nn.Linear)
        parts, start = {}, 0
        for m in MODALITIES:
            width = model.widths[m]
            parts[m] = [Part(first.weight, slice(start, start + width))]
            start += width
        return parts

    def feature_widths(self, spec: DataSpec) -> dict[str, int]:
        return dict(spec.widths)


class LateFusionNet(nn.Module):
    def __init__(self, spec: DataSpec, hidden: int, dropout: float) -> None:
        super().__init__()
        self.nets = nn.ModuleDict(
            {m: mlp(spec.widths[m], hidden, spec.num_classes, dropout) for m in MODALITIES}
        )

    def forward(self, batch: Batch, stage: str) -> ModelOutput:
        xs = present_features(batch)
        # each MLP's last hidden layer, then its output layer: the modality's head [B, L, C]
        features = {m: self.nets[m][:-1](x) for m, x in zip(MODALITIES, xs, strict=True)}
        heads = {m: self.nets[m][-1](features[m]) for m in MODALITIES}
        avail = batch.available.to(xs[0].dtype).unsqueeze(-1)  # [B, L, M, 1]
        stacked = torch.stack([heads[m] for m in MODALITIES], dim=2)  # [B, L, M, C]
        fused = (stacked * avail).sum(2) / avail.sum(2).clamp(min=1.0)
        return ModelOutput(fused=fused, heads=heads, extras={"modality_features": features})


@register_method("late-fusion", role="reference")
class LateFusion(Method):
    """Per-modality MLPs averaged over the present modalities."""

    params = {"hidden": Param(256, low=1), "dropout": Param(0.3, low=0.0, high=0.9)}
    profiles = PROFILES
    model = LateFusionNet
    stackable = True
    offers = frozenset({"heads", "features", "encoders"})

    def modality_parts(self, model: nn.Module) -> dict[str, list[Part]]:
        """Each modality's MLP but its output layer (the head)."""
        assert isinstance(model, LateFusionNet)
        return {m: [Part(p) for p in model.nets[m][:-1].parameters()] for m in MODALITIES}

    def feature_widths(self, spec: DataSpec) -> dict[str, int]:
        return dict.fromkeys(MODALITIES, self.hp["hidden"])

    def loss(self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str) -> Tensor:
        unimodal = [
            task_loss(out.heads[m], batch, where=batch.available[..., k])
            for k, m in enumerate(MODALITIES)
        ]
        return task_loss(out.fused, batch) + sum(unimodal) / len(unimodal)
