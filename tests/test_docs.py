"""The README says what the code does: its commands and its example method."""

from __future__ import annotations

import re
from pathlib import Path

from tiny_corpus import tiny_corpus

from imerbench.data import MaskStore, SplitData, parse_mask_spec
from imerbench.registry import _REGISTRY, create_method
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


def test_readme_main_command_runs_the_default_grid() -> None:
    first = code_blocks("bash")[0].strip()
    assert first.endswith("imerbench run")
    assert "pip install torch==2.13.0" in first


def test_readme_example_method_registers_and_learns() -> None:
    example = next(b for b in code_blocks("python") if "register_method" in b)
    try:
        exec(compile(example, "README.md", "exec"), {"__name__": "readme_example"})
        method = create_method("my-method", "quick", epochs=15)
        corpus = tiny_corpus(num_dialogues=48, seed=3)
        spec, store = parse_mask_spec("0.0"), MaskStore(None)
        splits = {}
        for split in ("train", "val", "test"):
            splits[split] = SplitData(corpus, corpus.fold(0).get(split), "cpu")
            if split != "train":
                splits[split].set_mask(store.get(corpus, 0, split, spec, 0))
        outcome = train_cell(method, corpus, splits, fold=0, mask=spec, seed=0, primary="wa")
        assert outcome.selected["val"].test["fused"]["wa"] > 0.7
    finally:
        _REGISTRY.pop("my-method", None)
