"""Loading the published label pickles without letting them run code.

A pickle names the callables that rebuild its objects, and `pickle.load` imports and calls
whatever it names, so a doctored label file could run anything on the user's machine. The
published label pickles (checked on the real IEMOCAP 4/6-way and CMU-MOSI files) name only
four globals: `numpy.core.multiarray._reconstruct`, `numpy.core.multiarray.scalar`,
`numpy.ndarray` and `numpy.dtype`; their dicts, lists, sets and strings use plain opcodes. The
unpickler below admits those (also under numpy 2's module name `numpy._core.multiarray`) and
the plain builtin containers that older protocols spell as globals, and refuses everything else
before it is imported, let alone called.

A damaged or doctored file must not exhaust the machine or corrupt numpy either, so the loader
also refuses what no label pickle holds and what could make a few bytes cost gigabytes or hours:
memo indices are kept in a dict (the C unpickler allocates and clears an array as long as the
largest index, so one flipped byte of a protocol-2 file could cost gigabytes); arrays may not
have more elements than the file has bytes; a dtype is built from a type string and keeps the
state that string gives (no fields, no flags from the file); state may be set only on arrays
and dtypes; integers are at most 1 KiB long and a bytearray no longer than the file; dict keys
and set members must be strings, numbers or numpy scalars (a tuple key, built from shared
parts, can take exponential time to hash).

Not admitted: `_codecs.encode`, which only protocol 0-2 pickles of numpy arrays written by
Python 3 need; no published file uses it, and `write_gcnet` writes no numpy objects.
"""

from __future__ import annotations

import builtins
import importlib
import io
import math
import pickle
import struct
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np

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

_MAX_LONG_BYTES = 1024  # label pickles hold small integers; a huge one is slow to hash
_KEY_TYPES: tuple[type, ...] = (str, bytes, int, float, type(None), np.generic)
_NOT_LABELS = "this file is not a label pickle from the published layout"


class _NdarrayToken:
    """Stands for `numpy.ndarray` in a loaded pickle: `_reconstruct` accepts it, and nothing
    can call it (numpy.ndarray(shape) would allocate whatever shape a file asks for)."""

    def __repr__(self) -> str:
        return "numpy.ndarray"

    def __call__(self, *args: Any) -> NoReturn:
        raise pickle.UnpicklingError("numpy.ndarray is called directly; numpy never pickles so")


_NDARRAY = _NdarrayToken()


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


class _LabelUnpickler(pickle._Unpickler):
    """Admits only the globals in ALLOWED_GLOBALS, within the bounds in the module docstring.

    Built on the pure-Python unpickler, whose memo is a dict and whose opcodes can be checked
    one by one; the file path is kept for messages.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(
        pickle._Unpickler.dispatch  # type: ignore[attr-defined]
    )

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._path = path
        self._size = len(data)

    def _refuse(self, what: str) -> NoReturn:
        raise ImerbenchError(f"{self._path}: the safe loader refuses {what}; {_NOT_LABELS}")

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        if (module, name) not in ALLOWED_GLOBALS:
            raise ImerbenchError(
                f"{self._path}: the safe loader refuses to load class "
                f"'{_printable(module)}.{_printable(name)}' named in this pickle (only builtin "
                f"containers and numpy arrays are allowed); {_NOT_LABELS}: download the "
                "original file again"
            )
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        if name == "_reconstruct":
            return self._reconstruct
        if (module, name) == ("numpy", "dtype"):
            return self._dtype
        if module == "builtins" and name in ("set", "frozenset", "dict"):
            return self._keyed(getattr(builtins, name))
        if module == "collections":
            return self._keyed(OrderedDict if name == "OrderedDict" else defaultdict)
        return _resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise ImerbenchError(
            f"{self._path}: the pickle uses persistent ids, which a label pickle never does; "
            f"{_NOT_LABELS}"
        )

    def get_extension(self, code: int) -> None:
        self._refuse(f"extension code {code!r} (a label pickle names its classes in full)")

    # -- the admitted callables, with their inputs bounded

    def _check_shape(self, shape: Any) -> None:
        ok = isinstance(shape, tuple) and all(
            isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in shape
        )
        if not ok:
            self._refuse(f"an array shape {_printable(repr(shape), 60)}")
        elements = math.prod(int(n) for n in shape)
        if elements > self._size:
            self._refuse(f"an array of {elements} elements in a file of {self._size} bytes")

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not _NDARRAY:
            self._refuse(f"an array of type {_printable(repr(subtype), 60)}")
        self._check_shape(shape)
        return _resolve("numpy._core.multiarray", "_reconstruct")(np.ndarray, shape, dtype)

    def _dtype(self, spec: Any, *flags: Any) -> np.dtype:
        flags_ok = all(type(f) in (bool, int) and f in (0, 1) for f in flags)  # (align, copy)
        if not isinstance(spec, str) or len(flags) > 2 or not flags_ok:
            self._refuse(f"a numpy dtype built from {_printable(repr(spec), 60)}")
        return np.dtype(spec, *flags)

    def _check_keys(self, keys: Iterable[Any]) -> None:
        for key in keys:
            if not isinstance(key, _KEY_TYPES):
                self._refuse(
                    f"a {type(key).__name__} as a dict key or set member (label pickles key "
                    "their tables by id strings)"
                )

    def _keyed(self, cls: type) -> Callable[..., Any]:
        """`cls`, calling which first checks the keys it would hash (a dict argument's keys
        were checked when it was built)."""

        def build(*args: Any) -> Any:
            factory: tuple[Any, ...] = ()
            if cls is defaultdict:
                factory, args = args[:1], args[1:]
            if len(args) > 1:
                self._refuse(f"a {cls.__name__} built from {len(args)} arguments")
            if args and not isinstance(args[0], dict):
                content = list(args[0])
                if cls in (set, frozenset):
                    self._check_keys(content)
                elif all(isinstance(p, tuple | list) and len(p) == 2 for p in content):
                    self._check_keys(p[0] for p in content)
                else:
                    self._refuse(f"a {cls.__name__} built from something other than pairs")
                args = (content,)
            return cls(*factory, *args)

        return build

    # -- opcodes that hash keys, set state or allocate what the file states. After MARK the
    # pure-Python unpickler's `stack` holds just the marked items, dict keys at even places.

    def _load_dict(self) -> None:
        self._check_keys(self.stack[0::2])
        pickle._Unpickler.load_dict(self)  # type: ignore[attr-defined]

    def _load_setitem(self) -> None:
        self._check_keys([self.stack[-2]])
        pickle._Unpickler.load_setitem(self)  # type: ignore[attr-defined]

    def _load_setitems(self) -> None:
        self._check_keys(self.stack[0::2])
        pickle._Unpickler.load_setitems(self)  # type: ignore[attr-defined]

    def _load_set_items(self) -> None:
        self._check_keys(self.stack)
        pickle._Unpickler.load_additems(self)  # type: ignore[attr-defined]

    def _load_frozenset(self) -> None:
        self._check_keys(self.stack)
        pickle._Unpickler.load_frozenset(self)  # type: ignore[attr-defined]

    def _load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                self._refuse("an array state that numpy never writes")
            self._check_shape(state[-4])
        elif isinstance(inst, np.dtype):
            # Only the state the dtype has anyway (the byte order aside): flags or sizes from
            # a file could make numpy treat string bytes as object pointers.
            own = inst.__reduce__()[2]
            plain = isinstance(state, tuple) and len(state) == len(own)
            plain = plain and all(type(x) in (int, str, type(None)) for x in state)
            if not plain or state[0] != own[0] or state[2:] != own[2:]:
                self._refuse("a numpy dtype state other than the one its type string gives")
            if state[1] not in ("<", ">", "|", "="):
                self._refuse(f"a numpy byte order {_printable(repr(state[1]), 20)}")
        else:
            self._refuse(f"to set the state of a {type(inst).__name__}")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    def _load_long4(self) -> None:
        (n,) = struct.unpack("<i", self.read(4))
        if not 0 <= n <= _MAX_LONG_BYTES:
            self._refuse(f"an integer of {n} bytes")
        self.append(pickle.decode_long(self.read(n)))  # type: ignore[attr-defined]

    def _load_bytearray8(self) -> None:
        # The stock loader allocates (and zeroes) the length the file states before reading.
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            self._refuse(f"a bytearray of {n} bytes in a file of {self._size} bytes")
        data = bytearray(n)
        if self.readinto(data) != n:
            raise pickle.UnpicklingError("the bytearray is truncated")
        self.append(data)

    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.ADDITEMS[0]] = _load_set_items
    dispatch[pickle.FROZENSET[0]] = _load_frozenset
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.LONG4[0]] = _load_long4
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


def load_label_pickle(path: Path) -> list:
    """The list stored in a label pickle, loaded without executing anything it names."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImerbenchError(
            f"cannot read label pickle {path}: {err.strerror or err}; check the path"
        ) from None
    obj = load_pickle_bytes(data, path, "label pickle")
    if not isinstance(obj, list | tuple):
        raise ImerbenchError(
            f"{path}: holds a {type(obj).__name__}, but a label pickle holds a list "
            "(videoIDs, videoLabels, ...); this file is not a label pickle from the published "
            "layout"
        )
    return list(obj)


def load_pickle_bytes(data: bytes, path: Path, what: str) -> Any:
    """Pickled bytes read from `path` (a `what`, for messages), loaded by the same safe
    unpickler: containers, strings, numbers and numpy arrays only."""
    try:
        return _LabelUnpickler(data, path).load()
    except ImerbenchError:
        raise
    except Exception as err:  # untrusted bytes can fail in many ways; all mean "corrupt"
        reason = _printable(str(err).splitlines()[0] if str(err) else "", 160)
        raise ImerbenchError(
            f"{path}: cannot read the {what} ({type(err).__name__}"
            f"{': ' + reason if reason else ''}); the file is truncated or corrupt: "
            "download it again"
        ) from None
