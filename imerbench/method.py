"""The method interface: what a method supplies to the one training loop.

A method is a small class: declared hyper-parameters (with per-dataset profiles), a `build`
that returns its `torch.nn.Module`, and optional hooks. The harness owns everything else:
data, masks, the loop, evaluation, selection and results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from imerbench.data import Batch, Task
from imerbench.errors import ImerbenchError, did_you_mean
from imerbench.losses import task_loss


@dataclass(frozen=True)
class Param:
    """A declared hyper-parameter: its default, its type and the values allowed."""

    default: Any
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""

    def validate(self, method: str, name: str, value: Any) -> Any:
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is tuple and isinstance(value, list):
            value = tuple(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ImerbenchError(
                f"{method}: hyper-parameter {name}={value!r} must be a {kind.__name__}"
            )
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(map(repr, self.choices))
            raise ImerbenchError(f"{method}: {name}={value!r} is not one of {allowed}")
        if self.low is not None and value < self.low:
            raise ImerbenchError(f"{method}: {name}={value!r} is below its minimum {self.low}")
        if self.high is not None and value > self.high:
            raise ImerbenchError(f"{method}: {name}={value!r} is above its maximum {self.high}")
        return value


# Every method trains with these; a method may change defaults through its profiles.
TRAINING_PARAMS: dict[str, Param] = {
    "epochs": Param(20, low=1, help="training epochs"),
    "batch_size": Param(16, low=1, help="dialogues per batch"),
    "lr": Param(1e-3, low=0.0, help="Adam learning rate"),
    "weight_decay": Param(1e-5, low=0.0, help="Adam weight decay"),
}


@dataclass(frozen=True)
class DataSpec:
    """What a model may know about the data it is built for."""

    task: Task
    num_classes: int  # output width C: classes, or 1 for regression
    widths: dict[str, int]  # modality -> feature width
    pad_length: int  # the dataset's padded dialogue length
    num_speakers: int


@dataclass
class ModelOutput:
    """Predictions of a forward pass; `fused` is always the method's answer."""

    fused: Tensor  # [B, L, C]
    heads: dict[str, Tensor] = field(default_factory=dict)  # modality -> [B, L, C]
    extras: dict[str, Any] = field(default_factory=dict)  # loss ingredients, diagnostics


class Method:
    """Base class of every method. Constructors store; the harness calls the hooks.

    Class attributes a subclass sets:
    - `params`: its own hyper-parameters (`TRAINING_PARAMS` are added automatically);
    - `profiles`: per dataset profile ("iemocap", "mosi", "mosei", "quick"), the values
      that differ from the defaults (the published settings, and a small quick profile);
    - `stages`: stage names in training order; with two stages, the `stage_epoch`
      hyper-parameter is the first epoch of the second one;
    - `zero_fill`: True if the model relies on missing inputs being zero (it is then
      always fed zero-filled input; otherwise it must ignore values at missing positions);
    - `fixed_length`: True if batches must be padded to the dataset's `pad_length`;
    - `batch_dependent`: True if a prediction depends on the other dialogues of its batch
      (e.g. prototypes pooled over the batch); evaluation then goes in split order at the
      training batch size, as the published code does (a method whose model pools per group
      of `batch_size` dialogues may override `evaluation_batch_size` with a multiple);
    - `needs_complete`: True if training needs what the mask hides (reconstruction targets,
      a full-modality teacher, a complete-data stage): training batches then carry
      `Batch.complete`; evaluation batches never do.
    """

    name: str = ""  # the registered id, set by `create_method`
    params: ClassVar[dict[str, Param]] = {}
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    stages: ClassVar[tuple[str, ...]] = ("train",)
    zero_fill: ClassVar[bool] = False
    fixed_length: ClassVar[bool] = False
    batch_dependent: ClassVar[bool] = False
    needs_complete: ClassVar[bool] = False
    eval_batch_size: ClassVar[int] = 256  # dialogues per evaluation batch

    def __init__(self, **hparams: Any) -> None:
        self.hp: dict[str, Any] = dict(hparams)

    # ---- declared hyper-parameters --------------------------------------------------------
    @classmethod
    def all_params(cls) -> dict[str, Param]:
        declared = dict(TRAINING_PARAMS)
        if len(cls.stages) > 1:
            declared["stage_epoch"] = Param(10, low=0, help="first epoch of the last stage")
        declared.update(cls.params)
        return declared

    @classmethod
    def resolve_hparams(
        cls, name: str, profile: str, overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Defaults, then the profile's values, then the user's overrides, all validated."""
        declared = cls.all_params()
        values = {k: p.default for k, p in declared.items()}
        for source in (cls.profiles.get(profile, {}), overrides or {}):
            for key, value in source.items():
                if key not in declared:
                    raise ImerbenchError(
                        f"{name}: unknown hyper-parameter '{key}'"
                        f"{did_you_mean(key, declared)}; declared: {', '.join(sorted(declared))}"
                    )
                values[key] = declared[key].validate(name, key, value)
        if len(cls.stages) > 1 and not 0 <= values["stage_epoch"] < values["epochs"]:
            raise ImerbenchError(
                f"{name}: stage_epoch={values['stage_epoch']} must be below "
                f"epochs={values['epochs']}"
            )
        return values

    # ---- what the loop calls ----------------------------------------------------------------
    def build(self, spec: DataSpec) -> nn.Module:
        """The model; its forward takes (batch, stage) and returns a `ModelOutput`."""
        raise NotImplementedError

    def evaluation_batch_size(self) -> int:
        return self.hp["batch_size"] if self.batch_dependent else self.eval_batch_size

    def stage_of(self, epoch: int) -> str:
        if len(self.stages) == 1:
            return self.stages[0]
        return self.stages[1] if epoch >= self.hp["stage_epoch"] else self.stages[0]

    def configure_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            model.parameters(), lr=self.hp["lr"], weight_decay=self.hp["weight_decay"]
        )

    def loss(self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str) -> Tensor:
        """The training loss; by default the task loss of the fused output."""
        return task_loss(out.fused, batch)

    def after_backward(self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str) -> None:
        """Change gradients between backward and the optimizer step (gradient modulation)."""

    def on_stage_start(self, model: nn.Module, stage: str) -> None:
        """Called before the first epoch of each stage."""

    def on_epoch_end(
        self, model: nn.Module, epoch: int, stage: str, val_scores: dict[str, dict[str, float]]
    ) -> None:
        """Called after validation with {output: {metric: value}} (empty without val)."""

    def idle_parameters(self, model: nn.Module, stage: str) -> set[str]:
        """Names of parameters that by design get no gradient in this stage."""
        return set()

    def diagnostics(self, model: nn.Module) -> dict[str, float]:
        """Numbers recorded with the run (e.g. mean fusion weight per modality)."""
        return {}
