"""Loading the published label pickles without letting them run code.

A pickle names the callables that rebuild its objects, and `pickle.load` imports and calls
whatever it names, so a doctored label file could run anything on the user's machine. The
published label pickles (checked on the real IEMOCAP 4/6-way and CMU-MOSI files) name only
four globals: `numpy.core.multiarray._reconstruct`, `numpy.core.multiarray.scalar`,
`numpy.ndarray` and `numpy.dtype`; their dicts, lists, sets and strings use plain opcodes. The
unpickler below admits those (also under numpy 2's module name `numpy._core.multiarray`) and
the plain builtin containers that older protocols spell as globals, and refuses everything else
before it is imported, let alone called.

Not admitted: `_codecs.encode`, which only protocol 0-2 pickles of numpy arrays written by
Python 3 need; no published file uses it, and `write_gcnet` writes no numpy objects.
"""

from __future__ import annotations

import importlib
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

from imerbench.errors import ImerbenchError

# Older protocols name the builtins module as Python 2 did.
_MODULE_ALIASES: dict[str, str] = {"__builtin__": "builtins"}

_NUMPY_MULTIARRAY: tuple[str, ...] = ("numpy.core.multiarray", "numpy._core.multiarray")

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(module, name) for module in _NUMPY_MULTIARRAY for name in ("_reconstruct", "scalar")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [("builtins", n) for n in ("set", "frozenset", "list", "dict", "tuple")]
    + [("collections", "OrderedDict"), ("collections", "defaultdict")]
)


def _printable(text: str, limit: int = 120) -> str:
    """A name from an untrusted file, made safe to put into a one-line message."""
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _resolve(module: str, name: str) -> Any:
    """The admitted object, taken from numpy 2's module first to avoid its deprecation shim."""
    if module in _NUMPY_MULTIARRAY:
        candidates = ["numpy._core.multiarray", "numpy.core.multiarray"]
    else:
        candidates = [module]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for candidate in candidates:
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
    raise pickle.UnpicklingError(f"cannot find {module}.{name} in this numpy")


class _LabelUnpickler(pickle.Unpickler):
    """Admits only the globals in ALLOWED_GLOBALS; the file path is kept for messages."""

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        if (module, name) not in ALLOWED_GLOBALS:
            raise ImerbenchError(
                f"{self._path}: the safe loader refuses to load class "
                f"'{_printable(module)}.{_printable(name)}' named in this pickle (only builtin "
                "containers and numpy arrays are allowed); this file is not a label pickle from "
                "the published layout: download the original file again"
            )
        return _resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise ImerbenchError(
            f"{self._path}: the pickle uses persistent ids, which a label pickle never does; "
            "this file is not a label pickle from the published layout"
        )


def load_label_pickle(path: Path) -> list:
    """The list stored in a label pickle, loaded without executing anything it names."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImerbenchError(
            f"cannot read label pickle {path}: {err.strerror or err}; check the path"
        ) from None
    try:
        obj = _LabelUnpickler(data, path).load()
    except ImerbenchError:
        raise
    except Exception as err:  # untrusted bytes can fail in many ways; all mean "corrupt"
        reason = _printable(str(err).splitlines()[0] if str(err) else "", 160)
        raise ImerbenchError(
            f"{path}: cannot read the label pickle ({type(err).__name__}"
            f"{': ' + reason if reason else ''}); the file is truncated or corrupt: "
            "download it again"
        ) from None
    if not isinstance(obj, list | tuple):
        raise ImerbenchError(
            f"{path}: holds a {type(obj).__name__}, but a label pickle holds a list "
            "(videoIDs, videoLabels, ...); this file is not a label pickle from the published "
            "layout"
        )
    return list(obj)
