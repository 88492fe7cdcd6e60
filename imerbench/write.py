"""Writing a cell: claim its folder, compute it, write its files and then its rows (from
then on it counts as done); a disk that refuses a write stops the run with one line.

A process claims a cell before training it (`<cell>/claim`, see `results.claim_cell`), so
runs sharing an output folder never train one cell twice; the claim of a process that died
is stale and taken over."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imerbench.compute import CellReport, CellResult, Workspace, compute_cell, log_line
from imerbench.errors import ImerbenchError
from imerbench.files import atomic_write
from imerbench.grid import Cell
from imerbench.plan import cell_config, cell_folder, cell_method, config_hash
from imerbench.results import (
    ResultStore,
    claim_cell,
    release_claim,
)

MERGE_INTERVAL_S = 30.0  # how often a running grid rebuilds results.csv


def write_cell_result(store: ResultStore, folder: Path, result: CellResult) -> None:
    """A computed cell's files, then its rows: last, the cell counts as done from there."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in result.files.items():
        atomic_write(folder / name, content)  # a failed write leaves no partial file behind
    store.write_cell(folder, result.report.rows)


def run_cell(cell: Cell, ws: Workspace) -> CellReport:
    """Claim one cell, train it and write its folder (the log as it goes); a failure
    becomes a `failed` row, not a crash. A cell another live process has claimed is left to
    it (`claimed`), one finished meanwhile is `skipped`; a disk that refuses the writes
    stops the run with one clear error."""
    store = ResultStore(ws.options.out)
    method = cell_method(cell)
    folder = cell_folder(store, cell, config_hash(cell_config(cell, method, ws.grid)))
    with writes_checked(ws.options.out):
        folder.mkdir(parents=True, exist_ok=True)
        holder = claim_cell(folder)
        if holder is not None:
            return CellReport(cell, "claimed", f"running in another process ({holder.describe()})")
        try:
            status = store.status(folder)  # another run may have finished it since we looked
            if status == "ok" or (status == "failed" and not ws.options.retry_failed):
                return CellReport(cell, "skipped", "finished by another process")
            remove_stale_temporaries(folder)
            with (folder / "log.txt").open("w", encoding="utf-8") as log_file:

                def log(message: str) -> None:
                    log_file.write(log_line(message))
                    log_file.flush()

                result = compute_cell(cell, ws, log)
                write_cell_result(store, folder, result)
        finally:
            release_claim(folder)
    return result.report


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
