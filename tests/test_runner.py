"""The runner's promises: tidy rows, resumable grids, failures recorded, nothing torn."""

from __future__ import annotations

import os
import random
import signal
import stat
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from processes import (
    KEY,
    TOKEN_VAR,
    claimed_since,
    claims_under,
    cli,
    processes_with_token,
    wait_for_no_orphans,
)

from imerbench import compute
from imerbench.files import _new_file_mode, atomic_write
from imerbench.method import Method
from imerbench.registry import register_method, unregister_method
from imerbench.results import (
    COLUMNS,
    ResultStore,
    read_results,
)
from imerbench.runner import RunOptions, run_grid


def test_rows_are_tidy_and_a_rerun_skips_finished_cells(small_grid, tmp_path: Path) -> None:
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
    unregister_method("test-nan")


def _registry_model(spec):
    from imerbench.methods.fusion import EarlyFusionNet

    return EarlyFusionNet(spec, 8, 0.0)


def test_failed_cell_is_recorded_and_the_grid_goes_on(
    small_grid, tmp_path: Path, nan_method: str
) -> None:
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


def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    """20 runs killed with SIGKILL: one during a held rows write, the others at random
    moments (from the start, or once a cell is claimed), some with two pool workers. Then
    no orphan runs, the resume runs exactly the unfinished cells, and nothing is torn or
    doubled."""
    out = tmp_path / "run"
    CELLS = 8  # 4 missing rates x 2 seeds, in stacks of 2
    token = f"kill-{os.getpid()}-{time.time_ns()}"
    args = [
        "run",
        "--methods",
        "early-fusion",
        "--missing-rates",
        "0.0,0.3,0.5,0.7",
        "--seeds",
        "0,1",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-save-weights",
        "--stack",
        "2",
    ]  # fmt: skip  (stacks of 2 cells)
    base_env = {TOKEN_VAR: token, "COLUMNS": "250"}
    gen = random.Random(7)
    torn_write_seen = False
    killed_in_cell = 0  # kills that landed while the run held a cell's claim
    killed_workers: set[int] = set()  # pool workers alive at the moment of a kill
    finished: list[int] = []  # cells done after each trial
    startup = {"1": 5.0, "2": 8.0}  # seconds to the first claim, per --jobs, as measured
    for trial in range(20):
        jobs = "2" if trial % 3 == 1 else "1"
        # Every write is held open a while, so kills land in writes more often and a cell
        # (about 2 s then) outlasts the random delays below: the grid advances only where
        # a trial waits for a cell to finish, and is not done long before the last trial.
        pause = "1.0" if trial == 0 else "0.6"
        env = base_env | {"IMERBENCH_TEST_PAUSE_WRITE": pause}
        started = time.time()
        proc = cli(*args, "--jobs", jobs, env=env)
        deadline = time.monotonic() + 60
        if trial == 0:  # kill while a cell's rows file is half written (held by the hook)
            half_written = "cells/*/*/*/.rows.csv.*.tmp"
            while time.monotonic() < deadline and not list(out.glob(half_written)):
                time.sleep(0.02)
            torn_write_seen = bool(list(out.glob(half_written)))
        elif trial % 2 == 1:  # a random moment in its 1st cell, or its 2nd (one finished)
            # claims come a stack (2 cells) at a time: a 3rd claim means a stack finished
            cells_to_start = 3 if trial % 6 == 5 else 1
            seen: set[Path] = set()
            while time.monotonic() < deadline and proc.poll() is None:
                seen |= claimed_since(out, started)
                if len(seen) >= cells_to_start:
                    break
                time.sleep(0.02)
            if cells_to_start == 1 and seen:
                startup[jobs] = time.time() - started
            time.sleep(gen.uniform(0.0, 1.5))
        else:  # a random moment from the start: imports, data, pool start-up, first cell
            time.sleep(gen.uniform(0.3, 1.3) * startup[jobs])
        workers = {p for p, cmd in processes_with_token(token).items() if "spawn_main" in cmd}
        if claimed_since(out, started) and proc.poll() is None:
            killed_in_cell += 1
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if jobs == "2":
            killed_workers |= workers
        finished.append(len(list(out.glob("cells/*/*/*/rows.csv"))))
    assert torn_write_seen
    assert killed_in_cell >= 3, (killed_in_cell, finished)
    assert 1 <= finished[-1] <= CELLS - 1, finished  # the trials advanced; the resume has work
    assert killed_workers, "no kill landed while pool workers were running"
    orphans = wait_for_no_orphans(token)
    assert not orphans, f"processes of killed runs still alive: {orphans}"

    done_before = len(list(out.glob("cells/*/*/*/rows.csv")))
    missing = CELLS - done_before
    resume = cli(*args, "--jobs", "1", env=base_env)
    log, _ = resume.communicate(timeout=300)
    assert resume.returncode == 0, log
    assert f"{missing} cells ran, 0 failed, {done_before} already done;" in log, log
    assert "running in another process" not in log
    df = pd.read_csv(out / "results.csv")
    cell_rows = sum(len(pd.read_csv(p)) for p in out.glob("cells/*/*/*/rows.csv"))
    assert len(df) == cell_rows  # results.csv is exactly the union of the cell files
    assert not df.duplicated(KEY).any()
    assert len(df.groupby(["method", "missing_rate", "seed"])) == CELLS
    assert df.groupby(["method", "missing_rate", "seed"])["config_hash"].nunique().eq(1).all()
    assert set(df["status"]) == {"ok"}
    assert df["value"].notna().all() and df["metric"].notna().all()
    third = cli(*args, env=base_env)
    log, _ = third.communicate(timeout=300)
    assert third.returncode == 0, log
    assert f"0 cells ran, 0 failed, {CELLS} already done;" in log, log
    assert pd.read_csv(out / "results.csv").equals(df)
    assert not claims_under(out)  # released, or dropped as stale once the cell was done
    assert not list(out.glob("cells/**/*.tmp")) and not list(out.glob(".*.tmp"))
    assert not wait_for_no_orphans(token, timeout=5.0)


def test_saved_weights_rescore_to_the_recorded_rows(small_grid, tmp_path: Path) -> None:
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


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="file modes are POSIX")
def test_result_files_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    """Written through a private temporary file, results still get the usual mode."""
    old = os.umask(0o027)
    try:
        _new_file_mode.cache_clear()
        atomic_write(tmp_path / "results.csv", "a,b\n")
        mode = stat.S_IMODE((tmp_path / "results.csv").stat().st_mode)
    finally:
        os.umask(old)
        _new_file_mode.cache_clear()
    assert mode == 0o640


def test_paper_protocol_selects_on_each_methods_published_metric(
    small_grid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GCNet's released code keeps its best weighted-F1 epoch: so does its paper-protocol
    test-oracle; early fusion (no published selection) keeps the primary metric's best; the
    default protocol ranks every method by the primary metric."""
    ranked_by: dict[tuple[str, str], str] = {}
    train_stack = compute.train_stack

    def spy(method: Method, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        ranked_by[(protocol, method.name)] = str(kwargs["primary"])
        return train_stack(method, *args, **kwargs)

    monkeypatch.setattr(compute, "train_stack", spy)
    methods = ["gcnet", "early-fusion"]
    for protocol in ("paper", "default"):
        out = tmp_path / protocol
        grid = small_grid(methods=methods, missing_rates=[0.5], epochs=4, protocol=protocol)
        run_grid(grid, RunOptions(out=out, device="cpu"))
        df = read_results(out)
        oracle = df[(df["selection"] == "test-oracle") & (df["condition"] == "mask")]
        expected = {"gcnet": "wf1" if protocol == "paper" else "wa", "early-fusion": "wa"}
        for method, metric in expected.items():
            assert ranked_by[(protocol, method)] == metric
            rows = oracle[oracle["method"] == method]
            assert set(rows["selected_on"]) == {metric}
            (curves,) = (out / "cells" / "synthetic" / method).glob("*/curves.csv")
            test = pd.read_csv(curves).query(
                "split == 'test' and condition == 'mask' and output == 'fused'"
            )
            scores = test[test["metric"] == metric].set_index("epoch")["value"]
            assert set(rows["epoch"]) == {scores.idxmax()}  # the first best epoch


@pytest.mark.parametrize("jobs", [1, 2])
def test_each_epoch_of_each_cell_reaches_the_caller(small_grid, tmp_path, jobs: int) -> None:  # type: ignore[no-untyped-def]
    """What the terminal's bar advances with: every cell's epochs, in order, with their cap,
    from this process or from the pool's workers."""
    from collections import defaultdict

    from imerbench.runner import RunOptions, run_grid

    grid = small_grid(methods=["late-fusion", "mmin"], missing_rates=[0.5], epochs=3)
    epochs: dict[object, list[tuple[int, int]]] = defaultdict(list)
    ended: list[object] = []
    options = RunOptions(out=tmp_path, device="cpu", jobs=jobs)

    def on_epoch(cell, epoch, cap, rows) -> None:  # type: ignore[no-untyped-def]
        assert cell not in ended  # a cell's epochs come before its end
        assert rows and {r[0] for r in rows} == {epoch}  # that epoch's curve rows
        epochs[cell].append((epoch, cap))

    run_grid(grid, options, lambda report: ended.append(report.cell), on_epoch)
    assert set(epochs) == set(ended) and len(ended) == 2
    for cell, seen in epochs.items():
        trained = [e for e, _ in seen]
        assert trained == list(range(1, len(trained) + 1)) and len(trained) >= 2, cell
        assert {cap for _, cap in seen} == {3}
