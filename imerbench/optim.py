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
from torch import nn


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
        lr = torch.empty(total, device=device, dtype=dtype)
        decay = torch.empty(total, device=device, dtype=dtype)
        # Per element: its (tensor, member) segment; a tensor's block is [members, n].
        segment = torch.empty(total, device=device, dtype=torch.long)
        start = 0
        index = 0
        for group, group_lr, group_decay in groups:
            for p in group:
                n = p.numel()
                block = slice(start, start + n)
                self.data[block].copy_(p.detach().reshape(-1))
                p.data = self.data[block].view(p.shape)
                p.grad = self.grad[block].view(p.shape)
                lr[block], decay[block] = group_lr, group_decay
                rows = torch.arange(members, device=device).repeat_interleave(n // members)
                segment[block] = index * members + rows
                start += n
                index += 1
        self.lr, self.decay = lr, decay
        self.has_decay = bool((decay != 0).any())
        self.segment = segment
        self.segments = index * members
        self.steps = torch.zeros(self.segments, device=device, dtype=dtype)
        self._training = (True,) * members
        self.training = torch.ones(members, device=device, dtype=torch.bool)

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
            self.training = torch.tensor(self._training, device=self.data.device)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients in place: the parameters' `.grad` stay views of the buffer."""
        del set_to_none  # never None: autograd accumulates into the views
        self.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        grad = self.grad
        # A (member, tensor) segment is updated when its member trains and its gradient is
        # not all zeros (a lone Adam skips a tensor without a gradient).
        touched = torch.zeros(self.segments, device=grad.device, dtype=grad.dtype)
        touched.index_add_(0, self.segment, (grad != 0).to(grad.dtype))
        on_segment = (touched > 0) & self.training.repeat(self.segments // self.members)
        self.steps += on_segment.to(self.steps.dtype)
        on = on_segment[self.segment]
        if self.has_decay:
            grad = grad.add(self.data * self.decay)
        exp_avg = self.exp_avg.lerp(grad, 1 - beta1)
        exp_avg_sq = self.exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.exp_avg = torch.where(on, exp_avg, self.exp_avg)
        self.exp_avg_sq = torch.where(on, exp_avg_sq, self.exp_avg_sq)
        steps = self.steps[self.segment].clamp(min=1)  # segments never touched: any value
        bias1 = 1 - beta1**steps
        bias2_sqrt = (1 - beta2**steps).sqrt()
        denom = (self.exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
        update = self.exp_avg / denom * (self.lr / bias1)
        self.data.sub_(torch.where(on, update, torch.zeros_like(update)))
