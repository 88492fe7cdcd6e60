"""The label pickle of a GCNet-layout dataset: found, loaded safely, validated, flattened.

The pickle holds, per dialogue id, its utterance ids (`videoIDs`), labels, speakers and
sentences, then the splits: the official train/val/test videos (MOSI/MOSEI), or, where folds
are by session (IEMOCAP), trainVid/testVid, which the folds ignore: one fold per session.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imerbench.data.catalog import DatasetInfo
from imerbench.data.corpus import Fold, leave_one_group_out
from imerbench.data.gcnet.messages import first_names, id_problem, shown
from imerbench.data.safe_pickle import load_label_pickle
from imerbench.errors import ImerbenchError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")

_SESSION_ITEMS = ("videoIDs", "videoLabels", "videoSpeakers", "videoSentences")
_SESSION_ITEMS += ("trainVid", "testVid")
_SPLIT_ITEMS = ("videoIDs", "videoLabels", "videoSpeakers", "videoSentences")
_SPLIT_ITEMS += ("trainVids", "valVids", "testVids")


def _item_names(info: DatasetInfo) -> tuple[str, ...]:
    return _SESSION_ITEMS if info.session_folds else _SPLIT_ITEMS


def session_digit(text: str) -> int | None:
    """The IEMOCAP session of an id: its digit at index 4 ('Ses01F_impro01' is session 1)."""
    digit = text[4:5]
    return int(digit) if len(digit) == 1 and digit in "0123456789" else None


def locate(info: DatasetInfo, root: Path) -> tuple[Path, Path]:
    """(dataset folder, label pickle); root may be the data root or the dataset folder itself."""
    if not info.folder or not info.label_file:
        raise ImerbenchError(f"dataset '{info.id}' is not stored in the GCNet layout")
    expected = f"{info.folder}/{info.label_file}"
    if not root.exists():
        raise ImerbenchError(
            f"data root {root} does not exist; pass the folder that holds {info.folder}/ "
            f"(expected {root / expected})"
        )
    if not root.is_dir():
        raise ImerbenchError(
            f"data root {root} is a file; pass the folder that holds {info.folder}/"
        )
    if (root / info.label_file).is_file():
        return root, root / info.label_file
    dataset_dir = root / info.folder
    if not dataset_dir.is_dir():
        if root.name == info.folder:
            dataset_dir = root
        else:
            found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
            raise ImerbenchError(
                f"no {info.folder}/ folder under data root {root} (it holds: "
                f"{', '.join(found) or 'no folders'}); expected {root / expected}"
            )
    label_path = dataset_dir / info.label_file
    if not label_path.is_file():
        raise ImerbenchError(
            f"label pickle {label_path} is missing; {info.id} needs {info.label_file} (the "
            "published label file) in that folder"
        )
    return dataset_dir, label_path


@dataclass(frozen=True)
class Labels:
    """What the label pickle says, validated and flattened in corpus order."""

    path: Path
    dialogue_ids: tuple[str, ...]
    utterance_ids: tuple[str, ...]
    offsets: np.ndarray  # [D + 1]
    labels: np.ndarray  # [N] int64 or float32
    speakers: tuple[str, ...]  # [N] as written in the pickle
    splits: dict[str, np.ndarray] | None  # MOSI/MOSEI: dialogue indices per official split
    sessions: np.ndarray | None  # IEMOCAP: session number per dialogue


def _as_sequence(value: Any) -> list[Any] | None:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return value.tolist()
    return None


def _class_labels(info: DatasetInfo, path: Path, vid: str, uids: list[str], raw: list) -> list:
    out = []
    for uid, value in zip(uids, raw, strict=True):
        ok = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
        if not ok and isinstance(value, float | np.floating) and float(value).is_integer():
            ok = True
        if not ok or not 0 <= int(value) < info.num_classes:
            raise ImerbenchError(
                f"{path}: label {shown(value)} of utterance '{uid}' (dialogue '{vid}') is not a "
                f"class index in 0..{info.num_classes - 1} for {info.id}; is this the right label "
                "file?"
            )
        out.append(int(value))
    return out


def _regression_labels(path: Path, vid: str, uids: list[str], raw: list) -> list:
    out = []
    for uid, value in zip(uids, raw, strict=True):
        numeric = isinstance(value, int | float | np.integer | np.floating)
        try:
            number = float(value) if numeric and not isinstance(value, bool) else math.nan
        except OverflowError:  # an integer too large for a float
            number = math.nan
        if not -3.0 <= number <= 3.0:
            raise ImerbenchError(
                f"{path}: label {shown(value)} of utterance '{uid}' (dialogue '{vid}') is not a "
                "sentiment score in [-3, 3]; is this the right label file?"
            )
        out.append(number)
    return out


def parse_labels(info: DatasetInfo, path: Path) -> Labels:
    items = load_label_pickle(path)
    names = _item_names(info)
    if len(items) != len(names):
        raise ImerbenchError(
            f"{path}: holds {len(items)} items, but the published {info.folder} label pickle "
            f"holds {len(names)} ({', '.join(names)}); is this the right file for {info.id}?"
        )
    for k in range(4):
        if not isinstance(items[k], dict):
            raise ImerbenchError(
                f"{path}: item {k + 1} ({names[k]}) is a {type(items[k]).__name__}, expected a "
                "dict from dialogue id to a list; this is not a label pickle of the published "
                "layout"
            )
    video_ids, video_labels, video_speakers = items[0], items[1], items[2]
    for vid in video_ids:
        problem = id_problem(vid)
        if problem:
            raise ImerbenchError(
                f"{path}: dialogue id {shown(vid)} {problem}; fix it in the label file"
            )
        if info.session_folds and session_digit(vid) is None:
            raise ImerbenchError(no_session_message(path, vid))
    dialogue_ids = tuple(sorted(video_ids))
    if not dialogue_ids:
        raise ImerbenchError(f"{path}: videoIDs holds no dialogue")
    utterances: list[str] = []
    labels: list = []
    speakers: list[str] = []
    offsets = [0]
    for vid in dialogue_ids:
        uids = _as_sequence(video_ids[vid])
        if uids is None:
            raise ImerbenchError(
                f"{path}: videoIDs['{vid}'] is a {type(video_ids[vid]).__name__}, expected a "
                "list of utterance ids"
            )
        if not uids:
            raise ImerbenchError(
                f"{path}: dialogue '{vid}' has no utterances; remove it from the label file or "
                "add its utterances"
            )
        for key, table in (("videoLabels", video_labels), ("videoSpeakers", video_speakers)):
            seq = _as_sequence(table.get(vid))
            if seq is None or len(seq) != len(uids):
                got = "nothing" if seq is None else f"{len(seq)} entries"
                raise ImerbenchError(
                    f"{path}: {key}['{vid}'] has {got} for the {len(uids)} utterances of "
                    f"dialogue '{vid}'; the label file is inconsistent"
                )
        for uid in uids:
            problem = id_problem(uid)
            if problem:
                raise ImerbenchError(
                    f"{path}: dialogue '{vid}' has utterance id {shown(uid)}, which {problem}; "
                    "fix it in the label file"
                )
        if info.session_folds:
            check_utterance_sessions(path, vid, uids)
        raw_labels = _as_sequence(video_labels[vid]) or []
        if info.task == "classification":
            labels += _class_labels(info, path, vid, uids, raw_labels)
        else:
            labels += _regression_labels(path, vid, uids, raw_labels)
        spk = _as_sequence(video_speakers[vid]) or []
        bad_spk = [s for s in spk if not isinstance(s, str)]
        if bad_spk:
            raise ImerbenchError(
                f"{path}: dialogue '{vid}' has speaker {shown(bad_spk[0])}, expected a string"
            )
        utterances += uids
        speakers += spk
        offsets.append(len(utterances))
    dup = [u for u, c in Counter(utterances).items() if c > 1]
    if dup:
        raise ImerbenchError(
            f"{path}: utterance id '{dup[0]}' appears more than once; every utterance needs its "
            "own id (it names its feature files)"
        )
    dtype = np.int64 if info.task == "classification" else np.float32
    splits = None if info.session_folds else _parse_splits(path, items, dialogue_ids)
    sessions = parse_sessions(path, dialogue_ids) if info.session_folds else None
    return Labels(
        path=path,
        dialogue_ids=dialogue_ids,
        utterance_ids=tuple(utterances),
        offsets=np.asarray(offsets, dtype=np.int64),
        labels=np.asarray(labels, dtype=dtype),
        speakers=tuple(speakers),
        splits=splits,
        sessions=sessions,
    )


def _parse_splits(path: Path, items: list, dialogue_ids: tuple[str, ...]) -> dict[str, np.ndarray]:
    index = {vid: i for i, vid in enumerate(dialogue_ids)}
    splits: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}
    for split, item, name in zip(SPLIT_NAMES, items[4:7], _SPLIT_ITEMS[4:7], strict=True):
        if isinstance(item, set | frozenset | list | tuple):
            vids = list(item)
        elif isinstance(item, np.ndarray) and item.ndim == 1:
            vids = item.tolist()
        else:
            raise ImerbenchError(
                f"{path}: {name} is a {type(item).__name__}, expected a set of video ids"
            )
        not_ids = [v for v in vids if not isinstance(v, str)]
        if not_ids:
            raise ImerbenchError(
                f"{path}: {name} holds {shown(not_ids[0])}, a {type(not_ids[0]).__name__}, "
                "where a video id (a string) belongs; the label file is damaged"
            )
        unknown = [v for v in vids if v not in index]
        if unknown:
            raise ImerbenchError(
                f"{path}: {len(unknown)} video(s) of {name} are not in videoIDs (first: "
                f"{first_names(map(shown, unknown), len(unknown))}); the label file is inconsistent"
            )
        for v in vids:
            if v in owner and owner[v] != split:
                raise ImerbenchError(
                    f"{path}: video '{v}' is in both the {owner[v]} and the {split} split; the "
                    "label file is inconsistent"
                )
            owner[v] = split
        splits[split] = np.asarray(sorted({index[v] for v in vids}), dtype=np.int64)
    return splits


def no_session_message(path: Path, vid: str) -> str:
    return (
        f"{path}: dialogue id '{vid}' has no session digit at index 4 (IEMOCAP ids look like "
        "'Ses01F_impro01'); the folds are one per session, so rename the dialogue"
    )


def check_utterance_sessions(path: Path, vid: str, uids: Iterable[str]) -> None:
    """IEMOCAP utterance ids carry their session too, and it must be their dialogue's."""
    for uid in uids:
        session = session_digit(uid)
        if session is None:
            raise ImerbenchError(
                f"{path}: utterance id '{uid}' of dialogue '{vid}' has no session digit at index "
                "4 (IEMOCAP utterance ids look like 'Ses01F_impro01_F000'); rename the utterance"
            )
        if session != session_digit(vid):
            raise ImerbenchError(
                f"{path}: utterance '{uid}' is from session {session}, but its dialogue '{vid}' "
                f"is from session {session_digit(vid)}; one of the two ids is wrong"
            )


def parse_sessions(path: Path, dialogue_ids: tuple[str, ...]) -> np.ndarray:
    sessions = []
    for vid in dialogue_ids:
        session = session_digit(vid)
        if session is None:
            raise ImerbenchError(no_session_message(path, vid))
        sessions.append(session)
    return np.asarray(sessions, dtype=np.int64)


def label_folds(info: DatasetInfo, labels: Labels) -> tuple[Fold, ...]:
    if labels.sessions is not None:
        return leave_one_group_out(labels.sessions, val_fraction=0.1, seed=info.id)
    assert labels.splits is not None
    return (Fold(**labels.splits),)
