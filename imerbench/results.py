"""The tidy results store: one row per number, one folder per finished cell.

Layout of an output folder:
    results.csv                       the merged view of every cell's rows (rebuilt, atomic)
    masks/                            the stored validation/test masks
    cells/<dataset>/<method>/<cell>/  rows.csv (written last, atomically: the cell is done
                                      when it exists), log.txt, curves.csv, weights-*.pt

Everything else (leaderboards, plots, statistics) is computed from these rows.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from imerbench.errors import ImerbenchError

SCHEMA_VERSION = 1
# Add columns at the end, never rename: older results stay readable.
COLUMNS: tuple[str, ...] = (
    "schema", "method", "dataset", "fold", "missing_rate", "realized_missing_rate", "seed",
    "selection", "condition", "output", "metric", "value", "epoch", "epochs", "train_seconds",
    "parameters", "device", "config_hash", "code_version", "status", "error",
    "mask",  # added in schema 1: the cell's mask spec ("0.3", "at", "a=0.1,t=0.2,v=0.6")
)  # fmt: skip
ROWS_FILE = "rows.csv"
MERGED_FILE = "results.csv"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        pause = os.environ.get("IMERBENCH_TEST_PAUSE_WRITE")
        if pause:  # test hook: hold the half-finished write open so a kill can land here
            time.sleep(float(pause))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        atomic_write_text(cell_dir / ROWS_FILE, rows_to_csv(rows))

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
        """Rebuild results.csv from the cell files, atomically; return it."""
        df = self.read()
        atomic_write_text(self.merged_path, df.to_csv(index=False, lineterminator="\n"))
        return df


def read_rows(path: Path) -> pd.DataFrame:
    """A rows CSV, with columns added since it was written filled in."""
    df = pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"], dtype={"mask": str})
    if "mask" not in df.columns:  # older rows: the mask was always a missing rate
        df["mask"] = df["missing_rate"].map(lambda r: repr(float(r)) if pd.notna(r) else "")
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
