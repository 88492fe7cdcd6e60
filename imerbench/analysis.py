"""The modality-imbalance analysis, computed from the tidy rows and nothing else.

Definitions (README, "The modality-imbalance analysis"):
- forced-subset score: the model scored with every utterance showing exactly subset S;
- modality gap of M at (MR, seed): best minus worst forced single-modality score;
- unimodal ceiling of modality m for M: M trained with condition m (mask "m"), scored on m
  (for `base+strategy`, the base's: one modality has nothing to balance); where the grid
  has no such cell, the context-aware `unimodal-m` reference trained on m
  (its cell with mask "m", or its MR 0.0 cell, which sees exactly the same data);
- under-optimization of m in M at (MR, seed) = M's forced-m score minus that ceiling
  (negative: the modality does worse inside the multimodal model than alone).
Scores are averaged over folds within a seed before anything else.
"""

from __future__ import annotations

import pandas as pd

from imerbench.data import MODALITIES, SUBSETS, resolve_dataset
from imerbench.grid import split_balance
from imerbench.stats import summary

CELL = ["method", "dataset", "mask", "missing_rate", "seed"]


def is_rate(mask: object) -> bool:
    try:
        float(str(mask))
    except ValueError:
        return False
    return True


def rate_mask(frame: pd.DataFrame) -> pd.Series:
    """Which rows were trained under a missing rate (not one modality's condition), as
    booleans also when `frame` is empty (a mask of another dtype would select columns)."""
    return frame["mask"].map(is_rate).astype(bool)


def ceiling_methods(df: pd.DataFrame) -> dict[str, str]:
    """{label: modality} of the unimodal ceilings among the rows (their registered role)."""
    ceilings = df[df["role"] == "ceiling"]
    return dict(zip(ceilings["method"], ceilings["ceiling_of"], strict=True))


def without_ceilings(frame: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """`frame`'s rows of multimodal methods: a ceiling's gap or under-optimization is one
    modality's by construction, not imbalance."""
    return frame[~frame["method"].isin(ceiling_methods(df))]


def primary_rows(
    df: pd.DataFrame, selection: str = "val", output: str = "fused", metric: str | None = None
) -> pd.DataFrame:
    """OK rows of the primary metric of each dataset (or of `metric`), for one selection and
    output."""
    ok = df[(df["status"] == "ok") & (df["selection"] == selection) & (df["output"] == output)]
    if metric is not None:
        return ok[ok["metric"] == metric]
    primary = ok["dataset"].map(lambda d: resolve_dataset(d).primary_metric)
    return ok[ok["metric"] == primary]


def fold_mean(df: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    """One value per cell and seed: the mean over folds (IEMOCAP's sessions)."""
    keys = CELL + (extra or [])
    return df.groupby(keys, dropna=False)["value"].mean().reset_index()


def forced_single(df: pd.DataFrame, selection: str = "val") -> pd.DataFrame:
    """Per (method, dataset, MR, seed): the forced a, t and v scores (columns a, t, v)."""
    rows = primary_rows(df, selection)
    rows = rows[rows["condition"].isin(MODALITIES) & rate_mask(rows)]
    per_seed = fold_mean(rows, ["condition"])
    wide = per_seed.pivot_table(index=CELL, columns="condition", values="value")
    return wide.reindex(columns=list(MODALITIES)).reset_index()


def modality_gap(df: pd.DataFrame, selection: str = "val") -> pd.DataFrame:
    """Per (method, dataset, MR, seed): gap = best - worst forced single-modality score,
    with the best and worst modality named."""
    wide = forced_single(df, selection).dropna(subset=list(MODALITIES))
    scores = wide[list(MODALITIES)]
    higher = wide["dataset"].map(lambda d: _higher(d)).astype(bool)
    best = scores.max(axis=1).where(higher, scores.min(axis=1))
    worst = scores.min(axis=1).where(higher, scores.max(axis=1))
    out = wide[CELL].copy()
    out["gap"] = (best - worst).abs()
    out["best"] = scores.idxmax(axis=1).where(higher, scores.idxmin(axis=1))
    out["worst"] = scores.idxmin(axis=1).where(higher, scores.idxmax(axis=1))
    return out


def _higher(dataset: str) -> bool:
    from imerbench.metrics import METRICS

    return METRICS[resolve_dataset(dataset).primary_metric].higher_is_better


def ceilings(df: pd.DataFrame, selection: str = "val") -> pd.DataFrame:
    """Per (method, dataset, seed, modality): the unimodal ceiling and where it came from."""
    rows = primary_rows(df, selection)
    mask_rows = fold_mean(rows[rows["condition"] == "mask"])
    trained_on = {  # (method, dataset, seed, m) -> score of M trained with condition m
        (r.method, r.dataset, r.seed, r.mask): r.value
        for r in mask_rows.itertuples()
        if r.mask in MODALITIES
    }
    reference = {}  # (dataset, seed, m) -> (score, label) of a ceiling reference trained on m
    modality_of = ceiling_methods(rows)
    for r in mask_rows.itertuples():
        m = modality_of.get(r.method)
        if m is not None and (r.mask == m or (is_rate(r.mask) and float(r.mask) == 0.0)):
            reference.setdefault((r.dataset, r.seed, m), (r.value, r.method))
    out = []
    methods = sorted(set(rows["method"]))
    for (dataset, seed), _ in mask_rows.groupby(["dataset", "seed"]):
        for method in methods:
            base = (split_balance(method) or (method,))[0]  # a strategy's: its base's
            for m in MODALITIES:
                if (method, dataset, seed, m) in trained_on:
                    value, source = trained_on[(method, dataset, seed, m)], f"{method} on {m}"
                elif (base, dataset, seed, m) in trained_on:
                    value, source = trained_on[(base, dataset, seed, m)], f"{base} on {m}"
                elif (dataset, seed, m) in reference:
                    value, source = reference[(dataset, seed, m)]
                else:
                    continue
                out.append(
                    {
                        "method": method,
                        "dataset": dataset,
                        "seed": seed,
                        "modality": m,
                        "ceiling": value,
                        "source": source,
                    }
                )
    return pd.DataFrame(out, columns=["method", "dataset", "seed", "modality", "ceiling", "source"])


def under_optimization(df: pd.DataFrame, selection: str = "val") -> pd.DataFrame:
    """Per (method, dataset, MR, seed, modality): forced-m score, ceiling, and their
    difference (score - ceiling; the sign is flipped for lower-is-better metrics so that
    negative always means worse inside the multimodal model)."""
    wide = forced_single(df, selection)
    if wide.empty:  # no forced single-modality score in the rows
        columns = [*CELL, "modality", "score", "ceiling", "source", "under_optimization"]
        return pd.DataFrame(columns=columns)
    long = wide.melt(
        id_vars=CELL, value_vars=list(MODALITIES), var_name="modality", value_name="score"
    ).dropna(subset=["score"])
    merged = long.merge(ceilings(df, selection), on=["method", "dataset", "seed", "modality"])
    sign = merged["dataset"].map(lambda d: 1.0 if _higher(d) else -1.0).astype(float)
    merged["under_optimization"] = sign * (merged["score"] - merged["ceiling"])
    return merged


def protocol_gap(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, dataset, MR): test-oracle minus val score, its mean and 95% interval over
    seeds: how much choosing the epoch on the test set inflates a result."""
    rows = []
    val = fold_mean(primary_rows(df, "val").query("condition == 'mask'"))
    oracle = fold_mean(primary_rows(df, "test-oracle").query("condition == 'mask'"))
    paired = val.merge(oracle, on=CELL, suffixes=("_val", "_oracle"))
    for (method, dataset, mask, rate), group in paired.groupby(
        ["method", "dataset", "mask", "missing_rate"]
    ):
        diff = summary(group["value_oracle"] - group["value_val"])
        rows.append(
            {
                "method": method,
                "dataset": dataset,
                "mask": mask,
                "missing_rate": rate,
                "val": group["value_val"].mean(),
                "test_oracle": group["value_oracle"].mean(),
                "inflation": diff.mean,
                "ci95": diff.ci95,
                "seeds": diff.n,
            }
        )
    return pd.DataFrame(rows)


def subset_matrix(df: pd.DataFrame, dataset: str, selection: str = "val") -> pd.DataFrame:
    """Methods x forced subsets: mean primary score over MRs and seeds (for the heatmap).
    Cells trained under a condition mask (the ceilings) are left out."""
    rows = primary_rows(df, selection)
    keep = (rows["dataset"] == dataset) & rows["condition"].isin(SUBSETS)
    rows = rows[keep & rate_mask(rows)]
    per_seed = fold_mean(rows, ["condition"])
    table = per_seed.groupby(["method", "condition"])["value"].mean().unstack()
    return table.reindex(columns=list(SUBSETS))
