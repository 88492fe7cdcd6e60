"""Grids (TOML files or CLI lists) and the cells they expand to.

A cell is (method, dataset, fold, missing rate, seed), plus the protocol and any
hyper-parameter overrides. A method entry may carry overrides in brackets:
`comp[lbd=0.5,fix_modulator=false]`; that whole string is the method's label in results.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from imerbench.datasets import resolve_dataset
from imerbench.errors import ImerbenchError, did_you_mean
from imerbench.masks import MaskSpec, parse_mask_spec
from imerbench.registry import get_entry, list_methods

PROTOCOLS = ("default", "paper")
GRID_KEYS = {
    "name": "grid name (the output folder under ./runs/)",
    "methods": 'list of method ids (with optional [k=v] overrides), or "all"',
    "datasets": "list of dataset ids",
    "missing_rates": 'list of missing rates in [0, 0.7], conditions ("at") or "a=0.1,t=0.2,v=0.6"',
    "seeds": "list of integer seeds",
    "folds": 'list of fold indices, or "all"',
    "protocol": '"default" or "paper"',
    "epochs": "override every method's epoch count (stages scale with it)",
    "data_root": "folder holding the GCNet-layout datasets",
    "widths": 'synthetic feature widths, "small" or "real"',
}


@dataclass(frozen=True)
class MethodRef:
    """A method id with the user's hyper-parameter overrides, as written in a grid."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.overrides:
            return self.name
        inner = ",".join(f"{k}={_literal(v)}" for k, v in self.overrides)
        return f"{self.name}[{inner}]"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value) if not isinstance(value, (list, tuple)) else str(list(value))


def parse_method_ref(text: str) -> MethodRef:
    """`comp` or `comp[lbd=0.5,depth=2]`; values are TOML literals (true, 0.5, "x")."""
    text = text.strip()
    name, _, rest = text.partition("[")
    name = name.strip()
    get_entry(name)  # unknown ids fail here, with a did-you-mean
    if not rest:
        return MethodRef(name)
    if not rest.endswith("]"):
        raise ImerbenchError(f"method '{text}': overrides must close with ']'")
    pairs = []
    for item in _split_top_level(rest[:-1]):
        key, eq, value = item.partition("=")
        if not eq:
            raise ImerbenchError(f"method '{text}': override '{item}' must be key=value")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()  # a bare word is a string
        pairs.append((key.strip(), parsed))
    return MethodRef(name, tuple(sorted(pairs)))


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes."""
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
        elif ch == "," and depth == 0:
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


@dataclass
class Grid:
    """What to run. Lists are validated and normalized on construction."""

    name: str = "quick"
    methods: list[MethodRef] = field(default_factory=list)
    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    missing_rates: list[MaskSpec] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    folds: list[int] | None = None  # None: every fold of each dataset
    protocol: str = "default"
    epochs: int | None = None
    data_root: str | None = None
    widths: str = "small"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ImerbenchError(f"protocol '{self.protocol}' is not one of {', '.join(PROTOCOLS)}")
        if self.widths not in ("small", "real"):
            raise ImerbenchError(f"widths '{self.widths}' must be 'small' or 'real'")
        if self.epochs is not None and self.epochs < 1:
            raise ImerbenchError(f"epochs must be at least 1, not {self.epochs}")
        self.datasets = [resolve_dataset(d).id for d in self.datasets]
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
                for mask in self.missing_rates:
                    for seed in self.seeds:
                        for fold in folds:
                            out.append(
                                Cell(method, dataset, fold, mask, seed, self.protocol, self.epochs)
                            )
        return out


def _as_list(key: str, value: Any, source: str) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return split_list(value)
    if isinstance(value, (int, float)):
        return [value]
    raise ImerbenchError(f"{source}: '{key}' must be a list, not {type(value).__name__}")


def grid_from_dict(raw: dict[str, Any], source: str) -> Grid:
    """Validate a parsed grid table (a TOML file's content, or CLI options)."""
    for key in raw:
        if key not in GRID_KEYS:
            raise ImerbenchError(
                f"{source}: unknown key '{key}'{did_you_mean(key, GRID_KEYS)}; "
                f"valid keys: {', '.join(GRID_KEYS)}"
            )
    kwargs: dict[str, Any] = {}
    if "name" in raw:
        kwargs["name"] = str(raw["name"])
    methods = raw.get("methods", "all")
    if methods == "all" or methods == ["all"]:
        kwargs["methods"] = [MethodRef(m) for m in list_methods()]
    else:
        kwargs["methods"] = [parse_method_ref(str(m)) for m in _as_list("methods", methods, source)]
    if "datasets" in raw:
        kwargs["datasets"] = [str(d) for d in _as_list("datasets", raw["datasets"], source)]
    if "missing_rates" in raw:
        kwargs["missing_rates"] = [
            parse_mask_spec(str(v)) for v in _as_list("missing_rates", raw["missing_rates"], source)
        ]
    else:
        kwargs["missing_rates"] = [parse_mask_spec("0.0")]
    if "seeds" in raw:
        kwargs["seeds"] = [
            _integer(source, "seeds", s) for s in _as_list("seeds", raw["seeds"], source)
        ]
    folds = raw.get("folds", "all")
    if folds != "all":
        kwargs["folds"] = [_integer(source, "folds", f) for f in _as_list("folds", folds, source)]
    for key in ("protocol", "data_root", "widths"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ImerbenchError(f"{source}: '{key}' must be a string, not {raw[key]!r}")
            kwargs[key] = raw[key]
    if "epochs" in raw:
        kwargs["epochs"] = _integer(source, "epochs", raw["epochs"])
    return Grid(**kwargs)


def _integer(source: str, key: str, value: Any) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ImerbenchError(f"{source}: '{key}' holds {value!r}, not an integer") from None


def read_grid_table(path: str | Path) -> dict[str, Any]:
    """A grid file's raw table; relative `data_root` is resolved against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ImerbenchError(f"grid file {path} does not exist; pass a .toml grid file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ImerbenchError(f"grid file {path} is not valid TOML: {exc}") from None
    raw.setdefault("name", path.stem)
    if isinstance(raw.get("data_root"), str):
        raw["data_root"] = str((path.parent / raw["data_root"]).expanduser())
    return raw


def load_grid(path: str | Path, **overrides: Any) -> Grid:
    """A grid file, with keys replaced by `overrides` (the CLI's options) where given."""
    raw = read_grid_table(path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return grid_from_dict(raw, str(path))


def default_grid_path() -> Path:
    return Path(str(resources.files("imerbench.grids").joinpath("quick.toml")))


def default_grid(**overrides: Any) -> Grid:
    """The built-in quick grid: every registered method on the synthetic default."""
    return load_grid(default_grid_path(), **overrides)
