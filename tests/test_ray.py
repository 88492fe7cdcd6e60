"""The Ray executor: cells as Ray tasks, one writer, a killed worker retried and counted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from processes import KEY

from imerbench.results import COLUMNS
from imerbench.runner import RunOptions, run_grid


@pytest.mark.slow
def test_ray_retries_a_killed_cell_and_writes_every_cell_once(
    small_grid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")
    from imerbench.ray_executor import KILL_CELL_ENV, RAY_MAX_RETRIES

    grid = small_grid()
    victim = next(c for c in grid.cells() if c.method.label == "unimodal-t" and c.mask.rate)
    # Set before Ray starts: the workers inherit the environment of the process that starts it.
    monkeypatch.setenv(KILL_CELL_ENV, victim.describe())
    options = RunOptions(out=tmp_path, device="cpu", executor="ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        reports = []
        run_grid(grid, options, reports.append)
        assert sorted(r.status for r in reports) == ["ok"] * 4
        assert list(tmp_path.glob(".test-killed-*")), "the victim's first attempt never ran"
        assert RAY_MAX_RETRIES >= 1

        df = pd.read_csv(tmp_path / "results.csv")
        assert list(df.columns) == list(COLUMNS)
        assert set(df["status"]) == {"ok"} and df["value"].notna().all()
        # Every cell exactly once: one folder per cell, no row twice.
        assert len(list(tmp_path.glob("cells/*/*/*/rows.csv"))) == 4
        assert df.groupby(["method", "missing_rate"])["config_hash"].nunique().eq(1).all()
        assert len(df.groupby(["method", "missing_rate"])) == 4
        assert not df.duplicated(KEY).any()
        killed = (df["method"] == "unimodal-t") & (df["missing_rate"] == victim.mask.rate)
        assert killed.sum() > 0
        # Its stack (both unimodal-t cells: they differ only in missing rate) was retried.
        in_stack = df["method"] == "unimodal-t"
        assert (df.loc[killed | in_stack, "attempts"] == 2).all()
        assert (df.loc[~in_stack, "attempts"] == 1).all()
        stack_sizes = {json.loads(p.read_text())["stack_size"]
                       for p in tmp_path.glob("cells/*/unimodal-t/*/cell.json")}  # fmt: skip
        assert stack_sizes == {2}
        # The driver wrote each folder whole: log, curves, config and weights beside the rows.
        for rows in tmp_path.glob("cells/*/*/*/rows.csv"):
            names = {p.name for p in rows.parent.iterdir()}
            assert {"log.txt", "curves.csv", "cell.json", "weights-val.pt"} <= names
            assert "epoch 1/1" in (rows.parent / "log.txt").read_text()
        assert not list(tmp_path.glob("cells/*/*/*/*.tmp"))

        again = []
        run_grid(grid, options, again.append)
        assert [r.status for r in again] == ["skipped"] * 4
        assert pd.read_csv(tmp_path / "results.csv").equals(df)
    finally:
        ray.shutdown()


def test_ray_executor_without_ray_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from imerbench.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    monkeypatch.setattr(sys, "argv", ["imerbench", "run", "--executor", "ray", "--methods",
                                      "early-fusion", "--out", str(tmp_path)])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "pip install 'imerbench[ray]'" in err[0]
    assert not list(tmp_path.glob("cells/*"))
