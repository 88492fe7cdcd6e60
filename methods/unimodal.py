"""Context-aware unimodal references `unimodal-a`, `unimodal-t`, `unimodal-v`.

One modality, projected and passed through key-masked attention over the dialogue's
utterances: the attention layers of `imerbench/layers.py` (ExpertStack) that MoMKE's experts
are made of, but a shallower stack (depth 2, a MoMKE expert has 4) with dropout on the
attention weights too (a MoMKE expert has none), chosen as a robust reference rather than a
copy of one expert. They give each modality's ceiling: the score a model reaches on that
modality alone, against which under-optimization is measured; each multimodal method also
gets its own ceilings (the grids' `ceilings` key).
"""

from __future__ import annotations

from torch import nn

from imerbench.data import MODALITIES, Batch
from imerbench.layers import ExpertStack
from imerbench.method import DataSpec, Method, ModelOutput, Param
from imerbench.registry import register_method


class UnimodalNet(nn.Module):
    def __init__(
        self, spec: DataSpec, modality: str, hidden: int, depth: int, heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.index = MODALITIES.index(modality)
        self.modality = modality
        self.proj = nn.Sequential(nn.Linear(spec.widths[modality], hidden), nn.Dropout(dropout))
        self.experts = ExpertStack(hidden, depth, heads, dropout=dropout, modalities=(modality,))
        self.head = nn.Linear(hidden, spec.num_classes)

    def forward(self, batch: Batch, stage: str) -> ModelOutput:
        present = batch.available[..., self.index]  # [B, L]
        x = batch.features[self.modality]
        x = self.proj(x * present.unsqueeze(-1).to(x.dtype))  # [B, L, D]
        x = self.experts(x, self.modality, present)
        return ModelOutput(fused=self.head(x))


class Unimodal(Method):
    """One modality with attention over the dialogue (a modality's ceiling)."""

    params = {
        "hidden": Param(256, low=2),
        "depth": Param(2, low=1),
        "heads": Param(2, low=1),
        "dropout": Param(0.5, low=0.0, high=0.9),
        "modality": Param("a", choices=MODALITIES),
    }
    profiles = {
        # epochs: a cap, runs end on a plateau (imerbench/stopping.py)
        "quick": {"epochs": 40, "batch_size": 16, "hidden": 64, "dropout": 0.2, "lr": 1e-3},
        "iemocap": {"epochs": 100, "batch_size": 16, "lr": 1e-4},
        "mosi": {"epochs": 150, "batch_size": 32, "lr": 1e-4},
        "mosei": {"epochs": 50, "batch_size": 32, "lr": 1e-4},
    }
    model = UnimodalNet
    stackable = True


for _m in MODALITIES:
    register_method(
        f"unimodal-{_m}",
        f"context-aware unimodal reference on modality {_m}",
        role="ceiling",
        ceiling_of=_m,
        fixed={"modality": _m},
    )(Unimodal)
