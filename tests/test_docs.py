"""The README says what the code does: its commands and its example method."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from tiny_corpus import splits_for, tiny_corpus

from imerbench.data import load_dataset, parse_mask_spec, unregister_dataset
from imerbench.errors import ImerbenchError
from imerbench.grid_file import default_grid
from imerbench.registry import create_method, unregister_method
from imerbench.results import read_results
from imerbench.training import train_cell

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    commands = [b.strip() for b in code_blocks("bash") if "pytest" in b]
    assert len(commands) == 1
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    assert commands[0] in ci.splitlines()


def test_readme_main_command_runs_the_default_grid(run_cli, tmp_path, monkeypatch) -> None:
    """The README's first command, after its setup, is `imerbench run`: run it for real from
    an empty folder, reduced to one method, one missing rate and one epoch (the options only
    shrink the built-in grid), and find what the README promises: ./runs/quick/ with its rows,
    and a leaderboard with the synthetic corpus's Bayes limit."""
    first = code_blocks("bash")[0].strip()
    setup, _, main = first.rpartition(" && ")
    assert main == "imerbench run"
    assert "pip install torch==2.13.0" in setup and "pip install -e ." in setup
    monkeypatch.chdir(tmp_path)
    reduced = [
        "--methods",
        "early-fusion",
        "--missing-rates",
        "0.5",
        "--epochs",
        "1",
        "--jobs",
        "1",
    ]
    code, out, err = run_cli(*main.split()[1:], *reduced)
    assert code == 0, err
    assert "Bayes limit" in out and "early-fusion" in out
    rows = read_results(tmp_path / "runs" / "quick")
    assert set(rows["dataset"]) == {"synthetic"} and set(rows["method"]) == {"early-fusion"}
    assert set(rows["seed"]) == set(default_grid().seeds) and (rows["status"] == "ok").all()


def test_readme_example_method_registers_and_learns() -> None:
    example = next(b for b in code_blocks("python") if "register_method" in b)
    try:
        exec(compile(example, "README.md", "exec"), {"__name__": "readme_example"})
        method = create_method("my-method", "quick", epochs=15)
        corpus = tiny_corpus(num_dialogues=48, seed=3)
        spec, splits = parse_mask_spec("0.0"), splits_for(corpus)
        outcome = train_cell(method, corpus, splits, fold=0, mask=spec, seed=0, primary="wa")
        assert outcome.selected["val"].test["fused"]["wa"] > 0.7
    finally:
        unregister_method("my-method")


def test_readme_example_dataset_registers_and_loads(tmp_path: Path) -> None:
    example = next(b for b in code_blocks("python") if "register_dataset" in b)
    corpus = tiny_corpus(num_dialogues=12, seed=1)
    fold = corpus.fold(0)
    features = {f"features_{m}": x for m, x in corpus.features.items()}
    np.savez(tmp_path / "my-dataset.npz", labels=corpus.labels, speakers=corpus.speakers,
             offsets=corpus.dialogue_offsets, train=fold.train, val=fold.val, test=fold.test,
             **features)  # fmt: skip
    try:
        exec(compile(example, "README.md", "exec"), {"__name__": "readme_dataset"})
        loaded = load_dataset("my-dataset", tmp_path)
        assert loaded.name == "my-dataset" and loaded.num_utterances == corpus.num_utterances
        np.testing.assert_array_equal(loaded.labels, corpus.labels)
        np.testing.assert_array_equal(loaded.features["t"], corpus.features["t"])
        assert [len(loaded.fold(0).get(s)) for s in ("train", "val", "test")] == [
            len(fold.get(s)) for s in ("train", "val", "test")
        ]
        with pytest.raises(ImerbenchError, match="pass --data-root DIR"):
            load_dataset("my-dataset")
    finally:
        unregister_dataset("my-dataset")


def test_readme_lists_every_grid_key() -> None:
    from imerbench.grid_file import GRID_KEYS

    readme = (ROOT / "README.md").read_text()
    for key in GRID_KEYS:
        assert f"| `{key}` |" in readme, key
