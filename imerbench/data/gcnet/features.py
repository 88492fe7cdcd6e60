"""The feature files of a GCNet-layout dataset: listed cheaply, then parsed and checked.

Listing uses os.scandir only (names, sizes, modification times: what the cache key needs);
parsing opens every file, and refuses, with one line naming the file, what cannot be a
feature vector. The conventions are in `imerbench/data/gcnet/__init__.py`.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imerbench.data.catalog import DatasetInfo
from imerbench.data.corpus import MODALITIES
from imerbench.data.gcnet.labels import Labels
from imerbench.data.gcnet.messages import MODALITY_WORDS, first_names, short_error
from imerbench.errors import ImerbenchError

# --------------------------------------------------------------------------------------------
# Listing the feature files (cheap: names and stat only)


@dataclass
class ModalityListing:
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


def find_features_dir(dataset_dir: Path) -> Path:
    folder = dataset_dir / "features"
    if not folder.is_dir():
        raise ImerbenchError(
            f"no features/ folder in {dataset_dir}; expected features/<feature-name>/"
            "<utterance id>.npy (e.g. features/wav2vec-large-c-UTT/)"
        )
    return folder


def feature_folders(features_dir: Path) -> list[str]:
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


def list_modality(
    info: DatasetInfo, dataset_dir: Path, labels: Labels, modality: str, name: str
) -> ModalityListing:
    features_dir = find_features_dir(dataset_dir)
    folder = features_dir / name
    if not folder.is_dir():
        found = feature_folders(features_dir)
        raise ImerbenchError(
            f"{info.id}: the {MODALITY_WORDS[modality]} feature folder {folder} does not exist "
            f"(features/ holds: {', '.join(found) or 'no folders'}); add it or pass "
            f"--features {modality}=<one of those folders>"
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
            if info.faces_by_speaker:
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
    return ModalityListing(modality, name, folder, sources, stats, len(entries))


def list_modalities(
    info: DatasetInfo, dataset_dir: Path, labels: Labels, names: dict[str, str]
) -> dict[str, ModalityListing]:
    return {m: list_modality(info, dataset_dir, labels, m, names[m]) for m in MODALITIES}


_MISSING_FIX = "add the files, or pass --missing-features mark to keep them as missing"


def missing_message(info: DatasetInfo, labels: Labels, listings: Iterable[ModalityListing]) -> str:
    """One line over all modalities: how many utterances lack a file, and the first names."""
    parts = []
    for listing in listings:
        missing = listing.missing
        if missing:
            first = first_names((labels.utterance_ids[i] for i in missing), len(missing))
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
        reason = f"{type(err).__name__}: {short_error(err)}"
        raise bad(f"cannot be read as a .npy array ({reason})") from None
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
    listing: ModalityListing,
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


def parse_modality(
    info: DatasetInfo, listing: ModalityListing, problems: list[str] | None = None
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
            f"--features {listing.modality}=<folder>"
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
