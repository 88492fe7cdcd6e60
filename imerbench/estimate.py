"""The dry run's time estimate, from a short measured probe of each distinct method shape.

A probe builds the method's model (a stack's models, as a stack, on a GPU) on the cells'
data, times two training steps after one of warm-up (`training.train_step`, the loop's own
step) and one evaluation pass after one of warm-up. A cell then costs, per epoch, its
training batches, a validation pass with the stored mask and one per modality (the training
curves) and a test pass (the oracle); at the end, a test pass per forced subset. Stacks go in
order to the first free of `jobs` workers.
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
from imerbench.data import MODALITIES, SUBSETS, resolve_dataset
from imerbench.evaluation import predict_members
from imerbench.grid import Grid
from imerbench.method import RunContext
from imerbench.plan import PlannedCell, RunOptions, Stack, plan_grid
from imerbench.step import (
    autocast,
    build_stack,
    member_batches,
    padded_training,
    train_step,
)
from imerbench.stopping import Clock
from imerbench.training import CURVE_EVERY

# Epochs a stage trains, per epoch of patience, when it stops on a plateau: the quick grid's
# stages took 2.9-3.3 x patience (3) on average (2-core CPU).
PLATEAU_EPOCHS = 3
WORKER_START_S = 3.0  # a spawned worker: Python, torch and the corpus (measured on a 2-core CPU)


@dataclass(frozen=True)
class Probe:
    """Measured costs of one method shape: a training step and an evaluated utterance."""

    step_s: float
    batches: int  # training batches per epoch
    utterance_s: float  # evaluation time per utterance


def probe(stack: Stack, ws: Workspace) -> Probe:
    """Time a stack's training step and evaluation (a stack of one: a cell alone); the costs
    returned are a member's share."""
    first = stack[0]
    method, cell = first.method, first.cell
    corpus = ws.corpus(cell.dataset)
    members = [ws.member(p) for p in stack]
    train = members[0].splits["train"]
    views, model, optimizer = build_stack(method, corpus, members, cell.fold, ws.device)
    stage = method.stages[-1]
    ctxs = [RunContext.for_metric(resolve_dataset(cell.dataset).primary_metric) for _ in stack]
    amp = partial(autocast, ws.device, ws.grid.precision)
    fixed = padded_training(method)
    streams = [member_batches(method, corpus, m, cell.fold, 0, None, fixed) for m in members]

    def clock() -> float:
        if ws.device.type == "cuda":
            torch.cuda.synchronize(ws.device)  # kernels run asynchronously
        return time.perf_counter()

    timed = []
    for k, batches in zip(range(3), zip(*streams, strict=True), strict=False):
        begin = clock()
        train_step(method, model, optimizer, batches, [stage] * len(stack), ctxs, amp, views=views)
        if k:  # the first step warms up
            timed.append(clock() - begin)
    step = sum(timed) / len(timed) if timed else 0.0
    datas = [m.splits.get("val") or m.splits["test"] for m in members]
    with amp():
        predict_members(model, method, datas, stage)  # warm-up
        begin = clock()
        predict_members(model, method, datas, stage)
        per_utterance = (clock() - begin) / max(datas[0].num_utterances, 1)
    steps = -(-train.num_dialogues // method.hp["batch_size"])
    return Probe(step / len(stack), steps, per_utterance / len(stack))


def split_sizes(planned: PlannedCell, ws: Workspace) -> tuple[int, int]:
    """Utterances of the cell's validation and test splits (validation: 0 without one)."""
    corpus = ws.corpus(planned.cell.dataset)
    info = resolve_dataset(planned.cell.dataset)
    fold = ws.fold(info, corpus, planned.cell.fold, planned.cell.protocol)
    return len(corpus.utterances(fold.val)), len(corpus.utterances(fold.test))


def stage_epochs(planned: PlannedCell, capped: bool = False) -> list[int]:
    """Epochs each stage is expected to train: its cap where stopping is fixed (or
    `capped`), else about `PLATEAU_EPOCHS` x patience, what the quick grid's stages took
    (`imerbench table --convergence`), within the cap."""
    method, watch = planned.method, planned.cell.protocol != "paper"
    clock = Clock.for_method(method.stages, method.hp, True, watch)
    if capped or not clock.patience:
        return list(clock.caps)
    return [min(cap, PLATEAU_EPOCHS * clock.patience) for cap in clock.caps]


def cell_seconds(
    planned: PlannedCell, measured: Probe, sizes: tuple[int, int], capped: bool = False
) -> float:
    """Training steps and the validation passes (with the modality curves every
    `CURVE_EVERY` epochs) every epoch; the test split every epoch of the last stage; the
    selected weights on every forced subset at the end."""
    n_val, n_test = sizes
    epochs = stage_epochs(planned, capped)
    per_epoch = measured.batches * measured.step_s
    per_epoch += measured.utterance_s * n_val * (1 + len(MODALITIES) / CURVE_EVERY)
    test = measured.utterance_s * n_test * epochs[-1]
    final = measured.utterance_s * n_test * (1 + len(SUBSETS))
    return sum(epochs) * per_epoch + test + final


def estimate_seconds(
    stacks: Sequence[Stack],
    ws: Workspace,
    threads: int = 1,
    probe_stacks: bool | None = None,
    capped: bool = False,
    probes: dict[tuple[str, str, str, int], Probe] | None = None,
) -> dict[PlannedCell, float]:
    """Seconds per cell, from one probe per (method, dataset, protocol, stack size), run
    with the `threads` a worker would have. On a CPU a stack is probed as one cell alone (a
    stack's gain there is small, and probing stacks of 8 would take most of the dry run's
    5 s); on a GPU, where stacking is the gain, as the stack it is (`probe_stacks`: either
    way, whatever the device). `capped`: as if every stage ran to its epoch cap. `probes`:
    measurements to reuse, and to add to."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        probes = {} if probes is None else probes
        out = {}
        for stack in stacks:
            whole = ws.device.type == "cuda" if probe_stacks is None else probe_stacks
            probed = stack if whole else stack[:1]
            c = stack[0].cell
            key = (c.method.label, c.dataset, c.protocol, len(probed))
            if key not in probes:
                probes[key] = probe(probed, ws)
            sizes = split_sizes(stack[0], ws)  # the same for every cell of a stack
            for planned in stack:
                out[planned] = cell_seconds(planned, probes[key], sizes, capped)
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
    probes: dict[tuple[str, str, str, int], Probe] = {}
    seconds = estimate_seconds(plan.stacks, ws, threads, probes=probes)
    most = estimate_seconds(plan.stacks, ws, threads, capped=True, probes=probes)
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
    longest = wall_seconds(plan.stacks, most, jobs)
    if longest > wall * 1.05:
        lines.append(
            f"(stages stopping on plateaus after ~{PLATEAU_EPOCHS} x patience epochs; "
            f"at most {longest / 60:.1f} min wall if every stage runs to its epoch cap)"
        )
    return lines
