"""Precision benchmark: does bf16 autocast change scores more than the choice of seed does?

Runs the same small grid (methods x seeds, one dataset and missing rate) once in fp32 and once
in bf16 on the current device, with imerbench's own runner, then prints per method: the mean
primary score (val selection, fused output, stored masks) over seeds in each precision, the
mean of the per-seed differences bf16 - fp32 (with their std), the std over seeds of the fp32
scores (the seed noise), and the wall time of each run.

    python benchmarks/precision.py --methods early-fusion,late-fusion,comp --seeds 0,1,2,3,4
    python benchmarks/precision.py --methods early-fusion,unimodal-t --seeds 0,1,2 --epochs 3

bf16 is emulated on CPUs without bfloat16 units, so it is slower there; on CUDA it is the
precision the tensor cores run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from imerbench.data import resolve_dataset
from imerbench.devices import describe_device, resolve_device
from imerbench.grid_file import grid_from_dict
from imerbench.plan import RunOptions
from imerbench.runner import run_grid


def run(raw: dict, out: Path, device: str, jobs: int) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    store = run_grid(grid_from_dict(raw, "precision benchmark"), RunOptions(out, device, jobs))
    return store.read(), time.perf_counter() - start


def primary_scores(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """method x seed: the primary metric of each cell (val selection, fused, stored masks)."""
    rows = df.query(
        "status == 'ok' and selection == 'val' and condition == 'mask' and output == 'fused' "
        "and metric == @metric"
    )
    return rows.pivot_table(index="method", columns="seed", values="value", aggfunc="mean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="early-fusion,late-fusion,comp")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--missing-rate", default="0.5")
    parser.add_argument("--epochs", type=int, default=None, help="default: the quick profile")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=0, help="0: automatic, as `imerbench run`")
    parser.add_argument("--work", type=Path, default=None, help="output folder (default: temp)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="imerbench-precision-"))
    metric = resolve_dataset(args.dataset).primary_metric
    raw = {"name": "precision", "methods": args.methods, "datasets": [args.dataset],
           "missing_rates": [args.missing_rate], "seeds": args.seeds}  # fmt: skip
    if args.epochs is not None:
        raw["epochs"] = args.epochs
    scores, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        df, seconds[precision] = run(
            raw | {"precision": precision}, work / precision, args.device, args.jobs
        )
        scores[precision] = primary_scores(df, metric)

    fp32, bf16 = scores["fp32"], scores["bf16"].reindex_like(scores["fp32"])
    diff = bf16 - fp32  # per seed, same cell otherwise
    print(f"device: {describe_device(resolve_device(args.device))}")
    print(
        f"dataset {args.dataset}, MR {args.missing_rate}, seeds {args.seeds}, "
        f"epochs {args.epochs or 'quick profile'}; {metric} in %, val selection"
    )
    print(f"wall time: fp32 {seconds['fp32']:.1f} s, bf16 {seconds['bf16']:.1f} s")
    print()
    print("| method | fp32 mean | bf16 mean | bf16 - fp32 (mean ± std over seeds) | "
          "seed std (fp32) | abs(diff) < seed std |")  # fmt: skip
    print("|---|---:|---:|---:|---:|:---:|")
    for method in fp32.index:
        d, noise = diff.loc[method], fp32.loc[method].std(ddof=1)
        below = "yes" if abs(d.mean()) < noise else "no"
        means = f"{100 * fp32.loc[method].mean():.2f} | {100 * bf16.loc[method].mean():.2f}"
        print(
            f"| {method} | {means} | {100 * d.mean():+.2f} ± {100 * d.std(ddof=1):.2f} | "
            f"{100 * noise:.2f} | {below} |"
        )
    print(f"\nrows in {work}")


if __name__ == "__main__":
    main()
