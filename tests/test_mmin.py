"""MMIN: equal to the port's networks and loss on a fixed batch; the teacher learns from
complete inputs only and is frozen afterwards; the student starts from its encoders; the
imagination loss as the port computes it, or over the missing modalities only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from imerbench.methods import mmin
from imerbench.methods.mmin import (
    STUDENT,
    TEACHER,
    MMINNet,
    convert_port_state_dict,
    imagination_loss,
)
from tiny_corpus import splits_for, tiny_corpus

from imerbench.data import MODALITIES, Batch, SplitData, parse_mask_spec
from imerbench.method import DataSpec
from imerbench.registry import create_method
from imerbench.step import Member, data_spec, member_batches
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

    def loss_with_complete_a(where: torch.Tensor) -> float:  # port: zeros where present
        full = {m: x.clone() for m, x in batch.complete.features.items()}
        full["a"][where] += 5.0
        changed = batch.replace(complete=batch.complete.replace(features=full))
        return method.loss(model, out, changed, STUDENT).item()

    a_present = batch.available[..., 0] & batch.valid
    a_missing = ~batch.available[..., 0] & batch.valid
    assert a_present.any() and a_missing.any()
    assert loss_with_complete_a(a_present) == base
    assert loss_with_complete_a(a_missing) != base


# ---- the port ------------------------------------------------------------------------------------
FIXTURE = Path(__file__).parent / "data" / "mmin_released.pt"


def port_model(dropout: float) -> tuple[dict, MMINNet, Batch, object]:
    data = torch.load(FIXTURE, weights_only=True)
    cfg = data["config"]
    spec = DataSpec("classification", cfg["classes"], cfg["widths"], 4, 1)
    layers = {"enc_layers": tuple(cfg["cls_layers"]), "cls_layers": tuple(cfg["cls_layers"])}
    layers |= {"ae_layers": tuple(cfg["ae_layers"]), "blocks": cfg["blocks"]}
    method = create_method(
        "mmin", "iemocap", embed=cfg["embed"], dropout=dropout, teacher_dropout=dropout, **layers
    )
    model = method.build(spec)
    model.load_state_dict(convert_port_state_dict(data["state_dicts"]))  # strict
    # The port's 8 utterances as 2 dialogues of 4 (it has no dialogue context).
    available = data["available"].view(2, 4, 3)
    full = {m: x.view(2, 4, -1) for m, x in data["features"].items()}
    valid = torch.ones(2, 4, dtype=torch.bool)
    labels = data["labels"].view(2, 4)
    speakers = torch.zeros_like(labels)
    complete = Batch(full, torch.ones_like(available), valid, speakers, labels)
    features = {m: x * available[..., k : k + 1] for k, (m, x) in enumerate(full.items())}
    batch = Batch(features, available, valid, speakers, labels, complete)
    return data, model, batch, method


def test_mmin_equals_the_port() -> None:
    """The fixture holds MMIN's port networks (zeroQiaoba/GCNet 8cce4a0,
    `baseline-mmin/models/networks`: FcClassifier encoders and classifiers, ResidualAE
    imagination and cycle autoencoders) at widths a/t/v 6/8/5, embedding 4, classifier layers
    6,5, autoencoder layers 7,5,3, 2 blocks, 3 classes, dropout 0.5; 8 utterances with random
    availability; the student's and the teacher's eval-mode logits, the imagination, and the
    port's student loss (CE + 4 imagination MSE + 2 cycle MSE, `models/mmin_model.py`).
    Written by `benchmarks/tools/mmin_released_fixture.py`."""
    data, model, batch, _ = port_model(dropout=0.5)
    expected = data["outputs"]
    model.eval()
    with torch.no_grad():
        student = model(batch, STUDENT)
        teacher = model(batch.complete, TEACHER)
    torch.testing.assert_close(student.fused.reshape(8, -1), expected["fused"], rtol=0, atol=1e-6)
    imagined = student.extras["imagined"].reshape(8, -1)
    torch.testing.assert_close(imagined, expected["imagined"], rtol=0, atol=1e-6)
    torch.testing.assert_close(teacher.fused.reshape(8, -1), expected["teacher"], rtol=0, atol=1e-6)
    # The loss: training mode without dropout (the port's loss came from eval mode).
    _, model, batch, method = port_model(dropout=0.0)
    model.train()
    with torch.no_grad():
        loss = method.loss(model, model(batch, STUDENT), batch, STUDENT)
    torch.testing.assert_close(loss, data["loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, output",
    [("imagine.encoders.1.2.weight", "imagined"), ("teacher.encoders.t.out.bias", "teacher")],
)
def test_a_perturbed_mmin_weight_breaks_the_equality(name: str, output: str) -> None:
    data, model, batch, _ = port_model(dropout=0.5)
    model.eval()
    with torch.no_grad():
        model.get_parameter(name).add_(0.1)
        out = model(batch.complete, TEACHER).fused if output == "teacher" else None
        if out is None:
            out = model(batch, STUDENT).extras["imagined"]
    assert (out.reshape(8, -1) - data["outputs"][output]).abs().max() > 1e-5  # 10x the tolerance


def test_port_imagination_loss_does_not_vanish_without_missing_inputs() -> None:
    """At MR 0 the port's target of every slot is the teacher's embedding of zeros."""
    _, model, batch, method = port_model(dropout=0.0)
    complete = batch.replace(
        features=batch.complete.features, available=torch.ones_like(batch.available)
    )
    model.train()
    with torch.no_grad():
        out = model(complete, STUDENT)
        zeros = {m: torch.zeros_like(x) for m, x in complete.features.items()}
        target = torch.cat(
            [model.teacher.encoders[m](zeros[m]) for m in MODALITIES], dim=-1
        )  # [2, 4, 3E]
        expected = ((out.extras["imagined"] - target) ** 2).mean()
        full = method.loss(model, out, complete, STUDENT)
        missing_only = method.with_params(imagination_target="missing")
        rest = missing_only.loss(model, out, complete, STUDENT)
    assert expected > 1e-4
    torch.testing.assert_close(full - rest, 4.0 * expected, rtol=1e-5, atol=1e-7)


def test_port_initialisation() -> None:
    spec = DataSpec("classification", 4, {"a": 60, "t": 80, "v": 50}, 10, 2)
    model = create_method("mmin", "iemocap").build(spec)
    weights = torch.cat(
        [m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    )
    biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    assert all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    plain = create_method("mmin", "iemocap", port_init=False).build(spec)
    assert any(p.abs().sum() > 0 for n, p in plain.named_parameters() if n.endswith("bias"))


@pytest.mark.parametrize("fixed", [True, False])
def test_fixed_train_masks_keep_one_draw(fixed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tiny_corpus(num_dialogues=8, seed=5)
    method = create_method("mmin", "quick", fixed_train_masks=fixed)
    member = Member(splits_for(corpus, "0.5"), parse_mask_spec("0.5"), seed=0)
    drawn: list[np.ndarray] = []
    with_mask = SplitData.with_mask

    def spy(self: SplitData, mask: np.ndarray) -> SplitData:
        drawn.append(np.array(mask))
        return with_mask(self, mask)

    monkeypatch.setattr(SplitData, "with_mask", spy)
    for epoch in range(3):
        member_batches(method, corpus, member, 0, epoch, None, False)
    assert len(drawn) == 3 and 0 < drawn[0].mean() < 1
    assert all(np.array_equal(drawn[0], d) for d in drawn[1:]) == fixed
