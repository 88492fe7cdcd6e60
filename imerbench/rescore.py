"""Rebuild a finished cell's model from its folder and score it again.

A cell folder holds its full configuration (`cell.json`) and the selected weights
(`weights-<selection>.pt`), so any row can be recomputed, or the model scored on new
conditions, without retraining.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from imerbench.balance.compose import balanced
from imerbench.data import MaskStore, SplitData, load_dataset, parse_mask_spec, resolve_dataset
from imerbench.errors import ImerbenchError
from imerbench.evaluation import Scores, evaluate, subset_scores
from imerbench.registry import create_method, get_entry
from imerbench.step import autocast, data_spec


def rescore_cell(
    cell_dir: str | Path,
    selection: str = "val",
    device: str = "cpu",
    masks_dir: str | Path | None = None,
) -> dict[str, Scores]:
    """{condition: scores} of the cell's selected weights on its test split: "mask" (the
    stored masks) plus every forced subset and pattern, as the rows record them."""
    cell_dir = Path(cell_dir)
    weights = cell_dir / f"weights-{selection}.pt"
    if not weights.exists():
        raise ImerbenchError(f"{weights} does not exist; the run kept no {selection} weights")
    config = json.loads((cell_dir / "cell.json").read_text(encoding="utf-8"))
    info = resolve_dataset(config["dataset"])
    fixed = get_entry(config["method"]).fixed
    hparams = {k: v for k, v in config["hparams"].items() if k not in fixed}
    method = create_method(config["method"], info.profile, **hparams)
    if "balance" in config:
        method = balanced(method, config["balance"]["strategy"], config["balance"]["hparams"])
    corpus = load_dataset(
        info.id,
        config.get("data_root"),
        feature_names=config.get("features"),
        widths=config.get("widths") or "small",
        missing_features=config.get("missing_features", "refuse"),
    )
    fold = corpus.fold(config["fold"])
    pad_to = corpus.pad_length if method.fixed_length else None
    test = SplitData(corpus, fold.test, device, pad_to=pad_to)
    store = MaskStore(Path(masks_dir) if masks_dir else cell_dir.parents[3] / "masks")
    spec = parse_mask_spec(config["mask"])
    test = test.with_mask(store.get(corpus, config["fold"], "test", spec, config["seed"]))
    model = method.build(data_spec(corpus)).to(device)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    stages = config.get("selected_stages")  # schema 1 cells: the stage switch was fixed
    if stages is None:
        epoch, hp = config["selected_epochs"][selection], method.hp
        late = len(method.stages) > 1 and epoch >= hp["stage_epoch"]
        stages = {
            selection: method.stages[-1] if late or len(method.stages) == 1 else method.stages[0]
        }
    stage = stages[selection]
    with autocast(device, config.get("precision", "fp32")):  # as the rows were scored
        scores = {"mask": evaluate(model, method, test, stage, corpus.task)}
        return scores | subset_scores(model, method, test, stage, corpus.task)
