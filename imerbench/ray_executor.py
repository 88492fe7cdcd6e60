"""Stacks of cells as Ray tasks (`imerbench run --executor ray`), for grids bigger than one
machine.

Each stack is one task asking for one CPU, or for 1/N of a GPU on CUDA (N =
`--jobs-per-device`), so Ray packs N stacks on each GPU of the cluster. A task only computes:
it returns its cells' rows, log, curves, config and weights, and the driver (the process that
called `run_grid`) writes every cell folder and merges results.csv, so there is one writer
whatever the number of nodes. The driver also draws the evaluation masks before any task
starts, so the tasks only read them.

A task whose worker dies (killed, out of host memory, lost node) is run again by Ray, up to
`RAY_MAX_RETRIES` times; its rows record in `attempts` how many starts the stack took. A cell
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from imerbench.claims import release_claim
from imerbench.compute import (
    CellReport,
    CellResult,
    Workspace,
    compute_stack,
    failed_row,
    log_line,
    row_base,
)
from imerbench.devices import limit_device_memory, resolve_device
from imerbench.errors import ImerbenchError
from imerbench.grid import Grid
from imerbench.plan import PlannedCell, RunOptions, Stack
from imerbench.write import MERGE_INTERVAL_S, claim_stack, write_result

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


def _test_kill(stack: Stack, out: Path) -> None:
    """Test hook: with IMERBENCH_TEST_KILL_CELL set to a cell's `describe()`, the first
    attempt of the stack holding that cell kills its own worker (SIGKILL, as the kernel's OOM
    killer would). A marker file in the output folder remembers that the kill happened."""
    target = os.environ.get(KILL_CELL_ENV)
    if target is None or target not in [planned.describe() for planned in stack]:
        return
    marker = out / f".test-killed-{hashlib.sha256(target.encode()).hexdigest()[:12]}"
    if marker.exists():
        return
    marker.touch()
    os.kill(os.getpid(), signal.SIGKILL)


def _stack_task(run: RayRun, stack: Stack) -> list[CellResult]:
    """The body of a Ray task: compute one stack, write nothing to its folders."""
    attempts = _attempt()
    _test_kill(stack, run.options.out)
    ws = _workspace(run)
    lines: list[list[str]] = [[] for _ in stack]
    logs = [lambda m, k=k: lines[k].append(log_line(m)) for k in range(len(stack))]
    results = compute_stack(stack, ws, logs, attempts=attempts)
    for result, text in zip(results, lines, strict=True):
        result.files = {"log.txt": "".join(text), **result.files}
    return results


def lost_cell(planned: PlannedCell, device: str, message: str, attempts: int) -> CellResult:
    """A cell whose every attempt lost its worker: one failed row, so the grid goes on."""
    base = row_base(planned.cell, planned.method, planned.digest, device, attempts)
    row = failed_row(base, message, 0.0)
    report = CellReport(planned.cell, "failed", message, 0.0, [row])
    return CellResult(report, planned.digest, {"log.txt": log_line(message)})


@dataclass(frozen=True)
class RayExecutor:
    """Stacks as Ray tasks; this process claims their cells, draws their evaluation masks
    and writes every finished cell as it arrives."""

    grid: Grid
    options: RunOptions
    ws: Workspace

    def run(
        self,
        stacks: Sequence[Stack],
        on_cell: Callable[[CellReport], None],
        tick: Callable[[], None],
        on_epoch: Callable[..., None] | None = None,
    ) -> None:
        """Cells are reported as they end; their epochs are not (`on_epoch` is unused)."""
        require_ray()
        import ray
        from ray.exceptions import RayError, RayTaskError

        options, ws = self.options, self.ws
        claimed: list[Stack] = []
        started = False
        try:
            for stack in stacks:
                mine = tuple(claim_stack(stack, options, on_cell))
                if not mine:
                    continue
                claimed.append(mine)
                for planned in mine:  # drawn here, so the tasks only read them
                    for split in ("test",) if planned.cell.protocol == "paper" else ("val", "test"):
                        ws.eval_mask(planned, split)
            if not claimed:
                return
            started = not ray.is_initialized()
            if started:
                init_ray(options)
            device = resolve_device(options.device)
            run = RayRun(
                uuid.uuid4().hex,
                self.grid,
                replace(options, device=device.type),
                options.resolved_jobs_per_device() if device.type == "cuda" else 1,
            )
            task = ray.remote(_stack_task).options(
                max_retries=RAY_MAX_RETRIES, retry_exceptions=False, **task_resources(options)
            )
            run_ref = ray.put(run)
            pending: dict[Any, Stack] = {task.remote(run_ref, stack): stack for stack in claimed}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=MERGE_INTERVAL_S)
                for ref in ready:
                    stack = pending.pop(ref)
                    try:
                        results = ray.get(ref)
                    except RayTaskError:
                        raise  # a bug, not a lost worker: stop as the local executor would
                    except RayError as exc:
                        text = f"worker lost: {type(exc).__name__}: {exc}"
                        message = " ".join(text.split())[:500]
                        attempts = RAY_MAX_RETRIES + 1
                        results = [lost_cell(p, str(device), message, attempts) for p in stack]
                    for planned, result in zip(stack, results, strict=True):
                        write_result(planned, result, options)
                        on_cell(result.report)
                tick()
        finally:
            for stack in claimed:
                for planned in stack:
                    release_claim(planned.folder)
            if started:
                ray.shutdown()


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
