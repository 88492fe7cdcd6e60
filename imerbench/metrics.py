"""Scores of one evaluation, computed in torch where the predictions live (CPU or CUDA).

Tensors in, Python floats out, one device sync per call. Everything is vectorized (no loop over
utterances) and computed in float64, so that the correlation of thousands of predictions agrees
with numpy/scipy. The definitions follow `docs/protocol.md` (section 4) and are checked against
scikit-learn in the tests:

- classification (`pred` are logits [N, C], predicted class = argmax): `wa` accuracy; `ua`
  macro recall over the classes present in the targets (sklearn's balanced_accuracy_score);
  `wf1` support-weighted F1, a class never predicted scoring 0 (sklearn's zero_division=0).
- regression (`pred` [N] or [N, 1]): `acc2` and `f1` compare (pred > 0) with (target > 0) over
  the utterances whose target is not 0 (the MOSI/MOSEI non-zero convention; `f1` is weighted);
  `mae`, `corr` (Pearson) and `acc7` (round(clip(x, -3, 3)), rounding half to even as numpy
  does) use every utterance; `mae-nz` and `corr-nz` are MAE and correlation over the
  non-zero targets only, as the released ComP and MoMKE code compute them.

Edge cases: no utterance gives NaN for every metric; constant predictions or targets give a
NaN correlation (it is undefined; numpy's corrcoef would warn and return NaN too), also when
they differ only by rounding in their own dtype (a few units in the last place).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from imerbench.data import Task
from imerbench.errors import ImerbenchError, unknown_name

_F64 = torch.float64


@dataclass(frozen=True)
class Metric:
    """A score of one evaluation; `fn` takes the valid utterances only and returns a 0-d tensor."""

    id: str
    task: Task
    higher_is_better: bool
    fn: Callable[[Tensor, Tensor], Tensor]


def _nan(like: Tensor) -> Tensor:
    return torch.full((), float("nan"), dtype=_F64, device=like.device)


def _counts(labels: Tensor, num: int, weight: Tensor | None = None) -> Tensor:
    """How many of `labels` fall in each class 0..num-1 (optionally only where `weight`).

    A one-hot comparison rather than `bincount`, which is not deterministic on CUDA; the
    number of classes is small.
    """
    hits = labels[:, None] == torch.arange(num, device=labels.device)
    if weight is not None:
        hits = hits & weight[:, None]
    return hits.sum(dim=0).to(_F64)


def _weighted_f1(pred: Tensor, target: Tensor, num: int, weight: Tensor | None = None) -> Tensor:
    """sklearn's f1_score(average='weighted', zero_division=0) over the `weight`ed utterances."""
    correct = pred == target
    if weight is not None:
        correct = correct & weight
    tp = _counts(target, num, correct)
    predicted = _counts(pred, num, weight)
    support = _counts(target, num, weight)
    denom = predicted + support  # 2 tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(denom))
    return (f1 * support).sum() / support.sum()


# Classification: pred [N, C] logits, target [N] integer classes.


def _wa(pred: Tensor, target: Tensor) -> Tensor:
    correct = pred.argmax(dim=-1) == target
    return correct.sum().to(_F64) / correct.numel()


def _ua(pred: Tensor, target: Tensor) -> Tensor:
    num = pred.size(-1)
    correct = pred.argmax(dim=-1) == target
    support = _counts(target, num)
    hit = _counts(target, num, correct)
    seen = support > 0
    recall = hit / support.clamp(min=1)
    return (recall * seen).sum() / seen.sum()


def _wf1(pred: Tensor, target: Tensor) -> Tensor:
    return _weighted_f1(pred.argmax(dim=-1), target.long(), pred.size(-1))


# Regression: pred [N], target [N] real-valued.


def _acc2(pred: Tensor, target: Tensor) -> Tensor:
    nonzero = target != 0
    agree = ((pred > 0) == (target > 0)) & nonzero
    return agree.sum().to(_F64) / nonzero.sum()


def _f1(pred: Tensor, target: Tensor) -> Tensor:
    return _weighted_f1((pred > 0).long(), (target > 0).long(), 2, target != 0)


def _mae(pred: Tensor, target: Tensor) -> Tensor:
    return (pred.to(_F64) - target.to(_F64)).abs().sum() / pred.numel()


def _spread(values: Tensor, dtype: torch.dtype) -> Tensor:
    """The range of `values` beyond the rounding of their original dtype (a few units in the
    last place): values equal up to rounding (a head shown only zeros, whose rows differ by
    how a kernel blocked them) are constant, not a correlation of rounding noise."""
    ulp = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return (values.amax() - values.amin()) - 4 * ulp * values.abs().amax()


def _corr(pred: Tensor, target: Tensor) -> Tensor:
    if pred.numel() < 2:
        return _nan(pred)
    x = pred.to(_F64)
    y = target.to(_F64)
    constant = (_spread(x, pred.dtype) <= 0) | (_spread(y, target.dtype) <= 0)
    x = x - x.mean()
    y = y - y.mean()
    # Normalize first, as scipy does, so that large or tiny scales lose no precision.
    x = x / x.norm().clamp(min=torch.finfo(_F64).tiny)
    y = y / y.norm().clamp(min=torch.finfo(_F64).tiny)
    r = (x * y).sum().clamp(-1.0, 1.0)
    return torch.where(constant, _nan(pred), r)


def _nonzero(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """`fn` over the utterances whose target is not 0."""

    def restricted(pred: Tensor, target: Tensor) -> Tensor:
        keep = target != 0
        if not bool(keep.any()):
            return _nan(pred)
        return fn(pred[keep], target[keep])

    return restricted


def _acc7(pred: Tensor, target: Tensor) -> Tensor:
    p = torch.round(pred.to(_F64).clamp(-3.0, 3.0))
    t = torch.round(target.to(_F64).clamp(-3.0, 3.0))
    return (p == t).sum().to(_F64) / pred.numel()


METRICS: dict[str, Metric] = {
    m.id: m
    for m in (
        Metric("wa", "classification", True, _wa),
        Metric("ua", "classification", True, _ua),
        Metric("wf1", "classification", True, _wf1),
        Metric("acc2", "regression", True, _acc2),
        Metric("f1", "regression", True, _f1),
        Metric("mae", "regression", False, _mae),
        Metric("corr", "regression", True, _corr),
        Metric("acc7", "regression", True, _acc7),
        Metric("mae-nz", "regression", False, _nonzero(_mae)),
        Metric("corr-nz", "regression", True, _nonzero(_corr)),
    )
}

_TASKS: tuple[str, ...] = ("classification", "regression")


def metrics_for(task: str) -> tuple[Metric, ...]:
    """The metrics of a task, in the order the tables print them."""
    if task not in _TASKS:
        raise unknown_name("task", task, _TASKS)
    return tuple(m for m in METRICS.values() if m.task == task)


def _flatten(
    task: str, pred: Tensor, target: Tensor, valid: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The valid utterances as pred [N, C] (classification) or [N] (regression), target [N]."""
    target = target.to(pred.device)
    if task == "regression" and pred.dim() == target.dim() + 1 and pred.size(-1) == 1:
        pred = pred.squeeze(-1)
    lead = pred.shape[:-1] if task == "classification" else pred.shape
    if tuple(lead) != tuple(target.shape):
        what = "logits [..., C]" if task == "classification" else "predictions"
        raise ImerbenchError(
            f"{task} metrics: {what} of shape {tuple(pred.shape)} do not match targets of "
            f"shape {tuple(target.shape)}"
        )
    if valid is not None:
        valid = valid.to(device=pred.device, dtype=torch.bool)
        if tuple(valid.shape) != tuple(target.shape):
            raise ImerbenchError(
                f"{task} metrics: valid mask of shape {tuple(valid.shape)} does not match "
                f"targets of shape {tuple(target.shape)}"
            )
        return pred[valid], target[valid]
    if task == "classification":
        return pred.reshape(-1, pred.size(-1)), target.reshape(-1)
    return pred.reshape(-1), target.reshape(-1)


def compute_metrics(
    task: str, pred: Tensor, target: Tensor, valid: Tensor | None = None
) -> dict[str, float]:
    """All metrics of `task`; `valid` (bool, the shape of `target`) leaves out padding.

    With padding, `pred` is [B, L, C] (or [B, L] / [B, L, 1] for regression) and `target` and
    `valid` are [B, L]; whatever the padded positions hold does not count.
    """
    metrics = metrics_for(task)
    # Scores are never computed under an enclosing autocast (bf16 runs): full precision only.
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = _flatten(task, pred, target, valid)
        values = torch.stack([m.fn(pred, target).to(_F64) for m in metrics]).tolist()
    return {m.id: float(v) for m, v in zip(metrics, values, strict=True)}


def is_better(metric_id: str, a: float, b: float) -> bool:
    """Whether score `a` is strictly better than `b`; NaN is never better, anything beats NaN."""
    if metric_id not in METRICS:
        raise unknown_name("metric", metric_id, METRICS)
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if METRICS[metric_id].higher_is_better else a < b
