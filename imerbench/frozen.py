"""A read-only dict: configuration is frozen once validated (hyper-parameters, a planned
cell's configuration, a grid's feature folders), yet serializes as the plain dict it is."""

from __future__ import annotations

from typing import Any, NoReturn


class FrozenDict(dict[str, Any]):
    """A dict that refuses every change; a change is a new object."""

    refusal = "this mapping is read-only; build a new one instead"  # what a change is told

    def _frozen(self, *_: Any, **__: Any) -> NoReturn:
        raise TypeError(self.refusal)

    __setitem__ = __delitem__ = _frozen  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _frozen  # type: ignore[assignment]
    __ior__ = _frozen  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))
