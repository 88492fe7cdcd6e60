"""The method interface: what a method supplies to the one training loop.

A method is a small class: declared hyper-parameters (with per-dataset profiles), the model it
builds, and optional hooks. The harness owns everything else: data, masks, the loop,
evaluation, selection and results. A created method is configuration only: its
hyper-parameters are frozen once validated, and what a run learns lives in the model or in the
run's `RunContext`, never on the method.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from imerbench.data import Batch, SplitData, Task
from imerbench.data.catalog import list_datasets
from imerbench.errors import ImerbenchError, did_you_mean
from imerbench.frozen import FrozenDict
from imerbench.losses import task_loss
from imerbench.metrics import METRICS

ROLES: tuple[str, ...] = ("method", "reference", "ceiling")
EVAL_BATCH_DIALOGUES = 256  # dialogues per evaluation batch, unless predictions are grouped


@dataclass(frozen=True)
class Param:
    """A declared hyper-parameter: its default, its type and the values allowed."""

    default: Any
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""
    multiple_of: int | None = None  # for integers a layer splits in equal parts

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
        if self.multiple_of is not None and value % self.multiple_of:
            raise ImerbenchError(
                f"{method}: {name}={value!r} must be a multiple of {self.multiple_of}"
                + (f" ({self.help})" if self.help else "")
            )
        return value


class HParams(FrozenDict):
    """Validated hyper-parameters, read-only: a change is a new method (`Method.with_params`).

    A dict, so that it serializes (JSON, pickle) exactly as the plain dict it replaced."""

    refusal = "hyper-parameters are frozen; use method.with_params(...) instead"


@dataclass(frozen=True)
class MethodInfo:
    """What the harness and the analysis know of a registered method, declared where it
    registers and written with every row (`role`, `ceiling_of`, `paper_name` columns)."""

    name: str = ""
    role: str = "method"  # method | reference (a floor to clear) | ceiling (one modality)
    ceiling_of: str = ""  # the one modality a ceiling is trained and scored on
    paper_name: str = ""  # the name published tables use (`imerbench table --paper`)
    description: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"method '{self.name}': role '{self.role}' is not one of {ROLES}")
        if (self.role == "ceiling") != bool(self.ceiling_of):
            raise ValueError(
                f"method '{self.name}': a ceiling, and only a ceiling, names its ceiling_of"
            )

    def columns(self) -> dict[str, str]:
        """The row columns (and cell.json entries) that carry this metadata."""
        return {"role": self.role, "ceiling_of": self.ceiling_of, "paper_name": self.paper_name}


@dataclass
class RunContext:
    """One run's facts and scratch space, handed to the hooks: what a hook learns during a run
    (e.g. the best weights seen so far) is kept in `state`, which dies with the run."""

    primary: str  # the metric selection uses
    higher_is_better: bool
    state: dict[str, Any] = field(default_factory=dict)
    holdout: SplitData | None = None  # the training dialogues held out (`Method.holdout`)

    @classmethod
    def for_metric(cls, primary: str, holdout: SplitData | None = None) -> RunContext:
        return cls(primary, METRICS[primary].higher_is_better, holdout=holdout)

    def better(self, value: float, than: float | None) -> bool:
        """Whether `value` of the primary metric beats `than` (None: nothing yet; NaN never
        beats anything)."""
        if value != value:
            return False
        if than is None:
            return True
        return value > than if self.higher_is_better else value < than


# What every method's profile of a dataset kind starts from (its own profile may change
# it): the quick grid's runs are short, so they stop sooner on a plateau.
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {"quick": {"patience": 3}}

# Every method trains with these; a method may change defaults through its profiles.
TRAINING_PARAMS: dict[str, Param] = {
    "epochs": Param(20, low=1, help="training epochs"),
    "batch_size": Param(16, low=1, help="dialogues per batch"),
    "lr": Param(1e-3, low=0.0, help="Adam learning rate"),
    "weight_decay": Param(1e-5, low=0.0, help="Adam weight decay"),
    "patience": Param(
        10, low=0, help="epochs without a min_delta gain that end a stage (0: every epoch)"
    ),
    "min_delta": Param(0.005, low=0.0, help="the smallest validation gain that counts"),
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


@dataclass(frozen=True)
class Part:
    """A parameter of one modality's encoder: the whole tensor, or a block of input columns
    of a Linear weight (early fusion's first layer reads every modality)."""

    param: nn.Parameter
    columns: slice | None = None

    def grad(self) -> Tensor | None:
        """The gradient of this part: a view, so changing it in place changes the parameter's."""
        g = self.param.grad
        return g if g is None or self.columns is None else g[:, self.columns]

    @property
    def is_matrix(self) -> bool:
        return self.param.dim() >= 2


class Method:
    """Base class of every method. Constructors store; the harness calls the hooks.

    Class attributes a subclass sets:
    - `params`: its own hyper-parameters (`TRAINING_PARAMS` are added automatically);
    - `profiles`: per dataset profile ("iemocap", "mosi", "mosei", "quick"), the values
      that differ from the defaults (the published settings, and a small quick profile);
    - `model`: the model class; `build` passes it the hyper-parameters its constructor names
      (override `build` for anything else);
    - `stages`: stage names in training order; with two stages, the `stage_epoch`
      hyper-parameter caps the first (`imerbench/stopping.py`: its length when stopping is
      fixed);
    - `fixed_length`: True if batches must be padded to the dataset's `pad_length`;
    - `needs_complete`: True if training needs what the mask hides (reconstruction targets,
      a full-modality teacher, a complete-data stage): training batches then carry
      `Batch.complete`; evaluation batches never do;
    - `stackable`: True if cells of the method can train as one stack of models
      (`imerbench/stacking.py`); False runs each cell alone;
    - `published_selection`: per task ("classification", "regression"), the metric the
      released code keeps its epoch by, where it is not the dataset's primary metric;
      `--protocol paper` ranks the test-oracle epochs by it (`imerbench/plan.py`);
    - `offers`: what it offers balance strategies (`imerbench/balance/base.py`, `OFFERS`):
      "heads", "features" (with `feature_widths`), "encoders" (with `modality_parts`);
    - `holdout`: the fraction of the training dialogues it does not train on, held out for
      its own measurements (`RunContext.holdout`; a balance strategy's, e.g. G-Blending's).

    A model must ignore the values at missing positions (the contract test changes them);
    batches hold zeros there, but nothing may rely on it.
    """

    params: ClassVar[dict[str, Param]] = {}
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    model: ClassVar[Callable[..., nn.Module] | None] = None
    stages: ClassVar[tuple[str, ...]] = ("train",)
    fixed_length: ClassVar[bool] = False
    needs_complete: ClassVar[bool] = False
    stackable: ClassVar[bool] = False
    published_selection: ClassVar[dict[str, str]] = {}
    offers: ClassVar[frozenset[str]] = frozenset()
    holdout: ClassVar[float] = 0.0

    def __init__(self, info: MethodInfo | None = None, **hparams: Any) -> None:
        self.info = info or MethodInfo(type(self).__name__.lower())
        self.hp = HParams(hparams)

    @property
    def name(self) -> str:
        """The registered id (seeds derive from it)."""
        return self.info.name

    # ---- declared hyper-parameters --------------------------------------------------------
    @classmethod
    def all_params(cls) -> dict[str, Param]:
        declared = dict(TRAINING_PARAMS)
        if len(cls.stages) > 1:
            declared["stage_epoch"] = Param(10, low=0, help="the first stage's epoch cap")
        declared.update(cls.params)
        return declared

    @classmethod
    def resolve_hparams(
        cls, name: str, profile: str, overrides: Mapping[str, Any] | None = None
    ) -> HParams:
        """Defaults, then the profile's values, then the user's overrides, all validated."""
        known = known_profiles()
        if profile not in known:
            raise ImerbenchError(
                f"{name}: unknown profile '{profile}'{did_you_mean(profile, known)}; "
                f"valid: {', '.join(known)}"
            )
        values = {k: p.default for k, p in cls.all_params().items()}
        values |= PROFILE_DEFAULTS.get(profile, {})
        values = cls._validated(name, values, cls.profiles.get(profile, {}), f"profile {profile}")
        return cls._validated(name, values, overrides or {})

    @classmethod
    def _validated(
        cls, name: str, values: Mapping[str, Any], changes: Mapping[str, Any], where: str = ""
    ) -> HParams:
        declared = cls.all_params()
        out = dict(values)
        prefix = f"{name} ({where})" if where else name
        for key, value in changes.items():
            if key not in declared:
                raise ImerbenchError(
                    f"{prefix}: unknown hyper-parameter '{key}'"
                    f"{did_you_mean(key, declared)}; declared: {', '.join(sorted(declared))}"
                )
            out[key] = declared[key].validate(prefix, key, value)
        if len(cls.stages) > 1 and not 0 <= out["stage_epoch"] < out["epochs"]:
            raise ImerbenchError(
                f"{prefix}: stage_epoch={out['stage_epoch']} must be below epochs={out['epochs']}"
            )
        return HParams(out)

    @classmethod
    def check_profiles(cls, name: str) -> None:
        """Every declared profile is a known one and resolves (run at registration)."""
        known = known_profiles()
        for profile in cls.profiles:
            if profile not in known:
                raise ImerbenchError(
                    f"{name}: profile '{profile}' is not a dataset profile"
                    f"{did_you_mean(profile, known)}; valid: {', '.join(known)}"
                )
            cls.resolve_hparams(name, profile)

    def with_params(self, **changes: Any) -> Method:
        """A new method with some hyper-parameters changed, validated like the user's."""
        hp = self._validated(self.name, self.hp, changes)
        return type(self)(self.info, **hp)

    def with_epochs(self, epochs: int) -> Method:
        """The epoch count changed; a stage switch moves with it (never to epoch 0 of 1)."""
        if "stage_epoch" not in self.hp:
            return self.with_params(epochs=epochs)
        scaled = round(self.hp["stage_epoch"] * epochs / self.hp["epochs"])
        stage_epoch = min(max(scaled, 1 if epochs > 1 else 0), epochs - 1)
        return self.with_params(epochs=epochs, stage_epoch=stage_epoch)

    def model_kwargs(self, model: Callable[..., nn.Module]) -> dict[str, Any]:
        """The hyper-parameters whose names `model`'s constructor takes."""
        names = inspect.signature(model).parameters
        return {k: v for k, v in self.hp.items() if k in names}

    # ---- what the loop calls ----------------------------------------------------------------
    def build(self, spec: DataSpec) -> nn.Module:
        """The model; its forward takes (batch, stage) and returns a `ModelOutput`."""
        if self.model is None:
            raise NotImplementedError(f"{type(self).__name__}: set `model` or override `build`")
        return self.model(spec, **self.model_kwargs(self.model))

    def prediction_group(self) -> int | None:
        """How many consecutive dialogues of the split (in split order) a prediction depends
        on, for a model that pools over its batch (e.g. prototypes); grouped in split order,
        so predictions are deterministic; None (the default): each dialogue's prediction is
        its own, and evaluation batches freely."""
        return None

    def mask_epoch(self, epoch: int) -> int:
        """Which epoch's training mask (counted from 0) this epoch trains under: its own, by
        default (masks redrawn every epoch); a method may keep one draw for all."""
        return epoch

    def stage_score(
        self, stage: str, val_scores: dict[str, dict[str, float]], primary: str
    ) -> float:
        """The validation signal that ends `stage` on a plateau (`imerbench/stopping.py`):
        the fused output's primary metric; in a first stage that trains unimodal heads
        (the fused head is not trained yet), their mean."""
        heads = [v[primary] for name, v in val_scores.items() if name.startswith("head-")]
        if stage != self.stages[-1] and heads:
            return sum(heads) / len(heads)
        return val_scores["fused"][primary]

    def configure_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            model.parameters(), lr=self.hp["lr"], weight_decay=self.hp["weight_decay"]
        )

    def loss(self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str) -> Tensor:
        """The training loss; by default the task loss of the fused output."""
        return task_loss(out.fused, batch)

    def after_backward(
        self, model: nn.Module, out: ModelOutput, batch: Batch, stage: str, ctx: RunContext
    ) -> None:
        """Change gradients between backward and the optimizer step (gradient modulation)."""

    def on_stage_start(self, model: nn.Module, stage: str, ctx: RunContext) -> None:
        """Called before the first epoch of each stage."""

    def on_epoch_end(
        self,
        model: nn.Module,
        epoch: int,
        stage: str,
        val_scores: dict[str, dict[str, float]],
        ctx: RunContext,
    ) -> None:
        """Called after validation with {output: {metric: value}} (empty without val)."""

    def idle_parameters(self, model: nn.Module, stage: str) -> set[str]:
        """Names of parameters that by design get no gradient in this stage."""
        return set()

    def diagnostics(self, model: nn.Module) -> dict[str, float]:
        """Numbers recorded with the run (e.g. mean fusion weight per modality)."""
        return {}

    # ---- what balance strategies may use (declared in `offers`) ------------------------------
    def modality_parts(self, model: nn.Module) -> dict[str, list[Part]]:
        """Each modality's own parameters ("encoders"), disjoint across modalities."""
        raise NotImplementedError(f"{self.name} does not offer its encoders")

    def feature_widths(self, spec: DataSpec) -> dict[str, int]:
        """The width of each modality's features in `extras["modality_features"]`."""
        raise NotImplementedError(f"{self.name} does not offer its features")


def known_profiles() -> list[str]:
    """The hyper-parameter profiles the datasets use, in catalog order."""
    return list(dict.fromkeys(info.profile for info in list_datasets()))


def evaluation_batching(method: Method) -> tuple[int, bool]:
    """(dialogues per evaluation batch, whether batches must follow split order): grouped
    predictions go in split order, in whole groups; others shortest first, 256 at a time."""
    group = method.prediction_group()
    if group is None:
        return EVAL_BATCH_DIALOGUES, False
    return max(1, EVAL_BATCH_DIALOGUES // group) * group, True
