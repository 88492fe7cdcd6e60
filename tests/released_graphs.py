"""Load a released GCNet-family fixture (`benchmarks/tools/graph_released_fixtures.py`): our
model with the released weights copied in, and the fixture's batch in our layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from imerbench.data import MODALITIES, Batch
from imerbench.method import DataSpec, Method
from imerbench.registry import create_method

DATA = Path(__file__).parent / "data"


def released_model(
    method_name: str, convert: Any, **changes: object
) -> tuple[dict[str, Any], nn.Module, Batch, Method]:
    data = torch.load(DATA / f"{method_name.replace('-', '')}_released.pt", weights_only=True)
    cfg = data["config"]
    spec = DataSpec("classification", cfg["classes"], cfg["widths"], 7, 2)
    hp: dict[str, object] = {"hidden": cfg["hidden"], "graph_hidden": cfg["graph_hidden"]}
    # Released --windowp P --windowf F: a receiver hears F earlier and P later utterances.
    hp |= {"window_past": cfg["windowf"], "window_future": cfg["windowp"]}
    if method_name == "sdr-gnn":
        hp["recon_heads"] = cfg["heads"]
    method = create_method(method_name, "iemocap", **(hp | {"dropout": cfg["dropout"]} | changes))
    model = method.build(spec)
    model.load_state_dict(convert(data["state_dict"], data["relation_order"]))  # strict
    model.eval()
    available, full = data["available"], data["features"]
    valid = torch.ones(available.shape[:2], dtype=torch.bool)
    features = {m: x * available[..., k : k + 1] for k, (m, x) in enumerate(full.items())}
    complete = Batch(full, torch.ones_like(available), valid, data["speakers"], data["labels"])
    batch = Batch(features, available, valid, data["speakers"], data["labels"], complete)
    return data, model, batch, method


def zero_filled(batch: Batch) -> Tensor:
    return torch.cat([batch.features[m] for m in MODALITIES], dim=-1)
