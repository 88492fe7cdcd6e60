"""The embedded default: synthetic corpora whose generator knows its own Bayes-optimal limits.

`synthetic` is shaped like IEMOCAP-4 (dialogues, two speakers, emotion persistence, four
classes); `synthetic-mosi` like CMU-MOSI (one speaker per video, a persistent latent sentiment,
labels in (-3, 3)). Each modality carries Gaussian evidence, conditionally independent given
the latent (the label chain or the sentiment), of different strength (text > audio > video) and
partly complementary. Because the generator knows the model, `bayes_table` can state the best
score any method could reach for every subset of modalities and every missing rate: exact
forward-backward (labels) or exact Gaussian smoothing (sentiment) over the whole dialogue,
applied to fresh Monte-Carlo dialogues.

The evidence lives in a k-dimensional latent space (k = 5 or 2) and is placed in the feature
space along a random orthonormal frame, with isotropic noise in every direction. The directions
outside the frame hold pure noise, independent of everything else, so the Bayes limits do not
depend on the widths and are computed in the latent space.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imerbench.corpus import MODALITIES, Corpus, Fold
from imerbench.errors import ImerbenchError, unknown_name
from imerbench.seeding import rng as seeded_rng

SYNTHETIC_IDS: tuple[str, ...] = ("synthetic", "synthetic-mosi")
WIDTHS: dict[str, dict[str, int]] = {
    "small": {"a": 32, "t": 48, "v": 32},
    "real": {"a": 512, "t": 1024, "v": 1024},
}
SUBSETS: tuple[str, ...] = ("a", "t", "v", "at", "av", "tv", "atv")
MISSING_RATES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
CONDITIONS: tuple[str, ...] = SUBSETS + tuple(f"mr{r:.1f}" for r in MISSING_RATES)
TABLE_COLUMNS: list[str] = ["condition", "metric", "value", "se", "n"]
METRICS: dict[str, tuple[str, ...]] = {"synthetic": ("wa",), "synthetic-mosi": ("acc2", "f1")}

# Utterances per split of the single fold. The test split is large enough that any score's
# binomial standard error sqrt(p (1 - p) / n) stays under 0.005.
TRAIN_UTTERANCES = 4_000
VAL_UTTERANCES = 1_000
TEST_UTTERANCES = 10_000


@dataclass(frozen=True)
class EmotionParams:
    """The frozen generator of `synthetic`.

    Labels follow a Markov chain along each dialogue: keep the previous label with probability
    `stay`, else redraw it from `stationary` (which is then the chain's stationary law). Each
    modality m has class means in R^5: `shared[m]` times the centred one-hot of the class (the
    class evidence every modality has) plus, on a fifth axis, `specific[m]` times the
    modality's own class code in `axes[m]` (audio: arousal, text: valence, video: smile), so
    that modalities confuse different pairs of classes and complement each other. Noise is
    isotropic with standard deviation `noise`.
    """

    class_names: tuple[str, ...] = ("happy", "sad", "neutral", "angry")
    stationary: tuple[float, ...] = (0.30, 0.20, 0.30, 0.20)  # IEMOCAP-4 is 30/20/31/20 %
    stay: float = 0.65
    speaker_switch: float = 0.8
    min_length: int = 10
    max_length: int = 40
    shared: tuple[float, ...] = (0.60, 1.00, 0.50)  # a, t, v
    specific: tuple[float, ...] = (0.75, 0.80, 0.50)
    axes: tuple[tuple[float, ...], ...] = (
        (1.0, -1.0, -1.0, 1.0),  # audio: arousal (happy, angry high; sad, neutral low)
        (1.0, -1.0, 0.0, -1.0),  # text: valence
        (1.0, -0.5, 0.0, -0.5),  # video: smile
    )
    noise: float = 1.0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def means(self, m: str) -> np.ndarray:
        """Class means [C, C + 1] of modality m in its latent space."""
        k = MODALITIES.index(m)
        c = self.num_classes
        onehot = np.eye(c) - 1.0 / c
        axis = np.asarray(self.axes[k], dtype=np.float64)[:, None]
        return np.hstack([self.shared[k] * onehot, self.specific[k] * axis])

    def transition(self) -> np.ndarray:
        pi = np.asarray(self.stationary)
        return self.stay * np.eye(self.num_classes) + (1.0 - self.stay) * pi[None, :]


@dataclass(frozen=True)
class SentimentParams:
    """The frozen generator of `synthetic-mosi`.

    A latent sentiment s follows a stationary Gaussian AR(1) along each video (persistence
    `rho`, unit variance); the label is 3 tanh(s / squash). Modality m sees, in R^2,
    `gain[m]` s along the first axis plus a modality-specific nuisance `nuisance[m]` z
    (z ~ N(0, 1) per utterance) along an axis at `angle[m]` radians from it, plus isotropic
    noise: the nuisance leaks into the sentiment axis, so a learner must separate the two.
    """

    rho: float = 0.5
    squash: float = 1.2
    min_length: int = 8
    max_length: int = 40
    gain: tuple[float, ...] = (0.86, 1.10, 0.62)  # a, t, v
    nuisance: tuple[float, ...] = (1.0, 1.0, 1.0)
    angle: tuple[float, ...] = (0.9, 1.1, 0.7)
    noise: float = 1.0

    def directions(self, m: str) -> tuple[np.ndarray, np.ndarray]:
        """Unit sentiment and nuisance directions of modality m in its latent space."""
        k = MODALITIES.index(m)
        theta = self.angle[k]
        return np.array([1.0, 0.0]), np.array([np.cos(theta), np.sin(theta)])

    def noise_cov(self, m: str) -> np.ndarray:
        """Covariance of everything but the sentiment in modality m's latent space."""
        _, b = self.directions(m)
        h = self.nuisance[MODALITIES.index(m)]
        return self.noise**2 * np.eye(2) + h**2 * np.outer(b, b)

    def precision(self, m: str) -> float:
        """Information one utterance of modality m carries about s: 1 / var(s_hat_m - s)."""
        a, _ = self.directions(m)
        g = self.gain[MODALITIES.index(m)]
        return float(g**2 * a @ np.linalg.solve(self.noise_cov(m), a))


EMOTION = EmotionParams()
SENTIMENT = SentimentParams()


def _check_id(dataset_id: str) -> str:
    if dataset_id not in SYNTHETIC_IDS:
        raise unknown_name("synthetic dataset", dataset_id, SYNTHETIC_IDS)
    return dataset_id


def _check_widths(widths: str) -> dict[str, int]:
    if widths not in WIDTHS:
        raise ImerbenchError(f"synthetic widths '{widths}' is not one of: {', '.join(WIDTHS)}")
    return WIDTHS[widths]


# --------------------------------------------------------------------------- sampling


def _lengths(gen: np.random.Generator, total: int, low: int, high: int) -> np.ndarray:
    """Dialogue lengths, uniform in [low, high], until they hold at least `total` utterances."""
    mean = (low + high) / 2
    lengths = gen.integers(low, high + 1, size=int(total / mean * 1.2) + 8)
    while lengths.sum() < total:
        lengths = np.concatenate([lengths, gen.integers(low, high + 1, size=64)])
    return lengths[: int(np.searchsorted(np.cumsum(lengths), total)) + 1]


def _starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _label_chain(gen: np.random.Generator, lengths: np.ndarray, p: EmotionParams) -> np.ndarray:
    """Flat labels of all dialogues: each position keeps the previous label or redraws it."""
    n = int(lengths.sum())
    fresh = gen.choice(p.num_classes, size=n, p=np.asarray(p.stationary))
    keep = gen.random(n) < p.stay
    keep[_starts(lengths)] = False
    # Each position copies the label of its latest redraw (a dialogue start always redraws).
    latest = np.maximum.accumulate(np.where(keep, 0, np.arange(n)))
    return fresh[latest].astype(np.int64)


def _speaker_turns(gen: np.random.Generator, lengths: np.ndarray, switch: float) -> np.ndarray:
    """Two speakers per dialogue: a random first one, then the turn passes with `switch`."""
    n = int(lengths.sum())
    starts = _starts(lengths)
    toggles = (gen.random(n) < switch).astype(np.int64)
    toggles[starts] = gen.integers(0, 2, size=len(lengths))
    counts = np.cumsum(toggles)
    before = counts[starts] - toggles[starts]
    return ((counts - np.repeat(before, lengths)) % 2).astype(np.int64)


def _padded(values: np.ndarray, lengths: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Flat per-utterance values [N, ...] as [D, T, ...], T the longest dialogue."""
    d, t = len(lengths), int(lengths.max())
    out = np.full((d * t, *values.shape[1:]), fill, dtype=values.dtype)
    rows = np.repeat(np.arange(d), lengths)
    cols = np.arange(len(values)) - np.repeat(_starts(lengths), lengths)
    out[rows * t + cols] = values
    return out.reshape(d, t, *values.shape[1:])


def _unpadded(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    t = values.shape[1]
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(int(lengths.sum())) - np.repeat(_starts(lengths), lengths)
    return values.reshape(-1, *values.shape[2:])[rows * t + cols]


def _sentiment_chain(gen: np.random.Generator, lengths: np.ndarray, rho: float) -> np.ndarray:
    """Flat latent sentiment: a unit-variance stationary AR(1) along each video."""
    eps = _padded(gen.standard_normal(int(lengths.sum())), lengths)
    s = np.empty_like(eps)
    s[:, 0] = eps[:, 0]
    step = np.sqrt(1.0 - rho**2)
    for t in range(1, s.shape[1]):
        s[:, t] = rho * s[:, t - 1] + step * eps[:, t]
    return _unpadded(s, lengths)


def _emotion_latents(
    gen: np.random.Generator, labels: np.ndarray, p: EmotionParams
) -> dict[str, np.ndarray]:
    """Per modality: the noisy latent evidence [N, C + 1] (class mean + isotropic noise)."""
    out = {}
    for m in MODALITIES:
        mu = p.means(m)
        out[m] = mu[labels] + p.noise * gen.standard_normal((len(labels), mu.shape[1]))
    return out


def _sentiment_signal(
    gen: np.random.Generator, s: np.ndarray, p: SentimentParams
) -> dict[str, np.ndarray]:
    """Per modality: the noise-free latent part [N, 2] (sentiment plus nuisance)."""
    out = {}
    for m in MODALITIES:
        a, b = p.directions(m)
        k = MODALITIES.index(m)
        z = gen.standard_normal(len(s))
        out[m] = p.gain[k] * s[:, None] * a[None, :] + p.nuisance[k] * z[:, None] * b[None, :]
    return out


def _frame(gen: np.random.Generator, width: int, k: int) -> np.ndarray:
    """A random orthonormal [width, k] frame: where the latent evidence sits among the features."""
    q, r = np.linalg.qr(gen.standard_normal((width, k)))
    return q * np.sign(np.diag(r))[None, :]


def _embed(gen: np.random.Generator, latent: np.ndarray, width: int, noise: float) -> np.ndarray:
    """Noise-free latent [N, k] placed along a random frame, plus isotropic noise everywhere.

    Equal in law to Q [latent + noise_k; noise_rest] with Q a random orthogonal matrix.
    """
    q = _frame(gen, width, latent.shape[1])
    x = latent @ q.T + noise * gen.standard_normal((len(latent), width))
    return x.astype(np.float32)


def _split(gen: np.random.Generator, lengths: np.ndarray) -> Fold:
    """Dialogues in a random order fill train, then val, then the rest is test."""
    order = gen.permutation(len(lengths))
    cum = np.cumsum(lengths[order])
    n_train = int(np.searchsorted(cum, TRAIN_UTTERANCES)) + 1
    n_val = int(np.searchsorted(cum, cum[n_train - 1] + VAL_UTTERANCES)) + 1
    fold = Fold(
        train=np.sort(order[:n_train]),
        val=np.sort(order[n_train:n_val]),
        test=np.sort(order[n_val:]),
    )
    if lengths[fold.test].sum() < TEST_UTTERANCES:  # guarded by the total drawn; never expected
        raise AssertionError("synthetic test split came out too small")
    return fold


def make_synthetic(dataset_id: str, widths: str = "small", seed: int = 0) -> Corpus:
    """The built-in corpus `synthetic` or `synthetic-mosi` (one fold), deterministic in seed.

    Cached in-process (the harness asks for it once per cell): every call with the same
    arguments returns the same object, so callers must not modify it in place. The
    generator's parameters are frozen; `seed` draws the sample (dialogues, labels, noise,
    frames and split), never the law, so the Bayes limits in `info["bayes"]` hold for every
    seed.
    """
    _check_id(dataset_id)
    _check_widths(widths)
    return _cached_corpus(dataset_id, widths, int(seed))


@functools.lru_cache(maxsize=8)
def _cached_corpus(dataset_id: str, widths: str, seed: int) -> Corpus:
    return generate_synthetic(dataset_id, widths, seed)


def generate_synthetic(dataset_id: str, widths: str = "small", seed: int = 0) -> Corpus:
    """`make_synthetic` without the cache: a new corpus object on every call."""
    dataset_id = _check_id(dataset_id)
    dims = _check_widths(widths)
    gen = seeded_rng("synthetic-corpus", dataset_id, seed)
    total = TRAIN_UTTERANCES + VAL_UTTERANCES + TEST_UTTERANCES
    if dataset_id == "synthetic":
        p: EmotionParams | SentimentParams = EMOTION
        lengths = _lengths(gen, total + 2 * EMOTION.max_length, EMOTION.min_length,
                           EMOTION.max_length)  # fmt: skip
        labels = _label_chain(gen, lengths, EMOTION)
        speakers = _speaker_turns(gen, lengths, EMOTION.speaker_switch)
        latents = {m: EMOTION.means(m)[labels] for m in MODALITIES}
        noise, names, speaker_names = EMOTION.noise, EMOTION.class_names, ("F", "M")
        task, num_classes, prefix = "classification", EMOTION.num_classes, "dlg"
    else:
        p = SENTIMENT
        lengths = _lengths(gen, total + 2 * SENTIMENT.max_length, SENTIMENT.min_length,
                           SENTIMENT.max_length)  # fmt: skip
        s = _sentiment_chain(gen, lengths, SENTIMENT.rho)
        labels = (3.0 * np.tanh(s / SENTIMENT.squash)).astype(np.float32)
        speakers = np.zeros(len(s), dtype=np.int64)
        latents = _sentiment_signal(gen, s, SENTIMENT)
        noise, names, speaker_names = SENTIMENT.noise, (), ("",)
        task, num_classes, prefix = "regression", 1, "vid"
    features = {m: _embed(gen, latents[m], dims[m], noise) for m in MODALITIES}
    fold = _split(gen, lengths)
    # Emotion dialogues carry an IEMOCAP-style session digit at index 4 (Ses01..Ses05), so
    # the corpus written in the GCNet layout gets IEMOCAP's five leave-one-session-out folds.
    dialogue_ids = tuple(
        f"Ses0{d % 5 + 1}_{prefix}{d:05d}" if task == "classification" else f"{prefix}{d:05d}"
        for d in range(len(lengths))
    )
    utterance_ids = tuple(
        f"{dialogue_ids[d]}_{j:03d}" for d, n in enumerate(lengths) for j in range(int(n))
    )
    return Corpus(
        name=dataset_id,
        task=task,  # type: ignore[arg-type]
        num_classes=num_classes,
        features=features,
        labels=labels,
        speakers=speakers,
        speaker_names=speaker_names,
        utterance_ids=utterance_ids,
        dialogue_ids=dialogue_ids,
        dialogue_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        folds=(fold,),
        pad_length=int(lengths.max()),
        class_names=names,
        feature_names={m: f"{dataset_id}-{m}" for m in MODALITIES},
        info={
            "generator": {"kind": type(p).__name__, **asdict(p)},
            "seed": seed,
            "widths": widths,
            "bayes": bayes_table(dataset_id),
        },
    )


# --------------------------------------------------------------------------- exact inference


def _forward_backward_tcb(
    log_emission: np.ndarray, initial: np.ndarray, transition: np.ndarray
) -> np.ndarray:
    """`forward_backward` on the layout [T, C, B], which needs no copies (see there)."""
    # Each step is a few contiguous vector operations; einsum avoids a threaded BLAS call,
    # whose start-up costs more than these tiny [C, C] products.
    e = np.exp(log_emission - log_emission.max(axis=1, keepdims=True))
    t = e.shape[0]
    alpha = np.empty_like(e)
    a = initial[:, None] * e[0]
    alpha[0] = a / a.sum(axis=0)
    for i in range(1, t):
        a = np.einsum("ij,ib->jb", transition, alpha[i - 1]) * e[i]
        alpha[i] = a / a.sum(axis=0)
    post = alpha  # overwritten from the end: alpha[i] is read before post[i] is written
    beta = np.ones_like(e[0])
    for i in range(t - 2, -1, -1):
        b = np.einsum("ij,jb->ib", transition, e[i + 1] * beta)
        beta = b / b.sum(axis=0)
        g = alpha[i] * beta
        post[i] = g / g.sum(axis=0)
    return post


def forward_backward(
    log_emission: np.ndarray, initial: np.ndarray, transition: np.ndarray
) -> np.ndarray:
    """Posterior marginals p(y_t | all evidence) [..., T, C] of a label chain, batched.

    `log_emission` [..., T, C] holds log p(evidence_t | y_t) up to a per-position constant; a
    position without evidence (a fully missing utterance or padding after a dialogue's end)
    holds zeros. Padding at the end never changes the real positions' posteriors.
    `transition[i, j]` = p(y_t = j | y_t-1 = i); `initial` is the law of the first label.
    """
    *batch, t, c = log_emission.shape
    tcb = np.ascontiguousarray(log_emission.reshape(-1, t, c).transpose(1, 2, 0), np.float64)
    post = _forward_backward_tcb(tcb, np.asarray(initial, np.float64), np.asarray(transition))
    return post.transpose(2, 0, 1).reshape(*batch, t, c)


def gaussian_chain_smoother(
    information: np.ndarray, precision: np.ndarray, rho: float
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and variance [..., T] of a unit-variance AR(1) latent given evidence.

    At each position the Gaussian evidence is summarized by its precision Lambda_t (0 where
    there is none) and its information h_t = Lambda_t * (its estimate of s_t); a Kalman filter
    and a Rauch-Tung-Striebel pass give the exact smoothed posterior, batched over the leading
    dimensions.
    """
    h = np.ascontiguousarray(np.moveaxis(information, -1, 0), dtype=np.float64)
    lam = np.ascontiguousarray(np.moveaxis(precision, -1, 0), dtype=np.float64)
    t = h.shape[0]
    q = 1.0 - rho**2
    m_pred, v_pred = np.zeros_like(h), np.ones_like(h)
    m_filt, v_filt = np.empty_like(h), np.empty_like(h)
    for i in range(t):
        if i > 0:
            m_pred[i] = rho * m_filt[i - 1]
            v_pred[i] = rho**2 * v_filt[i - 1] + q
        v_filt[i] = 1.0 / (1.0 / v_pred[i] + lam[i])
        m_filt[i] = v_filt[i] * (m_pred[i] / v_pred[i] + h[i])
    mean, var = m_filt.copy(), v_filt.copy()
    for i in range(t - 2, -1, -1):
        gain = v_filt[i] * rho / v_pred[i + 1]
        mean[i] = m_filt[i] + gain * (mean[i + 1] - m_pred[i + 1])
        var[i] = v_filt[i] + gain**2 * (var[i + 1] - v_pred[i + 1])
    return np.moveaxis(mean, 0, -1), np.moveaxis(var, 0, -1)


# --------------------------------------------------------------------------- Bayes limits


def _subset_mask(subset: str, n: int) -> np.ndarray:
    return np.tile(np.array([m in subset for m in MODALITIES]), (n, 1))


def _condition_masks(
    dataset_id: str, conditions: tuple[str, ...], n: int, seed: int
) -> dict[str, np.ndarray]:
    """Availability [N, 3] per condition: a forced subset, or the papers' missing-rate draw."""
    out = {}
    for cond in conditions:
        if cond.startswith("mr"):
            from imerbench.masks import draw_rate_mask

            rate = float(cond[2:])
            out[cond] = np.asarray(
                draw_rate_mask(n, rate, seeded_rng("synthetic-bayes-mask", dataset_id, rate, seed)),
                bool,
            )
        else:
            out[cond] = _subset_mask(cond, n)
    return out


def _weighted_f1(cm: np.ndarray) -> float:
    """Support-weighted F1 from a confusion matrix cm[true, predicted] (sklearn's 'weighted')."""
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    denom = support + cm.sum(axis=0)
    f1 = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
    return float((f1 * support).sum() / support.sum())


def _accuracy(cm: np.ndarray) -> float:
    return float(np.trace(cm) / cm.sum())


def _jackknife(stat: Callable[[np.ndarray], float], counts: np.ndarray) -> tuple[float, float]:
    """The statistic of the pooled counts and its grouped-jackknife standard error.

    `counts` [G, ...] holds each group of whole dialogues' confusion counts, so the error
    accounts for the correlation of utterances inside a dialogue.
    """
    total = counts.sum(axis=0)
    loo = np.array([stat(total - c) for c in counts])
    g = len(counts)
    se = float(np.sqrt((g - 1) / g * ((loo - loo.mean()) ** 2).sum()))
    return stat(total), se


def _confusions(
    truth: np.ndarray, pred: np.ndarray, groups: np.ndarray, num_groups: int, c: int
) -> np.ndarray:
    flat = (groups * c + truth) * c + pred
    return np.bincount(flat, minlength=num_groups * c * c).reshape(num_groups, c, c)


def _emotion_correct(
    p: EmotionParams, n_utterances: int, seed: int, context: bool, conditions: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Simulate fresh dialogues; per condition, the Bayes decision for every utterance."""
    gen = seeded_rng("synthetic-bayes", "synthetic", seed)
    lengths = _lengths(gen, n_utterances, p.min_length, p.max_length)
    labels = _label_chain(gen, lengths, p)
    latents = _emotion_latents(gen, labels, p)
    loglik = {}
    for m in MODALITIES:
        mu = p.means(m)
        diff = latents[m][:, None, :] - mu[None, :, :]
        loglik[m] = -0.5 * (diff**2).sum(axis=-1) / p.noise**2
    pi = np.asarray(p.stationary)
    masks = _condition_masks("synthetic", conditions, len(labels), seed)
    if not context:
        preds = {}
        for cond, mask in masks.items():
            log_e = sum(mask[:, k, None] * loglik[m] for k, m in enumerate(MODALITIES))
            preds[cond] = (np.log(pi) + log_e).argmax(axis=-1)
        return lengths, labels, labels, preds
    # All K conditions at once, laid out [T, C, K, D] for the chain (D dialogues, T steps).
    d, t, c, kk = len(lengths), int(lengths.max()), p.num_classes, len(masks)
    rows = np.repeat(np.arange(d), lengths)
    cols = np.arange(len(labels)) - np.repeat(_starts(lengths), lengths)
    padded_ll = np.zeros((len(MODALITIES), t, c, d))
    for k, m in enumerate(MODALITIES):
        padded_ll[k][cols, :, rows] = loglik[m]
    log_e = np.zeros((t, c, kk, d))
    padded_mask = np.zeros((t, d))
    for j, mask in enumerate(masks.values()):
        for k in range(len(MODALITIES)):
            padded_mask[cols, rows] = mask[:, k]
            log_e[:, :, j, :] += padded_mask[:, None, :] * padded_ll[k]
    post = _forward_backward_tcb(log_e.reshape(t, c, kk * d), pi, p.transition())
    best = post.argmax(axis=1).reshape(t, kk, d)[cols, :, rows]  # [N, K]
    preds = {cond: best[:, j] for j, cond in enumerate(masks)}
    return lengths, labels, labels, preds


def _sentiment_correct(
    p: SentimentParams, n_utterances: int, seed: int, context: bool, conditions: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Simulate fresh videos; per condition, the sign of the posterior mean of s."""
    gen = seeded_rng("synthetic-bayes", "synthetic-mosi", seed)
    lengths = _lengths(gen, n_utterances, p.min_length, p.max_length)
    s = _sentiment_chain(gen, lengths, p.rho)
    signal = _sentiment_signal(gen, s, p)
    # Each modality's sufficient statistic for s: the generalized-least-squares estimate.
    info_m, prec_m = {}, {}
    for m in MODALITIES:
        k = MODALITIES.index(m)
        cov = p.noise_cov(m)
        noisy = signal[m] + p.noise * gen.standard_normal(signal[m].shape)
        a, _ = p.directions(m)
        w = p.gain[k] * np.linalg.solve(cov, a)  # Lambda_m * estimate = w . u
        info_m[m] = noisy @ w
        prec_m[m] = p.precision(m)
    truth = (s > 0).astype(np.int64)
    masks = _condition_masks("synthetic-mosi", conditions, len(s), seed)
    info = np.stack([sum(mask[:, k] * info_m[m] for k, m in enumerate(MODALITIES))
                     for mask in masks.values()], axis=1)  # fmt: skip
    prec = np.stack([sum(mask[:, k] * prec_m[m] for k, m in enumerate(MODALITIES))
                     for mask in masks.values()], axis=1)  # fmt: skip
    if context:
        # [D, T, K] -> [D, K, T]: the smoother runs along the last axis.
        mean, _ = gaussian_chain_smoother(
            np.moveaxis(_padded(info, lengths), 1, 2),
            np.moveaxis(_padded(prec, lengths), 1, 2),
            p.rho,
        )
        mean = _unpadded(np.moveaxis(mean, 2, 1), lengths)
    else:
        mean = info / (1.0 + prec)
    best = (mean > 0).astype(np.int64)
    preds = {cond: best[:, j] for j, cond in enumerate(masks)}
    return lengths, s, truth, preds


def _bayes_frame(
    dataset_id: str,
    params: EmotionParams | SentimentParams,
    n_utterances: int,
    seed: int,
    context: bool,
    conditions: tuple[str, ...] = CONDITIONS,
) -> pd.DataFrame:
    """The Bayes table for any parameters (the public one uses the frozen ones)."""
    if dataset_id == "synthetic":
        assert isinstance(params, EmotionParams)
        lengths, _, truth, preds = _emotion_correct(params, n_utterances, seed, context, conditions)
        c, stats = params.num_classes, {"wa": _accuracy}
    else:
        assert isinstance(params, SentimentParams)
        lengths, _, truth, preds = _sentiment_correct(
            params, n_utterances, seed, context, conditions
        )
        c, stats = 2, {"acc2": _accuracy, "f1": _weighted_f1}
    num_groups = min(100, len(lengths))
    groups = np.repeat(np.arange(len(lengths)) % num_groups, lengths)
    rows = []
    for cond in conditions:
        counts = _confusions(truth, preds[cond], groups, num_groups, c)
        for metric, stat in stats.items():
            value, se = _jackknife(stat, counts)
            rows.append((cond, metric, value, se, len(truth)))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _table_cache_path(dataset_id: str, n_utterances: int, seed: int, context: bool) -> Path:
    """Where a Bayes table is kept on disk, keyed on everything that could change it."""
    from imerbench import masks

    params = EMOTION if dataset_id == "synthetic" else SENTIMENT
    digest = hashlib.sha256()
    digest.update(repr((dataset_id, params, n_utterances, seed, context)).encode("utf-8"))
    for source in (__file__, masks.__file__):  # the inference and the mask procedure
        digest.update(Path(source).read_bytes())
    env = os.environ.get("IMERBENCH_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "imerbench"
    return base / "synthetic" / f"bayes-{dataset_id}-{digest.hexdigest()[:32]}.csv"


@functools.lru_cache(maxsize=16)
def _cached_table(dataset_id: str, n_utterances: int, seed: int, context: bool) -> pd.DataFrame:
    """The table from memory, else from the disk cache, else computed (about a second)."""
    path = _table_cache_path(dataset_id, n_utterances, seed, context)
    try:
        table = pd.read_csv(path)
        if list(table.columns) == TABLE_COLUMNS and len(table):
            return table
    except (OSError, ValueError):
        pass
    params = EMOTION if dataset_id == "synthetic" else SENTIMENT
    table = _bayes_frame(dataset_id, params, n_utterances, seed, context)
    try:  # atomically: a concurrent reader sees the old file or the whole new one
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                table.to_csv(f, index=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # an unwritable cache only costs the recomputation
    return table


def bayes_table(
    dataset_id: str,
    widths: str = "small",
    n_utterances: int = 100_000,
    seed: int = 0,
    context: bool = True,
) -> pd.DataFrame:
    """Bayes-optimal scores per condition, estimated on `n_utterances` fresh utterances.

    Columns: condition (a forced subset such as "at", or "mr0.3": the papers' missing-rate
    masks), metric (`wa`; or `acc2` and `f1`), value, se (Monte-Carlo standard error, by a
    grouped jackknife over whole dialogues), n (utterances scored). The decision uses all the
    context of the dialogue (exact posterior marginals); `context=False` gives the
    per-utterance limit instead, for comparison. `widths` does not change the limits (the
    extra dimensions are pure noise) and is only validated. Cached in-process and in
    $IMERBENCH_CACHE/synthetic/ (default ~/.cache/imerbench), keyed on the parameters and the
    code; a returned table is shared, so copy it before changing it.
    """
    _check_id(dataset_id)
    _check_widths(widths)
    if n_utterances < 1:
        raise ImerbenchError(f"n_utterances must be positive, not {n_utterances}")
    return _cached_table(dataset_id, int(n_utterances), int(seed), bool(context))


def _normalize_condition(condition: str) -> str:
    text = condition.strip().lower()
    if text.startswith("mr"):
        try:
            rate = float(text[2:])
        except ValueError:
            return text
        hits = [r for r in MISSING_RATES if abs(r - rate) < 1e-9]
        return f"mr{hits[0]:.1f}" if hits else text
    if text and set(text) <= set(MODALITIES) and len(set(text)) == len(text):
        return "".join(m for m in MODALITIES if m in text)
    return text


def bayes_limit(dataset_id: str, condition: str, metric: str, *, context: bool = True) -> float:
    """The Bayes-optimal score of one condition ("atv", "tv", "mr0.3", ...) and metric."""
    table = bayes_table(dataset_id, context=context)
    cond = _normalize_condition(condition)
    if cond not in CONDITIONS:
        raise unknown_name("synthetic condition", condition, CONDITIONS)
    if metric not in METRICS[dataset_id]:
        raise unknown_name(f"metric of '{dataset_id}' Bayes limits", metric, METRICS[dataset_id])
    row = table[(table["condition"] == cond) & (table["metric"] == metric)]
    return float(row["value"].iloc[0])
