"""Run a grid: plan it, execute its stacks, write each cell, merge results.csv.

plan (`imerbench/plan.py`: cells resolved once, grouped into stacks) -> compute
(`imerbench/compute.py`: train and score, no disk) -> execute (`imerbench/execute.py`,
`imerbench/ray_executor.py`: where stacks run) -> write (`imerbench/write.py`: claims, cell
folders). Finished cells are skipped, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from imerbench.claims import remove_stale_claim
from imerbench.compute import CellReport, Workspace
from imerbench.devices import resolve_device
from imerbench.errors import ImerbenchError
from imerbench.execute import Executor, PoolExecutor, SerialExecutor
from imerbench.grid import Cell, Grid
from imerbench.plan import EXECUTORS, Plan, RunOptions, plan_grid
from imerbench.ray_executor import RayExecutor, require_ray
from imerbench.results import ResultStore
from imerbench.selection import HistoryRow
from imerbench.trackers import make_trackers, parse_trackers
from imerbench.write import MERGE_INTERVAL_S, OnEpoch, writes_checked


def make_executor(plan: Plan, grid: Grid, options: RunOptions, ws: Workspace) -> Executor:
    if options.executor == "ray":
        return RayExecutor(grid, options, ws)
    jobs = min(options.resolved_jobs(), len(plan.stacks))
    if jobs <= 1:
        return SerialExecutor(ws)
    return PoolExecutor(grid, options, jobs)


def tracked(
    plan: Plan,
    grid: Grid,
    options: RunOptions,
    on_cell: Callable[[CellReport], None],
    on_epoch: OnEpoch | None,
) -> tuple[Callable[[CellReport], None], OnEpoch | None]:
    """`on_cell` and `on_epoch`, each then logging to the run's trackers (`--log-to`)."""
    if not options.log_to:
        return on_cell, on_epoch
    folders = {p.cell: p.folder for stack in plan.stacks for p in stack}
    trackers = make_trackers(options.log_to, options.out, grid.name)

    def cell_ended(result: CellReport) -> None:
        on_cell(result)
        if result.status in ("ok", "failed") and result.cell in folders:
            for tracker in trackers:
                tracker.log_cell(result, folders[result.cell])

    def epoch_ended(cell: Cell, epoch: int, epochs: int, rows: list[HistoryRow]) -> None:
        if on_epoch is not None:
            on_epoch(cell, epoch, epochs, rows)
        for tracker in trackers:
            tracker.log_epoch(cell, folders[cell], rows)

    return cell_ended, epoch_ended


def run_grid(
    grid: Grid,
    options: RunOptions,
    on_cell: Callable[[CellReport], None] = lambda _: None,
    on_epoch: OnEpoch | None = None,
) -> ResultStore:
    """Run (or resume) a grid; returns the store whose results.csv is up to date.
    `on_cell` hears of each cell as it ends, `on_epoch(cell, epoch, epochs)` of each epoch
    (not under Ray)."""
    if options.executor not in EXECUTORS:
        raise ImerbenchError(f"executor '{options.executor}': use {' or '.join(EXECUTORS)}")
    if options.executor == "ray":
        require_ray()  # before any work
    parse_trackers(",".join(options.log_to))  # known and installed, before any work
    new_folder = not options.out.exists()
    with writes_checked(options.out):
        options.out.mkdir(parents=True, exist_ok=True)  # an unwritable folder fails first
    try:
        resolve_device(options.device)  # fail before any work
        plan = plan_grid(grid, options)
        ws = Workspace(grid, options)
        for dataset in grid.datasets:  # bad data fails here, once, before any training
            ws.corpus(dataset)
    except BaseException:
        if new_folder and not any(options.out.iterdir()):
            options.out.rmdir()  # a run that never started leaves no empty results folder
        raise
    store = ResultStore(options.out)
    for planned in plan.done:
        remove_stale_claim(planned.folder)  # a run killed between writing rows and releasing
        before = store.status(planned.folder) == "failed"
        on_cell(CellReport(planned.cell, "skipped", failed_before=before))
    last_merge = time.monotonic()

    def tick() -> None:
        # results.csv is a view rebuilt from every cell file: refreshed now and then while
        # the grid runs (the cell files are the record), and always at the end.
        nonlocal last_merge
        if time.monotonic() - last_merge >= MERGE_INTERVAL_S:
            with writes_checked(options.out):
                store.merge()
            last_merge = time.monotonic()

    if plan.stacks:
        cell_ended, epoch_ended = tracked(plan, grid, options, on_cell, on_epoch)
        make_executor(plan, grid, options, ws).run(plan.stacks, cell_ended, tick, epoch_ended)
    with writes_checked(options.out):
        store.merge()
    return store
