"""Objects whose unpickling would act on the machine: what the label-pickle reader must refuse
before running anything. Each creates `target` if it ever runs."""

from __future__ import annotations

import builtins
import os
from pathlib import Path


class System:
    """Unpickling this runs a shell command that creates `target`."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.target}",))


class Open:
    """Unpickling this creates `target` with builtins.open."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (builtins.open, (str(self.target), "w"))
