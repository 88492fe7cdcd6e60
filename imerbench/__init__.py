"""imerbench: fair, resumable benchmarks for incomplete multimodal emotion recognition.

The public surface is re-exported here; import from `imerbench`, not from its modules. The
names that run grids and read results load on first use (`__getattr__`), so importing
the package (and starting the CLI) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

from imerbench.data import (
    MODALITIES,
    SUBSETS,
    Batch,
    Corpus,
    DatasetInfo,
    DatasetLoader,
    Fold,
    LoadOptions,
    MaskSpec,
    SplitData,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_dataset,
)
from imerbench.errors import ImerbenchError
from imerbench.method import DataSpec, Method, MethodInfo, ModelOutput, Param, RunContext
from imerbench.registry import create_method, list_methods, register_method

# name -> module: loaded when first asked for.
_LAZY = {
    "Grid": "imerbench.grid",
    "RunOptions": "imerbench.plan",
    "default_grid": "imerbench.grid_file",
    "grid_from_dict": "imerbench.grid_file",
    "leaderboards": "imerbench.leaderboard",
    "load_grid": "imerbench.grid_file",
    "read_results": "imerbench.results",
    "rescore_cell": "imerbench.rescore",
    "run_grid": "imerbench.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imerbench' has no attribute '{name}'")


__all__ = [
    "MODALITIES",
    "SUBSETS",
    "Batch",
    "Corpus",
    "DataSpec",
    "DatasetInfo",
    "DatasetLoader",
    "Fold",
    "Grid",
    "ImerbenchError",
    "LoadOptions",
    "MaskSpec",
    "Method",
    "MethodInfo",
    "ModelOutput",
    "Param",
    "RunContext",
    "RunOptions",
    "SplitData",
    "__version__",
    "create_method",
    "default_grid",
    "grid_from_dict",
    "leaderboards",
    "list_datasets",
    "list_methods",
    "load_dataset",
    "load_grid",
    "read_results",
    "register_dataset",
    "register_method",
    "rescore_cell",
    "resolve_dataset",
    "run_grid",
]
