"""How the cells' training ended (`imerbench/stopping.py`), from the rows: per method and
dataset, how many cells stopped on a plateau, at their cap, or after fixed epochs, and which
did not converge (stopped by the cap while still improving)."""

from __future__ import annotations

import pandas as pd

from imerbench.stopping import CAP, FIXED, PLATEAU
from imerbench.tables import render_rows

NOT_CONVERGED_MARK = "§"  # some runs behind this score stopped at their cap, still improving
CELL_KEYS = ["method", "dataset", "fold", "mask", "seed", "config_hash"]


def cell_stops(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished cell: its cap (`epochs`), epochs trained, reason, convergence."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=[*CELL_KEYS, "epochs", "epochs_trained", "stop_reason"])
    cells = ok.drop_duplicates(CELL_KEYS)
    return cells[[*CELL_KEYS, "epochs", "epochs_trained", "stop_reason", "converged"]]


def not_converged(df: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(method, dataset, mask) with at least one cell stopped by its cap while improving."""
    cells = cell_stops(df)
    flagged = cells[cells["converged"].astype(str) == "False"]
    return {(r.method, r.dataset, str(r.mask)) for r in flagged.itertuples()}


def convergence_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and method: cells, how each stopped, and the epochs they trained."""
    cells = cell_stops(df)
    rows = []
    for (dataset, method), group in cells.groupby(["dataset", "method"]):
        reasons = group["stop_reason"].value_counts()
        trained = pd.to_numeric(group["epochs_trained"], errors="coerce")
        rows.append(
            {
                "dataset": dataset,
                "method": method,
                "cells": len(group),
                PLATEAU: int(reasons.get(PLATEAU, 0)),
                CAP: int(reasons.get(CAP, 0)),
                FIXED: int(reasons.get(FIXED, 0)),
                "not_converged": int((group["converged"].astype(str) == "False").sum()),
                "plateau_share": reasons.get(PLATEAU, 0) / len(group),
                "epochs_mean": float(trained.mean()),
                "epochs_min": int(trained.min()),
                "epochs_max": int(trained.max()),
                "epochs_cap": int(pd.to_numeric(group["epochs"], errors="coerce").max()),
            }
        )
    return pd.DataFrame(rows)


def convergence_table(df: pd.DataFrame, fmt: str = "md") -> str:
    """`imerbench table --convergence`: how every method's cells stopped."""
    summary = convergence_summary(df)
    if summary.empty:
        return "no finished cells"
    if fmt == "csv":
        return summary.to_csv(index=False, lineterminator="\n")
    header = [
        "method",
        "cells",
        "plateau",
        "cap (not converged)",
        "fixed",
        "epochs trained: mean (min-max)",
        "epoch cap",
    ]
    lines: list[str] = []
    for dataset, rows in summary.groupby("dataset"):
        caption = (
            f"{dataset}: how training stopped (plateau: no validation gain for `patience` "
            "epochs; cap: the epoch budget ran out while still improving; fixed: exactly the "
            "budget, as `--protocol paper` trains)"
        )
        table = [
            [
                r.method,
                str(r.cells),
                f"{r.plateau} ({r.plateau_share:.0%})",
                str(r.cap),
                str(r.fixed),
                f"{r.epochs_mean:.1f} ({r.epochs_min}-{r.epochs_max})",
                str(r.epochs_cap),
            ]
            for r in rows.itertuples()
        ]
        lines += render_rows(caption, header, table, fmt)
        lines.append("")
    return "\n".join(lines).rstrip()
