"""Run a grid: every cell trained once, written atomically, skipped when already done.

The local executor runs cells in this process (`jobs=1`) or in a pool of worker processes.
Each worker keeps its corpora and device tensors across cells. Each cell writes its own
folder; only the parent process rebuilds the merged `results.csv`.

A process claims a cell before training it (`<cell>/claim`, see `results.claim_cell`), so
runs sharing an output folder never train one cell twice; the claim of a process that died
is stale and taken over. A disk that refuses a write (full, read-only) stops the run with
one line; the cells finished before stay, and a rerun completes the grid.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import hashlib
import io
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from multiprocessing import get_context
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imerbench import __version__
from imerbench.data import (
    DEFAULT_FEATURE_NAMES,
    Corpus,
    DatasetInfo,
    Fold,
    MaskSpec,
    MaskStore,
    SplitData,
    load_dataset,
    realized_missing_rate,
    resolve_dataset,
    resolve_feature_names,
    without_validation,
)
from imerbench.errors import ImerbenchError
from imerbench.files import atomic_write
from imerbench.grid import Cell, Grid
from imerbench.method import Method
from imerbench.registry import create_method
from imerbench.results import (
    SCHEMA_VERSION,
    ResultStore,
    claim_cell,
    release_claim,
    remove_stale_claim,
)
from imerbench.training import CellFailure, TrainOutcome, train_cell

MERGE_INTERVAL_S = 30.0  # how often a running grid rebuilds results.csv
# Automatic --jobs-per-device: concurrent cells per GPU. On one H200, 8 concurrent comp-ref
# cells gave 2.25x the cells per hour of one at a time; 4 is the cautious default, leaving
# each cell a quarter of the device's memory (real widths, large batches).
JOBS_PER_DEVICE = 4
CONTEXT_RESERVE = 0.1  # share of a shared GPU's memory left outside the workers' allocators
EXECUTORS = ("local", "ray")


@dataclass
class RunOptions:
    """How to run a grid (not what: that is the grid)."""

    out: Path
    device: str = "auto"
    jobs: int = 1  # 0: automatic
    retry_failed: bool = False
    save_weights: bool = True
    missing_features: str = "refuse"
    executor: str = "local"  # local | ray
    jobs_per_device: int = 0  # CUDA: worker processes sharing each device (0: automatic)

    def resolved_jobs(self) -> int:
        """Automatic: one single-threaded process per core on CPU (tiny models use one
        core badly); on CUDA, `resolved_jobs_per_device()` per device used. An explicit
        `jobs` is the total either way."""
        if self.jobs > 0:
            return self.jobs
        if resolve_device(self.device).type == "cuda":
            return self.resolved_jobs_per_device() * len(self.cuda_devices())
        return max(1, os.cpu_count() or 1)

    def resolved_jobs_per_device(self) -> int:
        """Cells sharing one GPU at once: a cell leaves a GPU mostly idle, so several
        overlap their kernels and host work (automatic: JOBS_PER_DEVICE)."""
        return self.jobs_per_device if self.jobs_per_device > 0 else JOBS_PER_DEVICE

    def cuda_devices(self) -> list[int]:
        """The CUDA device indices workers use: the one named (`cuda:N`), else every
        visible one."""
        device = resolve_device(self.device)
        if device.type != "cuda":
            return []
        return [device.index] if device.index is not None else list(range(device_count()))

    def worker_devices(self, workers: int) -> list[str]:
        """The device of each worker: CUDA devices round-robin, or the CPU."""
        devices = self.cuda_devices()
        if not devices:
            return [str(resolve_device(self.device))] * workers
        return [f"cuda:{i}" for i in assign_devices(workers, devices)]


def device_count() -> int:
    return torch.cuda.device_count()


def assign_devices(workers: int, devices: list[int]) -> list[int]:
    """Worker k runs on devices[k % len(devices)], so every device gets its share."""
    if not devices:
        raise ValueError("no device to assign workers to")
    return [devices[k % len(devices)] for k in range(workers)]


def memory_fraction(workers_on_device: int) -> float:
    """Each worker's share of its GPU's memory for the caching allocator. The CUDA
    contexts (a few hundred MB per process) live outside the allocator, so the shares
    leave a tenth of the device to them."""
    return (1.0 - CONTEXT_RESERVE) / max(workers_on_device, 1)


def limit_device_memory(device: torch.device, workers_on_device: int) -> None:
    """Cap this process's allocator on `device` when several workers share it: one cell that
    grows too much then fails on its own (out of memory) rather than starving the others."""
    if device.type == "cuda" and workers_on_device > 1:
        torch.cuda.set_per_process_memory_fraction(memory_fraction(workers_on_device), device)


@dataclass
class CellReport:
    """What the CLI prints for a finished (or skipped) cell."""

    cell: Cell
    status: str  # ok | failed | skipped | claimed (running in another process)
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


@cache
def code_state() -> dict[str, str]:
    """The full commit, and a hash of the uncommitted changes to tracked files, so that a
    `.dirty` code version still names the exact code ({} outside a checkout)."""
    here = Path(__file__).resolve().parent
    try:
        git = ["git", "-C", str(here)]
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        diff = subprocess.run(
            [*git, "diff", "HEAD"], capture_output=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    state = {"commit": commit}
    if diff:
        state["uncommitted_diff_sha256"] = hashlib.sha256(diff).hexdigest()
    return state


def provenance(device: torch.device) -> dict[str, Any]:
    """What a row needs beside its config to be rerun and compared: code, libraries,
    machine and command (cell.json holds it; rows carry the code version and device)."""
    import pandas

    return {
        "code_version": code_version(),
        **code_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "cuda": torch.version.cuda or "",
        "cudnn": str(torch.backends.cudnn.version() or "") if device.type == "cuda" else "",
        "device": describe_device(device),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "command": sys.argv,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_context(ws: Workspace, digest: str) -> dict[str, Any]:
    """The cell.json entries beside the config: where the data came from, the config's
    hash (the rows' `config_hash`) and the provenance."""
    return {
        "data_root": ws.grid.data_root,
        "missing_features": ws.options.missing_features,
        "precision": ws.grid.precision,
        "config_hash": digest,
        "provenance": provenance(ws.device),
    }


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
    info = resolve_dataset(cell.dataset)
    config = {
        "schema": SCHEMA_VERSION,
        "method": cell.method.name,
        "label": cell.method.label,
        "hparams": method.hp,
        "dataset": cell.dataset,
        "widths": grid.widths if info.synthetic else None,
        "fold": cell.fold,
        "mask": str(cell.mask),
        "seed": cell.seed,
        "protocol": cell.protocol,
    }
    if grid.precision != "fp32":  # absent for fp32: existing fp32 cell folders still resume
        config["precision"] = grid.precision
    features = resolve_feature_names(grid.features)
    if features != DEFAULT_FEATURE_NAMES and not info.synthetic:  # absent by default, as above
        config["features"] = features
    return config


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
                feature_names=self.grid.features,
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


@dataclass
class CellResult:
    """A computed cell not yet written: its rows (in the report) and the other files of its
    folder, so that one process can write every cell (the Ray executor's driver)."""

    report: CellReport
    digest: str
    files: dict[str, str | bytes] = field(default_factory=dict)  # name -> content


def log_line(message: str) -> str:
    return f"{time.strftime('%H:%M:%S')} {message}\n"


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError))


def failure_message(exc: BaseException, limit: int = 500) -> str:
    """A failed cell's `error`, on one line; out-of-memory errors say so first, so that
    they read the same on the CPU and on CUDA."""
    detail = " ".join(str(exc).split())
    if is_out_of_memory(exc):
        message = f"out of memory: {detail or type(exc).__name__}"
    else:
        message = f"{type(exc).__name__}: {detail}"
    return message if len(message) <= limit else message[: limit - 3] + "..."


def free_memory(exc: BaseException, device: torch.device) -> None:
    """After an out-of-memory error, drop what the failed cell still holds (its tensors
    live on in the traceback's frames) so that the next cell starts with the memory free."""
    exc.__traceback__ = None
    if exc.__context__ is not None:
        exc.__context__.__traceback__ = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def row_base(cell: Cell, method: Method, digest: str, device: str, attempts: int) -> dict[str, Any]:
    """The columns every row of a cell shares."""
    return {
        "schema": SCHEMA_VERSION,
        "method": cell.method.label,
        "dataset": cell.dataset,
        "fold": cell.fold,
        "missing_rate": nominal_missing_rate(cell.mask),
        "mask": str(cell.mask),
        "seed": cell.seed,
        "epochs": method.hp["epochs"],
        "device": device,
        "config_hash": digest,
        "code_version": code_version(),
        "attempts": attempts,
    }


def failed_row(base: dict[str, Any], message: str, seconds: float) -> dict[str, Any]:
    """The one row of a cell that failed."""
    return base | {
        "selection": "",
        "condition": "",
        "output": "",
        "metric": "",
        "value": math.nan,
        "epoch": "",
        "realized_missing_rate": math.nan,
        "train_seconds": seconds,
        "parameters": "",
        "status": "failed",
        "error": message,
    }


def compute_cell(
    cell: Cell, ws: Workspace, log: Callable[[str], None], attempts: int = 1
) -> CellResult:
    """Train one cell without touching its folder; a failure becomes a `failed` row, not a
    crash. `attempts`: how many times the cell has been started, this time included."""
    method = cell_method(cell)
    config = cell_config(cell, method, ws.grid)
    digest = config_hash(config)
    info = resolve_dataset(cell.dataset)
    base = row_base(cell, method, digest, describe_device(ws.device), attempts)
    start = time.perf_counter()
    precision = ws.grid.precision
    log(f"cell {cell.describe()} ({cell.protocol} protocol) on {base['device']}, {precision}")
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
            precision=precision,
            log=log,
        )
    except (
        CellFailure,
        ImerbenchError,
        RuntimeError,
        ValueError,
        FloatingPointError,
        MemoryError,
    ) as exc:
        log(traceback.format_exc())
        message = failure_message(exc)
        if is_out_of_memory(exc):
            free_memory(exc, ws.device)
        row = failed_row(base, message, time.perf_counter() - start)
        report = CellReport(cell, "failed", message, time.perf_counter() - start, [row])
        meta = config | run_context(ws, digest) | {"error": message}
        return CellResult(report, digest, {"cell.json": json.dumps(meta, indent=2, default=str)})
    base |= {"train_seconds": outcome.train_seconds, "parameters": outcome.parameters}
    rows = outcome_rows(cell, outcome, base, realized)
    files = artifact_files(config | run_context(ws, digest), outcome, ws.options.save_weights)
    primary = info.primary_metric
    shown = [
        f"{sel} {primary} {s.test['fused'][primary]:.4f} (epoch {s.epoch + 1})"
        for sel, s in outcome.selected.items()
    ]
    report = CellReport(cell, "ok", ", ".join(shown), time.perf_counter() - start, rows)
    return CellResult(report, digest, files)


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


def artifact_files(
    config: dict[str, Any], outcome: TrainOutcome, save_weights: bool
) -> dict[str, str | bytes]:
    """The config, per-epoch curves, diagnostics and selected weights of a cell."""
    meta = config | {
        "diagnostics": outcome.diagnostics,
        "selected_epochs": {k: s.epoch for k, s in outcome.selected.items()},
    }
    files: dict[str, str | bytes] = {"cell.json": json.dumps(meta, indent=2, default=str)}
    lines = ["epoch,stage,split,condition,output,metric,value"]
    lines += [",".join(map(str, row)) for row in outcome.history]
    files["curves.csv"] = "\n".join(lines) + "\n"
    if save_weights:
        for name, selected in outcome.selected.items():
            buffer = io.BytesIO()
            torch.save({k: v.cpu() for k, v in selected.state.items()}, buffer)
            files[f"weights-{name}.pt"] = buffer.getvalue()
    return files


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
            remove_stale_claim(folder)  # a run killed between writing rows and releasing
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
        from imerbench.ray_executor import require_ray

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
        from imerbench.ray_executor import run_on_ray

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


def estimate_seconds(cells: list[Cell], ws: Workspace, trials: int = 3) -> dict[Cell, float]:
    """Rough time per cell, from timing a few real training and evaluation steps per
    (method, dataset): steps per epoch x epochs, plus one validation and one test pass."""
    from imerbench.training import autocast, data_spec, evaluate

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
                with autocast(ws.device, ws.grid.precision):
                    loss = method.loss(model, model(batch, stage), batch, stage)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
            step = (time.perf_counter() - begin) / max(steps - 1, 1)
            begin = time.perf_counter()
            with autocast(ws.device, ws.grid.precision):
                evaluate(model, method, splits["test"], stage, corpus.task)
            test_pass = time.perf_counter() - begin
            val = splits.get("val")
            ratio = (val.num_utterances / splits["test"].num_utterances) if val else 0.0
            timed[key] = len(batches) * step + test_pass * (1 + ratio)  # val + oracle test
        out[cell] = timed[key] * method.hp["epochs"]
    return out
