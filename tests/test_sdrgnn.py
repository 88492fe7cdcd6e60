"""SDR-GNN: equal to the released model on a fixed batch, and its graph steps by hand."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from imerbench.methods.sdrgnn import (
    GatedGraphStep,
    HypergraphStep,
    convert_released_state_dict,
)
from released_graphs import assert_equals_released, released_model
from torch import nn

from imerbench.data import Batch
from imerbench.errors import ImerbenchError
from imerbench.method import DataSpec, Method
from imerbench.registry import create_method


def fixture_model(**changes: object) -> tuple[dict, Any, Batch, Method]:
    return released_model("sdr-gnn", convert_released_state_dict, **changes)


def test_sdr_gnn_outputs_equal_the_released_model() -> None:
    """The fixture holds a released `GraphModel` (fufangze/SDR-GNN b455461, base GRU, no
    nodal attention) built at widths a/t/v 6/8/6, hidden 6, graph width 3, 3 classes, two
    speakers, windows --windowp 2 --windowf 1, dropout 0.5; its reconstruction attention
    resized from the hard-coded 2560 wide / 256 heads to 20 / 4. With its weights, a batch of 3
    dialogues of 7 utterances (random availability and speakers): the eval-mode logits and
    reconstruction, each graph's output, and the training loss from the released loss classes
    (0.5 CE + 0.5 reconstruction). Written by
    `benchmarks/tools/graph_released_fixtures.py sdr-gnn`."""
    data, model, batch, method = fixture_model()
    # Released quirk 1: the speaker graph runs and is dropped; its output is still checked.
    assert_equals_released(data, model, batch, method, model.rnn)


@pytest.mark.parametrize(
    "name",
    ["rnn.backward_rnn.1.weight_hh_l0", "temporal.conv1.rel.weight", "temporal.gated.gate.weight",
     "temporal.hypergraph.bias", "recon_attention.in_proj_weight"],
)  # fmt: skip
def test_a_perturbed_weight_breaks_the_equality(name: str) -> None:
    data, model, batch, _ = fixture_model()
    with torch.no_grad():
        model.get_parameter(name).add_(0.1)
        out = model(batch, "train")
    got = out.extras["reconstruction"] if name.startswith("recon") else out.fused
    key = "reconstruction" if name.startswith("recon") else "fused"
    assert (got - data["outputs"][key]).abs().max() > 1e-4  # 10x the tolerance


def test_the_speaker_graph_is_summed_only_when_fixed() -> None:
    data, fixed, batch, _ = fixture_model(fix_speaker_graph=True)
    expected = data["outputs"]
    with torch.no_grad():
        summed = fixed(batch, "train").fused
        heads = fixed.head(expected["temporal"] + expected["speaker"])
    torch.testing.assert_close(summed, heads, rtol=0, atol=1e-5)
    assert (summed - expected["fused"]).abs().max() > 1e-3


def test_speaker_graph_learns_only_when_fixed() -> None:
    for fix, starved in ((False, True), (True, False)):
        _, model, batch, method = fixture_model(fix_speaker_graph=fix)
        model.train()
        method.loss(model, model(batch, "train"), batch, "train").backward()
        grads = [p.grad for n, p in model.named_parameters() if n.startswith("speaker.")]
        assert all(g is None for g in grads) == starved
        idle = method.idle_parameters(model, "train")
        assert bool(idle) == starved and all(n.startswith("speaker.") for n in idle)


def test_reconstruction_attention_crosses_dialogues_only_as_released() -> None:
    for fix, crosses in ((False, True), (True, False)):
        _, model, batch, _ = fixture_model(fix_recon_attention=fix)
        changed = {m: x.clone() for m, x in batch.features.items()}
        for x in changed.values():
            x[2] += 1.0  # the third dialogue only
        with torch.no_grad():
            a = model(batch, "train").extras["reconstruction"][:2]
            b = model(batch.replace(features=changed), "train").extras["reconstruction"][:2]
        assert (not torch.allclose(a, b, atol=1e-6)) == crosses


def test_reconstruction_attention_ignores_padding_when_fixed() -> None:
    _, model, batch, _ = fixture_model(fix_recon_attention=True)
    valid = batch.valid.clone()
    valid[1, 5:] = False
    short = batch.replace(valid=valid, available=batch.available & valid[..., None])
    changed = {m: x.clone() for m, x in short.features.items()}
    for x in changed.values():
        x[1, 5:] = 50.0  # values at padding
    with torch.no_grad():
        a = model(short, "train").extras["reconstruction"]
        b = model(short.replace(features=changed), "train").extras["reconstruction"]
    torch.testing.assert_close(a[valid], b[valid], rtol=0, atol=1e-6)


# ---- the graph steps, by hand ------------------------------------------------------------------
# One dialogue of 3 utterances, windows past 1 / future 0: receiver i hears i-1 and i.
ADJ = torch.tensor([[[1.0, 0, 0], [1, 1, 0], [0, 1, 1]]])  # (receiver, sender)
X = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]]])


def test_hypergraph_step_by_hand() -> None:
    step = HypergraphStep(2)
    with torch.no_grad():
        step.bias.copy_(torch.tensor([0.5, -10.0]))
    # Hyperedges (one per receiver): e0 = {0}, e1 = {0, 1}, e2 = {1, 2}; their means:
    e0, e1, e2 = [1.0, 2.0], [2.0, 0.5], [1.75, 1.5]
    # Node 0 is in e0, e1; node 1 in e1, e2; node 2 in e2 only.
    node = [
        [(e0[0] + e1[0]) / 2, (e0[1] + e1[1]) / 2],
        [(e1[0] + e2[0]) / 2, (e1[1] + e2[1]) / 2],
        e2,
    ]
    raw = torch.tensor([node]) + torch.tensor([0.5, -10.0])
    expected = torch.where(raw > 0, raw, 0.01 * raw)
    torch.testing.assert_close(step(X, ADJ), expected)


def test_gated_step_by_hand() -> None:
    step = GatedGraphStep(2)
    w = torch.tensor([0.3, -0.2, 0.1, 0.4])  # [receiver (2); sender (2)]
    with torch.no_grad():
        step.gate.weight.copy_(w[None])
        step.gate.bias.fill_(-0.1)
    out_degree = [2.0, 2.0, 1.0]  # how many receivers hear node 0, 1, 2
    expected = torch.zeros(3, 2)
    for i in range(3):
        for j in range(3):
            if ADJ[0, i, j]:
                gate = torch.tanh(w[:2] @ X[0, i] + w[2:] @ X[0, j] - 0.1)
                norm = (out_degree[i] * out_degree[j]) ** -0.5
                expected[i] += norm * gate * X[0, j]
    torch.testing.assert_close(step(X, ADJ), expected[None])


def test_gate_sign_can_oppose_a_sender() -> None:
    step = GatedGraphStep(1)
    with torch.no_grad():
        step.gate.weight.zero_()
        step.gate.bias.fill_(-3.0)  # tanh(-3) < 0: every message is reversed
    adj = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    out = step(torch.tensor([[[1.0], [2.0]]]), adj)
    assert (out < 0).all()


def test_recon_heads_must_divide_the_width() -> None:
    spec = DataSpec("classification", 4, {"a": 6, "t": 8, "v": 5}, 10, 2)
    with pytest.raises(ImerbenchError, match=r"recon_heads=4 does not divide the input width 19"):
        create_method("sdr-gnn", "quick", recon_heads=4).build(spec)


def test_published_settings() -> None:
    for profile in ("iemocap", "mosi", "mosei"):
        hp = create_method("sdr-gnn", profile).hp
        assert (hp["epochs"], hp["batch_size"], hp["lr"], hp["weight_decay"]) == (
            100,
            32,
            1e-3,
            1e-5,
        )
        assert (hp["hidden"], hp["graph_hidden"], hp["window_past"], hp["window_future"]) == (
            200,
            100,
            3,
            3,
        )
        assert (hp["recon_weight"], hp["recon_heads"], hp["base_rnn"]) == (0.5, 256, "gru")
        assert not hp["fix_speaker_graph"] and not hp["fix_recon_attention"]


def test_published_width_matches_the_released_count_less_its_unused_modules() -> None:
    """At hidden 200 on 512/1024/1024 inputs the released model holds 56.7M parameters
    (`../shared/specs/paper-baselines.md`); ours leaves out the unused LSTM, the nodal
    attention's two transforms, the hypergraph's three unused weights and the Linear that
    only feeds a saved array (counted here from their shapes)."""
    spec = DataSpec("classification", 6, {"a": 512, "t": 1024, "v": 1024}, 110, 2)
    model = create_method("sdr-gnn", "iemocap").build(spec)
    ours = sum(p.numel() for p in model.parameters())
    lstm = nn.LSTM(2560, 200, num_layers=2, bidirectional=True)
    unused = sum(p.numel() for p in lstm.parameters())
    unused += 2 * (1000 * 1000 + 1000)  # matchatt: Linear(2 D_h, 2 D_h), D_h = 500
    unused += 2 * (3 * 100 * 100 + 100)  # hypergraph: weight, edgeweight, edgefc
    unused += 2560 * 500 + 500  # Linear(2560, D_h) feeding `hidden`
    assert round((ours + unused) / 1e6, 1) == 56.7
