"""One self-contained HTML page for a results folder: leaderboards, analysis, figures and the
provenance of the runs (figures are embedded, so the page can be mailed or archived alone)."""

from __future__ import annotations

import base64
import html
import platform
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from imerbench import __version__
from imerbench.analysis import is_rate, modality_gap, under_optimization, without_ceilings
from imerbench.balance_table import balance_table, pairs
from imerbench.convergence import convergence_table
from imerbench.paper_table import paper_tables
from imerbench.plots import plot_all
from imerbench.protocol_table import protocol_table


def _table_html(markdown: str) -> str:
    """The markdown tables this package writes, as HTML (headings, pipes, bold, italics)."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            head, body = rows[0], rows[2:]
            out.append(
                "<table><thead><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
                + "</tbody></table>"
            )
            rows.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            cells = [_inline(c) for c in cells]
            rows.append(cells)
        else:
            flush()
            if line.startswith("### "):
                out.append(f"<h3>{html.escape(line[4:])}</h3>")
            elif line.strip():
                out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def _inline(text: str) -> str:
    if text.startswith("**") and "**" in text[2:]:
        end = text.index("**", 2)
        text = f"<b>{text[2:end]}</b>{text[end + 2 :]}"
    if text.startswith("*") and text.endswith("*") and len(text) > 2:
        text = f"<i>{text[1:-1]}</i>"
    return text


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
    gap = gap[gap["mask"].map(is_rate)]
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
    uo = uo[uo["mask"].map(is_rate)]
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


def balance_section(df: pd.DataFrame) -> list[str]:
    """What each balance strategy changed against its base (nothing without such pairs)."""
    if not pairs(df):
        return []
    return ["<h2>Balance strategies</h2>", _table_html(balance_table(df))]


def write_report(results_dir: Path, df: pd.DataFrame, out: Path) -> Path:
    figures = plot_all(results_dir, df, out.parent / "figures")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>imerbench report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;margin:1em 0}</style></head><body>",
        f"<h1>imerbench report: {html.escape(str(results_dir))}</h1>",
        "<h2>Leaderboards</h2>",
        _table_html(paper_tables(df)),
        "<h2>Modality imbalance</h2>",
        _table_html(analysis_markdown(df)),
        *balance_section(df),
        "<h2>Convergence</h2>",
        _table_html(convergence_table(df)),
        "<h2>Test-set selection inflation</h2>",
        _table_html(protocol_table(df)),
        "<h2>Figures</h2>",
    ]
    for path in figures:
        if path.suffix == ".png":
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Provenance</h2><table>")
    parts += [
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in provenance(df)
    ]
    parts.append("</table></body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
