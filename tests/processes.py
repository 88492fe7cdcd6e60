"""Running the CLI in other processes, as a user (or a kill) would, and watching what they
leave behind: orphaned workers, claims."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# The columns that identify a row (everything but its value and provenance).
KEY = ["method", "dataset", "fold", "missing_rate", "seed", "selection", "condition", "output",
       "metric"]  # fmt: skip


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from imerbench.cli import main; main()", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


TOKEN_VAR = "IMERBENCH_TEST_TOKEN"  # marks every process a test started, workers included


def processes_with_token(token: str) -> dict[int, str]:
    """Live processes whose environment carries `TOKEN_VAR=token` (pid -> command line).
    Workers inherit the environment, so this finds a killed run's orphans; zombies have no
    readable environment and are dead anyway."""
    found = {}
    needle = f"{TOKEN_VAR}={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def wait_for_no_orphans(token: str, timeout: float = 20.0) -> dict[int, str]:
    """What still runs after `timeout` s (a killed worker dies as soon as the kernel
    delivers its parent-death signal; the resource tracker exits when its pipe closes)."""
    deadline = time.monotonic() + timeout
    alive = processes_with_token(token)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = processes_with_token(token)
    return alive


def claims_under(out: Path) -> list[Path]:
    return sorted(out.glob("cells/*/*/*/claim"))


def claimed_since(out: Path, since: float) -> set[Path]:
    """The cells of `out` that hold a claim made (or taken over) at or after `since`."""
    found = set()
    for claim in claims_under(out):
        try:
            if claim.stat().st_mtime >= since:
                found.add(claim.parent)
        except FileNotFoundError:  # released meanwhile
            continue
    return found
