"""Computing a cell: train and score it, and turn the outcome (or the failure) into its rows
and files, without touching its folder."""

from __future__ import annotations

import gc
import io
import json
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imerbench.data import (
    Corpus,
    DatasetInfo,
    Fold,
    MaskSpec,
    MaskStore,
    SplitData,
    SplitName,
    hold_out,
    holdout_mask,
    load_dataset,
    realized_missing_rate,
    resolve_dataset,
    without_validation,
)
from imerbench.devices import describe_device, resolve_device
from imerbench.errors import ImerbenchError
from imerbench.grid import Cell, Grid
from imerbench.method import Method
from imerbench.plan import PlannedCell, RunOptions, selection_metric
from imerbench.provenance import code_version, provenance
from imerbench.results import (
    SCHEMA_VERSION,
)
from imerbench.selection import TRAINING_ERRORS, CellFailure, HistoryRow, TrainOutcome
from imerbench.step import Member, WithinDraw
from imerbench.training import train_stack


@dataclass
class CellReport:
    """What the CLI prints for a finished (or skipped) cell."""

    cell: Cell
    status: str  # ok | failed | skipped | claimed (running in another process)
    summary: str = ""
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    failed_before: bool = False  # skipped: it failed in an earlier run (--retry-failed)

    @property
    def failed(self) -> bool:
        """The cell has no result: it failed now, or before and was not run again."""
        return self.status == "failed" or self.failed_before


class Workspace:
    """A worker's caches: corpora, their device tensors and the stored masks."""

    def __init__(self, grid: Grid, options: RunOptions, store_masks: bool = True) -> None:
        """`store_masks=False`: masks drawn in memory only (a dry run writes nothing)."""
        self.grid = grid
        self.options = options
        self.device = resolve_device(options.device)
        self.masks = MaskStore(options.out / "masks" if store_masks else None)
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

    def splits(self, planned: PlannedCell) -> dict[str, SplitData]:
        """The cell's splits on the device: validation and test as views under their stored
        evaluation masks, train as converted (each epoch takes its own view)."""
        cell = planned.cell
        info = resolve_dataset(cell.dataset)
        corpus = self.corpus(cell.dataset)
        fold = self.fold(info, corpus, cell.fold, cell.protocol)
        pad_to = corpus.pad_length if planned.method.fixed_length else None
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
                data = data.with_mask(self.eval_mask(planned, split))
            out[split] = data
        if planned.method.holdout > 0:
            out["train"], out["holdout"] = self.held_out(planned, corpus, fold.train, pad_to)
        return out

    def member(self, planned: PlannedCell) -> Member:
        """The cell as a member of its stack: its splits, mask, seed and, where its method
        holds training dialogues out, its training utterances' rows in the whole training
        split's mask draw (the masks of the method without the hold-out)."""
        cell = planned.cell
        splits = self.splits(planned)
        if planned.method.holdout <= 0:
            return Member(splits, cell.mask, cell.seed)
        corpus = self.corpus(cell.dataset)
        info = resolve_dataset(cell.dataset)
        fold = self.fold(info, corpus, cell.fold, cell.protocol)
        within = WithinDraw.of(corpus, fold.train, splits["train"].utterances)
        return Member(splits, cell.mask, cell.seed, within)

    def held_out(
        self, planned: PlannedCell, corpus: Corpus, train: np.ndarray, pad_to: int | None
    ) -> tuple[SplitData, SplitData]:
        """The training dialogues a method trains on and those it holds out (drawn from the
        cell, under a mask drawn as the training masks are); not cached: per seed."""
        cell = planned.cell
        stream = (corpus.name, cell.fold, cell.seed)
        kept, held = hold_out(train, planned.method.holdout, *stream)
        holdout = SplitData(corpus, held, self.device, pad_to=pad_to)
        groups = corpus.mask_groups(holdout.utterances)
        mask = holdout_mask(
            corpus.name, cell.fold, cell.mask, cell.seed, holdout.num_utterances, groups
        )
        return SplitData(corpus, kept, self.device, pad_to=pad_to), holdout.with_mask(mask)

    def eval_mask(self, planned: PlannedCell, split: SplitName) -> np.ndarray:
        """The stored evaluation mask of the cell's split (drawn on first use)."""
        cell = planned.cell
        return self.masks.get(self.corpus(cell.dataset), cell.fold, split, cell.mask, cell.seed)


def run_context(ws: Workspace, method: Method, digest: str) -> dict[str, Any]:
    """The cell.json entries beside the config: the method's registration metadata, where
    the data came from, the config's hash (the rows' `config_hash`) and the provenance."""
    return method.info.columns() | {
        "data_root": ws.grid.data_root,
        "missing_features": ws.options.missing_features,
        "precision": ws.grid.precision,
        "config_hash": digest,
        "provenance": provenance(ws.device),
    }


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
                            "epochs_trained": outcome.stopped.epochs_trained,
                            "stop_reason": outcome.stopped.reason,
                            "converged": outcome.stopped.converged,
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
        **method.info.columns(),
        "selected_on": selection_metric(cell, method),
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


def compute_stack(
    stack: Sequence[PlannedCell],
    ws: Workspace,
    logs: Sequence[Callable[[str], None]],
    attempts: int = 1,
    progress: Callable[[int, int, int, list[HistoryRow]], None] | None = None,
) -> list[CellResult]:
    """Train a stack's cells together (`imerbench/stacking.py`) without touching their
    folders, one log per cell; each result is what the cell alone would give. A failure
    becomes a `failed` row, not a crash: a member's own failure (a non-finite loss) fails
    it alone, an error of the whole stack fails every cell. `attempts`: how many times the
    stack has been started, this time included."""
    first = stack[0]
    method, cell = first.method, first.cell
    device = describe_device(ws.device)
    precision = ws.grid.precision
    beside = f", in a stack of {len(stack)}" if len(stack) > 1 else ""
    for planned, log in zip(stack, logs, strict=True):
        c = planned.cell
        log(f"cell {c.describe()} ({c.protocol} protocol) on {device}, {precision}{beside}")
        log(f"config {json.dumps(planned.config, sort_keys=True, default=str)}")
    start = time.perf_counter()
    outcomes: list[TrainOutcome | Exception]
    try:
        members = [ws.member(p) for p in stack]
        outcomes = list(
            train_stack(
                method,
                ws.corpus(cell.dataset),
                members,
                fold=cell.fold,
                primary=selection_metric(cell, method),
                precision=precision,
                logs=logs,
                progress=progress,
            )
        )
    except (ImerbenchError, *TRAINING_ERRORS) as exc:
        for log in logs:
            log(traceback.format_exc())
        if is_out_of_memory(exc):
            free_memory(exc, ws.device)
        if len(stack) > 1:  # the stack as a whole failed (out of memory, say): each alone
            for log in logs:
                log(f"the stack of {len(stack)} failed ({failure_message(exc)}); alone now")
            return [
                result
                for planned, log in zip(stack, logs, strict=True)
                for result in compute_stack([planned], ws, [log], attempts)
            ]
        outcomes = [exc]
    for outcome, log in zip(outcomes, logs, strict=True):
        if isinstance(outcome, CellFailure):
            log(f"failed: {outcome}")
    seconds = (time.perf_counter() - start) / len(stack)  # a cell's share of the stack
    return [
        cell_result(planned, outcome, ws, attempts, seconds, len(stack))
        for planned, outcome in zip(stack, outcomes, strict=True)
    ]


def cell_result(
    planned: PlannedCell,
    outcome: TrainOutcome | BaseException,
    ws: Workspace,
    attempts: int,
    seconds: float,
    stack_size: int,
) -> CellResult:
    """A computed cell's rows and files, or its one failed row."""
    cell, method, digest = planned.cell, planned.method, planned.digest
    base = row_base(cell, method, digest, describe_device(ws.device), attempts)
    meta = planned.config | run_context(ws, method, digest) | {"stack_size": stack_size}
    if isinstance(outcome, BaseException):
        message = failure_message(outcome)
        row = failed_row(base, message, seconds)
        report = CellReport(cell, "failed", message, seconds, [row])
        meta |= {"error": message}
        return CellResult(report, digest, {"cell.json": json.dumps(meta, indent=2, default=str)})
    base |= {"train_seconds": outcome.train_seconds, "parameters": outcome.parameters}
    realized = realized_missing_rate(ws.eval_mask(planned, "test"))
    rows = outcome_rows(cell, outcome, base, realized)
    files = artifact_files(meta, outcome, ws.options.save_weights)
    primary = resolve_dataset(cell.dataset).primary_metric
    shown = [
        f"{sel} {primary} {s.test['fused'][primary]:.4f} (epoch {s.epoch})"
        for sel, s in outcome.selected.items()
    ]
    stopped = outcome.stopped
    how = f"{stopped.epochs_trained} epochs, {stopped.reason}"
    how += " (not converged)" if stopped.converged is False else ""
    report = CellReport(cell, "ok", ", ".join(shown) + f"; {how}", seconds, rows)
    return CellResult(report, digest, files)


def artifact_files(
    config: dict[str, Any], outcome: TrainOutcome, save_weights: bool
) -> dict[str, str | bytes]:
    """The config, per-epoch curves, diagnostics and selected weights of a cell."""
    meta = config | {
        "diagnostics": outcome.diagnostics,
        "selected_epochs": {k: s.epoch for k, s in outcome.selected.items()},
        "selected_stages": {k: s.stage for k, s in outcome.selected.items()},
        "stopped": {
            "epochs_trained": outcome.stopped.epochs_trained,
            "reason": outcome.stopped.reason,
            "converged": outcome.stopped.converged,
        },
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
