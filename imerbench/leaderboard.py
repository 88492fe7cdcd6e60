"""Leaderboards computed from the tidy rows: one table per dataset, methods x missing rate.

A score is first averaged over folds (IEMOCAP's 5 sessions) within a seed, then summarized
as mean +/- std over seeds (the caption states n). The best mean of each column is marked
using the metric's `higher_is_better`; a dagger marks methods significantly worse than the
best (paired t-test over the same folds and seeds, Holm-corrected within the column, alpha
0.05). On the synthetic corpora the Bayes-optimal limit is printed beside. A double dagger
marks a score some of whose runs failed (a note under the table says how many and why);
where none succeeded the cell reads `failed`, so a failing method never silently drops out
of the table. A section sign marks a score some of whose runs stopped at their epoch cap
while still improving (`imerbench/convergence.py`). The published numbers go beside ours in
`imerbench/paper_table.py`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from imerbench.analysis import is_rate, primary_rows, rate_mask
from imerbench.convergence import NOT_CONVERGED_MARK, not_converged
from imerbench.data import bayes_table, resolve_dataset
from imerbench.metrics import METRICS
from imerbench.stats import holm, paired_t, summary
from imerbench.tables import latex_open, score_cells, tex

ALPHA = 0.05
FAILED_MARK = "‡"  # some runs behind this score failed


@dataclass
class Leaderboard:
    """One dataset's table. `cells[(method, mr)]` holds the per-seed values."""

    dataset: str
    metric: str
    selection: str
    methods: list[str]
    rates: list[float]
    cells: dict[tuple[str, float], list[float]]
    worse: set[tuple[str, float]]  # significantly worse than the column's best
    failed: dict[str, int] = field(default_factory=dict)
    bayes: dict[float, float] = field(default_factory=dict)
    # (method, mask) -> (failed runs, runs, first error); a run is one cell (fold, seed)
    runs: dict[tuple[str, str], tuple[int, int, str]] = field(default_factory=dict)
    unconverged: set[tuple[str, float]] = field(default_factory=set)  # (method, mr)

    @property
    def failures(self) -> dict[tuple[str, str], tuple[int, int, str]]:
        return {key: value for key, value in self.runs.items() if value[0]}

    def run_counts(self, method: str, mr: float) -> tuple[int, int, str]:
        """(failed, runs, first error) behind a table cell."""
        for (m, mask), value in self.runs.items():
            if m == method and is_rate(mask) and float(mask) == mr:
                return value
        return (0, 0, "")

    def failed_runs(self, method: str, mr: float) -> tuple[int, int, str] | None:
        """(failed, runs, first error) of a table cell whose runs did not all succeed."""
        counts = self.run_counts(method, mr)
        return counts if counts[0] else None

    def notes(self) -> list[str]:
        """One line per method and mask with failed runs: how many of how many, and why."""
        lines = []
        for (method, mask), (n, m, error) in sorted(self.failures.items()):
            where = f"MR {float(mask):g}" if is_rate(mask) else f"mask {mask}"
            reason = error if len(error) <= 120 else error[:117] + "..."
            lines.append(f"{FAILED_MARK} {method}, {where}: {n} of {m} runs failed ({reason})")
        return lines

    @property
    def higher(self) -> bool:
        return METRICS[self.metric].higher_is_better

    def mean(self, method: str, mr: float) -> float:
        return summary(self.cells.get((method, mr), [])).mean

    def best(self, mr: float) -> str | None:
        means = {m: self.mean(m, mr) for m in self.methods}
        means = {m: v for m, v in means.items() if not math.isnan(v)}
        if not means:
            return None
        return (max if self.higher else min)(means, key=means.__getitem__)

    def scale(self) -> float:
        return 1.0 if self.metric == "mae" else 100.0

    def cell_text(self, method: str, mr: float) -> str:
        """Mean ± std over seeds; marked when some runs failed, `failed` when all did."""
        s = summary(self.cells.get((method, mr), []))
        failed = self.failed_runs(method, mr)
        if s.n == 0:
            return f"failed {FAILED_MARK}" if failed else "-"
        text = f"{s.mean * self.scale():.2f}"
        if s.n > 1:
            text += f" ± {s.std * self.scale():.2f}"
        if (method, mr) in self.unconverged:
            text += f" {NOT_CONVERGED_MARK}"
        return text + (f" {FAILED_MARK}" if failed else "")

    def seeds(self) -> str:
        """n, the seeds behind each score ("n = 3 seeds"; a range where it varies)."""
        counts = sorted({len(v) for v in self.cells.values() if v}) or [0]
        n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        return f"n = {n} seed" + ("" if n == "1" else "s")

    def rows(self) -> list[tuple[str, list[str], list[bool], list[bool]]]:
        """(label, texts, is_best, is_worse) per method, then the reference rows."""
        out = []
        best = {mr: self.best(mr) for mr in self.rates}
        for method in self.methods:
            out.append(
                (
                    method,
                    [self.cell_text(method, mr) for mr in self.rates],
                    [best[mr] == method for mr in self.rates],
                    [(method, mr) in self.worse for mr in self.rates],
                )
            )
        if self.bayes:
            texts = [
                f"{self.bayes[mr] * 100:.2f}" if mr in self.bayes else "-" for mr in self.rates
            ]
            out.append(("Bayes limit", texts, [False] * len(texts), [False] * len(texts)))
        return out

    def caption(self) -> str:
        unit = "" if self.metric == "mae" else "%, "
        n = self.seeds()
        text = (
            f"{self.dataset}: {self.metric} ({unit}`{self.selection}` selection; mean ± std "
            f"over {n}; † significantly worse than the column's best: paired t-test over "
            f"the {n}, Holm-corrected within each column, α = {ALPHA}"
        )
        if self.unconverged:
            text += f"; {NOT_CONVERGED_MARK} some runs stopped at their epoch cap, not converged"
        return text + (f"; {FAILED_MARK} some runs failed, see below)" if self.failures else ")")

    def to_markdown(self) -> str:
        lines = [f"### {self.caption()}", ""]
        lines.append("| method | " + " | ".join(f"MR {r:g}" for r in self.rates) + " |")
        lines.append("|---|" + "---:|" * len(self.rates))
        for label, texts, best, worse in self.rows():
            cells = score_cells(texts, best, worse, "md")
            name = f"*{label}*" if label == "Bayes limit" else label
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if self.failures:
            lines += ["", *(f"- {note}" for note in self.notes())]
        return "\n".join(lines)

    def to_latex(self) -> str:
        cols = "l" + "r" * len(self.rates)
        lines = latex_open(cols)
        lines.append("Method & " + " & ".join(f"MR {r:g}" for r in self.rates) + r" \\")
        lines.append(r"\midrule")
        for label, texts, best, worse in self.rows():
            cells = score_cells(texts, best, worse, "latex")
            lines.append(tex(label) + " & " + " & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        for note in self.notes():
            plain = re.sub(r"[\\^~]", " ", note)  # error texts are free text
            escaped = re.sub(r"([&%$#_{}])", r"\\\1", plain)
            lines.append(
                r"\par{\footnotesize " + escaped.replace(FAILED_MARK, "$^\\ddagger$") + "}"
            )
        lines += [rf"\caption{{{tex(self.caption())}}}", r"\end{table}"]
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        rows = []
        best = {mr: self.best(mr) for mr in self.rates}
        for method in self.methods:
            for mr in self.rates:
                s = summary(self.cells.get((method, mr), []))
                failed, runs, _ = self.run_counts(method, mr)
                rows.append(
                    {
                        "dataset": self.dataset,
                        "method": method,
                        "missing_rate": mr,
                        "metric": self.metric,
                        "selection": self.selection,
                        "mean": s.mean,
                        "std": s.std,
                        "ci95": s.ci95,
                        "seeds": s.n,
                        "best": best[mr] == method,
                        "significantly_worse": (method, mr) in self.worse,
                        "source": "imerbench",
                        "runs": runs,
                        "failed_runs": failed,
                        "converged": (method, mr) not in self.unconverged,
                    }
                )
        for mr, value in self.bayes.items():
            rows.append(
                {
                    "dataset": self.dataset,
                    "method": "Bayes limit",
                    "missing_rate": mr,
                    "metric": self.metric,
                    "mean": value,
                    "source": "bayes",
                }
            )
        frame = pd.DataFrame(rows)
        counts = [c for c in ("seeds", "runs", "failed_runs") if c in frame.columns]
        return frame.astype({c: "Int64" for c in counts})  # counts stay integers in CSV


def bayes_limits(dataset: str, metric: str, rates: list[float]) -> dict[float, float]:
    """The synthetic corpus's Bayes-optimal score per missing rate ({} for real data)."""
    if not resolve_dataset(dataset).synthetic:
        return {}
    table = bayes_table(dataset)
    out = {}
    for mr in rates:
        hit = table[(table["condition"] == f"mr{mr:.1f}") & (table["metric"] == metric)]
        if len(hit):
            out[mr] = float(hit["value"].iloc[0])
    return out


def leaderboards(
    df: pd.DataFrame, selection: str = "val", metric: str | None = None
) -> list[Leaderboard]:
    """One leaderboard per dataset in the rows, on its primary metric (or `metric`, for the
    datasets whose task has it) and fused output."""
    boards = []
    for dataset in sorted(df["dataset"].dropna().unique()):
        info = resolve_dataset(dataset)
        if metric is not None and METRICS[metric].task != info.task:
            continue
        shown = metric or info.primary_metric
        rows = df[df["dataset"] == dataset]
        failed = rows[rows["status"] == "failed"].groupby("method")["seed"].count().to_dict()
        ok = primary_rows(rows, selection, metric=shown)
        ok = ok[(ok["condition"] == "mask") & rate_mask(ok).astype(bool)]
        methods = sorted(set(rows["method"].dropna()))
        if ok.empty and not failed:
            continue
        per_fold_seed = ok.groupby(["method", "missing_rate", "fold", "seed"])["value"].mean()
        per_seed = per_fold_seed.groupby(["method", "missing_rate", "seed"]).mean()
        runs = count_runs(rows)
        failed_rates = {float(mask) for (_, mask), n in runs.items() if n[0] and is_rate(mask)}
        rates = sorted({float(r) for r in ok["missing_rate"]} | failed_rates)
        cells = {(m, float(r)): list(v.values) for (m, r), v in per_seed.groupby(level=[0, 1])}
        board = Leaderboard(
            dataset,
            shown,
            selection,
            methods,
            rates,
            cells,
            worse=significantly_worse(per_fold_seed, methods, rates, shown),
            failed={k: int(v) for k, v in failed.items()},
            bayes=bayes_limits(dataset, shown, rates),
            runs=runs,
            unconverged={
                (m, float(mask))
                for m, d, mask in not_converged(rows)
                if d == dataset and is_rate(mask)
            },
        )
        boards.append(board)
    return boards


def count_runs(rows: pd.DataFrame) -> dict[tuple[str, str], tuple[int, int, str]]:
    """Per (method, mask): (failed runs, runs, first error). A run is one cell, told apart by
    its config hash (fold and seed where rows lack one); it failed if its row says so."""
    if rows.empty:
        return {}
    key = rows["config_hash"].astype(str)
    blank = rows["config_hash"].isna() | (key == "")
    key = key.where(~blank, rows["fold"].astype(str) + "/" + rows["seed"].astype(str))
    frame = rows.assign(
        run=key, is_failed=rows["status"] == "failed", mask=rows["mask"].astype(str)
    )
    per_run = frame.groupby(["method", "mask", "run"], dropna=False).agg(
        failed=("is_failed", "any"), error=("error", "first")
    )
    out = {}
    for (method, mask), group in per_run.groupby(level=[0, 1]):
        errors = [str(e) for e in group.loc[group["failed"], "error"] if str(e).strip()]
        out[(str(method), str(mask))] = (
            int(group["failed"].sum()),
            len(group),
            errors[0] if errors else "",
        )
    return out


def significantly_worse(
    values: pd.Series, methods: list[str], rates: list[float], metric: str
) -> set[tuple[str, float]]:
    """(method, mr) pairs significantly worse than the column's best method, paired over the
    same (fold, seed) cells, Holm-corrected across the column's comparisons."""
    higher = METRICS[metric].higher_is_better
    out = set()
    for mr in rates:
        column = {
            m: values.xs((m, mr), level=[0, 1])
            for m in methods
            if (m, mr) in values.index.droplevel([2, 3])
        }
        if len(column) < 2:
            continue
        means = {m: v.mean() for m, v in column.items()}
        best = (max if higher else min)(means, key=means.__getitem__)
        others = [m for m in column if m != best]
        pvalues = []
        for m in others:
            joined = pd.concat([column[best], column[m]], axis=1, join="inner").dropna()
            test = paired_t(joined.iloc[:, 0], joined.iloc[:, 1])
            pvalues.append(test.p)
        for m, p in zip(others, holm(pvalues), strict=True):
            if not math.isnan(p) and p < ALPHA:
                out.add((m, mr))
    return out


def render(boards: list[Leaderboard], fmt: str = "md") -> str:
    if fmt == "md":
        return "\n\n".join(b.to_markdown() for b in boards)
    if fmt == "latex":
        return "\n\n".join(b.to_latex() for b in boards)
    if fmt == "csv":
        frames = [b.to_frame() for b in boards]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return df.to_csv(index=False, lineterminator="\n")
    raise ValueError(f"unknown format {fmt}")
