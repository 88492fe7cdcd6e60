"""MoMKE: equal to the released model on a fixed batch; the unimodal stage keeps each
modality on its own expert and its complete inputs; the fusion stage's routers are
distributions and a missing modality's stream adds nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from imerbench.methods.momke import FUSION, UNIMODAL, convert_released_state_dict
from tiny_corpus import tiny_corpus

from imerbench.data import MODALITIES, Batch, SplitData
from imerbench.losses import task_loss
from imerbench.method import DataSpec
from imerbench.registry import create_method
from imerbench.step import data_spec


def _setup(rate: float = 0.5, seed: int = 0):
    corpus = tiny_corpus(num_dialogues=8, seed=2)
    method = create_method("momke", "quick", depth=2, hidden=16)
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    data = SplitData(corpus, np.arange(corpus.num_dialogues), "cpu")
    rng = np.random.default_rng(seed)
    data = data.with_mask(rng.random((data.num_utterances, 3)) > rate)
    batch = next(iter(data.batches(8, complete=True)))
    return method, model, batch


def _expert_params(model: torch.nn.Module, expert: str) -> list[torch.nn.Parameter]:
    return [p for layer in model.experts.layers for p in layer[expert].parameters()]


def test_unimodal_stage_sends_modality_m_only_through_expert_m() -> None:
    _method, model, batch = _setup()
    model.train()
    for k, m in enumerate(MODALITIES):
        model.zero_grad(set_to_none=True)
        out = model(batch, UNIMODAL)
        task_loss(out.heads[m], batch.complete, where=batch.complete.available[..., k]).backward()
        for e in MODALITIES:
            grads = [p.grad for p in _expert_params(model, e)]
            touched = any(g is not None and bool(torch.any(g != 0)) for g in grads)
            assert touched == (e == m), (m, e)


def test_perturbing_one_expert_moves_only_its_head() -> None:
    _method, model, batch = _setup()
    model.eval()
    with torch.no_grad():
        before = model(batch, UNIMODAL).heads
        for p in _expert_params(model, "a"):
            p.add_(0.5 * torch.randn_like(p))
        after = model(batch, UNIMODAL).heads
    valid = batch.valid
    assert not torch.allclose(before["a"][valid], after["a"][valid])
    torch.testing.assert_close(before["t"][valid], after["t"][valid])
    torch.testing.assert_close(before["v"][valid], after["v"][valid])


def test_unimodal_stage_trains_on_complete_inputs() -> None:
    """A training batch's mask is ignored in stage 1: the model reads its complete view."""
    _method, model, batch = _setup(rate=0.6)
    model.eval()
    assert not bool((batch.available | ~batch.valid[..., None]).all())  # some are masked
    with torch.no_grad():
        masked = model(batch, UNIMODAL)
        complete = model(batch.complete, UNIMODAL)
        evaluation = model(batch.replace(complete=None), UNIMODAL)
    for m in MODALITIES:
        torch.testing.assert_close(masked.heads[m], complete.heads[m])
        assert not torch.allclose(evaluation.heads[m], complete.heads[m])  # eval: the mask


def test_router_weights_are_distributions_over_the_experts() -> None:
    _method, model, batch = _setup()
    model.eval()
    with torch.no_grad():
        weights = model(batch, FUSION).extras["router"]  # [B, L, M, E]
    assert weights.shape == (*batch.valid.shape, 3, 3)
    w = weights[batch.valid]
    assert bool((w >= 0).all())
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


def test_a_missing_modality_stream_contributes_nothing() -> None:
    """Changing modality a's router and projection moves the fused output exactly where a is
    present, nowhere else."""
    _method, model, batch = _setup(rate=0.5, seed=3)
    model.eval()
    batch = batch.replace(complete=None)
    a_present = batch.available[..., 0] & batch.valid
    a_missing = ~batch.available[..., 0] & batch.valid
    assert a_present.any() and a_missing.any()
    with torch.no_grad():
        before = model(batch, FUSION).fused
        for p in [*model.routers["a"].parameters(), *model.proj["a"].parameters()]:
            p.add_(0.5 * torch.randn_like(p))
        after = model(batch, FUSION).fused
    torch.testing.assert_close(before[a_missing], after[a_missing])
    moved = (before[a_present] - after[a_present]).abs().amax(-1)
    assert bool((moved > 1e-6).all())


def test_heads_are_reported_in_both_stages_and_idle_parameters_match() -> None:
    method, model, batch = _setup()
    model.train()
    for stage in (UNIMODAL, FUSION):
        model.zero_grad(set_to_none=True)
        out = model(batch, stage)
        assert set(out.heads) == set(MODALITIES)
        method.loss(model, out, batch, stage).backward()
        idle = method.idle_parameters(model, stage)
        assert idle
        for name, p in model.named_parameters():
            has_grad = p.grad is not None and bool(torch.any(p.grad != 0))
            assert has_grad != (name in idle), (stage, name)


# ---- the released model ------------------------------------------------------------------------
FIXTURE = Path(__file__).parent / "data" / "momke_released.pt"


def released(dropout: float | None = None):  # type: ignore[no-untyped-def]
    data = torch.load(FIXTURE, weights_only=True)
    cfg = data["config"]
    spec = DataSpec("classification", cfg["classes"], cfg["widths"], cfg["length"], 2)
    hp = {"hidden": cfg["hidden"], "depth": cfg["depth"], "heads": cfg["heads"]}
    method = create_method(
        "momke", "iemocap", dropout=cfg["dropout"] if dropout is None else dropout, **hp
    )
    model = method.build(spec)
    model.load_state_dict(convert_released_state_dict(data["state_dict"]))  # strict
    valid, available, labels = data["valid"], data["available"], data["labels"]
    speakers = torch.zeros_like(labels)
    full = data["features"]
    complete = Batch(full, valid[..., None].expand(-1, -1, 3).clone(), valid, speakers, labels)
    batch = Batch(full, available, valid, speakers, labels, complete)
    return data, method, model, batch


def test_momke_outputs_equal_the_released_model() -> None:
    """The fixture holds a released `MoMKE` (wxxv/MoMKE 2dceb57) at widths a/t/v 6/8/5,
    hidden 8, depth 2, 2 heads, 3 classes, dropout 0.5; a batch of 3 dialogues (lengths 6, 4,
    5; random availability, one dialogue without audio); its eval-mode outputs (first stage
    on complete inputs: fused and unimodal heads; second stage under the mask: fused) and
    the released losses (the three unimodal CE terms, then the fused CE). Written by
    `benchmarks/tools/momke_released_fixture.py`."""
    data, _, model, batch = released()
    model.eval()
    valid = batch.valid
    with torch.no_grad():
        first = model(batch.complete, UNIMODAL)
        second = model(batch, FUSION)
    expected = data["outputs"]
    for got, want in [(first.fused, expected["unimodal"]["fused"])] + [
        (first.heads[m], expected["unimodal"][m]) for m in MODALITIES
    ]:
        torch.testing.assert_close(got[valid], want[valid], rtol=0, atol=1e-5)
    fused = expected["fusion"]["fused"]
    torch.testing.assert_close(second.fused[valid], fused[valid], rtol=0, atol=1e-5)
    data, method, model, batch = released(dropout=0.0)  # the losses: training mode
    model.train()
    with torch.no_grad():
        for stage in (UNIMODAL, FUSION):
            loss = method.loss(model, model(batch, stage), batch, stage)
            torch.testing.assert_close(loss, data["losses"][stage], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["experts.layers.1.t.q.weight", "routers.v.fc2.weight"])
def test_a_perturbed_momke_weight_breaks_the_equality(name: str) -> None:
    data, _, model, batch = released()
    model.eval()
    with torch.no_grad():
        model.get_parameter(name)[0].add_(0.1)  # one row: the router's softmax ignores shifts
        fused = model(batch, FUSION).fused
    want = data["outputs"]["fusion"]["fused"]
    assert (fused - want)[batch.valid].abs().max() > 1e-4  # 10x the tolerance
