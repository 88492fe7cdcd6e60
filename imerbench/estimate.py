"""The dry run's time estimate, from a short measured probe of each distinct method shape.

A probe builds the method's model on the cell's data, times two training steps after one of
warm-up (`training.train_step`, the loop's own step) and one evaluation pass after one of
warm-up. A cell then costs, per epoch, its training batches, a validation pass with the
stored mask and one per modality (the training curves) and a test pass (the oracle); at the
end, a test pass per forced subset. Stacks go in order to the first free of `jobs` workers.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from imerbench.compute import Workspace
from imerbench.data import MODALITIES, SUBSETS
from imerbench.evaluation import predict
from imerbench.grid import Grid
from imerbench.method import RunContext
from imerbench.plan import PlannedCell, RunOptions, Stack, plan_grid
from imerbench.training import autocast, data_spec, train_step

WORKER_START_S = 3.0  # a spawned worker: Python, torch and the corpus (measured on a 2-core CPU)


@dataclass(frozen=True)
class Probe:
    """Measured costs of one method shape: a training step and an evaluated utterance."""

    step_s: float
    batches: int  # training batches per epoch
    utterance_s: float  # evaluation time per utterance


def probe(planned: PlannedCell, ws: Workspace) -> Probe:
    method, cell = planned.method, planned.cell
    corpus = ws.corpus(cell.dataset)
    splits = ws.splits(planned)
    train = splits["train"]
    torch.manual_seed(0)
    model = method.build(data_spec(corpus)).to(ws.device)
    optimizer = method.configure_optimizer(model)
    stage = method.stages[-1]
    ctx = RunContext.for_metric("wa" if corpus.task == "classification" else "f1")
    amp = partial(autocast, ws.device, ws.grid.precision)
    size, complete = method.hp["batch_size"], method.needs_complete
    batches = train.batches(size, None, method.fixed_length, complete=complete)
    timed = []
    for k, batch in zip(range(3), batches, strict=False):
        begin = time.perf_counter()
        train_step(method, model, optimizer, [batch], stage, [ctx], amp)
        if k:  # the first step warms up
            timed.append(time.perf_counter() - begin)
    step = sum(timed) / len(timed) if timed else 0.0
    data = splits.get("val") or splits["test"]
    with amp():
        predict(model, method, data, stage)  # warm-up
        begin = time.perf_counter()
        predict(model, method, data, stage)
        per_utterance = (time.perf_counter() - begin) / max(data.num_utterances, 1)
    steps = -(-train.num_dialogues // size)
    return Probe(step, steps, per_utterance)


def cell_seconds(planned: PlannedCell, measured: Probe, ws: Workspace) -> float:
    splits = ws.splits(planned)
    val, test = splits.get("val"), splits["test"]
    n_val = val.num_utterances if val is not None else 0
    per_epoch = measured.batches * measured.step_s + measured.utterance_s * (
        n_val * (1 + len(MODALITIES)) + test.num_utterances
    )
    final = measured.utterance_s * test.num_utterances * (1 + len(SUBSETS))
    return planned.method.hp["epochs"] * per_epoch + final


def estimate_seconds(
    stacks: Sequence[Stack], ws: Workspace, threads: int = 1
) -> dict[PlannedCell, float]:
    """Seconds per cell, from one probe per (method, dataset, protocol), run with the
    `threads` a worker would have."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        probes: dict[tuple[str, str, str], Probe] = {}
        out = {}
        for stack in stacks:
            for planned in stack:
                c = planned.cell
                key = (c.method.label, c.dataset, c.protocol)
                if key not in probes:
                    probes[key] = probe(planned, ws)
                out[planned] = cell_seconds(planned, probes[key], ws)
        return out
    finally:
        torch.set_num_threads(previous)


def wall_seconds(stacks: Sequence[Stack], seconds: dict[PlannedCell, float], jobs: int) -> float:
    """The run's wall time: stacks handed in order to whichever of `jobs` workers is free."""
    costs = [sum(seconds[p] for p in stack) for stack in stacks]
    workers = [0.0] * max(1, min(jobs, len(costs)))
    for cost in costs:
        heapq.heappush(workers, heapq.heappop(workers) + cost)
    start = WORKER_START_S if len(workers) > 1 else 0.0
    return start + max(workers, default=0.0)


def plan_lines(grid: Grid, options: RunOptions) -> list[str]:
    """`imerbench run --dry-run`: the plan, stack by stack, and the estimate; writes nothing
    (masks are drawn in memory)."""
    plan = plan_grid(grid, options)
    ws = Workspace(grid, options, store_masks=False)
    jobs = max(1, min(options.resolved_jobs(), len(plan.stacks)))
    threads = max(1, (os.cpu_count() or 1) // jobs) if ws.device.type == "cpu" else 1
    seconds = estimate_seconds(plan.stacks, ws, threads)
    lines = []
    for stack in plan.stacks:
        c = stack[0].cell
        members = ", ".join(f"mr {p.cell.mask} seed {p.cell.seed}" for p in stack)
        cost = sum(seconds[p] for p in stack)
        lines.append(f"  {c.method.label} {c.dataset} fold {c.fold}: {members}  ~{cost:.0f} s")
    total, wall = sum(seconds.values()), wall_seconds(plan.stacks, seconds, jobs)
    stacks = len(plan.stacks)
    grouped = f", as {stacks} stack{'s' if stacks > 1 else ''}" if stacks < len(plan.todo) else ""
    lines.append(
        f"{len(plan.todo)} cells to run ({len(plan.done)} already finished) in "
        f"{options.out}{grouped}; estimated {total / 60:.1f} min of compute on {ws.device}, "
        f"{wall / 60:.1f} min wall with {jobs} job{'s' if jobs > 1 else ''}"
    )
    return lines
