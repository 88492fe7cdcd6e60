"""A rough time per cell, from timing a few real training and evaluation steps."""

from __future__ import annotations

import time

import torch

from imerbench.compute import Workspace
from imerbench.grid import Cell
from imerbench.plan import cell_method


def estimate_seconds(cells: list[Cell], ws: Workspace, trials: int = 3) -> dict[Cell, float]:
    """Rough time per cell, from timing a few real training and evaluation steps per
    (method, dataset): steps per epoch x epochs, plus one validation and one test pass."""
    from imerbench.training import autocast, data_spec, evaluate

    timed: dict[tuple[str, str], float] = {}
    out = {}
    for cell in cells:
        key = (cell.method.label, cell.dataset)
        method = cell_method(cell)
        if key not in timed:
            corpus = ws.corpus(cell.dataset)
            splits = ws.splits(cell, method)
            train = splits["train"]
            torch.manual_seed(0)
            model = method.build(data_spec(corpus)).to(ws.device)
            optimizer = method.configure_optimizer(model)
            stage = method.stages[-1]
            size, complete = method.hp["batch_size"], method.needs_complete
            batches = list(train.batches(size, None, method.fixed_length, complete=complete))
            steps = 0
            begin = time.perf_counter()
            for batch in (batches * trials)[: trials + 1]:
                if steps == 1:
                    begin = time.perf_counter()  # the first step warms up
                with autocast(ws.device, ws.grid.precision):
                    loss = method.loss(model, model(batch, stage), batch, stage)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
            step = (time.perf_counter() - begin) / max(steps - 1, 1)
            begin = time.perf_counter()
            with autocast(ws.device, ws.grid.precision):
                evaluate(model, method, splits["test"], stage, corpus.task)
            test_pass = time.perf_counter() - begin
            val = splits.get("val")
            ratio = (val.num_utterances / splits["test"].num_utterances) if val else 0.0
            timed[key] = len(batches) * step + test_pass * (1 + ratio)  # val + oracle test
        out[cell] = timed[key] * method.hp["epochs"]
    return out
