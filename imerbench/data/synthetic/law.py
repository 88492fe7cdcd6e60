"""The law of the synthetic corpora: frozen parameters and the samplers that draw from it.

Shared by the generator (`generator.py`, the corpora) and the Bayes limits (`bayes.py`, fresh
dialogues scored by exact inference), so both draw from one law.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imerbench.data.catalog import SYNTHETIC, list_datasets, resolve_dataset
from imerbench.data.corpus import MODALITIES
from imerbench.errors import ImerbenchError, unknown_name

WIDTHS: dict[str, dict[str, int]] = {
    "small": {"a": 32, "t": 48, "v": 32},
    "real": {"a": 512, "t": 1024, "v": 1024},
}


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


def synthetic_ids() -> tuple[str, ...]:
    """The catalog's generated datasets."""
    return tuple(d.id for d in list_datasets() if d.source == SYNTHETIC)


def check_id(dataset_id: str) -> str:
    ids = synthetic_ids()
    if dataset_id not in ids:
        raise unknown_name("synthetic dataset", dataset_id, ids)
    return dataset_id


def law_of(dataset_id: str) -> EmotionParams | SentimentParams:
    """The frozen law of a generated dataset: the emotion chain for a classification
    dataset, the sentiment process for a regression one."""
    task = resolve_dataset(check_id(dataset_id)).task
    return EMOTION if task == "classification" else SENTIMENT


def check_widths(widths: str) -> dict[str, int]:
    if widths not in WIDTHS:
        raise ImerbenchError(f"synthetic widths '{widths}' is not one of: {', '.join(WIDTHS)}")
    return WIDTHS[widths]


# --------------------------------------------------------------------------- sampling


def dialogue_lengths(gen: np.random.Generator, total: int, low: int, high: int) -> np.ndarray:
    """Dialogue lengths, uniform in [low, high], until they hold at least `total` utterances."""
    mean = (low + high) / 2
    lengths = gen.integers(low, high + 1, size=int(total / mean * 1.2) + 8)
    while lengths.sum() < total:
        lengths = np.concatenate([lengths, gen.integers(low, high + 1, size=64)])
    return lengths[: int(np.searchsorted(np.cumsum(lengths), total)) + 1]


def dialogue_starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def label_chain(gen: np.random.Generator, lengths: np.ndarray, p: EmotionParams) -> np.ndarray:
    """Flat labels of all dialogues: each position keeps the previous label or redraws it."""
    n = int(lengths.sum())
    fresh = gen.choice(p.num_classes, size=n, p=np.asarray(p.stationary))
    keep = gen.random(n) < p.stay
    keep[dialogue_starts(lengths)] = False
    # Each position copies the label of its latest redraw (a dialogue start always redraws).
    latest = np.maximum.accumulate(np.where(keep, 0, np.arange(n)))
    return fresh[latest].astype(np.int64)


def speaker_turns(gen: np.random.Generator, lengths: np.ndarray, switch: float) -> np.ndarray:
    """Two speakers per dialogue: a random first one, then the turn passes with `switch`."""
    n = int(lengths.sum())
    starts = dialogue_starts(lengths)
    toggles = (gen.random(n) < switch).astype(np.int64)
    toggles[starts] = gen.integers(0, 2, size=len(lengths))
    counts = np.cumsum(toggles)
    before = counts[starts] - toggles[starts]
    return ((counts - np.repeat(before, lengths)) % 2).astype(np.int64)


def padded(values: np.ndarray, lengths: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Flat per-utterance values [N, ...] as [D, T, ...], T the longest dialogue."""
    d, t = len(lengths), int(lengths.max())
    out = np.full((d * t, *values.shape[1:]), fill, dtype=values.dtype)
    rows = np.repeat(np.arange(d), lengths)
    cols = np.arange(len(values)) - np.repeat(dialogue_starts(lengths), lengths)
    out[rows * t + cols] = values
    return out.reshape(d, t, *values.shape[1:])


def unpadded(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    t = values.shape[1]
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(int(lengths.sum())) - np.repeat(dialogue_starts(lengths), lengths)
    return values.reshape(-1, *values.shape[2:])[rows * t + cols]


def sentiment_chain(gen: np.random.Generator, lengths: np.ndarray, rho: float) -> np.ndarray:
    """Flat latent sentiment: a unit-variance stationary AR(1) along each video."""
    eps = padded(gen.standard_normal(int(lengths.sum())), lengths)
    s = np.empty_like(eps)
    s[:, 0] = eps[:, 0]
    step = np.sqrt(1.0 - rho**2)
    for t in range(1, s.shape[1]):
        s[:, t] = rho * s[:, t - 1] + step * eps[:, t]
    return unpadded(s, lengths)


def emotion_latents(
    gen: np.random.Generator, labels: np.ndarray, p: EmotionParams
) -> dict[str, np.ndarray]:
    """Per modality: the noisy latent evidence [N, C + 1] (class mean + isotropic noise)."""
    out = {}
    for m in MODALITIES:
        mu = p.means(m)
        out[m] = mu[labels] + p.noise * gen.standard_normal((len(labels), mu.shape[1]))
    return out


def sentiment_signal(
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
