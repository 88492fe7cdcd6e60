"""MCTN: equal to the released Keras model with its weights copied in; the cell equations by
hand, the cycle through the same encoder and decoder, losses only on present targets, and
predictions from the source alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from imerbench.methods.mctn import MCTNNet, ZeroStateStep, translation_loss
from tiny_corpus import tiny_corpus

from imerbench.data import Batch, SplitData
from imerbench.method import DataSpec
from imerbench.registry import create_method
from imerbench.step import data_spec

FIXTURE = Path(__file__).parent / "data" / "mctn_released.npz"


def released() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def weight(fixture: dict[str, np.ndarray], index: int, name: str) -> torch.Tensor:
    """The released model's weight number `index` (Keras's order), checked by its name."""
    (key,) = [k for k in fixture if k.startswith(f"w{index:02d} ")]
    assert name in key, key
    return torch.from_numpy(fixture[key])


def copy_step(step: ZeroStateStep, kernel: torch.Tensor, bias: torch.Tensor, order: str) -> None:
    """Load the i, g, o slices of a released gate kernel [in, 4H] whose slices are `order`."""
    hidden = kernel.shape[1] // 4
    rows = [order.index(g) for g in "igo"]
    pick = lambda t: torch.cat([t[..., r * hidden : (r + 1) * hidden] for r in rows], -1)  # noqa: E731
    with torch.no_grad():
        step.gates.weight.copy_(pick(kernel).T)
        step.gates.bias.copy_(pick(bias))


def load_released(model: MCTNNet, fx: dict[str, np.ndarray]) -> None:
    """Gate slices (g: the candidate): recurrentshop's LSTMCell f, i, o, g (the recurrent
    kernel, unbiased, multiplies the zero state); the attention decoder i, -, g, o with W1
    and U both biased (W2 reads out, W3's energies are softmaxed over one position); Keras's
    LSTM i, f, g, o."""
    w = lambda k, name: weight(fx, k, name)  # noqa: E731
    for encoder, first in ((model.encoder1, 0), (model.encoder2, 6)):
        for step, k in ((encoder.forward_step, first), (encoder.backward_step, first + 3)):
            copy_step(step, w(k, "kernel"), w(k + 1, "bias"), "fiog")
    for decoder, first in ((model.decoder1, 19), (model.decoder2, 27)):
        bias = w(first + 1, "attention_decoder_cell") + w(first + 3, "attention_decoder_cell")
        copy_step(decoder.step, w(first, "attention_decoder_cell"), bias, "ixgo")
        with torch.no_grad():
            decoder.out.weight.copy_(w(first + 4, "kernel").T)
            decoder.out.bias.copy_(w(first + 5, "bias"))
    copy_step(model.head_step, w(12, "lstm_layer/kernel"), w(14, "lstm_layer/bias"), "ifgo")
    with torch.no_grad():
        model.head.weight.copy_(w(33, "regression_output/kernel").T)
        model.head.bias.copy_(w(34, "regression_output/bias"))


def released_setup() -> tuple[dict[str, np.ndarray], MCTNNet, Batch, object]:
    fx = released()
    width = fx["text"].shape[-1]
    hidden, _, head = (int(h) for h in fx["hidden"])
    spec = DataSpec("regression", 1, {"a": width, "t": width, "v": width}, 1, 1)
    method = create_method("mctn", "mosi", hidden=hidden, head_hidden=head)
    model = method.build(spec)
    assert isinstance(model, MCTNNet)
    load_released(model, fx)
    n = fx["text"].shape[0]  # the fixture's utterances as one dialogue
    features = {
        m: torch.from_numpy(fx[k][:, 0])[None]
        for m, k in zip("atv", ("audio", "text", "video"), strict=True)
    }
    labels = torch.from_numpy(fx["labels"][:, 0])[None]
    ones = torch.ones(1, n, dtype=torch.bool)
    batch = Batch(
        features, ones[..., None].expand(1, n, 3), ones, torch.zeros(1, n, dtype=torch.long), labels
    )
    return fx, model, batch, method


def test_mctn_equals_the_released_model() -> None:
    """The fixture holds a released hierarchical MCTN (hainow/MCTN 5c03e35 on Keras 2.2.4,
    recurrentshop bd3a7e2) at length 1 with widths 6, hidden 5 and a prediction LSTM of 3,
    every weight drawn at random; written by `benchmarks/tools/mctn_released_fixture.py`."""
    fx, model, batch, method = released_setup()
    model.train()  # the translations are computed in training only
    out = model(batch, "train")
    as_released = lambda t: t[0].unsqueeze(1)  # noqa: E731  [1, N, P] -> [N, 1, P]
    for ours, theirs in (
        ("translated", "decoded"),
        ("cycled", "cycled"),
        ("translated2", "decoded2"),
    ):
        expected = torch.from_numpy(fx[theirs])
        torch.testing.assert_close(as_released(out.extras[ours]), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.fused[0], torch.from_numpy(fx["score"]), atol=1e-5, rtol=1e-5)
    loss = method.loss(model, out, batch, "train")  # type: ignore[attr-defined]
    assert loss.item() == pytest.approx(float(fx["loss"]), abs=1e-5)


@pytest.mark.parametrize(
    "which",
    ["encoder1.backward_step.gates.weight", "decoder2.step.gates.bias", "head_step.gates.weight"],
)
def test_a_perturbed_mctn_weight_breaks_the_equality(which: str) -> None:
    fx, model, batch, _ = released_setup()
    with torch.no_grad():
        model.get_parameter(which).add_(0.05)
    model.train()
    out = model(batch, "train")
    moved = [
        not torch.allclose(as_, torch.from_numpy(fx[k]), atol=1e-5)
        for as_, k in (
            (out.extras["translated2"][0].unsqueeze(1), "decoded2"),
            (out.fused[0], "score"),
        )
    ]
    assert any(moved)


def test_gates_are_keras_hard_sigmoids() -> None:
    """Keras 2.2's hard sigmoid (slope 0.2, saturating at +-2.5), not torch's (slope 1/6)."""
    step = ZeroStateStep(1, 1)
    with torch.no_grad():
        step.gates.weight.copy_(torch.tensor([[1.0], [1.0], [1.0]]))
        step.gates.bias.zero_()
    # i = g = o = x: h = hs(x) tanh(hs(x) tanh(x)); hs(1) = 0.7, hs(3) = 1
    for x, hs in ((1.0, 0.7), (3.0, 1.0), (-3.0, 0.0)):
        expected = hs * np.tanh(hs * np.tanh(x))
        assert step(torch.tensor([[x]])).item() == pytest.approx(expected, abs=1e-6)


def test_zero_state_step_is_one_lstm_step_by_hand() -> None:
    step = ZeroStateStep(2, 1)
    with torch.no_grad():
        step.gates.weight.copy_(torch.tensor([[0.5, -1.0], [2.0, 0.0], [0.0, 1.0]]))  # i, g, o
        step.gates.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.tensor([[1.0, 2.0]])
    i, g, o = 0.5 - 2.0 + 0.1, 2.0 - 0.2, 2.0 + 0.3
    hs = lambda v: min(max(0.2 * v + 0.5, 0.0), 1.0)  # noqa: E731
    expected = hs(o) * np.tanh(hs(i) * np.tanh(g))
    assert step(x).item() == pytest.approx(expected, abs=1e-6)


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
