"""`--precision bf16`: bfloat16 autocast in training and evaluation, scores kept apart."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_corpus import splits_for, tiny_corpus

from imerbench.data import MaskStore, SplitData, parse_mask_spec
from imerbench.errors import ImerbenchError
from imerbench.evaluation import predict
from imerbench.grid_file import grid_from_dict
from imerbench.registry import create_method, list_methods
from imerbench.runner import RunOptions, run_grid
from imerbench.step import autocast, data_spec
from imerbench.training import train_cell

TOLERANCE = 0.03  # |wa(bf16) - wa(fp32)| on the same cell


def grid(precision: str):
    raw = {"name": "p", "methods": ["early-fusion"], "missing_rates": [0.3], "seeds": [0],
           "epochs": 2, "precision": precision}  # fmt: skip
    return grid_from_dict(raw, "test")


@pytest.mark.slow
def test_bf16_scores_like_fp32_and_never_mixes_with_it(tmp_path: Path) -> None:
    from imerbench.rescore import rescore_cell

    for precision in ("fp32", "bf16"):
        reports = []
        run_grid(grid(precision), RunOptions(out=tmp_path, device="cpu"), reports.append)
        assert [r.status for r in reports] == ["ok"]  # bf16 never resumes the fp32 cell
    # Two cells in one folder: the precision is part of the configuration and its hash.
    folders = sorted(tmp_path.glob("cells/synthetic/early-fusion/*"))
    assert len(folders) == 2
    configs = {json.loads((f / "cell.json").read_text())["precision"]: f for f in folders}
    assert set(configs) == {"fp32", "bf16"}
    frames = {p: pd.read_csv(f / "rows.csv") for p, f in configs.items()}
    hashes = {p: set(df["config_hash"]) for p, df in frames.items()}
    assert len(hashes["fp32"]) == len(hashes["bf16"]) == 1 and hashes["fp32"] != hashes["bf16"]
    assert "bf16" in (configs["bf16"] / "log.txt").read_text().splitlines()[0]

    def wa(df: pd.DataFrame, selection: str) -> float:
        rows = df.query(
            "selection == @selection and condition == 'mask' and output == 'fused' "
            "and metric == 'wa'"
        )
        assert len(rows) == 1
        return float(rows["value"].iloc[0])

    for selection in ("val", "test-oracle"):
        assert abs(wa(frames["bf16"], selection) - wa(frames["fp32"], selection)) < TOLERANCE
    # bf16 really ran: the two cells' scores are not all identical.
    key = ["selection", "condition", "output", "metric"]
    both = frames["fp32"].merge(frames["bf16"], on=key, suffixes=("_32", "_16"))
    assert len(both) == len(frames["fp32"])
    assert (both["value_32"] != both["value_16"]).any()
    # Rescoring the bf16 weights uses the cell's precision and gives back its rows.
    rows = frames["bf16"].query("selection == 'val'")
    scores = rescore_cell(configs["bf16"], "val")
    for r in rows.itertuples():
        assert scores[r.condition][r.output][r.metric] == pytest.approx(r.value, abs=1e-6)


def test_bf16_forward_runs_in_bfloat16_and_predictions_come_back_float32() -> None:
    corpus = tiny_corpus(num_dialogues=12, seed=1)
    method = create_method("early-fusion", "quick")
    model = method.build(data_spec(corpus))
    data = SplitData(corpus, corpus.fold(0).get("test"), "cpu")
    data = data.with_mask(MaskStore(None).get(corpus, 0, "test", parse_mask_spec("0.0"), 0))
    batch = next(data.batches(4, None, method.fixed_length))
    with autocast("cpu", "bf16"):
        assert model(batch, method.stages[-1]).fused.dtype == torch.bfloat16
        preds = predict(model, method, data, method.stages[-1])
    assert all(p.dtype == torch.float32 for p in preds.values())
    with autocast("cpu", "fp32"):
        assert model(batch, method.stages[-1]).fused.dtype == torch.float32


@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_and_scores_under_bf16(name: str) -> None:
    corpus = tiny_corpus(num_dialogues=24, seed=3)
    method = create_method(name, "quick").with_epochs(2)
    pad_to = corpus.pad_length if method.fixed_length else None
    spec, splits = parse_mask_spec("0.5"), splits_for(corpus, "0.5", pad_to=pad_to)
    outcome = train_cell(
        method, corpus, splits, fold=0, mask=spec, seed=0, primary="wa", precision="bf16"
    )
    scores = outcome.selected["val"]
    assert 0.0 <= scores.test["fused"]["wa"] <= 1.0
    assert set(scores.conditions) >= {"a", "t", "v", "atv"}
    assert all(v.dtype == torch.float32 for v in scores.state.values() if v.is_floating_point())


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ImerbenchError, match="precision 'fp16'"):
        grid("fp16")
    with pytest.raises(ValueError, match="fp16"):
        autocast("cpu", "fp16")
