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


def assert_equals_released(
    data: dict[str, Any], model: nn.Module, batch: Batch, method: Method, rnn: nn.Module
) -> None:
    """Logits, reconstruction, each graph's output (temporal and speaker, from the dialogue
    RNN `rnn`'s states) and the training loss, against the fixture's, within 1e-5."""
    from imerbench.methods.gcnet import speaker_relations, temporal_relations

    expected = data["outputs"]
    with torch.no_grad():
        out = model(batch, "train")
        torch.testing.assert_close(out.fused, expected["fused"], rtol=0, atol=1e-5)
        rec = out.extras["reconstruction"]
        torch.testing.assert_close(rec, expected["reconstruction"], rtol=0, atol=1e-5)
        h = rnn(zero_filled(batch), batch.valid)
        past, future = model.window
        relations = {
            "temporal": temporal_relations(batch.valid, past, future),
            "speaker": speaker_relations(batch.speakers, batch.valid, past, future, 2),
        }
        for kind, adj in relations.items():
            branch = getattr(model, kind)(h, adj, batch.valid)
            torch.testing.assert_close(branch, expected[kind], rtol=0, atol=1e-5)
        loss = method.loss(model, out, batch, "train")
    torch.testing.assert_close(loss, data["loss"], rtol=1e-5, atol=1e-5)
