"""Fixtures shared by the test modules: the CLI as a user runs it, and a small grid."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NamedTuple

import pytest

from imerbench.cli import main
from imerbench.grid import Grid
from imerbench.grid_file import grid_from_dict


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., CliResult]:
    """`run_cli("run", "--epochs", "1")`: the console script in this process; its exit
    status (0 when it returns), standard output and standard error."""

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["imerbench", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def one_error_line(run_cli: Callable[..., CliResult]) -> Callable[..., str]:
    """`one_error_line("run", "--seeds", "x")`: the single stderr line of a failing command,
    after checking its exit status (2, a usage error, unless `code=` says otherwise), that it
    printed no traceback and that the line starts with "error: "."""

    def check(*args: str, code: int = 2) -> str:
        got, _, err = run_cli(*args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert got == code, (got, err)
        assert len(lines) == 1, err
        assert "Traceback" not in err and lines[0].startswith("error: ")
        return lines[0]

    return check


@pytest.fixture
def small_grid() -> Callable[..., Grid]:
    """`small_grid(epochs=2)`: two quick methods on the synthetic corpus, MR 0 and 0.5, one
    seed, one epoch, with any key replaced."""

    def make(**extra: object) -> Grid:
        raw = {"name": "t", "methods": ["early-fusion", "unimodal-t"], "datasets": ["synthetic"],
               "missing_rates": [0.0, 0.5], "seeds": [0], "epochs": 1}  # fmt: skip
        raw.update(extra)
        return grid_from_dict(raw, "test")

    return make
