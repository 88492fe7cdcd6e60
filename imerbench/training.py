"""The one training loop. Every method is trained, evaluated and selected here.

Selection, from one run:
- `val`: the epoch with the best primary metric on validation, among the epochs of the
  method's last stage; its weights are restored and the test split is scored once.
- `test-oracle`: the epoch with the best primary metric on test, over all epochs (what the
  published code reports). It needs a test evaluation every epoch; those scores never
  influence `val`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from torch import Tensor, nn

from imerbench.data import MODALITIES, Batch, Corpus, MaskSpec, SplitData, train_mask
from imerbench.evaluation import Scores, evaluate, predict, score, subset_scores
from imerbench.method import DataSpec, Method, ModelOutput, RunContext
from imerbench.seeding import derive_seed, rng

# (epoch, stage, split, condition, output, metric, value); condition "mask" is the split's
# stored mask, "a"/"t"/"v" the forced single-modality curves.
HistoryRow = tuple[int, str, str, str, str, str, float]


class CellFailure(Exception):
    """The run cannot go on (non-finite loss, ...); the cell is recorded as failed."""


@dataclass
class Selected:
    """The outcome of one selection protocol."""

    selection: str
    epoch: int
    test: Scores
    state: dict[str, Tensor] = field(repr=False)
    # Forced subsets ("a", "at", ...) and patterns ("pattern-at", ...) of the test split.
    conditions: dict[str, Scores] = field(default_factory=dict)


@dataclass
class TrainOutcome:
    selected: dict[str, Selected]
    history: list[HistoryRow]
    epochs: int
    parameters: int
    train_seconds: float
    diagnostics: dict[str, float]


def data_spec(corpus: Corpus) -> DataSpec:
    return DataSpec(
        task=corpus.task,
        num_classes=corpus.num_classes,
        widths=corpus.widths,
        pad_length=corpus.pad_length,
        num_speakers=len(corpus.speaker_names),
    )


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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


def train_step(
    method: Method,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    stage: str,
    ctx: RunContext,
    amp: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> Tensor:
    """The one optimization step (the loop's, the estimator's and the speed benchmark's):
    forward, the method's loss, backward, its gradient hook, the update. Returns the loss,
    detached, on the device (no host sync)."""
    with amp():
        out = model(batch, stage)
        loss = method.loss(model, out, batch, stage)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    method.after_backward(model, float32_outputs(out), batch, stage, ctx)
    optimizer.step()
    return loss.detach()


def train_cell(
    method: Method,
    corpus: Corpus,
    splits: dict[str, SplitData],
    *,
    fold: int,
    mask: MaskSpec,
    seed: int,
    primary: str,
    oracle: bool = True,
    modality_curves: bool = True,
    subsets: bool = True,
    precision: str = "fp32",
    log: Callable[[str], None] = lambda _: None,
) -> TrainOutcome:
    """Train one cell. `splits` hold the train/val/test data on the device, with the
    validation and test masks already set; `val` may be absent (paper protocol).

    `modality_curves`: also score validation with each single modality forced, every epoch
    (the per-modality training curves). `subsets`: score the selected weights (val, or the
    oracle's without val) on every forced subset and stored-mask pattern of the test split.
    `precision`: `bf16` runs every forward pass (training and evaluation) under bfloat16
    autocast; see `autocast`.
    """
    train, val, test = splits["train"], splits.get("val"), splits["test"]
    device = train.device
    amp = partial(autocast, device, precision)
    task = corpus.task
    ctx = RunContext.for_metric(primary)
    stream = (corpus.name, fold, str(mask), seed)
    torch.manual_seed(derive_seed("init", method.name, *stream))

    model = method.build(data_spec(corpus)).to(device)
    optimizer = method.configure_optimizer(model)
    epochs = method.hp["epochs"]
    last_stage = method.stages[-1]
    groups = corpus.speakers[train.utterances] if len(corpus.speaker_names) > 1 else None
    history: list[HistoryRow] = []
    best: dict[str, tuple[float, int, dict[str, Tensor], Scores]] = {}

    def consider(selection: str, value: float, epoch: int, test_scores: Scores) -> None:
        current = best.get(selection)
        if ctx.better(value, None if current is None else current[0]):
            best[selection] = (value, epoch, snapshot(model), test_scores)

    start = time.perf_counter()
    stage = None
    for epoch in range(epochs):
        if method.stage_of(epoch) != stage:
            stage = method.stage_of(epoch)
            method.on_stage_start(model, stage, ctx)
        order = rng("order", *stream, epoch).permutation(train.num_dialogues)
        model.train()
        loss_sum = torch.zeros((), device=device)
        steps = 0
        masked = train.with_mask(
            train_mask(corpus.name, fold, mask, seed, epoch, train.num_utterances, groups)
        )
        for batch in masked.batches(
            method.hp["batch_size"], order, method.fixed_length, complete=method.needs_complete
        ):
            loss_sum += train_step(method, model, optimizer, batch, stage, ctx, amp)
            steps += 1
        mean_loss = float(loss_sum) / max(steps, 1)  # one host sync per epoch
        if not math.isfinite(mean_loss):
            raise CellFailure(f"training loss became {mean_loss} in epoch {epoch} ({stage})")
        history.append((epoch, stage, "train", "mask", "fused", "loss", mean_loss))

        with amp():
            val_scores = evaluate(model, method, val, stage, task) if val is not None else {}
        method.on_epoch_end(model, epoch, stage, val_scores, ctx)
        with amp():
            test_scores = evaluate(model, method, test, stage, task) if oracle else {}
        for split, scores in (("val", val_scores), ("test", test_scores)):
            for output, values in scores.items():
                history.extend(
                    (epoch, stage, split, "mask", output, k, v) for k, v in values.items()
                )
        if modality_curves and val is not None:
            with amp():
                forced = subset_scores(model, method, val, stage, task, MODALITIES, False)
            for condition, scores in forced.items():
                for output, values in scores.items():
                    value = values[primary]
                    history.append((epoch, stage, "val", condition, output, primary, value))
        if val_scores and stage == last_stage:
            consider("val", val_scores["fused"][primary], epoch, {})
        if oracle:
            consider("test-oracle", test_scores["fused"][primary], epoch, test_scores)
        shown = [f"loss {mean_loss:.4f}"]
        shown += [
            f"{s} {primary} {sc['fused'][primary]:.4f}"
            for s, sc in (("val", val_scores), ("test", test_scores))
            if sc
        ]
        log(f"epoch {epoch + 1}/{epochs} [{stage}] " + " ".join(shown))
    train_seconds = time.perf_counter() - start

    selected: dict[str, Selected] = {}
    test_preds = None  # the val-selected model's test predictions, reused for the patterns
    if "val" in best:
        _, epoch, state, _ = best["val"]
        model.load_state_dict(state)
        with amp():
            test_preds = predict(model, method, test, last_stage)  # the one test evaluation
        scores = score(test_preds, test, task)
        selected["val"] = Selected("val", epoch, scores, state)
        log(f"val selection: epoch {epoch + 1}, test {primary} {scores['fused'][primary]:.4f}")
    elif val is not None and val.num_utterances:
        raise CellFailure("validation never produced a finite score; nothing to select")
    if "test-oracle" in best:
        _, epoch, state, scores = best["test-oracle"]
        selected["test-oracle"] = Selected("test-oracle", epoch, scores, state)
    if subsets and selected:
        chosen = selected["val"] if "val" in selected else selected["test-oracle"]
        model.load_state_dict(chosen.state)
        stage_of_choice = method.stage_of(chosen.epoch)
        with amp():
            chosen.conditions = subset_scores(
                model, method, test, stage_of_choice, task, preds=test_preds
            )
    diagnostics = method.diagnostics(model)
    parameters = sum(p.numel() for p in model.parameters())
    return TrainOutcome(selected, history, epochs, parameters, train_seconds, diagnostics)
