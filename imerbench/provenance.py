"""What a row needs beside its configuration to be rerun and compared: the code, the
libraries, the machine and the command."""

from __future__ import annotations

import hashlib
import platform
import socket
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imerbench import __version__
from imerbench.devices import describe_device


def _git(*args: str, timeout: float = 5) -> bytes:
    """A git command's output in this package's checkout (raises outside one)."""
    here = Path(__file__).resolve().parent
    command = ["git", "-C", str(here), *args]
    return subprocess.run(command, capture_output=True, timeout=timeout, check=True).stdout


@cache
def code_version() -> str:
    """The package version, with the git commit when run from a checkout."""
    try:
        sha = _git("rev-parse", "--short", "HEAD").decode().strip()
        dirty = _git("status", "--porcelain", "--untracked-files=no").strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


@cache
def code_state() -> dict[str, str]:
    """The full commit, and a hash of the uncommitted changes to tracked files, so that a
    `.dirty` code version still names the exact code ({} outside a checkout)."""
    try:
        commit = _git("rev-parse", "HEAD").decode().strip()
        diff = _git("diff", "HEAD", timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    state = {"commit": commit}
    if diff:
        state["uncommitted_diff_sha256"] = hashlib.sha256(diff).hexdigest()
    return state


def provenance(device: torch.device) -> dict[str, Any]:
    """What a row needs beside its config to be rerun and compared: code, libraries,
    machine and command (cell.json holds it; rows carry the code version and device)."""
    import pandas

    return {
        "code_version": code_version(),
        **code_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "cuda": torch.version.cuda or "",
        "cudnn": str(torch.backends.cudnn.version() or "") if device.type == "cuda" else "",
        "device": describe_device(device),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "command": sys.argv,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
