"""Speed benchmark: one cell per method, then a grid one cell at a time vs concurrently.

Builds a corpus with the shape of a real dataset (its label pickle from the published layout:
dialogue counts and lengths, splits, labels) and random features at the real widths
512/1024/1024, written in the GCNet layout, then times imerbench's own runner on it.

    python benchmarks/speed.py --labels ../shared/data/gcnet-labels --shape mosi \\
        --methods comp-ref,comp --epochs 20 --grid-cells 8 --jobs 4

Prints, per method: seconds per epoch, the whole cell, peak device memory; then for the
grid: wall time and cells per hour in both modes, and the mean GPU utilization (sampled
with nvidia-smi every 0.5 s) during each. On a CPU-only machine use few epochs and cells.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from imerbench.datasets import resolve_dataset
from imerbench.grid import grid_from_dict
from imerbench.results import read_results
from imerbench.runner import RunOptions, resolve_device, run_grid
from imerbench.safe_pickle import load_label_pickle

WIDTHS = {"a": 512, "t": 1024, "v": 1024}
FOLDERS = {"a": "wav2vec-large-c-UTT", "t": "deberta-large-4-UTT", "v": "manet_UTT"}


def build_layout(labels: Path, shape: str, root: Path) -> Path:
    """The dataset folder: the real label pickle and one random .npy per utterance."""
    info = resolve_dataset(shape)
    folder = root / info.folder
    if (folder / ".complete").exists():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(labels / info.label_file, folder / info.label_file)
    items = load_label_pickle(folder / info.label_file)
    utterances = [u for vid in sorted(items[0]) for u in items[0][vid]]
    gen = np.random.default_rng(0)
    for m, width in WIDTHS.items():
        out = folder / "features" / FOLDERS[m]
        out.mkdir(parents=True, exist_ok=True)
        for u in utterances:
            np.save(out / f"{u}.npy", gen.standard_normal(width).astype(np.float32))
    (folder / ".complete").touch()
    return root


class GpuSampler:
    """Mean GPU utilization over a block, from nvidia-smi every 0.5 s (None without it)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                ).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return
            self._stop.wait(0.5)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def run(grid_raw: dict, out: Path, device: str, jobs: int) -> tuple[float, float | None]:
    grid = grid_from_dict(grid_raw, "speed benchmark")
    start = time.perf_counter()
    with GpuSampler() as gpu:
        run_grid(grid, RunOptions(out=out, device=device, jobs=jobs, save_weights=False))
    return time.perf_counter() - start, gpu.mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=Path("../shared/data/gcnet-labels"))
    parser.add_argument("--shape", default="mosi", help="mosi, iemocap4 or iemocap6")
    parser.add_argument("--methods", default="comp-ref")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--missing-rate", default="0.7")
    parser.add_argument("--grid-cells", type=int, default=4, help="cells in the grid test")
    parser.add_argument("--jobs", type=int, default=4, help="concurrent cells in the grid test")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder")
    args = parser.parse_args()

    device = resolve_device(args.device)
    work = args.work or Path(tempfile.mkdtemp(prefix="imerbench-speed-"))
    root = build_layout(args.labels, args.shape, work / "data")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {device} ({name}); shape {args.shape}; widths 512/1024/1024; "
        f"MR {args.missing_rate}; {args.epochs} epochs per cell"
    )
    base = {
        "datasets": [args.shape],
        "data_root": str(root),
        "missing_rates": [args.missing_rate],
        "epochs": args.epochs,
        "folds": [0],
    }

    print("\n| method | s/epoch | cell wall s | params | peak memory MiB |")
    print("|---|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        out = work / f"one-{method}"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        wall, _ = run(base | {"methods": [method], "seeds": [0]}, out, str(device), 1)
        rows = read_results(out)
        ok = rows[rows["status"] == "ok"]
        if ok.empty:
            print(f"| {method} | failed: {rows['error'].iloc[0]} |")
            continue
        seconds = float(ok["train_seconds"].iloc[0])
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0
        print(
            f"| {method} | {seconds / args.epochs:.3f} | {wall:.1f} | "
            f"{int(ok['parameters'].iloc[0]):,} | {peak:.0f} |"
        )

    method = args.methods.split(",")[0]
    cells = base | {"methods": [method], "seeds": list(range(1, args.grid_cells + 1))}
    serial, serial_gpu = run(cells, work / "grid-serial", str(device), 1)
    parallel, parallel_gpu = run(cells, work / "grid-concurrent", str(device), args.jobs)
    print(f"\ngrid of {args.grid_cells} {method} cells:")
    for label, wall, gpu in (
        ("one at a time", serial, serial_gpu),
        (f"{args.jobs} concurrent", parallel, parallel_gpu),
    ):
        util = f", mean GPU utilization {gpu:.0f}%" if gpu is not None else ""
        print(f"  {label}: {wall:.1f} s, {args.grid_cells / wall * 3600:.0f} cells/hour{util}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
