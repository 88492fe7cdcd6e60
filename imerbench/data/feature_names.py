"""Which feature folder each modality is read from: the papers' defaults, or the user's.

A user names folders as `a=NAME,t=NAME,v=NAME` (`--features`, a grid file's `features`, as a
string or a table); a modality left out keeps its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imerbench.data.corpus import MODALITIES
from imerbench.errors import ImerbenchError

DEFAULT_FEATURE_NAMES: dict[str, str] = {
    "a": "wav2vec-large-c-UTT",
    "t": "deberta-large-4-UTT",
    "v": "manet_UTT",
}
_FORM = "a=NAME,t=NAME,v=NAME (any of them, e.g. v=manet_UTT)"


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


def parse_feature_names(value: Any) -> dict[str, str]:
    """The folders a user named, validated: from `a=NAME,v=NAME` or a {modality: name}
    mapping (a grid file's table). Raises one ImerbenchError line naming the bad part."""
    if isinstance(value, Mapping):
        out = {}
        for m, name in value.items():
            if not isinstance(name, str):
                raise ImerbenchError(
                    f"feature name of modality '{m}' must be a string, not {name!r}"
                )
            out[str(m)] = _check_name(str(m), name.strip())
        return out
    if not isinstance(value, str):
        raise ImerbenchError(f"feature names {value!r} are not {_FORM}")
    if not value.strip():
        raise ImerbenchError(f"feature names '{value}' are empty; expected {_FORM}")
    out = {}
    for part in value.split(","):
        m, eq, name = part.partition("=")
        m, name = m.strip(), name.strip()
        if not eq:
            raise ImerbenchError(f"feature names '{value}': '{part.strip()}' is not {_FORM}")
        if m in out:
            raise ImerbenchError(
                f"feature names '{value}' name modality '{m}' twice; name each modality once"
            )
        out[m] = _check_name(m, name)
    return out
