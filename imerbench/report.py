"""One self-contained HTML page for a results folder: leaderboards, analysis, figures and the
provenance of the runs (figures are embedded, so the page can be mailed or archived alone)."""

from __future__ import annotations

import html
import platform
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from imerbench import __version__
from imerbench.analysis import (
    fold_mean,
    forced_single,
    is_rate,
    modality_gap,
    primary_rows,
    rate_mask,
    under_optimization,
    without_ceilings,
)
from imerbench.balance_table import balance_table, pairs
from imerbench.convergence import convergence_table
from imerbench.data import MODALITIES, resolve_dataset
from imerbench.metrics import METRICS
from imerbench.paper_table import paper_tables
from imerbench.plots import plot_all
from imerbench.protocol_table import protocol_table
from imerbench.report_html import beside, facts_html, figure_html, page, tables_html
from imerbench.stats import area_under_mr, summary
from imerbench.tables import render_rows


def provenance(df: pd.DataFrame) -> list[tuple[str, str]]:
    ok = df[df["status"] == "ok"]
    failed = df[df["status"] == "failed"]
    cells = df.drop_duplicates("config_hash")
    return [
        ("cells", f"{len(cells)} ({len(failed.drop_duplicates('config_hash'))} failed)"),
        ("rows", str(len(df))),
        ("methods", ", ".join(sorted(df["method"].dropna().unique()))),
        ("datasets", ", ".join(sorted(df["dataset"].dropna().unique()))),
        ("seeds", ", ".join(map(str, sorted(df["seed"].dropna().unique())))),
        ("devices", "; ".join(sorted(ok["device"].dropna().astype(str).unique()))),
        ("code versions", ", ".join(sorted(df["code_version"].dropna().astype(str).unique()))),
        ("training time", f"{ok.drop_duplicates('config_hash')['train_seconds'].sum():.0f} s"),
        (
            "report",
            f"imerbench {__version__}, Python {platform.python_version()}, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        ),
    ]


def analysis_markdown(df: pd.DataFrame) -> str:
    """Modality gap and under-optimization per method, as markdown tables."""
    lines = []
    gap = modality_gap(df)
    gap = without_ceilings(gap, df)
    gap = gap[rate_mask(gap)]
    for dataset, g in gap.groupby("dataset"):
        table = g.groupby(["method", "missing_rate"])["gap"].mean().unstack() * 100
        lines += [
            f"### {dataset}: modality gap (points, best minus worst forced modality)",
            "",
            "| method | " + " | ".join(f"MR {c:g}" for c in table.columns) + " |",
            "|---|" + "---:|" * len(table.columns),
        ]
        for method, row in table.iterrows():
            lines.append(f"| {method} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
        lines.append("")
    uo = under_optimization(df)
    uo = without_ceilings(uo, df)
    uo = uo[rate_mask(uo)]
    for dataset, g in uo.groupby("dataset"):
        table = g.groupby(["method", "modality"])["under_optimization"].mean().unstack() * 100
        # a ceiling that is not the method's own (it was not trained on m alone)
        own = g["source"] == g["method"] + " on " + g["modality"]
        borrowed = set(zip(g.loc[~own, "method"], g.loc[~own, "modality"], strict=True))
        seeds = g["seed"].nunique()
        lines += [
            f"### {dataset}: under-optimization (points, forced modality minus its "
            f"ceiling, mean over MRs and n = {seeds} seeds; the ceiling is the method "
            "trained on that modality alone, or, marked (ref), the unimodal reference's)",
            "",
            "| method | " + " | ".join(table.columns) + " |",
            "|---|" + "---:|" * len(table.columns),
        ]
        for method, row in table.iterrows():
            cells = [
                f"{v:+.2f}" + (" (ref)" if (method, m) in borrowed else "") for m, v in row.items()
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def robustness_markdown(df: pd.DataFrame) -> str:
    """Per dataset, each method's area under its score-vs-MR curve (the mean score over the
    MR range, `imerbench.stats.area_under_mr`), mean ± std over seeds, best first."""
    rows = primary_rows(df)
    rows = fold_mean(rows[(rows["condition"] == "mask") & rate_mask(rows)])
    lines = []
    for dataset, g in rows.groupby("dataset"):
        rates = sorted(g["missing_rate"].unique())
        if len(rates) < 2:
            continue
        per_method = []
        for method, m in g.groupby("method"):
            areas = [
                area_under_mr(list(s["missing_rate"]), list(s["value"]))
                for _, s in m.groupby("seed")
            ]
            stat = summary(areas)
            per_method.append((stat.mean, stat.std, stat.n, method))
        higher = METRICS[resolve_dataset(dataset).primary_metric].higher_is_better
        per_method.sort(key=lambda r: -r[0] if higher else r[0])
        metric = resolve_dataset(dataset).primary_metric
        span = f"{rates[0]:g}-{rates[-1]:g}"
        table = [
            [method, f"{mean * 100:.2f}" + ("" if n < 2 else f" ± {std * 100:.2f}"), str(n)]
            for mean, std, n, method in per_method
        ]
        caption = (
            f"{dataset}: robustness, the area under the {metric} vs MR curve over MR {span} "
            "divided by its span (the mean score over the range; mean ± std over seeds)"
        )
        lines += [*render_rows(caption, ["method", f"area ({metric}, %)", "seeds"], table, "md")]
        lines.append("")
    return "\n".join(lines)


def method_markdown(df: pd.DataFrame, method: str, under: pd.DataFrame) -> str:
    """One method at a glance: per dataset and MR, its score, its forced single-modality
    scores, their under-optimization (`under`: every method's, from `under_optimization`),
    and how its cells stopped."""
    rows = primary_rows(df[df["method"] == method])
    scores = fold_mean(rows[(rows["condition"] == "mask") & rate_mask(rows)])
    forced = forced_single(df[df["method"] == method])
    under = under[under["method"] == method]
    lines = []
    for dataset, g in scores.groupby("dataset"):
        header = ["MR", "score", *(f"{m} forced" for m in MODALITIES)]
        header += [f"under-opt {m}" for m in MODALITIES] if not under.empty else []
        table = []
        for rate, cell in g.groupby("missing_rate"):
            stat = summary(cell["value"])
            text = f"{stat.mean * 100:.2f}" + ("" if stat.n < 2 else f" ± {stat.std * 100:.2f}")
            at = forced[(forced["dataset"] == dataset) & (forced["missing_rate"] == rate)]
            cells = [f"{rate:g}", text]
            cells += [f"{at[m].mean() * 100:.2f}" if len(at) else "-" for m in MODALITIES]
            if not under.empty:
                u = under[(under["dataset"] == dataset) & (under["missing_rate"] == rate)]
                for m in MODALITIES:
                    v = u[u["modality"] == m]["under_optimization"].mean()
                    cells.append("-" if v != v else f"{v * 100:+.2f}")
            table.append(cells)
        mine = df[(df["method"] == method) & (df["dataset"] == dataset)]
        cells_ = mine.drop_duplicates("config_hash")
        stops = cells_["stop_reason"].value_counts().to_dict() if "stop_reason" in mine else {}
        epochs = pd.to_numeric(cells_.get("epochs_trained"), errors="coerce")
        caption = (
            f"{dataset}: {method} ({len(cells_)} cells; stopped: "
            + (", ".join(f"{k or 'failed'} {v}" for k, v in stops.items()) or "-")
            + (f"; {epochs.mean():.1f} epochs on average" if epochs.notna().any() else "")
            + "; scores in %, mean ± std over seeds)"
        )
        lines += [*render_rows(caption, header, table, "md"), ""]
    return "\n".join(lines)


def grid_facts(results_dir: Path, df: pd.DataFrame) -> list[tuple[str, str]]:
    """What the grid was, in one glance: its folder, datasets, MRs, seeds and cells."""
    cells = df.drop_duplicates("config_hash")
    failed = int((cells["status"] == "failed").sum())
    rates = sorted(float(m) for m in df["mask"].dropna().unique() if is_rate(m))
    conditions = sorted(m for m in df["mask"].dropna().unique() if m and not is_rate(m))
    methods = sorted(df["method"].dropna().unique())
    return [
        ("results", str(results_dir)),
        ("datasets", ", ".join(sorted(df["dataset"].dropna().unique()))),
        ("methods", f"{len(methods)}: " + ", ".join(methods)),
        ("missing rates", ", ".join(f"{r:g}" for r in rates)
         + (f"; trained on one modality: {', '.join(conditions)}" if conditions else "")),
        ("seeds", ", ".join(map(str, sorted(df["seed"].dropna().unique())))),
        ("cells", f"{len(cells)} ({failed} failed)"),
    ]  # fmt: skip


def write_report(results_dir: Path, df: pd.DataFrame, out: Path) -> Path:
    """The report page (figures written beside it, in `out`'s folder's figures/)."""
    drawn = plot_all(results_dir, df, out.parent / "figures")
    figures = {p.stem: p for p in drawn if p.suffix == ".png"}
    datasets = sorted(df["dataset"].dropna().unique())

    def fig(name: str, caption: str = "") -> str:
        return "".join(figure_html(figures.get(f"{d}-{name}"), caption) for d in datasets)

    shown = ("rows", "devices", "code versions", "training time", "report")
    runs = [(k, v) for k, v in provenance(df) if k in shown]
    header = beside(facts_html(grid_facts(results_dir, df)), facts_html(runs))
    sections = [
        ("leaderboards", "Leaderboards",
         tables_html(paper_tables(df)) + beside(fig("score-vs-mr"),
                                                figure_html(figures.get("critical-difference")))),
        ("robustness", "Robustness", tables_html(robustness_markdown(df))),
        ("imbalance", "Modality imbalance",
         beside(tables_html(analysis_markdown(df)),
                fig("modality-gap") + fig("under-optimization"))
         + fig("subset-heatmap", "score by the modalities present at test time")),
    ]  # fmt: skip
    if pairs(df):
        sections.append(("balance", "Balance strategies", tables_html(balance_table(df))))
    under = under_optimization(df)  # once, for every method's section
    per_method = "".join(
        f"<details><summary>{html.escape(m)}</summary>"
        f"{tables_html(method_markdown(df, m, under))}</details>"
        for m in sorted(df["method"].dropna().unique())
    )
    sections += [
        ("methods", "Per method", fig("training-curves", "validation score per epoch, each "
                                      "modality forced alone") + per_method),
        ("convergence", "Convergence", tables_html(convergence_table(df))),
        ("inflation", "Test-set selection inflation",
         "<details><summary>val vs test-oracle per method and MR</summary>"
         + tables_html(protocol_table(df)) + "</details>"),
    ]  # fmt: skip
    title = f"imerbench report: {results_dir.name} ({', '.join(datasets)})"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(title, header, sections), encoding="utf-8")
    return out
