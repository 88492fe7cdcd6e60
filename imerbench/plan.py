"""Planning a grid: each cell resolved to its method, configuration, hash and folder, and
sorted into cells to run and cells already finished."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imerbench.data import DEFAULT_FEATURE_NAMES, resolve_dataset, resolve_feature_names
from imerbench.devices import JOBS_PER_DEVICE, assign_devices, device_count, resolve_device
from imerbench.grid import Cell, Grid
from imerbench.method import Method
from imerbench.registry import create_method
from imerbench.results import (
    SCHEMA_VERSION,
    ResultStore,
    remove_stale_claim,
)

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


def cell_method(cell: Cell) -> Method:
    """The cell's method, configured for its dataset profile, with the epoch override."""
    info = resolve_dataset(cell.dataset)
    method = create_method(cell.method.name, info.profile, **dict(cell.method.overrides))
    return method if cell.epochs is None else method.with_epochs(cell.epochs)


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
