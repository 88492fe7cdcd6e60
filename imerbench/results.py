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
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from imerbench.claims import file_lock
from imerbench.errors import ImerbenchError
from imerbench.files import atomic_write
from imerbench.grid import split_balance
from imerbench.registry import method_info

MERGE_LOCK = ".results.lock"  # serializes rebuilds of results.csv

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
    "selected_on",  # the metric the selections ranked epochs by (empty in older rows)
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
    text |= {"converged": str, "selected_on": str}
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
    if "selected_on" not in df.columns:  # older rows: not recorded
        df["selected_on"] = ""
    for column in ("ceiling_of", "paper_name", "selected_on"):
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
        # A balanced method's epochs go to its base (`late-fusion[epochs=3]+agm`), so that it
        # pairs with its base's cells of the same epochs only (`imerbench/balance_table.py`).
        balance = split_balance(str(method))
        head, tail = (balance[0], "+" + balance[1]) if balance else (str(method), "")
        name, _, inside = head.partition("[")
        inner = inside[:-1] + "," if inside else ""
        out.loc[rows, "method"] = name + "[" + inner + "epochs=" + epochs + "]" + tail
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
