"""Reading a dataset in the GCNet layout as a `Corpus` (conventions: this package's docstring)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imerbench.data.catalog import DatasetInfo
from imerbench.data.corpus import MODALITIES, Corpus
from imerbench.data.feature_names import resolve_feature_names
from imerbench.data.gcnet.cache import cache_file, cache_key, cache_load, cache_store
from imerbench.data.gcnet.features import list_modalities, missing_message, parse_modality
from imerbench.data.gcnet.labels import label_folds, locate, parse_labels
from imerbench.errors import ImerbenchError

MISSING_FEATURE_MODES: tuple[str, ...] = ("refuse", "mark")


def read_gcnet(
    info: DatasetInfo,
    root: Path,
    *,
    feature_names: dict[str, str] | None,
    missing_features: str = "refuse",
    use_cache: bool = True,
) -> Corpus:
    """A dataset in the published layout as a `Corpus` (conventions: the docstring of
    `imerbench/data/gcnet/__init__.py`).

    Parsed features are kept in `feature_cache_dir()`, keyed on the dataset, the feature folder
    names and every used file's name, size and mtime (found by os.scandir, without opening a
    file), so a second read opens one .npz instead of thousands of .npy files.
    """
    if missing_features not in MISSING_FEATURE_MODES:
        raise ImerbenchError(
            f"--missing-features must be one of {', '.join(MISSING_FEATURE_MODES)}, not "
            f"'{missing_features}'"
        )
    names = resolve_feature_names(feature_names)
    dataset_dir, label_path = locate(info, Path(root))
    labels = parse_labels(info, label_path)
    listings = list_modalities(info, dataset_dir, labels, names)
    message = missing_message(info, labels, listings.values())
    if message and missing_features == "refuse":
        raise ImerbenchError(message)
    cache_path = cache_file(info, cache_key(info, labels, listings)) if use_cache else None
    cached = cache_load(cache_path, len(labels.utterance_ids)) if cache_path else None
    cache_state = "off" if cache_path is None else "hit" if cached is not None else "miss"
    if cached is not None:
        features, present = cached
    else:
        features, columns = {}, []
        for m in MODALITIES:
            features[m], column = parse_modality(info, listings[m])
            columns.append(column)
        present = np.stack(columns, axis=1)
    speaker_names = tuple(sorted(set(labels.speakers)))
    speaker_index = {s: k for k, s in enumerate(speaker_names)}
    corpus = Corpus(
        name=info.id,
        task=info.task,
        num_classes=info.num_classes,
        features=features,
        labels=labels.labels,
        speakers=np.asarray([speaker_index[s] for s in labels.speakers], dtype=np.int64),
        speaker_names=speaker_names,
        utterance_ids=labels.utterance_ids,
        dialogue_ids=labels.dialogue_ids,
        dialogue_offsets=labels.offsets,
        folds=label_folds(info, labels),
        pad_length=info.pad_length,
        present=present,
        class_names=info.class_names,
        feature_names=names,
        info={
            "root": str(root),
            "dataset_dir": str(dataset_dir),
            "label_file": str(label_path),
            "feature_dirs": {m: str(listings[m].folder) for m in MODALITIES},
            "missing": {m: len(listings[m].missing) for m in MODALITIES},
            "cache": cache_state,
        },
    )
    # Stored only once the corpus has passed its own checks: a cache entry means valid data.
    store_to = cache_path if cached is None else None
    if store_to is not None and not cache_store(store_to, features, present):
        corpus.info["cache"] = "unwritable"
    return corpus
