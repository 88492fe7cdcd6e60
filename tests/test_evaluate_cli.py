"""`imerbench evaluate`: a saved cell scored again, under its stored mask (its rows' numbers),
a forced subset or a GCNet --test_mask file, read without unpickling anything unsafe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imerbench.grid_file import grid_from_dict
from imerbench.results import read_results
from imerbench.runner import RunOptions, run_grid


@pytest.fixture(scope="module")
def cell(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("evaluate-run")
    raw = {"methods": ["late-fusion"], "missing_rates": [0.5], "seeds": [0], "epochs": 2}
    run_grid(grid_from_dict(raw, "test"), RunOptions(out=out, device="cpu", jobs=1))
    (folder,) = (out / "cells" / "synthetic" / "late-fusion").iterdir()
    return folder


def fused(out: str) -> dict[str, float]:
    """The fused row of the printed table: metric -> value."""
    lines = out.splitlines()
    header = [c.strip() for c in lines[1].strip("|").split("|")][1:]
    row = next(line for line in lines if line.startswith("| fused |"))
    values = [float(c) for c in row.strip("|").split("|")[1:]]
    return dict(zip(header, values, strict=True))


def row_value(cell: Path, condition: str, metric: str = "wa") -> float:
    df = read_results(cell.parents[3])
    keep = (df["selection"] == "val") & (df["condition"] == condition) & (df["output"] == "fused")
    (value,) = df[keep & (df["metric"] == metric)]["value"]
    return float(value)


def test_the_stored_mask_and_a_forced_subset_give_the_rows_numbers(cell: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli("evaluate", str(cell))
    assert code == 0 and "under its stored mask" in out
    assert fused(out)["wa"] == pytest.approx(row_value(cell, "mask"), abs=1e-4)
    assert fused(out)["wf1"] == pytest.approx(row_value(cell, "mask", "wf1"), abs=1e-4)
    code, out, _ = run_cli("evaluate", str(cell), "--condition", "at")
    assert code == 0 and "missing rate 0.333" in out
    assert fused(out)["wa"] == pytest.approx(row_value(cell, "at"), abs=1e-4)


def test_a_gcnet_test_mask_file_is_scored_as_given(cell: Path, run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exported = tmp_path / "test_mask.npz"
    args = ["--dataset", "synthetic", "--missing-rate", "0.5", "--seed", "0"]
    masks = str(cell.parents[3] / "masks")
    assert run_cli("masks", "export", *args, "--out", str(exported), "--masks-dir", masks).code == 0
    code, out, _ = run_cli("evaluate", str(cell), "--test-mask", str(exported))
    assert code == 0 and fused(out)["wa"] == pytest.approx(row_value(cell, "mask"), abs=1e-4)
    # Audio and video shown, text hidden, at every utterance: the forced subset av.
    names = np.load(exported, allow_pickle=True)["name2mask"].tolist()  # our own file
    no_text = {name: [1, 0, 1] for name in names}
    edited = tmp_path / "no_text.npz"
    holder = np.empty((), dtype=object)
    holder[()] = no_text
    np.savez(edited, name2mask=holder)
    code, out, _ = run_cli("evaluate", str(cell), "--test-mask", str(edited))
    assert code == 0
    assert fused(out)["wa"] == pytest.approx(row_value(cell, "av"), abs=1e-4)
    partial = tmp_path / "partial.npz"
    holder[()] = dict(list(no_text.items())[:10])
    np.savez(partial, name2mask=holder)
    code, _, err = run_cli("evaluate", str(cell), "--test-mask", str(partial))
    assert code == 2 and f"has no mask for {len(no_text) - 10} of the {len(no_text)}" in err


class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, (f"touch {self.target}",))


def test_a_doctored_mask_file_runs_nothing(cell: Path, run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "ran"
    holder = np.empty((), dtype=object)
    holder[()] = {"x": _Payload(target)}
    doctored = tmp_path / "doctored.npz"
    np.savez(doctored, name2mask=holder)
    code, _, err = run_cli("evaluate", str(cell), "--test-mask", str(doctored))
    assert code == 2 and "refuses to load class" in err and len(err.strip().splitlines()) == 1
    assert not target.exists()


def test_bad_arguments_are_one_line(cell: Path, run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run_cli("evaluate", str(cell), "--condition", "ta")
    assert code == 2 and "unknown condition 'ta'" in err
    code, _, err = run_cli("evaluate", str(tmp_path))
    assert code == 2 and "is not a cell folder" in err
    code, _, err = run_cli("evaluate", str(cell), "--condition", "a", "--test-mask", "x.npz")
    assert code == 2 and "give one of them" in err
