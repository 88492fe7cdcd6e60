"""Writing cells: claim their folders, compute them, write their files and then their rows
(from then on a cell counts as done); a disk that refuses a write stops the run with one line.

A process claims a cell before training it (`<cell>/claim`, see `claims.claim_cell`), so
runs sharing an output folder never train one cell twice; the claim of a process that died
is stale and taken over. Claims are per cell, also for cells computed as one stack."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from imerbench.claims import claim_cell, release_claim
from imerbench.compute import CellReport, CellResult, Workspace, compute_stack, log_line
from imerbench.errors import ImerbenchError
from imerbench.files import atomic_write
from imerbench.grid import Cell
from imerbench.plan import PlannedCell, RunOptions, Stack
from imerbench.results import ResultStore
from imerbench.selection import HistoryRow

MERGE_INTERVAL_S = 30.0  # how often a running grid rebuilds results.csv
# A cell ended an epoch: (cell, epoch, epoch cap, the epoch's curve rows).
OnEpoch = Callable[[Cell, int, int, list[HistoryRow]], None]


def write_cell_result(store: ResultStore, folder: Path, result: CellResult) -> None:
    """A computed cell's files, then its rows: last, the cell counts as done from there."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in result.files.items():
        atomic_write(folder / name, content)  # a failed write leaves no partial file behind
    store.write_cell(folder, result.report.rows)


def claim_stack(
    stack: Stack, options: RunOptions, on_cell: Callable[[CellReport], None]
) -> list[PlannedCell]:
    """Claim each cell of a stack; those another live process holds (`claimed`) or that one
    finished meanwhile (`skipped`) are reported and left out. The caller releases the claims
    of the cells returned."""
    store = ResultStore(options.out)
    mine: list[PlannedCell] = []
    try:
        for planned in stack:
            with writes_checked(options.out):
                planned.folder.mkdir(parents=True, exist_ok=True)
                holder = claim_cell(planned.folder)
            if holder is not None:
                text = f"running in another process ({holder.describe()})"
                on_cell(CellReport(planned.cell, "claimed", text))
                continue
            mine.append(planned)
            status = store.status(planned.folder)  # another run may have finished it since
            if status == "ok" or (status == "failed" and not options.retry_failed):
                mine.pop()
                release_claim(planned.folder)
                on_cell(CellReport(planned.cell, "skipped", "finished by another process"))
    except BaseException:  # e.g. a full disk at the third claim: drop the first two
        for planned in mine:
            release_claim(planned.folder)
        raise
    return mine


def write_result(planned: PlannedCell, result: CellResult, options: RunOptions) -> None:
    """Write a computed cell's folder (stale temporaries first), then release its claim."""
    with writes_checked(options.out):
        remove_stale_temporaries(planned.folder)
        write_cell_result(ResultStore(options.out), planned.folder, result)
    release_claim(planned.folder)


def run_stack(
    stack: Stack,
    ws: Workspace,
    on_cell: Callable[[CellReport], None],
    on_epoch: OnEpoch | None = None,
) -> None:
    """Claim a stack's cells, compute the claimed ones together (each cell's log in its own
    folder as it goes) and write each, reporting each cell once written; a failure becomes a
    `failed` row, not a crash. A disk that refuses a write stops the run: the cells written
    before it have been reported. `on_epoch(cell, epoch, epochs)` follows the training."""
    mine = claim_stack(stack, ws.options, on_cell)
    if not mine:  # every cell claimed or finished by another process
        return
    try:
        with ExitStack() as files, writes_checked(ws.options.out):
            logs = [
                files.enter_context((p.folder / "log.txt").open("w", encoding="utf-8"))
                for p in mine
            ]

            def logger(k: int) -> Callable[[str], None]:
                def log(message: str) -> None:
                    logs[k].write(log_line(message))
                    logs[k].flush()

                return log

            def progress(k: int, epoch: int, epochs: int, rows: list[HistoryRow]) -> None:
                if on_epoch is not None:
                    on_epoch(mine[k].cell, epoch, epochs, rows)

            results = compute_stack(
                mine, ws, [logger(k) for k in range(len(mine))], progress=progress
            )
        for planned, result in zip(mine, results, strict=True):
            write_result(planned, result, ws.options)
            on_cell(result.report)
    finally:
        for planned in mine:
            release_claim(planned.folder)  # no-op for those written


def write_failure(exc: OSError, out: Path) -> ImerbenchError | None:
    """The one-line error for a write the disk refused (full, over quota, read-only, or
    denied under the output folder); None for any other error."""
    fixes = {
        errno.ENOSPC: "free space",
        errno.EDQUOT: "free space or raise the quota",
        errno.EFBIG: "free space",
        errno.EROFS: "make it writable (or pass another --out)",
    }
    code = exc.errno or 0
    inside = bool(exc.filename) and Path(os.path.abspath(str(exc.filename))).is_relative_to(
        os.path.abspath(out)
    )
    if code not in fixes and not (inside and code in (errno.EACCES, errno.EPERM)):
        return None
    cause = (exc.strerror or os.strerror(code)).lower()
    fix = fixes.get(code, "make it writable")
    return ImerbenchError(
        f"cannot write results under {out}: {cause}; {fix} and rerun, finished cells are kept"
    )


@contextmanager
def writes_checked(out: Path) -> Iterator[None]:
    """Turn a write the disk refused into the one-line `write_failure` error."""
    try:
        yield
    except OSError as exc:
        failure = write_failure(exc, out)
        if failure is None:
            raise
        raise failure from None


def remove_stale_temporaries(folder: Path) -> None:
    """Half-written files of a killed run (never read: only complete files are renamed in)."""
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    for stale in folder.glob("*.pt.tmp"):
        stale.unlink(missing_ok=True)
