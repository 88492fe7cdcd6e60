"""`imerbench table --protocols`: what choosing the epoch on the test set inflates, per
method and missing rate (test-oracle minus val, with its interval over the seeds)."""

from __future__ import annotations

import math

import pandas as pd

from imerbench.analysis import protocol_gap, rate_mask
from imerbench.convergence import NOT_CONVERGED_MARK, not_converged
from imerbench.data import resolve_dataset
from imerbench.tables import render_rows


def protocol_table(df: pd.DataFrame, fmt: str = "md") -> str:
    """Per method, dataset and MR: the val score, the test-oracle score and the inflation
    (oracle - val) with its 95% interval over seeds."""
    gap = protocol_gap(df)
    if gap.empty:
        return "no cell has both val and test-oracle rows"
    gap = gap[rate_mask(gap)].sort_values(["dataset", "method", "missing_rate"])
    if fmt == "csv":
        return gap.to_csv(index=False, lineterminator="\n")
    capped = not_converged(df)
    if fmt == "latex":
        return protocol_latex(gap, capped)
    lines = []
    for dataset, rows in gap.groupby("dataset"):
        metric = resolve_dataset(dataset).primary_metric
        lines += [
            f"### {dataset}: {metric} (%), val selection vs best test epoch (means over "
            "seeds; inflation: test-oracle minus val, with its 95% confidence interval over "
            "the seeds, t distribution; § some runs stopped at their epoch cap)",
            "",
            "| method | MR | seeds | val | test-oracle | inflation | 95% CI |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows.itertuples():
            low, high = (r.inflation - r.ci95) * 100, (r.inflation + r.ci95) * 100
            ci = "-" if math.isnan(r.ci95) else f"[{low:+.2f}, {high:+.2f}]"
            mark = f" {NOT_CONVERGED_MARK}" if (r.method, dataset, r.mask) in capped else ""
            lines.append(
                f"| {r.method}{mark} | {r.missing_rate:g} | {r.seeds} | {r.val * 100:.2f} | "
                f"{r.test_oracle * 100:.2f} | {r.inflation * 100:+.2f} | {ci} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def protocol_latex(gap: pd.DataFrame, capped: set[tuple[str, str, str]]) -> str:
    """`protocol_table` as LaTeX (booktabs), one table per dataset."""
    out: list[str] = []
    header = ["method", "MR", "seeds", "val", "test-oracle", "inflation", "95% CI"]
    for dataset, rows in gap.groupby("dataset"):
        metric = resolve_dataset(dataset).primary_metric
        table = []
        for r in rows.itertuples():
            low, high = (r.inflation - r.ci95) * 100, (r.inflation + r.ci95) * 100
            mark = f" {NOT_CONVERGED_MARK}" if (r.method, dataset, r.mask) in capped else ""
            ci = "-" if math.isnan(r.ci95) else f"[{low:+.2f}, {high:+.2f}]"
            table.append(
                [f"{r.method}{mark}", f"{r.missing_rate:g}", str(r.seeds), f"{r.val * 100:.2f}",
                 f"{r.test_oracle * 100:.2f}", f"{r.inflation * 100:+.2f}", ci]
            )  # fmt: skip
        caption = (
            f"{dataset}: {metric} (%), val selection vs best test epoch; inflation: test-oracle "
            "minus val, 95% confidence interval over the seeds (t distribution)"
        )
        out += [*render_rows(caption, header, table, "latex"), ""]
    return "\n".join(out).rstrip()
