"""The one training step, and what it trains: a cell alone or the cells of a stack
(`imerbench/stacking.py`), each member with its own data, random streams and stage."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from imerbench.data import Batch, Corpus, MaskSpec, SplitData, train_mask
from imerbench.method import DataSpec, Method, ModelOutput, RunContext
from imerbench.optim import StackAdam
from imerbench.seeding import derive_seed, rng
from imerbench.stacking import (
    Noise,
    can_stack,
    concat_batches,
    forward,
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


def by_stage(stages: Sequence[str], live: Sequence[bool]) -> dict[str, list[int]]:
    """The live members of each stage, in member order (a pass of the stack per stage)."""
    groups: dict[str, list[int]] = {}
    for k, (stage, keep) in enumerate(zip(stages, live, strict=True)):
        if keep:
            groups.setdefault(stage, []).append(k)
    return groups


def train_step(
    method: Method,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | StackAdam,
    batches: Sequence[Batch | None],
    stages: Sequence[str],
    ctxs: Sequence[RunContext],
    amp: Callable[[], AbstractContextManager[None]] = nullcontext,
    live: Sequence[bool] | None = None,
    views: Sequence[nn.Module] | None = None,
) -> Tensor:
    """The one optimization step (the loop's, the estimator's and the speed benchmark's):
    forward, the method's loss, backward, its gradient hook, the update.

    `batches`, `stages`, `ctxs`: one per member of a stack (one for a cell alone). Only
    `live` members train (the others, stopped or failed, cost nothing and keep their
    weights); members in different stages train in one pass of the stack per stage, then
    one update. Each member's loss is computed on its own rows, with its own model
    (`views`: the members' models sharing the stack's weights, see
    `stacking.share_weights`; default: `model` itself, alone). Returns the losses [K]
    (0 for members that did not train), detached, on the device (no host sync)."""
    views = views or [model]
    live = live or [True] * len(batches)
    hooked = type(method).after_backward is not Method.after_backward
    losses: list[Tensor | None] = [None] * len(batches)
    optimizer.zero_grad(set_to_none=True)
    for stage, group in by_stage(stages, live).items():
        mine = [b for k, b in enumerate(batches) if k in group]
        if any(b is None for b in mine):
            raise ValueError(f"members {group} train without a batch")
        with amp():
            outs = split_output(forward(model, concat_batches(mine), stage, group), len(group))
            group_losses = [
                method.loss(views[k], o, b, stage)
                for k, o, b in zip(group, outs, mine, strict=True)
            ]
        total = group_losses[0] if len(group_losses) == 1 else torch.stack(group_losses).sum()
        total.backward()
        for k, o, b in zip(group, outs, mine, strict=True):
            if hooked:
                method.after_backward(views[k], float32_outputs(o), b, stage, ctxs[k])
        for k, loss in zip(group, group_losses, strict=True):
            losses[k] = loss.detach()
    if isinstance(optimizer, StackAdam):
        optimizer.train_members(live)
    optimizer.step()
    done = next(x for x in losses if x is not None)
    return torch.stack([done.new_zeros(()) if x is None else x for x in losses])


@dataclass(frozen=True)
class WithinDraw:
    """Where a member trains on part of its training split (a method holding dialogues out):
    the whole split's mask draw (its utterance count and mask groups) and the rows of the
    member's training utterances in it, so each utterance it trains on has the mask it has
    in the cell of the method without the hold-out."""

    num_utterances: int
    groups: np.ndarray | None
    rows: np.ndarray

    @classmethod
    def of(cls, corpus: Corpus, dialogues: np.ndarray, utterances: np.ndarray) -> WithinDraw:
        """`utterances` (corpus indices) within the split of `dialogues`."""
        whole = corpus.utterances(dialogues)
        order = np.argsort(whole, kind="stable")
        rows = order[np.searchsorted(whole[order], utterances)]
        return cls(len(whole), corpus.mask_groups(whole), rows)


@dataclass(frozen=True)
class Member:
    """One cell of a stack: its splits (validation and test under its own stored masks; the
    train split is shared), its mask specification and its seed; `within`: its training
    split's place in the whole split's mask draw, if it holds dialogues out."""

    splits: dict[str, SplitData]
    mask: MaskSpec
    seed: int
    within: WithinDraw | None = None


def stream(corpus: Corpus, fold: int, member: Member) -> tuple[object, ...]:
    """What a member's random streams derive from: its cell."""
    return (corpus.name, fold, str(member.mask), member.seed)


def build_stack(
    method: Method, corpus: Corpus, members: Sequence[Member], fold: int, device: torch.device
) -> tuple[list[nn.Module], nn.Module, torch.optim.Optimizer | StackAdam]:
    """Each member's model, built alone from its own seed, the model that trains them (the
    one model, or their stack, `stacking.stack_models`, with dropout drawn from each
    member's own stream) and its optimizer: the method's, or the same Adam as K optimizers
    over a stack (`imerbench/optim.py`)."""
    models = []
    for member in members:
        torch.manual_seed(derive_seed("init", method.name, *stream(corpus, fold, member)))
        models.append(method.build(data_spec(corpus)).to(device))
    if not can_stack(method):
        return models, models[0], method.configure_optimizer(models[0])
    # Alone too, a stackable method trains as a stack (of one): the same batched kernels
    # and optimizer whatever the stack's size, so a cell's numbers do not depend on it.
    model = stack_models(models)
    optimizer = StackAdam.from_adam(method.configure_optimizer(model), len(models))
    share_weights(models, model)  # the members' models: views of the stack, for hooks
    point_gradients(models, model)  # and their gradients: the optimizer's buffer never moves
    seeds = [derive_seed("dropout", method.name, *stream(corpus, fold, m)) for m in members]
    noise = Noise(seeds, device)
    use_cell_dropout(model, noise)
    for solo, generator in zip(models, noise.generators, strict=True):
        use_cell_dropout(solo, None)  # never trained on its own
        use_generator(solo, generator)  # a loss's own noise (see stacking.generator_of)
    return models, model, optimizer


def padded_training(method: Method) -> bool:
    """Whether training batches are padded to a fixed length: the method's own need, or,
    for a stackable method, the split's longest dialogue, alone too, so that a member's
    tensors (and dropout draws) have one shape in every stack."""
    return method.fixed_length or can_stack(method)


def member_mask(
    corpus: Corpus, member: Member, fold: int, draw: int, groups: np.ndarray | None
) -> np.ndarray:
    """The member's training mask of one draw (an epoch's) over its training utterances;
    `groups`: its training split's mask groups (unused for a member training within a larger
    split, whose draw is the whole split's)."""
    within, n = member.within, member.splits["train"].num_utterances
    if within is not None:
        n, groups = within.num_utterances, within.groups
    mask = train_mask(corpus.name, fold, member.mask, member.seed, draw, n, groups)
    return mask if within is None else mask[within.rows]


def member_batches(
    method: Method,
    corpus: Corpus,
    member: Member,
    fold: int,
    epoch: int,
    groups: np.ndarray | None,
    fixed: bool,
) -> Iterator[Batch]:
    """A member's training batches of one epoch: its own training mask (the method says
    which epoch's draw, `Method.mask_epoch`) and data order."""
    train = member.splits["train"]
    mask = member_mask(corpus, member, fold, method.mask_epoch(epoch), groups)
    order = rng("order", *stream(corpus, fold, member), epoch).permutation(train.num_dialogues)
    return train.with_mask(mask).batches(
        method.hp["batch_size"], order, fixed, complete=method.needs_complete
    )
