"""The tidy results store: one row per number, one folder per finished cell.

Layout of an output folder:
    results.csv                       the merged view of every cell's rows (rebuilt, atomic)
    masks/                            the stored validation/test masks
    cells/<dataset>/<method>/<cell>/  rows.csv (written last, atomically: the cell is done
                                      when it exists), log.txt, curves.csv, weights-*.pt,
                                      cell.json (config and provenance), and `claim` (the
                                      process training it) while it runs

Everything else (leaderboards, plots, statistics) is computed from these rows.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from imerbench.errors import ImerbenchError
from imerbench.files import atomic_write
from imerbench.registry import method_info

try:
    import fcntl
except ImportError:  # Windows: there, takeovers and merges are not serialized
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 2  # 2: epochs count from 1; stopping columns
# Add columns at the end, never rename: older results stay readable.
COLUMNS: tuple[str, ...] = (
    "schema", "method", "dataset", "fold", "missing_rate", "realized_missing_rate", "seed",
    "selection", "condition", "output", "metric", "value", "epoch", "epochs", "train_seconds",
    "parameters", "device", "config_hash", "code_version", "status", "error",
    "mask",  # added in schema 1: the cell's mask spec ("0.3", "at", "a=0.1,t=0.2,v=0.6")
    "attempts",  # how many times the cell was started (a worker that died is retried)
    # Added in schema 1, the method's registration metadata (`imerbench.method.MethodInfo`):
    "role",  # method | reference | ceiling
    "ceiling_of",  # a ceiling's one modality
    "paper_name",  # the method's name in published tables
    # Added in schema 2 (`imerbench/stopping.py`); from schema 2 on, `epoch` counts from 1:
    "epochs_trained",  # epochs the cell trained (`epochs` is the cap)
    "stop_reason",  # plateau | cap | fixed
    "converged",  # False: stopped by its cap while still improving; empty: fixed
)  # fmt: skip
ROWS_FILE = "rows.csv"
MERGED_FILE = "results.csv"


def rows_to_csv(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in COLUMNS})
    return buf.getvalue()


def safe_name(text: str) -> str:
    """A folder name for a method label such as `comp[lbd=0.5]`."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "_"


class ResultStore:
    """Cells' rows under one output folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def cells_dir(self) -> Path:
        return self.root / "cells"

    @property
    def merged_path(self) -> Path:
        return self.root / MERGED_FILE

    def cell_dir(self, dataset: str, method_label: str, cell_name: str) -> Path:
        return self.cells_dir / dataset / safe_name(method_label) / cell_name

    def status(self, cell_dir: Path) -> str | None:
        """'ok', 'failed' or None (not finished)."""
        path = cell_dir / ROWS_FILE
        if not path.exists():
            return None
        with path.open(encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            statuses = {row["status"] for row in reader}
        return "failed" if "failed" in statuses or not statuses else "ok"

    def write_cell(self, cell_dir: Path, rows: list[dict[str, Any]]) -> None:
        if not rows:
            raise ValueError("a finished cell has at least one row")
        atomic_write(cell_dir / ROWS_FILE, rows_to_csv(rows))

    def cell_files(self) -> list[Path]:
        if not self.cells_dir.exists():
            return []
        return sorted(self.cells_dir.glob(f"*/*/*/{ROWS_FILE}"))

    def read(self) -> pd.DataFrame:
        """Every finished cell's rows (the merged view, recomputed from the cell files)."""
        frames = [read_rows(p) for p in self.cell_files()]
        if not frames:
            return pd.DataFrame(columns=list(COLUMNS))
        return pd.concat(frames, ignore_index=True)

    def merge(self) -> pd.DataFrame:
        """Rebuild results.csv from the cell files, atomically; return it.

        Merges of concurrent runs on one folder are serialized, so the last one to finish
        reads every cell finished before it (an older view never overwrites a newer one).
        """
        with file_lock(self.root / MERGE_LOCK):
            # Only merges write results.csv, and they hold the lock: any temporary of it
            # seen now was left by a killed run.
            for stale in self.root.glob(f".{MERGED_FILE}.*.tmp"):
                stale.unlink(missing_ok=True)
            df = self.read()
            atomic_write(self.merged_path, df.to_csv(index=False, lineterminator="\n"))
        return df


def read_rows(path: Path) -> pd.DataFrame:
    """A rows CSV, with columns added since it was written filled in."""
    text = {"mask": str, "role": str, "ceiling_of": str, "paper_name": str, "stop_reason": str}
    text |= {"converged": str}
    df = pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"], dtype=text)
    if "stop_reason" not in df.columns:  # schema 1: every epoch trained, epochs from 0
        df["epoch"] = pd.to_numeric(df["epoch"], errors="coerce") + 1
        df["epochs_trained"] = df["epochs"].where(df["status"] == "ok")
        df["stop_reason"] = df["status"].map(lambda s: "fixed" if s == "ok" else "")
        df["converged"] = ""
    df["converged"] = df["converged"].map({"True": True, "False": False}).astype(object)
    if "mask" not in df.columns:  # older rows: the mask was always a missing rate
        df["mask"] = df["missing_rate"].map(lambda r: repr(float(r)) if pd.notna(r) else "")
    # Rows written before `attempts` existed (or without it) came from one attempt.
    df["attempts"] = df["attempts"].fillna(1).astype(int) if "attempts" in df.columns else 1
    if "role" not in df.columns:  # older rows: the metadata as registered now
        info = {label: method_info(label).columns() for label in df["method"].dropna().unique()}
        for column in ("role", "ceiling_of", "paper_name"):
            df[column] = df["method"].map(lambda label, c=column: info.get(label, {}).get(c, ""))
    for column in ("ceiling_of", "paper_name"):
        df[column] = df[column].fillna("").astype(str)
    return df


def read_results(path: str | Path) -> pd.DataFrame:
    """Rows of an output folder (from its cells) or of a results CSV file."""
    path = Path(path)
    if path.is_dir():
        store = ResultStore(path)
        if store.cell_files():
            return store.read()
        path = store.merged_path
    if not path.is_file():
        raise ImerbenchError(
            f"no results at {path}; pass a folder written by `imerbench run` or a results CSV"
        )
    df = read_rows(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ImerbenchError(f"{path} is not an imerbench results table (no {missing[0]} column)")
    return df


def separate_configurations(df: pd.DataFrame, where: str | Path) -> pd.DataFrame:
    """The rows, never averaging configurations that differ beyond missing rate, seed and
    fold: where one method's cells of a dataset hold several configurations (runs with other
    `--epochs` in one folder), each is labelled by its epochs (`early-fusion[epochs=3]`); a
    difference the rows cannot show stops with one line naming both configurations."""
    key = ["method", "dataset", "fold", "mask", "seed"]
    cells = df.drop_duplicates("config_hash")
    mixed = cells.groupby(key)["config_hash"].transform("nunique") > 1
    if not mixed.any():
        return df
    out = df.copy()
    for method, dataset in cells.loc[mixed, ["method", "dataset"]].drop_duplicates().values:
        rows = (out["method"] == method) & (out["dataset"] == dataset)
        epochs = out.loc[rows, "epochs"].astype(str)
        base, _, inside = str(method).partition("[")
        inner = inside[:-1] + "," if inside else ""
        out.loc[rows, "method"] = base + "[" + inner + "epochs=" + epochs + "]"
    again = out.drop_duplicates("config_hash")
    clash = again[again.groupby(key)["config_hash"].transform("nunique") > 1]
    if len(clash):
        first = clash.sort_values("config_hash").iloc[0]
        both = clash[(clash[key] == first[key]).all(axis=1)].sort_values("config_hash")
        hashes, versions = list(both["config_hash"]), sorted(set(both["code_version"].astype(str)))
        by = f" (written by code versions {' and '.join(versions)})" if len(versions) > 1 else ""
        raise ImerbenchError(
            f"{where}: {first['method']} on {first['dataset']} (fold {first['fold']}, mr "
            f"{first['mask']}, seed {first['seed']}) has two configurations, {hashes[0]} and "
            f"{hashes[1]}{by}; compare their cell.json, keep one, or run them into separate "
            "--out folders"
        )
    return out


# Claims: which process is running a cell, so that runs sharing a folder never train one
# cell twice. `<cell>/claim` is created when a cell starts and removed once its rows are
# written (or it failed); a claim whose process has died on this host is stale.
CLAIM_FILE = "claim"
CLAIM_LOCK = ".claim.lock"  # serializes stale-claim takeovers of one cell
MERGE_LOCK = ".results.lock"  # serializes rebuilds of results.csv
TORN_CLAIM_AGE_S = 10.0  # a claim without content older than this was cut off by a kill
_PROCFS = Path("/proc/self/stat").exists()
_HELD: set[Path] = set()  # the claims this process holds now


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock among processes on this host; the kernel drops it when its holder
    dies, so a killed run never leaves it held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first, start time at index 19); None: no such
    process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def _process_start(pid: int) -> str:
    """The kernel's start time of a process: with the pid, it tells a process from a later
    one that reuses its pid ('' where /proc is not available)."""
    fields = _proc_stat(pid) if _PROCFS else None
    return fields[19] if fields else ""


def _pid_alive(pid: int, pid_start: str) -> bool:
    if os.name == "nt":  # os.kill would terminate it: unknown, so alive (remove by hand)
        return True
    if not _PROCFS:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X", "x"):  # gone, or exited and not reaped
        return False
    return not pid_start or fields[19] == pid_start


@dataclass(frozen=True)
class Claim:
    """The process running a cell, as written in the cell's claim file."""

    pid: int
    host: str
    started: str
    pid_start: str = ""

    @staticmethod
    def mine() -> Claim:
        return Claim(
            os.getpid(),
            socket.gethostname(),
            time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            _process_start(os.getpid()),
        )

    def to_text(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    def describe(self) -> str:
        if not self.pid:
            return "pid unknown"
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"pid {self.pid}{where}"

    def is_mine(self) -> bool:
        mine = Claim.mine()
        return (self.pid, self.host, self.pid_start) == (mine.pid, mine.host, mine.pid_start)


def _read_claim_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _parse_claim(text: str) -> Claim | None:
    try:
        raw = json.loads(text)
        return Claim(int(raw["pid"]), str(raw["host"]), str(raw["started"]), str(raw["pid_start"]))
    except (ValueError, KeyError, TypeError):
        return None


def _live_holder(path: Path, text: str) -> Claim | None:
    """The live process behind this claim text, or None when the claim is stale. A process
    on another host cannot be checked from here, so its claim counts as live."""
    claim = _parse_claim(text)
    if claim is None:  # empty for an instant after its creation, unless its writer died
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        return Claim(0, socket.gethostname(), "") if age < TORN_CLAIM_AGE_S else None
    if claim.host != socket.gethostname():
        return claim
    if claim.is_mine():  # this process: held now, or left by an earlier run in it
        return claim if path in _HELD else None
    return claim if _pid_alive(claim.pid, claim.pid_start) else None


def _create_whole(path: Path, text: str) -> bool:
    """Create `path` holding `text`, or return False if it exists. The text is written to a
    temporary file first and hard-linked into place, so a reader never finds the claim
    empty (on a file system without hard links: created empty with O_EXCL, then written)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            pass  # no hard links here
    finally:
        Path(tmp).unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


def claim_cell(cell_dir: Path) -> Claim | None:
    """Claim a cell for this process. None: this process holds it now; else the live
    process that does.

    The claim file is created whole and exclusively (`_create_whole`), so of two processes
    one wins, and the other reads who. A stale
    claim is taken over under the cell's lock, and only if it is still the same file
    content after the lock is held (another process may have taken it over meanwhile).
    """
    path = cell_dir / CLAIM_FILE
    mine = Claim.mine()
    for _ in range(10):
        if _create_whole(path, mine.to_text()):
            _HELD.add(path)
            return None
        text = _read_claim_text(path)
        if text is None:
            continue  # released meanwhile: create it again
        holder = _live_holder(path, text)
        if holder is not None:
            return holder
        with file_lock(cell_dir / CLAIM_LOCK):
            if _read_claim_text(path) != text:
                continue  # taken over or released meanwhile: look again
            atomic_write(path, mine.to_text())
            _HELD.add(path)
            return None
    raise ImerbenchError(f"{path} keeps changing; is another run taking this cell over?")


def release_claim(cell_dir: Path) -> None:
    """Remove this process's claim on a cell (never another's). Failing to remove it is
    harmless: a claim outlives its process only as a stale one."""
    path = cell_dir / CLAIM_FILE
    _HELD.discard(path)
    text = _read_claim_text(path)
    claim = _parse_claim(text) if text is not None else None
    if claim is not None and claim.is_mine():
        with suppress(OSError):
            path.unlink()


def remove_stale_claim(cell_dir: Path) -> None:
    """Drop a dead process's claim on a cell (left when a run was killed after writing the
    cell's rows and before removing its claim). Only tidiness: a read-only folder keeps it."""
    path = cell_dir / CLAIM_FILE
    text = _read_claim_text(path)
    if text is None or _live_holder(path, text) is not None:
        return
    with suppress(OSError), file_lock(cell_dir / CLAIM_LOCK):
        if _read_claim_text(path) == text:
            path.unlink(missing_ok=True)
