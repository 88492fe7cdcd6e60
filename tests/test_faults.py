"""Faults injected for real: concurrent runs on one folder, stale and torn claims, a full or
read-only disk, out of memory and non-finite losses, and reruns that must match."""

from __future__ import annotations

import builtins
import errno
import io
import json
import multiprocessing
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from processes import KEY, TOKEN_VAR, claims_under, cli, wait_for_no_orphans

from imerbench import claims, files
from imerbench.claims import Claim, _process_start, claim_cell, release_claim
from imerbench.compute import CellReport
from imerbench.errors import ImerbenchError
from imerbench.grid import Grid
from imerbench.grid_file import grid_from_dict
from imerbench.leaderboard import leaderboards, render
from imerbench.method import Method, Param
from imerbench.plan import RunOptions, config_hash, plan_cell
from imerbench.registry import register_method, unregister_method
from imerbench.results import COLUMNS, ResultStore, read_results
from imerbench.runner import run_grid

HOST = socket.gethostname()


def read_claim(cell: Path) -> dict[str, Any]:
    return json.loads((cell / "claim").read_text())


def leftovers(out: Path) -> list[Path]:
    """Temporary files that a reader could trip over (masks keep their own)."""
    return sorted([*out.glob("cells/**/*.tmp"), *out.glob("cells/**/.*.tmp"), *out.glob(".*.tmp")])


# ---- claims ---------------------------------------------------------------------------------


def test_claim_rules_live_dead_reused_remote_and_torn(tmp_path: Path) -> None:
    cell = tmp_path / "cell"
    cell.mkdir()
    path = cell / "claim"
    assert claim_cell(cell) is None  # free: this process holds it now
    mine = read_claim(cell)
    assert (mine["pid"], mine["host"]) == (os.getpid(), HOST) and mine["started"]
    held = claim_cell(cell)  # held by this very process: never run twice
    assert held is not None and held.pid == os.getpid()
    release_claim(cell)
    assert not path.exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    path.write_text(Claim(dead.pid, HOST, "then", "1").to_text())
    assert claim_cell(cell) is None  # its process is gone: stale, taken over
    assert read_claim(cell)["pid"] == os.getpid()
    release_claim(cell)

    live = subprocess.Popen(["sleep", "60"])
    try:
        path.write_text(Claim(live.pid, HOST, "now", _process_start(live.pid)).to_text())
        holder = claim_cell(cell)
        assert holder is not None and holder.describe() == f"pid {live.pid}"
        release_claim(cell)  # never removes another process's claim
        assert read_claim(cell)["pid"] == live.pid
        # The same pid with another start time is a later process reusing the pid.
        path.write_text(Claim(live.pid, HOST, "then", "1").to_text())
        assert claim_cell(cell) is None
        release_claim(cell)
    finally:
        live.kill()
        live.wait(timeout=30)

    path.write_text(Claim(1, "elsewhere", "now", "").to_text())
    holder = claim_cell(cell)  # another host's process cannot be checked: left alone
    assert holder is not None and holder.describe() == "pid 1 on elsewhere"

    path.write_text("")  # created, content not yet written (or its writer was killed)
    holder = claim_cell(cell)
    assert holder is not None and holder.describe() == "pid unknown"
    old = time.time() - 2 * claims.TORN_CLAIM_AGE_S
    os.utime(path, (old, old))
    assert claim_cell(cell) is None  # torn long ago: stale
    release_claim(cell)

    # Left by this process itself (a removal that failed): stale, not "held".
    path.write_text(Claim.mine().to_text())
    assert claim_cell(cell) is None
    release_claim(cell)
    assert not path.exists()


def _race(cell: str, tried: Any, outcome: Any) -> None:
    tried.wait(timeout=60)
    won = claim_cell(Path(cell)) is None
    outcome.put(won)
    tried.wait(timeout=60)  # hold the claim until every racer has tried


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_one_of_many_racing_processes_wins_a_claim(tmp_path: Path, stale: bool) -> None:
    """Racers released together on a free cell (O_EXCL) or on a dead process's claim (the
    locked re-check): exactly one wins, every round."""
    context = multiprocessing.get_context("fork")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    for round_ in range(6):
        cell = tmp_path / f"cell{round_}"
        cell.mkdir()
        if stale:
            (cell / "claim").write_text(Claim(dead.pid, HOST, "then", "1").to_text())
        racers = 4
        tried = context.Barrier(racers)
        outcome = context.Queue()
        procs = [
            context.Process(target=_race, args=(str(cell), tried, outcome)) for _ in range(racers)
        ]
        for proc in procs:
            proc.start()
        won = [outcome.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
        assert sum(won) == 1, (round_, won)


def first_cell_folder(grid: Grid, out: Path) -> Path:
    return plan_cell(grid.cells()[0], grid, ResultStore(out)).folder


def test_a_cell_claimed_by_a_live_process_is_left_to_it(small_grid, tmp_path: Path) -> None:
    grid = small_grid(methods=["early-fusion"], missing_rates=[0.0, 0.5])
    folder = first_cell_folder(grid, tmp_path)
    folder.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "120"])
    try:
        claim = Claim(other.pid, HOST, "now", _process_start(other.pid))
        (folder / "claim").write_text(claim.to_text())
        reports: list[CellReport] = []
        run_grid(grid, RunOptions(out=tmp_path, device="cpu"), reports.append)
        assert [r.status for r in reports] == ["claimed", "ok"]
        assert reports[0].summary == f"running in another process (pid {other.pid})"
        assert not (folder / "rows.csv").exists() and not (folder / "log.txt").exists()
        assert read_claim(folder)["pid"] == other.pid  # untouched
        assert len(pd.read_csv(tmp_path / "results.csv").groupby("config_hash")) == 1
    finally:
        other.kill()
        other.wait(timeout=30)
    again: list[CellReport] = []
    run_grid(grid, RunOptions(out=tmp_path, device="cpu"), again.append)  # now stale
    assert sorted(r.status for r in again) == ["ok", "skipped"]
    assert not claims_under(tmp_path)
    df = pd.read_csv(tmp_path / "results.csv")
    assert len(df.groupby("config_hash")) == 2 and not df.duplicated(KEY).any()


OK_LINE = re.compile(r"^ok (?P<cell>.+? seed \d+): .*\[(?P<seconds>[\d.]+) s\]$")


def read_lines(proc: subprocess.Popen, into: list[tuple[float, str]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        into.append((time.monotonic(), line.rstrip("\n")))


@pytest.mark.slow
def test_two_runs_on_one_folder_share_the_cells(tmp_path: Path) -> None:
    """Two `imerbench run` started together on one folder: they train at the same time,
    each cell is trained once (the other run reports it as claimed), no row is lost."""
    out = tmp_path / "run"
    token = f"pair-{os.getpid()}-{time.time_ns()}"
    args = ["run", "--methods", "early-fusion", "--missing-rates", "0.0,0.3,0.7",
            "--seeds", "0,1", "--epochs", "1", "--device", "cpu", "--out", str(out),
            "--no-save-weights", "--jobs", "1", "--stack", "2"]  # fmt: skip
    env = {TOKEN_VAR: token, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
    procs = [cli(*args, env=env), cli(*args, env=env)]
    lines: list[list[tuple[float, str]]] = [[], []]
    readers = [
        threading.Thread(target=read_lines, args=(p, into), daemon=True)
        for p, into in zip(procs, lines, strict=True)
    ]
    for reader in readers:
        reader.start()
    for proc, reader in zip(procs, readers, strict=True):
        proc.wait(timeout=500)
        reader.join(timeout=30)
    logs = ["\n".join(text for _, text in run) for run in lines]
    assert [p.returncode for p in procs] == [0, 0], logs

    busy = []  # per run: from its first cell's start to its last cell's end
    trained: list[str] = []
    for i, run in enumerate(lines):
        oks = [(t, OK_LINE.match(text)) for t, text in run if OK_LINE.match(text)]
        assert oks, f"run {i} trained no cell:\n{logs[i]}"
        trained += [m["cell"] for _, m in oks]
        busy.append((oks[0][0] - float(oks[0][1]["seconds"]), oks[-1][0]))
        other = procs[1 - i].pid
        for _, text in run:
            if text.startswith("claimed "):
                assert text.endswith(f"running in another process (pid {other})"), text
    assert max(b[0] for b in busy) < min(b[1] for b in busy), f"no overlap: {busy}"
    assert len(trained) == 6 and len(set(trained)) == 6, trained  # each cell trained once
    ran = [int(re.search(r"(\d+) cells ran", log)[1]) for log in logs]  # type: ignore[index]
    assert sum(ran) == 6

    df = pd.read_csv(out / "results.csv")
    assert not df.duplicated(KEY).any()
    assert df.groupby(["method", "missing_rate", "seed"])["config_hash"].nunique().eq(1).all()
    assert len(df.groupby(["method", "missing_rate", "seed"])) == 6
    assert len(df) == sum(len(pd.read_csv(p)) for p in out.glob("cells/*/*/*/rows.csv"))
    resume = cli(*args, env=env)
    log, _ = resume.communicate(timeout=300)
    assert resume.returncode == 0, log
    assert "0 cells ran, 0 failed, 6 already done;" in log, log
    assert pd.read_csv(out / "results.csv").equals(df)
    assert not claims_under(out)
    assert not wait_for_no_orphans(token, timeout=10.0)


# ---- a full or read-only disk ---------------------------------------------------------------


def write_error(out: Path, cause: str, fix: str) -> str:
    return f"cannot write results under {out}: {cause}; {fix} and rerun, finished cells are kept"


ENOSPC_MESSAGE = ("no space left on device", "free space")
EROFS_MESSAGE = ("read-only file system", "make it writable (or pass another --out)")


def assert_finished_cells_intact(out: Path, finished: int, stale_claims: int = 0) -> None:
    """`stale_claims`: claims a dead run could not remove (a read-only folder)."""
    df = read_results(out)
    assert df.groupby("config_hash").ngroups == finished
    assert set(df["status"]) == {"ok"} and df["value"].notna().all()
    assert len(list(out.glob("cells/*/*/*/rows.csv"))) == finished
    assert not leftovers(out), leftovers(out)
    claims = claims_under(out)
    assert len(claims) == stale_claims, claims
    assert not any((claim.parent / "rows.csv").exists() for claim in claims)


def test_full_disk_stops_the_run_and_a_rerun_completes_it(
    small_grid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = small_grid(methods=["early-fusion"], missing_rates=[0.0, 0.3, 0.5])
    monkeypatch.setattr(files, "_fault_writes", 0)
    monkeypatch.setenv("IMERBENCH_TEST_WRITE_ERROR", "ENOSPC:2")  # the 2nd cell's rows
    reports: list[CellReport] = []
    options = RunOptions(out=tmp_path, device="cpu", stack=2)  # the 2nd cell: in the 1st stack
    with pytest.raises(ImerbenchError) as failure:
        run_grid(grid, options, reports.append)
    assert str(failure.value) == write_error(tmp_path, *ENOSPC_MESSAGE)
    assert [r.status for r in reports] == ["ok"]
    assert_finished_cells_intact(tmp_path, 1)
    half = [p.parent for p in tmp_path.glob("cells/*/*/*/log.txt")]
    assert len(half) == 2  # the failed cell has its log, but no rows: it is not done
    monkeypatch.delenv("IMERBENCH_TEST_WRITE_ERROR")
    again: list[CellReport] = []
    run_grid(grid, options, again.append)
    assert [r.status for r in again] == ["skipped", "ok", "ok"]
    assert_finished_cells_intact(tmp_path, 3)
    assert pd.read_csv(tmp_path / "results.csv").groupby("config_hash").ngroups == 3


class ReadOnlyFolder:
    """Refuses every write under `root` once `on`, as a folder remounted read-only would:
    opening for writing, creating, renaming, removing and making folders."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = os.path.abspath(root)
        self.on = False
        self.refused: list[str] = []
        real_open, real_os_open = builtins.open, os.open
        real_replace, real_rename, real_mkdir, real_unlink = (
            os.replace,
            os.rename,
            os.mkdir,
            os.unlink,
        )

        def refuse(path: Any) -> None:
            name = os.path.abspath(os.fsdecode(os.fspath(path)))
            if self.on and name.startswith(self.root + os.sep):
                self.refused.append(name)
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)

        def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if not isinstance(file, int) and any(c in mode for c in "wax+"):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def two(real: Any) -> Any:
            def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                refuse(dst)
                return real(src, dst, *args, **kwargs)

            return call

        def one(real: Any) -> Any:
            def call(path: Any, *args: Any, **kwargs: Any) -> Any:
                refuse(path)
                return real(path, *args, **kwargs)

            return call

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(os, "replace", two(real_replace))
        monkeypatch.setattr(os, "rename", two(real_rename))
        monkeypatch.setattr(os, "mkdir", one(real_mkdir))
        monkeypatch.setattr(os, "unlink", one(real_unlink))


@pytest.mark.parametrize("stack", [1, 2])
def test_read_only_folder_stops_the_run_and_a_rerun_completes_it(
    small_grid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: int
) -> None:
    grid = small_grid(methods=["early-fusion"], missing_rates=[0.0, 0.5])
    options = RunOptions(out=tmp_path, device="cpu", stack=stack)
    with monkeypatch.context() as patch:
        readonly = ReadOnlyFolder(tmp_path, patch)

        def on_cell(report: CellReport) -> None:
            reports.append(report)
            readonly.on = True  # the disk goes read-only after the first cell

        reports: list[CellReport] = []
        with pytest.raises(ImerbenchError) as failure:
            run_grid(grid, options, on_cell)
        assert readonly.refused  # the fault was really hit
        readonly.on = False
    assert str(failure.value) == write_error(tmp_path, *EROFS_MESSAGE)
    assert [r.status for r in reports] == ["ok"]
    # Stacked, the second cell was claimed with the first, before the folder turned
    # read-only: its claim stays behind, stale, and the rerun takes it over.
    assert_finished_cells_intact(tmp_path, 1, stale_claims=stack - 1)
    again: list[CellReport] = []
    run_grid(grid, options, again.append)
    assert [r.status for r in again] == ["skipped", "ok"]
    assert_finished_cells_intact(tmp_path, 2)


@pytest.mark.slow
def test_full_disk_through_the_cli_is_one_error_line(tmp_path: Path) -> None:
    """Two pool workers each fail on their second cell's rows: exit status 2, one line,
    no traceback; the cells finished before are kept and a rerun completes the grid."""
    out = tmp_path / "run"
    token = f"full-{os.getpid()}-{time.time_ns()}"
    args = ["run", "--methods", "early-fusion", "--missing-rates", "0.0,0.5",
            "--seeds", "0,1", "--epochs", "1", "--device", "cpu", "--out", str(out),
            "--no-save-weights", "--jobs", "2"]  # fmt: skip
    env = {TOKEN_VAR: token, "COLUMNS": "250"}
    proc = cli(*args, env=env | {"IMERBENCH_TEST_WRITE_ERROR": "ENOSPC:2"})
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode == 2, log
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if "error" in line.lower()]
    assert errors == [f"error: {write_error(out, *ENOSPC_MESSAGE)}"], log
    finished = len(list(out.glob("cells/*/*/*/rows.csv")))
    assert 1 <= finished <= 2  # each worker's first cell is written, nothing after
    assert_finished_cells_intact(out, finished)
    assert not wait_for_no_orphans(token, timeout=10.0)
    rerun = cli(*args, env=env)
    log, _ = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, log
    assert f"{4 - finished} cells ran, 0 failed, {finished} already done;" in log, log
    assert_finished_cells_intact(out, 4)
    assert pd.read_csv(out / "results.csv").groupby("config_hash").ngroups == 4


# ---- out of memory and non-finite losses -----------------------------------------------------


class FailingMethod(Method):
    """Early fusion that fails from epoch `fail_epoch` on (how: the subclass's `fail`)."""

    params = {"fail_epoch": Param(1, low=0)}  # noqa: RUF012

    def build(self, spec: Any) -> torch.nn.Module:
        from imerbench.methods.fusion import EarlyFusionNet

        model = EarlyFusionNet(spec, 8, 0.0)
        model.epochs_done = 0  # the run's state lives in its model
        return model

    def on_epoch_end(self, model: Any, epoch: int, stage: str, val_scores: Any, ctx: Any) -> None:
        model.epochs_done = epoch + 1

    def loss(self, model: Any, out: Any, batch: Any, stage: str) -> torch.Tensor:
        loss = super().loss(model, out, batch, stage)
        return self.fail(loss) if model.epochs_done >= self.hp["fail_epoch"] else loss

    def fail(self, loss: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class HostOutOfMemory(FailingMethod):
    def fail(self, loss: torch.Tensor) -> torch.Tensor:
        raise MemoryError


class DeviceOutOfMemory(FailingMethod):
    def fail(self, loss: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")


class InfiniteLoss(FailingMethod):
    def fail(self, loss: torch.Tensor) -> torch.Tensor:
        return loss + float("inf")  # finite gradients: the mean loss stays inf, not nan


FAILING = {"test-host-oom": HostOutOfMemory, "test-cuda-oom": DeviceOutOfMemory,
           "test-inf-loss": InfiniteLoss}  # fmt: skip


@pytest.fixture
def failing_methods() -> Iterator[list[str]]:
    for name, cls in FAILING.items():
        register_method(name)(cls)
    yield list(FAILING)
    for name in FAILING:
        unregister_method(name)


def test_out_of_memory_and_infinite_loss_fail_their_cell_and_the_table_shows_it(
    small_grid, tmp_path: Path, failing_methods: list[str]
) -> None:
    from typer.testing import CliRunner

    from imerbench.cli import app

    grid = small_grid(methods=[*failing_methods, "early-fusion"], missing_rates=[0.3], epochs=2)
    reports: list[CellReport] = []
    run_grid(grid, RunOptions(out=tmp_path, device="cpu"), reports.append)
    assert [r.status for r in reports] == ["failed", "failed", "failed", "ok"]
    df = read_results(tmp_path)
    error = df.groupby("method")["error"].first()
    status = df.groupby("method")["status"].agg(set)
    assert all(status[m] == {"failed"} for m in failing_methods)
    assert status["early-fusion"] == {"ok"}
    assert error["test-host-oom"] == "out of memory: MemoryError"
    assert (
        error["test-cuda-oom"] == "out of memory: CUDA out of memory. Tried to allocate 80.00 GiB"
    )
    assert error["test-inf-loss"].startswith("CellFailure: training loss became inf in epoch 2")
    for name in failing_methods:  # the failed cell keeps its config and provenance
        (folder,) = tmp_path.glob(f"cells/synthetic/{name}/*")
        meta = json.loads((folder / "cell.json").read_text())
        assert meta["error"] == error[name] and meta["provenance"]["torch"] == torch.__version__

    table = CliRunner().invoke(app, ["table", str(tmp_path)])
    assert table.exit_code == 0, table.output
    for name in failing_methods:
        assert f"| {name} | failed ‡ |" in table.output
        assert f"- ‡ {name}, MR 0.3: 1 of 1 runs failed ({error[name][:40]}" in table.output
    row = next(line for line in table.output.splitlines() if line.startswith("| early-fusion"))
    # One epoch is its cap: the score is marked as not converged (§), and nothing else.
    assert re.fullmatch(r"\| early-fusion \| \*\*\d+\.\d\d §\*\* \|", row), row


def test_partly_failed_scores_are_marked_with_a_count(tmp_path: Path) -> None:
    def row(method: str, seed: int, value: float, error: str = "") -> dict[str, Any]:
        base = {c: "" for c in COLUMNS} | {"schema": 1, "method": method, "dataset": "synthetic",
                "fold": 0, "missing_rate": 0.5, "mask": "0.5", "seed": seed,
                "config_hash": f"{method}-{seed}", "value": value}  # fmt: skip
        if error:
            return base | {"status": "failed", "error": error}
        return base | {"status": "ok", "selection": "val", "condition": "mask",
                       "output": "fused", "metric": "wa"}  # fmt: skip

    df = pd.DataFrame([row("a", 0, 0.6), row("a", 1, 0.7), row("a", 2, np.nan, "out of memory: x"),
                       row("b", 0, 0.5), row("b", 1, 0.55), row("b", 2, 0.52)])  # fmt: skip
    (board,) = leaderboards(df)
    text = board.to_markdown()
    assert "| a | **65.00 ± 7.07 ‡** |" in text
    assert "| b | 52.33 ± 2.52 |" in text
    assert "- ‡ a, MR 0.5: 1 of 3 runs failed (out of memory: x)" in text
    frame = board.to_frame().set_index("method")
    assert frame.loc["a", "failed_runs"] == 1 and frame.loc["a", "runs"] == 3
    assert frame.loc["b", "failed_runs"] == 0 and frame.loc["b", "runs"] == 3
    latex = render([board], "latex")
    assert r"$^\ddagger$" in latex and "1 of 3 runs failed" in latex


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_out_of_memory_frees_the_device_for_the_next_cell(small_grid, tmp_path: Path) -> None:
    gib = 1 << 30

    @register_method("test-cuda-hog")
    class Hog(FailingMethod):
        """Holds 1 GiB, then asks for far more than any device has."""

        def fail(self, loss: torch.Tensor) -> torch.Tensor:
            held = torch.empty(gib // 4, device=loss.device)  # noqa: F841
            torch.empty(1 << 46, device=loss.device)
            return loss

    try:
        grid = small_grid(methods=["test-cuda-hog", "early-fusion"], missing_rates=[0.3])
        reports: list[CellReport] = []
        run_grid(grid, RunOptions(out=tmp_path, device="cuda", jobs=1), reports.append)
        assert [r.status for r in reports] == ["failed", "ok"]
        assert reports[0].summary.startswith("out of memory: CUDA out of memory")
        assert torch.cuda.memory_allocated() < gib and torch.cuda.memory_reserved() < gib
    finally:
        unregister_method("test-cuda-hog")


# ---- determinism and provenance --------------------------------------------------------------


def grid_from_cell_json(meta: dict[str, Any]) -> Grid:
    """The one-cell grid that reruns a cell, built from its cell.json alone."""
    raw: dict[str, Any] = {
        "name": "rerun",
        "methods": [meta["label"]],
        "datasets": [meta["dataset"]],
        "folds": [meta["fold"]],
        "missing_rates": [meta["mask"]],
        "seeds": [meta["seed"]],
        "protocol": meta["protocol"],
        "epochs": meta["hparams"]["epochs"],
    }
    if meta["widths"]:
        raw["widths"] = meta["widths"]
    if meta["data_root"]:
        raw["data_root"] = meta["data_root"]
    if meta.get("precision", "fp32") != "fp32":
        raw["precision"] = meta["precision"]
    return grid_from_dict(raw, "cell.json")


def test_a_cell_reruns_from_its_cell_json_to_identical_rows(small_grid, tmp_path: Path) -> None:
    grid = small_grid(methods=["early-fusion"], missing_rates=[0.5], epochs=2)
    run_grid(grid, RunOptions(out=tmp_path / "a", device="cpu", save_weights=False))
    (first,) = (tmp_path / "a").glob("cells/*/*/*")
    meta = json.loads((first / "cell.json").read_text())
    rows = pd.read_csv(first / "rows.csv")
    for column in ("config_hash", "code_version", "device"):
        assert rows[column].nunique() == 1
    provenance = meta["provenance"]
    assert meta["config_hash"] == rows["config_hash"].iloc[0]
    assert provenance["code_version"] == rows["code_version"].iloc[0]
    assert provenance["device"] == rows["device"].iloc[0]
    assert provenance["python"] == platform.python_version()
    assert provenance["torch"] == torch.__version__ and provenance["numpy"] == np.__version__
    assert provenance["pandas"] == pd.__version__
    assert provenance["host"] == HOST and provenance["command"]
    if "+g" in provenance["code_version"]:  # a checkout: the exact commit is recorded
        assert provenance["commit"].startswith(provenance["code_version"].split("+g")[1][:7])
        dirty = provenance["code_version"].endswith(".dirty")
        assert ("uncommitted_diff_sha256" in provenance) == dirty

    rerun = grid_from_cell_json(meta)
    (cell,) = rerun.cells()
    planned = plan_cell(cell, rerun, ResultStore(tmp_path / "b"))
    config = planned.config
    # the same configuration, exactly
    assert config_hash(config) == planned.digest == meta["config_hash"]
    assert json.loads(json.dumps(config, default=str)) == {k: meta[k] for k in config}
    run_grid(rerun, RunOptions(out=tmp_path / "b", device="cpu", save_weights=False))
    (second,) = (tmp_path / "b").glob("cells/*/*/*")
    assert second.name == first.name
    place = ["train_seconds", "device"]  # when and where; everything else must match
    again = pd.read_csv(second / "rows.csv")
    assert len(rows) > 40
    pd.testing.assert_frame_equal(rows.drop(columns=place), again.drop(columns=place))
    assert (first / "curves.csv").read_text() == (second / "curves.csv").read_text()
    meta_b = json.loads((second / "cell.json").read_text())
    assert {k: v for k, v in meta.items() if k != "provenance"} == {
        k: v for k, v in meta_b.items() if k != "provenance"
    }
