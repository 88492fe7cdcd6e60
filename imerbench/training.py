"""The one training loop. Every method is trained and evaluated here, a cell alone or the
cells of a stack together (`imerbench/stacking.py`); each member's stages end on their own
(`imerbench/stopping.py`), and the epochs to keep are chosen as `imerbench/selection.py`
describes, and scored there."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import partial

import torch

from imerbench.data import MODALITIES, Corpus, MaskSpec, SplitData
from imerbench.evaluation import Scores, condition_mask, predict_members, score
from imerbench.method import Method, RunContext
from imerbench.metrics import METRICS
from imerbench.selection import Best, CellFailure, HistoryRow, TrainOutcome, diagnose, finish_stack
from imerbench.stacking import can_stack, member_state
from imerbench.step import (
    Member,
    autocast,
    build_stack,
    by_stage,
    member_batches,
    padded_training,
    train_step,
)
from imerbench.stopping import Clock

# The per-modality validation curves cost three validation passes; every other epoch
# (1, 3, 5, ...) draws the curves at a third less of an epoch's cost.
CURVE_EVERY = 2


def train_cell(
    method: Method,
    corpus: Corpus,
    splits: dict[str, SplitData],
    *,
    fold: int,
    mask: MaskSpec,
    seed: int,
    primary: str,
    oracle: bool = True,
    modality_curves: bool = True,
    subsets: bool = True,
    precision: str = "fp32",
    log: Callable[[str], None] = lambda _: None,
) -> TrainOutcome:
    """Train one cell (a stack of one, see `train_stack`); raises `CellFailure`."""
    (outcome,) = train_stack(
        method,
        corpus,
        [Member(splits, mask, seed)],
        fold=fold,
        primary=primary,
        oracle=oracle,
        modality_curves=modality_curves,
        subsets=subsets,
        precision=precision,
        logs=[log],
    )
    if isinstance(outcome, CellFailure):
        raise outcome
    return outcome


def train_stack(
    method: Method,
    corpus: Corpus,
    members: Sequence[Member],
    *,
    fold: int,
    primary: str,
    oracle: bool = True,
    modality_curves: bool = True,
    subsets: bool = True,
    precision: str = "fp32",
    logs: Sequence[Callable[[str], None]] | None = None,
    progress: Callable[[int, int, int, list[HistoryRow]], None] | None = None,
) -> list[TrainOutcome | CellFailure]:
    """Train the cells of one stack (more than one only for a method that stacks, see
    `imerbench/stacking.py`); a member that fails fails alone, and each member's stages end
    on its own validation signal (`imerbench/stopping.py`): a member that stopped costs
    nothing more, one in another stage trains in its own pass. Each member's `splits` hold
    the train/val/test data on the device; `val` may be absent (paper protocol).

    `modality_curves`: also score validation with each single modality forced, every
    `CURVE_EVERY` epochs (the per-modality training curves). `subsets`: score the selected
    weights (val, or the oracle's without val) on every forced subset and stored-mask
    pattern of the test split.
    `precision`: `bf16` runs every forward pass (training and evaluation) under bfloat16
    autocast; see `autocast`. `progress(k, epoch, epochs, rows)`: called after each epoch of
    member k with that epoch's curve rows (a progress bar's and the trackers' feed).
    """
    size = len(members)
    if size > 1 and not can_stack(method):
        raise ValueError(f"method '{method.name}' does not stack; train its cells one by one")
    logs = logs or [lambda _: None] * size
    train = members[0].splits["train"]
    device = train.device
    amp = partial(autocast, device, precision)
    task = corpus.task
    # Each member's hook state (and the training dialogues its method held out, if any).
    ctxs = [RunContext.for_metric(primary, m.splits.get("holdout")) for m in members]
    views, model, optimizer = build_stack(method, corpus, members, fold, device)
    epochs = method.hp["epochs"]
    groups = corpus.mask_groups(train.utterances)
    fixed = padded_training(method)
    has_val = "val" in members[0].splits
    higher = METRICS[primary].higher_is_better
    clocks = [Clock.for_method(method.stages, method.hp, higher, has_val) for _ in members]
    started: list[str | None] = [None] * size  # the stage each member last started
    history: list[list[HistoryRow]] = [[] for _ in members]
    best: list[Best] = [{} for _ in members]
    failed: dict[int, CellFailure] = {}
    seconds = [0.0] * size  # each member's share of the stack's time

    def training() -> list[int]:
        return [k for k in range(size) if k not in failed and not clocks[k].done]

    def consider(k: int, selection: str, value: float, epoch: int, test_scores: Scores) -> None:
        current = best[k].get(selection)
        if ctxs[k].better(value, None if current is None else current[0]):
            stage = clocks[k].stage
            best[k][selection] = (value, epoch, member_state(model, k), test_scores, stage)

    def scores_of(datas: Sequence[SplitData], ks: list[int]) -> dict[int, Scores]:
        """Each member's scores on its own view of one split: one pass per stage."""
        out: dict[int, Scores] = {}
        stages = [clocks[k].stage for k in range(size)]
        for stage, group in by_stage(stages, [k in ks for k in range(size)]).items():
            with amp():
                preds = predict_members(model, method, [datas[k] for k in group], stage, group)
            out.update({k: score(p, datas[k], task) for k, p in zip(group, preds, strict=True)})
        return out

    val = [m.splits["val"] for m in members] if has_val else []
    test = [m.splits["test"] for m in members]
    # The single-modality validation views (the training curves), built once for the run.
    curves = {
        c: [d.with_mask(condition_mask(c, d.num_utterances)) for d in val]
        for c in (MODALITIES if modality_curves and has_val else ())
    }
    for index in range(epochs):  # the random streams' epoch index, from 0
        epoch = index + 1  # what rows, logs and errors say: epochs count from 1
        now = training()
        first = [len(h) for h in history]  # where this epoch's curve rows start
        if not now:
            break
        start = time.perf_counter()
        for k in now:
            if started[k] != clocks[k].stage:
                started[k] = clocks[k].stage
                method.on_stage_start(views[k], clocks[k].stage, ctxs[k])
        model.train()
        live = [k in now for k in range(size)]
        stages = [clocks[k].stage for k in range(size)]
        loss_sums = torch.zeros(size, device=device)
        steps = 0
        streams = [
            member_batches(method, corpus, members[k], fold, index, groups, fixed) for k in now
        ]
        for batches in zip(*streams, strict=True):
            step_batches = [None] * size
            for k, b in zip(now, batches, strict=True):
                step_batches[k] = b
            loss_sums += train_step(
                method, model, optimizer, step_batches, stages, ctxs, amp, live, views
            )
            steps += 1
        mean_losses = [float(x) / max(steps, 1) for x in loss_sums.tolist()]  # one host sync
        for k in now:
            if not math.isfinite(mean_losses[k]):
                failed[k] = CellFailure(
                    f"training loss became {mean_losses[k]} in epoch {epoch} ({stages[k]})"
                )
            else:
                history[k].append(
                    (epoch, stages[k], "train", "mask", "fused", "loss", mean_losses[k])
                )
        now = [k for k in now if k not in failed]
        if not now:
            break

        val_scores = scores_of(val, now) if has_val else {k: {} for k in now}
        for k in now:
            method.on_epoch_end(views[k], epoch, stages[k], val_scores[k], ctxs[k])
        # The test split is scored in the last stage only (the fused head trains there): what
        # the test-oracle selection picks from.
        last = [k for k in now if clocks[k].last_stage] if oracle else []
        test_scores = {k: {} for k in now} | scores_of(test, last)
        sampled = (epoch - 1) % CURVE_EVERY == 0
        forced = {c: scores_of(datas, now) for c, datas in curves.items() if sampled}
        for k in now:
            for split, scores in (("val", val_scores[k]), ("test", test_scores[k])):
                for output, values in scores.items():
                    history[k].extend(
                        (epoch, stages[k], split, "mask", output, key, v)
                        for key, v in values.items()
                    )
            for condition, per_member in forced.items():
                for output, values in per_member[k].items():
                    value = values[primary]
                    history[k].append((epoch, stages[k], "val", condition, output, primary, value))
            if val_scores[k] and clocks[k].last_stage:
                consider(k, "val", val_scores[k]["fused"][primary], epoch, {})
            if test_scores[k]:
                consider(k, "test-oracle", test_scores[k]["fused"][primary], epoch, test_scores[k])
            shown = [f"loss {mean_losses[k]:.4f}"]
            shown += [
                f"{s} {primary} {sc['fused'][primary]:.4f}"
                for s, sc in (("val", val_scores[k]), ("test", test_scores[k]))
                if sc
            ]
            logs[k](f"epoch {epoch}/{epochs} [{stages[k]}] " + " ".join(shown))
            if progress is not None:
                progress(k, epoch, epochs, history[k][first[k] :])
            signal = method.stage_score(stages[k], val_scores[k], primary) if has_val else None
            reason = clocks[k].tick(signal)
            if reason and not clocks[k].done:
                logs[k](f"{stages[k]} stage ended ({reason}) after epoch {epoch}")
        share = (time.perf_counter() - start) / len(now)
        for k in now:
            seconds[k] += share

    for k in range(size):  # a validation split that never gave a finite score: nothing to select
        if k not in failed and has_val and "val" not in best[k] and val[k].num_utterances:
            failed[k] = CellFailure("validation never produced a finite score; nothing to select")
    ready = [k not in failed for k in range(size)]
    selections = finish_stack(
        method, model, views, test, best, ready, subsets=subsets, task=task, amp=amp
    )
    out: list[TrainOutcome | CellFailure] = []
    for k, selected in enumerate(selections):
        if k in failed:
            out.append(failed[k])
            continue
        stopped = clocks[k].stopped()
        how = f"{stopped.epochs_trained} epochs, stopped: {stopped.reason}"
        if stopped.converged is False:
            how += " (not converged: still improving at its cap)"
        logs[k](how)
        if "val" in selected:
            chosen, value = selected["val"], selected["val"].test["fused"][primary]
            logs[k](f"val selection: epoch {chosen.epoch}, test {primary} {value:.4f}")
        chosen_k = selected.get("val") or selected.get("test-oracle")
        diagnostics = diagnose(method, model, views[k], test[k], chosen_k, subsets, amp)
        parameters = sum(p.numel() for p in views[k].parameters())
        out.append(
            TrainOutcome(selected, history[k], epochs, parameters, seconds[k], diagnostics, stopped)
        )
    return out
