"""Writing a `Corpus` in the GCNet layout, so that the published code (and imerbench) reads it."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from imerbench.data.catalog import DatasetInfo
from imerbench.data.corpus import MODALITIES, Corpus
from imerbench.data.feature_names import resolve_feature_names
from imerbench.data.gcnet.labels import SPLIT_NAMES, check_utterance_sessions, parse_sessions
from imerbench.data.gcnet.messages import id_problem, shown
from imerbench.errors import ImerbenchError
from imerbench.files import atomic_write_with


def write_gcnet(
    corpus: Corpus,
    info: DatasetInfo,
    root: Path,
    feature_names: dict[str, str] | None = None,
) -> Path:
    """Write `corpus` in the published layout under `root`; returns the dataset folder.

    IEMOCAP's trainVid/testVid become sessions 1-4 / 5 (readers ignore them); MOSI/MOSEI's
    splits come from fold 0. Absent features (`present` False) get no file, so reading back
    with missing_features="mark" restores them. Dialogues are read back in sorted id order.
    """
    if not info.folder or not info.label_file:
        raise ImerbenchError(f"dataset '{info.id}' has no GCNet layout to write")
    if corpus.task != info.task:
        raise ImerbenchError(
            f"corpus '{corpus.name}' is a {corpus.task} corpus, but {info.id} holds "
            f"{info.task} labels; write it as a dataset of the same task"
        )
    names = resolve_feature_names(feature_names)
    for uid in (*corpus.utterance_ids, *corpus.dialogue_ids):
        problem = id_problem(uid)
        if problem:
            raise ImerbenchError(
                f"id {shown(uid)} of corpus '{corpus.name}' {problem}; use printable ids "
                "without slashes or a leading dot"
            )
    dataset_dir = Path(root) / info.folder
    video_ids: dict[str, list[str]] = {}
    video_labels: dict[str, list] = {}
    video_speakers: dict[str, list[str]] = {}
    video_sentences: dict[str, list[str]] = {}
    for d, vid in enumerate(corpus.dialogue_ids):
        rows = range(int(corpus.dialogue_offsets[d]), int(corpus.dialogue_offsets[d + 1]))
        video_ids[vid] = [corpus.utterance_ids[i] for i in rows]
        if corpus.task == "classification":
            video_labels[vid] = [int(corpus.labels[i]) for i in rows]
        else:
            video_labels[vid] = [float(corpus.labels[i]) for i in rows]
        video_speakers[vid] = [corpus.speaker_names[int(corpus.speakers[i])] for i in rows]
        video_sentences[vid] = ["" for _ in rows]
    items: list[Any] = [video_ids, video_labels, video_speakers, video_sentences]
    if info.session_folds:
        where = Path(f"corpus '{corpus.name}'")
        sessions = parse_sessions(where, corpus.dialogue_ids)
        for vid in corpus.dialogue_ids:
            check_utterance_sessions(where, vid, video_ids[vid])
        last = int(sessions.max())
        items.append({v for v, s in zip(corpus.dialogue_ids, sessions, strict=True) if s != last})
        items.append({v for v, s in zip(corpus.dialogue_ids, sessions, strict=True) if s == last})
    else:
        fold = corpus.fold(0)
        for split in SPLIT_NAMES:
            items.append({corpus.dialogue_ids[int(d)] for d in fold.get(split)})
    dataset_dir.mkdir(parents=True, exist_ok=True)
    label_path = dataset_dir / info.label_file
    atomic_write_with(label_path, lambda fh: pickle.dump(items, fh, protocol=2))
    present = corpus.present
    assert present is not None  # Corpus fills it in
    for k, m in enumerate(MODALITIES):
        folder = dataset_dir / "features" / names[m]
        folder.mkdir(parents=True, exist_ok=True)
        rows = corpus.features[m].astype(np.float32)
        for i, uid in enumerate(corpus.utterance_ids):
            if present[i, k]:
                np.save(folder / f"{uid}.npy", rows[i])
            else:  # a file left by an earlier write would make the entry look present
                (folder / f"{uid}.npy").unlink(missing_ok=True)
    return dataset_dir
