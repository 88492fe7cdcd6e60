"""Scoring a trained model: under the stored masks, on forced modality subsets, by pattern.

- forced subset S (`a`, `at`, ...): every utterance shows exactly the modalities of S (the
  MoMKE "conditions"), whatever the stored mask says;
- pattern S (`pattern-at`, ...): the utterances of the stored masks that kept exactly S.
Outputs are the fused prediction and, where a method has them, its unimodal heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from imerbench.data import MODALITIES, SUBSETS, SplitData
from imerbench.method import Method, evaluation_batching
from imerbench.metrics import compute_metrics
from imerbench.stacking import concat_batches, forward, split_output

Scores = dict[str, dict[str, float]]  # output ("fused", "head-a", ...) -> metric -> value


def predict(model: nn.Module, method: Method, data: SplitData, stage: str) -> dict[str, Tensor]:
    """Predictions [n, C] of every output for the split's real utterances, in split order."""
    return predict_members(model, method, [data], stage)[0]


@torch.no_grad()
def predict_members(
    model: nn.Module,
    method: Method,
    members: Sequence[SplitData],
    stage: str,
    which: Sequence[int] | None = None,
) -> list[dict[str, Tensor]]:
    """`predict` for each member of a stack (`imerbench/stacking.py`): one view per member of
    the same split, each under its own mask, evaluated in one pass of the stacked model.
    `which`: the stack's members these views belong to (default: all of them, in order).

    Dialogues are batched shortest first (less padding), unless the method's predictions
    depend on which dialogues share a batch; then they go in split order, as published.
    """
    was_training = model.training
    model.eval()
    data = members[0]
    which = list(range(len(members))) if which is None else list(which)
    size, in_split_order = evaluation_batching(method)
    order = np.arange(data.num_dialogues) if in_split_order else data.by_length()
    preds: list[dict[str, Tensor]] = [{} for _ in members]
    streams = [m.batches(size, order, fixed_length=method.fixed_length) for m in members]
    for start, batches in zip(range(0, len(order), size), zip(*streams, strict=True), strict=True):
        out = forward(model, concat_batches(batches), stage, which)
        outs = split_output(out, len(members))
        rows = data.positions(order[start : start + size])
        for into, out, batch in zip(preds, outs, batches, strict=True):
            outputs = {"fused": out.fused, **{f"head-{m}": h for m, h in out.heads.items()}}
            for name, pred in outputs.items():
                if name not in into:  # float32 even under bf16 autocast: metrics see all digits
                    into[name] = pred.new_zeros(
                        data.num_utterances, pred.shape[-1], dtype=torch.float32
                    )
                into[name][rows] = pred[batch.valid].float()
    model.train(was_training)
    return preds


def score(preds: dict[str, Tensor], data: SplitData, task: str) -> Scores:
    """Score predictions of every output (from `predict`) against the split's targets."""
    return {name: compute_metrics(task, p, data.target) for name, p in preds.items()}


def evaluate(model: nn.Module, method: Method, data: SplitData, stage: str, task: str) -> Scores:
    """Score every output of the model on a split under its current availability mask."""
    return score(predict(model, method, data, stage), data, task)


def condition_mask(condition: str, n: int) -> np.ndarray:
    """[n, M] availability showing exactly the modalities of `condition`."""
    keep = np.array([m in condition for m in MODALITIES])
    return np.tile(keep, (n, 1))


def patterns(available: Tensor) -> np.ndarray:
    """The kept-modality pattern of each utterance ([n, M] bool -> 'at', ...; '' if none)."""
    rows = available.cpu().numpy()
    letters = np.array(MODALITIES)
    return np.array(["".join(letters[r]) for r in rows])


def subset_scores(
    model: nn.Module,
    method: Method,
    data: SplitData,
    stage: str,
    task: str,
    conditions: tuple[str, ...] = SUBSETS,
    with_patterns: bool = True,
    preds: dict[str, Tensor] | None = None,
) -> dict[str, Scores]:
    """{condition: scores} for the forced subsets and (optionally) for the patterns of the
    current mask. `preds`: the model's predictions under the current mask, where the caller
    already has them (saves one pass).
    """
    out: dict[str, Scores] = {}
    if with_patterns:
        if preds is None:
            preds = predict(model, method, data, stage)
        out |= pattern_scores(preds, data, task, conditions)
    for condition in conditions:
        forced = data.with_mask(condition_mask(condition, data.num_utterances))
        out[condition] = evaluate(model, method, forced, stage, task)
    return out


def pattern_scores(
    preds: dict[str, Tensor],
    data: SplitData,
    task: str,
    conditions: tuple[str, ...] = SUBSETS,
) -> dict[str, Scores]:
    """Scores of predictions (made under the split's current mask) grouped by which
    modalities that mask kept."""
    kept = patterns(data.available[data.valid])
    out: dict[str, Scores] = {}
    for condition in conditions:
        rows = torch.as_tensor(np.flatnonzero(kept == condition), device=data.device)
        if len(rows):
            out[f"pattern-{condition}"] = {
                name: compute_metrics(task, p[rows], data.target[rows]) for name, p in preds.items()
            }
    return out
