"""The speed benchmark's own arithmetic: the MOSEI-sized labels it draws and the paper-grid
extrapolation (the timings themselves are the benchmark's output, not a test's)."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from imerbench.data.safe_pickle import load_label_pickle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def speed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("speed", ROOT / "benchmarks" / "speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mosei_sized_labels_have_mosei_numbers(speed: ModuleType, tmp_path: Path) -> None:
    """3,228 videos and 22,856 utterances (docs/protocol.md, section 1), split about
    16,326 / 1,871 / 4,659 utterances, in the 7-item layout the safe reader accepts."""
    speed.write_mosei_like(tmp_path / "labels.pkl")
    ids, labels, speakers, sentences, train, val, test = load_label_pickle(tmp_path / "labels.pkl")
    assert len(ids) == 3228
    assert sum(len(u) for u in ids.values()) == 22856
    assert train | val | test == set(ids) and not (train & val or train & test or val & test)
    for split, expected in ((train, 16326), (val, 1871), (test, 4659)):
        got = sum(len(ids[v]) for v in split)
        assert abs(got - expected) <= 150, (got, expected)  # one long video at most
    for vid, utterances in ids.items():
        assert 1 <= len(utterances) <= 150  # MOSEI's padded length
        assert len(labels[vid]) == len(speakers[vid]) == len(sentences[vid]) == len(utterances)
        assert all(-3 <= x <= 3 for x in labels[vid])


def test_extrapolation_adds_up_each_cell(speed: ModuleType, tmp_path: Path) -> None:
    # A MOSI-layout pickle of 10 videos x 5 utterances; MOSEI is then x max(322.8, 457.12).
    ids = {f"v{k}": [f"v{k}_{j}" for j in range(5)] for k in range(10)}
    floats = {v: [0.5] * 5 for v in ids}
    items = [ids, floats, {v: [""] * 5 for v in ids}, {v: np.array(["s"] * 5) for v in ids}]
    items += [set(list(ids)[:6]), set(list(ids)[6:7]), set(list(ids)[7:])]
    (tmp_path / "CMUMOSI_features_raw_2way.pkl").write_bytes(pickle.dumps(items, protocol=4))
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'methods = ["early-fusion", "late-fusion"]\ndatasets = ["mosi", "mosei"]\n'
        "missing_rates = [0.0, 0.5]\nseeds = [0, 1, 2]\nepochs = 7\n"
    )
    concurrency = {"jobs": 4, "speedup": 2.0}
    records = [
        {"shape": "mosi", "device": "d", "epoch_seconds": {"early-fusion": 0.5}},
        {"shape": "mosi", "device": "d", "epoch_seconds": {}, "concurrency": concurrency},
    ]
    got = speed.extrapolate(records, grid, tmp_path)
    cells = 2 * 3  # missing rates x seeds; late-fusion was not measured: left out
    assert got["mosi"] == pytest.approx(cells * 0.5 * 7 / 2.0)
    assert got["mosei"] == pytest.approx(cells * 0.5 * 7 * (22856 / 50) / 2.0)
    # Concurrency that lost is not used: one cell at a time instead.
    concurrency["speedup"] = 0.5
    got = speed.extrapolate(records, grid, tmp_path)
    assert got["mosi"] == pytest.approx(cells * 0.5 * 7)
    # Measured on MOSEI's own shape: used as it is, with that shape's concurrency (none).
    records.append({"shape": "mosei", "device": "d", "epoch_seconds": {"early-fusion": 3.0}})
    got = speed.extrapolate(records, grid, tmp_path)
    assert got["mosei"] == pytest.approx(cells * 3.0 * 7)
    # A stacked speed-up counts for the method it was measured on, where it beats concurrency.
    stacked = {"method": "early-fusion", "size": 8, "speedup": 5.0}
    records.append({"shape": "mosi", "device": "d", "epoch_seconds": {}, "stacking": stacked})
    records[1]["concurrency"] = {"jobs": 4, "speedup": 2.0}
    got = speed.extrapolate(records, grid, tmp_path)
    assert got["mosi"] == pytest.approx(cells * 0.5 * 7 / 5.0)
    stacked["method"] = "late-fusion"  # another method's stacks say nothing of early-fusion
    got = speed.extrapolate(records, grid, tmp_path)
    assert got["mosi"] == pytest.approx(cells * 0.5 * 7 / 2.0)
