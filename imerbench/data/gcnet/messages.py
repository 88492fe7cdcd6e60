"""How the GCNet-layout modules word their messages: short, on one line, values made safe.

Every value shown comes from a user's files, so it is cut short and unprintable characters are
escaped: a message names the file and the value, and stays one line.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from typing import Any

MODALITY_WORDS: dict[str, str] = {"a": "audio", "t": "text", "v": "video"}
FIRST = 3  # how many names a message lists


def first_names(names: Iterable[str], total: int) -> str:
    """The first few of `total` names, comma-separated, with ", ..." when there are more."""
    shown = list(names)[:FIRST]
    return ", ".join(shown) + (", ..." if total > len(shown) else "")


def short_error(err: BaseException) -> str:
    """An exception's first line, cut short (a library's message can be long)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def shown(value: Any) -> str:
    """A value read from an untrusted file as a short repr that keeps a message on one line."""
    try:
        text = " ".join(_REPR.repr(value).split())
    except Exception:  # a damaged object may not even print
        text = f"<a {type(value).__name__}>"
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= 80 else text[:77] + "..."


def id_problem(value: Any) -> str | None:
    """Why `value` cannot be a dialogue or utterance id (ids name feature files), or None."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if not value:
        return "is empty"
    if not value.isprintable() or "/" in value or "\\" in value or value.startswith("."):
        return "cannot name a feature file (it holds a slash, a leading dot or unprintable text)"
    return None
