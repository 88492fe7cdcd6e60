"""`imerbench table --balance`: what each balance strategy changed against its base method,
computed from the rows alone.

A `base+strategy` cell shares its base's seeds, initial weights and masks
(`imerbench/balance/compose.py`), so each seed gives one paired difference (strategy minus
base) of: the fused score, the modality gap and each modality's under-optimization
(`imerbench/analysis.py`). Each difference is shown as its mean with a 95% t-interval over
the seeds and a paired t-test, Holm-corrected within each column of a dataset's table.
"""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd

from imerbench.analysis import (
    fold_mean,
    modality_gap,
    primary_rows,
    rate_mask,
    under_optimization,
)
from imerbench.data import MODALITIES, resolve_dataset
from imerbench.errors import ImerbenchError
from imerbench.grid import split_balance
from imerbench.metrics import METRICS
from imerbench.stats import holm, paired_t, summary
from imerbench.tables import render_rows

KEY = ["dataset", "missing_rate", "seed"]
QUANTITIES = ("fused", "gap", *(f"under-opt {m}" for m in MODALITIES))
SIGNIFICANT = "*"  # Holm-adjusted paired p < 0.05
WEAK = "◦"  # the base's weakest modality (its most frequent worst forced modality)


def pairs(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(balanced label, base label, strategy label) of every strategy row whose base ran."""
    methods = set(df["method"])
    out = []
    for label in sorted(methods):
        split = split_balance(label)
        if split is not None and split[0] in methods:
            out.append((label, *split))
    return out


def per_seed(df: pd.DataFrame, selection: str) -> dict[str, pd.DataFrame]:
    """Each quantity per (method, dataset, MR, seed)."""
    rows = primary_rows(df, selection)
    fused = fold_mean(rows[(rows["condition"] == "mask") & rate_mask(rows)])
    gap = modality_gap(df, selection).rename(columns={"gap": "value"})
    out = {"fused": fused, "gap": gap[rate_mask(gap)]}
    uo = under_optimization(df, selection)
    if uo.empty:  # no unimodal ceiling in the grid
        return out
    uo = uo[rate_mask(uo)].rename(columns={"under_optimization": "value"})
    for m in MODALITIES:
        out[f"under-opt {m}"] = uo[uo["modality"] == m]
    return out


def matched_folds(df: pd.DataFrame, label: str, base: str) -> pd.DataFrame:
    """The rows without those of `label` and `base` (under a missing rate) at a (dataset,
    MR, seed, fold) where only one of the two finished: each seed's fold mean then covers
    the same folds on both sides of a difference (a strategy cell failed on one fold must
    not compare its mean over four folds with its base's over five)."""
    pair = df["method"].isin([label, base]) & rate_mask(df)
    ok = df[pair & (df["status"] == "ok")]
    keys = ["dataset", "missing_rate", "seed", "fold"]
    finished = ok.groupby(keys)["method"].nunique()
    both = finished[finished == 2].index
    return df[~pair | pd.MultiIndex.from_frame(df[keys]).isin(both)]


def balance_effects(df: pd.DataFrame, selection: str = "val") -> pd.DataFrame:
    """One row per (dataset, base, strategy, MR, quantity): the base's mean, the paired
    difference's mean, 95% half-interval, p and Holm-adjusted p, and the seeds paired."""
    found = pairs(df)
    if not found:
        raise ImerbenchError(
            "no `method+strategy` rows beside their base method's; run both, e.g. "
            "--methods late-fusion,late-fusion+ogm-ge"
        )
    gap = modality_gap(df, selection)
    weak = weakest(gap[rate_mask(gap)])
    out = []
    for label, base, strategy in found:
        values = per_seed(matched_folds(df, label, base), selection)
        for quantity, frame in values.items():
            mine = frame[frame["method"] == label][[*KEY, "value"]]
            theirs = frame[frame["method"] == base][[*KEY, "value"]]
            paired = mine.merge(theirs, on=KEY, suffixes=("", "_base"))
            for (dataset, rate), group in paired.groupby(["dataset", "missing_rate"]):
                sign = better_sign(dataset) if quantity == "fused" else 1.0
                mine_v, base_v = sign * group["value"], sign * group["value_base"]
                diff, test = summary(mine_v - base_v), paired_t(mine_v, base_v)
                out.append(
                    {"dataset": dataset, "base": base, "strategy": strategy,
                     "missing_rate": rate, "quantity": quantity,
                     "base_mean": group["value_base"].mean(), "diff": diff.mean,
                     "ci95": diff.ci95, "p": test.p, "seeds": diff.n,
                     "weak": weak.get((base, dataset), "")}
                )  # fmt: skip
    effects = pd.DataFrame(out)
    if effects.empty:
        raise ImerbenchError("no seed has both a strategy's and its base's finished rows")
    effects["p_holm"] = math.nan
    for _, index in effects.groupby(["dataset", "quantity"]).groups.items():
        effects.loc[index, "p_holm"] = holm(effects.loc[index, "p"].tolist())
    return effects.sort_values(["dataset", "base", "strategy", "missing_rate"], kind="stable")


def better_sign(dataset: str) -> float:
    """+1 where the primary metric is higher-is-better, else -1: a positive Δ is better."""
    return 1.0 if METRICS[resolve_dataset(dataset).primary_metric].higher_is_better else -1.0


def weakest(gap: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(method, dataset) -> its most frequent worst forced modality over MRs and seeds."""
    return {
        key: Counter(group["worst"]).most_common(1)[0][0]
        for key, group in gap.groupby(["method", "dataset"])
    }


def balance_table(df: pd.DataFrame, fmt: str = "md", selection: str = "val") -> str:
    """The effects as one table per dataset (markdown or LaTeX) or tidy CSV."""
    effects = balance_effects(df, selection)
    if fmt == "csv":
        return effects.to_csv(index=False, lineterminator="\n")
    out: list[str] = []
    for dataset, rows in effects.groupby("dataset", sort=False):
        metric = resolve_dataset(dataset).primary_metric
        scale = 1.0 if metric == "mae" else 100.0
        header = ["method", "MR", "seeds", f"base {metric}", *(f"Δ {q}" for q in QUANTITIES)]
        table = []
        for (base, strategy, rate), group in rows.groupby(
            ["base", "strategy", "missing_rate"], sort=False
        ):
            by = {r.quantity: r for r in group.itertuples()}
            fused = by["fused"]
            weak = fused.weak
            cells = [f"{base}+{strategy}", f"{rate:g}", str(fused.seeds),
                     f"{fused.base_mean * scale:.2f}"]  # fmt: skip
            for q in QUANTITIES:
                text = effect_text(by.get(q), scale)
                marked = q == f"under-opt {weak}" and text != "-"
                cells.append(text + (f" {WEAK}" if marked else ""))
            table.append(cells)
        caption = (
            f"{dataset}: balance strategies against their base method ({metric}, points, "
            f"{selection} selection). Δ = strategy minus base over the same seeds and masks: "
            "mean ± 95% t-interval; "
            f"{SIGNIFICANT} paired t-test p < 0.05, Holm-corrected within the column. Δ fused > 0: "
            "better; Δ gap < 0: a smaller gap between the best and worst forced modality; "
            "Δ under-opt > 0: the modality does better inside the model, against its unimodal "
            f"ceiling; {WEAK} the base's weakest modality"
        )
        out += [*render_rows(caption, header, table, fmt), ""]
    missing = effects[effects["quantity"].str.startswith("under-opt")].empty
    if missing:
        out.append(
            "(no under-optimization: the grid has no unimodal ceilings; add unimodal-a, "
            "unimodal-t and unimodal-v to it)"
        )
    return "\n".join(out).rstrip()


def effect_text(row: object, scale: float) -> str:
    """`+1.23 ± 0.45*` from an effects row (or `-` without one)."""
    if row is None:
        return "-"
    mean, ci, p = row.diff * scale, row.ci95 * scale, row.p_holm  # type: ignore[attr-defined]
    text = f"{mean:+.2f}" + ("" if math.isnan(ci) else f" ± {ci:.2f}")
    return text + (SIGNIFICANT if p == p and p < 0.05 else "")
