"""Executors: how planned stacks of cells reach a device. Each runs stacks and reports every
cell; none writes results.csv (the runner merges it).

- `SerialExecutor`: in this process, one stack after another.
- `PoolExecutor`: worker processes (spawned), each keeping its corpora and device tensors
  across stacks; on CUDA the workers are spread over the devices.
- `imerbench.ray_executor.RayExecutor`: stacks as Ray tasks, written by this process.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from multiprocessing import get_context
from multiprocessing.queues import Queue
from typing import Protocol

import torch

from imerbench.compute import CellReport, Workspace
from imerbench.devices import limit_device_memory
from imerbench.grid import Cell, Grid
from imerbench.plan import RunOptions, Stack
from imerbench.selection import HistoryRow
from imerbench.write import OnEpoch, run_stack

OnCell = Callable[[CellReport], None]


class Executor(Protocol):
    def run(
        self,
        stacks: Sequence[Stack],
        on_cell: OnCell,
        tick: Callable[[], None],
        on_epoch: OnEpoch | None = None,
    ) -> None:
        """Run every stack, report each cell as it ends (and, where given, each epoch a cell
        trained), call `tick` now and then."""


@dataclass(frozen=True)
class SerialExecutor:
    ws: Workspace

    def run(
        self,
        stacks: Sequence[Stack],
        on_cell: OnCell,
        tick: Callable[[], None],
        on_epoch: OnEpoch | None = None,
    ) -> None:
        for stack in stacks:
            run_stack(stack, self.ws, on_cell, on_epoch)
            tick()


_WORKSPACE: Workspace | None = None
_EPOCHS: Queue[tuple[Cell, int, int, list[HistoryRow]]] | None = None  # to the parent


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
    grid: Grid,
    options: RunOptions,
    threads: int,
    parent: int,
    slots: Queue[tuple[str, int]],
    epochs: Queue[tuple[Cell, int, int, list[HistoryRow]]] | None,
) -> None:
    """A pool worker takes one device slot: its device, and how many workers share it."""
    global _WORKSPACE, _EPOCHS
    _die_with_parent(parent)
    _EPOCHS = epochs
    torch.set_num_threads(threads)
    device, sharing = slots.get()
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(device)  # no stray context on cuda:0
        limit_device_memory(torch.device(device), sharing)
    _WORKSPACE = Workspace(grid, replace(options, device=device))


def _worker_run(stack: Stack) -> tuple[list[CellReport], BaseException | None]:
    """A stack's reports, and the error that stopped it (after the cells it reported)."""
    assert _WORKSPACE is not None
    reports: list[CellReport] = []
    sink = _EPOCHS
    on_epoch = None if sink is None else lambda c, e, n, rows: sink.put((c, e, n, rows))
    try:
        run_stack(stack, _WORKSPACE, reports.append, on_epoch)
    except Exception as exc:  # e.g. a full disk: the parent reports what was written first
        return reports, exc
    return reports, None


@dataclass(frozen=True)
class PoolExecutor:
    grid: Grid
    options: RunOptions
    jobs: int

    def run(
        self,
        stacks: Sequence[Stack],
        on_cell: OnCell,
        tick: Callable[[], None],
        on_epoch: OnEpoch | None = None,
    ) -> None:
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        context = get_context("spawn")
        slots = context.Queue()
        epochs = context.Queue() if on_epoch is not None else None

        ended: set[Cell] = set()

        def relay() -> None:
            """The workers' epochs so far, to `on_epoch`; one that arrives after its cell
            was reported (the queue lags the result) is dropped."""
            while epochs is not None and on_epoch is not None:
                try:
                    cell, epoch, cap, rows = epochs.get_nowait()
                except queue.Empty:
                    return
                if cell not in ended:
                    on_epoch(cell, epoch, cap, rows)

        devices = self.options.worker_devices(self.jobs)
        for device in devices:
            slots.put((device, devices.count(device)))
        with ProcessPoolExecutor(
            self.jobs,
            mp_context=context,
            initializer=_worker_init,
            initargs=(self.grid, self.options, threads, os.getpid(), slots, epochs),
        ) as pool:
            running = {pool.submit(_worker_run, stack) for stack in stacks}
            while running:
                wait_s = None if epochs is None else 0.5
                finished, running = wait(running, timeout=wait_s, return_when=FIRST_COMPLETED)
                relay()
                for future in finished:
                    reports, error = future.result()
                    for report in reports:
                        ended.add(report.cell)
                        on_cell(report)
                    if error is not None:  # e.g. a full disk: start no more
                        for other in running:
                            other.cancel()
                        raise error
                tick()
