"""imerbench: fair, resumable benchmarks for incomplete multimodal emotion recognition.

The public surface is re-exported here; import from `imerbench`, not from its modules.
"""

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

__all__ = [
    "MODALITIES",
    "SUBSETS",
    "Batch",
    "Corpus",
    "DataSpec",
    "DatasetInfo",
    "DatasetLoader",
    "Fold",
    "ImerbenchError",
    "LoadOptions",
    "MaskSpec",
    "Method",
    "MethodInfo",
    "ModelOutput",
    "Param",
    "RunContext",
    "SplitData",
    "__version__",
    "create_method",
    "list_datasets",
    "list_methods",
    "load_dataset",
    "register_dataset",
    "register_method",
    "resolve_dataset",
]
