"""When a stage of training ends: on a validation plateau, or at its epoch cap.

A stage ends when its validation signal (`Method.stage_score`: the fused primary metric in
the last stage; a two-stage method's first stage watches its own signal, e.g. its unimodal
heads) has not improved by at least `min_delta` for `patience` epochs, or when it has
trained its cap: `stage_epoch` epochs for a first stage, `epochs - stage_epoch` for the
last. `patience` 0, or no validation split (`--protocol paper`), trains every stage to its
cap ("fixed"). A stage stopped by its cap while its signal still improved within the last
`patience` epochs did not converge; nor did a cell any of whose stages did (`Stopped`).

Each member of a stack has its own `Clock`: members stop, and switch stage, on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PLATEAU, CAP, FIXED = "plateau", "cap", "fixed"


@dataclass(frozen=True)
class Stopped:
    """How a cell's training ended: epochs trained, why, and whether it converged (None
    where stopping was fixed, so nothing was judged)."""

    epochs_trained: int
    reason: str
    converged: bool | None


@dataclass
class Clock:
    """One member's stages: which it is in, and when each ends."""

    stages: tuple[str, ...]
    caps: tuple[int, ...]  # epochs per stage
    patience: int  # 0: fixed epochs
    min_delta: float
    higher_is_better: bool
    index: int = 0
    in_stage: int = 0  # epochs trained in the current stage
    trained: int = 0
    best: float | None = None
    since: int = 0  # epochs since the signal last improved
    reasons: list[str] = field(default_factory=list)  # why each stage ended

    def __post_init__(self) -> None:
        if len(self.caps) != len(self.stages):
            raise ValueError(f"{len(self.stages)} stages but {len(self.caps)} caps")
        self._skip_empty()

    @classmethod
    def for_method(
        cls, stages: tuple[str, ...], hp: dict, higher_is_better: bool, watch: bool
    ) -> Clock:
        """A method's clock from its hyper-parameters; `watch`: a validation split exists
        (without one, stages run to their caps)."""
        epochs = int(hp["epochs"])
        if len(stages) == 1:
            caps: tuple[int, ...] = (epochs,)
        elif len(stages) == 2:
            caps = (int(hp["stage_epoch"]), epochs - int(hp["stage_epoch"]))
        else:
            raise ValueError(f"methods have one or two stages, not {len(stages)}")
        patience = int(hp.get("patience", 0)) if watch else 0
        return cls(stages, caps, patience, float(hp.get("min_delta", 0.0)), higher_is_better)

    @property
    def done(self) -> bool:
        return self.index >= len(self.stages)

    @property
    def stage(self) -> str:
        return self.stages[min(self.index, len(self.stages) - 1)]

    @property
    def last_stage(self) -> bool:
        return self.index == len(self.stages) - 1

    def improved(self, value: float) -> bool:
        """Whether `value` beats the stage's best by at least `min_delta` (NaN never)."""
        if value != value:
            return False
        if self.best is None:
            return True
        gain = value - self.best if self.higher_is_better else self.best - value
        return gain >= self.min_delta and gain > 0

    def tick(self, value: float | None) -> str | None:
        """One epoch of the current stage was trained; `value`: its validation signal (None
        without validation). Returns why the stage ended, if it did."""
        if self.done:
            raise RuntimeError("tick() after the last stage ended")
        self.in_stage += 1
        self.trained += 1
        if value is not None and self.improved(value):
            self.best, self.since = value, 0
        else:
            self.since += 1
        if self.patience and self.since >= self.patience:
            return self._end(PLATEAU)
        if self.in_stage >= self.caps[self.index]:
            # A cap reached with patience: the signal improved within the last `patience`.
            return self._end(CAP if self.patience else FIXED)
        return None

    def _end(self, reason: str) -> str:
        self.reasons.append(reason)
        self.index += 1
        self.in_stage, self.best, self.since = 0, None, 0
        self._skip_empty()
        return reason

    def _skip_empty(self) -> None:
        while not self.done and self.caps[self.index] == 0:  # a stage of no epochs
            self.index += 1

    def stopped(self) -> Stopped:
        """The record of a finished clock: `cap` if any stage ran out of epochs while still
        improving (the cell did not converge), else `plateau`, or `fixed` without judging."""
        if CAP in self.reasons:
            return Stopped(self.trained, CAP, False)
        if PLATEAU in self.reasons:
            return Stopped(self.trained, PLATEAU, True)
        return Stopped(self.trained, FIXED, None)
