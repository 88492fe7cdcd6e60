"""Experiment trackers (`--log-to tensorboard,mlflow`): every cell trained by a run is logged
epoch by epoch as it trains (its curve rows, as `curves.csv` will hold them) and, when it
ends, with its final scores (its rows) and any epochs that did not reach this process in
time (under Ray, whose tasks report cells only, all of them), read from its `curves.csv`.

TensorBoard: one event folder per cell, `<out>/tensorboard/<dataset>/<method>/<cell>`
(`tensorboard --logdir <out>/tensorboard`). MLflow: one run per cell in the experiment named
after the grid, in the tracking store `MLFLOW_TRACKING_URI` names, else a local file store in
`<out>/mlruns` (`mlflow ui --backend-store-uri <out>/mlruns`). Both are optional extras; a
missing one is refused before any training.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from imerbench.compute import CellReport
from imerbench.errors import ImerbenchError
from imerbench.grid import Cell
from imerbench.selection import HistoryRow

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # name -> module it needs


def parse_trackers(text: str | None) -> tuple[str, ...]:
    """`tensorboard,mlflow` -> the names, each checked and importable."""
    names = tuple(dict.fromkeys(t.strip() for t in (text or "").split(",") if t.strip()))
    for name in names:
        if name not in TRACKERS:
            raise ImerbenchError(f"--log-to {name}: use tensorboard, mlflow or both (a,b)")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ImerbenchError(
                f"--log-to {name} needs the {TRACKERS[name]} package: "
                f"pip install 'imerbench[{name}]'"
            )
    return names


def curve_points(folder: Path) -> Iterator[tuple[str, int, float]]:
    """(tag, epoch, value) of a cell's per-epoch curves as written: `split/condition/output/
    metric`."""
    path = folder / "curves.csv"
    if not path.exists():
        return
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            tag = "/".join(row[k] for k in ("split", "condition", "output", "metric"))
            yield tag, int(row["epoch"]), float(row["value"])


def epoch_points(rows: list[HistoryRow]) -> Iterator[tuple[str, int, float]]:
    """The same points from an epoch's curve rows, as training reports them."""
    for epoch, _, split, condition, output, metric, value in rows:
        yield f"{split}/{condition}/{output}/{metric}", int(epoch), float(value)


def final_scores(report: CellReport) -> dict[str, float]:
    """The fused scores under the cell's own mask, per selection: `final/<selection>/<metric>`."""
    return {
        f"final/{r['selection']}/{r['metric']}": float(r["value"])
        for r in report.rows
        if r.get("condition") == "mask" and r.get("output") == "fused" and r.get("status") == "ok"
    }


class Tracker(Protocol):
    def log_epoch(self, cell: Cell, folder: Path, rows: list[HistoryRow]) -> None: ...

    def log_cell(self, report: CellReport, folder: Path) -> None: ...


class Streamed:
    """The epochs of each cell a tracker has logged, so that at its end the rest of its
    curves (epochs that never reached this process: Ray, or a worker's last epochs still
    in the queue when its cell was reported) come from its `curves.csv`."""

    def __init__(self) -> None:
        self.last: dict[Cell, int] = {}

    def saw(self, cell: Cell, rows: list[HistoryRow]) -> None:
        self.last[cell] = max([self.last.get(cell, 0), *(int(r[0]) for r in rows)])

    def missed(self, cell: Cell, folder: Path) -> list[tuple[str, int, float]]:
        last = self.last.pop(cell, 0)
        return [p for p in curve_points(folder) if p[1] > last]


class TensorBoardTracker(Streamed):
    """One event folder per cell, open while the cell trains."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.root = out / "tensorboard"
        self.writers: dict[Cell, Any] = {}

    def writer(self, cell: Cell, folder: Path) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        if cell not in self.writers:
            where = self.root / cell.dataset / folder.parent.name / folder.name
            self.writers[cell] = SummaryWriter(log_dir=str(where))
        return self.writers[cell]

    def log_epoch(self, cell: Cell, folder: Path, rows: list[HistoryRow]) -> None:
        writer = self.writer(cell, folder)
        for tag, epoch, value in epoch_points(rows):
            writer.add_scalar(tag, value, epoch)
        writer.flush()
        self.saw(cell, rows)

    def log_cell(self, report: CellReport, folder: Path) -> None:
        writer = self.writer(report.cell, folder)
        try:
            writer.add_text("cell", f"{report.cell.describe()}: {report.status}, {report.summary}")
            for tag, epoch, value in self.missed(report.cell, folder):
                writer.add_scalar(tag, value, epoch)
            for tag, value in final_scores(report).items():
                writer.add_scalar(tag, value, 0)
        finally:
            self.writers.pop(report.cell).close()


class MLflowTracker(Streamed):
    """One MLflow run per cell, created at its first epoch and ended with it."""

    def __init__(self, out: Path, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        super().__init__()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"file:{(out / 'mlruns').resolve()}"
        if uri.startswith("file:"):  # MLflow keeps its local file store behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment = (
            found.experiment_id if found else self.client.create_experiment(experiment)
        )
        self.runs: dict[Cell, str] = {}

    def run(self, cell: Cell) -> str:
        from mlflow.entities import Param

        if cell not in self.runs:
            run_id = self.client.create_run(self.experiment, run_name=cell.describe()).info.run_id
            params: dict[str, Any] = {
                "method": cell.method.label, "dataset": cell.dataset, "fold": cell.fold,
                "mask": str(cell.mask), "seed": cell.seed, "protocol": cell.protocol,
            }  # fmt: skip
            params |= {f"hp.{k}": v for k, v in cell.method.overrides}
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
            self.runs[cell] = run_id
        return self.runs[cell]

    def log_points(self, run_id: str, points: Iterator[tuple[str, int, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, step, value in points]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])

    def log_epoch(self, cell: Cell, folder: Path, rows: list[HistoryRow]) -> None:
        self.log_points(self.run(cell), epoch_points(rows))
        self.saw(cell, rows)

    def log_cell(self, report: CellReport, folder: Path) -> None:
        run_id = self.run(report.cell)
        self.log_points(run_id, iter(self.missed(report.cell, folder)))
        finals = ((tag, 0, value) for tag, value in final_scores(report).items())
        self.log_points(run_id, finals)
        self.client.set_terminated(run_id, "FINISHED" if report.status == "ok" else "FAILED")
        del self.runs[report.cell]


def make_trackers(names: tuple[str, ...], out: Path, experiment: str) -> list[Tracker]:
    trackers: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(out))
        elif name == "mlflow":
            trackers.append(MLflowTracker(out, experiment))
    return trackers
