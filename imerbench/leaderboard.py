"""Leaderboards computed from the tidy rows: one table per dataset, methods x missing rate.

A score is first averaged over folds (IEMOCAP's 5 sessions) within a seed, then summarized
as mean +/- std over seeds. The best mean of each column is marked using the metric's
`higher_is_better`. On the synthetic corpora the Bayes-optimal limit is printed beside.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from imerbench.datasets import resolve_dataset
from imerbench.metrics import METRICS


@dataclass
class Leaderboard:
    """One dataset's table: `mean`/`std`/`n` are methods x missing rates."""

    dataset: str
    metric: str
    selection: str
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    failed: dict[str, int]
    bayes: dict[float, float]

    def best(self) -> dict[float, str]:
        higher = METRICS[self.metric].higher_is_better
        pick = self.mean.idxmax if higher else self.mean.idxmin
        return {mr: pick()[mr] for mr in self.mean.columns if self.mean[mr].notna().any()}

    def cell_text(self, method: str, mr: float, percent: bool = True) -> str:
        mean, std = self.mean.at[method, mr], self.std.at[method, mr]
        if pd.isna(mean):
            return "-"
        scale = 100.0 if percent and self.metric != "mae" else 1.0
        text = f"{mean * scale:.2f}"
        if self.n.at[method, mr] > 1:
            text += f" ± {std * scale:.2f}"
        return text

    def to_markdown(self) -> str:
        best = self.best()
        cols = list(self.mean.columns)
        title = (
            f"### {self.dataset}: {self.metric} (%, `{self.selection}` selection, "
            "mean ± std over seeds)"
        )
        lines = [title, "", "| method | " + " | ".join(f"MR {c:g}" for c in cols) + " |"]
        lines.append("|---|" + "---:|" * len(cols))
        for method in self.mean.index:
            cells = []
            for mr in cols:
                text = self.cell_text(method, mr)
                cells.append(f"**{text}**" if best.get(mr) == method else text)
            name = method + (f" ({self.failed[method]} failed)" if self.failed.get(method) else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if self.bayes:
            limits = [f"{self.bayes[c] * 100:.2f}" if c in self.bayes else "-" for c in cols]
            lines.append("| *Bayes limit* | " + " | ".join(limits) + " |")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for method in self.mean.index:
            for mr in self.mean.columns:
                rows.append(
                    {
                        "dataset": self.dataset,
                        "method": method,
                        "missing_rate": mr,
                        "metric": self.metric,
                        "selection": self.selection,
                        "mean": self.mean.at[method, mr],
                        "std": self.std.at[method, mr],
                        "seeds": int(self.n.at[method, mr]),
                    }
                )
        return pd.DataFrame(rows)


def bayes_limits(dataset: str, metric: str, rates: list[float]) -> dict[float, float]:
    """The synthetic corpus's Bayes-optimal score per missing rate ({} for real data)."""
    if not resolve_dataset(dataset).synthetic:
        return {}
    from imerbench.synthetic import bayes_table

    table = bayes_table(dataset)
    out = {}
    for mr in rates:
        hit = table[(table["condition"] == f"mr{mr:.1f}") & (table["metric"] == metric)]
        if len(hit):
            out[mr] = float(hit["value"].iloc[0])
    return out


def leaderboards(df: pd.DataFrame, selection: str = "val") -> list[Leaderboard]:
    """One leaderboard per dataset in the rows, on its primary metric and fused output."""
    boards = []
    for dataset in sorted(df["dataset"].dropna().unique()):
        info = resolve_dataset(dataset)
        rows = df[df["dataset"] == dataset]
        failed = rows[rows["status"] == "failed"].groupby("method")["seed"].count().to_dict()
        ok = rows[
            (rows["status"] == "ok")
            & (rows["selection"] == selection)
            & (rows["condition"] == "mask")
            & (rows["output"] == "fused")
            & (rows["metric"] == info.primary_metric)
        ]
        methods = sorted(set(rows["method"]))
        if ok.empty and not failed:
            continue
        per_seed = ok.groupby(["method", "missing_rate", "seed"])["value"].mean().reset_index()
        grouped = per_seed.groupby(["method", "missing_rate"])["value"]
        mean = grouped.mean().unstack().reindex(methods)
        std = grouped.std(ddof=1).unstack().reindex(methods)
        n = grouped.count().unstack().reindex(methods).fillna(0).astype(int)
        rates = sorted(float(r) for r in mean.columns)
        boards.append(
            Leaderboard(
                dataset,
                info.primary_metric,
                selection,
                mean,
                std,
                n,
                {k: int(v) for k, v in failed.items()},
                bayes_limits(dataset, info.primary_metric, rates),
            )
        )
    return boards


def render(boards: list[Leaderboard], fmt: str = "md") -> str:
    if fmt == "md":
        return "\n\n".join(b.to_markdown() for b in boards)
    if fmt == "csv":
        frames = [b.to_frame() for b in boards]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return df.to_csv(index=False, lineterminator="\n")
    raise ValueError(f"unknown format {fmt}")
