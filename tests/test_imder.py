"""IMDer: the sampler and the score-matching loss equal the released functions; the SDE by
hand; missing modalities are sampled from the available ones only; evaluation is
deterministic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from imerbench.methods.imder import (
    RECOVER,
    IMDerNet,
    diffusion,
    marginal_std,
    sample,
    score_matching_loss,
)
from tiny_corpus import tiny_corpus

from imerbench.data import SplitData
from imerbench.registry import create_method
from imerbench.step import data_spec

FIXTURE = Path(__file__).parent / "data" / "imder_released.pt"


def stand_in(x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """The fixture's closed-form score (benchmarks/tools/imder_released_fixture.py)."""
    return -(x - 0.5 * condition) / (1.0 + t[:, None, None])


def test_sampler_and_loss_equal_the_released_functions() -> None:
    """The fixture holds the released `Euler_Maruyama_sampler` (5 steps) and `loss_fn`
    (mdswyz/IMDer 1901a92, `trains/singleTask/model/scoremodel.py`) run on a closed-form score
    with torch's generator seeded (1 for the loss, 2 for the sampler), on a [2, 32, 48]
    condition; ours draw in the same order."""
    data = torch.load(FIXTURE, weights_only=True)
    torch.manual_seed(1)
    loss = score_matching_loss(stand_in, data["x"], data["condition"]).mean()
    torch.testing.assert_close(loss, data["loss"], rtol=1e-5, atol=1e-5)
    torch.manual_seed(2)
    samples = sample(stand_in, data["condition"], data["steps"])
    torch.testing.assert_close(samples, data["samples"], rtol=1e-5, atol=1e-4)
    torch.manual_seed(2)
    other = sample(stand_in, data["condition"], data["steps"] + 1)
    assert (other - data["samples"]).abs().max() > 1e-2  # the step count matters
    torch.testing.assert_close(marginal_std(torch.tensor([0.3, 1.0])), data["std"])


def test_sde_by_hand() -> None:
    t = torch.tensor([0.5, 1.0])
    expected = [math.sqrt((25 ** (2 * v) - 1) / (2 * math.log(25))) for v in (0.5, 1.0)]
    torch.testing.assert_close(marginal_std(t), torch.tensor(expected))
    torch.testing.assert_close(diffusion(t), torch.tensor([5.0, 25.0]))


def test_a_perfect_score_has_a_small_loss() -> None:
    """For x concentrated at c / 2 the true score of the perturbed x is -z / std: the loss of
    that score is 0, and of a wrong one is not."""
    x = torch.zeros(64, 3)

    def true_score(xt: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return -xt / marginal_std(t)[:, None] ** 2

    torch.manual_seed(0)
    assert score_matching_loss(true_score, x, torch.zeros_like(x)).max() < 1e-8
    torch.manual_seed(0)
    assert score_matching_loss(lambda a, b, c: torch.zeros_like(a), x, x).mean() > 1.0


def build(**overrides: object):  # type: ignore[no-untyped-def]
    corpus = tiny_corpus("regression", num_dialogues=6)
    method = create_method("imder", "quick", **overrides)
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    assert isinstance(model, IMDerNet)
    data = SplitData(corpus, np.arange(6), "cpu")
    return method, model, data


def test_missing_modalities_are_sampled_from_the_available_ones() -> None:
    _, model, data = build()
    model.eval()
    keep = np.zeros((data.num_utterances, 3), dtype=bool)
    keep[:, 1] = True  # text only
    batch = next(iter(data.with_mask(keep).batches(6)))
    with torch.no_grad():
        base = model(batch, RECOVER).fused
        again = model(batch, RECOVER).fused  # evaluation draws from a fixed seed
        hidden = {**batch.features, "a": batch.features["a"] + 7.0, "v": -batch.features["v"]}
        masked = model(batch.replace(features=hidden), RECOVER).fused
        text = {**batch.features, "t": batch.features["t"] + 1.0}
        moved = model(batch.replace(features=text), RECOVER).fused
    assert torch.equal(base, again) and torch.equal(base, masked)
    assert (moved - base)[batch.valid].abs().max() > 1e-4


@pytest.mark.parametrize("steps", [1, 3])
def test_more_sampling_steps_cost_more_score_calls(steps: int) -> None:
    calls = []

    def counted(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        calls.append(float(t[0]))
        return -x

    sample(counted, torch.zeros(4, 2), steps)
    assert len(calls) == steps and calls[0] == 1.0
    assert calls[-1] == pytest.approx(1.0 if steps == 1 else 1e-3)


def test_evaluation_noise_ignores_the_other_utterances_masks() -> None:
    """An utterance's evaluation prediction is fixed by its own inputs and its place in the
    batch: another utterance losing a modality does not move it (the sampler's draws are
    made for every utterance), and a second pass repeats it."""
    corpus = tiny_corpus(num_dialogues=4)
    torch.manual_seed(0)
    model = create_method("imder", "quick").build(data_spec(corpus))
    model.eval()
    data = SplitData(corpus, np.arange(4), "cpu")
    keep = np.ones((data.num_utterances, 3), dtype=bool)
    keep[:, 0] = np.arange(data.num_utterances) % 2 == 0  # audio missing at odd utterances
    batch = next(iter(data.with_mask(keep).batches(4)))
    other = keep.copy()
    other[-1] = [False, True, False]  # the last utterance loses its video too
    changed = next(iter(data.with_mask(other).batches(4)))
    with torch.no_grad():
        first, again = model(batch, RECOVER).fused, model(batch, RECOVER).fused
        moved = model(changed, RECOVER).fused
    torch.testing.assert_close(again, first)
    last = batch.valid.nonzero()[-1].tolist()
    untouched = batch.valid.clone()
    untouched[last[0], last[1]] = False
    torch.testing.assert_close(moved[untouched], first[untouched])
    assert (moved[last[0], last[1]] - first[last[0], last[1]]).abs().max() > 1e-4
