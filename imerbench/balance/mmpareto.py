"""MMPareto (Wei & Hu, ICML 2024): every modality's encoder gets the gradient of the method's
own (multimodal) loss, g1, and of its head's unimodal loss, g2; where they conflict it takes
their min-norm (Pareto) mix, else their mean, then restores and boosts the magnitude.

The loss is the method's own plus every head's task loss over the utterances where its
modality is present (the heads train; the method's loss stays as written, so a method whose
own loss already holds unimodal terms, as late fusion's, keeps them in g1). Per active
encoder m, on its parameters flattened: cos(g1, g2) > 0 (or a norm 0): w = (1/2, 1/2); else
w1 = clip((|g2|^2 - g1.g2) / |g1 - g2|^2, 0.001, 0.999), w2 = 1 - w1. Per tensor:
gh = 2 (w1 g1 + w2 g2), rescaled to |g1 + g2| where that is larger, and the gradient is
gamma gh (without conflict: gamma (g1 + g2)). An inactive encoder keeps g1 alone; the heads
and the fusion keep the plain gradient of the whole loss; with fewer than two active
modalities the step is not balanced (every gradient is the whole loss's). g1 and g2 come from
`torch.autograd.grad` on the same graph (the released code: one backward pass per loss).
Default gamma 1.5 (hard-coded in the released code).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from imerbench.balance import register_strategy
from imerbench.balance.base import (
    WINDOW_PARAMS,
    BalanceState,
    Strategy,
    active,
    presence,
)
from imerbench.data import MODALITIES, Batch
from imerbench.losses import task_loss
from imerbench.method import Param, Part

Grads = list[Tensor]  # one per part of an encoder


def pareto_weights(g1: Tensor, g2: Tensor) -> tuple[float, float]:
    """(w1, w2) for two flattened gradients: equal where they agree, the min-norm mix
    (clipped to [0.001, 0.999]) where they conflict."""
    n1, n2 = float(g1.norm()), float(g2.norm())
    if n1 == 0.0 or n2 == 0.0 or float(g1 @ g2) / (n1 * n2) > 0:
        return 0.5, 0.5
    w1 = float((g2 @ g2 - g1 @ g2) / ((g1 - g2) @ (g1 - g2)))
    w1 = min(max(w1, 0.001), 0.999)
    return w1, 1.0 - w1


def combine(g1: Grads, g2: Grads, gamma: float) -> Grads:
    """The encoder's new gradient, tensor by tensor."""
    w1, w2 = pareto_weights(
        torch.cat([g.flatten() for g in g1]), torch.cat([g.flatten() for g in g2])
    )
    out = []
    for a, b in zip(g1, g2, strict=True):
        mixed = 2 * (w1 * a + w2 * b)
        target, norm = float((a + b).norm()), float(mixed.norm())
        if target > norm and norm > 0:
            mixed = mixed * (target / norm)
        out.append(gamma * mixed)
    return out


def part_grads(loss: Tensor, parts: list[Part]) -> Grads:
    """d loss / d part for every part (zeros where the loss does not reach it)."""
    params = list(dict.fromkeys(p.param for p in parts))
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    by_param = {
        id(p): torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
    }
    return [
        by_param[id(p.param)] if p.columns is None else by_param[id(p.param)][:, p.columns]
        for p in parts
    ]


@register_strategy("mmpareto")
class MMPareto(Strategy):
    """Pareto mix of each encoder's multimodal and unimodal gradients."""

    summary = "per encoder, the min-norm mix of conflicting multimodal and unimodal gradients"
    params = {"gamma": Param(1.5, low=0.0, help="magnitude boost"), **WINDOW_PARAMS}
    needs = frozenset({"heads", "encoders"})
    trains_heads = True

    def loss(
        self, model: nn.Module, out: Any, batch: Batch, base: Tensor, state: BalanceState
    ) -> Tensor:
        present = presence(batch)
        unimodal = {m: task_loss(out.heads[m], batch, where=present[m]) for m in MODALITIES}
        total = base + torch.stack(list(unimodal.values())).sum()
        state.values.pop("grads", None)
        if not self.in_window(state) or not torch.is_grad_enabled():
            return total
        counts = {m: int(present[m].sum()) for m in MODALITIES}
        modalities = active(counts, self.hp["min_present"])
        if len(modalities) < 2:  # no balancing this step: the plain gradient of the loss
            return total
        parts = state.values["parts"]
        grads = {m: (part_grads(base, parts[m]), None) for m in MODALITIES}
        for m in modalities:
            grads[m] = (grads[m][0], part_grads(unimodal[m], parts[m]))
        state.values["grads"] = grads
        return total

    def after_backward(
        self, model: nn.Module, out: Any, batch: Batch, parts: dict[str, list[Part]],
        state: BalanceState,
    ) -> None:  # fmt: skip
        grads = state.values.pop("grads", None)
        if grads is None:
            return
        for m, (g1, g2) in grads.items():
            new = g1 if g2 is None else combine(g1, g2, self.hp["gamma"])
            for part, g in zip(parts[m], new, strict=True):
                current = part.grad()
                if current is not None:
                    current.copy_(g)
                elif part.columns is None:
                    part.param.grad = g.clone()
