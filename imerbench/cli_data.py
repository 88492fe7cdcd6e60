"""`imerbench data`, `imerbench masks` and `imerbench grid`: the data folders, the stored
masks and the built-in grids."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imerbench.errors import ImerbenchError, print_error_line

data_app = typer.Typer(help="Inspect or write datasets in the GCNet layout.")
masks_app = typer.Typer(help="The stored evaluation masks.")
grid_app = typer.Typer(help="The built-in grids.")
FEATURES_HELP = "feature folders, e.g. a=NAME,v=NAME (others: the papers' defaults)"


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="folder holding IEMOCAP/, CMUMOSI/, ...")],
    features: Annotated[str | None, typer.Option(help=FEATURES_HELP)] = None,
) -> None:
    """What a data folder holds, and what is missing or malformed."""
    from imerbench.data import check_data_root

    report = check_data_root(root, feature_names(features))
    for line in report.lines(problems=False):
        typer.echo(line)
    for problem in report.all_problems():  # each names its file and the fix
        print_error_line(problem)
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="folder to write")],
    dataset: Annotated[str, typer.Option(help="synthetic or synthetic-mosi")] = "synthetic",
    as_dataset: Annotated[
        str | None, typer.Option(help="layout to write as (default iemocap4 / mosi)")
    ] = None,
    widths: Annotated[str, typer.Option(help="small or real")] = "small",
) -> None:
    """Write a synthetic corpus in the GCNet layout (readable by `--data-root`)."""
    from imerbench.data import make_synthetic, resolve_dataset, write_gcnet

    info = resolve_dataset(dataset)
    if not info.synthetic:
        raise ImerbenchError(f"--dataset {dataset}: use synthetic or synthetic-mosi")
    layout = resolve_dataset(
        as_dataset or ("iemocap4" if info.task == "classification" else "mosi")
    )
    corpus = make_synthetic(info.id, widths=widths)
    path = write_gcnet(corpus, layout, out)
    typer.echo(f"wrote {corpus.num_utterances} utterances of '{info.id}' as {layout.id} to {path}")


@masks_app.command("export")
def masks_export(
    dataset: Annotated[str, typer.Option(help="dataset id")] = "synthetic",
    missing_rate: Annotated[str, typer.Option(help="missing rate or condition")] = "0.5",
    fold: Annotated[int, typer.Option(help="fold")] = 0,
    split: Annotated[str, typer.Option(help="val or test")] = "test",
    seed: Annotated[int, typer.Option(help="mask seed (the cell's seed)")] = 0,
    data_root: Annotated[Path | None, typer.Option(help="folder of GCNet-layout data")] = None,
    features: Annotated[str | None, typer.Option(help=FEATURES_HELP)] = None,
    masks_dir: Annotated[
        Path | None, typer.Option(help="stored masks of a run (default runs/quick/masks)")
    ] = None,
    out: Annotated[Path, typer.Option(help="file to write")] = Path("test_mask.npz"),
) -> None:
    """Write stored masks in GCNet's --test_mask format, to score other code on them."""
    from imerbench.data import MaskStore, export_gcnet_masks, load_dataset, parse_mask_spec

    if split not in ("val", "test"):
        raise ImerbenchError(f"--split {split}: use val or test")
    corpus = load_dataset(dataset, data_root, feature_names=feature_names(features))
    directory = masks_dir or Path("runs/quick/masks")
    store = MaskStore(directory)
    path = export_gcnet_masks(store, corpus, fold, split, parse_mask_spec(missing_rate), seed, out)
    typer.echo(f"wrote {split} masks of {corpus.name} fold {fold} MR {missing_rate} to {path}")
    typer.echo(f"(the stored masks they come from, drawn there if new: {directory})")


def feature_names(text: str | None) -> dict[str, str] | None:
    """`--features a=NAME,...` read and checked, or None when not given."""
    from imerbench.data import parse_feature_names

    if text is None:
        return None
    try:
        return parse_feature_names(text)
    except ImerbenchError as err:
        raise ImerbenchError(f"--features: {err}") from None


@grid_app.command("show")
def grid_show(
    name: Annotated[str, typer.Argument(help="a built-in grid (quick, paper, ...) or a file")],
) -> None:
    """Print a grid as TOML (copy it to start your own); `imerbench list` names them all."""
    from imerbench.grid_file import grid_from_dict, grid_path, read_grid_table

    path = grid_path(name)
    grid = grid_from_dict(read_grid_table(path), str(path))  # it must also be valid
    typer.echo(path.read_text(encoding="utf-8").rstrip())
    typer.echo(f"# {len(grid.cells())} cells; file: {path}")
