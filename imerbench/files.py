"""Writing files so that a reader never sees half of one, and where caches live.

Every file imerbench writes for later reading (result rows, cell files, stored masks, parsed
features, Bayes tables, label pickles) goes through `atomic_write` or `atomic_write_with`: the
data goes to a temporary file `.<name>.<random>.tmp` beside the target, is flushed to disk,
and is renamed over the target, so a reader sees the old file or the whole new one. A failed
write (full disk, read-only folder, kill) leaves no temporary file behind, except where the
process was killed; such leftovers start with a dot and end in `.tmp`, and are never read.

Two test hooks, read from the environment, make faults reproducible:
`IMERBENCH_TEST_WRITE_ERROR=ENOSPC:3` makes the 3rd write of a cell's rows file in this
process, and every later one, fail with that errno (a full disk fails part-way through the
data, any other errno refuses to create the file); `IMERBENCH_TEST_PAUSE_WRITE=SECONDS` holds
every `atomic_write` open that long before its rename, so that a kill can land there.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import BinaryIO

CACHE_ENV = "IMERBENCH_CACHE"
# The file whose writes the write-error hook counts: a cell's rows, written last.
_FAULT_TARGET = "rows.csv"
_fault_writes = 0  # writes of the fault target by this process (for the write-error hook)


def cache_dir() -> Path:
    """The root of imerbench's caches: $IMERBENCH_CACHE, else ~/.cache/imerbench."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imerbench"


def _injected_write_error(path: Path) -> OSError | None:
    """Test hook `IMERBENCH_TEST_WRITE_ERROR=ENOSPC:3`: the 3rd rows-file write of this
    process and every later one fail with that errno, as a full or read-only disk would."""
    global _fault_writes
    spec = os.environ.get("IMERBENCH_TEST_WRITE_ERROR")
    if not spec or path.name != _FAULT_TARGET:
        return None
    name, _, nth = spec.partition(":")
    code = getattr(errno, name, None)
    if not isinstance(code, int) or not nth.isdigit():
        raise ValueError(f"IMERBENCH_TEST_WRITE_ERROR={spec}: use ERRNO:N, e.g. ENOSPC:3")
    _fault_writes += 1
    if _fault_writes < int(nth):
        return None
    return OSError(code, os.strerror(code), str(path))


@cache
def _new_file_mode() -> int:
    """The mode `open` gives a new file under this process's umask (mkstemp's is 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_with(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)`, which fills the open temporary file (e.g. with
    `np.savez` or `pickle.dump`); the file appears under its name only once complete.

    The parent folder is created. The file gets the mode a plain `open` would give it (files
    are for sharing, not mkstemp's 0600). An error leaves the old file, if any, in place and
    no temporary file, and is raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _new_file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` (text is written as UTF-8, newlines as given) so that readers see the old
    content or the new, never a torn file; see `atomic_write_with`."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    injected = _injected_write_error(path)
    if injected is not None and injected.errno != errno.ENOSPC:
        raise injected  # a read-only disk refuses to create the file at all
    pause = os.environ.get("IMERBENCH_TEST_PAUSE_WRITE")

    def write(fh: BinaryIO) -> None:
        if injected is not None:  # a full disk fails part-way through the data
            fh.write(raw[: len(raw) // 2])
            fh.flush()
            raise injected
        fh.write(raw)
        if pause:  # test hook: hold the unfinished write open so a kill can land here
            fh.flush()
            time.sleep(float(pause))

    atomic_write_with(path, write)
