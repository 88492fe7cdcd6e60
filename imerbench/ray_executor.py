"""Cells as Ray tasks (`imerbench run --executor ray`), for grids bigger than one machine.

Each cell is one task asking for one CPU, or for 1/N of a GPU on CUDA (N =
`--jobs-per-device`), so Ray packs N cells on each GPU of the cluster. A task only computes:
it returns the cell's rows, log, curves, config and weights, and the driver (the process that
called `run_grid`) writes every cell folder and merges results.csv, so there is one writer
whatever the number of nodes. The driver also draws the evaluation masks before any task
starts, so the tasks only read them.

A task whose worker dies (killed, out of host memory, lost node) is run again by Ray, up to
`RAY_MAX_RETRIES` times; its rows record in `attempts` how many starts the cell took. A cell
whose every attempt died is recorded as failed (`--retry-failed` runs it again). Resuming
works as with the local executor: finished cells are skipped before anything is submitted.

Ray is optional (`pip install 'imerbench[ray]'`); a running cluster is used when
`RAY_ADDRESS` names one, else a local instance is started for the run.
"""

from __future__ import annotations

import hashlib
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from imerbench.compute import (
    CellReport,
    CellResult,
    Workspace,
    compute_cell,
    failed_row,
    log_line,
    row_base,
)
from imerbench.devices import limit_device_memory, resolve_device
from imerbench.errors import ImerbenchError
from imerbench.grid import Cell, Grid
from imerbench.plan import RunOptions, cell_config, cell_folder, cell_method, config_hash
from imerbench.results import ResultStore, claim_cell, release_claim
from imerbench.write import (
    MERGE_INTERVAL_S,
    remove_stale_temporaries,
    write_cell_result,
    writes_checked,
)

RAY_MAX_RETRIES = 3  # restarts of a cell whose worker died (so at most 4 attempts)
KILL_CELL_ENV = "IMERBENCH_TEST_KILL_CELL"  # test hook, see `_test_kill`


def require_ray() -> None:
    """Fail with one line, before any work, where Ray is missing or too old."""
    try:
        import ray
        from ray._raylet import CoreWorker
    except ImportError:
        raise ImerbenchError(
            "--executor ray needs Ray, which is not installed: pip install 'imerbench[ray]'"
        ) from None
    if not hasattr(CoreWorker, "get_current_task_attempt_number"):
        raise ImerbenchError(
            f"--executor ray: Ray {ray.__version__} does not report task attempts; "
            "pip install 'ray>=2.9'"
        )


@dataclass
class RayRun:
    """What every task of one run shares (put once in Ray's object store)."""

    token: str  # names the run, so a worker reuses its workspace only within it
    grid: Grid
    options: RunOptions  # device: "cpu" or "cuda" (Ray picks the GPU)
    sharing: int  # tasks sharing one GPU


def task_resources(options: RunOptions) -> dict[str, float]:
    """One CPU per cell, or 1/N of a GPU (N = `--jobs-per-device`) on CUDA."""
    if resolve_device(options.device).type == "cuda":
        return {"num_cpus": 1, "num_gpus": 1.0 / options.resolved_jobs_per_device()}
    return {"num_cpus": 1, "num_gpus": 0}


_WORKSPACES: dict[str, Workspace] = {}


def _workspace(run: RayRun) -> Workspace:
    """This worker's workspace for the run: corpora and device tensors stay loaded across
    the cells a worker process runs."""
    if run.token not in _WORKSPACES:
        _WORKSPACES.clear()  # a worker serves one run at a time; drop an older run's tensors
        torch.set_num_threads(1)
        device = resolve_device(run.options.device)
        limit_device_memory(device, run.sharing)
        _WORKSPACES[run.token] = Workspace(run.grid, run.options)
    return _WORKSPACES[run.token]


def _attempt() -> int:
    """How many times Ray has started this task, this one included (Ray keeps the count on
    its core worker)."""
    import ray

    core = ray._private.worker.global_worker.core_worker
    return int(core.get_current_task_attempt_number()) + 1


def _test_kill(cell: Cell, out: Path) -> None:
    """Test hook: with IMERBENCH_TEST_KILL_CELL set to a cell's `describe()`, the first
    attempt of that cell kills its own worker (SIGKILL, as the kernel's OOM killer would).
    A marker file in the output folder remembers that the kill happened."""
    target = os.environ.get(KILL_CELL_ENV)
    if target is None or target != cell.describe():
        return
    marker = out / f".test-killed-{hashlib.sha256(target.encode()).hexdigest()[:12]}"
    if marker.exists():
        return
    marker.touch()
    os.kill(os.getpid(), signal.SIGKILL)


def _cell_task(run: RayRun, cell: Cell) -> CellResult:
    """The body of a Ray task: compute one cell, write nothing to its folder."""
    attempts = _attempt()
    _test_kill(cell, run.options.out)
    ws = _workspace(run)
    lines: list[str] = []
    result = compute_cell(cell, ws, lambda m: lines.append(log_line(m)), attempts=attempts)
    result.files = {"log.txt": "".join(lines), **result.files}
    return result


def lost_cell(cell: Cell, grid: Grid, device: str, message: str, attempts: int) -> CellResult:
    """A cell whose every attempt lost its worker: one failed row, so the grid goes on."""
    method = cell_method(cell)
    digest = config_hash(cell_config(cell, method, grid))
    row = failed_row(row_base(cell, method, digest, device, attempts), message, 0.0)
    report = CellReport(cell, "failed", message, 0.0, [row])
    return CellResult(report, digest, {"log.txt": log_line(message)})


def run_on_ray(
    todo: list[Cell],
    grid: Grid,
    options: RunOptions,
    ws: Workspace,
    on_cell: Callable[[CellReport], None],
    refresh: Callable[[], None],
) -> None:
    """Run `todo` as Ray tasks; this process writes every finished cell as it arrives."""
    if not todo:
        return
    require_ray()
    import ray
    from ray.exceptions import RayError, RayTaskError

    store = ResultStore(options.out)
    claimed: list[tuple[Cell, Path]] = []
    started = False
    try:
        for cell in todo:  # the driver claims the cells it runs and draws their masks
            method = cell_method(cell)
            folder = cell_folder(store, cell, config_hash(cell_config(cell, method, grid)))
            with writes_checked(options.out):
                folder.mkdir(parents=True, exist_ok=True)
                holder = claim_cell(folder)
            if holder is not None:
                text = f"running in another process ({holder.describe()})"
                on_cell(CellReport(cell, "claimed", text))
                continue
            claimed.append((cell, folder))
            status = store.status(folder)  # another run may have finished it since we looked
            if status == "ok" or (status == "failed" and not options.retry_failed):
                claimed.pop()
                release_claim(folder)
                on_cell(CellReport(cell, "skipped", "finished by another process"))
                continue
            corpus = ws.corpus(cell.dataset)
            for split in ("test",) if cell.protocol == "paper" else ("val", "test"):
                ws.masks.get(corpus, cell.fold, split, cell.mask, cell.seed)
        if not claimed:
            return
        started = not ray.is_initialized()
        if started:
            init_ray(options)
        device = resolve_device(options.device)
        run = RayRun(
            uuid.uuid4().hex,
            grid,
            replace(options, device=device.type),
            options.resolved_jobs_per_device() if device.type == "cuda" else 1,
        )
        task = ray.remote(_cell_task).options(
            max_retries=RAY_MAX_RETRIES, retry_exceptions=False, **task_resources(options)
        )
        run_ref = ray.put(run)
        pending: dict[Any, tuple[Cell, Path]] = {
            task.remote(run_ref, cell): (cell, folder) for cell, folder in claimed
        }
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=MERGE_INTERVAL_S)
            for ref in ready:
                cell, folder = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError:
                    raise  # a bug, not a lost worker: stop as the local executor would
                except RayError as exc:
                    message = " ".join(f"worker lost: {type(exc).__name__}: {exc}".split())[:500]
                    attempts = RAY_MAX_RETRIES + 1
                    result = lost_cell(cell, grid, str(device), message, attempts)
                _write(store, folder, result, options.out)
                on_cell(result.report)
            refresh()
    finally:
        for _, folder in claimed:
            release_claim(folder)
        if started:
            ray.shutdown()


def _write(store: ResultStore, folder: Path, result: CellResult, out: Path) -> None:
    with writes_checked(out):
        remove_stale_temporaries(folder)
        write_cell_result(store, folder, result)
    release_claim(folder)


def init_ray(options: RunOptions) -> None:
    """Join the cluster named by RAY_ADDRESS, or start a local instance for this run (on
    the CPU with as many CPUs as `--jobs` resolves to)."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="ERROR")
        return
    kwargs: dict[str, Any] = {}
    if resolve_device(options.device).type != "cuda":
        kwargs["num_cpus"] = options.resolved_jobs()
    ray.init(include_dashboard=False, logging_level="ERROR", **kwargs)
