"""MCTN: the cell equations by hand, the cycle through the same encoder and decoder, losses
only on present targets, and predictions from the source alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from imerbench.methods.mctn import MCTNNet, ZeroStateStep, translation_loss
from tiny_corpus import tiny_corpus

from imerbench.data import SplitData
from imerbench.registry import create_method
from imerbench.step import data_spec


def test_zero_state_step_is_one_lstm_step_by_hand() -> None:
    step = ZeroStateStep(2, 1)
    with torch.no_grad():
        step.gates.weight.copy_(torch.tensor([[0.5, -1.0], [2.0, 0.0], [0.0, 1.0]]))  # i, g, o
        step.gates.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.tensor([[1.0, 2.0]])
    i, g, o = 0.5 - 2.0 + 0.1, 2.0 - 0.2, 2.0 + 0.3
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    expected = sig(o) * np.tanh(sig(i) * np.tanh(g))
    assert step(x).item() == pytest.approx(expected, abs=1e-6)
    # The same step as torch's LSTM cell from the zero state (forget gate and recurrence idle).
    cell = torch.nn.LSTMCell(2, 1)
    with torch.no_grad():
        w, b = step.gates.weight, step.gates.bias
        cell.weight_ih.copy_(torch.cat([w[:1], torch.randn(1, 2), w[1:2], w[2:]]))  # i f g o
        cell.bias_ih.copy_(torch.cat([b[:1], torch.randn(1), b[1:2], b[2:]]))
        cell.bias_hh.zero_()
        cell.weight_hh.normal_()  # multiplies the zero state
    h, _ = cell(x)
    torch.testing.assert_close(step(x), h)


def setup(**overrides: object):  # type: ignore[no-untyped-def]
    corpus = tiny_corpus(num_dialogues=8, seed=1)
    method = create_method("mctn", "quick", **overrides)
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    data = SplitData(corpus, np.arange(corpus.num_dialogues), "cpu")
    data = data.with_mask(np.random.default_rng(0).random((data.num_utterances, 3)) > 0.4)
    return method, model, next(iter(data.batches(8)))


def test_the_cycle_reuses_the_first_encoder_and_decoder() -> None:
    _, model, batch = setup()
    assert isinstance(model, MCTNNet)
    model.train()
    out = model(batch, "train")
    again = model.decoder1(model.encoder1(out.extras["translated"]))
    torch.testing.assert_close(out.extras["cycled"], again)
    assert out.extras["cycled"].shape[-1] == model.width == 8  # the widest modality (t)


def test_predictions_need_the_source_only() -> None:
    _, model, batch = setup()
    model.eval()
    noisy = dict(batch.features)
    noisy["a"] = batch.features["a"] + 5.0
    noisy["v"] = -batch.features["v"]
    with torch.no_grad():
        a = model(batch, "train").fused
        b = model(batch.replace(features=noisy), "train").fused
        text = {**batch.features, "t": batch.features["t"] + 1}
        c = model(batch.replace(features=text), "train").fused
    torch.testing.assert_close(a, b)
    assert (a - c)[batch.valid & batch.available[..., 1]].abs().max() > 1e-4


def test_translation_loss_counts_present_targets_over_the_padded_width() -> None:
    pred = torch.zeros(1, 3, 4)
    target = torch.tensor([[[1.0, 1, 0, 0], [2.0, 2, 2, 2], [9.0, 9, 9, 9]]])
    present = torch.tensor([[True, True, False]])
    # (1 + 1) / 4 and (4 * 4) / 4 over the two present utterances
    assert translation_loss(pred, target, present).item() == pytest.approx((0.5 + 4.0) / 2)


def test_loss_is_the_released_composition() -> None:
    method, model, batch = setup(l2=0.0)
    model.train()
    out = model(batch, "train")
    loss = method.loss(model, out, batch, "train")
    present = {m: batch.available[..., k] & batch.valid for k, m in enumerate("atv")}
    pad = lambda x: torch.nn.functional.pad(x, (0, 8 - x.shape[-1]))  # noqa: E731
    targets = {m: pad(batch.features[m] * present[m][..., None]) for m in "atv"}

    def mse(pred: torch.Tensor, m: str) -> torch.Tensor:
        keep = present[m]
        return ((pred - targets[m]) ** 2).mean(-1)[keep].mean()

    ce = torch.nn.functional.cross_entropy(out.fused[batch.valid], batch.labels[batch.valid])
    expected = ce + 0.1 * (mse(out.extras["translated"], "a") + mse(out.extras["translated2"], "v"))
    expected = expected + 0.1 * mse(out.extras["cycled"], "t")
    torch.testing.assert_close(loss, expected)
    with_l2 = method.with_params(l2=0.01).loss(model, out, batch, "train")
    torch.testing.assert_close(with_l2 - loss, 0.01 * model.head.weight.square().sum())


def test_a_hidden_target_never_reaches_the_loss() -> None:
    method, model, batch = setup()
    model.train()
    out = model(batch, "train")
    hidden = ~batch.available[..., 0] & batch.valid  # audio masked out
    assert hidden.any()
    changed = dict(batch.features)
    changed["a"] = torch.where(hidden[..., None], batch.features["a"] + 100, batch.features["a"])
    a = method.loss(model, out, batch, "train")
    b = method.loss(model, out, batch.replace(features=changed), "train")
    assert a.item() == b.item()
