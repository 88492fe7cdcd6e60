"""The one batch type, and a split of a corpus held as padded tensors on the device.

A split is converted once per worker (`SplitData`); an epoch then only takes a view of it
under its availability mask (`with_mask`) and slices dialogues out of device-resident
tensors, so the training loop never touches host memory per step.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from imerbench.data.corpus import MODALITIES, Corpus


@dataclass
class Batch:
    """B dialogues padded to L utterances. Every method sees exactly this."""

    features: dict[str, Tensor]  # modality -> [B, L, d_m]; zero where missing
    available: Tensor  # [B, L, M] bool: modality present (False at padding)
    valid: Tensor  # [B, L] bool: a real utterance, not padding
    speakers: Tensor  # [B, L] int64
    labels: Tensor  # [B, L] int64 (classes) or float32 (regression)
    # Training batches of a method with `needs_complete` only (never at evaluation): the same
    # dialogues with every recorded modality present, for targets the mask hides
    # (reconstruction targets, a full-modality teacher, complete-data stages).
    complete: Batch | None = None

    @property
    def batch_size(self) -> int:
        return int(self.valid.shape[0])

    @property
    def length(self) -> int:
        return int(self.valid.shape[1])

    def replace(self, **changes: object) -> Batch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Batch(**values)  # type: ignore[arg-type]


class SplitData:
    """One split of a corpus as padded device tensors [D, L, ...], L = longest dialogue.

    `pad_to` pads to a fixed length instead (methods whose layers are tied to the padded
    length, such as ComP's prototype projector).
    """

    def __init__(
        self,
        corpus: Corpus,
        dialogues: np.ndarray,
        device: torch.device | str,
        pad_to: int | None = None,
    ) -> None:
        self.corpus_name = corpus.name
        self.device = torch.device(device)
        self.dialogues = np.asarray(dialogues, dtype=np.int64)
        lengths = corpus.dialogue_lengths[self.dialogues]
        self.lengths = lengths  # host copy: batch lengths need no device sync
        longest = int(lengths.max()) if len(lengths) else 1
        if pad_to is not None and pad_to < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest dialogue ({longest})")
        self.pad_length = pad_to or longest
        num, length = len(self.dialogues), self.pad_length
        self.utterances = corpus.utterances(self.dialogues)  # flat corpus indices, split order
        # Where each utterance of the split sits in the padded [D, L] grid.
        rows = np.repeat(np.arange(num), lengths)
        cols = np.concatenate([np.arange(n) for n in lengths]) if num else np.zeros(0, int)
        self.slot = torch.as_tensor(rows * length + cols, device=self.device)

        def grid(values: np.ndarray, fill: float | int | bool, dtype: torch.dtype) -> Tensor:
            shape = (num * length, *values.shape[1:])
            out = torch.full(shape, fill, dtype=dtype, device=self.device)
            out[self.slot] = torch.as_tensor(values, dtype=dtype, device=self.device)
            return out.view(num, length, *values.shape[1:])

        u = self.utterances
        self.features = {m: grid(corpus.features[m][u], 0.0, torch.float32) for m in MODALITIES}
        self.valid = grid(np.ones(len(u), dtype=bool), False, torch.bool)
        self.present = grid(corpus.present[u], False, torch.bool)
        self.speakers = grid(corpus.speakers[u], 0, torch.int64)
        label_dtype = torch.int64 if corpus.task == "classification" else torch.float32
        self.labels = grid(corpus.labels[u], 0, label_dtype)
        self.target = self.labels[self.valid]  # [n] labels of the real utterances, split order
        self.first_utterance = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.available = self.present.clone()

    @property
    def num_dialogues(self) -> int:
        return len(self.dialogues)

    @property
    def num_utterances(self) -> int:
        return len(self.utterances)

    def grid_mask(self, mask: np.ndarray | Tensor) -> Tensor:
        """An utterance mask [n, M] (split order) as [D, L, M], ANDed with the files present."""
        flat = torch.zeros(
            self.num_dialogues * self.pad_length,
            len(MODALITIES),
            dtype=torch.bool,
            device=self.device,
        )
        flat[self.slot] = torch.as_tensor(mask, dtype=torch.bool, device=self.device)
        return flat.view(self.num_dialogues, self.pad_length, -1) & self.present

    def with_mask(self, mask: np.ndarray | Tensor) -> SplitData:
        """This split under another availability mask (one row per utterance, split order):
        a view sharing every tensor but the mask, so a cached split is never changed."""
        if len(mask) != self.num_utterances:
            raise ValueError(f"mask has {len(mask)} rows for {self.num_utterances} utterances")
        view = copy.copy(self)
        view.available = self.grid_mask(mask)
        return view

    def by_length(self) -> np.ndarray:
        """Dialogue order, shortest first: evaluation batches then carry little padding."""
        return np.argsort(self.lengths, kind="stable")

    def positions(self, chosen: np.ndarray) -> Tensor:
        """Split-order indices of the real utterances of `chosen` dialogues, in the order
        `batch.valid` yields them (dialogue by dialogue)."""
        starts, lengths = self.first_utterance[chosen], self.lengths[chosen]
        flat = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
        return torch.as_tensor(flat, device=self.device)

    def batches(
        self,
        batch_size: int,
        order: np.ndarray | None = None,
        fixed_length: bool = False,
        complete: bool = False,
    ) -> Iterator[Batch]:
        """Dialogue batches in `order` (default: split order), trimmed to their longest dialogue.

        Features are zero where missing (no model may rely on it: the contract test fills
        those positions with noise). With complete=True each batch also carries `complete`,
        its view with every recorded modality present.
        """
        order = np.arange(self.num_dialogues) if order is None else order
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            length = self.pad_length if fixed_length else int(self.lengths[chosen].max())
            idx = torch.as_tensor(chosen, device=self.device)
            available = self.available[idx, :length]
            feats = {}
            for k, m in enumerate(MODALITIES):
                x = self.features[m][idx, :length]
                feats[m] = x * available[..., k : k + 1]
            batch = Batch(
                features=feats,
                available=available,
                valid=self.valid[idx, :length],
                speakers=self.speakers[idx, :length],
                labels=self.labels[idx, :length],
            )
            if complete:
                present = self.present[idx, :length]
                full = {
                    m: self.features[m][idx, :length] * present[..., k : k + 1]
                    for k, m in enumerate(MODALITIES)
                }
                batch.complete = batch.replace(features=full, available=present)
            yield batch
