"""`imerbench table --paper`: our numbers beside the ComP paper's tables, like with like.

The published numbers are best-test-epoch numbers (the released code reports the best test
score over its epochs), so the rows beside them are ours under `test-oracle`, the same
protocol; our `val`-selected numbers, the honest protocol, follow in rows of their own.
Bold marks the best score within a protocol, never across them. A dataset the paper does
not report gets one line saying so, then its leaderboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import pandas as pd

from imerbench.data import resolve_dataset
from imerbench.leaderboard import FAILED_MARK, Leaderboard, leaderboards
from imerbench.metrics import METRICS
from imerbench.registry import list_methods, method_info
from imerbench.tables import latex_open, score_cells, tex

# The ComP paper's metric names, and ours.
PAPER_METRICS = {"acc": "wa", "ua": "ua", "acc2_nonzero": "acc2", "f1_weighted_nonzero": "f1"}
PUBLISHED = "published (best test epoch)"


def paper_table_frame() -> pd.DataFrame:
    """The ComP paper's tables as rows (dataset ids and our metric ids)."""
    path = resources.files("imerbench").joinpath("reference/comp_paper_tables.csv")
    with path.open(encoding="utf-8") as fh:
        table = pd.read_csv(fh)
    table["dataset"] = table["dataset"].map(lambda d: resolve_dataset(d).id)
    table["metric"] = table["metric"].map(PAPER_METRICS)
    return table


def paper_numbers(dataset: str, metric: str) -> dict[str, dict[float, float]]:
    """Published numbers for this dataset and metric, as fractions, labelled by source."""
    table = paper_table_frame()
    rows = table[(table["dataset"] == dataset) & (table["metric"] == metric)]
    ours_of = {}  # published name -> our method id, from the registered `paper_name`s
    for name in list_methods():
        paper_name = method_info(name).paper_name
        if paper_name:
            ours_of[paper_name] = name
    out: dict[str, dict[float, float]] = {}
    for r in rows.itertuples():
        ours = ours_of.get(r.method)
        label = f"{r.method} (published" + (f", = {ours}" if ours else "") + ")"
        if r.source != "rerun-by-paper-authors":
            label = label[:-1] + f"; {r.source})"
        out.setdefault(label, {})[float(r.missing_rate)] = r.value_percent / 100
    return out


def adapted(label: str) -> bool:
    """Whether our method of `label` is an adaptation: the paper copied its published numbers
    from other papers (other features, another missing scheme), so ours, on this layout,
    are not the same experiment."""
    return method_info(label).paper_name in copied_methods()


@cache
def copied_methods() -> frozenset[str]:
    """The published names whose every row the paper copied from another paper (read once)."""
    table = paper_table_frame()
    rerun = set(table.loc[table["source"] == "rerun-by-paper-authors", "method"])
    return frozenset(set(table["method"]) - rerun)


ADAPTED = " (adaptation)"
Row = tuple[str, str, list[str], list[bool], list[bool]]  # label, protocol, texts, best, worse


@dataclass
class PaperTable:
    """One dataset: ours under `test-oracle` with the published rows, then ours under `val`."""

    oracle: Leaderboard
    val: Leaderboard | None
    published: dict[str, dict[float, float]]

    @property
    def rates(self) -> list[float]:
        rates = set(self.oracle.rates) | {r for v in self.published.values() for r in v}
        return sorted(rates | set(self.val.rates if self.val else ()))

    def rows(self) -> list[Row]:
        rates, board = self.rates, self.oracle
        pick = max if METRICS[board.metric].higher_is_better else min
        best: dict[float, str] = {}
        for mr in rates:  # the best of the best-test-epoch protocol: ours or published
            scores = {m: board.mean(m, mr) for m in board.methods}
            scores |= {label: v[mr] for label, v in self.published.items() if mr in v}
            scores = {k: v for k, v in scores.items() if v == v}
            if scores:
                best[mr] = pick(scores, key=scores.__getitem__)
        out: list[Row] = []
        for m in board.methods:
            texts = [board.cell_text(m, mr) if mr in board.rates else "-" for mr in rates]
            marks = [(m, mr) in board.worse for mr in rates]
            shown = m + ADAPTED if adapted(m) else m
            out.append((shown, "test-oracle", texts, [best.get(mr) == m for mr in rates], marks))
        for label, values in self.published.items():
            texts = [f"{values[mr] * 100:.2f}" if mr in values else "-" for mr in rates]
            out.append(
                (
                    label,
                    PUBLISHED,
                    texts,
                    [best.get(mr) == label for mr in rates],
                    [False] * len(rates),
                )
            )
        if self.val is not None:
            v = self.val
            for m in v.methods:
                texts = [v.cell_text(m, mr) if mr in v.rates else "-" for mr in rates]
                out.append(
                    (
                        m + ADAPTED if adapted(m) else m,
                        "val",
                        texts,
                        [v.best(mr) == m for mr in rates],
                        [(m, mr) in v.worse for mr in rates],
                    )
                )
        return out

    def caption(self) -> str:
        board = self.oracle
        return (
            f"{board.dataset}: {board.metric} (%) beside the ComP paper's table. The published "
            "numbers pick the best test epoch, so ours beside them are `test-oracle` (the best "
            "test epoch too); our `val`-selected numbers follow in their own rows. Bold: the best "
            f"within a protocol. Ours: mean ± std over {board.seeds()}; † significantly "
            f"worse than the best of our rows of that protocol: paired t-test over the seeds, "
            f"Holm-corrected within each column, α = 0.05"
            + (f"; {FAILED_MARK} some runs failed" if board.failures else "")
            + (
                "; (adaptation): the paper copied this method's numbers from other papers "
                "(other features and missing scheme), ours run it on this layout"
                if any(adapted(m) for m in board.methods)
                else ""
            )
        )

    def to_markdown(self) -> str:
        lines = [f"### {self.caption()}", ""]
        lines.append("| method | selection | " + " | ".join(f"MR {r:g}" for r in self.rates) + " |")
        lines.append("|---|---|" + "---:|" * len(self.rates))
        for label, protocol, texts, best, worse in self.rows():
            cells = score_cells(texts, best, worse, "md")
            name = f"*{label}*" if protocol == PUBLISHED else label
            lines.append(f"| {name} | {protocol} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_latex(self) -> str:
        cols = "ll" + "r" * len(self.rates)
        lines = latex_open(cols)
        lines.append("Method & Selection & " + " & ".join(f"MR {r:g}" for r in self.rates) + r" \\")
        lines.append(r"\midrule")
        previous = None
        for label, protocol, texts, best, worse in self.rows():
            if previous is not None and (protocol == "val") != (previous == "val"):
                lines.append(r"\midrule")
            previous = protocol
            cells = score_cells(texts, best, worse, "latex")
            lines.append(f"{tex(label)} & {tex(protocol)} & " + " & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex(self.caption())}}}"]
        return "\n".join([*lines, r"\end{table}"])

    def to_frame(self) -> pd.DataFrame:
        frames = [self.oracle.to_frame()]
        if self.val is not None:
            frames.append(self.val.to_frame())
        rows = [
            {
                "dataset": self.oracle.dataset,
                "method": label,
                "missing_rate": mr,
                "metric": self.oracle.metric,
                "selection": PUBLISHED,
                "mean": value,
                "source": "paper",
            }
            for label, values in self.published.items()
            for mr, value in values.items()
        ]
        return pd.concat([*frames, pd.DataFrame(rows)], ignore_index=True)


def paper_tables(df: pd.DataFrame, fmt: str = "md") -> str:
    """Every dataset of the rows: beside the paper where it reports the dataset, else one
    line that says so and the dataset's leaderboard."""
    reported = sorted(set(paper_table_frame()["dataset"]))
    oracle_boards = {b.dataset: b for b in leaderboards(df, "test-oracle")}
    val_boards = {b.dataset: b for b in leaderboards(df, "val")}
    parts: list[str] = []
    frames: list[pd.DataFrame] = []
    for dataset in sorted(set(oracle_boards) | set(val_boards)):
        if dataset not in reported or dataset not in oracle_boards:
            why = (
                f"{dataset}: no published numbers (the ComP paper reports {', '.join(reported)})"
                if dataset not in reported
                else f"{dataset}: no test-oracle rows to put beside the published numbers"
            )
            board = val_boards.get(dataset) or oracle_boards[dataset]
            parts.append(why if fmt == "md" else "% " + why)
            parts.append(board.to_latex() if fmt == "latex" else board.to_markdown())
            frames.append(board.to_frame())
            continue
        oracle = oracle_boards[dataset]
        table = PaperTable(oracle, val_boards.get(dataset), paper_numbers(dataset, oracle.metric))
        parts.append(table.to_latex() if fmt == "latex" else table.to_markdown())
        frames.append(table.to_frame())
    if fmt == "csv":
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return frame.to_csv(index=False, lineterminator="\n")
    return "\n\n".join(parts)
