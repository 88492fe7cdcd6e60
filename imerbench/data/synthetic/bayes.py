"""The Bayes-optimal limits of the synthetic corpora: exact inference on fresh dialogues.

Because the generator knows its law (`law.py`), `bayes_table` can state the best score any
method could reach for every subset of modalities and every missing rate: exact
forward-backward (labels) or exact Gaussian smoothing (sentiment) over the whole dialogue,
applied to fresh Monte-Carlo dialogues. The evidence lives in a low-dimensional latent space,
and the feature directions outside it hold pure noise, so the limits do not depend on the
widths and are computed in the latent space.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from imerbench.data import masks
from imerbench.data.corpus import MODALITIES, SUBSETS
from imerbench.data.masks import draw_rate_mask
from imerbench.data.synthetic import law
from imerbench.data.synthetic.law import (
    EmotionParams,
    SentimentParams,
    check_id,
    check_widths,
    dialogue_lengths,
    dialogue_starts,
    emotion_latents,
    label_chain,
    law_of,
    padded,
    sentiment_chain,
    sentiment_signal,
    unpadded,
)
from imerbench.errors import ImerbenchError, unknown_name
from imerbench.files import atomic_write, cache_dir
from imerbench.seeding import rng as seeded_rng

MISSING_RATES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# A Bayes table's conditions: the forced subsets, then the papers' missing-rate masks.
BAYES_CONDITIONS: tuple[str, ...] = SUBSETS + tuple(f"mr{r:.1f}" for r in MISSING_RATES)
TABLE_COLUMNS: list[str] = ["condition", "metric", "value", "se", "n"]


def bayes_metrics(dataset_id: str) -> tuple[str, ...]:
    """The metrics a Bayes table states: `wa` for labels; `acc2` and `f1` for sentiment."""
    return ("wa",) if isinstance(law_of(dataset_id), EmotionParams) else ("acc2", "f1")


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
    lengths = dialogue_lengths(gen, n_utterances, p.min_length, p.max_length)
    labels = label_chain(gen, lengths, p)
    latents = emotion_latents(gen, labels, p)
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
    cols = np.arange(len(labels)) - np.repeat(dialogue_starts(lengths), lengths)
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
    lengths = dialogue_lengths(gen, n_utterances, p.min_length, p.max_length)
    s = sentiment_chain(gen, lengths, p.rho)
    signal = sentiment_signal(gen, s, p)
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
            np.moveaxis(padded(info, lengths), 1, 2),
            np.moveaxis(padded(prec, lengths), 1, 2),
            p.rho,
        )
        mean = unpadded(np.moveaxis(mean, 2, 1), lengths)
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
    conditions: tuple[str, ...] = BAYES_CONDITIONS,
) -> pd.DataFrame:
    """The Bayes table for any parameters (the public one uses the frozen ones)."""
    if isinstance(params, EmotionParams):
        lengths, _, truth, preds = _emotion_correct(params, n_utterances, seed, context, conditions)
        c, stats = params.num_classes, {"wa": _accuracy}
    else:
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
    params = law_of(dataset_id)
    digest = hashlib.sha256()
    digest.update(repr((dataset_id, params, n_utterances, seed, context)).encode("utf-8"))
    # The law and its samplers, the inference, and the mask procedure.
    for source in (law.__file__, __file__, masks.__file__):
        digest.update(Path(source).read_bytes())
    return cache_dir() / "synthetic" / f"bayes-{dataset_id}-{digest.hexdigest()[:32]}.csv"


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
    table = _bayes_frame(dataset_id, law_of(dataset_id), n_utterances, seed, context)
    # Atomically: a concurrent reader sees the old file or the whole new one. An unwritable
    # cache only costs the recomputation.
    with contextlib.suppress(OSError):
        atomic_write(path, table.to_csv(index=False))
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
    check_id(dataset_id)
    check_widths(widths)
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
    if cond not in BAYES_CONDITIONS:
        raise unknown_name("synthetic condition", condition, BAYES_CONDITIONS)
    metrics = bayes_metrics(dataset_id)
    if metric not in metrics:
        raise unknown_name(f"metric of '{dataset_id}' Bayes limits", metric, metrics)
    row = table[(table["condition"] == cond) & (table["metric"] == metric)]
    return float(row["value"].iloc[0])
