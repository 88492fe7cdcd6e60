"""Datasets as plug-ins: a separate package registers a dataset with its own loader through the
entry-point group `imerbench.datasets`, and the CLI lists and runs it like a built-in one."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from tiny_corpus import tiny_corpus

from imerbench import DatasetInfo, list_datasets, load_dataset, register_dataset, resolve_dataset
from imerbench.data.catalog import discover_dataset_plugins, unregister_dataset
from imerbench.errors import ImerbenchError

PLUGIN_ID = "plugin-tiny"

# A third party's module: importing it registers a dataset whose loader generates a corpus.
PLUGIN_MODULE = """
import numpy as np

from imerbench import Corpus, DatasetInfo, Fold, register_dataset

CALLS = []


def load(info, data_root, options):
    CALLS.append((info.id, data_root, options))
    gen = np.random.default_rng(0)
    lengths = np.full(24, 5)
    n = int(lengths.sum())
    labels = gen.integers(0, 3, size=n)
    features = {
        m: (2.0 * np.eye(3)[labels] @ gen.normal(size=(3, d)) + gen.normal(size=(n, d))).astype(
            np.float32
        )
        for m, d in zip("atv", (4, 6, 5))
    }
    return Corpus(
        name=info.id,
        task=info.task,
        num_classes=info.num_classes,
        features=features,
        labels=labels.astype(np.int64),
        speakers=(np.arange(n) % 2).astype(np.int64),
        speaker_names=("F", "M"),
        utterance_ids=tuple(f"u{i}" for i in range(n)),
        dialogue_ids=tuple(f"d{i}" for i in range(24)),
        dialogue_offsets=np.concatenate([[0], np.cumsum(lengths)]),
        folds=(Fold(train=np.arange(16), val=np.arange(16, 20), test=np.arange(20, 24)),),
        pad_length=5,
    )


register_dataset(
    DatasetInfo("plugin-tiny", "tiny-generator", "classification", 3, "wa", "quick",
                aliases=("PluginTiny",)),
    loader=load,
)
"""


def _install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, body: str) -> None:
    """A fake installed distribution whose entry point names `module`."""
    package = tmp_path / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    dist = tmp_path / f"{module}-1.0.dist-info"
    dist.mkdir()
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[imerbench.datasets]\nentry = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def _forget(dataset_id: str, module: str) -> None:
    unregister_dataset(dataset_id)
    sys.modules.pop(module, None)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    _install(tmp_path / "site", monkeypatch, "tinyplug_imer", PLUGIN_MODULE)
    discover_dataset_plugins()
    yield "tinyplug_imer"
    _forget(PLUGIN_ID, "tinyplug_imer")


def test_a_plugin_dataset_is_listed_and_loaded_by_its_loader(plugin: str) -> None:
    assert PLUGIN_ID in [d.id for d in list_datasets()]
    info = resolve_dataset("plugintiny")  # aliases work as for the built-in datasets
    assert info.id == PLUGIN_ID and info.source == "tiny-generator" and not info.synthetic
    corpus = load_dataset(PLUGIN_ID, feature_names={"a": "mine"})
    assert corpus.name == PLUGIN_ID and corpus.num_utterances == 120
    (dataset_id, data_root, options) = sys.modules[plugin].CALLS[-1]
    assert (dataset_id, data_root) == (PLUGIN_ID, None)
    assert options.feature_names == {"a": "mine"} and options.missing_features == "refuse"


def test_the_cli_lists_and_runs_a_plugin_dataset(
    run_cli, plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per dataset
    code, stdout, _ = run_cli("list")
    assert code == 0
    line = next(line for line in stdout.splitlines() if PLUGIN_ID in line)
    assert "classification" in line and "plug-in loader (tiny-generator)" in line

    out = tmp_path / "run"
    code, stdout, err = run_cli("run", "--datasets", PLUGIN_ID, "--methods", "early-fusion",
        "--missing-rates", "0.5", "--seeds", "0", "--epochs", "1", "--jobs", "1",
        "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "1 cells ran, 0 failed" in stdout
    df = pd.read_csv(out / "results.csv")
    assert set(df["dataset"]) == {PLUGIN_ID} and set(df["status"]) == {"ok"}
    assert len(df) > 0 and df["value"].notna().all()
    assert list(out.glob(f"cells/{PLUGIN_ID}/early-fusion/*/rows.csv"))


def test_a_broken_plugin_warns_and_the_built_in_datasets_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(tmp_path, monkeypatch, "brokenplug_imer", "raise RuntimeError('no data here')\n")
    try:
        with pytest.warns(UserWarning, match="could not load dataset plug-in 'entry'"):
            discover_dataset_plugins()
        ids = [d.id for d in list_datasets()]
        assert {"iemocap4", "mosi", "synthetic"} <= set(ids)
    finally:
        _forget("", "brokenplug_imer")


def test_registering_an_id_twice_warns_and_keeps_the_newer() -> None:
    first = DatasetInfo("twice-registered", "gcnet", "regression", 1, "f1", "mosi",
                        folder="TWICE", label_file="twice.pkl")  # fmt: skip
    second = DatasetInfo("twice-registered", "gcnet", "regression", 1, "f1", "mosi",
                         folder="TWICE", label_file="twice-2.pkl")  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            register_dataset(first)
        with pytest.warns(UserWarning, match="dataset 'twice-registered' registered twice"):
            register_dataset(second)
        assert resolve_dataset("twice-registered").label_file == "twice-2.pkl"
        # A GCNet-layout entry needs no loader: the built-in reader reads it from a data root.
        with pytest.raises(ImerbenchError, match="pass --data-root DIR, the folder that holds"):
            load_dataset("twice-registered")
    finally:
        _forget("twice-registered", "")


@pytest.mark.parametrize(
    ("info", "match"),
    [
        (DatasetInfo("own-kind", "own", "classification", 3, "wa", "quick"), "with a loader"),
        (DatasetInfo("Bad_Id", "synthetic", "classification", 3, "wa", "quick"), "lower-case"),
        (DatasetInfo("no-folder", "gcnet", "classification", 3, "wa", "quick"), "label_file"),
        (DatasetInfo("regr", "own", "regression", 3, "f1", "quick"), "num_classes 1"),
        (
            DatasetInfo("taken", "synthetic", "regression", 1, "f1", "quick", ("CMUMOSI",)),
            "taken by 'mosi'",
        ),
    ],
)
def test_an_unusable_entry_is_refused(info: DatasetInfo, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        register_dataset(info, loader=(lambda *a: None) if info.id == "regr" else None)
    assert info.id not in [d.id for d in list_datasets()]


def test_a_loader_returning_another_dataset_is_one_clear_error() -> None:
    register_dataset(
        DatasetInfo("wrong-corpus", "own", "classification", 3, "wa", "quick"),
        loader=lambda info, root, options: tiny_corpus(name="tiny"),
    )
    try:
        with pytest.raises(ImerbenchError) as err:
            load_dataset("wrong-corpus")
        message = str(err.value)
        assert "\n" not in message and "corpus 'tiny'" in message and "plug-in" in message
    finally:
        _forget("wrong-corpus", "")


def test_a_plugin_primary_metric_outside_its_task_is_one_line(one_error_line) -> None:
    register_dataset(
        DatasetInfo("typo-metric", "own", "classification", 3, "acc", "quick"),
        loader=lambda info, root, options: tiny_corpus(name="typo-metric"),
    )
    try:
        line = one_error_line("run", "--datasets", "typo-metric", "--dry-run")
        assert "dataset 'typo-metric': primary_metric 'acc' is not a classification metric" in line
        assert "use one of wa, ua, wf1" in line
    finally:
        _forget("typo-metric", "")
