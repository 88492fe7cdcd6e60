"""Per-modality scoring: forced subsets and stored-mask patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_corpus import tiny_corpus

from imerbench.data import SUBSETS, SplitData, draw_rate_mask
from imerbench.evaluation import evaluate, patterns, subset_scores
from imerbench.registry import create_method
from imerbench.step import data_spec


def trained_free_model(name: str):
    corpus = tiny_corpus(num_dialogues=40, seed=4)
    method = create_method(name, "quick")
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    data = SplitData(corpus, np.arange(corpus.num_dialogues), "cpu")
    data = data.with_mask(draw_rate_mask(data.num_utterances, 0.5, np.random.default_rng(0)))
    return corpus, method, model, data


def test_patterns_name_the_kept_modalities() -> None:
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    assert list(patterns(mask)) == ["a", "at", "tv", "atv"]


def test_pattern_scores_partition_the_mask_score() -> None:
    corpus, method, model, data = trained_free_model("late-fusion")
    overall = evaluate(model, method, data, "train", corpus.task)["fused"]["wa"]
    stored = data.available.clone()
    scores = subset_scores(model, method, data, "train", corpus.task)
    kept = patterns(data.available[data.valid])
    counts = {c: int((kept == c).sum()) for c in SUBSETS}
    assert sum(counts.values()) == data.num_utterances
    weighted = sum(scores[f"pattern-{c}"]["fused"]["wa"] * n for c, n in counts.items() if n)
    assert weighted / data.num_utterances == pytest.approx(overall, abs=1e-9)
    # The stored mask is back in place afterwards.
    assert torch.equal(data.available, stored)
    assert evaluate(model, method, data, "train", corpus.task)["fused"]["wa"] == overall


def test_forced_subsets_show_exactly_their_modalities() -> None:
    corpus, method, model, data = trained_free_model("unimodal-t")
    scores = subset_scores(model, method, data, "train", corpus.task)
    # unimodal-t ignores audio and video: every subset with text scores alike, and so does
    # every subset without it.
    with_t = {scores[c]["fused"]["wa"] for c in SUBSETS if "t" in c}
    without_t = {scores[c]["fused"]["wa"] for c in SUBSETS if "t" not in c}
    assert len(with_t) == 1 and len(without_t) == 1
    assert with_t != without_t
    # The forced "t" score equals scoring with a hand-made all-text mask.
    data = data.with_mask(np.tile([False, True, False], (data.num_utterances, 1)))
    assert evaluate(model, method, data, "train", corpus.task)["fused"]["wa"] == pytest.approx(
        scores["t"]["fused"]["wa"]
    )
