"""MoMKE: the unimodal stage keeps each modality on its own expert and its complete inputs;
the fusion stage's routers are distributions and a missing modality's stream adds nothing."""

from __future__ import annotations

import numpy as np
import torch
from imerbench.methods.momke import FUSION, UNIMODAL
from tiny_corpus import tiny_corpus

from imerbench.data import MODALITIES, SplitData
from imerbench.losses import task_loss
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
