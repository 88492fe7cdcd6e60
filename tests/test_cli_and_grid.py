"""Grid files, CLI options and their one-line errors; the CLI as a user runs it."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from imerbench import progress
from imerbench.errors import ImerbenchError
from imerbench.grid import parse_method_ref
from imerbench.grid_file import default_grid, grid_from_dict, load_grid
from imerbench.registry import create_method, list_methods, method_info
from imerbench.results import read_results

ROOT = Path(__file__).resolve().parents[1]


EXCLUDED = ("dicmor", "imder")  # the quick grid leaves them out for their cost (quick.toml)


def test_default_grid_is_every_method_on_synthetic() -> None:
    grid = default_grid()
    every = [m for m in list_methods() if m not in EXCLUDED]
    assert [m.label for m in grid.methods] == every
    assert grid.datasets == ("synthetic",)
    assert [str(m) for m in grid.missing_rates] == ["0.0", "0.3", "0.5", "0.7"]
    assert grid.seeds == (0, 1, 2)
    cells = grid.cells()
    rates = [c for c in cells if c.mask.rate is not None]
    assert len(rates) == len(every) * 4 * 3
    # Each multimodal method also trains on a, t and v alone (its own ceilings); the
    # unimodal references are ceilings themselves.
    ceilings = {(c.method.label, str(c.mask), c.seed) for c in cells if c.mask.rate is None}
    multimodal = [m for m in every if not m.startswith("unimodal-")]
    assert ceilings == {(m, x, s) for m in multimodal for x in "atv" for s in (0, 1, 2)}


def test_ceilings_can_be_turned_off_and_are_not_added_twice() -> None:
    assert all(c.mask.rate is not None for c in default_grid(ceilings=False).cells())
    grid = default_grid(methods="early-fusion", missing_rates="0.0,a", seeds="0")
    assert sorted(str(c.mask) for c in grid.cells()) == ["0.0", "a", "t", "v"]


def test_built_in_grids_run_by_name_and_show_as_toml(run_cli) -> None:
    assert load_grid("paper").name == "paper" and load_grid("comp-ablation").cells()
    code, out, _ = run_cli("grid", "show", "quick")
    assert code == 0
    shown = tomllib.loads(out)  # the printed text is the grid file itself
    assert shown == tomllib.loads((ROOT / "imerbench/grids/quick.toml").read_text())
    # 4 rates x 3 seeds per method, plus a, t and v x 3 seeds per multimodal method
    methods = [m for m in list_methods() if m not in EXCLUDED]
    assert sorted(m.name for m in load_grid("quick").methods) == sorted(methods)
    multimodal = [m for m in methods if method_info(m).role != "ceiling"]
    assert f"{12 * len(methods) + 9 * len(multimodal)} cells" in out.splitlines()[-1]


def test_paper_grid_is_the_published_grid() -> None:
    grid = load_grid("paper")
    assert set(grid.datasets) == {"iemocap4", "iemocap6", "mosi", "mosei"}
    assert [m.rate for m in grid.missing_rates] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert grid.protocol == "default"
    assert len(grid.seeds) >= 3


def test_method_overrides_parse_and_validate() -> None:
    ref = parse_method_ref("unimodal-a[hidden=32, dropout=0.1]")
    assert ref.name == "unimodal-a"
    assert dict(ref.overrides) == {"hidden": 32, "dropout": 0.1}
    assert ref.label == "unimodal-a[hidden=32,dropout=0.1]"  # as typed, spaces dropped
    assert parse_method_ref("early-fusion[lr=1e12]").label == "early-fusion[lr=1e12]"
    method = create_method(ref.name, "quick", **dict(ref.overrides))
    assert method.hp["hidden"] == 32
    with pytest.raises(ImerbenchError, match=r"hidne.*did you mean 'hidden'"):
        create_method("unimodal-a", "quick", hidne=3)
    with pytest.raises(ImerbenchError, match=r"dropout=2\.0 is above its maximum"):
        create_method("unimodal-a", "quick", dropout=2.0)
    with pytest.raises(ImerbenchError, match="modality is fixed"):
        create_method("unimodal-a", "quick", modality="t")


def test_a_sweep_expands_into_one_labelled_method_per_combination() -> None:
    from imerbench.grid import Cell
    from imerbench.plan import cell_method

    raw = {
        "methods": ["late-fusion", "late-fusion[lr=0.01]+ogm-ge", "mmin"],
        "sweep": {"late-fusion": {"hidden": [32, 64], "dropout": [0.0, 0.3]},
                  "mmin": {"enc_layers": [[16, 16], [8]]}},
    }  # fmt: skip
    grid = grid_from_dict(raw, "grid.toml")
    labels = [m.label for m in grid.methods]
    combos = ["hidden=32,dropout=0.0", "hidden=32,dropout=0.3", "hidden=64,dropout=0.0",
              "hidden=64,dropout=0.3"]  # fmt: skip
    assert labels == [
        *(f"late-fusion[{c}]" for c in combos),
        *(f"late-fusion[lr=0.01,{c}]+ogm-ge" for c in combos),
        "mmin[enc_layers=[16,16]]",
        "mmin[enc_layers=[8]]",
    ]
    ref = grid.methods[5]  # late-fusion[lr=0.01,hidden=32,dropout=0.3]+ogm-ge
    method = cell_method(Cell(ref, "synthetic", 0, grid.missing_rates[0], 0))
    assert (method.hp["lr"], method.hp["hidden"], method.hp["dropout"]) == (0.01, 32, 0.3)
    assert method.strategy.name == "ogm-ge"
    mmin = cell_method(Cell(grid.methods[-1], "synthetic", 0, grid.missing_rates[0], 0))
    assert mmin.hp["enc_layers"] == (8,)
    assert parse_method_ref("mmin[enc_layers=[4,4]]").label == "mmin[enc_layers=[4,4]]"


def test_profiles_differ_per_dataset() -> None:
    quick = create_method("unimodal-a", "quick")
    mosi = create_method("unimodal-a", "mosi")
    assert quick.hp["epochs"] < mosi.hp["epochs"]
    assert mosi.hp["batch_size"] == 32


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"methods": ["early-fusion"], "missng_rates": [0.1]}, "unknown key 'missng_rates'"),
        ({"methods": ["early-fusoin"]}, "did you mean 'early-fusion'"),
        ({"methods": ["early-fusion"], "missing_rates": [0.8]}, "0.8"),
        ({"methods": ["early-fusion", "early-fusion"]}, "twice"),
        ({"methods": ["early-fusion"], "seeds": ["x"]}, "not an integer"),
        ({"methods": ["early-fusion"], "datasets": ["iemocap"]}, "did you mean"),
        ({"methods": ["early-fusion"], "protocol": "papers"}, "protocol 'papers'"),
        ({"methods": "all", "exclude": ["dicmr"]}, "unknown method 'dicmr'"),
        ({"methods": ["early-fusion"], "exclude": ["dicmor"]}, 'only applies to methods = "all"'),
        (
            {"methods": ["early-fusion"], "sweep": {"comp": {"lbd": [0.1]}}},
            "'comp' is not among the grid's methods",
        ),
        (
            {"methods": ["early-fusion"], "sweep": {"early-fusion": {"hidden": 32}}},
            r"sweep.: early-fusion.hidden must be a non-empty list of values, not an integer",
        ),
        (
            {"methods": ["early-fusion[hidden=8]"], "sweep": {"early-fusion": {"hidden": [16]}}},
            r"early-fusion\[hidden=8\] sets hidden, which the sweep varies",
        ),
        ({"methods": ["early-fusion"], "sweep": [1]}, "must be a table per method id"),
    ],
)
def test_bad_grids_fail_with_a_clear_message(raw: dict, words: str) -> None:
    with pytest.raises(ImerbenchError, match=words):
        grid_from_dict(raw, "grid.toml")


def test_cli_errors_are_one_line(one_error_line, monkeypatch, capsys, tmp_path: Path) -> None:
    line = one_error_line("run", "--methods", "late-fuson", "--dry-run")
    assert "unknown method 'late-fuson'" in line and "late-fusion" in line
    line = one_error_line("run", "--missing-rates", "0.9", "--dry-run")
    assert "0.9" in line
    bad = tmp_path / "bad.toml"
    bad.write_text('methods = ["early-fusion"]\nseed = [1]\n')
    line = one_error_line("run", str(bad))
    assert "unknown key 'seed'" in line and "did you mean 'seeds'" in line
    line = one_error_line("run", str(tmp_path / "nope.toml"))
    assert "does not exist" in line
    line = one_error_line("run", "--datasets", "mosi", "--dry-run")
    assert "--data-root" in line
    line = one_error_line("table", str(tmp_path / "empty"))
    assert "no results" in line


def test_cli_run_table_and_list(run_cli, monkeypatch, capsys, tmp_path: Path) -> None:
    out = tmp_path / "run"
    monkeypatch.setattr(progress, "EVERY", 0.0)  # not a terminal: a progress line every cell
    code, stdout, _ = run_cli("run", "--methods", "early-fusion,unimodal-v", "--missing-rates",
        "0.0", "--seeds", "0,1", "--epochs", "1", "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    assert "4 cells ran, 0 failed" in stdout
    lines = [line for line in stdout.splitlines() if line.startswith("progress: ")]
    assert len(lines) == 4 and lines[-1].startswith("progress: 4/4 cells (4 ran, 0 already")
    assert not any("ETA" in line for line in lines)  # 4 cells: too few for an ETA
    assert "| early-fusion |" in stdout and "Bayes limit" in stdout
    code, table_md, _ = run_cli("table", str(out))
    assert code == 0 and "| unimodal-v |" in table_md
    # The table is computed from the rows: change a row and the table changes.
    code, table_csv, _ = run_cli("table", str(out), "--format", "csv")
    rows_file = next(out.glob("cells/synthetic/early-fusion/*seed0*/rows.csv"))
    rows = pd.read_csv(rows_file)
    rows.loc[(rows["selection"] == "val") & (rows["metric"] == "wa"), "value"] = 0.123
    rows.to_csv(rows_file, index=False)
    _, changed_csv, _ = run_cli("table", str(out), "--format", "csv")
    before = pd.read_csv(pd.io.common.StringIO(table_csv)).set_index("method")
    after = pd.read_csv(pd.io.common.StringIO(changed_csv)).set_index("method")
    assert after.at["unimodal-v", "mean"] == before.at["unimodal-v", "mean"]
    seed1 = pd.read_csv(next(out.glob("cells/synthetic/early-fusion/*seed1*/rows.csv")))
    other = seed1.query("selection == 'val' and metric == 'wa' and output == 'fused'")["value"]
    assert after.at["early-fusion", "mean"] == pytest.approx((0.123 + other.iloc[0]) / 2)
    code, listing, _ = run_cli("list")
    assert code == 0
    for name in list_methods():
        assert name in listing
    assert "iemocap4" in listing and "IEMOCAPFour" in listing


def test_list_shows_roles_and_one_method_in_detail(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    _, listing, _ = run_cli("list")
    rows = {line.split()[0]: line for line in listing.splitlines() if line.startswith("  ")}
    assert rows["unimodal-t"].split()[1:3] == ["ceiling", "t"]
    assert rows["late-fusion"].split()[1:3] == ["reference", "stacks"]
    assert rows["gcnet"].split()[1:3] == ["method", "alone"]  # packed LSTMs: each cell alone
    assert "[published as ComP]" in rows["comp-ref"] and "published" not in rows["comp"]
    code, detail, _ = run_cli("list", "comp-ref")
    assert code == 0
    assert "role: method, published as ComP; stages: unimodal -> multimodal; its cells" in detail
    header = next(line.split() for line in detail.splitlines() if "hyper-parameter" in line)
    epochs = next(line.split() for line in detail.splitlines() if line.split()[:1] == ["epochs"])
    assert epochs[:4] == ["epochs", "20", ">=", "1"]  # name, default, allowed
    profiles = dict(zip(header[3:7], epochs[4:8], strict=True))
    assert profiles == {"iemocap": "200", "mosi": "300", "mosei": "100", "quick": "60"}
    fixed = next(line for line in detail.splitlines() if "fix_modulator" in line)
    assert "fixed: False" in fixed
    # Not a terminal: one line per hyper-parameter, its whole help on it (grep finds it)
    assert "the gradient modulator rescales the layer-1 prototype projectors" in fixed
    assert run_cli("list", "comp-rf").err.startswith("error: unknown method 'comp-rf'")


def test_dry_run_lists_cells_with_an_estimate(run_cli, monkeypatch, capsys, tmp_path: Path) -> None:
    code, stdout, _ = run_cli("run", "--methods", "late-fusion", "--missing-rates", "0.0,0.5",
        "--seeds", "0,1", "--dry-run", "--device", "cpu", "--out", str(tmp_path / "run"),
        "--stack", "1",
    )  # fmt: skip
    assert code == 0
    assert stdout.count("late-fusion synthetic") == 4  # 2 rates x 2 seeds, no ceilings
    assert "4 cells to run (0 already finished)" in stdout
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written (not even masks)
    code, stdout, _ = run_cli("run", "--methods", "late-fusion", "--missing-rates", "0.0,0.5",
        "--seeds", "0,1", "--dry-run", "--device", "cpu", "--out", str(tmp_path), "--stack", "3",
    )  # fmt: skip
    assert code == 0
    assert stdout.count("late-fusion synthetic") == 2  # 4 cells, at most 3: 2 and 2
    assert "mr 0.0 seed 0, mr 0.0 seed 1  ~" in stdout and "mr 0.5 seed 0, mr 0.5 seed 1" in stdout
    assert "4 cells to run (0 already finished)" in stdout and ", as 2 stacks;" in stdout


def test_third_party_methods_register_through_entry_points(
    run_cli, tmp_path: Path, monkeypatch
) -> None:
    import imerbench.registry as registry

    package = tmp_path / "thirdparty_imer"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from imerbench.methods.fusion import EarlyFusion\n"
        "from imerbench import register_method\n"
        "register_method('plugin-fusion')(type('PluginFusion', (EarlyFusion,), {}))\n"
    )
    dist = tmp_path / "thirdparty_imer-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-imer\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[imerbench.methods]\nplugin = thirdparty_imer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry.discover_plugins()
        assert "plugin-fusion" in registry.list_methods()
        assert registry.create_method("plugin-fusion", "quick").hp["epochs"] >= 1
        out = tmp_path / "run"
        args = ["--missing-rates", "0.5", "--epochs", "1", "--jobs", "1", "--out", str(out)]
        code, _, err = run_cli("run", "--methods", "plugin-fusion", *args)
        assert code == 0, err
        rows = read_results(out)
        assert set(rows["method"]) == {"plugin-fusion"} and (rows["status"] == "ok").all()
    finally:
        registry.unregister_method("plugin-fusion")


def test_run_exits_1_while_any_cell_has_no_result(run_cli, monkeypatch, tmp_path: Path) -> None:
    """A learning rate of 1e12 makes the loss NaN: that cell fails, the other one does not;
    the run exits 1 and says where the reasons are, also when it only skips the failure."""
    monkeypatch.setenv("COLUMNS", "400")
    out = tmp_path / "run"
    args = ["run", "--methods", "early-fusion[lr=1e12],late-fusion", "--missing-rates", "0.5",
            "--seeds", "0", "--epochs", "1", "--device", "cpu", "--out", str(out)]  # fmt: skip
    code, stdout, err = run_cli(*args)
    assert code == 1, err
    assert "1 cells ran, 1 failed, 0 already done" in stdout
    assert "Traceback" not in err
    assert (
        f"1 of 2 cells have no result (failed): their reasons are in the error column of {out}"
        in err
    )
    code, stdout, err = run_cli(*args)  # nothing runs; the failure is still there
    assert code == 1 and "0 cells ran, 0 failed, 2 already done" in stdout
    assert "1 of 2 cells have no result" in err
    code, _, err = run_cli(*args[:2], "late-fusion", *args[3:])  # only the cell that worked
    assert code == 0 and "no result" not in err


def test_a_data_root_no_dataset_reads_is_refused(one_error_line, tmp_path: Path) -> None:
    line = one_error_line("run", "--data-root", str(tmp_path), "--out", str(tmp_path / "run"))
    assert line == (
        f"error: --data-root {tmp_path}: no dataset of the grid reads it (synthetic generated); "
        "drop it, or name the datasets to read, e.g. --datasets iemocap4"
    )
    assert not (tmp_path / "run").exists()


def test_two_configurations_of_a_method_are_never_averaged(
    run_cli, monkeypatch, tmp_path: Path
) -> None:
    """`--epochs 1` and `--epochs 2` runs of one method in one folder: two labelled rows in
    the table, each the mean of its own cells only; results.csv keeps the labels as run."""
    monkeypatch.setenv("COLUMNS", "300")
    out = tmp_path / "run"
    args = ["--methods", "early-fusion", "--missing-rates", "0.5", "--seeds", "0",
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    for epochs in ("1", "2"):
        assert run_cli("run", *args, "--epochs", epochs).code == 0
    raw = pd.read_csv(out / "results.csv")
    assert set(raw["method"]) == {"early-fusion"} and raw["config_hash"].nunique() == 2
    code, table, _ = run_cli("table", str(out), "--format", "csv")
    assert code == 0
    board = pd.read_csv(io.StringIO(table))
    labels = sorted(set(board["method"]) - {"Bayes limit"})
    assert labels == ["early-fusion[epochs=1]", "early-fusion[epochs=2]"]
    for epochs in (1, 2):
        own = raw.query(f"epochs == {epochs} and selection == 'val' and condition == 'mask'")
        wa = own.query("output == 'fused' and metric == 'wa'")["value"].iloc[0]
        (shown,) = board.query(f"method == 'early-fusion[epochs={epochs}]' and metric == 'wa'")[
            "mean"
        ]
        assert shown == pytest.approx(wa)  # its own cell, not the mean of both


def test_configurations_the_rows_cannot_tell_apart_stop_the_table(
    run_cli, one_error_line, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["--methods", "late-fusion", "--missing-rates", "0.5", "--seeds", "0", "--epochs", "1",
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    for precision in ("fp32", "bf16"):  # in the hash, not in the rows
        code, _, err = run_cli("run", *args, "--precision", precision)
        assert code == 0  # the cells ran; only the leaderboard is left out, and says why
    assert " ".join(err.split()).startswith(f"no leaderboard: {out}: late-fusion[epochs=1] on")
    line = one_error_line("table", str(out))
    assert line.startswith(
        f"error: {out}: late-fusion[epochs=1] on synthetic (fold 0, mr 0.5, seed 0) has two "
        "configurations, "
    )
    assert line.endswith(
        "compare their cell.json, keep one, or run them into separate --out folders"
    )


def test_progress_line_by_hand() -> None:
    counts = {"ok": 37, "failed": 1, "skipped": 2, "claimed": 0}
    # 72 s for 38 trained cells; 185 left: 72 / 38 * 185 = 350.5 s
    assert progress.line(counts, 225, 72.0) == (
        "progress: 40/225 cells (38 ran, 2 already done), 1m12s elapsed, ETA 5m51s"
    )
    assert progress.line({"ok": 0, "failed": 0, "skipped": 3, "claimed": 0}, 5, 4.2) == (
        "progress: 3/5 cells (0 ran, 3 already done), 4s elapsed"
    )
    one = {"ok": 1, "failed": 0, "skipped": 0, "claimed": 0}  # start-up in it: no ETA yet
    assert "ETA" not in progress.line(one, 225, 40.0)
