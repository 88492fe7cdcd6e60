"""Stacks of cells: K models of one architecture trained as one, the stack folded into the
batch axis.

Cells that differ only in missing rate and seed (`plan.PlannedCell.stack_key`) share an
architecture. Their K models become one module whose linear layers hold K weight matrices
(`StackedLinear`, a batched product); the K members' batches are concatenated along the
batch axis, member after member, so every other operation (activations, attention within a
dialogue, masks) runs once for the whole stack. A member's rows only ever meet its own
weights, and each member's loss is computed on its own slice, so its gradients are those it
would have alone.

What keeps a member's results independent of the cells beside it:
- its initial weights are built alone, from its own seed, then copied into the stack;
- its dropout draws come from its own generator, seeded from its cell (`CellDropout`, used
  alone too), on tensors of the same shape as alone: training batches of a stackable method
  are padded to the split's longest dialogue, stacked or not;
- Adam is elementwise, so one optimizer over the stacked weights is K optimizers.

A method stacks when it declares `stackable`: its forward must keep the member-major batch
axis first (dim 0 of every tensor reaching a linear layer), hold its weights in `nn.Linear`
layers (or call `linear` with them), and group dialogues only within a member (a module with
a `stack_members` attribute learns the stack's size). Randomness outside dropout comes from
`generator_of(model)`. Its hooks
and its loss receive each member's own model, whose weights (and gradients, in
`after_backward`) are views of that member's slice of the stack (`share_weights`). The
equivalence tests (`tests/test_stacking.py`) hold each stackable method to it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from imerbench.data import Batch
from imerbench.method import Method, ModelOutput


class NotStackable(Exception):
    """The model holds weights outside the layers a stack knows how to stack."""


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear, also for a stack of K weights [K, out, in] ([K, out] biases): member k's
    rows (the k-th of K equal blocks of dim 0) meet only weight k."""
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    k = weight.shape[0]
    flat = x.reshape(k, -1, x.shape[-1])
    if bias is None:
        out = torch.bmm(flat, weight.transpose(1, 2))
    else:
        out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
    return out.reshape(*x.shape[:-1], weight.shape[1])


class StackedLinear(nn.Module):
    """K `nn.Linear` layers of one shape as one batched product; named like `nn.Linear`'s
    parameters, so a member's state dict is its model's."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        biases = [layer.bias for layer in layers]
        self.bias = (
            None
            if biases[0] is None
            else nn.Parameter(torch.stack([b.detach() for b in biases if b is not None]))
        )

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class Noise:
    """One random generator per member, seeded from its cell: a member's dropout draws are
    the same whichever stack it trains in."""

    def __init__(self, seeds: Sequence[int], device: torch.device) -> None:
        self.generators = []
        for seed in seeds:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
            self.generators.append(generator)
        self.active = list(range(len(seeds)))  # the members of the pass (see `forward`)

    def uniform(self, like: Tensor) -> Tensor:
        """Uniform [0, 1) float32 draws shaped like `like` (float32 whatever its dtype: bf16
        draws are too coarse for a keep probability), the i-th block from the generator of
        the pass's i-th member."""
        k = len(self.active)
        shape = (like.shape[0] // k, *like.shape[1:])
        draws = [
            torch.rand(shape, generator=self.generators[i], device=like.device) for i in self.active
        ]
        return draws[0] if k == 1 else torch.cat(draws)


class CellDropout(nn.Dropout):
    """Dropout drawing from the run's `Noise` (one generator per member); without one (a
    model used outside the harness), plain dropout."""

    noise: Noise | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or self.noise is None:
            return super().forward(x)
        keep = (self.noise.uniform(x) >= self.p).to(x.dtype)
        return x * keep / (1.0 - self.p)


def use_cell_dropout(model: nn.Module, noise: Noise | None) -> None:
    """Every dropout of the model (`nn.Dropout` and its subclasses) becomes a `CellDropout`
    drawing from `noise`."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout) and not isinstance(child, CellDropout):
                child = CellDropout(child.p)
                setattr(parent, name, child)
            if isinstance(child, CellDropout):
                child.noise = noise


def use_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """The random generator of the member this model is: a method drawing noise outside
    dropout (a loss's random targets) draws from `generator_of(model)`."""
    model._imerbench_generator = generator  # type: ignore[assignment]


def generator_of(model: nn.Module) -> torch.Generator | None:
    """The member's own generator (None: the global one, for a model used on its own)."""
    return getattr(model, "_imerbench_generator", None)


def stack_models(models: Sequence[nn.Module]) -> nn.Module:
    """One module computing K models of one architecture: each `nn.Linear` becomes a
    `StackedLinear` holding the K members' weights (copied, so equal to theirs)."""
    stacked = copy.deepcopy(models[0])
    stacked._imerbench_stack = len(models)  # type: ignore[assignment]
    for module in stacked.modules():  # layers that group a batch's dialogues (see `members`)
        if hasattr(module, "stack_members"):
            module.stack_members = len(models)
    for name, module in list(stacked.named_modules()):
        if isinstance(module, nn.Linear):
            layers = [m.get_submodule(name) for m in models]
            parent_name, _, child = name.rpartition(".")
            parent = stacked.get_submodule(parent_name) if parent_name else stacked
            setattr(parent, child, StackedLinear(layers))  # type: ignore[arg-type]
        elif not isinstance(module, StackedLinear) and any(
            True for _ in module.parameters(recurse=False)
        ):
            raise NotStackable(f"{type(module).__name__} '{name}' holds weights of its own")
    return stacked


def stack_size(model: nn.Module) -> int:
    """How many members the model computes (1: a model that is not a stack)."""
    return int(getattr(model, "_imerbench_stack", 1))


def forward(model: nn.Module, batch: Batch, stage: str, members: Sequence[int]) -> ModelOutput:
    """The model's pass over some of its members only (`batch`: theirs, member-major, in
    that order): members that stopped, or train in another stage, cost nothing. Their
    weights are selected (`torch.func.functional_call`), so gradients reach only their
    slices; dropout draws from their generators alone."""
    size = stack_size(model)
    if len(members) == size:
        return model(batch, stage)
    grouped = [m for m in model.modules() if hasattr(m, "stack_members")]
    noises = {id(m.noise): m.noise for m in model.modules() if isinstance(m, CellDropout)}
    index = torch.tensor(list(members), device=batch.valid.device)
    weights = {name: p.index_select(0, index) for name, p in model.named_parameters()}
    try:
        for module in grouped:
            module.stack_members = len(members)
        for noise in noises.values():
            if noise is not None:
                noise.active = list(members)
        return functional_call(model, weights, (batch, stage))
    finally:
        for module in grouped:
            module.stack_members = size
        for noise in noises.values():
            if noise is not None:
                noise.active = list(range(size))


def share_weights(models: Sequence[nn.Module], stacked: nn.Module) -> None:
    """Make each member's own model a view of its slice of the stack: its parameters share
    the stack's storage, so a hook given the member's model (`point_gradients` first) reads
    and changes that member's weights and gradients in the stack."""
    weights = dict(stacked.named_parameters())
    for k, model in enumerate(models):
        for name, param in model.named_parameters():
            param.data = weights[name].data[k]


def point_gradients(models: Sequence[nn.Module], stacked: nn.Module) -> None:
    """Each member's parameters' `.grad`: a view of its slice of the stack's gradients. Done
    once: the stack's gradients live in its optimizer's buffer (`imerbench/optim.py`) and are
    zeroed in place, so a hook changes a member's gradients in place, never rebinds them."""
    weights = dict(stacked.named_parameters())
    for k, model in enumerate(models):
        for name, param in model.named_parameters():
            grad = weights[name].grad
            param.grad = None if grad is None else grad[k]


def member_state(model: nn.Module, k: int) -> dict[str, Tensor]:
    """Member k's state dict (a copy), keyed as its own model's."""
    stacked = {
        f"{name}.{p}" if name else p
        for name, module in model.named_modules()
        if isinstance(module, StackedLinear)
        for p in ("weight", "bias")
    }
    return {
        key: (value[k] if key in stacked else value).detach().clone()
        for key, value in model.state_dict().items()
    }


def concat_batches(batches: Sequence[Batch]) -> Batch:
    """The members' batches as one, member after member along the batch axis."""
    if len(batches) == 1:
        return batches[0]
    values = {}
    for f in fields(Batch):
        parts = [getattr(b, f.name) for b in batches]
        if f.name == "features":
            values[f.name] = {m: torch.cat([p[m] for p in parts]) for m in parts[0]}
        elif f.name == "complete":
            values[f.name] = None if parts[0] is None else concat_batches(parts)
        else:
            values[f.name] = torch.cat(parts)
    return Batch(**values)


def split_output(out: ModelOutput, members: int) -> list[ModelOutput]:
    """A stack's output as the members' outputs: every tensor (also inside the extras' dicts
    and lists) chunked along the batch axis."""
    if members == 1:
        return [out]

    def chunks(value: Any) -> list[Any]:
        if isinstance(value, Tensor):
            if value.dim() and value.shape[0] % members == 0:
                return list(value.chunk(members))
            raise ValueError(f"a stacked output of shape {tuple(value.shape)} has no member axis")
        if isinstance(value, dict):
            parts = {key: chunks(v) for key, v in value.items()}
            return [{key: v[k] for key, v in parts.items()} for k in range(members)]
        if isinstance(value, (list, tuple)):
            items = [chunks(v) for v in value]
            return [type(value)(v[k] for v in items) for k in range(members)]
        return [value] * members

    fused, heads, extras = chunks(out.fused), chunks(out.heads), chunks(out.extras)
    return [ModelOutput(fused[k], heads[k], extras[k]) for k in range(members)]


def per_dialogue(value: Tensor, dialogues: int) -> Tensor:
    """A model's vector [D] (a stack's [K, D]: one per member) for each of a batch's
    `dialogues`, member-major: [dialogues, D]."""
    if value.dim() == 1:
        return value.expand(dialogues, -1)
    members = value.shape[0]
    return value[:, None].expand(members, dialogues // members, -1).reshape(dialogues, -1)


def can_stack(method: Method) -> bool:
    """Whether the method's cells may train as one stack (it says so: `Method.stackable`)."""
    return method.stackable
