"""`imerbench table`, `plot` and `report`: everything computed from a run's rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imerbench.errors import ImerbenchError, print_error_line, unknown_name


def table(
    results: Annotated[Path, typer.Argument(help="output folder or results CSV")] = Path(
        "runs/quick"
    ),
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="md, latex, csv, or parquet: the tidy rows as a file (needs pyarrow)"
        ),
    ] = "md",
    out: Annotated[
        Path | None,
        typer.Option(help="the --format parquet file (default RESULTS/results.parquet)"),
    ] = None,
    selection: Annotated[str, typer.Option(help="val or test-oracle")] = "val",
    paper: Annotated[
        bool,
        typer.Option(help="beside the ComP paper's numbers: our test-oracle rows, then val"),
    ] = False,
    protocols: Annotated[
        bool, typer.Option(help="val vs test-oracle scores: what test-set selection inflates")
    ] = False,
    convergence: Annotated[
        bool, typer.Option(help="how each method's cells stopped: plateau, cap or fixed")
    ] = False,
    balance: Annotated[
        bool, typer.Option(help="what each method+strategy changed against its base method")
    ] = False,
    metric: Annotated[
        str,
        typer.Option(
            help="metrics to rank by, comma-separated (default: each dataset's primary); "
            "each applies to the datasets whose task has it"
        ),
    ] = "",
) -> None:
    """Leaderboards (mean ± std over seeds) computed from the results rows."""
    from imerbench.balance_table import balance_table
    from imerbench.convergence import convergence_table
    from imerbench.leaderboard import leaderboards, render
    from imerbench.metrics import METRICS
    from imerbench.paper_table import paper_tables
    from imerbench.protocol_table import protocol_table
    from imerbench.results import read_results, separate_configurations

    if fmt not in ("md", "latex", "csv", "parquet"):
        raise ImerbenchError(f"--format {fmt}: use md, latex, csv or parquet")
    if fmt == "parquet":
        folder = results if results.is_dir() else results.parent
        path = write_parquet(read_results(results), out or folder / "results.parquet")
        typer.echo(f"wrote {path}")
        return
    if selection not in ("val", "test-oracle"):
        raise ImerbenchError(f"--selection {selection}: use val or test-oracle")
    views = {"--protocols": protocols, "--convergence": convergence, "--balance": balance,
             "--paper": paper}  # fmt: skip
    chosen = [flag for flag, wanted in views.items() if wanted]
    if len(chosen) > 1:
        raise ImerbenchError(f"{' and '.join(chosen)}: choose one table at a time")
    df = separate_configurations(read_results(results), results)
    if chosen:  # --paper: test-oracle beside the published numbers, then val
        typer.echo({"--protocols": lambda: protocol_table(df, fmt),
                    "--convergence": lambda: convergence_table(df, fmt),
                    "--balance": lambda: balance_table(df, fmt, selection),
                    "--paper": lambda: paper_tables(df, fmt)}[chosen[0]]())  # fmt: skip
        return
    metrics = [m.strip() for m in metric.split(",") if m.strip()] or [None]
    for m in metrics:
        if m is not None and m not in METRICS:
            raise unknown_name("metric", m, METRICS)
    boards = [b for m in metrics for b in leaderboards(df, selection, m)]
    if not boards:
        what = f" for {metric}" if metric else ""
        raise ImerbenchError(f"{results} holds no finished rows with {selection} selection{what}")
    typer.echo(render(boards, fmt))


def plot(
    results: Annotated[Path, typer.Argument(help="output folder of a run")] = Path("runs/quick"),
    out: Annotated[
        Path | None, typer.Option(help="folder for figures (default RESULTS/figures)")
    ] = None,
) -> None:
    """Figures of the modality-imbalance analysis (PNG and PDF)."""
    from imerbench.plots import plot_all
    from imerbench.results import read_results, separate_configurations

    df = separate_configurations(read_results(results), results)
    if not (df["status"] == "ok").any():  # nothing to draw: say so, write nothing
        print_error_line(
            f"{results} holds no finished cell to draw ({len(df)} rows, none ok); run the "
            "grid first, or rerun its failed cells with --retry-failed"
        )
        raise typer.Exit(1)
    folder = results if results.is_dir() else results.parent
    if not (folder / "cells").is_dir():
        typer.echo(
            f"note: no training curves: they are read from the run folder's cells/, which "
            f"{folder} does not have (pass the run's output folder)",
            err=True,
        )
    written = plot_all(folder, df, out or folder / "figures")
    for path in written:
        if path.suffix == ".png":
            typer.echo(f"wrote {path} (and .pdf)")


def report(
    results: Annotated[Path, typer.Argument(help="output folder of a run")] = Path("runs/quick"),
    out: Annotated[
        Path | None, typer.Option(help="HTML file (default RESULTS/report.html)")
    ] = None,
) -> None:
    """One self-contained HTML page: leaderboards, analysis, figures, provenance."""
    from imerbench.report import write_report
    from imerbench.results import read_results, separate_configurations

    df = separate_configurations(read_results(results), results)
    folder = results if results.is_dir() else results.parent
    path = write_report(folder, df, out or folder / "report.html")
    typer.echo(f"wrote {path}")


def write_parquet(df: object, path: Path) -> Path:
    """The tidy rows as Parquet (pandas and polars read it with their dtypes)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImerbenchError(
            "--format parquet needs pyarrow: pip install 'imerbench[parquet]'"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)  # type: ignore[attr-defined]
    return path


def evaluate(
    cell_dir: Annotated[Path, typer.Argument(help="a cell folder (RUN/cells/DATASET/...)")],
    condition: Annotated[
        str | None,
        typer.Option(help="every test utterance shows exactly these modalities, e.g. at"),
    ] = None,
    test_mask: Annotated[
        Path | None, typer.Option(help="a GCNet --test_mask npz (e.g. imerbench masks export)")
    ] = None,
    selection: Annotated[str, typer.Option(help="the saved weights: val or test-oracle")] = "val",
    device: Annotated[str, typer.Option(help="cpu or cuda:N")] = "cpu",
) -> None:
    """Score a finished cell's saved weights on its test split: under the run's stored mask
    (default), a forced subset, or a GCNet --test_mask file."""
    from imerbench.data import SUBSETS, read_gcnet_mask
    from imerbench.evaluation import condition_mask
    from imerbench.rescore import load_cell

    if condition is not None and test_mask is not None:
        raise ImerbenchError("--condition and --test-mask: give one of them")
    if condition is not None and condition not in SUBSETS:
        raise unknown_name("condition", condition, SUBSETS)
    cell = load_cell(cell_dir, selection, device)
    config, n = cell.config, cell.test.num_utterances
    if condition is not None:
        mask, what = condition_mask(condition, n), f"condition {condition} (forced)"
    elif test_mask is not None:
        mask = read_gcnet_mask(test_mask, cell.corpus, config["fold"], "test")
        what = f"the masks in {test_mask}"
    else:
        mask, what = cell.stored_mask(Path(cell_dir).parents[3] / "masks"), "its stored mask"
    scores = cell.score(mask)
    shown = cell.test.with_mask(mask)
    missing = 1.0 - float(shown.available[shown.valid].float().mean())
    typer.echo(
        f"{config['label']} {config['dataset']} fold {config['fold']} mr {config['mask']} "
        f"seed {config['seed']}, {selection} weights, test split ({n} utterances) under "
        f"{what}: missing rate {missing:.3f}"
    )
    metrics = list(scores["fused"])
    typer.echo("| output | " + " | ".join(metrics) + " |")
    typer.echo("|---|" + "---:|" * len(metrics))
    for output, values in scores.items():
        typer.echo(f"| {output} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
