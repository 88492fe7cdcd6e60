"""The modality-imbalance analysis, tables and figures, all recomputed from rows."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from imerbench.analysis import (
    ceilings,
    modality_gap,
    protocol_gap,
    subset_matrix,
    under_optimization,
)
from imerbench.convergence import convergence_table
from imerbench.grid_file import grid_from_dict
from imerbench.leaderboard import leaderboards, render
from imerbench.paper_table import paper_numbers, paper_tables
from imerbench.protocol_table import protocol_table
from imerbench.report import write_report
from imerbench.results import COLUMNS, read_results
from imerbench.runner import RunOptions, run_grid


def row(method: str, mask: str, seed: int, condition: str, value: float, **extra) -> dict:
    base = {c: "" for c in COLUMNS}
    base |= {
        "schema": 1,
        "method": method,
        "dataset": "synthetic",
        "fold": 0,
        "missing_rate": float(mask) if mask[0].isdigit() else 2 / 3,
        "mask": mask,
        "seed": seed,
        "selection": "val",
        "condition": condition,
        "output": "fused",
        "metric": "wa",
        "value": value,
        "status": "ok",
        "config_hash": f"{method}{mask}{seed}",
        "role": "method",
    }
    return base | extra


def rows_frame() -> pd.DataFrame:
    rows = []
    forced = {"a": 0.50, "t": 0.60, "v": 0.40}
    for seed in (0, 1):
        for m, v in forced.items():
            rows.append(row("fusion", "0.3", seed, m, v + 0.01 * seed))
            ceiling = {"role": "ceiling", "ceiling_of": m}
            rows.append(row(f"unimodal-{m}", "0.0", seed, "mask", v + 0.05, **ceiling))
        rows.append(row("fusion", "0.3", seed, "mask", 0.70))
        rows.append(row("fusion", "a", seed, "mask", 0.58))  # fusion trained on audio alone
    return pd.DataFrame(rows)


def test_gap_ceilings_and_under_optimization_follow_the_definitions() -> None:
    df = rows_frame()
    gap = modality_gap(df).query("method == 'fusion'")
    assert gap["gap"].tolist() == pytest.approx([0.20, 0.20])
    assert set(gap["best"]) == {"t"} and set(gap["worst"]) == {"v"}
    ceil = ceilings(df).query("method == 'fusion'").set_index(["seed", "modality"])
    # audio: fusion was trained on audio alone, so that is its ceiling; text and video fall
    # back to the unimodal references.
    assert ceil.loc[(0, "a"), "ceiling"] == pytest.approx(0.58)
    assert ceil.loc[(0, "a"), "source"] == "fusion on a"
    assert ceil.loc[(1, "t"), "ceiling"] == pytest.approx(0.65)
    assert ceil.loc[(1, "t"), "source"] == "unimodal-t"
    uo = under_optimization(df).query("method == 'fusion'").set_index(["seed", "modality"])
    assert uo.loc[(0, "a"), "under_optimization"] == pytest.approx(0.50 - 0.58)
    assert uo.loc[(1, "v"), "under_optimization"] == pytest.approx(0.41 - 0.45)


def test_subset_heatmap_averages_missing_rate_cells_only() -> None:
    df = rows_frame()
    ceiling = pd.DataFrame([row("fusion", "a", s, "a", 0.99) for s in (0, 1)])
    table = subset_matrix(pd.concat([df, ceiling], ignore_index=True), "synthetic")
    # fusion's forced-a scores at MR 0.3 are 0.50 and 0.51; the mask-"a" cells' 0.99 is not one
    assert table.at["fusion", "a"] == pytest.approx(0.505)
    assert table.at["fusion", "t"] == pytest.approx(0.605)


def test_protocol_gap_is_oracle_minus_val_per_seed() -> None:
    rows = []
    for seed, (val, oracle) in enumerate([(0.60, 0.63), (0.62, 0.66), (0.61, 0.63)]):
        rows.append(row("m", "0.5", seed, "mask", val))
        rows.append(row("m", "0.5", seed, "mask", oracle, selection="test-oracle"))
    gap = protocol_gap(pd.DataFrame(rows)).iloc[0]
    assert gap["inflation"] == pytest.approx(0.03)
    assert gap["val"] == pytest.approx(0.61) and gap["test_oracle"] == pytest.approx(0.64)
    assert gap["ci95"] > 0 and gap["seeds"] == 3


def test_significance_marks_only_clear_losers() -> None:
    rows = []
    for seed in range(5):
        rows.append(row("best", "0.0", seed, "mask", 0.80 + 0.002 * seed))
        rows.append(row("close", "0.0", seed, "mask", 0.80 + 0.002 * ((seed * 3) % 5)))
        rows.append(row("worse", "0.0", seed, "mask", 0.70 + 0.001 * seed))
    board = leaderboards(pd.DataFrame(rows))[0]
    assert board.worse == {("worse", 0.0)}
    text = board.to_markdown()
    assert "| worse | 70.20 ± 0.16 † |" in text
    assert "| best | **80.40 ± 0.32** |" in text


def test_leaderboard_of_any_stored_metric(one_error_line) -> None:
    rows = [row("m", "0.0", seed, "mask", 0.5 + 0.1 * seed, metric="ua") for seed in (0, 1)]
    rows += [row("m", "0.0", seed, "mask", 0.9, metric="wa") for seed in (0, 1)]
    df = pd.DataFrame(rows)
    (board,) = leaderboards(df, metric="ua")
    assert board.metric == "ua" and "| m | **55.00 ± 7.07** |" in board.to_markdown()
    assert "| m | **90.00 ± 0.00** |" in leaderboards(df)[0].to_markdown()  # primary: wa
    assert leaderboards(df, metric="mae") == []  # a regression metric: no such dataset here
    stored = Path(__file__).resolve().parents[1] / "results/synthetic/results.csv"
    line = one_error_line("table", str(stored), "--metric", "wa,uaa")
    assert "unknown metric 'uaa'" in line and "did you mean 'ua'" in line


def test_latex_table_and_paper_numbers() -> None:
    latex = render(leaderboards(rows_frame()), "latex")
    assert r"\begin{tabular}" in latex and r"\textbf{70.00" in latex
    published = paper_numbers("mosi", "f1")
    comp = published["ComP (published, = comp-ref)"]
    reference = pd.read_csv(
        Path(__file__).resolve().parents[1] / "imerbench/reference/comp_paper_tables.csv"
    )
    expected = reference.query(
        "dataset == 'CMUMOSI' and method == 'ComP' and metric == 'f1_weighted_nonzero'"
    )
    assert comp == {float(r.missing_rate): r.value_percent / 100 for r in expected.itertuples()}
    assert len(comp) == 7


def test_paper_table_puts_test_oracle_beside_the_published_numbers() -> None:
    """Published numbers are best-test-epoch numbers: ours beside them are test-oracle ones,
    our val numbers have rows of their own, and bold stays within a protocol."""
    published = paper_numbers("iemocap4", "wa")["ComP (published, = comp-ref)"]
    rows = []
    for seed in (0, 1, 2):
        for fold in range(5):  # IEMOCAP's five sessions, averaged within a seed
            extra = {"dataset": "iemocap4", "fold": fold, "config_hash": f"h{seed}{fold}"}
            # oracle 0.99 beats every published number at MR 0.1; val 0.50 would not
            rows.append(
                row("comp-ref", "0.1", seed, "mask", 0.99, selection="test-oracle", **extra)
            )
            rows.append(row("comp-ref", "0.1", seed, "mask", 0.50, **extra))
    text = paper_tables(pd.DataFrame(rows))
    lines = text.splitlines()
    column = [c.strip() for c in lines[2].split("|")].index("MR 0.1")
    assert "best test epoch" in lines[0] and "n = 3" in lines[0]
    oracle = next(line for line in lines if line.startswith("| comp-ref | test-oracle |"))
    val = next(line for line in lines if line.startswith("| comp-ref | val |"))
    mine = next(line for line in lines if line.startswith("| *ComP (published, = comp-ref)*"))
    assert oracle.split("|")[column].strip().startswith("**99.00")  # MR 0.1: best of its protocol
    assert val.split("|")[column].strip().startswith("**50.00")  # the only val row: best of its own
    assert f"{published[0.1] * 100:.2f}" in mine.split("|")[column]
    assert "**" not in mine.split("|")[column]  # beaten within the protocol, not across
    assert lines.index(oracle) < lines.index(mine) < lines.index(val)


def test_paper_table_marks_adaptations() -> None:
    """The paper copied MCTN's MOSI numbers from other papers: our mctn row is marked an
    adaptation (and the caption says why); GCNet, which the paper's authors reran, is not."""
    rows = []
    for seed in (0, 1):
        extra = {"dataset": "mosi", "metric": "f1", "selection": "test-oracle"}
        for method in ("mctn", "gcnet"):
            rows.append(row(method, "0.1", seed, "mask", 0.6 + 0.01 * seed, **extra))
    text = paper_tables(pd.DataFrame(rows))
    assert any(line.startswith("| mctn (adaptation) | test-oracle |") for line in text.splitlines())
    assert any(line.startswith("| gcnet | test-oracle |") for line in text.splitlines())
    assert "MCTN (published, = mctn; copied-from-other-paper)" in text
    assert "(adaptation): the paper copied" in text.splitlines()[0]


def test_paper_table_says_when_a_dataset_has_no_published_numbers() -> None:
    text = paper_tables(rows_frame())
    assert text.splitlines()[0].startswith("synthetic: no published numbers")
    assert "| fusion |" in text  # and its leaderboard follows


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analysis-run")
    grid = grid_from_dict(
        {
            "methods": ["late-fusion", "early-fusion", "unimodal-a", "unimodal-t", "unimodal-v"],
            "missing_rates": [0.0, 0.5],
            "seeds": [0, 1],
            "epochs": 2,
        },
        "test",
    )
    run_grid(grid, RunOptions(out=out, device="cpu", jobs=1, save_weights=False))
    return out


def test_every_figure_and_the_report_are_written(small_run: Path) -> None:
    df = read_results(small_run)
    report = write_report(small_run, df, small_run / "report.html")
    figures = sorted(p.name for p in (small_run / "figures").glob("*.png"))
    assert figures == sorted(
        f"{name}.png"
        for name in [
            "synthetic-score-vs-mr",
            "synthetic-modality-gap",
            "synthetic-under-optimization",
            "synthetic-training-curves",
            "synthetic-subset-heatmap",
            "critical-difference",
        ]
    )
    for png in (small_run / "figures").glob("*.png"):
        assert png.stat().st_size > 10_000
        assert png.with_suffix(".pdf").exists()
    text = report.read_text()
    assert text.count("data:image/png;base64,") == 6
    assert "late-fusion" in text and "Bayes limit" in text
    assert f"<title>imerbench report: {small_run.name} (synthetic)</title>" in text
    sections = ["leaderboards", "robustness", "imbalance", "methods", "convergence", "inflation"]
    for sid in sections:  # each in the table of contents and on the page
        assert f"<a href='#{sid}'>" in text and f"<section id='{sid}'>" in text, sid
    assert text.index("<nav>") < text.index("<section")  # the summary and contents first
    assert "<th>cells</th><td>20 (0 failed)</td>" in text  # 5 methods x 2 MRs x 2 seeds
    assert "table class='sortable'" in text and "<script>" in text
    assert "<summary>late-fusion</summary>" in text  # a section per method
    assert "`" not in text.split("<script>")[0]  # no markdown backticks left in the page


def test_robustness_is_the_area_under_each_seed_s_curve() -> None:
    from imerbench.report import robustness_markdown

    rows = [
        row("m", mr, seed, "mask", v + 0.02 * seed)
        for seed in (0, 1)
        for mr, v in (("0.0", 0.8), ("0.3", 0.6), ("0.5", 0.5))
    ]
    rows += [row("n", mr, 0, "mask", 0.7) for mr in ("0.0", "0.3", "0.5")]  # fmt: skip
    text = robustness_markdown(pd.DataFrame(rows))
    # seed 0: (0.3 (0.8 + 0.6) / 2 + 0.2 (0.6 + 0.5) / 2) / 0.5 = 0.64; seed 1: 0.66
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[1:] == ["| n | 70.00 | 1 |", "| m | 65.00 ± 1.41 | 2 |"]  # best first
    assert "MR 0-0.5" in text


def test_rows_carry_forced_subsets_patterns_and_heads(small_run: Path) -> None:
    df = read_results(small_run)
    late = df[(df["method"] == "late-fusion") & (df["selection"] == "val")]
    conditions = set(late["condition"])
    assert {"mask", "a", "t", "v", "at", "av", "tv", "atv"} <= conditions
    at_half = late[late["mask"] == "0.5"]
    assert {"pattern-a", "pattern-at", "pattern-atv"} <= set(at_half["condition"])
    assert {"fused", "head-a", "head-t", "head-v"} == set(late["output"])
    # At MR 0 every utterance kept all three modalities: the only pattern is atv.
    full = late[late["mask"] == "0.0"]
    assert {c for c in full["condition"] if c.startswith("pattern-")} == {"pattern-atv"}
    mask_score = full.query("condition == 'mask' and output == 'fused' and metric == 'wa'")
    pattern = full.query("condition == 'pattern-atv' and output == 'fused' and metric == 'wa'")
    assert mask_score["value"].tolist() == pytest.approx(pattern["value"].tolist())
    assert not math.isnan(df["realized_missing_rate"].iloc[0])


def test_a_run_stopped_at_its_cap_is_marked_not_converged() -> None:
    rows = []
    for seed in (0, 1):
        capped = seed == 1  # one of two runs ran out of epochs while still improving
        stop = {"stop_reason": "cap" if capped else "plateau", "converged": not capped}
        stop |= {"epochs": 40, "epochs_trained": 40 if capped else 12}
        rows.append(row("slow", "0.0", seed, "mask", 0.60, **stop))
        fast = {"stop_reason": "plateau", "converged": True, "epochs": 40, "epochs_trained": 9}
        rows.append(row("fast", "0.0", seed, "mask", 0.50, **fast))
    board = leaderboards(pd.DataFrame(rows))[0]
    text = board.to_markdown()
    assert "| slow | **60.00 ± 0.00 §** |" in text
    assert "| fast | 50.00 ± 0.00 |" in text  # its runs converged: no mark
    assert "§ some runs stopped at their epoch cap, not converged" in text.splitlines()[0]
    table = convergence_table(pd.DataFrame(rows))
    assert "| slow | 2 | 1 (50%) | 1 | 0 | 26.0 (12-40) | 40 |" in table


def test_a_borrowed_ceiling_is_marked_in_the_report_table() -> None:
    """fusion trained on audio alone has its own audio ceiling; text and video come from the
    unimodal references, and the table says so for those two."""
    from imerbench.report import analysis_markdown

    text = analysis_markdown(rows_frame())
    line = next(r for r in text.splitlines() if r.startswith("| fusion |") and "(ref)" in r)
    a, t, v = (c.strip() for c in line.strip("|").split("|")[1:])
    assert "(ref)" not in a and t.endswith("(ref)") and v.endswith("(ref)")
    assert "n = 2 seeds" in text


def test_tables_paste_into_latex_and_csv_counts_are_integers() -> None:
    rows = []
    for seed in (0, 1, 2):
        rows.append(row("m", "0.5", seed, "mask", 0.60 + 0.01 * seed))
        rows.append(row("m", "0.5", seed, "mask", 0.63 + 0.01 * seed, selection="test-oracle"))
    df = pd.DataFrame(rows)
    latex = render(leaderboards(df), "latex")
    assert latex.splitlines()[0].startswith(r"% needs \usepackage{booktabs}")
    caption = next(line for line in latex.splitlines() if line.startswith(r"\caption"))
    for raw in ("`", "†", "±", "α"):  # one convention: LaTeX's, in the caption too
        assert raw not in caption, raw
    assert r"\texttt{val}" in caption and r"$^\dagger$" in caption and r"$\alpha$" in caption
    protocols = protocol_table(df, "latex")
    assert r"\begin{tabular}" in protocols and "| m |" not in protocols  # not markdown
    assert "m & 0.5 & 3 & 61.00 & 64.00 & +3.00" in protocols
    csv = render(leaderboards(df), "csv").splitlines()
    header, first = csv[0].split(","), csv[1].split(",")
    assert first[header.index("seeds")] == "3" and first[header.index("runs")] == "3"


def test_plot_with_nothing_finished_is_one_error_line(one_error_line, tmp_path) -> None:
    failed = row("m", "0.5", 0, "", float("nan"), status="failed", error="boom")
    path = tmp_path / "results.csv"
    pd.DataFrame([failed]).to_csv(path, index=False)
    line = one_error_line("plot", str(path), code=1)
    assert "holds no finished cell to draw" in line
    assert not (tmp_path / "figures").exists()


def test_table_writes_the_tidy_rows_as_parquet(small_run: Path, run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    target = tmp_path / "rows.parquet"
    result = run_cli("table", str(small_run), "--format", "parquet", "--out", str(target))
    assert result.code == 0 and result.out.strip() == f"wrote {target}"
    back = pq.read_table(target).to_pandas()  # pyarrow's own reader
    rows = read_results(small_run)
    assert list(back.columns) == list(rows.columns) and len(back) == len(rows)
    pd.testing.assert_series_equal(back["value"], rows["value"], check_names=False)
    assert back["seed"].dtype.kind == "i" and (back["method"] == rows["method"]).all()


def test_plot_of_a_copied_csv_says_the_curves_need_the_run_folder(
    small_run: Path, run_cli, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "results.csv"
    copy.write_bytes((small_run / "results.csv").read_bytes())
    code, out, err = run_cli("plot", str(copy), "--out", str(tmp_path / "figs"))
    assert code == 0 and "note: no training curves" in err and str(tmp_path) in err
    assert "training-curves" not in out and "score-vs-mr" in out
    code, out, err = run_cli("plot", str(small_run), "--out", str(tmp_path / "figs2"))
    assert code == 0 and "note" not in err and "training-curves" in out


def test_rate_rows_of_an_empty_frame_keep_its_columns() -> None:
    from imerbench.analysis import rate_mask

    empty = pd.DataFrame({"mask": pd.Series([], dtype="str"), "value": pd.Series([], dtype=float)})
    assert rate_mask(empty).dtype == bool
    assert list(empty[rate_mask(empty)].columns) == ["mask", "value"]
    full = pd.DataFrame({"mask": ["0.5", "a", "0.0"], "value": [1.0, 2.0, 3.0]})
    assert full[rate_mask(full)]["value"].tolist() == [1.0, 3.0]
