"""Speed benchmark: comp-ref vs the released ComP, one cell per method, a grid both ways.

Builds a corpus with the shape of a real dataset (its label pickle from the published layout:
dialogue counts and lengths, splits, labels) and random features at the real widths
512/1024/1024, written in the GCNet layout, then times imerbench's own runner on it.

    python benchmarks/speed.py --labels ../shared/data/gcnet-labels --shape mosi,iemocap4 \\
        --released /tmp/comp-released --methods comp-ref,comp --epochs 20 --grid-cells 8 --jobs 4

Prints, per shape:
- with `--released DIR` (a checkout of github.com/WenjueHE/2026-AAAI-ComP): seconds per epoch
  of the released model and of comp-ref on the same batches (same widths, batch size, padded
  length and masks), stage by stage, and the ratio. An epoch is the training split's batches
  (forward, the released loss composed from its own loss classes, backward, its Adam step;
  comp-ref: the harness's step) and one evaluation pass over the test split (the released
  model's without autograd, which its script records); the two alternate, median of
  `--repeats` epochs after one of warm-up;
- per method, one cell alone: seconds per epoch, the cell's wall time and cells per hour, the
  peak device memory and the mean GPU utilization;
- a grid of `--grid-cells` cells of the first method, one cell at a time, then `--jobs`
  concurrently, then (for a method that stacks) as one stack: wall time, cells per hour,
  mean GPU utilization and peak memory of each, and whether the stacked rows match;
- with `--default-grid`, only the default grid, with `--stack 1` and stacked, and the ratio
  of cells per hour.
GPU utilization and memory are sampled with nvidia-smi every 0.5 s; on a CPU the memory is the
resident memory of this process and its workers. On a CPU the defaults are a reduced run
(2 epochs, 2 cells, 2 jobs, 3 repeats).

With `--record FILE` each measurement is appended to FILE as it is made; then

    python benchmarks/speed.py --extrapolate FILE [FILE ...]

prints the device-hours of the paper grid (`--grid-file`, default the built-in `paper` grid).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from imerbench.data import (
    DEFAULT_FEATURE_NAMES,
    MODALITIES,
    Batch,
    SplitData,
    draw_rate_mask,
    load_dataset,
    resolve_dataset,
    without_validation,
)
from imerbench.data.safe_pickle import load_label_pickle
from imerbench.devices import describe_device, resolve_device
from imerbench.evaluation import predict
from imerbench.grid_file import default_grid_path, grid_from_dict, load_grid
from imerbench.method import RunContext
from imerbench.plan import RunOptions
from imerbench.registry import create_method, list_methods
from imerbench.results import read_results
from imerbench.runner import run_grid
from imerbench.step import data_spec, train_step

WIDTHS = {"a": 512, "t": 1024, "v": 1024}
REDUCED = {"epochs": 2, "grid_cells": 2, "jobs": 2, "repeats": 3}  # a CPU's defaults
FULL = {"epochs": 20, "grid_cells": 4, "jobs": 4, "repeats": 5}


# CMU-MOSEI's size (docs/protocol.md, section 1) and its usual split in utterances; its labels
# are not on this disk, so `--shape mosei` draws a label pickle of that size (below).
MOSEI_VIDEOS, MOSEI_UTTERANCES = 3228, 22856
MOSEI_SPLIT = {"train": 16326, "val": 1871, "test": 4659}  # utterances


def write_mosei_like(path: Path, seed: int = 0) -> None:
    """A label pickle in the 7-item MOSI/MOSEI layout with MOSEI's numbers of videos and
    utterances and its split sizes. The lengths are drawn (geometric, mean 7.1; the real
    distribution is not known here), the labels uniform multiples of 1/3 in [-3, 3]."""
    gen = np.random.default_rng(seed)
    lengths = gen.geometric(MOSEI_VIDEOS / MOSEI_UTTERANCES, MOSEI_VIDEOS).clip(1, 150)
    while (extra := int(lengths.sum()) - MOSEI_UTTERANCES) != 0:  # exactly MOSEI's total
        pick = gen.integers(MOSEI_VIDEOS)
        if (extra < 0 and lengths[pick] < 150) or (extra > 0 and lengths[pick] > 1):
            lengths[pick] -= int(np.sign(extra))
    ids, labels, speakers, sentences = {}, {}, {}, {}
    splits: dict[str, set[str]] = {split: set() for split in MOSEI_SPLIT}
    filled, bounds = 0, np.cumsum(list(MOSEI_SPLIT.values()))
    for k, n in enumerate(lengths):
        vid = f"mosei{k:04d}"
        ids[vid] = [f"{vid}_{j}" for j in range(n)]
        labels[vid] = [float(x) for x in gen.integers(-9, 10, n) / 3]
        speakers[vid] = [""] * int(n)
        sentences[vid] = np.array([f"utterance {j}" for j in range(n)])
        splits[list(MOSEI_SPLIT)[int(np.searchsorted(bounds, filled, side="right"))]].add(vid)
        filled += int(n)
    items = [ids, labels, speakers, sentences, splits["train"], splits["val"], splits["test"]]
    path.write_bytes(pickle.dumps(items, protocol=4))


def build_layout(labels: Path, shape: str, root: Path) -> Path:
    """The dataset folder: the real label pickle (for MOSEI, one of its size: see
    `write_mosei_like`) and one random .npy per utterance (shapes that share a folder, such as
    iemocap4 and iemocap6, share the files)."""
    info = resolve_dataset(shape)
    folder = root / info.folder
    done = folder / f".complete-{info.label_file}"
    if done.exists():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    if info.id == "mosei" and not (labels / info.label_file).exists():
        print(f"no {labels / info.label_file}: MOSEI-sized labels drawn instead")
        write_mosei_like(folder / info.label_file)
    else:
        shutil.copy(labels / info.label_file, folder / info.label_file)
    items = load_label_pickle(folder / info.label_file)
    utterances = [u for vid in sorted(items[0]) for u in items[0][vid]]
    gen = np.random.default_rng(0)
    for m, width in WIDTHS.items():
        out = folder / "features" / DEFAULT_FEATURE_NAMES[m]
        out.mkdir(parents=True, exist_ok=True)
        for u in utterances:
            vector = gen.standard_normal(width).astype(np.float32)
            if not (out / f"{u}.npy").exists():
                np.save(out / f"{u}.npy", vector)
    done.touch()
    return root


def process_tree_rss() -> float:
    """Resident memory (MiB) of this process and its descendants, from /proc."""

    def rss(pid: str) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def children(pid: str) -> list[str]:
        found = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                found += (task / "children").read_text().split()
            except OSError:
                continue
        return found

    total, todo = 0, [str(os.getpid())]
    while todo:
        pid = todo.pop()
        total += rss(pid)
        todo += children(pid)
    return total / 1024


class Sampler:
    """Mean GPU utilization and peak memory over a block, sampled every 0.5 s: nvidia-smi's
    utilization and used memory on CUDA, the resident memory of this process tree on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.index = device.index or 0
        self.utilization: list[float] = []
        self.memory: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample_gpu(self) -> None:
        query = "--query-gpu=utilization.gpu,memory.used"
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits", f"--id={self.index}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        util, used = out.strip().split(",")[:2]
        self.utilization.append(float(util))
        self.memory.append(float(used))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.cuda:
                    self._sample_gpu()
                else:
                    self.memory.append(process_tree_rss())
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return
            self._stop.wait(0.5)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def describe(self) -> str:
        parts = []
        if self.utilization:
            parts.append(f"mean GPU utilization {np.mean(self.utilization):.0f}%")
        if self.memory:
            what = "peak GPU memory (nvidia-smi)" if self.cuda else "peak resident memory"
            parts.append(f"{what} {max(self.memory):.0f} MiB")
        return ", ".join(parts)


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def run(
    grid_raw: dict, out: Path, device: torch.device, jobs: int, stack: int = 1
) -> tuple[float, Sampler]:
    """Run a grid; `stack`: the most cells per stack (1: each cell alone, 0: automatic)."""
    grid = grid_from_dict(grid_raw, "speed benchmark")
    options = RunOptions(out=out, device=str(device), jobs=jobs, save_weights=False, stack=stack)
    start = time.perf_counter()
    with Sampler(device) as sampler:
        run_grid(grid, options)
    return time.perf_counter() - start, sampler


def rows_differ(one: Path, other: Path) -> tuple[int, float, int]:
    """(rows compared, the largest difference of a value, rows whose selected epoch or
    epochs trained differ) between two runs of one grid: each cell's rows keyed by its hash."""
    key = ["config_hash", "selection", "condition", "output", "metric"]
    a, b = read_results(one), read_results(other)
    merged = a.merge(b, on=key, suffixes=("", "_b"))
    if len(merged) != len(a) or len(merged) != len(b):
        return len(merged), float("inf"), -1
    diff = float((merged["value"] - merged["value_b"]).abs().max())
    epochs = merged["epoch"].astype(str) != merged["epoch_b"].astype(str)  # selected, or run
    epochs |= merged["epochs_trained"].astype(str) != merged["epochs_trained_b"].astype(str)
    return len(merged), diff, int(epochs.sum())


def time_stacking(args: argparse.Namespace, device: torch.device) -> None:
    """The default grid (every method on the synthetic corpus) with `--stack 1` and with
    stacking (automatic), `--jobs` as `imerbench run` picks it: wall time, cells per hour,
    their ratio, and whether every row agrees within 1e-4."""
    raw = tomllib.loads(default_grid_path().read_text())
    cells = len(grid_from_dict(raw, "default grid").cells())
    print(f"\nthe default grid ({cells} cells), automatic jobs:")
    walls = {}
    for label, stack in (("--stack 1", 1), ("stacked", 0)):
        out = args.work / f"default-{label.strip('-').replace(' ', '')}"
        walls[label], _ = run(raw, out, device, 0, stack)
        print(f"  {label}: {walls[label]:.1f} s, {cells / walls[label] * 3600:.0f} cells/hour")
    ratio = walls["--stack 1"] / walls["stacked"]
    print(f"  stacked / --stack 1: {ratio:.2f}x the cells per hour")
    compared, diff, epochs = rows_differ(
        args.work / "default-stack1", args.work / "default-stacked"
    )
    verdict = "equal" if diff <= 1e-4 and epochs == 0 else "NOT equal"
    print(
        f"  rows {verdict} within 1e-4: {compared} compared, largest difference {diff:.2e}, "
        f"{epochs} with another epoch"
    )


# ---- the released model, timed on the same batches ---------------------------------------------
def import_released(root: Path) -> tuple[type[nn.Module], Any]:
    """The released `ComP` class and its loss module, imported from a checkout."""
    code = root / "ComP"
    if not (code / "model.py").exists():
        raise SystemExit(f"--released {root}: no ComP/model.py there (a checkout of the code?)")
    sys.path.insert(0, str(code))
    import loss  # type: ignore[import-not-found]
    from model import ComP  # type: ignore[import-not-found]

    return ComP, loss


def released_layout(batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """Features [L, B, sum d], availability [L, B, 3] and umask [B, L], as the released
    training script hands them to the model."""
    feats = torch.cat([batch.features[m] for m in MODALITIES], dim=-1).transpose(0, 1)
    return feats, batch.available.long().transpose(0, 1).contiguous(), batch.valid.float()


class ReleasedRunner:
    """The released model's training step: forward, the loss its training script adds up
    (from its own loss classes; not the per-element Python loops, nor the gradient modulator,
    whose name filter matches no parameter), backward, its Adam step. Evaluation: a forward
    pass without autograd."""

    def __init__(self, root: Path, hp: dict[str, Any], spec: Any, device: torch.device) -> None:
        model_class, losses = import_released(root)
        args = SimpleNamespace(device=device, drop_rate=hp["dropout"], seq_len=spec.pad_length)
        torch.manual_seed(0)
        self.model = model_class(
            args,
            *(spec.widths[m] for m in MODALITIES),
            hp["hidden"],
            n_classes=spec.num_classes,
            depth=hp["depth"],
            num_heads=hp["heads"],
            drop_rate=hp["dropout"],
            lbd=hp["lbd"],
        ).to(device)
        self.optimizer = torch.optim.Adam(
            [{"params": self.model.parameters(), "lr": hp["lr"], "weight_decay": hp["l2"]}]
        )
        self.hidden, self.classes = hp["hidden"], spec.num_classes
        self.regression = spec.task == "regression"
        self.task = losses.MaskedMSELoss() if self.regression else losses.MaskedCELoss()
        self.disentangled = losses.DisentangledLoss()

    def loss(self, res: tuple, batch: Batch, umask: Tensor, first: bool) -> Tensor:
        _, out, out_a, out_t, out_v, _, proj, rec, shared, private, private_out = res
        d, c = self.hidden, self.classes
        labels = batch.labels.reshape(-1)

        def task(pred: Tensor, target: Tensor = labels) -> Tensor:
            return self.task(pred.reshape(-1, c), target, umask)

        pv = [private[..., i * d : (i + 1) * d] for i in range(3)]
        sv = [shared[..., i * d : (i + 1) * d] for i in range(3)]
        total = sum(
            self.disentangled.foward_2(pv[i], pv[j], sv[i], sv[j], umask)
            for i in range(3)
            for j in range(i + 1, 3)
        )
        heads = (out_a, out_t, out_v)
        if first:
            noise = (1.5 * torch.randn_like(labels)).clamp(-3, 3) if self.regression else None
            for i, head in enumerate(heads):
                away = private_out[..., i * c : (i + 1) * c]
                anti = task(1 - away) if noise is None else task(away, noise)
                total = total + task(head) + anti
            return total
        unimodal = sum(task(h) for h in heads)
        rec_loss = nn.MSELoss()(rec, proj)
        return total + task(out) + unimodal + rec_loss + unimodal

    def step(self, batch: Batch, first: bool) -> None:
        feats, mask, umask = released_layout(batch)
        self.model.train()
        res = self.model(feats, batch.labels, mask, umask, first_stage=first)
        loss = self.loss(res, batch, umask, first)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def evaluate(self, batch: Batch, first: bool) -> None:
        feats, mask, umask = released_layout(batch)
        self.model.eval()
        self.model(feats, batch.labels, mask, umask, first_stage=first)


def compare_with_released(
    root: Path,
    shape: str,
    released: Path,
    device: torch.device,
    rate: float,
    repeats: int,
    most: int | None = None,
) -> None:
    """Seconds per epoch of the released model and of comp-ref on the same batches (the first
    `most` training batches of the epoch where given)."""
    info = resolve_dataset(shape)
    corpus = load_dataset(shape, root)
    method = create_method("comp-ref", info.profile)
    hp = method.hp
    fold = corpus.fold(0)
    if info.paper_merges_val:
        fold = without_validation(fold)
    spec, size, gen = data_spec(corpus), hp["batch_size"], np.random.default_rng(0)
    ours, padded = {}, {}  # the harness's batches; the released script's (fixed length)
    for split in ("train", "test"):
        dialogues = fold.get(split)
        mask = draw_rate_mask(len(corpus.utterances(dialogues)), rate, gen)
        ours[split] = SplitData(corpus, dialogues, device)
        padded[split] = SplitData(corpus, dialogues, device, pad_to=corpus.pad_length)
        ours[split] = ours[split].with_mask(mask)
        padded[split] = padded[split].with_mask(mask)
    order = gen.permutation(ours["train"].num_dialogues)
    train_batches = list(ours["train"].batches(size, order, method.fixed_length))[:most]
    released_train = list(padded["train"].batches(size, order, fixed_length=True))[:most]
    released_test = list(padded["test"].batches(size, None, fixed_length=True))

    torch.manual_seed(0)
    model = method.build(spec).to(device)
    optimizer = method.configure_optimizer(model)
    ctx = RunContext.for_metric(info.primary_metric)
    reference = ReleasedRunner(released, hp | {"l2": hp["weight_decay"]}, spec, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def our_epoch(stage: str) -> tuple[float, float]:
        sync()
        start = time.perf_counter()
        model.train()
        for batch in train_batches:
            train_step(method, model, optimizer, [batch], [stage], [ctx])
        sync()
        middle = time.perf_counter()
        predict(model, method, ours["test"], stage)
        sync()
        return middle - start, time.perf_counter() - middle

    def released_epoch(stage: str) -> tuple[float, float]:
        first = stage == method.stages[0]
        sync()
        start = time.perf_counter()
        for batch in released_train:
            reference.step(batch, first)
        sync()
        middle = time.perf_counter()
        for batch in released_test:
            reference.evaluate(batch, first)
        sync()
        return middle - start, time.perf_counter() - middle

    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for stage in method.stages:  # warm-up
        released_epoch(stage)
        our_epoch(stage)
    for r in range(repeats):
        for stage in method.stages:
            pair = [("released", released_epoch), ("comp-ref", our_epoch)]
            for who, epoch in pair if r % 2 == 0 else pair[::-1]:
                times.setdefault((who, stage), []).append(epoch(stage))

    def median(who: str, stage: str, part: int | None = None) -> float:
        values = times[who, stage]
        return statistics.median(sum(v) if part is None else v[part] for v in values)

    rows = int(sum(batch.valid.sum() for batch in train_batches))
    print(
        f"\nreleased ComP vs comp-ref ({shape}): an epoch = {len(train_batches)} training "
        f"batches of {size} dialogues ({rows} utterances; the released model pads every batch "
        f"to {corpus.pad_length}) + the test split; seconds, median of "
        f"{plural(repeats, 'epoch')}, the two alternating"
    )
    print(
        "\n| stage | released train | released test | comp-ref train | comp-ref test "
        "| released s/epoch | comp-ref s/epoch | speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for stage in method.stages:
        parts = [median(who, stage, k) for who in ("released", "comp-ref") for k in (0, 1)]
        theirs, mine = median("released", stage), median("comp-ref", stage)
        shown = " | ".join(f"{v:.3f}" for v in (*parts, theirs, mine))
        print(f"| {stage} | {shown} | {theirs / mine:.2f}x |")
    theirs = sum(median("released", s) for s in method.stages)
    mine = sum(median("comp-ref", s) for s in method.stages)
    gap = " |" * 4
    print(f"| one epoch of each stage |{gap} {theirs:.3f} | {mine:.3f} | {theirs / mine:.2f}x |")


# ---- the harness: one cell, then a grid --------------------------------------------------------
def save_record(path: Path | None, record: dict[str, Any]) -> None:
    """Appends one measurement for `extrapolate`, as soon as it is made (a run stopped by a
    time limit keeps what it measured)."""
    if path is not None:
        with path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def time_cells(
    root: Path, shape: str, methods: list[str], args: argparse.Namespace, device: torch.device
) -> None:
    """Times the cells and records what `extrapolate` needs: seconds per epoch per method (a
    cell alone, its compile and warm-up included) and the concurrent grid's speed-up."""
    base = {
        "datasets": [shape],
        "data_root": str(root),
        "missing_rates": [args.missing_rate],
        "epochs": args.epochs,
        "folds": [0],
    }
    work = args.work / shape
    print(f"\none cell alone ({shape}, {plural(args.epochs, 'epoch')}):")
    print("\n| method | s/epoch | cell wall s | cells/hour | params | peak memory | GPU usage |")
    print("|---|---:|---:|---:|---:|---:|---|")
    measured = {"shape": shape, "device": describe_device(device)}
    for method in methods:
        out = work / f"one-{method}"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        wall, sampler = run(base | {"methods": [method], "seeds": [0]}, out, device, 1)
        rows = read_results(out)
        ok = rows[rows["status"] == "ok"]
        if ok.empty:
            print(f"| {method} | failed: {rows['error'].iloc[0]} |")
            continue
        seconds = float(ok["train_seconds"].iloc[0])
        save_record(args.record, measured | {"epoch_seconds": {method: seconds / args.epochs}})
        if device.type == "cuda":
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB allocated"
        else:
            peak = f"{max(sampler.memory, default=0):.0f} MiB resident"
        usage = sampler.describe() if device.type == "cuda" else "- (a CPU)"
        print(
            f"| {method} | {seconds / args.epochs:.3f} | {wall:.1f} | {3600 / wall:.0f} | "
            f"{int(ok['parameters'].iloc[0]):,} | {peak} | {usage} |"
        )
    if args.grid_cells < 1:
        return
    method = args.grid_method or methods[0]
    cells = base | {
        "methods": [method],
        "seeds": list(range(1, args.grid_cells + 1)),
        "epochs": args.grid_epochs,
    }
    serial = run(cells, work / "grid-serial", device, 1)
    concurrent = run(cells, work / "grid-concurrent", device, args.jobs)
    ways = [("one at a time", serial), (f"{args.jobs} concurrent", concurrent)]
    stacks = create_method(method, resolve_dataset(shape).profile).stackable
    if stacks:  # every cell in one stack, in one process
        stacked = run(cells, work / "grid-stacked", device, 1, args.grid_cells)
        ways.append((f"one stack of {args.grid_cells}", stacked))
    each = plural(args.grid_epochs, "epoch")
    print(f"\ngrid of {args.grid_cells} {method} cells ({shape}, {each} each):")
    for label, (wall, sampler) in ways:
        usage = sampler.describe()
        print(
            f"  {label}: {wall:.1f} s, {args.grid_cells / wall * 3600:.0f} cells/hour"
            + (f", {usage}" if usage else "")
        )
    print(f"  concurrent / one at a time: {serial[0] / concurrent[0]:.2f}x the cells per hour")
    concurrency = {"jobs": args.jobs, "speedup": serial[0] / concurrent[0]}
    record = measured | {"epoch_seconds": {}, "concurrency": concurrency}
    if stacks:
        speedup = serial[0] / stacked[0]
        print(f"  stacked / one at a time: {speedup:.2f}x the cells per hour")
        compared, diff, epochs = rows_differ(work / "grid-serial", work / "grid-stacked")
        print(f"  rows: {compared} compared, largest difference {diff:.2e}, {epochs} epochs differ")
        record["stacking"] = {"method": method, "size": args.grid_cells, "speedup": speedup}
    save_record(args.record, record)


# ---- the paper grid, extrapolated --------------------------------------------------------------
# Each dataset's cells are timed on its own shape where it was measured, else on a smaller one,
# scaled by the larger of the ratios of videos (batches: a GPU step's cost barely depends on
# its size here) and of utterances (arithmetic: a CPU's cost).
MEASURED_AS = {
    "iemocap4": ("iemocap4", "iemocap6"),
    "iemocap6": ("iemocap6", "iemocap4"),
    "mosi": ("mosi",),
    "mosei": ("mosei", "mosi"),
}


def corpus_size(labels: Path, shape: str) -> tuple[int, int]:
    """Videos (dialogues) and utterances of a shape, from its label pickle."""
    if shape == "mosei" and not (labels / resolve_dataset(shape).label_file).exists():
        return MOSEI_VIDEOS, MOSEI_UTTERANCES
    videos = load_label_pickle(labels / resolve_dataset(shape).label_file)[0]
    return len(videos), sum(len(u) for u in videos.values())


def extrapolate(records: list[dict[str, Any]], grid_path: str, labels: Path) -> dict[str, float]:
    """The device time of a grid file's cells from measured seconds per epoch: each cell costs
    its method's epochs (its dataset's profile) times the method's seconds per epoch on the
    dataset's shape (else the first like it where the method was measured, scaled by the
    size), divided by the larger of that shape's concurrent speed-up and the method's stacked
    speed-up measured on it, where they gained. Prints them and returns the seconds per
    dataset."""
    measured: dict[str, dict[str, Any]] = {}  # shape -> its records merged
    for record in records:
        into = measured.setdefault(
            record["shape"], {"epoch_seconds": {}, "concurrency": None, "stacking": {}}
        )
        into["epoch_seconds"].update(record["epoch_seconds"])
        into["concurrency"] = record.get("concurrency") or into["concurrency"]
        if "stacking" in record:
            into["stacking"][record["stacking"]["method"]] = record["stacking"]

    def scale(dataset: str, shape: str) -> float:
        (videos, utterances), (base_videos, base_utterances) = (
            corpus_size(labels, dataset),
            corpus_size(labels, shape),
        )
        return max(videos / base_videos, utterances / base_utterances)

    by_dataset: dict[str, float] = {}
    cells = 0
    used: dict[str, dict[str, set[str]]] = {}  # dataset -> shape -> methods timed on it
    missing: dict[str, set[str]] = {}  # dataset -> methods measured on no shape like it
    for cell in load_grid(grid_path).cells():
        name = cell.method.name
        shapes = [s for s in MEASURED_AS.get(cell.dataset, ()) if s in measured]
        shapes = [s for s in shapes if name in measured[s]["epoch_seconds"]]
        if not shapes:
            missing.setdefault(cell.dataset, set()).add(name)
            continue
        shape = shapes[0]
        profile = resolve_dataset(cell.dataset).profile
        method = create_method(name, profile, **dict(cell.method.overrides))
        epochs = cell.epochs or method.hp["epochs"]
        # The runner's better mode: stacked or concurrent cells where they gained, else one at
        # a time.
        stacked = measured[shape]["stacking"].get(name, {}).get("speedup", 1.0)
        concurrent = (measured[shape]["concurrency"] or {}).get("speedup", 1.0)
        speedup = max(1.0, stacked, concurrent)
        per_epoch = measured[shape]["epoch_seconds"][name] * scale(cell.dataset, shape)
        by_dataset[cell.dataset] = by_dataset.get(cell.dataset, 0.0) + per_epoch * epochs / speedup
        used.setdefault(cell.dataset, {}).setdefault(shape, set()).add(name)
        cells += 1
    devices = sorted({r["device"] for r in records})
    print(f"\npaper grid ({grid_path}), extrapolated from {', '.join(devices)}:")
    for dataset, seconds in by_dataset.items():
        parts = []
        for shape, names in used[dataset].items():
            concurrency = measured[shape]["concurrency"]
            how = "one at a time"
            if concurrency and concurrency["speedup"] > 1:
                how = f"{concurrency['jobs']} concurrent: {concurrency['speedup']:.2f}x"
            for stacked in measured[shape]["stacking"].values():
                if stacked["method"] in names and stacked["speedup"] > 1:
                    how += f"; {stacked['method']} in stacks of {stacked['size']}: "
                    how += f"{stacked['speedup']:.2f}x"
            size = "" if shape == dataset else f" x{scale(dataset, shape):.2f} its size,"
            parts.append(f"{plural(len(names), 'method')} on {shape},{size} {how}")
        print(f"  {dataset}: {seconds / 3600:.2f} device-hours ({'; '.join(parts)})")
    total = sum(by_dataset.values())
    print(f"  {plural(cells, 'cell')}: {total / 3600:.2f} device-hours in all")
    for dataset, names in sorted(missing.items()):
        print(f"  left out, no shape like {dataset} measured: {', '.join(sorted(names))}")
    return by_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=Path("../shared/data/gcnet-labels"))
    parser.add_argument("--shape", default="mosi", help="mosi, iemocap4, iemocap6 (a list)")
    parser.add_argument(
        "--methods", default="comp-ref", help="a list, 'all', or 'all-but:NAME,...'"
    )
    parser.add_argument("--epochs", type=int, default=None, help="per cell (CPU default 2)")
    parser.add_argument("--grid-epochs", type=int, default=None, help="default: --epochs")
    parser.add_argument("--missing-rate", default="0.7")
    parser.add_argument("--grid-cells", type=int, default=None, help="cells in the grid; 0: none")
    parser.add_argument("--jobs", type=int, default=None, help="concurrent cells in the grid")
    parser.add_argument("--grid-method", default=None, help="the grid's method (default: first)")
    parser.add_argument("--released", type=Path, default=None, help="a released ComP checkout")
    parser.add_argument("--repeats", type=int, default=None, help="epochs timed per stage")
    parser.add_argument(
        "--train-batches", type=int, default=None, help="released comparison: batches per epoch"
    )
    parser.add_argument("--no-cells", action="store_true", help="the released comparison only")
    parser.add_argument(
        "--default-grid",
        action="store_true",
        help="only time the default grid with --stack 1 and with stacking",
    )
    parser.add_argument("--record", type=Path, default=None, help="append the cells' figures")
    parser.add_argument(
        "--extrapolate",
        type=Path,
        nargs="+",
        default=None,
        help="only print the paper grid's device time from --record files",
    )
    parser.add_argument(
        "--grid-file", default="paper", help="for --extrapolate: a grid file or built-in name"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder")
    args = parser.parse_args()
    if args.extrapolate:
        lines = [line for p in args.extrapolate for line in p.read_text().splitlines()]
        extrapolate([json.loads(line) for line in lines if line], args.grid_file, args.labels)
        return

    device = resolve_device(args.device)
    defaults = FULL if device.type == "cuda" else REDUCED
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.grid_epochs = args.grid_epochs or args.epochs
    args.work = args.work or Path(tempfile.mkdtemp(prefix="imerbench-speed-"))
    print(
        f"device {describe_device(device)}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"widths 512/1024/1024; MR {args.missing_rate}"
    )
    methods = list_methods() if args.methods == "all" else args.methods.split(",")
    if args.methods.startswith("all-but:"):
        left_out = args.methods.removeprefix("all-but:").split(",")
        methods = [m for m in list_methods() if m not in left_out]
    if args.default_grid:
        time_stacking(args, device)
        return
    for shape in args.shape.split(","):
        root = build_layout(args.labels, shape, args.work / "data")
        if args.released is not None:
            rate = float(args.missing_rate)
            compare_with_released(
                root, shape, args.released, device, rate, args.repeats, args.train_batches
            )
        if not args.no_cells:
            time_cells(root, shape, methods, args, device)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
