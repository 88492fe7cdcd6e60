"""The embedded default: synthetic corpora whose generator knows its own Bayes-optimal limits.

`synthetic` is shaped like IEMOCAP-4 (dialogues, two speakers, emotion persistence, four
classes); `synthetic-mosi` like CMU-MOSI (one speaker per video, a persistent latent sentiment,
labels in (-3, 3)). Each modality carries Gaussian evidence, conditionally independent given
the latent (the label chain or the sentiment), of different strength (text > audio > video) and
partly complementary. Because the generator knows the model, `bayes_table` can state the best
score any method could reach for every subset of modalities and every missing rate.

The evidence lives in a k-dimensional latent space (k = 5 or 2) and is placed in the feature
space along a random orthonormal frame, with isotropic noise in every direction. The directions
outside the frame hold pure noise, independent of everything else, so the Bayes limits do not
depend on the widths and are computed in the latent space.

- `law.py`: the frozen parameters and the samplers;
- `generator.py`: the corpora (`make_synthetic`);
- `bayes.py`: exact inference and the Bayes limits (`bayes_table`, `bayes_limit`).
"""

from __future__ import annotations

from imerbench.data.synthetic.bayes import (
    BAYES_CONDITIONS,
    bayes_limit,
    bayes_metrics,
    bayes_table,
    forward_backward,
    gaussian_chain_smoother,
)
from imerbench.data.synthetic.generator import generate_synthetic, make_synthetic
from imerbench.data.synthetic.law import (
    EMOTION,
    SENTIMENT,
    WIDTHS,
    EmotionParams,
    SentimentParams,
    synthetic_ids,
)

__all__ = [
    "BAYES_CONDITIONS",
    "EMOTION",
    "SENTIMENT",
    "WIDTHS",
    "EmotionParams",
    "SentimentParams",
    "bayes_limit",
    "bayes_metrics",
    "bayes_table",
    "forward_backward",
    "gaussian_chain_smoother",
    "generate_synthetic",
    "make_synthetic",
    "synthetic_ids",
]
