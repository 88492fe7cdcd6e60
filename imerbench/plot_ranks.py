"""The critical-difference diagram: average ranks over (dataset, MR) blocks, the Friedman
test and the Nemenyi critical difference (`imerbench/stats.py`), drawn so that no label
meets a dot, another label or the frame."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, also where a display exists
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from imerbench import plot_style as style
from imerbench.analysis import fold_mean, primary_rows, rate_mask
from imerbench.data import resolve_dataset
from imerbench.metrics import METRICS
from imerbench.stats import average_ranks, friedman, nemenyi_cd


def critical_difference(df: pd.DataFrame, out: Path) -> list[Path]:
    """(6) Average ranks over (dataset, MR) blocks with the Nemenyi critical difference."""
    rows = primary_rows(df)
    rows = rows[(rows["condition"] == "mask") & rate_mask(rows)]
    per_seed = fold_mean(rows)
    blocks = per_seed.groupby(["dataset", "missing_rate", "method"])["value"].mean().unstack()
    blocks = blocks.dropna(axis=1)  # methods present in every block
    if blocks.shape[0] < 2 or blocks.shape[1] < 2:
        return []
    datasets = blocks.index.get_level_values(0)
    higher = np.array(
        [METRICS[resolve_dataset(d).primary_metric].higher_is_better for d in datasets]
    )
    scores = blocks.to_numpy() * np.where(higher, 1, -1)[:, None]
    ranks = average_ranks(scores)
    k, n = blocks.shape[1], blocks.shape[0]
    cd = nemenyi_cd(k, n)
    test = friedman(scores)
    order = np.argsort(ranks)
    fig, ax = plt.subplots(figsize=(7.0, 0.32 * k + 2.0))
    labels = []
    middle = (k + 1) / 2
    for row, idx in enumerate(order):
        ax.plot(ranks[idx], row, "o", color="k")
        right = ranks[idx] <= middle  # the label on the side with more room
        labels.append(
            ax.annotate(
                f"{blocks.columns[idx]} ({ranks[idx]:.2f})",
                (ranks[idx], row),
                xytext=(7 if right else -7, 0),
                textcoords="offset points",
                ha="left" if right else "right",
                va="center",
                fontsize=8,
            )
        )
    # One bar per maximal group of methods whose ranks lie within the critical difference.
    groups = cliques(ranks[order], cd)
    for level, (lo, hi) in enumerate(groups):
        y = k + 0.2 + 0.35 * level
        ax.plot([ranks[order[lo]], ranks[order[hi]]], [y, y], color="tab:red", lw=3, alpha=0.7)
    ax.plot([1, 1 + cd], [-0.8, -0.8], color="k", lw=2)
    ax.text(1 + cd / 2, -1.05, f"CD = {cd:.2f}", ha="center", fontsize=8)
    ax.set_ylim(k + 0.5 + 0.35 * len(groups), -1.4)
    ax.set_xlim(0.5, k + 0.5)
    fit_labels(fig, ax, labels)
    ax.set_yticks([])
    ax.set_xlabel("average rank (1 = best)")
    ax.set_title(
        f"Average ranks over {n} blocks (one dataset and missing rate each; a method's mean\n"
        f"over n = {per_seed['seed'].nunique()} seeds); Friedman p = {test.p_chi2:.2g}",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    ax.legend(
        handles=[
            Line2D([], [], color="k", lw=2, label=f"critical difference (CD = {cd:.2f})"),
            Line2D(
                [],
                [],
                color="tab:red",
                lw=3,
                alpha=0.7,
                label="joins methods not significantly different (Nemenyi, α = 0.05)",
            ),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=1,
        fontsize=8,
        frameon=False,
    )
    return style.save(fig, out, "critical-difference")


def fit_labels(fig: plt.Figure, ax: plt.Axes, labels: list[plt.Annotation]) -> None:
    """Widen the x range until every label lies inside the axes (a long method name near an
    edge would otherwise run out of the frame)."""
    for _ in range(4):
        fig.canvas.draw()
        box = ax.get_window_extent()
        left = min(t.get_window_extent().x0 for t in labels)
        right = max(t.get_window_extent().x1 for t in labels)
        if left >= box.x0 and right <= box.x1:
            return
        lo, hi = ax.get_xlim()
        per_pixel = (hi - lo) / box.width
        pad = 4 * per_pixel
        ax.set_xlim(
            lo - max(box.x0 - left, 0) * per_pixel - pad,
            hi + max(right - box.x1, 0) * per_pixel + pad,
        )


def cliques(sorted_ranks: np.ndarray, cd: float) -> list[tuple[int, int]]:
    """Maximal runs (first, last index) of sorted ranks spanning less than `cd`."""
    out: list[tuple[int, int]] = []
    for i in range(len(sorted_ranks)):
        j = i
        while j + 1 < len(sorted_ranks) and sorted_ranks[j + 1] - sorted_ranks[i] < cd:
            j += 1
        if j > i and not (out and out[-1][1] >= j):
            out.append((i, j))
    return out
