"""Rebuild a finished cell's model from its folder and score it again.

A cell folder holds its full configuration (`cell.json`) and the selected weights
(`weights-<selection>.pt`), so any row can be recomputed, or the model scored on new
conditions, without retraining.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imerbench.balance.compose import balanced
from imerbench.data import (
    Corpus,
    MaskStore,
    SplitData,
    load_dataset,
    parse_mask_spec,
    resolve_dataset,
)
from imerbench.errors import ImerbenchError
from imerbench.evaluation import Scores, evaluate, subset_scores
from imerbench.method import Method
from imerbench.registry import create_method, get_entry
from imerbench.step import autocast, data_spec


@dataclass(frozen=True)
class SavedCell:
    """A finished cell rebuilt from its folder: its model with the selected weights, the
    stage they were selected in, its data and its test split (no mask yet)."""

    config: dict[str, Any]
    method: Method
    model: nn.Module
    stage: str
    corpus: Corpus
    test: SplitData

    def stored_mask(self, masks_dir: Path) -> np.ndarray:
        """The test mask its rows were scored under (the run's stored masks)."""
        spec = parse_mask_spec(self.config["mask"])
        store = MaskStore(masks_dir)
        return store.get(self.corpus, self.config["fold"], "test", spec, self.config["seed"])

    def score(self, mask: np.ndarray) -> Scores:
        """Every output's metrics on the test split under `mask` ([n, 3])."""
        test = self.test.with_mask(mask)
        with autocast(self.test.device, self.config.get("precision", "fp32")):
            return evaluate(self.model, self.method, test, self.stage, self.corpus.task)


def load_cell(cell_dir: str | Path, selection: str = "val", device: str = "cpu") -> SavedCell:
    """The cell in `cell_dir` with its `selection` weights (one clear error if absent)."""
    cell_dir = Path(cell_dir)
    if not (cell_dir / "cell.json").is_file():
        raise ImerbenchError(
            f"{cell_dir} is not a cell folder (no cell.json); pass a folder under RUN/cells/"
        )
    weights = cell_dir / f"weights-{selection}.pt"
    if not weights.exists():
        raise ImerbenchError(f"{weights} does not exist; the run kept no {selection} weights")
    config = json.loads((cell_dir / "cell.json").read_text(encoding="utf-8"))
    info = resolve_dataset(config["dataset"])
    fixed = get_entry(config["method"]).fixed
    hparams = {k: v for k, v in config["hparams"].items() if k not in fixed}
    method: Method = create_method(config["method"], info.profile, **hparams)
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
    model = method.build(data_spec(corpus)).to(device)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    stages = config.get("selected_stages")  # schema 1 cells: the stage switch was fixed
    if stages is None:
        epoch, hp = config["selected_epochs"][selection], method.hp
        late = len(method.stages) > 1 and epoch >= hp["stage_epoch"]
        stages = {
            selection: method.stages[-1] if late or len(method.stages) == 1 else method.stages[0]
        }
    return SavedCell(config, method, model, stages[selection], corpus, test)


def rescore_cell(
    cell_dir: str | Path,
    selection: str = "val",
    device: str = "cpu",
    masks_dir: str | Path | None = None,
) -> dict[str, Scores]:
    """{condition: scores} of the cell's selected weights on its test split: "mask" (the
    stored masks) plus every forced subset and pattern, as the rows record them."""
    cell = load_cell(cell_dir, selection, device)
    masks = Path(masks_dir) if masks_dir else Path(cell_dir).parents[3] / "masks"
    test = cell.test.with_mask(cell.stored_mask(masks))
    with autocast(device, cell.config.get("precision", "fp32")):  # as the rows were scored
        scores = {"mask": evaluate(cell.model, cell.method, test, cell.stage, cell.corpus.task)}
        return scores | subset_scores(cell.model, cell.method, test, cell.stage, cell.corpus.task)
