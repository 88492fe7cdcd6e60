"""The method registry: methods register themselves; the harness creates them by name.

Built-in methods live in `imerbench.methods` (the top-level `methods/` folder); third-party
packages add theirs through the entry-point group `imerbench.methods`, whose entries name a
module to import (importing it registers its methods).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imerbench.errors import ImerbenchError, unknown_name
from imerbench.method import Method, MethodInfo
from imerbench.plugins import load_entry_points

ENTRY_POINT_GROUP = "imerbench.methods"


@dataclass(frozen=True)
class MethodEntry:
    """A registered name: the class, the fixed hyper-parameters of this variant, and what
    the analysis needs to know of it."""

    cls: type[Method]
    info: MethodInfo
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def description(self) -> str:
        return self.info.description


_REGISTRY: dict[str, MethodEntry] = {}
_loaded = False


def register_method(
    name: str,
    description: str = "",
    *,
    role: str = "method",
    ceiling_of: str = "",
    paper_name: str = "",
    fixed: Mapping[str, Any] | None = None,
) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: `@register_method("late-fusion", role="reference")`.

    `role`: `method`, `reference` (a floor every method should clear) or `ceiling` (trained
    and scored on the one modality `ceiling_of`); `paper_name`: the name published tables
    give it. `fixed` holds hyper-parameters that define the variant (e.g.
    `{"modality": "a"}`); they are not user-overridable. Every profile is validated here.
    Registering a name twice warns and keeps the newer class.
    """
    if name != name.lower() or " " in name or "_" in name:
        raise ValueError(f"method ids are lower-case with hyphens, not '{name}'")

    def decorate(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            warnings.warn(f"method '{name}' registered twice; keeping {cls.__name__}", stacklevel=2)
        summary = description or next(iter((cls.__doc__ or "").strip().splitlines()), "")
        info = MethodInfo(name, role, ceiling_of, paper_name, summary)
        cls.check_profiles(name)
        _REGISTRY[name] = MethodEntry(cls, info, dict(fixed or {}))
        return cls

    return decorate


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("imerbench.methods")
    discover_plugins()


def discover_plugins() -> None:
    """Import every module named in the `imerbench.methods` entry points (their import
    registers their methods); the registry does it once, on first use."""
    load_entry_points(ENTRY_POINT_GROUP, "method")


def list_methods() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def method_info(label: str) -> MethodInfo:
    """The registration metadata of a method label (`id`, `id[k=v,...]`, either with a
    `+strategy`: the method's); a method that is not registered here (a plug-in not
    installed) is a plain `method`."""
    _load_all()
    name = label.partition("[")[0].partition("+")[0].strip()
    entry = _REGISTRY.get(name)
    return entry.info if entry is not None else MethodInfo(name)


def unregister_method(name: str) -> None:
    """Remove a registered method (for plug-ins and tests that register temporary ones)."""
    _REGISTRY.pop(name, None)


def get_entry(name: str) -> MethodEntry:
    _load_all()
    if name not in _REGISTRY:
        raise unknown_name("method", name, _REGISTRY)
    return _REGISTRY[name]


def create_method(name: str, profile: str = "quick", **overrides: Any) -> Method:
    """A method configured for a dataset profile, with the user's overrides validated."""
    entry = get_entry(name)
    fixed_clash = sorted(set(overrides) & set(entry.fixed))
    if fixed_clash:
        raise ImerbenchError(f"{name}: {', '.join(fixed_clash)} is fixed by this variant")
    hp = entry.cls.resolve_hparams(name, profile, {**overrides, **entry.fixed})
    return entry.cls(entry.info, **hp)
