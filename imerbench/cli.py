"""The `imerbench` command line: run and list (table, plot, report:
`imerbench/cli_results.py`; data, masks and grids: `imerbench/cli_data.py`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import rich.progress as bar
import typer
from rich.console import Console
from rich.markup import escape

import imerbench.progress as progress_lines
from imerbench.cli_data import FEATURES_HELP, data_app, grid_app, masks_app
from imerbench.cli_results import evaluate, plot, report, table
from imerbench.errors import ImerbenchError, print_error_line


def _no_flag_metavar() -> None:
    """Flags take no value, but typer's help prints `<bool>` after each (`--help <bool>`),
    which reads as if they did: show nothing there."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "flags_bare", False):
        return

    def display(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display.flags_bare = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display  # type: ignore[method-assign]


_no_flag_metavar()
app = typer.Typer(
    help="Fair, resumable benchmarks for incomplete multimodal emotion recognition.",
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    add_completion=True,
)
app.add_typer(data_app, name="data")
app.add_typer(masks_app, name="masks")
app.add_typer(grid_app, name="grid")
# One line per message, never wrapped, also when the output is a file or a pipe (grep-able
# logs); a terminal still shows the progress bar.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _version(show: bool) -> None:
    if show:
        from imerbench import __version__

        typer.echo(f"imerbench {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = None,
) -> None:
    """Fair, resumable benchmarks for incomplete multimodal emotion recognition."""


# The base of click's usage errors, from whichever click this typer uses (newer typers vendor
# their own copy, whose classes are not `click`'s).
_USAGE_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


@app.command()
def run(
    grid_file: Annotated[
        str | None,
        typer.Argument(help="a grid .toml, or a built-in grid: quick (default), paper, ..."),
    ] = None,
    methods: Annotated[str | None, typer.Option(help="comma list, e.g. early-fusion,comp")] = None,
    datasets: Annotated[str | None, typer.Option(help="comma list of dataset ids")] = None,
    data_root: Annotated[Path | None, typer.Option(help="folder of GCNet-layout data")] = None,
    features: Annotated[str | None, typer.Option(help=FEATURES_HELP)] = None,
    missing_rates: Annotated[str | None, typer.Option(help="comma list, e.g. 0.0,0.3")] = None,
    seeds: Annotated[str | None, typer.Option(help="comma list of seeds")] = None,
    folds: Annotated[str | None, typer.Option(help="comma list of folds (default all)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda:N")] = "auto",
    executor: Annotated[
        str, typer.Option(help="local, or ray: cells as Ray tasks (pip install 'imerbench\\[ray]')")
    ] = "local",
    jobs: Annotated[
        int, typer.Option(help="cells trained at once, in processes (0: one per CPU core on CPU)")
    ] = 0,
    jobs_per_device: Annotated[
        int, typer.Option(help="CUDA: cells sharing each GPU at once (0: automatic, 4)")
    ] = 0,
    precision: Annotated[
        str | None, typer.Option(help="fp32, or bf16: bfloat16 autocast (default fp32)")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="override every method's epoch caps")] = None,
    ceilings: Annotated[
        bool | None,
        typer.Option(
            help="also train each multimodal method on a, t, v alone (default: the grid's "
            "setting; off when --missing-rates is given)"
        ),
    ] = None,
    protocol: Annotated[str | None, typer.Option(help="default or paper")] = None,
    widths: Annotated[str | None, typer.Option(help="synthetic widths: small or real")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default ./runs/<grid>)")] = None,
    retry_failed: Annotated[bool, typer.Option(help="rerun cells recorded as failed")] = False,
    missing_features: Annotated[
        str, typer.Option(help="refuse, or mark: keep utterances lacking a feature file")
    ] = "refuse",
    save_weights: Annotated[bool, typer.Option(help="save the selected weights")] = True,
    stack: Annotated[
        int, typer.Option(help="most cells trained as one stack of models (0: automatic, 1: off)")
    ] = 0,
    log_to: Annotated[
        str | None,
        typer.Option(help="log every cell's curves and scores: tensorboard, mlflow or both"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="print the plan and a time estimate; writes nothing")
    ] = False,
) -> None:
    """Run or resume a grid (default: every method on the synthetic corpus)."""
    from imerbench.data import resolve_dataset
    from imerbench.grid_file import default_grid_path, load_grid
    from imerbench.plan import RunOptions
    from imerbench.trackers import parse_trackers

    if executor not in ("local", "ray"):
        raise ImerbenchError(f"--executor {executor}: use local or ray")
    if executor == "ray" and not dry_run:
        from imerbench.ray_executor import require_ray

        require_ray()
    if jobs_per_device < 0:
        raise ImerbenchError(
            f"--jobs-per-device {jobs_per_device}: use 0 (automatic) or a positive count"
        )
    if missing_features not in ("refuse", "mark"):
        raise ImerbenchError(f"--missing-features {missing_features}: use refuse or mark")
    if jobs < 0:
        raise ImerbenchError(f"--jobs {jobs}: use 0 (automatic) or a positive count")
    if stack < 0:
        raise ImerbenchError(f"--stack {stack}: use 0 (automatic), 1 (off) or a positive count")
    if missing_rates is not None and ceilings is None:
        ceilings = False  # masks named on the command line are the masks run
    grid = load_grid(
        grid_file or default_grid_path(),
        methods=methods,
        datasets=datasets,
        missing_rates=missing_rates,
        seeds=seeds,
        folds=folds,
        epochs=epochs,
        ceilings=ceilings,
        protocol=protocol,
        widths=widths,
        precision=precision,
        data_root=str(data_root) if data_root else None,
        features=features,
    )
    if data_root is not None and all(resolve_dataset(d).synthetic for d in grid.datasets):
        raise ImerbenchError(
            f"--data-root {data_root}: no dataset of the grid reads it ({', '.join(grid.datasets)}"
            " generated); drop it, or name the datasets to read, e.g. --datasets iemocap4"
        )
    options = RunOptions(
        out=out or Path("runs") / grid.name,
        device=device,
        jobs=jobs,
        jobs_per_device=jobs_per_device,
        executor=executor,
        retry_failed=retry_failed,
        save_weights=save_weights,
        missing_features=missing_features,
        stack=stack,
        log_to=parse_trackers(log_to),
    )
    if dry_run:
        from imerbench.estimate import plan_lines

        for line in plan_lines(grid, options):
            console.print(escape(line))
        return
    from imerbench.compute import CellReport
    from imerbench.convergence import convergence_summary
    from imerbench.leaderboard import leaderboards, render
    from imerbench.results import separate_configurations
    from imerbench.runner import run_grid

    start = time.perf_counter()
    counts = {"ok": 0, "failed": 0, "skipped": 0, "claimed": 0}
    failed = 0  # cells without a result: failed now, or before and not run again
    total = len(grid.cells())
    last_line = start  # off a terminal: when the last progress line was printed
    columns = (bar.BarColumn(), bar.MofNCompleteColumn(), bar.TimeElapsedColumn())
    eta = (bar.TextColumn("ETA"), bar.TimeRemainingColumn())
    with bar.Progress(
        bar.TextColumn("[bold]cells"), *columns, *eta, console=console, transient=True
    ) as progress:
        task = progress.add_task("cells", total=total)
        training: dict[object, float] = {}  # cells in training: the share of their epoch cap

        def on_epoch(cell: object, epoch: int, epochs: int, _: object) -> None:
            training[cell] = min(epoch / epochs, 0.99)  # the bar moves with every epoch
            progress.update(task, completed=sum(counts.values()) + sum(training.values()))

        def on_cell(report: CellReport) -> None:
            nonlocal failed, last_line
            counts[report.status] += 1
            failed += report.failed
            training.pop(report.cell, None)
            progress.update(task, completed=sum(counts.values()) + sum(training.values()))
            now = time.perf_counter()
            if not console.is_terminal and now - last_line >= progress_lines.EVERY:
                last_line = now
                console.print(progress_lines.line(counts, total, now - start))
            if report.status == "skipped":
                return
            if report.status == "claimed":
                text = escape(f"{report.cell.describe()}: {report.summary}")
                progress.console.print(f"[yellow]claimed[/] {text}")
                return
            mark = "[green]ok[/]" if report.status == "ok" else "[red]FAILED[/]"
            text = escape(f"{report.cell.describe()}: {report.summary} [{report.seconds:.1f} s]")
            progress.console.print(f"{mark} {text}")

        store = run_grid(grid, options, on_cell, on_epoch if console.is_terminal else None)
    elapsed = time.perf_counter() - start
    claimed = f", {counts['claimed']} running in another process" if counts["claimed"] else ""
    console.print(
        f"{counts['ok']} cells ran, {counts['failed']} failed, {counts['skipped']} already "
        f"done{claimed}; {elapsed:.1f} s. Results: {store.merged_path}"
    )
    try:
        df = separate_configurations(store.read(), store.root)
    except ImerbenchError as exc:  # the cells are written; only the summary cannot be made
        err_console.print(escape(f"no leaderboard: {exc}"))
    else:
        if len(df):
            typer.echo(render(leaderboards(df), "md"))
            stops = convergence_summary(df)
            if len(stops):
                console.print(
                    f"{stops['cells'].sum()} cells: {stops['plateau'].sum()} stopped on a "
                    f"plateau, {stops['cap'].sum()} at their epoch cap (not converged), "
                    f"{stops['fixed'].sum()} after fixed epochs; `imerbench table "
                    f"{store.root} --convergence` shows each method"
                )
    if failed:
        err_console.print(
            escape(
                f"{failed} of {len(grid.cells())} cells have no result (failed): their reasons "
                f"are in the error column of {store.merged_path} and in each cell's log.txt; "
                "--retry-failed runs them again"
            )
        )
        raise typer.Exit(1)


@app.command("list")
def list_(
    method: Annotated[
        str | None, typer.Argument(help="a method id: its hyper-parameters and profiles")
    ] = None,
) -> None:
    """Registered methods, datasets and built-in grids; or one method in detail."""
    from imerbench.listing import print_catalog, print_method

    if method is None:
        print_catalog(console)
    else:
        print_method(console, method)


for command in (table, plot, report, evaluate):  # after run and list, in --help's order
    app.command()(command)


def _given_value(param: object, argv: list[str]) -> str | None:
    """What the user typed for an option that was refused (some typers leave it out of their
    message), or None."""
    opts = getattr(param, "opts", None) or []
    for k, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in opts:
            return value if eq else (argv[k + 1] if k + 1 < len(argv) else None)
    return None


def main() -> None:
    """Console entry point: user errors (values, data, options) become one line on stderr and
    exit status 2; `data check` exits with 1 when it found problems."""
    try:
        code = app(standalone_mode=False, prog_name="imerbench")
    except ImerbenchError as exc:
        print_error_line(str(exc))
        sys.exit(2)
    except _USAGE_ERROR as exc:  # usage errors: one line too, not typer's framed box
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
        else:
            message = exc.format_message()
            given = _given_value(getattr(exc, "param", None), sys.argv[1:])
            if given is not None and repr(given) not in message:
                message = f"{message.rstrip('.')}: {given!r} given"
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print_error_line(message + hint)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print_error_line("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        code = 130
    if code == 130:  # typer turns Ctrl-C into exit status 130
        err_console.print("interrupted; finished cells are saved, run again to resume")
    if isinstance(code, int) and code:
        sys.exit(code)
