"""The parsed-feature cache: a dataset's features parsed once, kept as one .npz file.

An entry is keyed on the dataset, its label pickle, the feature folder names and every used
file's name, size and modification time, so any change to the files parses them again. Only
a corpus that passed every check is stored: an entry means valid data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from imerbench.data.catalog import DatasetInfo
from imerbench.data.corpus import MODALITIES
from imerbench.data.gcnet.features import ModalityListing
from imerbench.data.gcnet.labels import Labels
from imerbench.files import atomic_write_with, cache_dir

_CACHE_VERSION = "imerbench-gcnet-cache-v1"


def feature_cache_dir() -> Path:
    """Where parsed features are kept: $IMERBENCH_CACHE/gcnet (default ~/.cache/imerbench)."""
    return cache_dir() / "gcnet"


def cache_key(info: DatasetInfo, labels: Labels, listings: Mapping[str, ModalityListing]) -> str:
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


def cache_file(info: DatasetInfo, key: str) -> Path:
    return feature_cache_dir() / f"{info.id}-{key[:40]}.npz"


def cache_load(path: Path, n: int) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
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


def cache_store(path: Path, features: Mapping[str, np.ndarray], present: np.ndarray) -> bool:
    """Written atomically, so a reader never sees half a cache file; False when the cache
    folder refuses the write (the features are then parsed again next time)."""
    arrays = {f"features_{m}": features[m] for m in MODALITIES}
    try:
        atomic_write_with(path, lambda fh: np.savez(fh, present=present, **arrays))
    except OSError:
        return False
    return True
