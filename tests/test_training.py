"""The training loop's promises: honest selection, one test evaluation, failures caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_corpus import splits_for, tiny_corpus

import imerbench.selection as selection
import imerbench.step as step
import imerbench.training as training
from imerbench.data import Corpus, parse_mask_spec
from imerbench.registry import create_method
from imerbench.selection import CellFailure
from imerbench.training import train_cell


def shifted_test_labels(corpus: Corpus) -> Corpus:
    """Test labels rotated by one class: the better the model, the worse its test score."""
    labels = corpus.labels.copy()
    test = corpus.split_utterances(0, "test")
    labels[test] = (labels[test] + 1) % corpus.num_classes
    corpus.labels = labels
    return corpus


def test_val_and_oracle_pick_different_epochs_when_splits_disagree() -> None:
    corpus = shifted_test_labels(tiny_corpus(num_dialogues=48, seed=5))
    method = create_method("early-fusion", "quick", epochs=12, patience=0)  # every epoch
    outcome = train_cell(
        method, corpus, splits_for(corpus), fold=0, mask=parse_mask_spec("0"), seed=0, primary="wa"
    )
    val, oracle = outcome.selected["val"], outcome.selected["test-oracle"]
    assert val.epoch != oracle.epoch
    val_curve = [
        v
        for e, st, sp, c, o, m, v in outcome.history
        if sp == "val" and c == "mask" and o == "fused" and m == "wa"
    ]
    test_curve = [
        v
        for e, st, sp, c, o, m, v in outcome.history
        if sp == "test" and o == "fused" and m == "wa"
    ]
    assert val.epoch == int(np.argmax(val_curve)) + 1  # epochs count from 1
    assert oracle.epoch == int(np.argmax(test_curve)) + 1
    # The val-selected model is scored on test afresh, and agrees with that epoch's test score.
    assert val.test["fused"]["wa"] == pytest.approx(test_curve[val.epoch - 1], abs=1e-9)
    assert oracle.test["fused"]["wa"] > val.test["fused"]["wa"]


@pytest.mark.parametrize("oracle", [False, True])
def test_test_split_is_scored_once_for_val_selection(monkeypatch, oracle: bool) -> None:
    corpus = tiny_corpus(num_dialogues=32)
    splits = splits_for(corpus)
    calls = {"val": 0, "test": 0}
    real_members = training.predict_members

    def count(data) -> None:
        for name in ("val", "test"):
            if data is splits[name]:
                calls[name] += 1

    def counting_members(model, method, datas, stage, which=None):
        for data in datas:
            count(data)
        return real_members(model, method, datas, stage, which)

    # Every pass goes through predict_members(): the loop's (every epoch, for each member of
    # a stack) and the selections' (imerbench/selection.py).
    monkeypatch.setattr(training, "predict_members", counting_members)
    monkeypatch.setattr(selection, "predict_members", counting_members)
    method = create_method("late-fusion", "quick", epochs=5, patience=0)
    outcome = train_cell(
        method,
        corpus,
        splits,
        fold=0,
        mask=parse_mask_spec("0.3"),
        seed=0,
        primary="wa",
        oracle=oracle,
        modality_curves=False,
        subsets=False,  # the forced-subset scores of the selected weights come after, apart
    )
    assert calls["val"] == 5
    assert calls["test"] == (5 + 1 if oracle else 1)
    assert set(outcome.selected) == ({"val", "test-oracle"} if oracle else {"val"})


def test_val_selection_only_considers_the_last_stage() -> None:
    corpus = tiny_corpus(num_dialogues=32)
    method = create_method("unimodal-t", "quick", epochs=6)
    type(method).stages = ("warm-up", "train")  # a two-stage method, for this test only
    try:
        method = method.with_params(stage_epoch=4)
        outcome = train_cell(
            method,
            corpus,
            splits_for(corpus),
            fold=0,
            mask=parse_mask_spec("0"),
            seed=0,
            primary="wa",
        )
    finally:
        type(method).stages = ("train",)
    assert outcome.selected["val"].epoch >= 5  # epochs 1-4 were the first stage


def test_paper_protocol_has_no_val_selection() -> None:
    corpus = tiny_corpus(num_dialogues=32)
    splits = splits_for(corpus, with_val=False)
    assert splits["train"].num_dialogues == len(corpus.fold(0).train) + len(corpus.fold(0).val)
    method = create_method("early-fusion", "quick", epochs=3)
    outcome = train_cell(
        method, corpus, splits, fold=0, mask=parse_mask_spec("0"), seed=0, primary="wa"
    )
    assert set(outcome.selected) == {"test-oracle"}


def test_non_finite_loss_fails_the_cell() -> None:
    corpus = tiny_corpus(num_dialogues=16)
    method = create_method("early-fusion", "quick", epochs=2)
    original = method.loss
    method.loss = lambda *a: original(*a) * torch.tensor(float("nan"))  # type: ignore[method-assign]
    with pytest.raises(CellFailure, match="nan"):
        train_cell(
            method,
            corpus,
            splits_for(corpus),
            fold=0,
            mask=parse_mask_spec("0"),
            seed=0,
            primary="wa",
        )


def test_training_masks_follow_the_cell_not_the_method(monkeypatch) -> None:
    corpus = tiny_corpus(num_dialogues=24)
    seen: dict[str, list[np.ndarray]] = {}
    real = step.train_mask

    for name, batch_size in (("early-fusion", 4), ("unimodal-a", 7)):

        def record(*args, _name=name, **kwargs):
            mask = real(*args, **kwargs)
            seen.setdefault(_name, []).append(mask)
            return mask

        monkeypatch.setattr(step, "train_mask", record)
        method = create_method(name, "quick", epochs=2, batch_size=batch_size)
        train_cell(
            method,
            corpus,
            splits_for(corpus),
            fold=0,
            mask=parse_mask_spec("0.5"),
            seed=3,
            primary="wa",
        )
    a, b = seen["early-fusion"], seen["unimodal-a"]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], a[1])  # redrawn every epoch


def test_a_plateau_ends_training_and_a_cap_is_marked() -> None:
    corpus = tiny_corpus(num_dialogues=32)
    splits = splits_for(corpus)

    def train(**hp: object):
        method = create_method("early-fusion", "quick", **hp)
        return train_cell(
            method, corpus, splits, fold=0, mask=parse_mask_spec("0"), seed=0, primary="wa"
        )

    # No gain can reach min_delta: the first epoch sets the best, two more end the stage.
    stopped = train(epochs=30, patience=2, min_delta=0.9)
    assert (stopped.stopped.epochs_trained, stopped.stopped.reason) == (3, "plateau")
    assert stopped.stopped.converged is True
    assert max(row[0] for row in stopped.history) == 3
    capped = train(epochs=3, patience=10, min_delta=0.0)
    assert (capped.stopped.epochs_trained, capped.stopped.reason) == (3, "cap")
    assert capped.stopped.converged is False
    fixed = train(epochs=3, patience=0)
    assert (fixed.stopped.reason, fixed.stopped.converged) == ("fixed", None)
