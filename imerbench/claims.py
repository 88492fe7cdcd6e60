"""Claims: which process is running a cell, so that runs sharing a folder never train one
cell twice (`imerbench/write.py` takes them), and the file lock that also serializes the
merges of `results.csv` (`imerbench/results.py`)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from imerbench.errors import ImerbenchError
from imerbench.files import atomic_write

try:
    import fcntl
except ImportError:  # Windows: there, takeovers and merges are not serialized
    fcntl = None  # type: ignore[assignment]

# Claims: which process is running a cell, so that runs sharing a folder never train one
# cell twice. `<cell>/claim` is created when a cell starts and removed once its rows are
# written (or it failed); a claim whose process has died on this host is stale.
CLAIM_FILE = "claim"
CLAIM_LOCK = ".claim.lock"  # serializes stale-claim takeovers of one cell
TORN_CLAIM_AGE_S = 10.0  # a claim without content older than this was cut off by a kill
_PROCFS = Path("/proc/self/stat").exists()
_HELD: set[Path] = set()  # the claims this process holds now


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock among processes on this host; the kernel drops it when its holder
    dies, so a killed run never leaves it held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first, start time at index 19); None: no such
    process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def _process_start(pid: int) -> str:
    """The kernel's start time of a process: with the pid, it tells a process from a later
    one that reuses its pid ('' where /proc is not available)."""
    fields = _proc_stat(pid) if _PROCFS else None
    return fields[19] if fields else ""


def _pid_alive(pid: int, pid_start: str) -> bool:
    if os.name == "nt":  # os.kill would terminate it: unknown, so alive (remove by hand)
        return True
    if not _PROCFS:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X", "x"):  # gone, or exited and not reaped
        return False
    return not pid_start or fields[19] == pid_start


@dataclass(frozen=True)
class Claim:
    """The process running a cell, as written in the cell's claim file."""

    pid: int
    host: str
    started: str
    pid_start: str = ""

    @staticmethod
    def mine() -> Claim:
        return Claim(
            os.getpid(),
            socket.gethostname(),
            time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            _process_start(os.getpid()),
        )

    def to_text(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    def describe(self) -> str:
        if not self.pid:
            return "pid unknown"
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"pid {self.pid}{where}"

    def is_mine(self) -> bool:
        mine = Claim.mine()
        return (self.pid, self.host, self.pid_start) == (mine.pid, mine.host, mine.pid_start)


def _read_claim_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _parse_claim(text: str) -> Claim | None:
    try:
        raw = json.loads(text)
        return Claim(int(raw["pid"]), str(raw["host"]), str(raw["started"]), str(raw["pid_start"]))
    except (ValueError, KeyError, TypeError):
        return None


def _live_holder(path: Path, text: str) -> Claim | None:
    """The live process behind this claim text, or None when the claim is stale. A process
    on another host cannot be checked from here, so its claim counts as live."""
    claim = _parse_claim(text)
    if claim is None:  # empty for an instant after its creation, unless its writer died
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        return Claim(0, socket.gethostname(), "") if age < TORN_CLAIM_AGE_S else None
    if claim.host != socket.gethostname():
        return claim
    if claim.is_mine():  # this process: held now, or left by an earlier run in it
        return claim if path in _HELD else None
    return claim if _pid_alive(claim.pid, claim.pid_start) else None


def _create_whole(path: Path, text: str) -> bool:
    """Create `path` holding `text`, or return False if it exists. The text is written to a
    temporary file first and hard-linked into place, so a reader never finds the claim
    empty (on a file system without hard links: created empty with O_EXCL, then written)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            pass  # no hard links here
    finally:
        Path(tmp).unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


def claim_cell(cell_dir: Path) -> Claim | None:
    """Claim a cell for this process. None: this process holds it now; else the live
    process that does.

    The claim file is created whole and exclusively (`_create_whole`), so of two processes
    one wins, and the other reads who. A stale
    claim is taken over under the cell's lock, and only if it is still the same file
    content after the lock is held (another process may have taken it over meanwhile).
    """
    path = cell_dir / CLAIM_FILE
    mine = Claim.mine()
    for _ in range(10):
        if _create_whole(path, mine.to_text()):
            _HELD.add(path)
            return None
        text = _read_claim_text(path)
        if text is None:
            continue  # released meanwhile: create it again
        holder = _live_holder(path, text)
        if holder is not None:
            return holder
        with file_lock(cell_dir / CLAIM_LOCK):
            if _read_claim_text(path) != text:
                continue  # taken over or released meanwhile: look again
            atomic_write(path, mine.to_text())
            _HELD.add(path)
            return None
    raise ImerbenchError(f"{path} keeps changing; is another run taking this cell over?")


def release_claim(cell_dir: Path) -> None:
    """Remove this process's claim on a cell (never another's). Failing to remove it is
    harmless: a claim outlives its process only as a stale one."""
    path = cell_dir / CLAIM_FILE
    _HELD.discard(path)
    text = _read_claim_text(path)
    claim = _parse_claim(text) if text is not None else None
    if claim is not None and claim.is_mine():
        with suppress(OSError):
            path.unlink()


def remove_stale_claim(cell_dir: Path) -> None:
    """Drop a dead process's claim on a cell (left when a run was killed after writing the
    cell's rows and before removing its claim). Only tidiness: a read-only folder keeps it."""
    path = cell_dir / CLAIM_FILE
    text = _read_claim_text(path)
    if text is None or _live_holder(path, text) is not None:
        return
    with suppress(OSError), file_lock(cell_dir / CLAIM_LOCK):
        if _read_claim_text(path) == text:
            path.unlink(missing_ok=True)
