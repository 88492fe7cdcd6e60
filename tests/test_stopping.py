"""Stopping on a validation plateau, capped (imerbench/stopping.py), and the optimizer that
lets each member of a stack stop on its own (imerbench/optim.py)."""

from __future__ import annotations

import pytest
import torch

from imerbench.optim import StackAdam
from imerbench.stopping import CAP, FIXED, PLATEAU, Clock


def clock(caps: tuple[int, ...], patience: int = 2, min_delta: float = 0.01) -> Clock:
    stages = ("one", "two")[: len(caps)]
    return Clock(stages, caps, patience, min_delta, higher_is_better=True)


def test_a_plateau_ends_the_stage() -> None:
    c = clock((10,))
    # improves (0.50, 0.60), then gains below min_delta for `patience` epochs
    assert [c.tick(v) for v in (0.50, 0.60, 0.605, 0.609)] == [None, None, None, PLATEAU]
    assert c.done
    assert c.stopped().epochs_trained == 4
    assert c.stopped().reason == PLATEAU
    assert c.stopped().converged is True


def test_a_cap_while_improving_is_not_converged() -> None:
    c = clock((3,))
    assert [c.tick(v) for v in (0.5, 0.6, 0.7)] == [None, None, CAP]
    assert c.stopped() == type(c.stopped())(3, CAP, False)


def test_lower_is_better_and_nan_never_improves() -> None:
    c = Clock(("one",), (10,), 1, 0.0, higher_is_better=False)
    assert c.tick(1.0) is None
    assert c.tick(0.9) is None  # lower: better
    assert c.tick(float("nan")) == PLATEAU


def test_patience_zero_trains_every_epoch_of_every_stage() -> None:
    c = clock((2, 3), patience=0)
    reasons = [c.tick(0.5) for _ in range(5)]
    assert reasons == [None, FIXED, None, None, FIXED]
    assert c.stopped() == type(c.stopped())(5, FIXED, None)


def test_each_stage_has_its_own_plateau_and_cap() -> None:
    c = clock((4, 5), patience=1)
    assert c.stage == "one"
    assert c.tick(0.3) is None
    assert c.tick(0.3) == PLATEAU  # stage one ends on its plateau after 2 epochs
    assert c.stage == "two" and not c.done
    assert c.best is None  # the signal of stage two starts afresh
    assert [c.tick(v) for v in (0.1, 0.2, 0.3, 0.4, 0.5)] == [None] * 4 + [CAP]
    assert c.stopped() == type(c.stopped())(7, CAP, False)


def test_a_first_stage_of_no_epochs_is_skipped() -> None:
    c = clock((0, 2), patience=0)
    assert c.stage == "two"


def test_without_validation_stages_run_to_their_caps() -> None:
    hp = {"epochs": 6, "stage_epoch": 2, "patience": 3, "min_delta": 0.0}
    c = Clock.for_method(("one", "two"), hp, True, watch=False)
    assert c.caps == (2, 4) and c.patience == 0


# ---- StackAdam -------------------------------------------------------------------------------


def adam_reference(start: torch.Tensor, grads: list[torch.Tensor], **kw: float) -> torch.Tensor:
    """torch.optim.Adam on one tensor, step by step."""
    p = torch.nn.Parameter(start.clone())
    opt = torch.optim.Adam([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def stack_of(
    start: torch.Tensor, members: int, **kw: float
) -> tuple[torch.nn.Parameter, StackAdam]:
    p = torch.nn.Parameter(start.clone())
    opt = StackAdam.from_adam(torch.optim.Adam([p], **kw), members)
    return p, opt


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_stack_adam_is_adam_for_each_member(weight_decay: float) -> None:
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, 5, generator=gen)
    grads = [torch.randn(3, 4, 5, generator=gen) for _ in range(6)]
    p, opt = stack_of(start, 3, lr=0.01, weight_decay=weight_decay)
    for g in grads:
        opt.zero_grad()
        p.grad.add_(g)  # as autograd accumulates into the buffer's view
        opt.step()
    for k in range(3):
        expected = adam_reference(
            start[k], [g[k] for g in grads], lr=0.01, weight_decay=weight_decay
        )
        torch.testing.assert_close(p.detach()[k], expected, atol=1e-6, rtol=1e-5)


def test_a_member_that_does_not_train_is_left_alone_and_resumes_as_alone() -> None:
    """Member 1 sits out two steps: its weights and moments stay, and its own step count
    (not the stack's) sets its bias correction when it trains again."""
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(2, 6, generator=gen)
    grads = [torch.randn(2, 6, generator=gen) for _ in range(5)]
    p, opt = stack_of(start, 2, lr=0.05)
    training = [(True, True), (True, False), (True, False), (True, True), (True, True)]
    for g, on in zip(grads, training, strict=True):
        opt.zero_grad()
        p.grad.add_(g)
        opt.train_members(on)
        before = p.detach()[1].clone()
        opt.step()
        if not on[1]:
            assert torch.equal(p.detach()[1], before)
    mine = [g[1] for g, on in zip(grads, training, strict=True) if on[1]]
    torch.testing.assert_close(
        p.detach()[1], adam_reference(start[1], mine, lr=0.05), atol=1e-6, rtol=1e-5
    )
    torch.testing.assert_close(
        p.detach()[0],
        adam_reference(start[0], [g[0] for g in grads], lr=0.05),
        atol=1e-6,
        rtol=1e-5,
    )


def test_a_zero_gradient_slice_is_a_missing_gradient() -> None:
    """A member whose slice of a tensor gets no gradient (a modality absent from its batch)
    is skipped as Adam skips a tensor without one: weight decay does not shrink it."""
    start = torch.ones(2, 3)
    p, opt = stack_of(start, 2, lr=0.1, weight_decay=0.5)
    opt.zero_grad()
    p.grad[0] = 1.0
    opt.step()
    assert torch.equal(p.detach()[1], start[1])
    assert not torch.equal(p.detach()[0], start[0])


def test_stack_adam_refuses_what_it_does_not_implement() -> None:
    p = torch.nn.Parameter(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="amsgrad"):
        StackAdam.from_adam(torch.optim.Adam([p], amsgrad=True), 2)
    with pytest.raises(ValueError, match=r"torch\.optim\.Adam"):
        StackAdam.from_adam(torch.optim.SGD([p], lr=0.1), 2)
    with pytest.raises(ValueError, match="member axis"):
        StackAdam.from_adam(torch.optim.Adam([p]), 3)
