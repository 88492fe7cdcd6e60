"""Figures of the modality-imbalance analysis, drawn from the rows (and the per-run curves).

Each figure is written as PNG and PDF. Colours are fixed per modality and per method so
that figures can be read side by side.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from imerbench.analysis import (
    ceiling_methods,
    fold_mean,
    modality_gap,
    primary_rows,
    rate_mask,
    subset_matrix,
    under_optimization,
    without_ceilings,
)
from imerbench.data import MODALITIES, resolve_dataset
from imerbench.leaderboard import bayes_limits
from imerbench.metrics import METRICS
from imerbench.stats import average_ranks, friedman, nemenyi_cd

MODALITY_COLORS = {"a": "#e66101", "t": "#2166ac", "v": "#1b7837"}
MODALITY_NAMES = {"a": "audio", "t": "text", "v": "video"}


def method_colors(methods: list[str]) -> dict[str, tuple[float, ...]]:
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(sorted(methods))}


REFERENCE_MARKERS = "sD^v<>p*hX"


def line_styles(df: pd.DataFrame) -> dict[str, dict[str, object]]:
    """Per method label, how its line is drawn: the methods in colour, solid; references
    and ceilings (role in the rows) in grey, dashed, each with its own marker and shade."""
    roles = df.drop_duplicates("method").set_index("method")["role"].to_dict()
    methods = sorted(m for m, r in roles.items() if r not in ("reference", "ceiling"))
    others = sorted(m for m in roles if m not in methods)
    colors = method_colors(methods) if methods else {}
    styles: dict[str, dict[str, object]] = {
        m: {"color": colors[m], "linestyle": "-", "marker": "o"} for m in methods
    }
    for i, m in enumerate(others):
        shade = 0.25 + 0.45 * i / max(len(others) - 1, 1)
        marker = REFERENCE_MARKERS[i % len(REFERENCE_MARKERS)]
        styles[m] = {"color": (shade, shade, shade, 1.0), "linestyle": "--", "marker": marker}
    return styles


def legend_outside(ax: plt.Axes) -> None:
    """The legend to the right of the axes, where it covers no data."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _label(dataset: str) -> str:
    metric = resolve_dataset(dataset).primary_metric
    return f"{metric} (%)" if metric != "mae" else metric


def score_vs_mr(df: pd.DataFrame, dataset: str, out: Path) -> list[Path]:
    """(1) Primary score against the missing rate, mean over seeds with a min-max band."""
    rows = primary_rows(df[df["dataset"] == dataset])
    rows = rows[(rows["condition"] == "mask") & rate_mask(rows)]
    per_seed = fold_mean(rows)
    styles = line_styles(df)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, g in per_seed.groupby("method"):
        stats = g.groupby("missing_rate")["value"].agg(["mean", "min", "max"]).sort_index()
        ax.plot(stats.index, stats["mean"] * 100, label=method, **styles[method])  # type: ignore[arg-type]
        ax.fill_between(
            stats.index,
            stats["min"] * 100,
            stats["max"] * 100,
            color=styles[method]["color"],  # type: ignore[arg-type]
            alpha=0.15,
        )
    limits = bayes_limits(
        dataset, resolve_dataset(dataset).primary_metric, sorted(per_seed["missing_rate"].unique())
    )
    if limits:
        rates = sorted(limits)
        ax.plot(rates, [limits[r] * 100 for r in rates], "k:", lw=1.5, label="Bayes limit")
    ax.set_xlabel("missing rate")
    ax.set_ylabel(_label(dataset))
    seeds = per_seed["seed"].nunique()
    ax.set_title(
        f"{dataset}: score vs missing rate (mean over n = {seeds} seeds; band: min-max)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return _save(fig, out, f"{dataset}-score-vs-mr")


def gap_vs_mr(df: pd.DataFrame, dataset: str, out: Path) -> list[Path]:
    """(2) Modality gap (best minus worst forced single modality) against the missing rate."""
    gap = modality_gap(df[df["dataset"] == dataset])
    styles = line_styles(df)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, g in without_ceilings(gap, df).groupby("method"):
        stats = g.groupby("missing_rate")["gap"].agg(["mean", "min", "max"]).sort_index()
        ax.plot(stats.index, stats["mean"] * 100, label=method, **styles[method])  # type: ignore[arg-type]
        ax.fill_between(
            stats.index,
            stats["min"] * 100,
            stats["max"] * 100,
            color=styles[method]["color"],  # type: ignore[arg-type]
            alpha=0.15,
        )
    ax.set_xlabel("missing rate (training and test masks)")
    ax.set_ylabel("modality gap (points)")
    seeds = gap["seed"].nunique()
    ax.set_title(
        f"{dataset}: best minus worst single-modality score (mean over n = {seeds} seeds; "
        "band: min-max)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return _save(fig, out, f"{dataset}-modality-gap")


def under_optimization_bars(df: pd.DataFrame, dataset: str, out: Path) -> list[Path]:
    """(3) Under-optimization per modality and method, mean over MRs and seeds (+/- std)."""
    uo = under_optimization(df[df["dataset"] == dataset])
    uo = without_ceilings(uo, df)
    uo = uo[rate_mask(uo)]
    if uo.empty:  # no ceiling, or no forced single-modality score: nothing to draw
        return []
    methods = sorted(uo["method"].unique())
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(methods) + 2), 4.2))
    width = 0.25
    own = uo["source"] == uo["method"] + " on " + uo["modality"]
    for k, m in enumerate(MODALITIES):
        rows = uo[uo["modality"] == m]
        g = rows.groupby("method")["under_optimization"]
        mean, std = g.mean().reindex(methods), g.std().reindex(methods).fillna(0)
        borrowed = (~own[rows.index]).groupby(rows["method"]).any().reindex(methods)
        x = np.arange(len(methods)) + (k - 1) * width
        bars = ax.bar(
            x,
            mean * 100,
            width,
            yerr=std * 100,
            color=MODALITY_COLORS[m],
            label=MODALITY_NAMES[m],
            capsize=2,
        )
        for bar, other in zip(bars, borrowed.fillna(False), strict=True):
            if other:  # the ceiling is the unimodal reference's, not the method's own
                bar.set_hatch("//")
                bar.set_edgecolor("k")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel("forced single modality minus its ceiling (points)")
    seeds = uo["seed"].nunique()
    title = f"{dataset}: modality under-optimization (mean ± std over MRs and n = {seeds} seeds)"
    if not own.all():
        title += "\nhatched: ceiling from the unimodal reference, not the method on m alone"
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="modality", fontsize=8)
    return _save(fig, out, f"{dataset}-under-optimization")


def read_curves(results_dir: Path, dataset: str) -> pd.DataFrame:
    """Per-epoch curves of every cell of a dataset, with the cell's method, MR and seed."""
    frames = []
    for path in sorted((results_dir / "cells" / dataset).glob("*/*/curves.csv")):
        rows = pd.read_csv(path.parent / "rows.csv", nrows=1, dtype={"mask": str})
        if (
            rows.empty
            or rows["status"].iloc[0] != "ok"
            or "condition" not in pd.read_csv(path, nrows=0).columns
        ):
            continue
        curves = pd.read_csv(path)
        curves["method"] = rows["method"].iloc[0]
        curves["mask"] = str(rows["mask"].iloc[0]) if "mask" in rows else ""
        curves["seed"] = rows["seed"].iloc[0]
        frames.append(curves)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def training_curves(
    results_dir: Path, df: pd.DataFrame, dataset: str, out: Path, mask: str = "0.0"
) -> list[Path]:
    """(4) Validation score of each modality forced alone, epoch by epoch, per method (mean
    over seeds), with the stage switch marked; unimodal heads dashed where a method has them."""
    curves = read_curves(results_dir, dataset)
    if curves.empty:
        return []
    metric = resolve_dataset(dataset).primary_metric
    curves = curves[
        (curves["split"] == "val") & (curves["metric"] == metric) & (curves["mask"] == mask)
    ]
    methods = sorted(set(curves["method"]) - set(ceiling_methods(df)))
    if not methods:
        return []
    cols = min(4, len(methods))
    rows_n = int(np.ceil(len(methods) / cols))
    fig, axes = plt.subplots(
        rows_n, cols, figsize=(3.4 * cols, 2.8 * rows_n), squeeze=False, sharey=True
    )
    for ax, method in zip(axes.flat, methods, strict=False):
        c = curves[curves["method"] == method]
        for m in MODALITIES:
            forced = c[(c["condition"] == m) & (c["output"] == "fused")]
            mean = forced.groupby("epoch")["value"].mean()
            ax.plot(mean.index, mean * 100, color=MODALITY_COLORS[m], label=f"{m} forced")
            head = c[(c["condition"] == "mask") & (c["output"] == f"head-{m}")]
            if len(head):
                hm = head.groupby("epoch")["value"].mean()
                ax.plot(hm.index, hm * 100, "--", color=MODALITY_COLORS[m], lw=1, label=f"head-{m}")
        fused = c[(c["condition"] == "mask") & (c["output"] == "fused")]
        ax.plot(*_mean_curve(fused), color="k", lw=1.2, label="fused (mask)")
        stages = c.groupby("stage")["epoch"].min().sort_values()
        for epoch in stages.iloc[1:]:
            ax.axvline(epoch - 0.5, color="grey", ls=":", lw=1)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(methods) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"val {metric} (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(
        f"{dataset}: per-modality validation curves at MR {mask}, mean over the cells still "
        "training (forced modalities every other epoch; dotted: the first stage switch)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return _save(fig, out, f"{dataset}-training-curves")


def _mean_curve(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    mean = rows.groupby("epoch")["value"].mean()
    return mean.index.to_numpy(), mean.to_numpy() * 100  # epochs count from 1


def subset_heatmap(df: pd.DataFrame, dataset: str, out: Path) -> list[Path]:
    """(5) Score by present-modality subset (forced), methods x subsets."""
    table = subset_matrix(df, dataset)
    if table.empty:
        return []
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(table) + 1.6))
    image = ax.imshow(table.to_numpy() * 100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns)
    ax.set_yticks(range(table.shape[0]), table.index)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            v = table.iat[i, j]
            if not np.isnan(v):
                ax.text(
                    j,
                    i,
                    f"{v * 100:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v < np.nanmean(table.to_numpy()) else "black",
                )
    ax.set_xlabel("modalities present (forced)")
    fig.colorbar(image, ax=ax, label=_label(dataset))
    seeds = df.loc[df["dataset"] == dataset, "seed"].nunique()
    ax.set_title(
        f"{dataset}: score by present-modality subset (mean over MRs and n = {seeds} seeds)",
        fontsize=10,
    )
    return _save(fig, out, f"{dataset}-subset-heatmap")


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
    return _save(fig, out, "critical-difference")


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


def plot_all(results_dir: Path, df: pd.DataFrame, out: Path) -> list[Path]:
    """Every figure for every dataset in the rows."""
    written: list[Path] = []
    for dataset in sorted(df["dataset"].dropna().unique()):
        written += score_vs_mr(df, dataset, out)
        written += gap_vs_mr(df, dataset, out)
        written += under_optimization_bars(df, dataset, out)
        written += training_curves(results_dir, df, dataset, out)
        written += subset_heatmap(df, dataset, out)
    written += critical_difference(df, out)
    return written
