"""Checking a data root: what each GCNet-layout dataset under it holds, and what is wrong.

`check_data_root` never stops at the first problem inside a dataset: it reports them all,
each one line naming its file (what `imerbench data check` prints).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imerbench.data.catalog import GCNET, DatasetInfo, list_datasets
from imerbench.data.corpus import MODALITIES
from imerbench.data.feature_names import resolve_feature_names
from imerbench.data.gcnet.cache import cache_file, cache_key, cache_load, cache_store
from imerbench.data.gcnet.features import (
    ModalityListing,
    feature_folders,
    find_features_dir,
    list_modality,
    missing_message,
    parse_modality,
)
from imerbench.data.gcnet.labels import Labels, parse_labels
from imerbench.data.gcnet.messages import FIRST, MODALITY_WORDS
from imerbench.errors import ImerbenchError


def _layout_infos() -> list[DatasetInfo]:
    return [d for d in list_datasets() if d.source == GCNET]


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
    if len(problems) <= FIRST:
        return problems
    rest = len(problems) - FIRST
    return [*problems[:FIRST], f"... and {rest} more bad {word} feature files"]


def _check_dataset(
    info: DatasetInfo,
    dataset_dir: Path,
    label_path: Path,
    names: dict[str, str],
    use_cache: bool,
) -> DatasetReport:
    report = DatasetReport(dataset=info.id, label_file=str(label_path))
    try:
        labels = parse_labels(info, label_path)
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
        class_names = info.class_names or tuple(map(str, range(info.num_classes)))
        report.label_counts = {class_names[k]: int(c) for k, c in enumerate(counts)}
    else:
        report.label_counts = {
            "negative": int((labels.labels < 0).sum()),
            "zero": int((labels.labels == 0).sum()),
            "positive": int((labels.labels > 0).sum()),
        }
    try:
        features_dir = find_features_dir(dataset_dir)
    except ImerbenchError as err:
        report.problems.append(str(err))
        return report
    listings: dict[str, ModalityListing] = {}
    for m in MODALITIES:
        folder = features_dir / names[m]
        try:
            listing = list_modality(info, dataset_dir, labels, m, names[m])
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
                first_missing=tuple(labels.utterance_ids[i] for i in missing[:FIRST]),
            )
        )
    used = set(names.values())
    for other in feature_folders(features_dir):
        if other not in used:
            with os.scandir(features_dir / other) as it:
                report.other_feature_folders[other] = sum(1 for _ in it)
    message = missing_message(info, labels, listings.values())
    if message:
        report.problems.append(message)
    _check_features(info, labels, listings, report, use_cache)
    return report


def _check_features(
    info: DatasetInfo,
    labels: Labels,
    listings: dict[str, ModalityListing],
    report: DatasetReport,
    use_cache: bool,
) -> None:
    by_modality = {f.modality: f for f in report.features}
    n = len(labels.utterance_ids)
    path = None
    if use_cache and len(listings) == len(MODALITIES):
        path = cache_file(info, cache_key(info, labels, listings))
        cached = cache_load(path, n)
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
            matrix, present = parse_modality(info, listing, problems)
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
        cache_store(path, parsed, np.stack(columns, axis=1))


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
