"""The one training loop. Every method is trained and evaluated here, a cell alone or the
cells of a stack together (`imerbench/stacking.py`); the epochs to keep are chosen as
`imerbench/selection.py` describes, and scored there."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from imerbench.data import MODALITIES, Batch, Corpus, MaskSpec, SplitData, train_mask
from imerbench.evaluation import Scores, condition_mask, predict_members, score
from imerbench.method import DataSpec, Method, ModelOutput, RunContext
from imerbench.seeding import derive_seed, rng
from imerbench.selection import (
    CellFailure,
    HistoryRow,
    TrainOutcome,
    diagnose,
    finish_stack,
)
from imerbench.stacking import (
    Noise,
    can_stack,
    concat_batches,
    member_state,
    point_gradients,
    share_weights,
    split_output,
    stack_models,
    use_cell_dropout,
    use_generator,
)


def data_spec(corpus: Corpus) -> DataSpec:
    return DataSpec(
        task=corpus.task,
        num_classes=corpus.num_classes,
        widths=corpus.widths,
        pad_length=corpus.pad_length,
        num_speakers=len(corpus.speaker_names),
    )


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager[None]:
    """The forward passes' precision: `fp32` as written, or `bf16` autocast (weights, optimizer
    state and metrics stay in float32; bf16 has float32's range, so no loss scaling)."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision '{precision}' is not fp32 or bf16")


def float32_outputs(out: ModelOutput) -> ModelOutput:
    """The predictions in float32 for hooks that compute with them (ComP's modulator sums
    errors over a batch); under bf16 autocast the forward leaves them in bfloat16."""
    if out.fused.dtype == torch.float32 and all(
        h.dtype == torch.float32 for h in out.heads.values()
    ):
        return out
    return replace(out, fused=out.fused.float(), heads={m: h.float() for m, h in out.heads.items()})


def train_step(
    method: Method,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    stage: str,
    ctxs: Sequence[RunContext],
    amp: Callable[[], AbstractContextManager[None]] = nullcontext,
    live: Sequence[bool] | None = None,
    views: Sequence[nn.Module] | None = None,
) -> Tensor:
    """The one optimization step (the loop's, the estimator's and the speed benchmark's):
    forward, the method's loss, backward, its gradient hook, the update.

    `batches`, `ctxs`: one per member of a stack (one for a cell alone); each member's loss
    is computed on its own rows, with its own model (`views`: the members' models sharing
    the stack's weights, see `stacking.share_weights`; default: `model` itself, alone), and
    members not `live` (failed) add nothing. Returns the losses [K], detached, on the device
    (no host sync)."""
    views = views or [model]
    live = live or [True] * len(batches)
    batch = concat_batches(batches)
    with amp():
        out = model(batch, stage)
        outs = split_output(out, len(batches))
        losses = [
            method.loss(view, o, b, stage) for view, o, b in zip(views, outs, batches, strict=True)
        ]
    alive = [x for x, keep in zip(losses, live, strict=True) if keep]
    total = alive[0] if len(alive) == 1 else torch.stack(alive).sum()
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    hooked = type(method).after_backward is not Method.after_backward
    if hooked and views[0] is not model:  # a stack: members' models see their gradients
        point_gradients(views, model)
    for k, (view, o, b) in enumerate(zip(views, outs, batches, strict=True)):
        if live[k] and hooked:
            method.after_backward(view, float32_outputs(o), b, stage, ctxs[k])
    optimizer.step()
    return torch.stack([x.detach() for x in losses])


@dataclass(frozen=True)
class Member:
    """One cell of a stack: its splits (validation and test under its own stored masks; the
    train split is shared), its mask specification and its seed."""

    splits: dict[str, SplitData]
    mask: MaskSpec
    seed: int


def stream(corpus: Corpus, fold: int, member: Member) -> tuple[object, ...]:
    """What a member's random streams derive from: its cell."""
    return (corpus.name, fold, str(member.mask), member.seed)


def build_stack(
    method: Method, corpus: Corpus, members: Sequence[Member], fold: int, device: torch.device
) -> tuple[list[nn.Module], nn.Module]:
    """Each member's model, built alone from its own seed, and the model that trains them:
    the one model, or their stack (`stacking.stack_models`), with dropout drawn from each
    member's own stream where the method stacks."""
    models = []
    for member in members:
        torch.manual_seed(derive_seed("init", method.name, *stream(corpus, fold, member)))
        models.append(method.build(data_spec(corpus)).to(device))
    if not can_stack(method):
        return models, models[0]
    # Alone too, a stackable method trains as a stack (of one): the same batched kernels
    # whatever the stack's size, so a cell's numbers do not depend on it.
    model = stack_models(models)
    share_weights(models, model)  # the members' models: views of the stack, for hooks
    seeds = [derive_seed("dropout", method.name, *stream(corpus, fold, m)) for m in members]
    noise = Noise(seeds, device)
    use_cell_dropout(model, noise)
    for solo, generator in zip(models, noise.generators, strict=True):
        use_cell_dropout(solo, None)  # never trained on its own
        use_generator(solo, generator)  # a loss's own noise (see stacking.generator_of)
    return models, model


def padded_training(method: Method) -> bool:
    """Whether training batches are padded to a fixed length: the method's own need, or,
    for a stackable method, the split's longest dialogue, alone too, so that a member's
    tensors (and dropout draws) have one shape in every stack."""
    return method.fixed_length or can_stack(method)


def member_batches(
    method: Method,
    corpus: Corpus,
    member: Member,
    fold: int,
    epoch: int,
    groups: np.ndarray | None,
    fixed: bool,
) -> Iterator[Batch]:
    """A member's training batches of one epoch: its own training mask and data order."""
    train = member.splits["train"]
    mask = train_mask(
        corpus.name, fold, member.mask, member.seed, epoch, train.num_utterances, groups
    )
    order = rng("order", *stream(corpus, fold, member), epoch).permutation(train.num_dialogues)
    return train.with_mask(mask).batches(
        method.hp["batch_size"], order, fixed, complete=method.needs_complete
    )


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
) -> list[TrainOutcome | CellFailure]:
    """Train the cells of one stack (more than one only for a method that stacks, see
    `imerbench/stacking.py`); a member that fails fails alone. Each member's `splits` hold
    the train/val/test data on the device; `val` may be absent (paper protocol).

    `modality_curves`: also score validation with each single modality forced, every epoch
    (the per-modality training curves). `subsets`: score the selected weights (val, or the
    oracle's without val) on every forced subset and stored-mask pattern of the test split.
    `precision`: `bf16` runs every forward pass (training and evaluation) under bfloat16
    autocast; see `autocast`.
    """
    size = len(members)
    stacks = can_stack(method)
    if size > 1 and not stacks:
        raise ValueError(f"method '{method.name}' does not stack; train its cells one by one")
    logs = logs or [lambda _: None] * size
    train = members[0].splits["train"]
    device = train.device
    amp = partial(autocast, device, precision)
    task = corpus.task
    ctxs = [RunContext.for_metric(primary) for _ in members]  # each member's hook state
    models, model = build_stack(method, corpus, members, fold, device)
    views = models  # [model] itself where the method does not stack
    optimizer = method.configure_optimizer(model)
    epochs = method.hp["epochs"]
    last_stage = method.stages[-1]
    groups = corpus.speakers[train.utterances] if len(corpus.speaker_names) > 1 else None
    fixed = padded_training(method)
    history: list[list[HistoryRow]] = [[] for _ in members]
    best: list[dict[str, tuple[float, int, dict[str, Tensor], Scores]]] = [{} for _ in members]
    failed: dict[int, CellFailure] = {}

    def live() -> list[int]:
        return [k for k in range(size) if k not in failed]

    def consider(k: int, selection: str, value: float, epoch: int, test_scores: Scores) -> None:
        current = best[k].get(selection)
        if ctxs[k].better(value, None if current is None else current[0]):
            best[k][selection] = (value, epoch, member_state(model, k), test_scores)

    def scores_of(datas: list[SplitData]) -> list[Scores]:
        """Each member's scores on its own view of one split, in one pass of the stack."""
        with amp():
            preds = predict_members(model, method, datas, stage)
        return [
            score(p, d, task) if k in live() else {}
            for k, (p, d) in enumerate(zip(preds, datas, strict=True))
        ]

    has_val = "val" in members[0].splits
    val = [m.splits["val"] for m in members] if has_val else []
    test = [m.splits["test"] for m in members]
    # The single-modality validation views (the training curves), built once for the run.
    curves = {
        c: [d.with_mask(condition_mask(c, d.num_utterances)) for d in val]
        for c in (MODALITIES if modality_curves and has_val else ())
    }
    start = time.perf_counter()
    stage = None
    for epoch in range(epochs):
        if method.stage_of(epoch) != stage:
            stage = method.stage_of(epoch)
            for view, member_ctx in zip(views, ctxs, strict=True):
                method.on_stage_start(view, stage, member_ctx)
        model.train()
        loss_sums = torch.zeros(size, device=device)
        steps = 0
        streams_of_batches = [
            member_batches(method, corpus, m, fold, epoch, groups, fixed) for m in members
        ]
        alive = [k not in failed for k in range(size)]
        for batches in zip(*streams_of_batches, strict=True):
            loss_sums += train_step(
                method, model, optimizer, batches, stage, ctxs, amp, alive, views
            )
            steps += 1
        mean_losses = [float(x) / max(steps, 1) for x in loss_sums.tolist()]  # one host sync
        for k in live():
            if not math.isfinite(mean_losses[k]):
                failed[k] = CellFailure(
                    f"training loss became {mean_losses[k]} in epoch {epoch} ({stage})"
                )
            else:
                history[k].append((epoch, stage, "train", "mask", "fused", "loss", mean_losses[k]))
        if not live():
            break

        val_scores = scores_of(val) if has_val else [{} for _ in members]
        for k in live():
            method.on_epoch_end(views[k], epoch, stage, val_scores[k], ctxs[k])
        test_scores = scores_of(test) if oracle else [{} for _ in members]
        forced = {condition: scores_of(datas) for condition, datas in curves.items()}
        for k in live():
            for split, scores in (("val", val_scores[k]), ("test", test_scores[k])):
                for output, values in scores.items():
                    history[k].extend(
                        (epoch, stage, split, "mask", output, key, v) for key, v in values.items()
                    )
            for condition, per_member in forced.items():
                for output, values in per_member[k].items():
                    value = values[primary]
                    history[k].append((epoch, stage, "val", condition, output, primary, value))
            if val_scores[k] and stage == last_stage:
                consider(k, "val", val_scores[k]["fused"][primary], epoch, {})
            if oracle:
                consider(k, "test-oracle", test_scores[k]["fused"][primary], epoch, test_scores[k])
            shown = [f"loss {mean_losses[k]:.4f}"]
            shown += [
                f"{s} {primary} {sc['fused'][primary]:.4f}"
                for s, sc in (("val", val_scores[k]), ("test", test_scores[k]))
                if sc
            ]
            logs[k](f"epoch {epoch + 1}/{epochs} [{stage}] " + " ".join(shown))
    train_seconds = (time.perf_counter() - start) / size  # a member's share of the stack

    for k in live():  # a validation split that never gave a finite score: nothing to select
        if has_val and "val" not in best[k] and val[k].num_utterances:
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
        if "val" in selected:
            chosen, value = selected["val"], selected["val"].test["fused"][primary]
            logs[k](f"val selection: epoch {chosen.epoch + 1}, test {primary} {value:.4f}")
        chosen_k = selected.get("val") or selected.get("test-oracle")
        diagnostics = diagnose(method, model, views[k], test[k], chosen_k, subsets, amp)
        parameters = sum(p.numel() for p in views[k].parameters())
        out.append(
            TrainOutcome(selected, history[k], epochs, parameters, train_seconds, diagnostics)
        )
    return out
