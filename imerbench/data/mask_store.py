"""Stored evaluation masks: drawn once per (dataset, fold, split, spec, mask seed), shared by
every method, exported in GCNet's `--test_mask` format, and read back from it."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from imerbench.data.corpus import MODALITIES, Corpus, SplitName
from imerbench.data.masks import MaskSpec, eval_mask, parse_mask_spec
from imerbench.data.safe_pickle import load_pickle_bytes
from imerbench.errors import ImerbenchError
from imerbench.files import atomic_write_with


def _savez(path: Path, **arrays: np.ndarray) -> None:
    """An npz written atomically: readers see the old file or the whole new one, never a part."""
    atomic_write_with(path, lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]


class MaskStore:
    """Evaluation masks drawn once per (dataset, fold, split, spec, mask seed) and reused.

    Files: `<dir>/<dataset>/fold<k>-<split>-<spec key>-seed<s>.npz` with `mask` ([n, 3] bool,
    the mask as drawn, BEFORE the AND with `corpus.present`) and `utterance_ids` (the split's
    utterances, in order). `get` returns the drawn mask ANDed with `corpus.present`, so an
    utterance without a feature file is never shown as present, while the stored file stays the
    same whatever features a user has. `MaskStore(None)` keeps masks in memory only.
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self._memory: dict[tuple[str, int, str, str, int], tuple[tuple[str, ...], np.ndarray]] = {}

    def path(self, corpus_name: str, fold: int, split: str, spec: MaskSpec, mask_seed: int) -> Path:
        if self.directory is None:
            raise ImerbenchError("this mask store keeps masks in memory only; it has no files")
        name = f"fold{int(fold)}-{split}-{spec.key}-seed{int(mask_seed)}.npz"
        return self.directory / corpus_name / name

    def get(
        self,
        corpus: Corpus,
        fold: int,
        split: SplitName,
        spec: MaskSpec,
        mask_seed: int,
    ) -> np.ndarray:
        """The split's [n, 3] bool mask, ANDed with `corpus.present` (see the class doc)."""
        spec = parse_mask_spec(spec)
        utts = corpus.split_utterances(fold, split)
        ids = tuple(corpus.utterance_ids[i] for i in utts)
        drawn = self._drawn(corpus, fold, split, spec, mask_seed, utts, ids)
        assert corpus.present is not None
        return drawn & corpus.present[utts]

    def _drawn(
        self,
        corpus: Corpus,
        fold: int,
        split: SplitName,
        spec: MaskSpec,
        mask_seed: int,
        utts: np.ndarray,
        ids: tuple[str, ...],
    ) -> np.ndarray:
        key = (corpus.name, int(fold), split, spec.key, int(mask_seed))
        cached = self._memory.get(key)
        if cached is not None and cached[0] == ids:
            return cached[1]
        path = None
        if self.directory is not None:
            path = self.path(corpus.name, fold, split, spec, mask_seed)
            if path.exists():
                mask = self._load(path, ids)
                self._memory[key] = (ids, mask)
                return mask
        groups = corpus.mask_groups(utts)
        mask = eval_mask(corpus.name, fold, split, spec, mask_seed, len(utts), groups)
        if path is not None:
            _savez(
                path,
                mask=mask,
                utterance_ids=np.array(ids, dtype=np.str_),
                spec=np.array(str(spec)),
            )
        self._memory[key] = (ids, mask)
        return mask

    @staticmethod
    def _load(path: Path, ids: tuple[str, ...]) -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as data:
                mask = np.asarray(data["mask"], dtype=bool)
                stored_ids = tuple(str(x) for x in data["utterance_ids"])
        except (OSError, ValueError, KeyError) as exc:
            raise ImerbenchError(
                f"stored mask file {path} cannot be read ({exc}); delete it to redraw"
            ) from None
        if stored_ids != ids or mask.shape != (len(ids), len(MODALITIES)):
            raise ImerbenchError(
                f"stored mask file {path} covers other utterances than this split "
                f"({len(stored_ids)} stored, {len(ids)} now); the data changed: delete the "
                "file (or use another mask directory) to redraw"
            )
        return mask


def export_gcnet_masks(
    store: MaskStore,
    corpus: Corpus,
    fold: int,
    split: SplitName,
    spec: MaskSpec,
    mask_seed: int,
    path: Path,
) -> Path:
    """Write one split's stored mask in the format GCNet's baselines read with `--test_mask`.

    GCNet's repository (the CCA/DCCA/DCCAE, CPM-Nets and MMIN baselines; the GCNet trainer itself
    has no such option) reads it as
    `np.load(path, allow_pickle=True)["name2mask"].tolist()`: an npz whose one entry
    `name2mask` is a 0-d object array holding a dict from utterance name (the ids of the label
    pickle's `videoIDs`) to a 3-list of 0/1 in the order (audio, lexical/text, video) = (a, t, v)
    (the readers reorder it to their own (A, V, L)). Written here are the masks a model sees:
    the stored draw ANDed with the features present. The file is written exactly at `path`.
    """
    mask = store.get(corpus, fold, split, spec, mask_seed)
    utts = corpus.split_utterances(fold, split)
    name2mask = {
        corpus.utterance_ids[i]: [int(x) for x in row] for i, row in zip(utts, mask, strict=True)
    }
    holder = np.empty((), dtype=object)
    holder[()] = name2mask
    path = Path(path)
    _savez(path, name2mask=holder)
    return path


def read_gcnet_mask(path: Path, corpus: Corpus, fold: int, split: SplitName) -> np.ndarray:
    """A GCNet `--test_mask` file (`export_gcnet_masks`' format, from this tool or from
    GCNet's code) as the split's mask [n, 3] (a, t, v), ANDed with the features present.
    The object array inside is read by the safe unpickler (`imerbench/data/safe_pickle.py`),
    never by `np.load(allow_pickle=True)`, so a doctored file cannot run code."""
    path = Path(path)
    fix = "pass a file written by `imerbench masks export` or GCNet's mask tools"
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read("name2mask.npy")
    except FileNotFoundError:
        raise ImerbenchError(f"test mask file {path} does not exist; check the path") from None
    except (zipfile.BadZipFile, KeyError, OSError):
        raise ImerbenchError(f"{path} is not an npz holding name2mask; {fix}") from None
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = header(stream)
    except ValueError:
        raise ImerbenchError(f"{path}: name2mask is not a numpy array; {fix}") from None
    if shape != () or dtype != np.dtype(object):
        raise ImerbenchError(f"{path}: name2mask is a {dtype} array {shape}, not a dict; {fix}")
    holder = load_pickle_bytes(raw[stream.tell() :], path, "test mask")
    name2mask = holder[()] if isinstance(holder, np.ndarray) and holder.shape == () else None
    if not isinstance(name2mask, dict):
        raise ImerbenchError(f"{path}: name2mask holds no dict of utterance masks; {fix}")
    utts = corpus.split_utterances(fold, split)
    ids = [corpus.utterance_ids[i] for i in utts]
    absent = [u for u in ids if u not in name2mask]
    if absent:
        raise ImerbenchError(
            f"{path} has no mask for {len(absent)} of the {len(ids)} utterances of "
            f"{corpus.name}'s {split} split (e.g. {absent[0]}); it was written for another "
            "dataset, fold or split"
        )
    mask = np.zeros((len(ids), len(MODALITIES)), dtype=bool)
    for row, uid in enumerate(ids):
        bits = name2mask[uid]
        if (
            not isinstance(bits, list | tuple)
            or len(bits) != 3
            or any(b not in (0, 1) for b in bits)
        ):
            raise ImerbenchError(
                f"{path}: the mask of {uid} is {bits!r}, not three 0/1 values (a, t, v); {fix}"
            )
        mask[row] = [bool(b) for b in bits]
    return mask & corpus.present[utts]
