"""Which feature folder each modality is read from: the papers' defaults, or the user's
(a modality left out keeps its default)."""

from __future__ import annotations

from collections.abc import Mapping

from imerbench.data.corpus import MODALITIES
from imerbench.errors import ImerbenchError

DEFAULT_FEATURE_NAMES: dict[str, str] = {
    "a": "wav2vec-large-c-UTT",
    "t": "deberta-large-4-UTT",
    "v": "manet_UTT",
}


def _check_name(modality: str, name: str) -> str:
    if modality not in MODALITIES:
        raise ImerbenchError(
            f"unknown modality '{modality}' in the feature names; valid: {', '.join(MODALITIES)} "
            "(e.g. v=manet_UTT)"
        )
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ImerbenchError(
            f"feature name '{name}' for modality '{modality}' must be one folder name under "
            "features/"
        )
    return name


def resolve_feature_names(feature_names: Mapping[str, str] | None) -> dict[str, str]:
    """The feature folder per modality: the papers' defaults, overridden where given."""
    names = dict(DEFAULT_FEATURE_NAMES)
    for m, name in (feature_names or {}).items():
        names[m] = _check_name(m, name)
    return names
