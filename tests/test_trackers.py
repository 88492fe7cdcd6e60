"""`--log-to tensorboard,mlflow`: what a run logs, read back with each library's own reader."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from imerbench.errors import ImerbenchError
from imerbench.grid_file import grid_from_dict
from imerbench.results import read_results
from imerbench.runner import RunOptions, run_grid
from imerbench.trackers import parse_trackers

CURVE = "val/mask/fused/wa"


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("tracked")
    raw = {"name": "tracked", "methods": ["late-fusion", "early-fusion"],
           "missing_rates": [0.5], "seeds": [0], "epochs": 3}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        # Two workers: epochs cross a queue, and each cell's curves must still be whole.
        options = RunOptions(out=out, device="cpu", jobs=2, log_to=("tensorboard", "mlflow"))
        run_grid(grid_from_dict(raw, "test"), options)
    return out


def expected(out: Path, method: str) -> tuple[pd.Series, float]:
    """The cell's val wa per epoch (its curves.csv) and its final val wa (its row)."""
    (folder,) = (out / "cells" / "synthetic" / method).iterdir()
    curves = pd.read_csv(folder / "curves.csv")
    keep = (curves["split"] == "val") & (curves["condition"] == "mask")
    keep &= (curves["output"] == "fused") & (curves["metric"] == "wa")
    rows = read_results(out)
    final = rows[(rows["method"] == method) & (rows["selection"] == "val")
                 & (rows["condition"] == "mask") & (rows["output"] == "fused")
                 & (rows["metric"] == "wa")]["value"]  # fmt: skip
    return curves[keep].set_index("epoch")["value"], float(final.iloc[0])


def test_tensorboard_event_files_hold_each_cell_s_curves_and_scores(logged: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for method in ("late-fusion", "early-fusion"):
        (folder,) = (logged / "tensorboard" / "synthetic" / method).iterdir()
        events = EventAccumulator(str(folder))
        events.Reload()
        curve, final = expected(logged, method)
        points = {e.step: e.value for e in events.Scalars(CURVE)}
        assert points == pytest.approx(curve.to_dict())
        assert list(points) == [1, 2, 3]
        assert events.Scalars("final/val/wa")[0].value == pytest.approx(final)


def test_mlflow_store_holds_one_run_per_cell(logged: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file:{logged / 'mlruns'}")
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        method = run.data.params["method"]
        curve, final = expected(logged, method)
        history = client.get_metric_history(run.info.run_id, CURVE)
        assert {m.step: m.value for m in history} == pytest.approx(curve.to_dict())
        assert run.data.metrics["final/val/wa"] == pytest.approx(final)
        assert run.data.params["mask"] == "0.5" and run.info.run_name.startswith(method)


def test_an_unknown_or_missing_tracker_is_refused_before_any_work(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImerbenchError, match="use tensorboard, mlflow or both"):
        parse_trackers("wandb")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name == "mlflow" else real(name))  # fmt: skip
    with pytest.raises(ImerbenchError, match=r"pip install 'imerbench\[mlflow\]'"):
        parse_trackers("tensorboard,mlflow")


def test_curves_reach_the_trackers_while_the_cell_trains(tmp_path: Path) -> None:
    """At a cell's third epoch, its first two are already in its TensorBoard folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = {"methods": ["late-fusion"], "missing_rates": [0.5], "seeds": [0], "epochs": 3}
    seen: list[list[int]] = []

    def on_epoch(cell, epoch, cap, rows) -> None:  # type: ignore[no-untyped-def]
        if epoch == 3:
            (folder,) = (tmp_path / "tensorboard" / "synthetic" / "late-fusion").iterdir()
            events = EventAccumulator(str(folder))
            events.Reload()
            seen.append([e.step for e in events.Scalars(CURVE)])

    options = RunOptions(out=tmp_path, device="cpu", jobs=1, log_to=("tensorboard",))
    run_grid(grid_from_dict(raw, "test"), options, on_epoch=on_epoch)
    assert seen == [[1, 2]]
