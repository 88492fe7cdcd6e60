"""Planning a grid: each cell resolved once to its method, configuration, hash and folder
(a `PlannedCell`, read-only from then on), sorted into cells to run and cells already
finished, and the cells to run grouped into stacks (cells trained together as one stack of
models, see `imerbench/stacking.py`)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imerbench.balance.compose import Balanced, balanced
from imerbench.data import DEFAULT_FEATURE_NAMES, resolve_dataset, resolve_feature_names
from imerbench.devices import JOBS_PER_DEVICE, assign_devices, device_count, resolve_device
from imerbench.frozen import FrozenDict
from imerbench.grid import Cell, Grid
from imerbench.method import Method
from imerbench.registry import create_method
from imerbench.results import SCHEMA_VERSION, ResultStore
from imerbench.stacking import can_stack

EXECUTORS = ("local", "ray")
# Automatic cells per stack: on a CPU a stack of 8 removes most of the per-operation overhead
# of small models; a GPU has room for more.
STACK_PER_DEVICE = {"cpu": 8, "cuda": 16}  # other devices: 8


@dataclass(frozen=True)
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
    stack: int = 0  # the most cells trained as one stack of models (0: automatic, 1: off)
    log_to: tuple[str, ...] = ()  # experiment trackers (`imerbench/trackers.py`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))  # a str from Python callers too

    def resolved_stack(self) -> int:
        """Cells per stack where a method stacks: the one given, else the device's default."""
        if self.stack > 0:
            return self.stack
        return STACK_PER_DEVICE.get(resolve_device(self.device).type, 8)

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
    if cell.method.balance is not None:
        method = balanced(method, cell.method.balance.name, dict(cell.method.balance.overrides))
    return method if cell.epochs is None else method.with_epochs(cell.epochs)


def selection_metric(cell: Cell, method: Method) -> str:
    """The metric a cell's selections rank epochs by: the dataset's primary metric, one for
    every method, except under the paper protocol, where the method's released code's
    (`Method.published_selection`) decides, as in the published runs."""
    info = resolve_dataset(cell.dataset)
    if cell.protocol == "paper":
        return method.published_selection.get(info.task, info.primary_metric)
    return info.primary_metric


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
    if cell.protocol == "paper":  # absent otherwise: existing default cells still resume
        config["selected_on"] = selection_metric(cell, method)
    if isinstance(method, Balanced):  # absent without a strategy, as above
        config["balance"] = {"strategy": method.strategy.name, "hparams": method.strategy.hp}
    if grid.precision != "fp32":  # absent for fp32: existing fp32 cell folders still resume
        config["precision"] = grid.precision
    if can_stack(method):  # its dropout and noise come from the cell's own generator (and
        config["streams"] = "per-cell"  # differ from older versions': never mixed with them)
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


@dataclass(frozen=True)
class PlannedCell:
    """A cell resolved once: its method (frozen hyper-parameters), the configuration that
    determines its rows, that configuration's hash and its folder."""

    cell: Cell
    method: Method = field(compare=False)
    config: FrozenDict = field(compare=False, repr=False)
    digest: str
    folder: Path

    def describe(self) -> str:
        return self.cell.describe()

    @property
    def stack_key(self) -> tuple[Any, ...]:
        """Cells with equal keys differ only in missing rate and seed: they may share a stack."""
        c = self.cell
        return (c.method.label, c.dataset, c.fold, c.protocol, c.epochs)


Stack = tuple[PlannedCell, ...]  # cells computed together; one cell where nothing stacks


@dataclass(frozen=True)
class Plan:
    """A grid's cells, planned: those to run, grouped into stacks, and those already done."""

    todo: tuple[PlannedCell, ...]
    done: tuple[PlannedCell, ...]
    stacks: tuple[Stack, ...]


def plan_cell(cell: Cell, grid: Grid, store: ResultStore) -> PlannedCell:
    method = cell_method(cell)  # unknown methods and bad hyper-parameters fail here
    config = FrozenDict(cell_config(cell, method, grid))
    digest = config_hash(config)
    return PlannedCell(cell, method, config, digest, cell_folder(store, cell, digest))


def group_stacks(cells: tuple[PlannedCell, ...], most: int) -> tuple[Stack, ...]:
    """Cells that may stack, group by group (in the order of each group's first cell), in
    stacks of at most `most` (1 for a method that does not stack), their sizes as even as
    possible (9 cells, at most 8: 5 and 4), so that workers get even shares."""
    groups: dict[tuple[Any, ...], list[PlannedCell]] = {}
    for planned in cells:
        groups.setdefault(planned.stack_key, []).append(planned)
    stacks: list[Stack] = []
    for group in groups.values():
        size = most if can_stack(group[0].method) else 1
        count = -(-len(group) // size)
        bounds = [round(k * len(group) / count) for k in range(count + 1)]
        stacks += [tuple(group[a:b]) for a, b in itertools.pairwise(bounds)]
    return tuple(stacks)


def plan_grid(grid: Grid, options: RunOptions) -> Plan:
    """Every cell of the grid planned, validating every cell's method first; reads the
    output folder, writes nothing."""
    store = ResultStore(options.out)
    todo, done = [], []
    for cell in grid.cells():
        planned = plan_cell(cell, grid, store)
        status = store.status(planned.folder)
        if status == "ok" or (status == "failed" and not options.retry_failed):
            done.append(planned)
        else:
            todo.append(planned)
    return Plan(tuple(todo), tuple(done), group_stacks(tuple(todo), options.resolved_stack()))
