"""What `imerbench list` prints: every registered method, dataset and built-in grid, or one
method's hyper-parameters and profiles."""

from __future__ import annotations

from importlib import resources

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from imerbench.balance import get_strategy, list_strategies
from imerbench.data import list_datasets
from imerbench.method import PROFILE_DEFAULTS, known_profiles
from imerbench.registry import get_entry, list_methods


def print_catalog(console: Console) -> None:
    console.print("[bold]methods[/] (stacks: its cells can train as one stack of models)")
    for name in list_methods():
        entry = get_entry(name)
        info = entry.info
        role = f"{info.role} {info.ceiling_of}".strip()
        stacks = "stacks" if entry.cls.stackable else "alone"
        paper = f" [published as {info.paper_name}]" if info.paper_name else ""
        console.print(escape(f"  {name:16s} {role:11s} {stacks:6s} {info.description}{paper}"))
    console.print("[bold]balance strategies[/] (method+strategy\\[k=v]; the methods that carry it)")
    for name, carriers in strategy_carriers().items():
        summary = get_strategy(name).summary
        console.print(escape(f"  {name:16s} {summary}; on: {', '.join(carriers) or 'none'}"))
    console.print("[bold]datasets")
    for info in list_datasets():
        alias = f" (alias {', '.join(info.aliases)})" if info.aliases else ""
        where = f"{info.folder}/{info.label_file}" if info.source == "gcnet" else "generated"
        if info.source not in ("gcnet", "synthetic"):
            where = f"plug-in loader ({info.source})"
        console.print(f"  {info.id:16s} {info.task}, primary {info.primary_metric}, {where}{alias}")
    console.print("[bold]grids")
    for entry in sorted(resources.files("imerbench.grids").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            console.print(f"  {entry.name[:-5]}")
    console.print(
        "  run one by name (imerbench run paper) or any grid file; print one: "
        "imerbench grid show NAME"
    )
    console.print("details of one method: imerbench list METHOD")


UNWRAPPED_WIDTH = 400


def strategy_carriers() -> dict[str, list[str]]:
    """Each balance strategy and the registered methods that offer what it needs."""
    return {
        name: [m for m in list_methods() if not get_strategy(name).missing(get_entry(m).cls.offers)]
        for name in list_strategies()
    }


def print_method(console: Console, name: str) -> None:
    """A method's registration, stages and every hyper-parameter: its default, the values
    allowed, and each profile's value where the profile changes it."""
    entry = get_entry(name)
    info, cls = entry.info, entry.cls
    role = f"{info.role} of modality {info.ceiling_of}" if info.ceiling_of else info.role
    paper = f", published as {info.paper_name}" if info.paper_name else ""
    console.print(escape(f"{name}: {info.description}"))
    stacks = "its cells train as one stack" if cls.stackable else "each cell trains alone"
    console.print(escape(f"role: {role}{paper}; stages: {' -> '.join(cls.stages)}; {stacks}"))
    profiles = known_profiles()
    table = Table("hyper-parameter", "default", "allowed", *profiles, "help", box=None)
    for key, param in cls.all_params().items():
        if key in entry.fixed:
            allowed = f"fixed: {entry.fixed[key]!r}"
        elif param.choices is not None:
            allowed = ", ".join(map(repr, param.choices))
        else:
            bounds = [f">= {param.low:g}"] if param.low is not None else []
            bounds += [f"<= {param.high:g}"] if param.high is not None else []
            bounds += [f"multiple of {param.multiple_of}"] if param.multiple_of is not None else []
            allowed = ", ".join(bounds) or type(param.default).__name__
        changed = [PROFILE_DEFAULTS.get(p, {}) | cls.profiles.get(p, {}) for p in profiles]
        values = [repr(values[key]) if key in values else "" for values in changed]
        table.add_row(*map(escape, [key, repr(param.default), allowed, *values, param.help]))
    # Not a terminal (a file, a pipe): one line per hyper-parameter, for grep, not 80 columns
    wide = console if console.is_terminal else Console(file=console.file, width=UNWRAPPED_WIDTH)
    wide.print(table)
