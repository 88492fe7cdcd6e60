"""Run a grid: every cell trained once, written atomically, skipped when already done.

The local executor runs cells in this process (`jobs=1`) or in a pool of worker processes.
Each worker keeps its corpora and device tensors across cells. Each cell writes its own
folder; only the parent process rebuilds the merged `results.csv`.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imerbench import __version__
from imerbench.batch import SplitData
from imerbench.corpus import Corpus, Fold, without_validation
from imerbench.datasets import DatasetInfo, load_dataset, resolve_dataset
from imerbench.errors import ImerbenchError
from imerbench.grid import Cell, Grid
from imerbench.masks import MaskSpec, MaskStore, realized_missing_rate
from imerbench.method import Method
from imerbench.registry import create_method
from imerbench.results import SCHEMA_VERSION, ResultStore, atomic_write_text
from imerbench.training import CellFailure, TrainOutcome, train_cell

MERGE_INTERVAL_S = 30.0  # how often a running grid rebuilds results.csv


@dataclass
class RunOptions:
    """How to run a grid (not what: that is the grid)."""

    out: Path
    device: str = "auto"
    jobs: int = 1  # 0: automatic
    retry_failed: bool = False
    save_weights: bool = True
    missing_features: str = "refuse"

    def resolved_jobs(self) -> int:
        """Automatic: one single-threaded process per core on CPU (tiny models use one
        core badly), one process on a GPU."""
        if self.jobs > 0:
            return self.jobs
        return 1 if resolve_device(self.device).type == "cuda" else max(1, os.cpu_count() or 1)


@dataclass
class CellReport:
    """What the CLI prints for a finished (or skipped) cell."""

    cell: Cell
    status: str  # ok | failed | skipped
    summary: str = ""
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ImerbenchError(f"device '{text}' is not valid; use auto, cpu or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ImerbenchError(f"device '{text}' asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ImerbenchError(
                f"device '{text}': only {torch.cuda.device_count()} CUDA device(s) here"
            )
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


@cache
def code_version() -> str:
    """The package version, with the git commit when run from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def cell_method(cell: Cell) -> Method:
    """The cell's method, configured for its dataset profile, with the epoch override."""
    info = resolve_dataset(cell.dataset)
    overrides = dict(cell.method.overrides)
    method = create_method(cell.method.name, info.profile, **overrides)
    if cell.epochs is not None:
        scale_epochs(method, cell.epochs)
    return method


def scale_epochs(method: Method, epochs: int) -> None:
    """Override the epoch count; a stage switch moves with it (never to epoch 0 of 1)."""
    old = method.hp["epochs"]
    method.hp["epochs"] = epochs
    if "stage_epoch" in method.hp:
        scaled = round(method.hp["stage_epoch"] * epochs / old)
        method.hp["stage_epoch"] = min(max(scaled, 1 if epochs > 1 else 0), epochs - 1)


def cell_config(cell: Cell, method: Method, grid: Grid) -> dict[str, Any]:
    """Everything that determines the cell's rows (its hash names the cell folder)."""
    return {
        "schema": SCHEMA_VERSION,
        "method": cell.method.name,
        "label": cell.method.label,
        "hparams": method.hp,
        "dataset": cell.dataset,
        "widths": grid.widths if resolve_dataset(cell.dataset).synthetic else None,
        "fold": cell.fold,
        "mask": str(cell.mask),
        "seed": cell.seed,
        "protocol": cell.protocol,
    }


def config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_folder(store: ResultStore, cell: Cell, digest: str) -> Path:
    name = f"fold{cell.fold}-{cell.mask.key}-seed{cell.seed}-{digest[:8]}"
    return store.cell_dir(cell.dataset, cell.method.label, name)


class Workspace:
    """A worker's caches: corpora, their device tensors and the stored masks."""

    def __init__(self, grid: Grid, options: RunOptions) -> None:
        self.grid = grid
        self.options = options
        self.device = resolve_device(options.device)
        self.masks = MaskStore(options.out / "masks")
        self._corpora: dict[str, Corpus] = {}
        self._splits: dict[tuple[Any, ...], SplitData] = {}

    def corpus(self, dataset: str) -> Corpus:
        if dataset not in self._corpora:
            self._corpora[dataset] = load_dataset(
                dataset,
                self.grid.data_root,
                missing_features=self.options.missing_features,
                widths=self.grid.widths,
            )
        return self._corpora[dataset]

    def fold(self, info: DatasetInfo, corpus: Corpus, k: int, protocol: str) -> Fold:
        fold = corpus.fold(k)
        if protocol == "paper":
            merged = without_validation(fold)
            return merged if info.paper_merges_val else Fold(fold.train, fold.val[:0], fold.test)
        return fold

    def splits(self, cell: Cell, method: Method) -> dict[str, SplitData]:
        """Device tensors of the cell's splits, with the stored evaluation masks set."""
        info = resolve_dataset(cell.dataset)
        corpus = self.corpus(cell.dataset)
        fold = self.fold(info, corpus, cell.fold, cell.protocol)
        pad_to = corpus.pad_length if method.fixed_length else None
        out = {}
        for split in ("train", "val", "test"):
            dialogues = fold.get(split)
            if split == "val" and len(dialogues) == 0:
                continue
            key = (cell.dataset, cell.fold, cell.protocol, split, pad_to)
            if key not in self._splits:
                self._splits[key] = SplitData(corpus, dialogues, self.device, pad_to=pad_to)
            data = self._splits[key]
            if split != "train":
                data.set_mask(self.masks.get(corpus, cell.fold, split, cell.mask, cell.seed))
            out[split] = data
        return out


def outcome_rows(
    cell: Cell, outcome: TrainOutcome, base: dict[str, Any], realized: float
) -> list[dict[str, Any]]:
    """One row per (selection, condition, output, metric) of a finished cell."""
    rows = []
    for selected in outcome.selected.values():
        scored = {"mask": selected.test, **selected.conditions}
        for condition, scores in scored.items():
            for output, values in scores.items():
                for metric, value in values.items():
                    rows.append(
                        base
                        | {
                            "selection": selected.selection,
                            "condition": condition,
                            "output": output,
                            "metric": metric,
                            "value": value,
                            "epoch": selected.epoch,
                            "realized_missing_rate": realized,
                            "status": "ok",
                            "error": "",
                        }
                    )
    return rows


def nominal_missing_rate(mask: MaskSpec) -> float:
    if mask.rate is not None:
        return mask.rate
    if mask.condition is not None:
        return 1.0 - len(mask.condition) / 3
    assert mask.rates is not None
    return float(np.mean(mask.rates))


def run_cell(cell: Cell, ws: Workspace) -> CellReport:
    """Train one cell and write its folder; a failure becomes a `failed` row, not a crash."""
    store = ResultStore(ws.options.out)
    method = cell_method(cell)
    config = cell_config(cell, method, ws.grid)
    digest = config_hash(config)
    folder = cell_folder(store, cell, digest)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    info = resolve_dataset(cell.dataset)
    base: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "method": cell.method.label,
        "dataset": cell.dataset,
        "fold": cell.fold,
        "missing_rate": nominal_missing_rate(cell.mask),
        "mask": str(cell.mask),
        "seed": cell.seed,
        "epochs": method.hp["epochs"],
        "device": describe_device(ws.device),
        "config_hash": digest,
        "code_version": code_version(),
    }
    start = time.perf_counter()
    log_path = folder / "log.txt"
    with log_path.open("w", encoding="utf-8") as log_file:

        def log(message: str) -> None:
            log_file.write(f"{time.strftime('%H:%M:%S')} {message}\n")
            log_file.flush()

        log(f"cell {cell.describe()} ({cell.protocol} protocol) on {base['device']}")
        log(f"config {json.dumps(config, sort_keys=True, default=str)}")
        try:
            splits = ws.splits(cell, method)
            realized = realized_missing_rate(
                ws.masks.get(ws.corpus(cell.dataset), cell.fold, "test", cell.mask, cell.seed)
            )
            outcome = train_cell(
                method,
                ws.corpus(cell.dataset),
                splits,
                fold=cell.fold,
                mask=cell.mask,
                seed=cell.seed,
                primary=info.primary_metric,
                log=log,
            )
        except (CellFailure, ImerbenchError, RuntimeError, ValueError, FloatingPointError) as exc:
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            log(traceback.format_exc())
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            row = base | {
                "selection": "",
                "condition": "",
                "output": "",
                "metric": "",
                "value": math.nan,
                "epoch": "",
                "realized_missing_rate": math.nan,
                "train_seconds": time.perf_counter() - start,
                "parameters": "",
                "status": "failed",
                "error": message,
            }
            store.write_cell(folder, [row])
            return CellReport(cell, "failed", message, time.perf_counter() - start, [row])
        base |= {"train_seconds": outcome.train_seconds, "parameters": outcome.parameters}
        rows = outcome_rows(cell, outcome, base, realized)
        where = {"data_root": ws.grid.data_root, "missing_features": ws.options.missing_features}
        write_artifacts(folder, config | where, outcome, ws.options.save_weights)
        store.write_cell(folder, rows)  # last: the cell counts as done from here
    primary = info.primary_metric
    shown = [
        f"{sel} {primary} {s.test['fused'][primary]:.4f} (epoch {s.epoch + 1})"
        for sel, s in outcome.selected.items()
    ]
    return CellReport(cell, "ok", ", ".join(shown), time.perf_counter() - start, rows)


def write_artifacts(
    folder: Path, config: dict[str, Any], outcome: TrainOutcome, save_weights: bool
) -> None:
    """The config, per-epoch curves, diagnostics and selected weights of a cell."""
    meta = config | {
        "diagnostics": outcome.diagnostics,
        "selected_epochs": {k: s.epoch for k, s in outcome.selected.items()},
    }
    atomic_write_text(folder / "cell.json", json.dumps(meta, indent=2, default=str))
    lines = ["epoch,stage,split,condition,output,metric,value"]
    lines += [",".join(map(str, row)) for row in outcome.history]
    atomic_write_text(folder / "curves.csv", "\n".join(lines) + "\n")
    if save_weights:
        for name, selected in outcome.selected.items():
            path = folder / f"weights-{name}.pt"
            tmp = path.with_suffix(".pt.tmp")
            torch.save({k: v.cpu() for k, v in selected.state.items()}, tmp)
            os.replace(tmp, path)


def remove_stale_temporaries(folder: Path) -> None:
    """Half-written files of a killed run (never read: only complete files are renamed in)."""
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    for stale in folder.glob("*.pt.tmp"):
        stale.unlink(missing_ok=True)


def pending_cells(grid: Grid, options: RunOptions) -> tuple[list[Cell], list[Cell]]:
    """(cells to run, cells already finished), validating every cell's method first."""
    store = ResultStore(options.out)
    todo, done = [], []
    for cell in grid.cells():
        method = cell_method(cell)  # unknown methods and bad hyper-parameters fail here
        folder = cell_folder(store, cell, config_hash(cell_config(cell, method, grid)))
        status = store.status(folder)
        if status == "ok" or (status == "failed" and not options.retry_failed):
            done.append(cell)
        else:
            todo.append(cell)
    return todo, done


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


def _worker_init(grid: Grid, options: RunOptions, threads: int, parent: int) -> None:
    global _WORKSPACE
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    _WORKSPACE = Workspace(grid, options)


def _worker_run(cell: Cell) -> CellReport:
    assert _WORKSPACE is not None
    return run_cell(cell, _WORKSPACE)


def run_grid(
    grid: Grid,
    options: RunOptions,
    on_cell: Callable[[CellReport], None] = lambda _: None,
) -> ResultStore:
    """Run (or resume) a grid; returns the store whose results.csv is up to date."""
    options.out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(options.out)
    resolve_device(options.device)  # fail before any work
    todo, done = pending_cells(grid, options)
    ws = Workspace(grid, options)
    for dataset in grid.datasets:  # bad data fails here, once, before any training
        ws.corpus(dataset)
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
            store.merge()
            last_merge = time.monotonic()

    if jobs <= 1 or len(todo) <= 1:
        for cell in todo:
            on_cell(run_cell(cell, ws))
            refresh()
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = get_context("spawn")
        with ProcessPoolExecutor(
            jobs,
            mp_context=context,
            initializer=_worker_init,
            initargs=(grid, options, threads, os.getpid()),
        ) as pool:
            running = {pool.submit(_worker_run, cell) for cell in todo}
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    on_cell(future.result())
                refresh()
    store.merge()
    return store


def estimate_seconds(cells: list[Cell], ws: Workspace, trials: int = 3) -> dict[Cell, float]:
    """Rough time per cell, from timing a few real training and evaluation steps per
    (method, dataset): steps per epoch x epochs, plus one validation and one test pass."""
    from imerbench.training import data_spec, evaluate

    timed: dict[tuple[str, str], float] = {}
    out = {}
    for cell in cells:
        key = (cell.method.label, cell.dataset)
        method = cell_method(cell)
        if key not in timed:
            corpus = ws.corpus(cell.dataset)
            splits = ws.splits(cell, method)
            train = splits["train"]
            torch.manual_seed(0)
            model = method.build(data_spec(corpus)).to(ws.device)
            optimizer = method.configure_optimizer(model)
            stage = method.stages[-1]
            size, complete = method.hp["batch_size"], method.needs_complete
            batches = list(train.batches(size, None, method.fixed_length, complete=complete))
            steps = 0
            begin = time.perf_counter()
            for batch in (batches * trials)[: trials + 1]:
                if steps == 1:
                    begin = time.perf_counter()  # the first step warms up
                loss = method.loss(model, model(batch, stage), batch, stage)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
            step = (time.perf_counter() - begin) / max(steps - 1, 1)
            begin = time.perf_counter()
            evaluate(model, method, splits["test"], stage, corpus.task)
            test_pass = time.perf_counter() - begin
            val = splits.get("val")
            ratio = (val.num_utterances / splits["test"].num_utterances) if val else 0.0
            timed[key] = len(batches) * step + test_pass * (1 + ratio)  # val + oracle test
        out[cell] = timed[key] * method.hp["epochs"]
    return out
