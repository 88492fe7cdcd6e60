"""The runner's promises: tidy rows, resumable grids, failures recorded, nothing torn."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from imerbench.grid import grid_from_dict
from imerbench.method import Method
from imerbench.registry import _REGISTRY, register_method
from imerbench.results import COLUMNS, ResultStore, read_results
from imerbench.runner import RunOptions, run_grid

KEY = ["method", "dataset", "fold", "missing_rate", "seed", "selection", "condition", "output",
       "metric"]  # fmt: skip


def small_grid(**extra: object):
    raw = {"name": "t", "methods": ["early-fusion", "unimodal-t"], "datasets": ["synthetic"],
           "missing_rates": [0.0, 0.5], "seeds": [0], "epochs": 1}  # fmt: skip
    raw.update(extra)
    return grid_from_dict(raw, "test")


def test_rows_are_tidy_and_a_rerun_skips_finished_cells(tmp_path: Path) -> None:
    reports = []
    store = run_grid(small_grid(), RunOptions(out=tmp_path, device="cpu"), reports.append)
    df = pd.read_csv(store.merged_path)
    assert list(df.columns) == list(COLUMNS)
    assert [r.status for r in reports] == ["ok"] * 4
    assert set(df["status"]) == {"ok"}
    assert not df.duplicated(KEY).any()
    assert set(df["selection"]) == {"val", "test-oracle"}
    assert set(df["metric"]) == {"wa", "ua", "wf1"}
    # Each cell's rows share one config hash; different cells have different ones.
    assert df.groupby(["method", "missing_rate"])["config_hash"].nunique().eq(1).all()
    assert df["config_hash"].nunique() == 4
    assert (df.loc[df["missing_rate"] == 0.5, "realized_missing_rate"].between(0.45, 0.55)).all()
    assert (df.loc[df["missing_rate"] == 0.0, "realized_missing_rate"] == 0).all()
    # The merged view equals the union of the cell files.
    assert len(df) == len(ResultStore(tmp_path).read())
    again = []
    run_grid(small_grid(), RunOptions(out=tmp_path, device="cpu"), again.append)
    assert [r.status for r in again] == ["skipped"] * 4
    # A changed configuration is a different cell, not a skipped one.
    changed = []
    run_grid(small_grid(epochs=2, methods=["unimodal-t"], missing_rates=[0.0]),
             RunOptions(out=tmp_path, device="cpu"), changed.append)  # fmt: skip
    assert [r.status for r in changed] == ["ok"]


@pytest.fixture
def nan_method():
    @register_method("test-nan")
    class NanMethod(Method):
        """A method whose loss turns NaN in its first epoch."""

        def build(self, spec):
            return _registry_model(spec)

        def loss(self, model, out, batch, stage):
            return out.fused.sum() * torch.tensor(float("nan"))

    yield "test-nan"
    del _REGISTRY["test-nan"]


def _registry_model(spec):
    from imerbench.methods.fusion import EarlyFusionNet

    return EarlyFusionNet(spec, 8, 0.0)


def test_failed_cell_is_recorded_and_the_grid_goes_on(tmp_path: Path, nan_method: str) -> None:
    grid = small_grid(methods=[nan_method, "early-fusion"], missing_rates=[0.3])
    reports = []
    run_grid(grid, RunOptions(out=tmp_path, device="cpu"), reports.append)
    assert [r.status for r in reports] == ["failed", "ok"]
    df = read_results(tmp_path)
    failed = df[df["method"] == nan_method]
    assert len(failed) == 1
    assert failed["status"].iloc[0] == "failed"
    assert "nan" in failed["error"].iloc[0].lower()
    assert set(df.loc[df["method"] == "early-fusion", "status"]) == {"ok"}
    # Failed cells are skipped on resume unless asked to retry.
    skipped, retried = [], []
    run_grid(grid, RunOptions(out=tmp_path, device="cpu"), skipped.append)
    assert [r.status for r in skipped] == ["skipped", "skipped"]
    run_grid(grid, RunOptions(out=tmp_path, device="cpu", retry_failed=True), retried.append)
    assert [r.status for r in retried] == ["skipped", "failed"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from imerbench.cli import main; main()", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "--methods", "early-fusion,late-fusion", "--missing-rates", "0.0,0.3,0.7",
            "--seeds", "0", "--epochs", "1", "--device", "cpu", "--out", str(out),
            "--no-save-weights"]  # fmt: skip
    paused = {"IMERBENCH_TEST_PAUSE_WRITE": "1.0"}
    gen = random.Random(7)
    torn_write_seen = False
    for trial in range(4):
        proc = cli(*args, env=paused)
        if trial == 0:  # kill while a cell's rows file is half written (held by the hook)
            deadline = time.time() + 60
            while time.time() < deadline and not list(out.glob("cells/*/*/*/.rows.csv.*.tmp")):
                time.sleep(0.02)
            torn_write_seen = bool(list(out.glob("cells/*/*/*/.rows.csv.*.tmp")))
        else:
            time.sleep(gen.uniform(3.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert torn_write_seen
    done = cli(*args)
    log, _ = done.communicate(timeout=300)
    assert done.returncode == 0, log
    df = pd.read_csv(out / "results.csv")
    assert not df.duplicated(KEY).any()
    assert len(df.groupby(["method", "missing_rate"])) == 6
    assert set(df["status"]) == {"ok"}
    assert df["value"].notna().all()
    third = cli(*args)
    log, _ = third.communicate(timeout=300)
    assert third.returncode == 0
    assert "0 cells ran" in log and "6 already done" in log
    assert pd.read_csv(out / "results.csv").equals(df)


def test_saved_weights_rescore_to_the_recorded_rows(tmp_path: Path) -> None:
    from imerbench.rescore import rescore_cell

    grid = small_grid(methods=["late-fusion"], missing_rates=[0.5], epochs=2)
    run_grid(grid, RunOptions(out=tmp_path, device="cpu"))
    cell = next(tmp_path.glob("cells/synthetic/late-fusion/*"))
    rows = pd.read_csv(cell / "rows.csv")
    scores = rescore_cell(cell, "val")
    checked = 0
    for r in rows[rows["selection"] == "val"].itertuples():
        assert scores[r.condition][r.output][r.metric] == pytest.approx(r.value, abs=1e-9)
        checked += 1
    assert checked == len(rows[rows["selection"] == "val"]) > 100


def test_nan_scores_read_back_as_numbers(tmp_path: Path) -> None:
    from imerbench.results import read_rows, rows_to_csv

    path = tmp_path / "rows.csv"
    path.write_text(rows_to_csv([{"value": float("nan"), "mask": "0.3"}, {"value": 0.5}]))
    values = read_rows(path)["value"]
    assert values.dtype == float and values.isna().tolist() == [True, False]
