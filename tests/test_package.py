"""What a user gets from the package itself: the version, the Python API, one line per
cell in logs, the files a package should carry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imerbench

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_printed(run_cli) -> None:
    code, out, _ = run_cli("--version")
    assert (code, out.strip()) == (0, f"imerbench {imerbench.__version__}")


def test_the_python_api_is_importable_from_the_package() -> None:
    from imerbench import (
        RunOptions,
        default_grid,
        grid_from_dict,
        leaderboards,
        load_dataset,
        read_results,
        rescore_cell,
        run_grid,
    )

    assert read_results.__module__ == "imerbench.results"
    assert rescore_cell.__module__ == "imerbench.rescore"
    assert run_grid.__module__ == "imerbench.runner"
    assert default_grid().name == "quick"
    for name in imerbench.__all__:
        assert getattr(imerbench, name) is not None, name
    assert {RunOptions, grid_from_dict, leaderboards, load_dataset}


def test_each_cell_is_one_line_when_the_output_is_not_a_terminal(run_cli, tmp_path) -> None:
    code, out, _ = run_cli("run", "--methods", "late-fusion", "--missing-rates", "0.5",
        "--seeds", "0", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("ok late-fusion")]
    assert len(lines) == 1 and "test-oracle wa" in lines[0] and "epochs" in lines[0]
    assert len(lines[0]) > 80  # longer than a default console, and not wrapped


def test_the_package_ships_its_marker_license_and_citation() -> None:
    assert (ROOT / "imerbench" / "py.typed").is_file()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "cff-version" in (ROOT / "CITATION.cff").read_text()


def test_every_subpackage_is_in_the_wheel() -> None:
    """A package folder missing from pyproject's list works in an editable install only."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(root).parts)
        for p in (root / "imerbench").rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)


def test_scikit_learn_is_only_a_test_dependency() -> None:
    """The package never imports it (the tests check the metrics against it)."""
    code = (
        "import sys, imerbench, imerbench.cli, imerbench.runner, imerbench.leaderboard, "
        "imerbench.plots, imerbench.report, imerbench.metrics; "
        "from imerbench.registry import list_methods; list_methods(); "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_help_keeps_bracketed_extras(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli("run", "--help")
    assert code == 0 and "pip install 'imerbench[ray]'" in out


def test_help_shows_no_value_after_a_flag(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    for command in ("run", "table"):
        code, out, _ = run_cli(command, "--help")
        assert code == 0 and "<bool>" not in out, command
    flag = next(line for line in out.splitlines() if "--balance" in line)
    assert flag.split("--no-balance")[1].split()[0] == "what"  # the help text, no type
    assert "<str>" in out  # options that take a value still show its type


def test_a_grid_runs_from_python_as_the_readme_shows(tmp_path) -> None:
    from imerbench import RunOptions, default_grid, leaderboards, read_results, run_grid

    grid = default_grid(methods="early-fusion", seeds="0", missing_rates="0.5", epochs=1)
    store = run_grid(grid, RunOptions(out=str(tmp_path / "mine"), device="cpu"))  # a str
    rows = read_results(tmp_path / "mine")
    assert store.merged_path == tmp_path / "mine" / "results.csv"
    assert set(rows["method"]) == {"early-fusion"} and set(rows["status"]) == {"ok"}
    assert "| early-fusion |" in leaderboards(rows)[0].to_markdown()


def test_shell_completion_completes_commands_and_options(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("_IMERBENCH_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "imerbench ta")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert run_cli().out.split() == ["table"]
    monkeypatch.setenv("COMP_WORDS", "imerbench table --bal")
    monkeypatch.setenv("COMP_CWORD", "2")
    assert run_cli().out.split() == ["--balance"]
    monkeypatch.delenv("_IMERBENCH_COMPLETE")
    code, out, _ = run_cli("--show-completion", "bash")
    assert code == 0 and "_imerbench_completion" in out
