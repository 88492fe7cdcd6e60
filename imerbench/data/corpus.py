"""The one in-memory corpus type: dialogues of utterances with three modalities.

Every reader (the GCNet layout, the synthetic generator) produces a `Corpus`; everything
downstream (masks, batches, training) consumes one. Utterances are stored flat, in dialogue
order, each dialogue a contiguous run `dialogue_offsets[d]:dialogue_offsets[d + 1]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from imerbench.errors import ImerbenchError
from imerbench.seeding import rng

MODALITIES: tuple[str, ...] = ("a", "t", "v")
# The seven non-empty subsets of the modalities, in the papers' order (the MoMKE conditions).
SUBSETS: tuple[str, ...] = ("a", "t", "v", "at", "av", "tv", "atv")
Task = Literal["classification", "regression"]
SplitName = Literal["train", "val", "test"]


@dataclass(frozen=True)
class Fold:
    """Dialogue indices of one fold's three splits (val may be empty)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def get(self, split: SplitName) -> np.ndarray:
        return {"train": self.train, "val": self.val, "test": self.test}[split]


@dataclass(eq=False)
class Corpus:
    """A dataset held in memory, validated on construction.

    `present[i, m]` is False where utterance i has no feature file for modality m (only when
    the user asked to keep such utterances); its feature row is zero and is never shown to a
    model as present, because every availability mask is ANDed with `present`.
    """

    name: str
    task: Task
    num_classes: int  # 1 for regression
    features: dict[str, np.ndarray]  # modality -> float32 [N, d_m]
    labels: np.ndarray  # [N] int64 (classes) or float32 (regression)
    speakers: np.ndarray  # [N] int64, index into speaker_names
    speaker_names: tuple[str, ...]
    utterance_ids: tuple[str, ...]
    dialogue_ids: tuple[str, ...]
    dialogue_offsets: np.ndarray  # [D + 1] int64
    folds: tuple[Fold, ...]
    pad_length: int  # the padded dialogue length the published code uses
    present: np.ndarray | None = None  # [N, M] bool; None means all present
    class_names: tuple[str, ...] = ()
    feature_names: dict[str, str] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)  # reader-specific facts

    def __post_init__(self) -> None:
        n = len(self.labels)
        if tuple(self.features) != MODALITIES:
            raise ImerbenchError(
                f"corpus '{self.name}': modalities {tuple(self.features)} must be {MODALITIES}"
            )
        for m, x in self.features.items():
            if x.ndim != 2 or x.shape[0] != n:
                raise ImerbenchError(
                    f"corpus '{self.name}': modality '{m}' has shape {x.shape}, expected [{n}, d]"
                )
            if not np.isfinite(x).all():
                raise ImerbenchError(
                    f"corpus '{self.name}': modality '{m}' holds NaN or inf feature values"
                )
        if self.present is None:
            self.present = np.ones((n, len(MODALITIES)), dtype=bool)
        if self.present.shape != (n, len(MODALITIES)):
            raise ImerbenchError(f"corpus '{self.name}': present has shape {self.present.shape}")
        offsets = np.asarray(self.dialogue_offsets, dtype=np.int64)
        if offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) <= 0):
            raise ImerbenchError(
                f"corpus '{self.name}': dialogue offsets must rise from 0 to {n} with no empty "
                "dialogue"
            )
        self.dialogue_offsets = offsets
        if len(self.dialogue_ids) != len(offsets) - 1:
            raise ImerbenchError(f"corpus '{self.name}': one id per dialogue expected")
        if len(self.utterance_ids) != n or len(self.speakers) != n:
            raise ImerbenchError(f"corpus '{self.name}': one id and speaker per utterance expected")
        finite = np.isfinite(self.labels)
        if not finite.all():  # a NaN target would poison every loss
            i = int(np.flatnonzero(~finite)[0])
            raise ImerbenchError(
                f"corpus '{self.name}': label {self.labels[i]} of utterance "
                f"'{self.utterance_ids[i]}' is not a finite number"
            )
        if self.task == "classification":
            bad = (self.labels < 0) | (self.labels >= self.num_classes)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ImerbenchError(
                    f"corpus '{self.name}': label {self.labels[i]} of utterance "
                    f"'{self.utterance_ids[i]}' is outside 0..{self.num_classes - 1}"
                )
        num_dialogues = len(offsets) - 1
        for k, fold in enumerate(self.folds):
            parts = [fold.train, fold.val, fold.test]
            joined = np.concatenate(parts)
            if len(np.unique(joined)) != len(joined):
                raise ImerbenchError(f"corpus '{self.name}': fold {k} splits overlap")
            if len(joined) and (joined.min() < 0 or joined.max() >= num_dialogues):
                raise ImerbenchError(f"corpus '{self.name}': fold {k} names unknown dialogues")

    @property
    def modalities(self) -> tuple[str, ...]:
        return MODALITIES

    @property
    def num_utterances(self) -> int:
        return len(self.labels)

    @property
    def num_dialogues(self) -> int:
        return len(self.dialogue_offsets) - 1

    @property
    def widths(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.features.items()}

    @property
    def dialogue_lengths(self) -> np.ndarray:
        return np.diff(self.dialogue_offsets)

    def fold(self, k: int) -> Fold:
        if not 0 <= k < len(self.folds):
            raise ImerbenchError(
                f"dataset '{self.name}' has folds 0..{len(self.folds) - 1}, not {k}"
            )
        return self.folds[k]

    def utterances(self, dialogues: np.ndarray) -> np.ndarray:
        """Flat utterance indices of the given dialogues, in the given dialogue order."""
        if len(dialogues) == 0:
            return np.zeros(0, dtype=np.int64)
        starts = self.dialogue_offsets[dialogues]
        ends = self.dialogue_offsets[np.asarray(dialogues) + 1]
        return np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])

    def mask_groups(self, utterances: np.ndarray) -> np.ndarray | None:
        """What masks are drawn within for these utterances: their speakers, where the
        corpus has more than one (`imerbench/data/masks.py`), else None."""
        return self.speakers[utterances] if len(self.speaker_names) > 1 else None

    def split_utterances(self, fold: int, split: SplitName) -> np.ndarray:
        return self.utterances(self.fold(fold).get(split))


def leave_one_group_out(
    groups: Sequence[int],
    val_fraction: float = 0.1,
    seed: object = 0,
) -> tuple[Fold, ...]:
    """One fold per group value (IEMOCAP sessions): that group is the test split.

    A seeded `val_fraction` of each fold's training dialogues (at least one) becomes its
    validation split, so that selection never looks at the test split.
    """
    groups = np.asarray(groups)
    folds = []
    for g in np.unique(groups):
        test = np.flatnonzero(groups == g)
        rest = np.flatnonzero(groups != g)
        n_val = max(1, round(val_fraction * len(rest))) if val_fraction > 0 else 0
        perm = rng("val-carve-out", seed, int(g)).permutation(rest)
        val = np.sort(perm[:n_val])
        train = np.sort(perm[n_val:])
        folds.append(Fold(train=train, val=val, test=test))
    return tuple(folds)


def without_validation(fold: Fold) -> Fold:
    """The paper protocol's fold: the validation dialogues go back into training."""
    return Fold(
        train=np.sort(np.concatenate([fold.train, fold.val])), val=fold.val[:0], test=fold.test
    )


def hold_out(train: np.ndarray, fraction: float, *stream: object) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held): `fraction` of the training dialogues (at least one, at most all but
    one) held out, drawn from `stream` (the cell's), each part in split order."""
    count = min(max(1, round(fraction * len(train))), len(train) - 1)
    chosen = np.zeros(len(train), dtype=bool)
    chosen[rng("holdout", *stream).permutation(len(train))[:count]] = True
    return train[~chosen], train[chosen]
