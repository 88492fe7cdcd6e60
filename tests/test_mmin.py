"""MMIN: the teacher learns from complete inputs only and is frozen afterwards; the student
starts from its encoders; the imagination loss only sees the missing modalities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from imerbench.methods import mmin
from imerbench.methods.mmin import STUDENT, TEACHER, imagination_loss
from tiny_corpus import splits_for, tiny_corpus

from imerbench.data import MODALITIES, Batch, SplitData, parse_mask_spec
from imerbench.registry import create_method
from imerbench.step import data_spec
from imerbench.training import train_cell


def _run(monkeypatch: pytest.MonkeyPatch, epochs: int = 4, rate: str = "0.5"):
    """Train a tiny cell, recording every training forward pass of the model."""
    seen: list[tuple[str, Batch]] = []
    evaluated: list[Batch] = []
    teacher_inputs: list[dict[str, torch.Tensor]] = []
    net_forward, teacher_forward = mmin.MMINNet.forward, mmin.Teacher.forward

    def spy_net(self, batch: Batch, stage: str):
        if self.training:
            seen.append((stage, batch))
        else:
            evaluated.append(batch)
        return net_forward(self, batch, stage)

    def spy_teacher(self, feats: dict[str, torch.Tensor]):
        if self.training:
            teacher_inputs.append(feats)
        return teacher_forward(self, feats)

    monkeypatch.setattr(mmin.MMINNet, "forward", spy_net)
    monkeypatch.setattr(mmin.Teacher, "forward", spy_teacher)
    starts: dict[str, dict[str, torch.Tensor]] = {}
    on_stage_start = mmin.MMIN.on_stage_start

    def spy_stage(self, model, stage: str, ctx) -> None:
        on_stage_start(self, model, stage, ctx)
        starts[stage] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    monkeypatch.setattr(mmin.MMIN, "on_stage_start", spy_stage)

    corpus = tiny_corpus(num_dialogues=24, seed=4)
    method = create_method("mmin", "quick", epochs=epochs, stage_epoch=epochs // 2)
    spec, splits = parse_mask_spec(rate), splits_for(corpus, rate)
    outcome = train_cell(method, corpus, splits, fold=0, mask=spec, seed=0, primary="wa")
    assert evaluated and all(b.complete is None for b in evaluated)  # never at evaluation
    return seen, teacher_inputs, starts, outcome


def test_teacher_trains_on_complete_inputs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen, teacher_inputs, _starts, _outcome = _run(monkeypatch)
    teacher_batches = [b for stage, b in seen if stage == TEACHER]
    assert teacher_batches and teacher_inputs
    # the training mask did hide modalities in those batches...
    assert any(bool((~b.available & b.valid[..., None]).any()) for b in teacher_batches)
    # ...yet every real utterance reached the teacher with every modality's true features
    for b, feats in zip(teacher_batches, teacher_inputs, strict=True):
        for m in MODALITIES:
            x = feats[m][b.valid]
            assert bool((x.abs().sum(-1) > 0).all()), m
            full = b.complete.features[m][b.valid]
            torch.testing.assert_close(x, full)


def test_teacher_is_frozen_and_student_starts_from_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _seen, _inputs, starts, outcome = _run(monkeypatch)
    at_switch = starts[STUDENT]
    for m in MODALITIES:
        for k, v in at_switch.items():
            if k.startswith(f"encoders.{m}."):
                torch.testing.assert_close(v, at_switch[f"teacher.{k}"])
    final = outcome.selected["val"].state  # an epoch of the student stage
    teacher_keys = [k for k in final if k.startswith("teacher.")]
    assert teacher_keys
    for k in teacher_keys:
        assert torch.equal(final[k], at_switch[k]), k
    student_moved = any(
        not torch.equal(final[k], at_switch[k]) for k in final if k.startswith("imagine.")
    )
    assert student_moved


def _targets_case():
    torch.manual_seed(0)
    imagined = torch.randn(1, 3, 3 * 2)  # 3 utterances (the last padding), embedding width 2
    targets = {m: torch.randn(1, 3, 2) for m in MODALITIES}
    missing = torch.tensor([[[True, False, False], [False, False, True], [True, True, True]]])
    valid = torch.tensor([[True, True, False]])
    return imagined, targets, missing, valid


def test_imagination_loss_value() -> None:
    imagined = torch.zeros(1, 2, 6)
    targets = {
        "a": torch.tensor([[[1.0, 2.0], [9.0, 9.0]]]),
        "t": torch.tensor([[[9.0, 9.0], [9.0, 9.0]]]),
        "v": torch.tensor([[[9.0, 9.0], [3.0, 4.0]]]),
    }
    missing = torch.tensor([[[True, False, False], [False, False, True]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    # mean over the 4 missing entries: (1 + 4 + 9 + 16) / 4
    assert imagination_loss(imagined, targets, missing, valid).item() == pytest.approx(7.5)


def test_imagination_loss_only_sees_missing_modalities() -> None:
    imagined, targets, missing, valid = _targets_case()
    base = imagination_loss(imagined, targets, missing, valid)
    present = {m: t.clone() for m, t in targets.items()}
    present["t"][0, :2] = 1e6  # t is present at both real utterances
    present["a"][0, 1] = float("nan")  # a is present at utterance 1
    present["v"][0, 2] = -1e6  # padding
    assert imagination_loss(imagined, present, missing, valid).item() == base.item()
    hidden = {m: t.clone() for m, t in targets.items()}
    hidden["v"][0, 1] += 1.0  # v is missing at utterance 1
    assert imagination_loss(imagined, hidden, missing, valid).item() != base.item()
    nothing = torch.zeros_like(missing)
    assert imagination_loss(imagined, targets, nothing, valid).item() == 0.0


def test_student_loss_uses_teacher_embeddings_of_missing_modalities_only() -> None:
    corpus = tiny_corpus(num_dialogues=8, seed=5)
    method = create_method("mmin", "quick")
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    data = SplitData(corpus, np.arange(corpus.num_dialogues), "cpu")
    data = data.with_mask(np.random.default_rng(0).random((data.num_utterances, 3)) > 0.5)
    batch = next(iter(data.batches(8, complete=True)))
    torch.manual_seed(1)
    model.train()
    out = model(batch, STUDENT)
    base = method.loss(model, out, batch, STUDENT).item()

    def loss_with_complete_a(where: torch.Tensor) -> float:
        full = {m: x.clone() for m, x in batch.complete.features.items()}
        full["a"][where] += 5.0
        changed = batch.replace(complete=batch.complete.replace(features=full))
        return method.loss(model, out, changed, STUDENT).item()

    a_present = batch.available[..., 0] & batch.valid
    a_missing = ~batch.available[..., 0] & batch.valid
    assert a_present.any() and a_missing.any()
    assert loss_with_complete_a(a_present) == base
    assert loss_with_complete_a(a_missing) != base
