"""A method with a balance strategy on it: the method's own hooks, then the strategy's, in
the one training loop (`imerbench/step.py`, `imerbench/training.py`).

The composed method keeps the base method's name (so its seeds, initial weights and masks
are the base's: a paired comparison; a strategy holding training dialogues out trains on the
others under the masks they have in the base's cell, `step.WithinDraw`, in its own batch
order), its hyper-parameters and stages; the strategy acts in
the last stage only, with its state in the model (`model.balance_state`). It trains each
cell alone (a strategy's statistics are per model, not per stack).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from imerbench.balance.base import BalanceState, Strategy
from imerbench.data import Batch
from imerbench.errors import ImerbenchError
from imerbench.method import DataSpec, Method, ModelOutput, RunContext

STATE = "balance_state"


def state_of(model: nn.Module) -> BalanceState:
    state = getattr(model, STATE)
    assert isinstance(state, BalanceState)
    return state


class Balanced(Method):
    """`base` trained with `strategy` (built by `balanced`)."""

    def __init__(self, base: Method, strategy: Strategy) -> None:
        super().__init__(base.info, **base.hp)
        self.base, self.strategy = base, strategy
        self.params, self.profiles = base.params, base.profiles
        self.stages = base.stages
        self.fixed_length = base.fixed_length
        self.needs_complete = base.needs_complete
        self.published_selection = base.published_selection
        self.offers = base.offers
        self.stackable = False
        if base.holdout and strategy.holdout():
            raise ImerbenchError(
                f"{base.name}+{strategy.name}: both hold training dialogues out, for "
                "measurements of their own; pair the strategy with another method"
            )
        self.holdout = base.holdout or strategy.holdout()

    @property
    def last_stage(self) -> str:
        return self.stages[-1]

    def with_params(self, **changes: Any) -> Method:
        return Balanced(self.base.with_params(**changes), self.strategy)

    def with_epochs(self, epochs: int) -> Method:
        return Balanced(self.base.with_epochs(epochs), self.strategy)

    def build(self, spec: DataSpec) -> nn.Module:
        model = self.base.build(spec)
        state = BalanceState(self.last_stage)
        self.strategy.build_state(state, spec, self.base)
        model.add_module(STATE, state)
        if "encoders" in self.offers:
            state.values["parts"] = self.base.modality_parts(model)
        return model

    def prediction_group(self) -> int | None:
        return self.base.prediction_group()

    def mask_epoch(self, epoch: int) -> int:
        return self.base.mask_epoch(epoch)

    def stage_score(
        self, stage: str, val_scores: dict[str, dict[str, float]], primary: str
    ) -> float:
        return self.base.stage_score(stage, val_scores, primary)

    def configure_optimizer(self, model: nn.Module) -> Any:
        return self.base.configure_optimizer(model)

    def loss(self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str) -> Tensor:
        own = self.base.loss(model, out, batch, stage)
        if stage != self.last_stage:
            return own
        return self.strategy.loss(model, out, batch, own, state_of(model))

    def after_backward(
        self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str, ctx: RunContext
    ) -> None:
        """The strategy's gradient change, then the method's own hook (its clipping last)."""
        if stage == self.last_stage:
            state = state_of(model)
            self.strategy.after_backward(model, out, batch, state.values.get("parts", {}), state)
        self.base.after_backward(model, out, batch, stage, ctx)

    def on_stage_start(self, model: nn.Module, stage: str, ctx: RunContext) -> None:
        state = state_of(model)
        state.epoch = 0
        state.holdout = ctx.holdout
        self.base.on_stage_start(model, stage, ctx)

    def on_epoch_end(
        self,
        model: nn.Module,
        epoch: int,
        stage: str,
        val_scores: dict[str, dict[str, float]],
        ctx: RunContext,
    ) -> None:
        self.base.on_epoch_end(model, epoch, stage, val_scores, ctx)
        if stage == self.last_stage:
            state = state_of(model)
            self.strategy.on_epoch_end(model, state)
            state.epoch += 1

    def idle_parameters(self, model: nn.Module, stage: str) -> set[str]:
        """The method's; before the last stage, also the strategy's own modules; in it, none
        for a strategy that trains every head (a method's idle parameters there are its
        report-only heads, e.g. MoMKE's)."""
        idle = self.base.idle_parameters(model, stage)
        if stage != self.last_stage:
            return idle | {f"{STATE}.{n}" for n, _ in state_of(model).named_parameters()}
        return set() if self.strategy.trains_heads else idle

    def diagnostics(self, model: nn.Module) -> dict[str, float]:
        return self.base.diagnostics(model)


def balanced(method: Method, strategy: str, overrides: Mapping[str, Any]) -> Balanced:
    """`method` with the strategy `strategy` (its hyper-parameters: defaults, then
    `overrides`), once the method is known to offer what it needs."""
    from imerbench.balance import check_pairing, create_strategy

    check_pairing(method.name, method.offers, strategy)
    return Balanced(method, create_strategy(strategy, **overrides))
