"""Selection: which epoch's weights a cell reports, and their scores.

From one run:
- `val`: the epoch with the best primary metric on validation, among the epochs of the
  method's last stage; its weights are restored and the test split is scored once.
- `test-oracle`: the epoch with the best primary metric on test, over all epochs (what the
  published code reports). It needs a test evaluation every epoch (`imerbench/training.py`);
  those scores never influence `val`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from torch import Tensor, nn

from imerbench.data import SplitData
from imerbench.evaluation import Scores, predict, score, subset_scores
from imerbench.method import Method

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
    epoch: int
    test: Scores
    state: dict[str, Tensor] = field(repr=False)
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


def finish_member(
    method: Method,
    model: nn.Module,
    val: SplitData | None,
    test: SplitData,
    best: dict[str, tuple[float, int, dict[str, Tensor], Scores]],
    history: list[HistoryRow],
    epochs: int,
    train_seconds: float,
    *,
    primary: str,
    task: str,
    subsets: bool,
    amp: Callable[[], AbstractContextManager[None]],
    log: Callable[[str], None],
) -> TrainOutcome:
    """A trained member's selections: the val-selected weights scored once on test, the
    oracle's, and the forced subsets and patterns of the chosen weights."""
    last_stage = method.stages[-1]
    selected: dict[str, Selected] = {}
    test_preds = None  # the val-selected model's test predictions, reused for the patterns
    if "val" in best:
        _, epoch, state, _ = best["val"]
        model.load_state_dict(state)
        with amp():
            test_preds = predict(model, method, test, last_stage)  # the one test evaluation
        scores = score(test_preds, test, task)
        selected["val"] = Selected("val", epoch, scores, state)
        log(f"val selection: epoch {epoch + 1}, test {primary} {scores['fused'][primary]:.4f}")
    elif val is not None and val.num_utterances:
        raise CellFailure("validation never produced a finite score; nothing to select")
    if "test-oracle" in best:
        _, epoch, state, scores = best["test-oracle"]
        selected["test-oracle"] = Selected("test-oracle", epoch, scores, state)
    if subsets and selected:
        chosen = selected["val"] if "val" in selected else selected["test-oracle"]
        model.load_state_dict(chosen.state)
        stage_of_choice = method.stage_of(chosen.epoch)
        with amp():
            chosen.conditions = subset_scores(
                model, method, test, stage_of_choice, task, preds=test_preds
            )
    diagnostics = method.diagnostics(model)
    parameters = sum(p.numel() for p in model.parameters())
    return TrainOutcome(selected, history, epochs, parameters, train_seconds, diagnostics)
