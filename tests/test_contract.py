"""The contract every registered method must keep, checked the moment it registers.

On a tiny corpus, for every method and every stage: every missing pattern runs and gives
finite outputs, the loss is finite, every parameter not declared idle gets a gradient (in
the first step, or in the second behind a zero-initialised layer),
values at missing positions cannot change the output, a fixed seed reproduces the run, and
the method learns a problem that every modality makes easy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_corpus import splits_for, tiny_corpus

from imerbench.data import SUBSETS, SplitData, draw_rate_mask, parse_mask_spec
from imerbench.method import Method, RunContext
from imerbench.registry import create_method, list_methods
from imerbench.step import data_spec
from imerbench.training import train_cell

METHODS = list_methods()


def build(name: str, task: str = "classification", **overrides: object):
    corpus = tiny_corpus(task, num_dialogues=32)
    method = create_method(name, "quick", **overrides)
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    pad_to = corpus.pad_length if method.fixed_length else None
    data = SplitData(corpus, np.arange(corpus.num_dialogues), "cpu", pad_to=pad_to)
    return corpus, method, model, data


def first_batch(method: Method, data: SplitData, complete: bool = False):
    batches = data.batches(64, None, method.fixed_length, complete=complete)
    return next(iter(batches))


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("name", METHODS)
def test_every_missing_pattern_runs(name: str, task: str) -> None:
    corpus, method, model, data = build(name, task)
    model.eval()
    ctx = RunContext.for_metric("wa")
    for stage in method.stages:
        method.on_stage_start(model, stage, ctx)
        for condition in SUBSETS:
            keep = np.array([m in condition for m in "atv"])
            data = data.with_mask(np.tile(keep, (data.num_utterances, 1)))
            batch = first_batch(method, data)
            with torch.no_grad():
                out = model(batch, stage)
            assert out.fused.shape == (*batch.valid.shape, corpus.num_classes)
            assert torch.isfinite(out.fused[batch.valid]).all(), (stage, condition)
            for head in out.heads.values():
                assert head.shape == out.fused.shape


@pytest.mark.parametrize("name", METHODS)
def test_loss_is_finite_and_every_parameter_learns(name: str) -> None:
    _corpus, method, model, data = build(name)
    data = data.with_mask(draw_rate_mask(data.num_utterances, 0.3, np.random.default_rng(0)))
    batch = first_batch(method, data, complete=method.needs_complete)  # as training sees it
    model.train()
    ctx = RunContext.for_metric("wa")
    optimizer = method.configure_optimizer(model)

    def step(stage: str) -> list[str]:
        """One training step; the parameters (not declared idle) without a gradient."""
        model.zero_grad(set_to_none=True)
        out = model(batch, stage)
        loss = method.loss(model, out, batch, stage)
        assert torch.isfinite(loss), stage
        loss.backward()
        method.after_backward(model, out, batch, stage, ctx)
        bad = [
            n
            for n, p in model.named_parameters()
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        assert not bad, f"{stage}: non-finite gradient in {bad[:5]}"
        idle = method.idle_parameters(model, stage)
        return [
            n
            for n, p in model.named_parameters()
            if n not in idle and (p.grad is None or not torch.any(p.grad != 0))
        ]

    for stage in method.stages:
        method.on_stage_start(model, stage, ctx)
        starved = step(stage)
        if starved:  # a zero-initialised layer (Glow's) passes gradient after its first update
            optimizer.step()
            starved = [n for n in step(stage) if n in starved]
        assert not starved, f"{stage}: no gradient reaches {starved[:5]}"


@pytest.mark.parametrize("name", METHODS)
def test_values_at_missing_positions_cannot_leak(name: str) -> None:
    _corpus, method, model, data = build(name)
    data = data.with_mask(draw_rate_mask(data.num_utterances, 0.5, np.random.default_rng(1)))
    model.eval()
    clean = first_batch(method, data)
    gen = torch.Generator().manual_seed(2)
    noisy = {}
    for k, m in enumerate("atv"):
        x = clean.features[m]
        garbage = 100 * torch.randn(x.shape, generator=gen)
        noisy[m] = torch.where(clean.available[..., k : k + 1], x, garbage)
    assert any(not torch.equal(noisy[m], clean.features[m]) for m in "atv")
    dirty = clean.replace(features=noisy)
    ctx = RunContext.for_metric("wa")
    for stage in method.stages:
        method.on_stage_start(model, stage, ctx)
        with torch.no_grad():
            a, b = model(clean, stage), model(dirty, stage)
        valid = clean.valid
        torch.testing.assert_close(a.fused[valid], b.fused[valid], rtol=1e-5, atol=1e-5)
        for m in a.heads:
            torch.testing.assert_close(a.heads[m][valid], b.heads[m][valid], rtol=1e-5, atol=1e-5)


def run_tiny(name: str, epochs: int, seed: int = 0, rate: str = "0.0"):
    corpus = tiny_corpus(num_dialogues=48, seed=3)
    method = create_method(name, "quick")  # a profile's stage_epoch may exceed `epochs`
    if "stage_epoch" in method.hp:
        method = method.with_params(epochs=epochs, stage_epoch=epochs // 2)
    else:
        method = method.with_params(epochs=epochs)
    pad_to = corpus.pad_length if method.fixed_length else None
    splits = splits_for(corpus, rate, seed=seed, pad_to=pad_to)
    spec = parse_mask_spec(rate)
    return train_cell(method, corpus, splits, fold=0, mask=spec, seed=seed, primary="wa")


@pytest.mark.parametrize("name", METHODS)
def test_fixed_seed_reproduces_the_run(name: str) -> None:
    first, second = run_tiny(name, epochs=3, rate="0.3"), run_tiny(name, epochs=3, rate="0.3")
    assert first.history == second.history
    for key, selected in first.selected.items():
        other = second.selected[key]
        assert selected.epoch == other.epoch
        for param, value in selected.state.items():
            assert torch.equal(value, other.state[param]), param


@pytest.mark.parametrize("name", METHODS)
def test_method_learns_an_easy_problem(name: str) -> None:
    outcome = run_tiny(name, epochs=30)
    # Three classes (chance 1/3); every modality carries the label with little noise.
    assert outcome.selected["val"].test["fused"]["wa"] >= 0.7
