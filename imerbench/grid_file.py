"""Grid files and the CLI's lists, validated into a `Grid` (`imerbench/grid.py`): every
key checked, every bad value one line naming the file and key (or the option) and the fix."""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Callable, Collection
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from imerbench.data import MaskSpec, parse_feature_names, parse_mask_spec, resolve_dataset
from imerbench.errors import ImerbenchError, did_you_mean, unknown_name
from imerbench.grid import Grid, MethodRef, parse_method_ref, split_list
from imerbench.registry import list_methods

T = TypeVar("T")
GRID_KEYS = {
    "name": "grid name (the output folder under ./runs/)",
    "methods": 'list of method ids (with optional [k=v] overrides), or "all"',
    "exclude": 'method ids that "all" leaves out',
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
    "sweep": "per listed method id, value lists of its hyper-parameters: each combination "
    "runs as one labelled method ([sweep.comp] lbd = [0.1, 0.5])",
}


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
    exclude = _each(where("exclude"), raw.get("exclude", []), lambda m: _text(m, "a method id"))
    if exclude and methods not in ("all", ["all"]):
        if "methods" in options:  # --methods named the methods: the file's exclusions go
            exclude = []
        else:
            raise ImerbenchError(f'{where("exclude")} only applies to methods = "all"')
    for name in exclude:
        if name not in list_methods():
            raise unknown_name("method", name, list_methods())
    if methods == "all" or methods == ["all"]:
        kwargs["methods"] = [MethodRef(m) for m in list_methods() if m not in exclude]
    else:
        kwargs["methods"] = _each(
            where("methods"), methods, lambda m: parse_method_ref(_text(m, "a method name"))
        )
    if "sweep" in raw:
        kwargs["methods"] = _swept(where("sweep"), raw["sweep"], kwargs["methods"])
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


def _swept(where: str, sweep: Any, methods: list[MethodRef]) -> list[MethodRef]:
    """`methods` with each swept one replaced by one method per combination of its swept
    values (in the order listed, the last key varying fastest)."""
    names = {m.name for m in methods}
    if not isinstance(sweep, dict):
        raise ImerbenchError(
            f"{where} must be a table per method id ([sweep.comp] lbd = [0.1, 0.5]), "
            f"not {_kind(sweep)}"
        )
    for method, table in sweep.items():
        if method not in names:
            raise ImerbenchError(
                f"{where}: '{method}' is not among the grid's methods"
                f"{did_you_mean(method, names)}; list it in methods to sweep it"
            )
        if not isinstance(table, dict) or not table:
            raise ImerbenchError(
                f"{where}: {method} must be a table of value lists (lbd = [0.1, 0.5]), "
                f"not {_kind(table)}"
            )
        for key, values in table.items():
            if not isinstance(values, list) or not values:
                raise ImerbenchError(
                    f"{where}: {method}.{key} must be a non-empty list of values, not "
                    f"{_kind(values)}"
                )
    out = []
    for ref in methods:
        table = sweep.get(ref.name)
        if not table:
            out.append(ref)
            continue
        fixed = sorted(set(dict(ref.overrides)) & set(table))
        if fixed:
            raise ImerbenchError(
                f"{where}: {ref.label} sets {fixed[0]}, which the sweep varies; "
                "remove one of the two"
            )
        for values in itertools.product(*table.values()):
            out.append(ref.with_overrides(dict(zip(table, values, strict=True))))
    return out


def _no_duplicates(where: str, labels: list[str]) -> None:
    """A value listed twice would run (and count) the same cells twice."""
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise ImerbenchError(f"{where} lists {label} twice; list each once")
        seen.add(label)


def builtin_grids() -> dict[str, Path]:
    """The grids shipped with the package, by name (quick, paper, comp-ablation)."""
    folder = resources.files("imerbench.grids")
    return {
        entry.name[:-5]: Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".toml")
    }


def grid_path(grid: str | Path) -> Path:
    """A grid file's path, or a built-in grid's given its name (`imerbench run paper`)."""
    path = Path(grid)
    if path.is_file():
        return path
    builtin = builtin_grids()
    if str(grid) in builtin:
        return builtin[str(grid)]
    if path.suffix == ".toml" or len(path.parts) > 1:
        raise ImerbenchError(
            f"grid file {path} does not exist; pass a .toml grid file or a built-in grid "
            f"({', '.join(builtin)})"
        )
    raise ImerbenchError(
        f"grid '{grid}' is neither a file nor a built-in grid"
        f"{did_you_mean(str(grid), builtin)}; built in: {', '.join(builtin)}"
    )


def read_grid_table(path: str | Path) -> dict[str, Any]:
    """A grid file's raw table (a path, or a built-in grid's name); relative `data_root` is
    resolved against the file's folder."""
    path = grid_path(path)
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
    return builtin_grids()["quick"]


def default_grid(**overrides: Any) -> Grid:
    """The built-in quick grid: every registered method on the synthetic default."""
    return load_grid(default_grid_path(), **overrides)
