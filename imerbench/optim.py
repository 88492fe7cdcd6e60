"""K Adam optimizers over a stack's weights, as one.

A stack (`imerbench/stacking.py`) holds K members' weights in tensors with a leading member
axis. `torch.optim.Adam` over them is K optimizers only while every member takes every
step: it keeps one step count per tensor, and a gradient that is None for one member
cannot be told apart from the zeros a stack gives it. `StackAdam` keeps what Adam keeps
per (member, tensor): a member that does not train this step (it stopped, or trains in
another stage) and a tensor whose gradient is exactly zero for a member (a stage's idle
part, a modality absent from its batch) are left alone, moments, weight and step count,
as a lone Adam leaves a tensor without a gradient. So a member's weights follow the same
path in any stack, of one or of many, whichever members stop or switch stage beside it.

All weights and gradients live in one flat buffer (each tensor's block contiguous), so a
step is a few dozen operations whatever the number of tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class StackAdam:
    """Adam (L2 weight decay added to the gradient, as `torch.optim.Adam`) for a stack of
    `members` models: every parameter's leading axis is the member. Built from the
    method's own `torch.optim.Adam` (`from_adam`), whose groups' lr and weight decay it
    keeps; its parameters' storage becomes views of the flat buffer (call it before
    `stacking.share_weights`)."""

    def __init__(
        self,
        groups: Sequence[tuple[Sequence[nn.Parameter], float, float]],
        members: int,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        params = [p for group, _, _ in groups for p in group]
        if not params:
            raise ValueError("StackAdam: no parameters")
        for p in params:
            if p.dim() == 0 or p.shape[0] != members:
                raise ValueError(
                    f"StackAdam: a parameter of shape {tuple(p.shape)} has no member axis of "
                    f"size {members}"
                )
        device, dtype = params[0].device, params[0].dtype
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        self.members = members
        self.betas, self.eps = betas, eps
        self.data = torch.empty(total, device=device, dtype=dtype)
        self.grad = torch.zeros(total, device=device, dtype=dtype)
        self.exp_avg = torch.zeros_like(self.data)
        self.exp_avg_sq = torch.zeros_like(self.data)
        # Segments: one per (tensor, member), contiguous runs of the buffer in order (a
        # tensor's block is [members, n]); Adam's per-tensor state is per segment here.
        lengths, lrs, decays = [], [], []
        start = 0
        for group, group_lr, group_decay in groups:
            for p in group:
                n = p.numel()
                block = slice(start, start + n)
                self.data[block].copy_(p.detach().reshape(-1))
                p.data = self.data[block].view(p.shape)
                p.grad = self.grad[block].view(p.shape)
                lengths += [n // members] * members
                lrs += [group_lr] * members
                decays += [group_decay] * members
                start += n
        self.lengths = torch.tensor(lengths, device=device)
        self.ends = self.lengths.cumsum(0) - 1  # each segment's last element
        self.lr = torch.tensor(lrs, device=device, dtype=dtype)
        self.has_decay = any(decays)
        self.decay = self.expand(torch.tensor(decays, device=device, dtype=dtype))
        self.segments = len(lengths)
        self.steps = torch.zeros(self.segments, device=device, dtype=dtype)
        self._training = (True,) * members
        self.training = torch.ones(self.segments, device=device, dtype=torch.bool)  # per segment

    @classmethod
    def from_adam(cls, optimizer: torch.optim.Optimizer, members: int) -> StackAdam:
        """The same optimizer over a stack: a `torch.optim.Adam` whose options Adam's math
        here covers (no amsgrad, maximize or decoupled decay; one betas and eps)."""
        if type(optimizer) is not torch.optim.Adam:
            raise ValueError(
                f"a stackable method's optimizer must be torch.optim.Adam, not "
                f"{type(optimizer).__name__}; set stackable = False or use Adam"
            )
        groups = optimizer.param_groups
        for key in ("amsgrad", "maximize", "decoupled_weight_decay"):
            if any(g.get(key) for g in groups):
                raise ValueError(f"StackAdam does not implement Adam's {key}=True")
        betas = {tuple(g["betas"]) for g in groups}
        eps = {g["eps"] for g in groups}
        if len(betas) > 1 or len(eps) > 1:
            raise ValueError("StackAdam: all parameter groups must share betas and eps")
        return cls(
            [(g["params"], float(g["lr"]), float(g["weight_decay"])) for g in groups],
            members,
            betas=next(iter(betas)),  # type: ignore[arg-type]
            eps=next(iter(eps)),
        )

    def train_members(self, training: Sequence[bool]) -> None:
        """Which members the next steps update (the others keep weights and moments)."""
        if tuple(training) != self._training:
            self._training = tuple(training)
            members = torch.tensor(self._training, device=self.data.device)
            self.training = members.repeat(self.segments // self.members)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients in place: the parameters' `.grad` stay views of the buffer."""
        del set_to_none  # never None: autograd accumulates into the views
        self.grad.zero_()

    def expand(self, per_segment: Tensor) -> Tensor:
        """A value per segment as a value per element of the buffer."""
        return per_segment.repeat_interleave(self.lengths, output_size=self.data.numel())

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        grad = self.grad
        # A (member, tensor) segment is updated when its member trains and its gradient is
        # not all zeros (a lone Adam skips a tensor without a gradient).
        nonzero = torch.cumsum(grad != 0, 0, dtype=torch.int32)[self.ends]
        touched = torch.diff(nonzero, prepend=nonzero.new_zeros(1)) > 0
        on_segment = touched & self.training
        self.steps += on_segment.to(self.steps.dtype)
        steps = self.steps.clamp(min=1)  # a segment never updated: any value, unused
        step_size = torch.where(on_segment, self.lr / (1 - beta1**steps), 0.0)
        on = self.expand(on_segment)
        if self.has_decay:
            grad = grad.add(self.data * self.decay)
        self.exp_avg = torch.where(on, self.exp_avg.lerp(grad, 1 - beta1), self.exp_avg)
        second = self.exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.exp_avg_sq = torch.where(on, second, self.exp_avg_sq)
        denom = (self.exp_avg_sq.sqrt() / self.expand((1 - beta2**steps).sqrt())).add_(self.eps)
        self.data.sub_(self.exp_avg / denom * self.expand(step_size))
