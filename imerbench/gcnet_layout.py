"""Reading, checking and writing the "GCNet layout" that every IMER paper's data comes in.

A user who already has the features points imerbench at the folder unchanged, so this module
reads exactly what the published loaders read, but refuses what they silently paper over.

What the public GCNet loaders do (zeroQiaoba/GCNet, `gcnet/dataloader_iemocap.py` and
`gcnet/dataloader_cmumosi.py`, read for the convention only):

- A feature of utterance `u` is `features/<name>/u.npy` or a folder `features/<name>/u/`.
  A `.npy` array is squeezed, and a `[T, D]` array is mean-pooled over T.
- A folder holds face files. CMU-MOSI/MOSEI average all of them. IEMOCAP sorts each face file
  into speaker F if its file name contains the letter `F`, otherwise into M if it contains `M`
  (a name with neither is an error there), averages each group, and the model later takes the
  group of the utterance's own speaker (`qmask` 0 = F picks the "host" features). So an
  utterance's video feature is the mean of the face files of its speaker, and a face file
  whose name contains both letters counts as F.
- A missing `.npy` file or an empty speaker group becomes a zero vector, silently.

imerbench does the same, with these differences: a `.npy` file wins over a folder of the same
name; only `*.npy` files inside a face folder count; each face file is mean-pooled on its own
before faces are averaged; leading axes of size 1 are dropped (GCNet squeezes), but a
`[T, 1]` array stays a width-1 feature; and a missing file (or a speaker with no face files) is
counted and refused, or with `missing_features="mark"` kept as absent (`present` False), never
as a zero vector that looks real.

Anything else wrong is refused with one line that names the file and the value: an unreadable
or non-numeric file, a file whose width differs from the one most files of its folder have, an
id that cannot name a file (empty, unprintable, a slash or a leading dot), an IEMOCAP dialogue
or utterance id without its session digit (or an utterance from another session than its
dialogue), an empty dialogue, a label out of range, and an inconsistent label pickle. Parsed
features are cached only for a corpus that passed every check.

Order: dialogues in sorted id order (as GCNet's IEMOCAP loader; its MOSI loader orders by split,
which no result depends on); utterances in `videoIDs` order within each dialogue.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import reprlib
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imerbench.corpus import MODALITIES, Corpus, Fold, leave_one_group_out
from imerbench.datasets import DATASETS, DatasetInfo
from imerbench.errors import ImerbenchError
from imerbench.safe_pickle import load_label_pickle

DEFAULT_FEATURE_NAMES: dict[str, str] = {
    "a": "wav2vec-large-c-UTT",
    "t": "deberta-large-4-UTT",
    "v": "manet_UTT",
}
MODALITY_WORDS: dict[str, str] = {"a": "audio", "t": "text", "v": "video"}
PAD_LENGTHS: dict[str, int] = {"mosi": 65, "mosei": 150, "iemocap4": 150, "iemocap6": 150}
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "iemocap4": ("happy", "sad", "neutral", "angry"),
    "iemocap6": ("happy", "sad", "neutral", "angry", "excited", "frustrated"),
}
MISSING_FEATURE_MODES: tuple[str, ...] = ("refuse", "mark")
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")

_IEMOCAP_ITEMS = ("videoIDs", "videoLabels", "videoSpeakers", "videoSentences")
_IEMOCAP_ITEMS += ("trainVid", "testVid")
_MOSI_ITEMS = ("videoIDs", "videoLabels", "videoSpeakers", "videoSentences")
_MOSI_ITEMS += ("trainVids", "valVids", "testVids")
_CACHE_VERSION = "imerbench-gcnet-cache-v1"
_FIRST = 3  # how many names a message lists


def _is_iemocap(info: DatasetInfo) -> bool:
    return info.folder == "IEMOCAP"


def _item_names(info: DatasetInfo) -> tuple[str, ...]:
    return _IEMOCAP_ITEMS if _is_iemocap(info) else _MOSI_ITEMS


def _layout_infos() -> list[DatasetInfo]:
    return [d for d in DATASETS.values() if d.folder and d.label_file]


def _first(names: Iterable[str], total: int) -> str:
    shown = list(names)[:_FIRST]
    return ", ".join(shown) + (", ..." if total > len(shown) else "")


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _shown(value: Any) -> str:
    """A value read from an untrusted file as a short repr that keeps a message on one line."""
    try:
        text = " ".join(_REPR.repr(value).split())
    except Exception:  # a damaged object may not even print
        text = f"<a {type(value).__name__}>"
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= 80 else text[:77] + "..."


def _id_problem(value: Any) -> str | None:
    """Why `value` cannot be a dialogue or utterance id (ids name feature files), or None."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if not value:
        return "is empty"
    if not value.isprintable() or "/" in value or "\\" in value or value.startswith("."):
        return "cannot name a feature file (it holds a slash, a leading dot or unprintable text)"
    return None


def _session_digit(text: str) -> int | None:
    """The IEMOCAP session of an id: its digit at index 4 ('Ses01F_impro01' is session 1)."""
    digit = text[4:5]
    return int(digit) if len(digit) == 1 and digit in "0123456789" else None


# --------------------------------------------------------------------------------------------
# Locating the files


def resolve_feature_names(feature_names: Mapping[str, str] | None) -> dict[str, str]:
    """The feature folder per modality: the papers' defaults, overridden where given."""
    names = dict(DEFAULT_FEATURE_NAMES)
    for m, name in (feature_names or {}).items():
        if m not in MODALITIES:
            raise ImerbenchError(
                f"unknown modality '{m}' in the feature names; valid: {', '.join(MODALITIES)} "
                "(e.g. v=manet_UTT)"
            )
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ImerbenchError(
                f"feature name '{name}' for modality '{m}' must be one folder name under features/"
            )
        names[m] = name
    return names


def _locate(info: DatasetInfo, root: Path) -> tuple[Path, Path]:
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


# --------------------------------------------------------------------------------------------
# The label pickle


@dataclass(frozen=True)
class _Labels:
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
                f"{path}: label {_shown(value)} of utterance '{uid}' (dialogue '{vid}') is not a "
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
                f"{path}: label {_shown(value)} of utterance '{uid}' (dialogue '{vid}') is not a "
                "sentiment score in [-3, 3]; is this the right label file?"
            )
        out.append(number)
    return out


def _parse_labels(info: DatasetInfo, path: Path) -> _Labels:
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
        problem = _id_problem(vid)
        if problem:
            raise ImerbenchError(
                f"{path}: dialogue id {_shown(vid)} {problem}; fix it in the label file"
            )
        if _is_iemocap(info) and _session_digit(vid) is None:
            raise ImerbenchError(_no_session_message(path, vid))
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
            problem = _id_problem(uid)
            if problem:
                raise ImerbenchError(
                    f"{path}: dialogue '{vid}' has utterance id {_shown(uid)}, which {problem}; "
                    "fix it in the label file"
                )
        if _is_iemocap(info):
            _check_utterance_sessions(path, vid, uids)
        raw_labels = _as_sequence(video_labels[vid]) or []
        if info.task == "classification":
            labels += _class_labels(info, path, vid, uids, raw_labels)
        else:
            labels += _regression_labels(path, vid, uids, raw_labels)
        spk = _as_sequence(video_speakers[vid]) or []
        bad_spk = [s for s in spk if not isinstance(s, str)]
        if bad_spk:
            raise ImerbenchError(
                f"{path}: dialogue '{vid}' has speaker {_shown(bad_spk[0])}, expected a string"
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
    splits = None if _is_iemocap(info) else _parse_splits(path, items, dialogue_ids)
    sessions = _parse_sessions(path, dialogue_ids) if _is_iemocap(info) else None
    return _Labels(
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
    for split, item, name in zip(SPLIT_NAMES, items[4:7], _MOSI_ITEMS[4:7], strict=True):
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
                f"{path}: {name} holds {_shown(not_ids[0])}, a {type(not_ids[0]).__name__}, "
                "where a video id (a string) belongs; the label file is damaged"
            )
        unknown = [v for v in vids if v not in index]
        if unknown:
            raise ImerbenchError(
                f"{path}: {len(unknown)} video(s) of {name} are not in videoIDs (first: "
                f"{_first(map(_shown, unknown), len(unknown))}); the label file is inconsistent"
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


def _no_session_message(path: Path, vid: str) -> str:
    return (
        f"{path}: dialogue id '{vid}' has no session digit at index 4 (IEMOCAP ids look like "
        "'Ses01F_impro01'); the folds are one per session, so rename the dialogue"
    )


def _check_utterance_sessions(path: Path, vid: str, uids: Iterable[str]) -> None:
    """IEMOCAP utterance ids carry their session too, and it must be their dialogue's."""
    for uid in uids:
        session = _session_digit(uid)
        if session is None:
            raise ImerbenchError(
                f"{path}: utterance id '{uid}' of dialogue '{vid}' has no session digit at index "
                "4 (IEMOCAP utterance ids look like 'Ses01F_impro01_F000'); rename the utterance"
            )
        if session != _session_digit(vid):
            raise ImerbenchError(
                f"{path}: utterance '{uid}' is from session {session}, but its dialogue '{vid}' "
                f"is from session {_session_digit(vid)}; one of the two ids is wrong"
            )


def _parse_sessions(path: Path, dialogue_ids: tuple[str, ...]) -> np.ndarray:
    sessions = []
    for vid in dialogue_ids:
        session = _session_digit(vid)
        if session is None:
            raise ImerbenchError(_no_session_message(path, vid))
        sessions.append(session)
    return np.asarray(sessions, dtype=np.int64)


def _folds(info: DatasetInfo, labels: _Labels) -> tuple[Fold, ...]:
    if labels.sessions is not None:
        return leave_one_group_out(labels.sessions, val_fraction=0.1, seed=info.id)
    assert labels.splits is not None
    return (Fold(**labels.splits),)


# --------------------------------------------------------------------------------------------
# Listing the feature files (cheap: names and stat only)


@dataclass
class _ModalityListing:
    """Which files feed each utterance's feature, found with os.scandir only."""

    modality: str
    name: str
    folder: Path
    sources: list[tuple[str, ...] | None]  # file paths per utterance; None = no feature file
    stats: list[tuple[str, int, int]]  # (path relative to the dataset folder, size, mtime_ns)
    entries: int  # files and folders directly under the feature folder

    @property
    def missing(self) -> list[int]:
        return [i for i, s in enumerate(self.sources) if s is None]


def _features_dir(dataset_dir: Path) -> Path:
    folder = dataset_dir / "features"
    if not folder.is_dir():
        raise ImerbenchError(
            f"no features/ folder in {dataset_dir}; expected features/<feature-name>/"
            "<utterance id>.npy (e.g. features/wav2vec-large-c-UTT/)"
        )
    return folder


def _feature_folders(features_dir: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(features_dir) if e.is_dir())
    except OSError:
        return []


def _face_speaker(file_name: str) -> str | None:
    """GCNet's rule: a face file is F's if its name has an F, else M's if it has an M."""
    if "F" in file_name:
        return "F"
    if "M" in file_name:
        return "M"
    return None


def _list_modality(
    info: DatasetInfo, dataset_dir: Path, labels: _Labels, modality: str, name: str
) -> _ModalityListing:
    features_dir = _features_dir(dataset_dir)
    folder = features_dir / name
    if not folder.is_dir():
        found = _feature_folders(features_dir)
        raise ImerbenchError(
            f"{info.id}: the {MODALITY_WORDS[modality]} feature folder {folder} does not exist "
            f"(features/ holds: {', '.join(found) or 'no folders'}); add it or pass "
            f"--feature-names {modality}=<one of those folders>"
        )
    with os.scandir(folder) as it:
        entries = {e.name: e for e in it}
    sources: list[tuple[str, ...] | None] = []
    stats: list[tuple[str, int, int]] = []
    prefix = f"features/{name}"
    for uid, speaker in zip(labels.utterance_ids, labels.speakers, strict=True):
        entry = entries.get(uid + ".npy")
        if entry is not None and entry.is_file():
            st = entry.stat()
            stats.append((f"{prefix}/{entry.name}", st.st_size, st.st_mtime_ns))
            sources.append((entry.path,))
            continue
        entry = entries.get(uid)
        if entry is None or not entry.is_dir():
            sources.append(None)
            continue
        faces = []
        with os.scandir(entry.path) as it:
            face_entries = sorted(
                (f for f in it if f.name.endswith(".npy") and f.is_file()), key=lambda f: f.name
            )
        for face in face_entries:
            if _is_iemocap(info):
                owner = _face_speaker(face.name)
                if owner is None:
                    raise ImerbenchError(
                        f"{info.id}: face file {face.path} has neither F nor M in its name, so "
                        "its speaker is unknown; rename it (IEMOCAP face files name their speaker)"
                    )
                if owner != speaker:
                    continue
            st = face.stat()
            stats.append((f"{prefix}/{uid}/{face.name}", st.st_size, st.st_mtime_ns))
            faces.append(face.path)
        sources.append(tuple(faces) if faces else None)
    return _ModalityListing(modality, name, folder, sources, stats, len(entries))


def _listings(
    info: DatasetInfo, dataset_dir: Path, labels: _Labels, names: dict[str, str]
) -> dict[str, _ModalityListing]:
    return {m: _list_modality(info, dataset_dir, labels, m, names[m]) for m in MODALITIES}


_MISSING_FIX = "add the files, or pass --missing-features mark to keep them as missing"


def _missing_message(
    info: DatasetInfo, labels: _Labels, listings: Iterable[_ModalityListing]
) -> str:
    """One line over all modalities: how many utterances lack a file, and the first names."""
    parts = []
    for listing in listings:
        missing = listing.missing
        if missing:
            first = _first((labels.utterance_ids[i] for i in missing), len(missing))
            parts.append(
                f"{len(missing)} utterances have no {MODALITY_WORDS[listing.modality]} feature "
                f"file under {listing.folder} (first: {first})"
            )
    return f"{info.id}: " + "; ".join(parts) + f"; {_MISSING_FIX}" if parts else ""


# --------------------------------------------------------------------------------------------
# Parsing the feature files


_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def _load_npy(path: str) -> Any:
    """np.load without its warnings (e.g. about Python 2 headers): the reader itself says what
    is wrong with a file, in one line, and a warning would add lines to the error output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.load(path, allow_pickle=False)


def _read_array(path: str) -> Any:
    """The one place that opens a feature file (tests replace it to prove a cache hit).

    Feature folders hold thousands of files with identical headers, and `np.load` spends most
    of its time parsing each header, so a parsed header is remembered by its bytes. Anything
    unusual (another format version, a damaged header) goes through `np.load`.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    if not data.startswith((b"\x93NUMPY", b"PK\x03\x04")):  # np.load would try a pickle
        raise ValueError("not a .npy file: it does not start with the .npy magic string")
    version = data[6] if len(data) > 10 and data[:6] == b"\x93NUMPY" else 0
    if version not in (1, 2, 3):
        return _load_npy(path)
    size_bytes = 2 if version == 1 else 4
    start = 8 + size_bytes
    header = data[start : start + int.from_bytes(data[8:start], "little")]
    parsed = _HEADERS.get(header)
    if parsed is None:
        arr = _load_npy(path)  # raises for anything damaged
        if version in (1, 2) and not arr.dtype.hasobject and len(_HEADERS) < 1024:
            read = np.lib.format.read_array_header_1_0
            if version == 2:
                read = np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(io.BytesIO(data[8:]))
            _HEADERS[header] = (dtype, shape, fortran)
        return arr
    dtype, shape, fortran = parsed
    count = math.prod(shape)
    offset = start + len(header)
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(
            f"the file is truncated: {len(data) - offset} bytes of data for shape {list(shape)}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape, order="F" if fortran else "C")


def _vector(path: str) -> np.ndarray:
    """One file as a float64 [D] vector, or one ImerbenchError line naming the file."""

    def bad(reason: str) -> ImerbenchError:
        return ImerbenchError(f"feature file {path}: {reason}; re-extract or replace the file")

    try:
        arr = _read_array(path)
    except ImerbenchError:
        raise
    except Exception as err:  # a damaged file can fail in many ways; all mean "unreadable"
        raise bad(f"cannot be read as a .npy array ({type(err).__name__}: {_short(err)})") from None
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "close"):  # an .npz archive keeps its file open
            arr.close()
        raise bad(f"holds a {type(arr).__name__}, not a single array")
    if arr.dtype.kind not in "iuf":
        raise bad(f"holds {arr.dtype} values, not numbers")
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (1, 2):
        raise bad(f"has shape {list(arr.shape)}, expected [D] or [T, D]")
    if arr.size == 0:
        raise bad(f"has shape {list(arr.shape)}, which holds no values")
    if not np.isfinite(arr).all():
        raise bad("holds NaN or inf values")
    arr = arr.astype(np.float64)
    return arr.mean(axis=0) if arr.ndim == 2 else arr


def _width_message(
    info: DatasetInfo,
    listing: _ModalityListing,
    odd: tuple[str, int],
    width: int,
    counts: Counter[int],
    example: str,
) -> str:
    """One file of another width than most: named, with both widths and how many differ."""
    total = sum(counts.values())
    others = total - counts[width]
    more = f"; {others} files in all differ" if others > 1 else ""
    return (
        f"{info.id}: feature file {odd[0]} has width {odd[1]}, but "
        f"{counts[width]} of the {total} {MODALITY_WORDS[listing.modality]} files under "
        f"{listing.folder} have width {width} (first: {example}){more}; every file of one "
        "feature folder must have the same width: re-extract it"
    )


def _parse_modality(
    info: DatasetInfo, listing: _ModalityListing, problems: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """([N, D] float32 features with zero rows where absent, [N] present).

    The width is the one most files have (a tie goes to the first file's), so that the message
    names the odd file even when it comes first. With `problems` None the first bad file
    raises; otherwise each bad file is recorded there, its utterance treated as absent, and
    parsing goes on (for `check_data_root`).
    """
    n = len(listing.sources)
    counts: Counter[int] = Counter()
    first_of: dict[int, str] = {}
    # Per utterance: its files' (path, width) and, where they agree, their mean vector.
    parsed: list[tuple[list[tuple[str, int]], np.ndarray | None] | None] = []
    for sources in listing.sources:
        if sources is None:
            parsed.append(None)
            continue
        try:
            vectors = [(path, _vector(path)) for path in sources]
        except ImerbenchError as err:
            if problems is None:
                raise
            problems.append(str(err))
            parsed.append(None)
            continue
        widths = [(path, len(vec)) for path, vec in vectors]
        for path, w in widths:
            counts[w] += 1
            first_of.setdefault(w, path)
        same = len({w for _, w in widths}) == 1
        vecs = [vec for _, vec in vectors]
        mean = (vecs[0] if len(vecs) == 1 else np.mean(vecs, axis=0)) if same else None
        parsed.append((widths, mean))
    if not counts:
        raise ImerbenchError(
            f"{info.id}: the {MODALITY_WORDS[listing.modality]} feature folder {listing.folder} "
            f"holds no usable file for any of the {n} utterances; check the folder or pass "
            f"--feature-names {listing.modality}=<folder>"
        )
    width = max(counts, key=counts.__getitem__)  # insertion order breaks ties: the first file
    out = np.zeros((n, width), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    for i, entry in enumerate(parsed):
        if entry is None:
            continue
        widths, mean = entry
        odd = [(path, w) for path, w in widths if w != width]
        if odd:
            message = _width_message(info, listing, odd[0], width, counts, first_of[width])
            if problems is None:
                raise ImerbenchError(message)
            problems.append(message)
            continue
        assert mean is not None
        out[i] = mean
        present[i] = True
    return out, present


# --------------------------------------------------------------------------------------------
# The parsed-feature cache


def cache_dir() -> Path:
    """Where parsed features are kept: $IMERBENCH_CACHE, else ~/.cache/imerbench."""
    env = os.environ.get("IMERBENCH_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "imerbench"
    return base / "gcnet"


def _cache_key(info: DatasetInfo, labels: _Labels, listings: Mapping[str, _ModalityListing]) -> str:
    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        digest.update(("\x1f".join(str(p) for p in parts) + "\x1e").encode("utf-8"))

    st = labels.path.stat()
    add(_CACHE_VERSION, info.id, labels.path.resolve(), st.st_size, st.st_mtime_ns)
    for m in MODALITIES:
        add("modality", m, listings[m].name)
        for rel, size, mtime in sorted(listings[m].stats):
            add(rel, size, mtime)
    return digest.hexdigest()


def _cache_path(info: DatasetInfo, key: str) -> Path:
    return cache_dir() / f"{info.id}-{key[:40]}.npz"


def _cache_load(path: Path, n: int) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """The cached matrices, or None when absent or damaged (then they are parsed again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            feats = {m: np.array(z[f"features_{m}"]) for m in MODALITIES}
            present = np.array(z["present"])
    except Exception:  # any damage means "rebuild", never an error
        return None
    shapes_ok = all(
        x.ndim == 2 and x.shape[0] == n and x.dtype == np.float32 for x in feats.values()
    )
    if not shapes_ok or present.shape != (n, len(MODALITIES)) or present.dtype != bool:
        return None
    return feats, present


def _cache_store(path: Path, features: Mapping[str, np.ndarray], present: np.ndarray) -> bool:
    """Written to a temporary file and renamed, so a reader never sees half a cache file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            arrays = {f"features_{m}": features[m] for m in MODALITIES}
            np.savez(fh, present=present, **arrays)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        return False


# --------------------------------------------------------------------------------------------
# Reading


def read_gcnet(
    info: DatasetInfo,
    root: Path,
    *,
    feature_names: dict[str, str] | None,
    missing_features: str = "refuse",
    use_cache: bool = True,
) -> Corpus:
    """A dataset in the published layout as a `Corpus` (conventions: the module docstring).

    Parsed features are kept in `cache_dir()`, keyed on the dataset, the feature folder names
    and every used file's name, size and mtime (found by os.scandir, without opening a file),
    so a second read opens one .npz instead of thousands of .npy files.
    """
    if missing_features not in MISSING_FEATURE_MODES:
        raise ImerbenchError(
            f"--missing-features must be one of {', '.join(MISSING_FEATURE_MODES)}, not "
            f"'{missing_features}'"
        )
    names = resolve_feature_names(feature_names)
    dataset_dir, label_path = _locate(info, Path(root))
    labels = _parse_labels(info, label_path)
    listings = _listings(info, dataset_dir, labels, names)
    message = _missing_message(info, labels, listings.values())
    if message and missing_features == "refuse":
        raise ImerbenchError(message)
    cache_path = _cache_path(info, _cache_key(info, labels, listings)) if use_cache else None
    cached = _cache_load(cache_path, len(labels.utterance_ids)) if cache_path else None
    cache_state = "off" if cache_path is None else "hit" if cached is not None else "miss"
    if cached is not None:
        features, present = cached
    else:
        features, columns = {}, []
        for m in MODALITIES:
            features[m], column = _parse_modality(info, listings[m])
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
        folds=_folds(info, labels),
        pad_length=PAD_LENGTHS.get(info.id, 150),
        present=present,
        class_names=CLASS_NAMES.get(info.id, ()),
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
    if store_to is not None and not _cache_store(store_to, features, present):
        corpus.info["cache"] = "unwritable"
    return corpus


# --------------------------------------------------------------------------------------------
# Writing


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
        problem = _id_problem(uid)
        if problem:
            raise ImerbenchError(
                f"id {_shown(uid)} of corpus '{corpus.name}' {problem}; use printable ids "
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
    if _is_iemocap(info):
        where = Path(f"corpus '{corpus.name}'")
        sessions = _parse_sessions(where, corpus.dialogue_ids)
        for vid in corpus.dialogue_ids:
            _check_utterance_sessions(where, vid, video_ids[vid])
        last = int(sessions.max())
        items.append({v for v, s in zip(corpus.dialogue_ids, sessions, strict=True) if s != last})
        items.append({v for v, s in zip(corpus.dialogue_ids, sessions, strict=True) if s == last})
    else:
        fold = corpus.fold(0)
        for split in SPLIT_NAMES:
            items.append({corpus.dialogue_ids[int(d)] for d in fold.get(split)})
    dataset_dir.mkdir(parents=True, exist_ok=True)
    label_path = dataset_dir / info.label_file
    tmp = label_path.with_name(f".{label_path.name}.tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(items, fh, protocol=2)
    os.replace(tmp, label_path)
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


# --------------------------------------------------------------------------------------------
# Checking a data root


@dataclass
class FeatureReport:
    """One modality's feature folder, as found."""

    modality: str
    name: str
    folder: str
    found: bool
    entries: int = 0  # files and face folders directly under the folder
    with_file: int = 0  # utterances that have a file (or face files)
    width: int | None = None
    missing: int = 0
    first_missing: tuple[str, ...] = ()


@dataclass
class DatasetReport:
    """What one dataset under the data root holds, and what is wrong with it."""

    dataset: str
    label_file: str
    utterances: int = 0
    dialogues: int = 0
    max_dialogue_length: int = 0
    # MOSI/MOSEI: split -> (videos, utterances); IEMOCAP: session -> utterances.
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)
    nonzero_test_labels: int | None = None
    sessions: dict[int, int] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)
    features: list[FeatureReport] = field(default_factory=list)
    other_feature_folders: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self, problems: bool = True) -> list[str]:
        """The report; `problems` False leaves the PROBLEM lines out (the CLI writes them to
        the error output)."""
        out = [f"{self.dataset}: {self.label_file}"]
        if self.utterances:
            unit = "dialogues" if self.sessions else "videos"
            out.append(
                f"  {self.utterances} utterances in {self.dialogues} {unit} "
                f"(at most {self.max_dialogue_length} per {unit[:-1]})"
            )
        if self.sessions:
            per = ", ".join(f"Ses{s:02d} {c}" for s, c in sorted(self.sessions.items()))
            out.append(f"  utterances per session: {per} ({len(self.sessions)} folds)")
        if self.splits:
            per = "; ".join(f"{s} {v} videos / {u} utterances" for s, (v, u) in self.splits.items())
            out.append(f"  splits: {per}")
        if self.nonzero_test_labels is not None:
            out.append(f"  non-zero test labels: {self.nonzero_test_labels}")
        if self.label_counts:
            out.append("  labels: " + ", ".join(f"{k} {v}" for k, v in self.label_counts.items()))
        for f in self.features:
            word = MODALITY_WORDS[f.modality]
            if not f.found:
                out.append(f"  {word} ({f.modality}): {f.name}: not found")
                continue
            width = f"width {f.width}" if f.width is not None else "width unknown"
            out.append(
                f"  {word} ({f.modality}): {f.name}: {f.entries} entries, {f.with_file} of "
                f"{self.utterances} utterances have a file, {width}"
            )
        if self.other_feature_folders:
            others = ", ".join(f"{k} ({v} entries)" for k, v in self.other_feature_folders.items())
            out.append(f"  other feature folders: {others}")
        if not self.problems:
            out.append("  ok")
        elif problems:
            out += [f"  PROBLEM: {p}" for p in self.problems]
        else:
            out.append(f"  {len(self.problems)} problem(s), on the error output")
        return out


@dataclass
class DataReport:
    """Every dataset found under a data root; built without stopping at the first problem."""

    root: str
    datasets: list[DatasetReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.datasets) and not self.problems and all(d.ok for d in self.datasets)

    def all_problems(self) -> list[str]:
        """Every problem, each one line that names its file: what `data check` reports as
        errors."""
        return [*self.problems, *(p for d in self.datasets for p in d.problems)]

    def lines(self, problems: bool = True) -> list[str]:
        """The report; `problems` False leaves the PROBLEM lines out (see `all_problems`)."""
        found = ", ".join(d.dataset for d in self.datasets) or "none"
        out = [f"data root {self.root}: datasets found: {found}"]
        if problems:
            out += [f"PROBLEM: {p}" for p in self.problems]
        for d in self.datasets:
            out += d.lines(problems)
        if self.ok:
            out.append("all ok")
        elif problems:
            out.append("problems found: see the PROBLEM lines above")
        else:
            out.append(f"problems found: {len(self.all_problems())}, on the error output")
        return out


def _summarize(problems: list[str], word: str) -> list[str]:
    """The first unreadable-file problems in full, and how many more there were."""
    if len(problems) <= _FIRST:
        return problems
    rest = len(problems) - _FIRST
    return [*problems[:_FIRST], f"... and {rest} more bad {word} feature files"]


def _check_dataset(
    info: DatasetInfo,
    dataset_dir: Path,
    label_path: Path,
    names: dict[str, str],
    use_cache: bool,
) -> DatasetReport:
    report = DatasetReport(dataset=info.id, label_file=str(label_path))
    try:
        labels = _parse_labels(info, label_path)
    except ImerbenchError as err:
        report.problems.append(str(err))
        return report
    lengths = np.diff(labels.offsets)
    report.utterances = len(labels.utterance_ids)
    report.dialogues = len(labels.dialogue_ids)
    report.max_dialogue_length = int(lengths.max())
    if labels.sessions is not None:
        for s in np.unique(labels.sessions):
            report.sessions[int(s)] = int(lengths[labels.sessions == s].sum())
    if labels.splits is not None:
        for split, dialogues in labels.splits.items():
            report.splits[split] = (len(dialogues), int(lengths[dialogues].sum()))
        test_rows = np.concatenate(
            [np.arange(labels.offsets[d], labels.offsets[d + 1]) for d in labels.splits["test"]]
            or [np.zeros(0, dtype=np.int64)]
        )
        report.nonzero_test_labels = int(np.count_nonzero(labels.labels[test_rows]))
    if info.task == "classification":
        counts = np.bincount(labels.labels, minlength=info.num_classes)
        class_names = CLASS_NAMES.get(info.id) or tuple(map(str, range(info.num_classes)))
        report.label_counts = {class_names[k]: int(c) for k, c in enumerate(counts)}
    else:
        report.label_counts = {
            "negative": int((labels.labels < 0).sum()),
            "zero": int((labels.labels == 0).sum()),
            "positive": int((labels.labels > 0).sum()),
        }
    try:
        features_dir = _features_dir(dataset_dir)
    except ImerbenchError as err:
        report.problems.append(str(err))
        return report
    listings: dict[str, _ModalityListing] = {}
    for m in MODALITIES:
        folder = features_dir / names[m]
        try:
            listing = _list_modality(info, dataset_dir, labels, m, names[m])
        except ImerbenchError as err:
            report.features.append(FeatureReport(m, names[m], str(folder), folder.is_dir()))
            report.problems.append(str(err))
            continue
        listings[m] = listing
        missing = listing.missing
        report.features.append(
            FeatureReport(
                modality=m,
                name=names[m],
                folder=str(folder),
                found=True,
                entries=listing.entries,
                with_file=report.utterances - len(missing),
                missing=len(missing),
                first_missing=tuple(labels.utterance_ids[i] for i in missing[:_FIRST]),
            )
        )
    used = set(names.values())
    for other in _feature_folders(features_dir):
        if other not in used:
            with os.scandir(features_dir / other) as it:
                report.other_feature_folders[other] = sum(1 for _ in it)
    message = _missing_message(info, labels, listings.values())
    if message:
        report.problems.append(message)
    _check_features(info, labels, listings, report, use_cache)
    return report


def _check_features(
    info: DatasetInfo,
    labels: _Labels,
    listings: dict[str, _ModalityListing],
    report: DatasetReport,
    use_cache: bool,
) -> None:
    by_modality = {f.modality: f for f in report.features}
    n = len(labels.utterance_ids)
    path = None
    if use_cache and len(listings) == len(MODALITIES):
        path = _cache_path(info, _cache_key(info, labels, listings))
        cached = _cache_load(path, n)
        if cached is not None:
            for m in MODALITIES:
                by_modality[m].width = int(cached[0][m].shape[1])
            return
    parsed: dict[str, np.ndarray] = {}
    columns: list[np.ndarray] = []
    clean = True
    for m, listing in listings.items():
        problems: list[str] = []
        try:
            matrix, present = _parse_modality(info, listing, problems)
        except ImerbenchError as err:
            report.problems += _summarize(problems, MODALITY_WORDS[m])
            report.problems.append(str(err))
            clean = False
            continue
        by_modality[m].width = int(matrix.shape[1])
        if problems:
            report.problems += _summarize(problems, MODALITY_WORDS[m])
            clean = False
        parsed[m] = matrix
        columns.append(present)
    # A clean parse is worth keeping: the run that follows the check then starts at once.
    if path is not None and clean and len(parsed) == len(MODALITIES):
        _cache_store(path, parsed, np.stack(columns, axis=1))


def check_data_root(
    root: Path, feature_names: dict[str, str] | None = None, *, use_cache: bool = True
) -> DataReport:
    """What a data folder holds and what is wrong with it, dataset by dataset, never raising
    for a problem inside one dataset (only for a root that does not exist)."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ImerbenchError(
            f"data root {root} {what}; pass the folder that holds IEMOCAP/, CMUMOSI/ or CMUMOSEI/"
        )
    names = resolve_feature_names(feature_names)
    report = DataReport(root=str(root))
    folders = dict.fromkeys(info.folder for info in _layout_infos())
    for folder in folders:
        infos = [info for info in _layout_infos() if info.folder == folder]
        found = False
        for info in infos:
            for dataset_dir in (root, root / folder):
                if (dataset_dir / info.label_file).is_file():
                    found = True
                    label_path = dataset_dir / info.label_file
                    report.datasets.append(
                        _check_dataset(info, dataset_dir, label_path, names, use_cache)
                    )
                    break
        if not found and (root / folder).is_dir():
            expected = " or ".join(info.label_file for info in infos)
            report.problems.append(
                f"{root / folder} holds no label pickle; expected {expected} in that folder"
            )
    if not report.datasets and not report.problems:
        expected = ", ".join(f"{d.folder}/{d.label_file}" for d in _layout_infos())
        report.problems.append(f"no dataset found under {root}; expected any of: {expected}")
    return report
