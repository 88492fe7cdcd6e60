"""The restricted label unpickler: admits the published files, refuses code, names the file."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hostile_pickles import Open, System

from imerbench.data.safe_pickle import load_label_pickle
from imerbench.errors import ImerbenchError

REAL_LABELS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gcnet-labels"


def _dump(path: Path, obj: object, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _error(path: Path) -> str:
    with pytest.raises(ImerbenchError) as info:
        load_label_pickle(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# ------------------------------------------------------------------------------------------
# What is admitted


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_builtin_containers_load_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    items = [
        {"vid": ["u1", "u2"]},
        {"vid": [1, 2.5, None, True]},
        {"a", "b"},
        frozenset({"c"}),
        ("t", 1),
        collections.OrderedDict(x=1),
        collections.defaultdict(list, y=[1]),
    ]
    loaded = load_label_pickle(_dump(tmp_path / "x.pkl", items, protocol))
    assert loaded == items
    assert isinstance(loaded[5], collections.OrderedDict)
    assert isinstance(loaded[6], collections.defaultdict)
    assert loaded[6]["new"] == []  # the admitted factory works


def test_numpy_arrays_and_scalars_load(tmp_path: Path) -> None:
    items = [
        {"v": [np.float64(2.4), np.int64(3)]},
        {"v": np.array(["hello", "world"])},
        np.arange(6, dtype=np.float32).reshape(2, 3),
    ]
    loaded = load_label_pickle(_dump(tmp_path / "np.pkl", items, 4))
    assert loaded[0]["v"] == [2.4, 3] and isinstance(loaded[0]["v"][0], np.float64)
    assert list(loaded[1]["v"]) == ["hello", "world"]
    np.testing.assert_array_equal(loaded[2], items[2])


@pytest.mark.parametrize("module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_both_numpy_module_names_are_accepted(tmp_path: Path, module: bytes) -> None:
    """numpy 1 (the published files) and numpy 2 name the array helpers' module differently."""
    # Protocol 3 writes globals as text lines and has no frames, so the name can be swapped.
    data = pickle.dumps([np.float64(1.5), np.arange(3)], protocol=3)
    for name in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        data = data.replace(b"c" + name + b"\n", b"c" + module + b"\n")
    assert b"c" + module + b"\n" in data
    (tmp_path / "m.pkl").write_bytes(data)
    loaded = load_label_pickle(tmp_path / "m.pkl")
    assert loaded[0] == 1.5
    np.testing.assert_array_equal(loaded[1], np.arange(3))


def test_a_tuple_becomes_a_list(tmp_path: Path) -> None:
    assert load_label_pickle(_dump(tmp_path / "t.pkl", ({}, {}))) == [{}, {}]


@pytest.mark.skipif(not REAL_LABELS.is_dir(), reason="shared/data/gcnet-labels is absent")
@pytest.mark.parametrize(
    "name",
    [
        "CMUMOSI_features_raw_2way.pkl",
        "IEMOCAP_features_raw_4way.pkl",
        "IEMOCAP_features_raw_6way.pkl",
    ],
)
def test_real_label_pickles_load_as_pickle_does(name: str) -> None:
    path = REAL_LABELS / name
    if not path.is_file():
        pytest.skip(f"{name} is absent")
    safe = load_label_pickle(path)
    with open(path, "rb") as fh:
        plain = pickle.load(fh, encoding="latin1")
    assert len(safe) == len(plain) in (6, 7)
    assert safe[0] == plain[0] and safe[1] == plain[1] and safe[2] == plain[2]
    assert list(safe[4:]) == list(plain[4:])
    for vid, sentences in plain[3].items():
        assert list(np.asarray(safe[3][vid])) == list(np.asarray(sentences))


# ------------------------------------------------------------------------------------------
# What is refused, without running it


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (System, f"{os.system.__module__}.system"),
        (Open, f"{builtins.open.__module__}.open"),
    ],
)
def test_code_in_a_pickle_is_refused_and_never_run(
    tmp_path: Path, payload: type, refused: str
) -> None:
    target = tmp_path / "pwned"
    # Hidden where a real file keeps its sentences, inside an otherwise valid label list.
    items = [{"v": ["u"]}, {"v": [1]}, {"v": ["F"]}, {"v": payload(target)}, set(), set()]
    path = _dump(tmp_path / "evil.pkl", items, 2)
    message = _error(path)
    assert not target.exists()
    assert f"refuses to load class '{refused}'" in message
    assert "not a label pickle from the published layout" in message


@pytest.mark.parametrize(
    ("module", "name"),
    [("builtins", "eval"), ("builtins", "getattr"), ("numpy", "load"), ("subprocess", "run")],
)
def test_any_other_global_is_refused(tmp_path: Path, module: str, name: str) -> None:
    # GLOBAL then STOP: the global is looked up, and refused, before anything could call it.
    path = tmp_path / "g.pkl"
    path.write_bytes(b"c" + module.encode() + b"\n" + name.encode() + b"\n.")
    assert f"'{module}.{name}'" in _error(path)


def test_a_refused_name_with_control_characters_stays_one_line(tmp_path: Path) -> None:
    def short_unicode(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    path = tmp_path / "nl.pkl"
    path.write_bytes(b"\x80\x04" + short_unicode("os\nx") + short_unicode("sys\rtem") + b"\x93.")
    message = _error(path)
    assert "refuses to load class" in message and "os\\nx" in message


def test_persistent_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pid.pkl"
    path.write_bytes(b"Pabc\n.")
    assert "persistent ids" in _error(path)


# ------------------------------------------------------------------------------------------
# Damaged or wrong files


def test_truncated_pickle_is_one_clear_line(tmp_path: Path) -> None:
    data = pickle.dumps([{"v": ["u"] * 50}, {"v": [1] * 50}], protocol=4)
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _error(path)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", bytes(range(256))])
def test_garbage_is_one_clear_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    message = _error(path)
    assert "cannot read the label pickle" in message or "refuses" in message


def test_top_level_must_be_a_list(tmp_path: Path) -> None:
    message = _error(_dump(tmp_path / "d.pkl", {"videoIDs": {}}))
    assert "holds a dict" in message


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope.pkl")
    assert "cannot read label pickle" in message
