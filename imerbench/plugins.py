"""Plug-ins: separate packages add methods and datasets through entry points."""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points


def load_entry_points(group: str, kind: str) -> None:
    """Import every module the entry points of `group` name (importing one registers what it
    adds); a plug-in that fails to import is a warning naming it, never a crash."""
    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not take the harness down
            warnings.warn(f"could not load {kind} plug-in '{ep.name}': {exc}", stacklevel=3)
