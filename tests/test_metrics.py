"""Metrics against scikit-learn, numpy and scipy: the oracles, never the code under test."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
)

from imerbench.errors import ImerbenchError
from imerbench.metrics import METRICS, compute_metrics, is_better, metrics_for

TOL = 1e-6
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _sk_classification(logits: np.ndarray, target: np.ndarray) -> dict[str, float]:
    pred = logits.argmax(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        return {
            "wa": accuracy_score(target, pred),
            "ua": balanced_accuracy_score(target, pred),
            "wf1": f1_score(target, pred, average="weighted", zero_division=0),
        }


def _sk_regression(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    nz = target != 0
    clip7 = np.round(np.clip(pred, -3, 3)) == np.round(np.clip(target, -3, 3))
    return {
        "acc2": accuracy_score(target[nz] > 0, pred[nz] > 0),
        "f1": f1_score(target[nz] > 0, pred[nz] > 0, average="weighted", zero_division=0),
        "mae": mean_absolute_error(target, pred),
        "corr": pearsonr(pred, target)[0],
        "acc7": float(np.mean(clip7)),
        # ComP's and MoMKE's released MAE and correlation: non-zero targets only
        "mae-nz": mean_absolute_error(target[nz], pred[nz]),
        "corr-nz": pearsonr(pred[nz], target[nz])[0] if nz.sum() >= 2 else math.nan,
    }


def _assert_close(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == set(expected)
    for k, e in expected.items():
        assert math.isclose(got[k], float(e), rel_tol=0, abs_tol=TOL), (k, got[k], e)


def _random_classification(gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(gen.integers(1, 400))
    c = int(gen.integers(2, 8))
    # Targets from a random subset of the classes, so some classes are absent or never hit.
    classes = gen.choice(c, size=int(gen.integers(1, c + 1)), replace=False)
    target = gen.choice(classes, size=n)
    logits = gen.normal(size=(n, c))
    # Make a share of the predictions right, so the scores are not all near chance.
    right = gen.random(n) < gen.random()
    logits[right, target[right]] += 5.0
    return logits, target


def _random_regression(gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(gen.integers(3, 400))
    # MOSI-like labels: multiples of 0.2 in [-3, 3], with zeros and exact halves (x.5).
    target = np.round(gen.uniform(-3.4, 3.4, size=n) * 5) / 5
    target[gen.random(n) < 0.1] = 0.0
    target[gen.random(n) < 0.1] = gen.choice([-2.5, -0.5, 0.5, 1.5])
    pred = target * gen.uniform(-1, 1) + gen.normal(scale=gen.uniform(0.1, 2), size=n)
    pred[gen.random(n) < 0.05] = gen.choice([-3.5, -0.5, 0.5, 2.5, 4.0])
    if not (target != 0).any():
        target[0] = 1.0
    return pred, target


@pytest.mark.parametrize("device", DEVICES)
def test_classification_matches_sklearn(device: str) -> None:
    gen = np.random.default_rng(0)
    for _ in range(300):
        logits, target = _random_classification(gen)
        got = compute_metrics(
            "classification",
            torch.tensor(logits, dtype=torch.float32, device=device),
            torch.tensor(target, device=device),
        )
        _assert_close(got, _sk_classification(logits.astype(np.float32), target))


@pytest.mark.parametrize("device", DEVICES)
def test_regression_matches_sklearn_and_scipy(device: str) -> None:
    gen = np.random.default_rng(1)
    for _ in range(300):
        pred, target = _random_regression(gen)
        pred32, target32 = pred.astype(np.float32), target.astype(np.float32)
        got = compute_metrics(
            "regression",
            torch.tensor(pred32, device=device),
            torch.tensor(target32, device=device),
        )
        expected = _sk_regression(pred32.astype(np.float64), target32.astype(np.float64))
        _assert_close(got, expected)


def test_regression_accepts_column_predictions() -> None:
    gen = np.random.default_rng(2)
    pred, target = _random_regression(gen)
    flat = compute_metrics("regression", torch.tensor(pred), torch.tensor(target))
    column = compute_metrics("regression", torch.tensor(pred)[:, None], torch.tensor(target))
    assert flat == column


def test_correlation_precision_at_large_offsets() -> None:
    gen = np.random.default_rng(3)
    x = 1e6 + gen.normal(size=5000)
    y = 0.3 * x + gen.normal(size=5000)
    got = compute_metrics("regression", torch.tensor(x), torch.tensor(y))["corr"]
    assert math.isclose(got, pearsonr(x, y)[0], abs_tol=TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_padding_is_excluded(device: str) -> None:
    gen = np.random.default_rng(4)
    b, length, c = 6, 40, 4
    lengths = gen.integers(1, length + 1, size=b)
    valid = np.arange(length)[None, :] < lengths[:, None]
    logits = gen.normal(size=(b, length, c))
    labels = gen.integers(0, c, size=(b, length))
    reg_pred = gen.normal(size=(b, length, 1))
    reg_target = np.round(gen.uniform(-3, 3, size=(b, length)) * 5) / 5
    expected_cls = _sk_classification(logits[valid], labels[valid])
    expected_reg = _sk_regression(reg_pred[..., 0][valid], reg_target[valid])
    # Garbage in the padded positions: huge and NaN outputs, out-of-range labels.
    logits[~valid] = np.nan
    logits[~valid, 0] = 1e30
    labels[~valid] = 99
    reg_pred[~valid] = np.nan
    reg_target[~valid] = -7.0
    v = torch.tensor(valid, device=device)
    got_cls = compute_metrics(
        "classification",
        torch.tensor(logits, device=device),
        torch.tensor(labels, device=device),
        v,
    )
    got_reg = compute_metrics(
        "regression",
        torch.tensor(reg_pred, device=device),
        torch.tensor(reg_target, device=device),
        v,
    )
    _assert_close(got_cls, expected_cls)
    _assert_close(got_reg, expected_reg)


def test_non_zero_convention() -> None:
    target = torch.tensor([0.0, 1.0, -1.0, 0.0, 2.0])
    pred = torch.tensor([5.0, 1.0, 1.0, -5.0, 0.4])
    got = compute_metrics("regression", pred, target)
    # Non-zero targets: (1, 1) right, (-1, 1) wrong, (2, 0.4) right.
    assert got["acc2"] == pytest.approx(2 / 3)
    nz = np.array([1.0, -1.0, 2.0]) > 0
    assert got["f1"] == pytest.approx(
        f1_score(nz, np.array([1.0, 1.0, 0.4]) > 0, average="weighted")
    )
    # MAE keeps the zero-labelled utterances: (5 + 0 + 2 + 5 + 1.6) / 5.
    assert got["mae"] == pytest.approx(13.6 / 5)
    # Changing the predictions on zero targets moves MAE but neither acc2 nor f1.
    pred2 = pred.clone()
    pred2[[0, 3]] = torch.tensor([-5.0, 5.0])
    got2 = compute_metrics("regression", pred2, target)
    assert got2["acc2"] == got["acc2"] and got2["f1"] == got["f1"]
    assert got2["mae"] == got["mae"]  # same distances, mirrored
    pred3 = pred.clone()
    pred3[0] = 0.0
    assert compute_metrics("regression", pred3, target)["mae"] != got["mae"]


def test_acc7_rounds_half_to_even_like_numpy() -> None:
    pred = torch.tensor([0.5, 1.5, 2.5, -0.5, 3.7, -9.0])
    target = torch.tensor([0.0, 2.0, 2.0, 0.0, 3.0, -3.0])
    # numpy: round(0.5)=0, round(1.5)=2, round(2.5)=2, round(-0.5)=-0, clip 3.7->3, -9->-3.
    assert compute_metrics("regression", pred, target)["acc7"] == 1.0


def test_edge_cases() -> None:
    empty_cls = compute_metrics("classification", torch.zeros(0, 4), torch.zeros(0).long())
    empty_reg = compute_metrics("regression", torch.zeros(0), torch.zeros(0))
    assert all(math.isnan(v) for v in empty_cls.values())
    assert all(math.isnan(v) for v in empty_reg.values())
    # All padding counts as empty too.
    padded = compute_metrics(
        "classification",
        torch.randn(2, 3, 4),
        torch.zeros(2, 3).long(),
        torch.zeros(2, 3, dtype=torch.bool),
    )
    assert all(math.isnan(v) for v in padded.values())
    # Constant predictions: correlation undefined (NaN), the rest defined.
    const = compute_metrics("regression", torch.full((10,), 0.1), torch.linspace(-2, 2, 10))
    assert math.isnan(const["corr"])
    # Equal up to float32 rounding (one unit in the last place apart): constant too; a real
    # variation of 1e-5 is a correlation, scipy's.
    noisy = torch.full((10,), 0.1)
    noisy[::2] = torch.nextafter(noisy[::2], torch.tensor(1.0))
    assert math.isnan(compute_metrics("regression", noisy, torch.linspace(-2, 2, 10))["corr"])
    varied = torch.full((10,), 0.1) + 1e-5 * torch.linspace(-1, 1, 10) ** 3
    got = compute_metrics("regression", varied, torch.linspace(-2, 2, 10))["corr"]
    assert math.isclose(got, pearsonr(varied.double(), np.linspace(-2, 2, 10))[0], abs_tol=TOL)
    assert not math.isnan(const["mae"]) and not math.isnan(const["acc2"])
    # Only zero targets: acc2 and f1 have nothing to score.
    zeros = compute_metrics("regression", torch.randn(5), torch.zeros(5))
    assert math.isnan(zeros["acc2"]) and math.isnan(zeros["f1"])
    # A class never predicted scores F1 0 for that class.
    target = np.array([0, 0, 1, 1, 2])
    logits = np.eye(3)[[0, 0, 0, 1, 1]]
    got = compute_metrics("classification", torch.tensor(logits), torch.tensor(target))
    assert got["wf1"] == pytest.approx(
        f1_score(target, logits.argmax(1), average="weighted", zero_division=0)
    )
    assert got["ua"] == pytest.approx(balanced_accuracy_score(target, logits.argmax(1)))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ImerbenchError):
        compute_metrics("classification", torch.randn(5, 3), torch.zeros(4).long())
    with pytest.raises(ImerbenchError):
        compute_metrics("regression", torch.randn(5, 2), torch.zeros(5))
    with pytest.raises(ImerbenchError):
        compute_metrics("regression", torch.randn(2, 3), torch.zeros(2, 3), torch.ones(3).bool())
    with pytest.raises(ImerbenchError):
        metrics_for("ranking")


def test_registry_and_direction() -> None:
    assert [m.id for m in metrics_for("classification")] == ["wa", "ua", "wf1"]
    assert [m.id for m in metrics_for("regression")] == [
        "acc2",
        "f1",
        "mae",
        "corr",
        "acc7",
        "mae-nz",
        "corr-nz",
    ]
    for mid, m in METRICS.items():
        assert m.id == mid
        assert m.higher_is_better == (mid not in ("mae", "mae-nz"))
    assert is_better("wa", 0.7, 0.6) and not is_better("wa", 0.6, 0.7)
    assert is_better("mae", 0.6, 0.7) and not is_better("mae", 0.7, 0.6)
    assert not is_better("f1", 0.5, 0.5) and not is_better("mae", 0.5, 0.5)
    assert is_better("wa", 0.1, float("nan")) and not is_better("wa", float("nan"), 0.1)
    with pytest.raises(ImerbenchError, match="did you mean 'wa'"):
        is_better("waa", 0.1, 0.2)
