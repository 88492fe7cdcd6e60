"""`--jobs-per-device`: how many workers run, on which device, with what memory share.

This machine has no GPU, so CUDA is faked where only the arithmetic is under test (device
counts, round-robin assignment, memory shares); the worker pool itself runs on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from imerbench import runner
from imerbench.devices import (
    CONTEXT_RESERVE,
    JOBS_PER_DEVICE,
    assign_devices,
    limit_device_memory,
    memory_fraction,
)
from imerbench.grid_file import grid_from_dict
from imerbench.plan import RunOptions
from imerbench.results import ResultStore
from imerbench.runner import run_grid


@pytest.fixture
def three_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)


def test_jobs_per_device_multiplies_the_visible_devices(three_gpus: None, tmp_path: Path) -> None:
    auto = RunOptions(out=tmp_path, jobs=0)  # device auto: every visible GPU
    assert auto.cuda_devices() == [0, 1, 2]
    assert auto.resolved_jobs_per_device() == JOBS_PER_DEVICE
    assert auto.resolved_jobs() == 3 * JOBS_PER_DEVICE
    two = RunOptions(out=tmp_path, device="cuda", jobs=0, jobs_per_device=2)
    assert two.resolved_jobs() == 6
    assert two.worker_devices(6) == ["cuda:0", "cuda:1", "cuda:2"] * 2
    pinned = RunOptions(out=tmp_path, device="cuda:1", jobs=0, jobs_per_device=3)
    assert pinned.cuda_devices() == [1]
    assert pinned.resolved_jobs() == 3
    assert pinned.worker_devices(3) == ["cuda:1"] * 3
    # An explicit --jobs is the total, still spread over the devices.
    total = RunOptions(out=tmp_path, device="cuda", jobs=5, jobs_per_device=8)
    assert total.resolved_jobs() == 5
    assert total.worker_devices(5) == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]


def test_on_cpu_jobs_per_device_is_ignored(tmp_path: Path) -> None:
    assert RunOptions(out=tmp_path, device="cpu", jobs=2, jobs_per_device=8).resolved_jobs() == 2
    automatic = RunOptions(out=tmp_path, device="cpu", jobs=0, jobs_per_device=8)
    assert automatic.resolved_jobs() == max(1, os.cpu_count() or 1)
    assert automatic.cuda_devices() == []
    assert automatic.worker_devices(3) == ["cpu"] * 3


@pytest.mark.parametrize("workers,devices", [(1, [0]), (5, [0, 2]), (7, [3, 1, 0]), (2, [0, 1, 2])])
def test_round_robin_balances_devices(workers: int, devices: list[int]) -> None:
    assigned = assign_devices(workers, devices)
    assert len(assigned) == workers and set(assigned) <= set(devices)
    counts = [assigned.count(d) for d in devices]
    assert max(counts) - min(counts) <= 1
    assert assigned[: min(workers, len(devices))] == devices[:workers]
    with pytest.raises(ValueError):
        assign_devices(2, [])


def test_memory_shares_fit_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    for n in (1, 2, 4, 8):
        assert n * memory_fraction(n) == pytest.approx(1 - CONTEXT_RESERVE)
    calls = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d))
    )
    limit_device_memory(torch.device("cuda:1"), 4)
    limit_device_memory(torch.device("cuda:0"), 1)  # alone on its device: no cap
    limit_device_memory(torch.device("cpu"), 4)
    assert calls == [(memory_fraction(4), torch.device("cuda:1"))]


def test_cli_passes_jobs_per_device_and_refuses_negative(
    run_cli, monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path
) -> None:
    code, _, err = run_cli("run", "--jobs-per-device", "-1", "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--jobs-per-device -1" in err
    seen: list[RunOptions] = []

    def fake_run_grid(grid, options, on_cell, on_epoch=None):
        seen.append(options)
        return ResultStore(options.out)

    monkeypatch.setattr(runner, "run_grid", fake_run_grid)
    args = ["run", "--methods", "early-fusion", "--device", "cpu", "--out", str(tmp_path)]
    code, _, _ = run_cli(*args, "--jobs-per-device", "3")
    assert code == 0 and seen[-1].jobs_per_device == 3 and seen[-1].executor == "local"
    code, _, _ = run_cli(*args)
    assert code == 0 and seen[-1].jobs_per_device == 0


def test_worker_pool_takes_one_device_slot_per_worker(tmp_path: Path) -> None:
    raw = {"name": "t", "methods": ["early-fusion", "unimodal-a"], "missing_rates": [0.3],
           "seeds": [0], "epochs": 1}  # fmt: skip
    reports = []
    options = RunOptions(out=tmp_path, device="cpu", jobs=2, jobs_per_device=5)
    run_grid(grid_from_dict(raw, "test"), options, reports.append)
    assert sorted(r.status for r in reports) == ["ok", "ok"]
    df = pd.read_csv(tmp_path / "results.csv")
    assert df["device"].str.startswith("cpu").all() and (df["attempts"] == 1).all()
