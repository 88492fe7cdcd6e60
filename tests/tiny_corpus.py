"""Tiny in-memory corpora for fast tests of the harness and the method contract."""

from __future__ import annotations

import numpy as np

from imerbench.data import (
    MODALITIES,
    Corpus,
    Fold,
    MaskStore,
    SplitData,
    parse_mask_spec,
    without_validation,
)


def tiny_corpus(
    task: str = "classification",
    num_dialogues: int = 24,
    widths: tuple[int, int, int] = (6, 8, 5),
    signal: float = 2.0,
    seed: int = 0,
    name: str = "tiny",
) -> Corpus:
    """Dialogues of 3..9 utterances whose labels every modality reveals (with noise)."""
    gen = np.random.default_rng(seed)
    lengths = gen.integers(3, 10, size=num_dialogues)
    n = int(lengths.sum())
    num_classes = 3 if task == "classification" else 1
    if task == "classification":
        labels = gen.integers(0, num_classes, size=n)
        target = np.eye(num_classes)[labels]  # [n, C]
    else:
        labels = gen.uniform(-3, 3, size=n).round(1).astype(np.float32)
        target = labels[:, None] / 3.0
    features = {}
    for m, d in zip(MODALITIES, widths, strict=True):
        mix = gen.normal(size=(target.shape[1], d))
        x = signal * target @ mix + gen.normal(size=(n, d))
        features[m] = x.astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    speakers = (np.arange(n) % 2).astype(np.int64)
    perm = gen.permutation(num_dialogues)
    k = num_dialogues // 4
    fold = Fold(train=np.sort(perm[2 * k :]), val=np.sort(perm[:k]), test=np.sort(perm[k : 2 * k]))
    return Corpus(
        name=name,
        task=task,  # type: ignore[arg-type]
        num_classes=num_classes,
        features=features,
        labels=labels.astype(np.int64) if task == "classification" else labels,
        speakers=speakers,
        speaker_names=("F", "M"),
        utterance_ids=tuple(f"u{i}" for i in range(n)),
        dialogue_ids=tuple(f"d{i}" for i in range(num_dialogues)),
        dialogue_offsets=offsets,
        folds=(fold,),
        pad_length=int(lengths.max()) + 2,
    )


def splits_for(
    corpus: Corpus,
    spec: str = "0.0",
    *,
    seed: int = 0,
    pad_to: int | None = None,
    with_val: bool = True,
) -> dict[str, SplitData]:
    """Fold 0's splits on the CPU as the runner builds them: the stored evaluation masks of
    (`spec`, `seed`) set on validation and test; without validation for the paper protocol."""
    store, mask = MaskStore(None), parse_mask_spec(spec)
    fold = corpus.fold(0) if with_val else without_validation(corpus.fold(0))
    out = {}
    for split in ("train", "val", "test") if with_val else ("train", "test"):
        data = SplitData(corpus, fold.get(split), "cpu", pad_to=pad_to)
        if split != "train":
            data = data.with_mask(store.get(corpus, 0, split, mask, seed))
        out[split] = data
    return out
