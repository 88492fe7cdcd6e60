"""Task losses over the real utterances of a batch (padding never counts)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from imerbench.data import Batch


def masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of `values` where `keep` is True; 0 (with a gradient path) when nothing is kept.

    Written as a weighted sum rather than boolean indexing so it never syncs with the host.
    """
    weight = keep.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def per_utterance_loss(pred: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy (integer labels) or squared error (float labels) of each utterance:
    pred [..., C], labels [...] -> [...]."""
    if labels.dtype.is_floating_point:
        return (pred.squeeze(-1) - labels) ** 2
    flat = F.cross_entropy(pred.flatten(0, -2), labels.flatten(), reduction="none")
    return flat.view_as(labels)


def task_loss(pred: Tensor, batch: Batch, where: Tensor | None = None) -> Tensor:
    """Cross-entropy (classes) or MSE (regression), averaged over real utterances.

    pred: [B, L, C]. `where` ([B, L] bool) narrows the utterances further (e.g. to those
    where a modality is present); the mean is over the utterances kept.
    """
    keep = batch.valid if where is None else batch.valid & where
    return masked_mean(per_utterance_loss(pred, batch.labels), keep)
