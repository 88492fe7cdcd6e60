"""imerbench: fair, resumable benchmarks for incomplete multimodal emotion recognition.

The public surface is re-exported here; import from `imerbench`, not from its modules.
"""

__version__ = "0.1.0"

from imerbench.batch import Batch, SplitData
from imerbench.corpus import MODALITIES, Corpus, Fold
from imerbench.datasets import DATASETS, load_dataset, resolve_dataset
from imerbench.errors import ImerbenchError
from imerbench.method import DataSpec, Method, MethodInfo, ModelOutput, Param, RunContext
from imerbench.registry import create_method, list_methods, register_method

__all__ = [
    "DATASETS",
    "MODALITIES",
    "Batch",
    "Corpus",
    "DataSpec",
    "Fold",
    "ImerbenchError",
    "Method",
    "MethodInfo",
    "ModelOutput",
    "Param",
    "RunContext",
    "SplitData",
    "__version__",
    "create_method",
    "list_methods",
    "load_dataset",
    "register_method",
    "resolve_dataset",
]
