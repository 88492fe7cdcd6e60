"""Feature folders chosen by the user: `--features a=NAME,...` on the CLI and `features` in grid
files, checked at the boundary, read by the GCNet reader, and part of each cell's config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from tiny_corpus import tiny_corpus

from imerbench.cli import main
from imerbench.data import DEFAULT_FEATURE_NAMES, parse_feature_names, resolve_dataset, write_gcnet
from imerbench.errors import ImerbenchError
from imerbench.grid_file import grid_from_dict, load_grid

MINE = {"a": "my-audio", "v": "my-faces"}


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMERBENCH_CACHE", str(tmp_path / "cache"))


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["imerbench", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(monkeypatch, capsys, *args: str) -> str:
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _mosi_root(root: Path, feature_names: dict[str, str] | None) -> Path:
    """A tiny MOSI-layout corpus whose feature folders have the given names."""
    corpus = tiny_corpus("regression", num_dialogues=16, name="mosi")
    write_gcnet(corpus, resolve_dataset("mosi"), root, feature_names=feature_names)
    return root


def _run(monkeypatch, capsys, root: Path, out: Path, *extra: str) -> pd.DataFrame:
    code, stdout, err = run_cli(
        monkeypatch, capsys, "run", "--datasets", "mosi", "--data-root", str(root),
        "--methods", "early-fusion", "--missing-rates", "0.5", "--seeds", "0", "--epochs", "1",
        "--jobs", "1", "--device", "cpu", "--out", str(out), *extra,
    )  # fmt: skip
    assert code == 0, err
    assert "1 cells ran, 0 failed" in stdout
    return pd.read_csv(out / "results.csv")


def test_renamed_feature_folders_run_with_features_and_change_the_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # The same corpus written twice: under the papers' folder names and under the user's.
    default_root = _mosi_root(tmp_path / "default", None)
    mine_root = _mosi_root(tmp_path / "mine", MINE)
    # Without --features the renamed folders are not found, with a hint at the option.
    message = one_line_error(
        monkeypatch, capsys, "run", "--datasets", "mosi", "--data-root", str(mine_root),
        "--methods", "early-fusion", "--jobs", "1", "--device", "cpu",
        "--out", str(tmp_path / "refused"),
    )  # fmt: skip
    assert DEFAULT_FEATURE_NAMES["a"] in message and "--features a=" in message

    plain = _run(monkeypatch, capsys, default_root, tmp_path / "plain")
    named = _run(
        monkeypatch, capsys, mine_root, tmp_path / "named", "--features", "a=my-audio,v=my-faces"
    )
    assert set(plain["status"]) == set(named["status"]) == {"ok"}
    # Same data, same scores; but the folders are part of the configuration.
    key = ["selection", "condition", "output", "metric"]
    pd.testing.assert_series_equal(
        plain.sort_values(key)["value"].reset_index(drop=True),
        named.sort_values(key)["value"].reset_index(drop=True),
    )
    assert plain["config_hash"].nunique() == named["config_hash"].nunique() == 1
    assert plain["config_hash"].iloc[0] != named["config_hash"].iloc[0]
    (plain_cell,) = (tmp_path / "plain").glob("cells/mosi/early-fusion/*/cell.json")
    (named_cell,) = (tmp_path / "named").glob("cells/mosi/early-fusion/*/cell.json")
    assert "features" not in json.loads(plain_cell.read_text())  # default cells: as before
    assert json.loads(named_cell.read_text())["features"] == {**DEFAULT_FEATURE_NAMES, **MINE}

    # Naming the default folders is the default configuration: the cell is already done.
    code, stdout, _ = run_cli(
        monkeypatch, capsys, "run", "--datasets", "mosi", "--data-root", str(default_root),
        "--methods", "early-fusion", "--missing-rates", "0.5", "--seeds", "0", "--epochs", "1",
        "--jobs", "1", "--device", "cpu", "--out", str(tmp_path / "plain"),
        "--features", f"t={DEFAULT_FEATURE_NAMES['t']}",
    )  # fmt: skip
    assert code == 0 and "0 cells ran, 0 failed, 1 already done" in stdout


def test_data_check_reads_the_named_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    root = _mosi_root(tmp_path / "data", MINE)
    code, _, err = run_cli(monkeypatch, capsys, "data", "check", str(root))
    assert code == 1 and "my-audio" in err  # the default audio folder is not there
    code, stdout, err = run_cli(
        monkeypatch, capsys, "data", "check", str(root), "--features", "v=my-faces,a=my-audio"
    )
    assert code == 0, err
    assert "audio (a): my-audio:" in stdout and "video (v): my-faces:" in stdout
    assert "all ok" in stdout


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("x=foo", ["--features", "unknown modality 'x'", "valid: a, t, v"]),
        ("a=", ["--features", "feature name '' for modality 'a'"]),
        ("a", ["--features", "'a' is not a=NAME"]),
        ("a=one,a=two", ["--features", "modality 'a' twice"]),
        ("a=../up", ["--features", "feature name '../up'", "one folder name"]),
        (" ", ["--features", "are empty"]),
    ],
)
def test_a_bad_features_spec_is_one_line_naming_the_value(
    spec: str, words: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for command in (["run", "--dry-run", "--out", str(tmp_path)], ["data", "check", str(tmp_path)]):
        message = one_line_error(monkeypatch, capsys, *command, "--features", spec)
        for word in words:
            assert word in message, (command, message)


def test_grid_files_take_features_as_a_table_or_a_string(tmp_path: Path) -> None:
    base = 'methods = ["early-fusion"]\ndatasets = ["mosi"]\n'
    table = tmp_path / "table.toml"
    table.write_text(base + 'features = {a = "my-audio", v = "my-faces"}\n')
    text = tmp_path / "text.toml"
    text.write_text(base + 'features = "a=my-audio, v=my-faces"\n')
    assert load_grid(table).features == load_grid(text).features == MINE
    assert load_grid(table, features="t=other").features == {"t": "other"}  # the CLI wins
    assert grid_from_dict({"methods": ["early-fusion"]}, "x").features is None
    for value, words in [
        ({"x": "foo"}, "x.toml: 'features': unknown modality 'x'"),
        ({"a": 3}, "x.toml: 'features': feature name of modality 'a' must be a string"),
        (3, "x.toml: 'features' must be a string or a table, not an integer (3)"),
    ]:
        with pytest.raises(ImerbenchError) as err:
            grid_from_dict({"methods": ["early-fusion"], "features": value}, "x.toml")
        assert words in str(err.value) and "\n" not in str(err.value)


def test_parse_feature_names_keeps_only_what_was_named() -> None:
    assert parse_feature_names("v = faces") == {"v": "faces"}
    assert parse_feature_names({"t": "bert"}) == {"t": "bert"}
