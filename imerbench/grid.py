"""Grids (TOML files or CLI lists) and the cells they expand to.

A cell is (method, dataset, fold, missing rate, seed), plus the protocol and any
hyper-parameter overrides. A method entry may carry overrides in brackets:
`comp[lbd=0.5,fix_modulator=false]`; that whole string is the method's label in results.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from imerbench.data import MaskSpec, parse_feature_names, parse_mask_spec, resolve_dataset
from imerbench.errors import ImerbenchError, did_you_mean
from imerbench.frozen import FrozenDict
from imerbench.metrics import metrics_for
from imerbench.registry import get_entry, list_methods, method_info

T = TypeVar("T")
PROTOCOLS = ("default", "paper")
PRECISIONS = ("fp32", "bf16")
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
    "features": 'feature folder per modality, "a=NAME,t=NAME,v=NAME" or a table (a = "NAME")',
    "widths": 'synthetic feature widths, "small" or "real"',
    "precision": '"fp32", or "bf16" (bfloat16 autocast in training and evaluation)',
    "ceilings": "true: also train each multimodal method on a, t and v alone (its own ceilings)",
}
CEILING_MASKS = ("a", "t", "v")


@dataclass(frozen=True)
class MethodRef:
    """A method id with the user's hyper-parameter overrides, as written in a grid."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    typed: str = ""  # the overrides as the user wrote them (spaces dropped), or ""

    @property
    def label(self) -> str:
        """How rows and tables name it: as typed (`lr=1e-3` stays `lr=1e-3`)."""
        if not self.overrides:
            return self.name
        inner = self.typed or ",".join(f"{k}={_literal(v)}" for k, v in self.overrides)
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
    pairs, typed = [], []
    for item in _split_top_level(rest[:-1]):
        key, eq, value = item.partition("=")
        if not eq:
            raise ImerbenchError(f"method '{text}': override '{item}' must be key=value")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()  # a bare word is a string
        pairs.append((key.strip(), parsed))
        typed.append(f"{key.strip()}={value.strip()}")
    return MethodRef(name, tuple(sorted(pairs)), ",".join(typed))


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
        if self.ceilings and method_info(method.name).role != "ceiling":  # multimodal
            listed = {str(m) for m in masks}
            masks += [parse_mask_spec(c) for c in CEILING_MASKS if c not in listed]
        return masks


def _where(key: str, source: str, options: Collection[str]) -> str:
    """How a message names a setting: the CLI option it came from, or the file and its key."""
    return f"--{key.replace('_', '-')}" if key in options else f"{source}: '{key}'"


def _as_list(where: str, value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return split_list(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    raise ImerbenchError(f"{where} must be a list, not {_kind(value)}")


def _kind(value: Any) -> str:
    """A TOML value as a message names it: its type and the value."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {dict: "a table", list: "a list"}
    return f"{names.get(type(value), type(value).__name__)} ({_shown(value)})"


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _each(where: str, value: Any, parse: Callable[[Any], T]) -> list[T]:
    """`parse` applied to each item of a list setting, its errors prefixed with `where`."""
    out = []
    for item in _as_list(where, value):
        try:
            out.append(parse(item))
        except ImerbenchError as err:
            raise ImerbenchError(f"{where}: {err}") from None
    return out


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ImerbenchError(f"{_kind(value)} is not {what}")
    return value


def _mask(value: Any) -> MaskSpec:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ImerbenchError(f"{_kind(value)} is not a missing rate, condition or rates")
    return parse_mask_spec(str(value))


def _integer(value: Any, minimum: int | None = None, hint: str = "") -> int:
    """A whole number, given as one or as its digits (CLI lists are strings)."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ImerbenchError(f"{_shown(value)} is not an integer") from None
    if minimum is not None and number < minimum:
        raise ImerbenchError(f"{number} is below {minimum}; {hint}")
    return number


def _folder_name(where: str, value: Any) -> str:
    """A grid name names the output folder, so it must be one plain folder name."""
    if not isinstance(value, str) or not value.strip():
        raise ImerbenchError(f"{where} must be a non-empty string, not {_kind(value)}")
    if "/" in value or "\\" in value or value in (".", "..") or not value.isprintable():
        raise ImerbenchError(f"{where}: '{value}' must be one folder name (it names ./runs/<name>)")
    return value


def grid_from_dict(raw: dict[str, Any], source: str, options: Collection[str] = ()) -> Grid:
    """Validate a parsed grid table (a TOML file's content, or CLI options).

    `options` names the keys that came from CLI options, so that a message names the option
    instead of the file.
    """
    for key in raw:
        if key not in GRID_KEYS:
            raise ImerbenchError(
                f"{source}: unknown key '{key}'{did_you_mean(key, GRID_KEYS)}; "
                f"valid keys: {', '.join(GRID_KEYS)}"
            )

    def where(key: str) -> str:
        return _where(key, source, options)

    kwargs: dict[str, Any] = {}
    if "name" in raw:
        kwargs["name"] = _folder_name(where("name"), raw["name"])
    methods = raw.get("methods", "all")
    if methods == "all" or methods == ["all"]:
        kwargs["methods"] = [MethodRef(m) for m in list_methods()]
    else:
        kwargs["methods"] = _each(
            where("methods"), methods, lambda m: parse_method_ref(_text(m, "a method name"))
        )
    if "datasets" in raw:
        kwargs["datasets"] = _each(
            where("datasets"), raw["datasets"], lambda d: resolve_dataset(_text(d, "a dataset")).id
        )
    if "missing_rates" in raw:
        kwargs["missing_rates"] = _each(where("missing_rates"), raw["missing_rates"], _mask)
    else:
        kwargs["missing_rates"] = [parse_mask_spec("0.0")]
    if "seeds" in raw:
        kwargs["seeds"] = _each(
            where("seeds"), raw["seeds"], lambda s: _integer(s, 0, "seeds count from 0")
        )
    folds = raw.get("folds", "all")
    if folds != "all":
        kwargs["folds"] = _each(
            where("folds"), folds, lambda f: _integer(f, 0, 'folds count from 0 (or use "all")')
        )
    for key in ("protocol", "data_root", "widths", "precision"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ImerbenchError(f"{where(key)} must be a string, not {_kind(raw[key])}")
            kwargs[key] = raw[key]
    if "features" in raw:
        value = raw["features"]
        if not isinstance(value, str | dict):
            raise ImerbenchError(
                f"{where('features')} must be a string or a table, not {_kind(value)}"
            )
        try:
            kwargs["features"] = parse_feature_names(value)
        except ImerbenchError as err:
            raise ImerbenchError(f"{where('features')}: {err}") from None
    if "ceilings" in raw:
        if not isinstance(raw["ceilings"], bool):
            raise ImerbenchError(
                f"{where('ceilings')} must be true or false, not {_kind(raw['ceilings'])}"
            )
        kwargs["ceilings"] = raw["ceilings"]
    if "epochs" in raw:
        try:
            kwargs["epochs"] = _integer(raw["epochs"], 1, "a run needs at least 1 epoch")
        except ImerbenchError as err:
            raise ImerbenchError(f"{where('epochs')}: {err}") from None
    for key, shown in [("methods", lambda m: m.label), ("missing_rates", str)]:
        _no_duplicates(where(key), [shown(v) for v in kwargs[key]])
    for key in ("datasets", "seeds", "folds"):
        _no_duplicates(where(key), [str(v) for v in kwargs.get(key) or []])
    return Grid(**kwargs)


def _no_duplicates(where: str, labels: list[str]) -> None:
    """A value listed twice would run (and count) the same cells twice."""
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise ImerbenchError(f"{where} lists {label} twice; list each once")
        seen.add(label)


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
    given = {k: v for k, v in overrides.items() if v is not None}
    raw.update(given)
    return grid_from_dict(raw, str(path), options=set(given))


def default_grid_path() -> Path:
    return Path(str(resources.files("imerbench.grids").joinpath("quick.toml")))


def default_grid(**overrides: Any) -> Grid:
    """The built-in quick grid: every registered method on the synthetic default."""
    return load_grid(default_grid_path(), **overrides)
