"""The built-in synthetic corpora: their structure, their statistics and their Bayes limits.

Expected values come from the generator's stated law (its frozen parameters), re-derived
here by other routes: brute-force enumeration, dense Gaussian conditioning, Sheppard's closed
form, and classifiers fitted by scikit-learn.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import f1_score

from imerbench.data import SUBSETS, Corpus
from imerbench.data.synthetic import (
    BAYES_CONDITIONS,
    EMOTION,
    SENTIMENT,
    bayes_limit,
    bayes_table,
    forward_backward,
    gaussian_chain_smoother,
    generate_synthetic,
    make_synthetic,
)
from imerbench.data.synthetic.bayes import _cached_table, _jackknife, _weighted_f1
from imerbench.errors import ImerbenchError

SINGLES = ("a", "t", "v")


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the Bayes tables this module computes out of the user's cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("IMERBENCH_CACHE", str(tmp_path_factory.mktemp("imerbench-cache")))
    yield
    patch.undo()


def _row(table: pd.DataFrame, condition: str, metric: str) -> tuple[float, float]:
    hit = table[(table["condition"] == condition) & (table["metric"] == metric)]
    assert len(hit) == 1, (condition, metric)
    return float(hit["value"].iloc[0]), float(hit["se"].iloc[0])


def _lo(table: pd.DataFrame, condition: str, metric: str) -> float:
    value, se = _row(table, condition, metric)
    return value - 2 * se


def _hi(table: pd.DataFrame, condition: str, metric: str) -> float:
    value, se = _row(table, condition, metric)
    return value + 2 * se


def _split(corpus: Corpus, split: str, mods: str) -> tuple[np.ndarray, np.ndarray]:
    idx = corpus.split_utterances(0, split)  # type: ignore[arg-type]
    return np.hstack([corpus.features[m][idx] for m in mods]), corpus.labels[idx]


# ------------------------------------------------------------------------------ the corpora


@pytest.mark.parametrize("dataset", ["synthetic", "synthetic-mosi"])
def test_corpus_structure(dataset: str) -> None:
    c = make_synthetic(dataset)
    assert isinstance(c, Corpus) and c.name == dataset
    assert c.widths == {"a": 32, "t": 48, "v": 32}
    assert all(x.dtype == np.float32 for x in c.features.values())
    lengths = c.dialogue_lengths
    params = EMOTION if dataset == "synthetic" else SENTIMENT
    assert lengths.min() >= params.min_length and lengths.max() <= params.max_length
    assert c.pad_length == lengths.max()
    assert len(set(c.utterance_ids)) == c.num_utterances
    assert len(set(c.dialogue_ids)) == c.num_dialogues
    # Every utterance id names its own dialogue: the flat runs are the dialogues.
    owner = np.repeat(np.arange(c.num_dialogues), lengths)
    assert all(u.startswith(c.dialogue_ids[d]) for u, d in zip(c.utterance_ids, owner, strict=True))
    # One fold whose splits partition the dialogues, with the stated sizes.
    assert len(c.folds) == 1
    fold = c.fold(0)
    joined = np.sort(np.concatenate([fold.train, fold.val, fold.test]))
    np.testing.assert_array_equal(joined, np.arange(c.num_dialogues))
    sizes = {s: len(c.split_utterances(0, s)) for s in ("train", "val", "test")}
    assert 4_000 <= sizes["train"] < 4_000 + params.max_length
    assert 1_000 <= sizes["val"] < 1_000 + params.max_length
    assert sizes["test"] >= 5_000
    assert np.sqrt(0.25 / sizes["test"]) < 0.0071  # the worst-case binomial standard error
    # Splits are a random draw, not blocks of consecutive dialogues.
    assert fold.test.min() < fold.train.max() and fold.train.min() < fold.test.max()
    if dataset == "synthetic":
        assert c.task == "classification" and c.num_classes == 4
        assert c.class_names == ("happy", "sad", "neutral", "angry")
        assert c.labels.dtype == np.int64
        assert set(np.unique(c.labels)) == {0, 1, 2, 3}
        assert c.speaker_names == ("F", "M")
        for d in range(c.num_dialogues):
            s = c.dialogue_offsets[d]
            assert set(c.speakers[s : s + lengths[d]]) == {0, 1}
    else:
        assert c.task == "regression" and c.num_classes == 1
        assert c.labels.dtype == np.float32
        assert np.all(np.abs(c.labels) < 3) and (c.labels > 0).any() and (c.labels < 0).any()
        assert c.speaker_names == ("",) and not c.speakers.any()


@pytest.mark.parametrize("dataset", ["synthetic", "synthetic-mosi"])
def test_corpus_is_deterministic_and_cached(dataset: str) -> None:
    cached = make_synthetic(dataset)
    assert make_synthetic(dataset) is cached
    assert make_synthetic(dataset, widths="small", seed=0) is cached
    fresh = generate_synthetic(dataset)  # bypasses the in-process cache
    for m in "atv":
        np.testing.assert_array_equal(fresh.features[m], cached.features[m])
    np.testing.assert_array_equal(fresh.labels, cached.labels)
    np.testing.assert_array_equal(fresh.fold(0).test, cached.fold(0).test)
    other = generate_synthetic(dataset, seed=1)
    assert other.num_utterances != cached.num_utterances or not np.array_equal(
        other.labels, cached.labels
    )


def test_real_widths_draw_the_same_sample_wider() -> None:
    small = make_synthetic("synthetic")
    real = generate_synthetic("synthetic", widths="real")
    assert real.widths == {"a": 512, "t": 1024, "v": 1024}
    np.testing.assert_array_equal(real.labels, small.labels)
    np.testing.assert_array_equal(real.dialogue_offsets, small.dialogue_offsets)


def test_bad_names_are_user_errors() -> None:
    with pytest.raises(ImerbenchError, match="did you mean 'synthetic'"):
        make_synthetic("synthetik")
    with pytest.raises(ImerbenchError, match="huge"):
        make_synthetic("synthetic", widths="huge")
    with pytest.raises(ImerbenchError, match=r"mr0\.35"):
        bayes_limit("synthetic", "mr0.35", "wa")
    with pytest.raises(ImerbenchError, match="acc2"):
        bayes_limit("synthetic", "atv", "acc2")
    # Spellings of the same condition agree.
    assert bayes_limit("synthetic", "TA", "wa") == bayes_limit("synthetic", "at", "wa")
    assert bayes_limit("synthetic", "mr0.30", "wa") == bayes_limit("synthetic", "mr0.3", "wa")


def test_info_holds_the_generator_and_its_bayes_table() -> None:
    c = make_synthetic("synthetic")
    assert c.info["generator"]["stay"] == EMOTION.stay
    table = c.info["bayes"]
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["condition", "metric", "value", "se", "n"]
    assert tuple(table["condition"]) == BAYES_CONDITIONS
    assert (table["n"] >= 100_000).all()
    assert bayes_limit("synthetic", "atv", "wa") == _row(table, "atv", "wa")[0]


# ------------------------------------------------------------------- the corpus's statistics


def test_label_chain_statistics_match_the_generator() -> None:
    c = make_synthetic("synthetic")
    pi = np.asarray(EMOTION.stationary)
    freq = np.bincount(c.labels, minlength=4) / c.num_utterances
    np.testing.assert_allclose(freq, pi, atol=0.02)
    same, turns, pairs = 0, 0, 0
    for d in range(c.num_dialogues):
        s, e = c.dialogue_offsets[d], c.dialogue_offsets[d + 1]
        same += int((c.labels[s + 1 : e] == c.labels[s : e - 1]).sum())
        turns += int((c.speakers[s + 1 : e] != c.speakers[s : e - 1]).sum())
        pairs += e - s - 1
    # Keep with probability `stay`, else redraw from pi (which may redraw the same label).
    expected_stay = EMOTION.stay + (1 - EMOTION.stay) * float((pi**2).sum())
    assert abs(same / pairs - expected_stay) < 0.015
    assert abs(turns / pairs - EMOTION.speaker_switch) < 0.015


def test_sentiment_chain_statistics_match_the_generator() -> None:
    c = make_synthetic("synthetic-mosi")
    s = SENTIMENT.squash * np.arctanh(c.labels.astype(np.float64) / 3.0)  # the latent back
    assert abs(s.mean()) < 0.05 and abs(s.var() - 1.0) < 0.05
    first = np.concatenate([np.arange(a, b - 1) for a, b in itertools.pairwise(c.dialogue_offsets)])
    lag1 = np.corrcoef(s[first], s[first + 1])[0, 1]
    assert abs(lag1 - SENTIMENT.rho) < 0.03
    # Each modality is linear in s with the stated gain (the nuisance is independent of s).
    for k, m in enumerate("atv"):
        coef = LinearRegression().fit(s[:, None], c.features[m]).coef_[:, 0]
        assert abs(np.linalg.norm(coef) - SENTIMENT.gain[k]) < 0.06, m


@pytest.mark.parametrize("m", ["a", "t", "v"])
def test_class_conditional_features_match_the_generator(m: str) -> None:
    c = make_synthetic("synthetic")
    x, y = c.features[m].astype(np.float64), c.labels
    mu = EMOTION.means(m)
    # The orthonormal frame keeps distances: compare squared distances between class means,
    # corrected for the estimation noise d * sigma^2 * (1/n_i + 1/n_j).
    counts = np.bincount(y)
    means = np.stack([x[y == k].mean(axis=0) for k in range(4)])
    for i, j in itertools.combinations(range(4), 2):
        h, d, var = 1 / counts[i] + 1 / counts[j], x.shape[1], EMOTION.noise**2
        observed = ((means[i] - means[j]) ** 2).sum() - d * var * h
        expected = ((mu[i] - mu[j]) ** 2).sum()
        # The difference of the two estimated means is N(delta, var h I_d): its squared norm
        # has variance 4 var h |delta|^2 + 2 d var^2 h^2; allow four standard deviations.
        sd = np.sqrt(4 * var * h * expected + 2 * d * var**2 * h**2)
        assert abs(observed - expected) < 4 * sd, (i, j)
    within = x - means[y]
    assert abs(within.var(axis=0).mean() - EMOTION.noise**2) < 0.03


def test_modality_strength_by_logistic_regression() -> None:
    """A per-utterance classifier on the train split finds text > audio > video, and fusion."""
    c = make_synthetic("synthetic")
    score = {}
    for mods in ("a", "t", "v", "atv"):
        x, y = _split(c, "train", mods)
        clf = LogisticRegression(max_iter=1000).fit(x, y)
        score[mods] = clf.score(*_split(c, "test", mods))
    assert score["t"] > score["a"] + 0.03 > score["v"] + 0.06
    assert score["atv"] > score["t"] + 0.05
    # Learnable but bounded: near the per-utterance Bayes limit, never above it.
    limit = bayes_limit("synthetic", "atv", "wa", context=False)
    assert limit - 0.05 < score["atv"] < limit + 0.015


def test_sentiment_strength_by_linear_regression() -> None:
    c = make_synthetic("synthetic-mosi")
    acc = {}
    for mods in ("a", "t", "v", "atv"):
        x, y = _split(c, "train", mods)
        xt, yt = _split(c, "test", mods)
        pred = LinearRegression().fit(x, y).predict(xt)
        acc[mods] = float(np.mean((pred > 0) == (yt > 0)))
    assert acc["t"] > acc["a"] + 0.02 > acc["v"] + 0.04
    assert acc["atv"] > acc["t"] + 0.02


# ------------------------------------------------------------------------- exact inference


def test_forward_backward_matches_enumeration() -> None:
    gen = np.random.default_rng(3)
    c, t = 3, 4
    initial = gen.dirichlet(np.ones(c))
    transition = gen.dirichlet(np.ones(c), size=c)
    means = np.array([-1.0, 0.3, 1.5])
    x = gen.normal(size=t)
    log_e = -0.5 * (x[:, None] - means[None, :]) ** 2
    log_e[2] = 0.0  # a fully missing utterance carries no evidence

    def brute(length: int) -> np.ndarray:
        post = np.zeros((length, c))
        for seq in itertools.product(range(c), repeat=length):
            w = initial[seq[0]] * np.exp(log_e[0, seq[0]])
            for i in range(1, length):
                w *= transition[seq[i - 1], seq[i]] * np.exp(log_e[i, seq[i]])
            for i, y in enumerate(seq):
                post[i, y] += w
        return post / post.sum(axis=1, keepdims=True)

    # Two dialogues in one batch: the second is 2 long, padded with zero log-emissions.
    batch = np.stack([log_e, np.vstack([log_e[:2], np.zeros((2, c))])])
    post = forward_backward(batch, initial, transition)
    np.testing.assert_allclose(post[0], brute(4), atol=1e-12)
    np.testing.assert_allclose(post[1, :2], brute(2), atol=1e-12)


def test_forward_backward_two_utterances_by_hand() -> None:
    """Two classes, 1-D unit Gaussians at -1 and +1, two utterances, stay probability 0.8."""
    x1, x2 = 0.2, 1.0
    like = lambda x, mu: np.exp(-0.5 * (x - mu) ** 2)  # noqa: E731
    p = {(a, b): 0.5 * (0.8 if a == b else 0.2) * like(x1, 2 * a - 1) * like(x2, 2 * b - 1)
         for a in (0, 1) for b in (0, 1)}  # fmt: skip
    first_is_1 = (p[1, 0] + p[1, 1]) / sum(p.values())
    log_e = np.array([[-0.5 * (x1 + 1) ** 2, -0.5 * (x1 - 1) ** 2],
                      [-0.5 * (x2 + 1) ** 2, -0.5 * (x2 - 1) ** 2]])  # fmt: skip
    post = forward_backward(log_e, np.array([0.5, 0.5]), np.array([[0.8, 0.2], [0.2, 0.8]]))
    assert post[0, 1] == pytest.approx(first_is_1, abs=1e-12)
    # The second utterance's evidence pulls the first towards class 1 (context matters).
    alone = like(x1, 1) / (like(x1, 1) + like(x1, -1))
    assert post[0, 1] > alone


def test_smoother_matches_dense_gaussian_conditioning() -> None:
    gen = np.random.default_rng(5)
    rho, t = 0.6, 6
    prec = gen.uniform(0.2, 2.0, size=t)
    prec[[1, 4]] = 0.0  # no evidence there
    info = gen.normal(size=t) * prec

    def dense(length: int) -> tuple[np.ndarray, np.ndarray]:
        lags = np.abs(np.subtract.outer(np.arange(length), np.arange(length)))
        cov = np.linalg.inv(np.linalg.inv(rho**lags) + np.diag(prec[:length]))
        return cov @ info[:length], np.diag(cov)

    pad = np.zeros(t - 3)
    mean, var = gaussian_chain_smoother(
        np.stack([info, np.concatenate([info[:3], pad])]),
        np.stack([prec, np.concatenate([prec[:3], pad])]),
        rho,
    )
    for row, length in ((0, t), (1, 3)):
        m, v = dense(length)
        np.testing.assert_allclose(mean[row, :length], m, atol=1e-12)
        np.testing.assert_allclose(var[row, :length], v, atol=1e-12)


def test_jackknife_and_f1_helpers() -> None:
    gen = np.random.default_rng(0)
    # Equal-sized groups: accuracy is the mean of group accuracies, and the jackknife standard
    # error of a mean is the textbook s / sqrt(G).
    correct = gen.integers(10, 40, size=30)
    counts = np.zeros((30, 2, 2))
    counts[:, 0, 0], counts[:, 0, 1] = correct, 50 - correct
    value, se = _jackknife(lambda cm: np.trace(cm) / cm.sum(), counts)
    acc = correct / 50
    assert value == pytest.approx(acc.mean())
    assert se == pytest.approx(acc.std(ddof=1) / np.sqrt(30))
    truth, pred = gen.integers(0, 3, size=500), gen.integers(0, 3, size=500)
    cm = np.zeros((3, 3))
    np.add.at(cm, (truth, pred), 1)
    assert _weighted_f1(cm) == pytest.approx(f1_score(truth, pred, average="weighted"))


# ---------------------------------------------------------------------------- Bayes limits


def _sheppard(precision: float) -> float:
    """P(sign(s_hat) = sign(s)) for s ~ N(0, 1), s_hat = s + N(0, 1 / precision)."""
    return 0.5 + np.arcsin(np.sqrt(precision / (1 + precision))) / np.pi


def test_sentiment_no_context_limit_matches_closed_form() -> None:
    table = bayes_table("synthetic-mosi", context=False)
    lam = {}
    for k, m in enumerate("atv"):
        # Re-derived: the information about s in u = g s e1 + h z b + noise.
        b = np.array([np.cos(SENTIMENT.angle[k]), np.sin(SENTIMENT.angle[k])])
        cov = SENTIMENT.noise**2 * np.eye(2) + SENTIMENT.nuisance[k] ** 2 * np.outer(b, b)
        lam[m] = SENTIMENT.gain[k] ** 2 * np.linalg.inv(cov)[0, 0]
    for subset in SUBSETS:
        value, se = _row(table, subset, "acc2")
        assert abs(value - _sheppard(sum(lam[m] for m in subset))) < 3 * se + 1e-3, subset


@pytest.mark.parametrize("mods", ["t", "atv"])
def test_emotion_no_context_limit_bounds_a_fitted_lda(mods: str) -> None:
    """LDA is the Bayes rule's family here; fitted on 5,000 utterances it nears the limit."""
    c = make_synthetic("synthetic")
    (x1, y1), (x2, y2) = _split(c, "train", mods), _split(c, "val", mods)
    lda = LinearDiscriminantAnalysis().fit(np.vstack([x1, x2]), np.concatenate([y1, y2]))
    xt, yt = _split(c, "test", mods)
    acc = lda.score(xt, yt)
    se_test = np.sqrt(acc * (1 - acc) / len(yt))
    value, se = _row(bayes_table("synthetic", context=False), mods, "wa")
    assert acc < value + 2 * se + 3 * se_test
    assert acc > value - 0.04


@pytest.mark.parametrize("dataset", ["synthetic", "synthetic-mosi"])
def test_context_beats_the_per_utterance_limit(dataset: str) -> None:
    with_ctx, without = bayes_table(dataset), bayes_table(dataset, context=False)
    metric = "wa" if dataset == "synthetic" else "f1"
    for cond in BAYES_CONDITIONS:
        assert _lo(with_ctx, cond, metric) > _hi(without, cond, metric), cond


def test_difficulty_band_synthetic() -> None:
    table = bayes_table("synthetic")
    assert _lo(table, "atv", "wa") >= 0.75 and _hi(table, "atv", "wa") <= 0.90
    assert _lo(table, "t", "wa") >= _hi(table, "a", "wa") + 0.05
    assert _lo(table, "a", "wa") >= _hi(table, "v", "wa") + 0.05
    assert _lo(table, "atv", "wa") >= max(_hi(table, m, "wa") for m in SINGLES) + 0.05
    assert _row(table, "mr0.0", "wa") == _row(table, "atv", "wa")  # MR 0 keeps everything
    assert _lo(table, "v", "wa") > 0.35  # the weakest modality is still above chance


@pytest.mark.parametrize("metric", ["acc2", "f1"])
def test_difficulty_band_synthetic_mosi(metric: str) -> None:
    table = bayes_table("synthetic-mosi")
    assert _lo(table, "atv", metric) >= 0.75 and _hi(table, "atv", metric) <= 0.90
    assert _lo(table, "t", metric) >= _hi(table, "a", metric) + 0.03
    assert _lo(table, "a", metric) >= _hi(table, "v", metric) + 0.03
    assert _lo(table, "atv", metric) >= max(_hi(table, m, metric) for m in SINGLES) + 0.03


@pytest.mark.parametrize(("dataset", "metric"), [("synthetic", "wa"), ("synthetic-mosi", "f1")])
def test_bayes_limit_falls_with_the_missing_rate(dataset: str, metric: str) -> None:
    table = bayes_table(dataset)
    for hi_rate, lo_rate in itertools.pairwise(["mr0.0", "mr0.3", "mr0.5", "mr0.7"]):
        assert _lo(table, hi_rate, metric) > _hi(table, lo_rate, metric), (hi_rate, lo_rate)
    for hi_rate, lo_rate in itertools.pairwise([f"mr{r / 10:.1f}" for r in range(8)]):
        assert _row(table, lo_rate, metric)[0] < _hi(table, hi_rate, metric), (hi_rate, lo_rate)


def test_bayes_table_is_kept_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMERBENCH_CACHE", str(tmp_path))
    _cached_table.cache_clear()
    try:
        first = bayes_table("synthetic-mosi", n_utterances=3_000, seed=9)
        files = list((tmp_path / "synthetic").glob("bayes-synthetic-mosi-*.csv"))
        assert len(files) == 1 and not list(files[0].parent.glob("*.tmp"))
        on_disk = pd.read_csv(files[0])
        pd.testing.assert_frame_equal(on_disk, first)
        # A fresh process reads the file instead of recomputing: mark it and look.
        on_disk.loc[0, "value"] = 0.123
        on_disk.to_csv(files[0], index=False)
        _cached_table.cache_clear()
        assert bayes_table("synthetic-mosi", n_utterances=3_000, seed=9)["value"].iloc[0] == 0.123
    finally:
        _cached_table.cache_clear()
