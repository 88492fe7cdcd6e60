"""Stacked cells: a cell trained in a stack of 8 (other missing rates and seeds) is the cell
trained alone: equal initial weights, equal first-step gradients, the same selected epochs and
scores; a member that fails fails alone; stacking never changes a cell's hash."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_corpus import splits_for, tiny_corpus

from imerbench.data import parse_mask_spec
from imerbench.losses import task_loss
from imerbench.method import ModelOutput, RunContext
from imerbench.plan import RunOptions, plan_cell
from imerbench.registry import create_method, list_methods, register_method, unregister_method
from imerbench.results import ResultStore
from imerbench.runner import run_grid
from imerbench.selection import CellFailure, TrainOutcome
from imerbench.stacking import StackedLinear, can_stack, member_state
from imerbench.step import Member, build_stack, member_batches, train_step
from imerbench.training import train_stack

RATES, SEEDS = ("0.0", "0.3", "0.5", "0.7"), (0, 1)
ONE = 5  # the member compared with its cell alone: MR 0.5, seed 1
STACKABLE = [m for m in list_methods() if can_stack(create_method(m, "quick"))]


def members(corpus, method) -> list[Member]:
    pad = corpus.pad_length if method.fixed_length else None
    return [
        Member(splits_for(corpus, rate, seed=seed, pad_to=pad), parse_mask_spec(rate), seed)
        for rate in RATES
        for seed in SEEDS
    ]


def test_some_methods_stack() -> None:
    assert {"early-fusion", "late-fusion"} <= set(STACKABLE)
    assert not can_stack(create_method("gcnet", "quick"))  # packed LSTMs: runs alone


@pytest.mark.parametrize("name", STACKABLE)
def test_first_step_in_a_stack_is_the_step_alone(name: str) -> None:
    """In every stage (its start hook run), from the same weights: the same first-step
    gradients, after the method's gradient hook (clipping, modulation)."""
    corpus = tiny_corpus(num_dialogues=24)
    method = create_method(name, "quick")
    stack = members(corpus, method)
    groups = corpus.speakers[stack[0].splits["train"].utterances]
    first = [next(iter(member_batches(method, corpus, m, 0, 0, groups, True))) for m in stack]
    for stage in method.stages:
        models, stacked, optimizer = build_stack(method, corpus, stack, 0, torch.device("cpu"))
        (alone,), alone_stack, alone_optimizer = build_stack(
            method, corpus, [stack[ONE]], 0, torch.device("cpu")
        )
        initial = member_state(stacked, ONE)
        for key, value in member_state(alone_stack, 0).items():
            assert torch.equal(initial[key], value), key
        ctxs = [RunContext.for_metric("wa") for _ in stack]
        for model, ctx in [*zip(models, ctxs, strict=True), (alone, ctxs[ONE])]:
            method.on_stage_start(model, stage, ctx)
        stages = [stage] * len(stack)
        losses = train_step(method, stacked, optimizer, first, stages, ctxs, views=models)
        loss = train_step(
            method, alone_stack, alone_optimizer, [first[ONE]], [stage], [ctxs[ONE]], views=[alone]
        )
        assert losses.shape == (len(stack),)
        assert float(losses[ONE]) == pytest.approx(float(loss[0]), abs=1e-6)
        grads = {key: p.grad for key, p in alone_stack.named_parameters()}  # a stack of one
        compared = 0
        for key, param in stacked.named_parameters():
            owner = stacked.get_submodule(key.rpartition(".")[0])
            assert isinstance(owner, StackedLinear)  # every weight is stacked
            if not grads[key].any():  # idle in this stage (e.g. MoMKE's routers at first)
                assert not param.grad[ONE].any(), key
                continue
            torch.testing.assert_close(param.grad[ONE], grads[key][0], atol=1e-6, rtol=0)
            compared += 1
        assert compared == sum(bool(g.any()) for g in grads.values()) > 0


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("name", STACKABLE)
def test_a_cell_in_a_stack_of_8_scores_as_alone(name: str, task: str) -> None:
    corpus = tiny_corpus(task, num_dialogues=32)
    primary = "wa" if task == "classification" else "f1"
    method = create_method(name, "quick").with_epochs(3)  # stage switches scaled
    stack = members(corpus, method)
    together = train_stack(method, corpus, stack, fold=0, primary=primary)
    (alone,) = train_stack(method, corpus, [stack[ONE]], fold=0, primary=primary)
    assert not isinstance(alone, CellFailure)
    mine = together[ONE]
    assert not isinstance(mine, CellFailure)
    assert set(mine.selected) == set(alone.selected) == {"val", "test-oracle"}
    for selection, chosen in alone.selected.items():
        other = mine.selected[selection]
        assert other.epoch == chosen.epoch
        scored = {"mask": chosen.test, **chosen.conditions}
        scored_in_stack = {"mask": other.test, **other.conditions}
        assert scored.keys() == scored_in_stack.keys()
        for condition, scores in scored.items():
            for output, values in scores.items():
                for metric, value in values.items():
                    assert scored_in_stack[condition][output][metric] == pytest.approx(
                        value, abs=1e-4, nan_ok=True
                    ), (selection, condition, output, metric)
    assert mine.diagnostics.keys() == alone.diagnostics.keys()  # ComP's coordinator weights
    for key, value in alone.diagnostics.items():
        assert mine.diagnostics[key] == pytest.approx(value, abs=1e-4), key
    assert mine.parameters == alone.parameters
    assert len(mine.history) == len(alone.history)
    for row, row_alone in zip(mine.history, alone.history, strict=True):
        assert row[:6] == row_alone[:6]
        assert row[6] == pytest.approx(row_alone[6], abs=1e-4, nan_ok=True)
    # The other members trained on their own masks and seeds: their curves differ.
    losses = {o.history[0][6] for o in together if not isinstance(o, CellFailure)}
    assert len(losses) == len(stack)


TWO_STAGES = [m for m in STACKABLE if len(create_method(m, "quick").stages) == 2]


def switch_epoch(outcome: TrainOutcome) -> int:
    """The first epoch a member trained in its last stage."""
    last = outcome.history[-1][1]
    return min(row[0] for row in outcome.history if row[1] == last)


@pytest.mark.parametrize("name", TWO_STAGES)
def test_members_stop_and_switch_stage_on_their_own(name: str) -> None:
    """With a short patience the members' stages end at different epochs, so some steps
    train members of both stages (one pass each) and stopped members sit out: a member's
    numbers are still those of its cell alone."""
    corpus = tiny_corpus(num_dialogues=32)
    quick = create_method(name, "quick")
    method = quick.with_params(epochs=10, stage_epoch=5, patience=1, min_delta=0.01)
    stack = members(corpus, method)
    together = train_stack(method, corpus, stack, fold=0, primary="wa")
    finished = [o for o in together if isinstance(o, TrainOutcome)]
    assert len(finished) == len(stack)
    assert len({switch_epoch(o) for o in finished}) > 1  # stages overlapped in the stack
    assert len({o.stopped.epochs_trained for o in finished}) > 1  # members stopped apart
    for k in (0, ONE, len(stack) - 1):
        (alone,) = train_stack(method, corpus, [stack[k]], fold=0, primary="wa")
        assert isinstance(alone, TrainOutcome)
        mine = finished[k]
        assert mine.stopped == alone.stopped
        assert switch_epoch(mine) == switch_epoch(alone)
        for selection, chosen in alone.selected.items():
            other = mine.selected[selection]
            assert (other.epoch, other.stage) == (chosen.epoch, chosen.stage)
            assert other.test["fused"]["wa"] == pytest.approx(chosen.test["fused"]["wa"], abs=1e-4)
        assert len(mine.history) == len(alone.history)
        for row, row_alone in zip(mine.history, alone.history, strict=True):
            assert row[:6] == row_alone[:6]
            assert row[6] == pytest.approx(row_alone[6], abs=1e-4, nan_ok=True)


def test_a_member_that_fails_fails_alone() -> None:
    from imerbench.methods.fusion import EarlyFusion

    class FailsWithoutMissing(EarlyFusion):
        """Its loss is NaN on a batch with nothing missing: only at missing rate 0."""

        def loss(self, model, out: ModelOutput, batch, stage: str) -> torch.Tensor:
            value = task_loss(out.fused, batch)
            return value * math.nan if bool(batch.available[batch.valid].all()) else value

    register_method("fails-without-missing", "test", role="reference")(FailsWithoutMissing)
    try:
        corpus = tiny_corpus(num_dialogues=32)
        method = create_method("fails-without-missing", "quick", epochs=2)
        stack = members(corpus, method)
        together = train_stack(method, corpus, stack, fold=0, primary="wa")
        for k, outcome in enumerate(together):
            if stack[k].mask.rate == 0.0:
                assert isinstance(outcome, CellFailure) and "nan" in str(outcome)
                continue
            assert not isinstance(outcome, CellFailure)
            (alone,) = train_stack(method, corpus, [stack[k]], fold=0, primary="wa")
            assert not isinstance(alone, CellFailure)
            assert outcome.selected["val"].epoch == alone.selected["val"].epoch
            value = alone.selected["val"].test["fused"]["wa"]
            assert outcome.selected["val"].test["fused"]["wa"] == pytest.approx(value, abs=1e-4)
    finally:
        unregister_method("fails-without-missing")


def test_stacking_keeps_a_cells_hash_and_rows(small_grid, tmp_path: Path) -> None:
    grid = small_grid(methods=["late-fusion"], missing_rates=[0.0, 0.3, 0.7], seeds=[0, 1])
    frames = {}
    for stack in (1, 4):
        out = tmp_path / f"stack{stack}"
        reports = []
        run_grid(grid, RunOptions(out=out, device="cpu", jobs=1, stack=stack), reports.append)
        assert [r.status for r in reports] == ["ok"] * 6
        for cell_json in out.glob("cells/*/*/*/cell.json"):
            meta = json.loads(cell_json.read_text())
            assert meta["stack_size"] == (1 if stack == 1 else 3)  # 6 cells: two stacks of 3
            assert meta["streams"] == "per-cell"  # in the hash: older streams never mix in
        frames[stack] = pd.read_csv(out / "results.csv")
    one, four = frames[1], frames[4]
    key = ["config_hash", "selection", "condition", "output", "metric"]
    assert set(one["config_hash"]) == set(four["config_hash"])  # the stack is not in the hash
    merged = one.merge(four, on=key, suffixes=("", "_stacked"))
    assert len(merged) == len(one) == len(four)
    assert (merged["epoch"] == merged["epoch_stacked"]).all()
    assert (merged["value"] - merged["value_stacked"]).abs().max() <= 1e-4


def test_only_stackable_methods_carry_per_cell_streams(small_grid, tmp_path: Path) -> None:
    grid = small_grid(methods=["gcnet", "late-fusion"], missing_rates=[0.3])
    configs = {
        c.method.label: plan_cell(c, grid, ResultStore(tmp_path)).config for c in grid.cells()
    }
    assert "streams" not in configs["gcnet"]  # unchanged: its cells keep their folders
    assert configs["late-fusion"]["streams"] == "per-cell"


def test_the_dry_run_probes_stacks_and_writes_nothing(small_grid, tmp_path: Path) -> None:
    from imerbench.compute import Workspace
    from imerbench.estimate import estimate_seconds
    from imerbench.plan import plan_grid

    grid = small_grid(methods=["late-fusion", "gcnet"], missing_rates=[0.0, 0.3, 0.7])
    options = RunOptions(out=tmp_path / "run", device="cpu", stack=3)
    plan = plan_grid(grid, options)
    assert [len(s) for s in plan.stacks] == [3, 1, 1, 1]  # gcnet runs alone
    ws = Workspace(grid, options, store_masks=False)
    seconds = estimate_seconds(plan.stacks, ws, probe_stacks=True)
    assert set(seconds) == set(plan.todo)
    assert all(0 < s < 60 for s in seconds.values())
    # One probe for a stack: its members (same method, split sizes) share one estimate.
    assert len({seconds[p] for p in plan.stacks[0]}) == 1
    assert not (tmp_path / "run").exists()


def test_a_stack_without_validation_selects_on_test_as_alone(tmp_path: Path) -> None:
    """The paper protocol (no validation split): members are scored and selected by the
    test-oracle alone, as each would be alone."""
    corpus = tiny_corpus(num_dialogues=32)
    method = create_method("momke", "quick").with_epochs(3)
    stack = [
        Member(splits_for(corpus, rate, seed=seed, with_val=False), parse_mask_spec(rate), seed)
        for rate in ("0.3", "0.7")
        for seed in (0, 1)
    ]
    together = train_stack(method, corpus, stack, fold=0, primary="wa")
    for member, outcome in zip(stack, together, strict=True):
        (alone,) = train_stack(method, corpus, [member], fold=0, primary="wa")
        assert not isinstance(outcome, CellFailure) and not isinstance(alone, CellFailure)
        assert set(outcome.selected) == set(alone.selected) == {"test-oracle"}
        chosen, other = alone.selected["test-oracle"], outcome.selected["test-oracle"]
        assert other.epoch == chosen.epoch
        assert other.test["fused"]["wa"] == pytest.approx(chosen.test["fused"]["wa"], abs=1e-4)
        assert other.conditions.keys() == chosen.conditions.keys() and chosen.conditions


def test_a_stack_that_fails_as_a_whole_runs_its_cells_alone(
    small_grid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stack too big for the device (here: any stack of more than one) fails as a whole;
    its cells then run alone and get the rows they would have had in any stack."""
    import imerbench.compute as compute

    real = compute.train_stack

    def small_device(method, corpus, members, **kwargs):
        if len(members) > 1:
            raise RuntimeError("CUDA out of memory (a stack of many)")
        return real(method, corpus, members, **kwargs)

    grid = small_grid(methods=["late-fusion"], missing_rates=[0.0, 0.7], seeds=[0, 1])
    run_grid(grid, RunOptions(out=tmp_path / "alone", device="cpu", stack=1))
    monkeypatch.setattr(compute, "train_stack", small_device)
    reports = []
    run_grid(grid, RunOptions(out=tmp_path / "stacked", device="cpu", stack=4), reports.append)
    assert [r.status for r in reports] == ["ok"] * 4
    logs = [p.read_text() for p in (tmp_path / "stacked").glob("cells/*/*/*/log.txt")]
    assert len(logs) == 4 and all("the stack of 4 failed" in log for log in logs)
    alone, stacked = (pd.read_csv(tmp_path / d / "results.csv") for d in ("alone", "stacked"))
    key = ["config_hash", "selection", "condition", "output", "metric"]
    merged = alone.merge(stacked, on=key, suffixes=("", "_s"))
    assert len(merged) == len(alone) == len(stacked)
    assert (merged["value"] - merged["value_s"]).abs().max() <= 1e-4


def test_stacks_are_even_and_never_mix_methods(small_grid, tmp_path: Path) -> None:
    from imerbench.plan import plan_grid

    grid = small_grid(methods=["late-fusion", "gcnet", "early-fusion"],
                      missing_rates=[0.0, 0.3, 0.7], seeds=[0, 1, 2])  # fmt: skip
    plan = plan_grid(grid, RunOptions(out=tmp_path, device="cpu", stack=8))
    sizes = [(s[0].cell.method.label, len(s)) for s in plan.stacks]
    assert sizes == [("late-fusion", 4), ("late-fusion", 5), *[("gcnet", 1)] * 9,
                     ("early-fusion", 4), ("early-fusion", 5)]  # fmt: skip
    assert all(len({p.stack_key for p in s}) == 1 for s in plan.stacks)
    assert sorted(p.digest for s in plan.stacks for p in s) == sorted(p.digest for p in plan.todo)
