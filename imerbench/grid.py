"""Grids and the cells they expand to (reading them from TOML files or CLI lists:
`imerbench/grid_file.py`).

A cell is (method, dataset, fold, missing rate, seed), plus the protocol and any
hyper-parameter overrides. A method entry may carry overrides in brackets:
`comp[lbd=0.5,fix_modulator=false]`; that whole string is the method's label in results.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from imerbench.data import MaskSpec, parse_feature_names, parse_mask_spec, resolve_dataset
from imerbench.errors import ImerbenchError
from imerbench.frozen import FrozenDict
from imerbench.metrics import metrics_for
from imerbench.registry import get_entry, method_info

PROTOCOLS = ("default", "paper")
PRECISIONS = ("fp32", "bf16")
CEILING_MASKS = ("a", "t", "v")


@dataclass(frozen=True)
class MethodRef:
    """A method id with the user's hyper-parameter overrides, as written in a grid."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    typed: str = ""  # the overrides as the user wrote them (spaces dropped), or ""
    balance: MethodRef | None = None  # a balance strategy on it: `late-fusion+ogm-ge[...]`

    @property
    def label(self) -> str:
        """How rows and tables name it: as typed (`lr=1e-3` stays `lr=1e-3`)."""
        text = self.name
        if self.overrides:
            inner = self.typed or ",".join(f"{k}={_literal(v)}" for k, v in self.overrides)
            text = f"{self.name}[{inner}]"
        return text if self.balance is None else f"{text}+{self.balance.label}"

    def with_overrides(self, extra: dict[str, Any]) -> MethodRef:
        """This method with more overrides (a grid's sweep), labelled after its own."""
        mine = self.typed or ",".join(f"{k}={_literal(v)}" for k, v in self.overrides)
        added = [f"{k}={_literal(v).replace(' ', '')}" for k, v in extra.items()]
        typed = ",".join([mine, *added] if mine else added)
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in extra.items()}
        overrides = tuple(sorted([*self.overrides, *values.items()]))
        return replace(self, overrides=overrides, typed=typed)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value) if not isinstance(value, (list, tuple)) else str(list(value))


def parse_method_ref(text: str) -> MethodRef:
    """`comp` or `comp[lbd=0.5,depth=2]`; values are TOML literals (true, 0.5, "x"). A balance
    strategy follows a `+`: `late-fusion+ogm-ge[alpha=0.5]` (`imerbench/balance/`)."""
    text = text.strip()
    parts = _split_top_level(text, "+")
    if len(parts) > 2:
        raise ImerbenchError(f"method '{text}': one balance strategy at most (method+strategy)")
    if len(parts) == 2:
        from imerbench.balance import check_pairing, create_strategy

        base = parse_method_ref(parts[0])
        strategy = _parse_ref(parts[1], "balance strategy")
        create_strategy(strategy.name, **dict(strategy.overrides))  # unknown names, bad values
        check_pairing(base.name, get_entry(base.name).cls.offers, strategy.name)
        return replace(base, balance=strategy)
    get_entry(text.partition("[")[0].strip())  # unknown ids fail here, with a did-you-mean
    return _parse_ref(text, "method")


def split_balance(label: str) -> tuple[str, str] | None:
    """(base, strategy) of a `base+strategy` label, each with its overrides; None for a
    method without a strategy."""
    parts = _split_top_level(label, "+")
    return (parts[0].strip(), parts[1].strip()) if len(parts) == 2 else None


def _parse_ref(text: str, kind: str) -> MethodRef:
    """A name with optional `[k=v,...]` overrides."""
    name, _, rest = text.strip().partition("[")
    name = name.strip()
    if not rest:
        return MethodRef(name)
    if not rest.endswith("]"):
        raise ImerbenchError(f"{kind} '{text}': overrides must close with ']'")
    pairs, typed = [], []
    for item in _split_top_level(rest[:-1]):
        key, eq, value = item.partition("=")
        if not eq:
            raise ImerbenchError(f"{kind} '{text}': override '{item}' must be key=value")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()  # a bare word is a string
        pairs.append((key.strip(), tuple(parsed) if isinstance(parsed, list) else parsed))
        typed.append(f"{key.strip()}={value.strip()}")
    return MethodRef(name, tuple(sorted(pairs)), ",".join(typed))


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def split_list(text: str) -> list[str]:
    """A comma-separated CLI list; commas inside method brackets do not split."""
    return _split_top_level(text)


@dataclass(frozen=True)
class Cell:
    """One training run: everything that determines its rows."""

    method: MethodRef
    dataset: str
    fold: int
    mask: MaskSpec
    seed: int
    protocol: str = "default"
    epochs: int | None = None

    def describe(self) -> str:
        return (
            f"{self.method.label} {self.dataset} fold {self.fold} mr {self.mask} seed {self.seed}"
        )


def checked_dataset(name: str) -> str:
    """A dataset's id, once its primary metric is known to be one of its task's metrics (a
    plug-in's typo fails here, in one line, not mid-run)."""
    info = resolve_dataset(name)
    allowed = [m.id for m in metrics_for(info.task)]
    if info.primary_metric not in allowed:
        raise ImerbenchError(
            f"dataset '{info.id}': primary_metric '{info.primary_metric}' is not a "
            f"{info.task} metric; use one of {', '.join(allowed)}"
        )
    return info.id


@dataclass(frozen=True)
class Grid:
    """What to run: validated and normalized on construction (its lists become tuples), then
    read-only."""

    name: str = "quick"
    methods: Sequence[MethodRef] = ()
    datasets: Sequence[str] = ("synthetic",)
    missing_rates: Sequence[MaskSpec] = ()
    seeds: Sequence[int] = (0,)
    folds: Sequence[int] | None = None  # None: every fold of each dataset
    protocol: str = "default"
    epochs: int | None = None
    data_root: str | None = None
    widths: str = "small"
    precision: str = "fp32"  # part of every cell's config: fp32 and bf16 rows never mix
    # Feature folders the user named, per modality (the others keep the papers' defaults).
    features: Mapping[str, str] | None = None
    # Each multimodal method also trains on a, t and v alone (masks "a", "t", "v"), every
    # seed and fold: the unimodal ceilings its under-optimization is measured against.
    ceilings: bool = False

    def __post_init__(self) -> None:
        normalize = partial(object.__setattr__, self)  # the one place a Grid is written
        for name in ("methods", "missing_rates", "seeds"):
            normalize(name, tuple(getattr(self, name)))
        if self.folds is not None:
            normalize("folds", tuple(self.folds))
        if self.protocol not in PROTOCOLS:
            raise ImerbenchError(f"protocol '{self.protocol}' is not one of {', '.join(PROTOCOLS)}")
        if self.precision not in PRECISIONS:
            raise ImerbenchError(
                f"precision '{self.precision}' is not one of {', '.join(PRECISIONS)}"
            )
        if self.widths not in ("small", "real"):
            raise ImerbenchError(f"widths '{self.widths}' must be 'small' or 'real'")
        if self.epochs is not None and self.epochs < 1:
            raise ImerbenchError(f"epochs must be at least 1, not {self.epochs}")
        normalize("datasets", tuple(checked_dataset(d) for d in self.datasets))
        if self.features is not None:
            normalize("features", FrozenDict(parse_feature_names(self.features)))
        for kind, values in [
            ("method", [m.label for m in self.methods]),
            ("dataset", self.datasets),
            ("missing rate", [str(m) for m in self.missing_rates]),
            ("seed", [str(s) for s in self.seeds]),
        ]:
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ImerbenchError(f"grid '{self.name}' lists {kind} {dupes[0]} twice")
        for label, values in [
            ("methods", self.methods),
            ("missing_rates", self.missing_rates),
            ("seeds", self.seeds),
            ("datasets", self.datasets),
        ]:
            if not values:
                raise ImerbenchError(f"grid '{self.name}' has no {label}")

    def cells(self) -> list[Cell]:
        out = []
        for dataset in self.datasets:
            num_folds = resolve_dataset(dataset).num_folds
            folds = range(num_folds) if self.folds is None else self.folds
            for fold in folds:
                if not 0 <= fold < num_folds:
                    raise ImerbenchError(
                        f"dataset '{dataset}' has folds 0..{num_folds - 1}, not {fold}"
                    )
            for method in self.methods:
                for mask in self.masks_of(method):
                    for seed in self.seeds:
                        for fold in folds:
                            out.append(
                                Cell(method, dataset, fold, mask, seed, self.protocol, self.epochs)
                            )
        return out

    def masks_of(self, method: MethodRef) -> list[MaskSpec]:
        """The grid's masks, and a multimodal method's ceilings where the grid asks."""
        masks = list(self.missing_rates)
        # A multimodal method's; a method with a balance strategy is measured against its
        # base's (`imerbench/analysis.py`): with one modality there is nothing to balance.
        multimodal = method_info(method.name).role != "ceiling"
        if self.ceilings and multimodal and method.balance is None:
            listed = {str(m) for m in masks}
            masks += [parse_mask_spec(c) for c in CEILING_MASKS if c not in listed]
        return masks
