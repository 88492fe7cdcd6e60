"""Run a grid: every cell trained once, written atomically, skipped when already done.

The local executor runs cells in this process (`jobs=1`) or in a pool of worker processes;
the Ray executor (`imerbench.ray_executor`) runs them as Ray tasks. Each worker keeps its
corpora and device tensors across cells. Each cell writes its own folder; only the parent
process rebuilds the merged `results.csv`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from multiprocessing import get_context
from multiprocessing.queues import Queue

import torch

from imerbench.compute import CellReport, Workspace
from imerbench.devices import limit_device_memory, resolve_device
from imerbench.errors import ImerbenchError
from imerbench.grid import Cell, Grid
from imerbench.plan import EXECUTORS, RunOptions, pending_cells
from imerbench.ray_executor import require_ray, run_on_ray
from imerbench.results import (
    ResultStore,
)
from imerbench.write import MERGE_INTERVAL_S, run_cell, writes_checked

_WORKSPACE: Workspace | None = None


def _die_with_parent(parent: int) -> None:
    """Linux: a worker is killed with its parent, so a killed run leaves no orphan writing.
    A parent killed before the signal was armed is caught by the pid check."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent:
        os._exit(1)


def _worker_init(
    grid: Grid, options: RunOptions, threads: int, parent: int, slots: Queue[tuple[str, int]]
) -> None:
    """A pool worker takes one device slot: its device, and how many workers share it."""
    global _WORKSPACE
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    device, sharing = slots.get()
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(device)  # no stray context on cuda:0
        limit_device_memory(torch.device(device), sharing)
    _WORKSPACE = Workspace(grid, replace(options, device=device))


def _worker_run(cell: Cell) -> CellReport:
    assert _WORKSPACE is not None
    return run_cell(cell, _WORKSPACE)


def run_grid(
    grid: Grid,
    options: RunOptions,
    on_cell: Callable[[CellReport], None] = lambda _: None,
) -> ResultStore:
    """Run (or resume) a grid; returns the store whose results.csv is up to date."""
    if options.executor not in EXECUTORS:
        raise ImerbenchError(f"executor '{options.executor}': use {' or '.join(EXECUTORS)}")
    if options.executor == "ray":
        require_ray()  # before any work
    new_folder = not options.out.exists()
    with writes_checked(options.out):
        options.out.mkdir(parents=True, exist_ok=True)  # an unwritable folder fails first
    try:
        resolve_device(options.device)  # fail before any work
        todo, done = pending_cells(grid, options)
        ws = Workspace(grid, options)
        for dataset in grid.datasets:  # bad data fails here, once, before any training
            ws.corpus(dataset)
    except BaseException:
        if new_folder and not any(options.out.iterdir()):
            options.out.rmdir()  # a run that never started leaves no empty results folder
        raise
    store = ResultStore(options.out)
    for cell in done:
        on_cell(CellReport(cell, "skipped"))
    jobs = options.resolved_jobs()
    last_merge = time.monotonic()

    def refresh() -> None:
        # results.csv is a view rebuilt from every cell file: refreshed now and then while
        # the grid runs (the cell files are the record), and always at the end.
        nonlocal last_merge
        if time.monotonic() - last_merge >= MERGE_INTERVAL_S:
            with writes_checked(options.out):
                store.merge()
            last_merge = time.monotonic()

    if options.executor == "ray":
        run_on_ray(todo, grid, options, ws, on_cell, refresh)
    elif jobs <= 1 or len(todo) <= 1:
        for cell in todo:
            on_cell(run_cell(cell, ws))
            refresh()
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = get_context("spawn")
        slots = context.Queue()
        devices = options.worker_devices(jobs)
        for device in devices:
            slots.put((device, devices.count(device)))
        with ProcessPoolExecutor(
            jobs,
            mp_context=context,
            initializer=_worker_init,
            initargs=(grid, options, threads, os.getpid(), slots),
        ) as pool:
            running = {pool.submit(_worker_run, cell) for cell in todo}
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    if future.exception() is not None:  # e.g. a full disk: start no more
                        for other in running:
                            other.cancel()
                    on_cell(future.result())
                refresh()
    with writes_checked(options.out):
        store.merge()
    return store
