"""Balance strategies (OGM-GE, PMR, AGM, MMPareto, gradient blending) for any method that
offers what they need: `method+strategy[k=v]` in a grid or `--methods`.

`base.py` holds the interface, `compose.py` puts a strategy on a method, one module per
strategy holds its rule (`../shared/specs/balance.md`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from imerbench.balance.base import Strategy
from imerbench.errors import ImerbenchError, unknown_name

_STRATEGIES: dict[str, type[Strategy]] = {}
# The modules that register the built-in strategies.
BUILT_IN = ("ogm_ge", "pmr", "agm", "mmpareto", "g_blending")


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: `@register_strategy("ogm-ge")`."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        _STRATEGIES[name] = cls
        return cls

    return decorate


def _load() -> None:
    for module in BUILT_IN:
        importlib.import_module(f"imerbench.balance.{module}")


def list_strategies() -> list[str]:
    _load()
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> type[Strategy]:
    _load()
    if name not in _STRATEGIES:
        raise unknown_name("balance strategy", name, _STRATEGIES)
    return _STRATEGIES[name]


def create_strategy(name: str, **overrides: Any) -> Strategy:
    """A strategy with its defaults and the user's overrides, validated."""
    cls = get_strategy(name)
    return cls(name, **cls.resolve(name, overrides))


def check_pairing(method: str, offers: frozenset[str], strategy: str) -> None:
    """One line naming what `method` lacks for `strategy`, or nothing."""
    lacking = get_strategy(strategy).missing(offers)
    if lacking:
        have = ", ".join(sorted(offers)) or "nothing"
        raise ImerbenchError(
            f"{method}+{strategy}: {strategy} needs {', '.join(lacking)}, which {method} does "
            f"not offer (it offers {have}); `imerbench list` shows which methods carry it"
        )


__all__ = [
    "Strategy",
    "check_pairing",
    "create_strategy",
    "get_strategy",
    "list_strategies",
    "register_strategy",
]
