"""The data package: from a dataset's id to the batches a model sees.

The flow, module by module:

- `catalog.py`: every dataset's facts (`DatasetInfo`), the built-in datasets and the plug-in
  registry (`register_dataset`, entry-point group `imerbench.datasets`);
- `loader.py`: `load_dataset`, which dispatches on the dataset's source to
  `gcnet/` (the published on-disk layout: `labels.py`, `features.py`, `cache.py`,
  `reader.py`, `writer.py`, `check.py`), `synthetic/` (`law.py`, `generator.py`, `bayes.py`)
  or a plug-in's loader; `feature_names.py` says which feature folders are read;
- `corpus.py`: the one in-memory `Corpus` every loader returns, its folds, the modalities
  and their subsets;
- `masks.py`: which modalities each utterance shows (`MaskSpec`, the published missing-rate
  procedure); `mask_store.py`: evaluation masks drawn once, stored and shared;
- `batch.py`: a split as padded device tensors, and the one `Batch` type every method sees;
- `safe_pickle.py`: label pickles loaded without letting them run code.
"""

from __future__ import annotations

from imerbench.data.batch import Batch, SplitData
from imerbench.data.catalog import (
    DatasetInfo,
    DatasetLoader,
    LoadOptions,
    list_datasets,
    register_dataset,
    resolve_dataset,
    unregister_dataset,
)
from imerbench.data.corpus import (
    MODALITIES,
    SUBSETS,
    Corpus,
    Fold,
    SplitName,
    Task,
    hold_out,
    leave_one_group_out,
    without_validation,
)
from imerbench.data.feature_names import (
    DEFAULT_FEATURE_NAMES,
    parse_feature_names,
    resolve_feature_names,
)
from imerbench.data.gcnet import DataReport, check_data_root, read_gcnet, write_gcnet
from imerbench.data.loader import load_dataset
from imerbench.data.mask_store import MaskStore, export_gcnet_masks, read_gcnet_mask
from imerbench.data.masks import (
    MaskSpec,
    draw_mask,
    draw_rate_mask,
    eval_mask,
    holdout_mask,
    parse_mask_spec,
    realized_missing_rate,
    train_mask,
)
from imerbench.data.synthetic import bayes_limit, bayes_table, make_synthetic

__all__ = [
    "DEFAULT_FEATURE_NAMES",
    "MODALITIES",
    "SUBSETS",
    "Batch",
    "Corpus",
    "DataReport",
    "DatasetInfo",
    "DatasetLoader",
    "Fold",
    "LoadOptions",
    "MaskSpec",
    "MaskStore",
    "SplitData",
    "SplitName",
    "Task",
    "bayes_limit",
    "bayes_table",
    "check_data_root",
    "draw_mask",
    "draw_rate_mask",
    "eval_mask",
    "export_gcnet_masks",
    "hold_out",
    "holdout_mask",
    "leave_one_group_out",
    "list_datasets",
    "load_dataset",
    "make_synthetic",
    "parse_feature_names",
    "parse_mask_spec",
    "read_gcnet",
    "read_gcnet_mask",
    "realized_missing_rate",
    "register_dataset",
    "resolve_dataset",
    "resolve_feature_names",
    "train_mask",
    "unregister_dataset",
    "without_validation",
    "write_gcnet",
]
