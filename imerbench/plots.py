"""Figures of the modality-imbalance analysis, drawn from the rows (and the per-run curves).

Each figure is written as PNG and PDF. Colours are fixed per modality and per method so
that figures can be read side by side (`imerbench/plot_style.py`); the critical-difference
diagram is in `imerbench/plot_ranks.py`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, also where a display exists
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from imerbench import plot_ranks
from imerbench import plot_style as style
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
from imerbench.plot_style import MODALITY_COLORS, MODALITY_NAMES, legend_outside, line_styles


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
    return style.save(fig, out, f"{dataset}-score-vs-mr")


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
    return style.save(fig, out, f"{dataset}-modality-gap")


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
    return style.save(fig, out, f"{dataset}-under-optimization")


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
    return style.save(fig, out, f"{dataset}-training-curves")


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
    return style.save(fig, out, f"{dataset}-subset-heatmap")


def plot_all(results_dir: Path, df: pd.DataFrame, out: Path) -> list[Path]:
    """Every figure for every dataset in the rows."""
    written: list[Path] = []
    for dataset in sorted(df["dataset"].dropna().unique()):
        written += score_vs_mr(df, dataset, out)
        written += gap_vs_mr(df, dataset, out)
        written += under_optimization_bars(df, dataset, out)
        written += training_curves(results_dir, df, dataset, out)
        written += subset_heatmap(df, dataset, out)
    written += plot_ranks.critical_difference(df, out)
    return written
