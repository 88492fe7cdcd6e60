"""Selection: which epoch's weights a cell reports, and their scores.

From one run:
- `val`: the epoch with the best primary metric on validation, among the epochs of the
  method's last stage; its weights are restored and the test split is scored once.
- `test-oracle`: the epoch with the best primary metric on test, over the epochs of the last
  stage (what the published code reports: its fused head trains there). It needs a test
  evaluation every epoch of that stage (`imerbench/training.py`); those scores never
  influence `val`, nor when a stage ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from torch import Tensor, nn

from imerbench.data import SUBSETS, SplitData
from imerbench.evaluation import (
    Scores,
    condition_mask,
    pattern_scores,
    predict_members,
    score,
)
from imerbench.method import Method
from imerbench.stopping import Stopped

# (epoch, stage, split, condition, output, metric, value); condition "mask" is the split's
# stored mask, "a"/"t"/"v" the forced single-modality curves.
HistoryRow = tuple[int, str, str, str, str, str, float]


class CellFailure(Exception):
    """The run cannot go on (non-finite loss, ...); the cell is recorded as failed."""


# What a cell's training may raise and still be recorded as a failed cell, not a crash.
TRAINING_ERRORS = (CellFailure, RuntimeError, ValueError, FloatingPointError, MemoryError)


@dataclass
class Selected:
    """The outcome of one selection protocol."""

    selection: str
    epoch: int  # counted from 1
    test: Scores
    state: dict[str, Tensor] = field(repr=False)
    stage: str = ""  # the stage the epoch trained in
    # Forced subsets ("a", "at", ...) and patterns ("pattern-at", ...) of the test split.
    conditions: dict[str, Scores] = field(default_factory=dict)


@dataclass
class TrainOutcome:
    selected: dict[str, Selected]
    history: list[HistoryRow]
    epochs: int
    parameters: int
    train_seconds: float
    diagnostics: dict[str, float]
    stopped: Stopped


# selection -> its best epoch: (value, epoch, weights, test scores, stage)
Best = dict[str, tuple[float, int, dict[str, Tensor], Scores, str]]


def finish_stack(
    method: Method,
    model: nn.Module,
    views: Sequence[nn.Module],
    tests: Sequence[SplitData],
    best: Sequence[Best],
    ready: Sequence[bool],
    *,
    subsets: bool,
    task: str,
    amp: Callable[[], AbstractContextManager[None]],
) -> list[dict[str, Selected]]:
    """The selections of a stack's members (`ready`: those to select for): the val-selected
    weights scored once on test, the oracle's, and the forced subsets and patterns of the
    chosen weights. Each member's weights are loaded into its model (`views`, a view of its
    slice of the stack, or `model` itself alone), so every pass is one pass of the stack."""
    members = range(len(views))
    selected: list[dict[str, Selected]] = [{} for _ in members]
    last_stage = method.stages[-1]
    val_preds = None  # the val-selected models' test predictions, reused for the patterns
    group = [k for k in members if ready[k] and "val" in best[k]]
    if group:
        for k in group:
            views[k].load_state_dict(best[k]["val"][2])
        with amp():  # the one test pass
            preds = predict_members(model, method, [tests[k] for k in group], last_stage, group)
        val_preds = dict(zip(group, preds, strict=True))
        for k in group:
            _, epoch, state, _, stage = best[k]["val"]
            scores = score(val_preds[k], tests[k], task)
            selected[k]["val"] = Selected("val", epoch, scores, state, stage)
    for k in members:
        if ready[k] and "test-oracle" in best[k]:
            _, epoch, state, scores, stage = best[k]["test-oracle"]
            selected[k]["test-oracle"] = Selected("test-oracle", epoch, scores, state, stage)
    chosen = {k: s.get("val") or s["test-oracle"] for k, s in enumerate(selected) if s}
    if not subsets or not chosen:
        return selected
    for stage in dict.fromkeys(c.stage for c in chosen.values()):
        group = [k for k, c in chosen.items() if c.stage == stage]
        for k in group:
            views[k].load_state_dict(chosen[k].state)
        mine = [tests[k] for k in group]
        with amp():
            if val_preds is not None:
                preds = [val_preds[k] for k in group]
            else:
                preds = predict_members(model, method, mine, stage, group)
            for k, p in zip(group, preds, strict=True):
                chosen[k].conditions = pattern_scores(p, tests[k], task)
            for condition in SUBSETS:
                forced = [t.with_mask(condition_mask(condition, t.num_utterances)) for t in mine]
                preds = predict_members(model, method, forced, stage, group)
                for k, p, f in zip(group, preds, forced, strict=True):
                    chosen[k].conditions[condition] = score(p, f, task)
    return selected


def diagnose(
    method: Method,
    model: nn.Module,
    view: nn.Module,
    test: SplitData,
    chosen: Selected | None,
    subsets: bool,
    amp: Callable[[], AbstractContextManager[None]],
) -> dict[str, float]:
    """The method's diagnostics of a member. They describe the last evaluation pass (ComP's
    coordinator weights): a member of a stack replays its own (the forced all-modalities
    subset of the chosen weights, else the test split) on its model alone."""
    if type(method).diagnostics is Method.diagnostics:
        return {}
    if view is not model:
        stage = chosen.stage if chosen else method.stages[-1]
        data = test
        if subsets and chosen:
            data = test.with_mask(condition_mask(SUBSETS[-1], test.num_utterances))
        with amp():
            predict_members(view, method, [data], stage)
    return method.diagnostics(view)
