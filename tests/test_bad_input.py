"""Bad input never passes silently: damaged feature files, inconsistent or hostile label
pickles, bad grid files and bad options each end in one error line that names the file or the
value, with nothing written as if the data were valid. The readers are also fuzzed."""

from __future__ import annotations

import builtins
import copy
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hostile_pickles import Open, System
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imerbench.data import (
    DEFAULT_FEATURE_NAMES,
    Corpus,
    DatasetInfo,
    Fold,
    leave_one_group_out,
    read_gcnet,
    resolve_dataset,
    write_gcnet,
)
from imerbench.data.safe_pickle import load_label_pickle
from imerbench.errors import ImerbenchError

WIDTHS = {"a": 4, "t": 5, "v": 6}


# ------------------------------------------------------------------------------------------
# A tiny dataset, written by the project's own writer


def tiny_corpus(dataset: str, seed: int = 0) -> Corpus:
    """IEMOCAP-like: two dialogues per session; MOSI-like: six videos in the official split."""
    info = resolve_dataset(dataset)
    gen = np.random.default_rng(seed)
    if info.task == "classification":
        dialogues = [f"Ses0{s}F_impro0{k}" for s in range(1, 6) for k in (1, 2)]
        uids = [f"{vid}_{'FM'[j % 2]}{j:03d}" for vid in dialogues for j in range(3)]
        labels: np.ndarray = np.arange(len(uids), dtype=np.int64) % info.num_classes
        speakers = np.arange(len(uids), dtype=np.int64) % 2
        names: tuple[str, ...] = ("F", "M")
        folds = leave_one_group_out([int(v[4]) for v in dialogues], seed=dataset)
    else:
        dialogues = [f"video{k}" for k in range(6)]
        uids = [f"{vid}_{j + 1}" for vid in dialogues for j in range(3)]
        labels = gen.uniform(-3, 3, len(uids)).round(1).astype(np.float32)
        speakers = np.zeros(len(uids), dtype=np.int64)
        names = ("",)
        folds = (Fold(train=np.arange(3), val=np.array([3]), test=np.array([4, 5])),)
    n = len(uids)
    return Corpus(
        name=dataset,
        task=info.task,
        num_classes=info.num_classes,
        features={m: gen.standard_normal((n, w)).astype(np.float32) for m, w in WIDTHS.items()},
        labels=labels,
        speakers=speakers,
        speaker_names=names,
        utterance_ids=tuple(uids),
        dialogue_ids=tuple(dialogues),
        dialogue_offsets=np.arange(0, n + 1, 3, dtype=np.int64),
        folds=folds,
        pad_length=8,
    )


@dataclass
class Tiny:
    """A written tiny dataset and where its files are."""

    info: DatasetInfo
    root: Path
    dataset_dir: Path
    corpus: Corpus

    @property
    def label_path(self) -> Path:
        return self.dataset_dir / self.info.label_file

    def feature(self, modality: str, uid: str) -> Path:
        return self.dataset_dir / "features" / DEFAULT_FEATURE_NAMES[modality] / f"{uid}.npy"

    def edit_labels(self, change: Callable[[list], None]) -> None:
        items = load_label_pickle(self.label_path)
        change(items)
        self.label_path.write_bytes(pickle.dumps(items, protocol=2))

    def rename_utterance(self, old: str, new: str) -> None:
        """In the label pickle and on disk, so that only the id itself is wrong."""

        def change(items: list) -> None:
            for uids in items[0].values():
                if old in uids:
                    uids[uids.index(old)] = new

        self.edit_labels(change)
        for m in WIDTHS:
            self.feature(m, old).rename(self.feature(m, new))


def write_tiny(dataset: str, root: Path) -> Tiny:
    corpus = tiny_corpus(dataset)
    info = resolve_dataset(dataset)
    return Tiny(info, root, write_gcnet(corpus, info, root), corpus)


def _cache_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.npz")) if cache.exists() else []


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own parsed-feature cache, so that an entry written by it shows."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("IMERBENCH_CACHE", str(folder))
    return folder


# ------------------------------------------------------------------------------------------
# Bad data: each case spoils a tiny dataset and returns what its error must say


def _pwned(tiny: Tiny) -> Path:
    return tiny.root.parent / "pwned"


def _truncate(tiny: Tiny) -> list[str]:
    path = tiny.feature("a", tiny.corpus.utterance_ids[4])
    path.write_bytes(path.read_bytes()[:-3])
    return [str(path), "cannot be read as a .npy array"]


def _garbage(tiny: Tiny) -> list[str]:
    path = tiny.feature("t", tiny.corpus.utterance_ids[2])
    path.write_bytes(bytes(range(7, 200, 3)))
    return [str(path), "cannot be read as a .npy array", "not a .npy file"]


def _bad_header(tiny: Tiny) -> list[str]:
    path = tiny.feature("v", tiny.corpus.utterance_ids[5])
    path.write_bytes(path.read_bytes().replace(b"'shape'", b"'shap3'"))
    return [str(path), "cannot be read as a .npy array"]


def _header_claims_more(tiny: Tiny) -> list[str]:
    path = tiny.feature("v", tiny.corpus.utterance_ids[6])
    path.write_bytes(path.read_bytes().replace(b"(6,)", b"(9,)"))
    return [str(path), "cannot be read as a .npy array"]


def _wrong_width(tiny: Tiny) -> list[str]:
    path = tiny.feature("t", tiny.corpus.utterance_ids[7])
    np.save(path, np.ones(7, dtype=np.float32))
    return [str(path), "has width 7", "have width 5"]


def _wrong_width_first(tiny: Tiny) -> list[str]:
    """The odd file is the first one read: the message must still name it, not the others."""
    first = sorted(tiny.corpus.dialogue_ids)[0]
    path = tiny.feature("a", f"{first}_F000" if tiny.info.folder == "IEMOCAP" else f"{first}_1")
    np.save(path, np.ones(9, dtype=np.float32))
    return [str(path), "has width 9", "have width 4"]


def _extra_item(tiny: Tiny) -> list[str]:
    tiny.edit_labels(lambda items: items.append(set()))
    count = 7 if tiny.info.folder == "IEMOCAP" else 8
    return [str(tiny.label_path), f"holds {count} items"]


def _missing_item(tiny: Tiny) -> list[str]:
    tiny.edit_labels(lambda items: items.pop())
    count = 5 if tiny.info.folder == "IEMOCAP" else 6
    return [str(tiny.label_path), f"holds {count} items"]


def _foreign_system(tiny: Tiny) -> list[str]:
    tiny.edit_labels(
        lambda items: items[3].update({tiny.corpus.dialogue_ids[0]: System(_pwned(tiny))})
    )
    return [str(tiny.label_path), f"refuses to load class '{os.system.__module__}.system'"]


def _foreign_open(tiny: Tiny) -> list[str]:
    tiny.edit_labels(
        lambda items: items[3].update({tiny.corpus.dialogue_ids[1]: Open(_pwned(tiny))})
    )
    return [str(tiny.label_path), f"refuses to load class '{builtins.open.__module__}.open'"]


def _dialogue_without_session(tiny: Tiny) -> list[str]:
    def change(items: list) -> None:
        for k in range(4):
            items[k]["Session_three"] = items[k].pop("Ses03F_impro01")

    tiny.edit_labels(change)
    return [str(tiny.label_path), "dialogue id 'Session_three' has no session digit"]


def _utterance_without_session(tiny: Tiny) -> list[str]:
    tiny.rename_utterance("Ses02F_impro02_M001", "Sess_no_digit_M001")
    return ["utterance id 'Sess_no_digit_M001'", "'Ses02F_impro02'", "no session digit"]


def _utterance_in_another_session(tiny: Tiny) -> list[str]:
    tiny.rename_utterance("Ses02F_impro02_M001", "Ses04F_impro02_M001")
    return ["'Ses04F_impro02_M001' is from session 4", "'Ses02F_impro02' is from session 2"]


def _empty_dialogue(tiny: Tiny) -> list[str]:
    vid = "Ses04F_empty" if tiny.info.folder == "IEMOCAP" else "video_empty"

    def change(items: list) -> None:
        for k in range(4):
            items[k][vid] = []

    tiny.edit_labels(change)
    return [str(tiny.label_path), f"'{vid}' has no utterances"]


def _set_label(value: object, uid_index: int = 4) -> Callable[[Tiny], list[str]]:
    def spoil(tiny: Tiny) -> list[str]:
        uid = tiny.corpus.utterance_ids[uid_index]
        vid = next(v for v in tiny.corpus.dialogue_ids if uid.startswith(v))

        def change(items: list) -> None:
            items[1][vid][items[0][vid].index(uid)] = value

        tiny.edit_labels(change)
        return [str(tiny.label_path), f"'{uid}'"]

    return spoil


def _with(spoil: Callable[[Tiny], list[str]], *words: str) -> Callable[[Tiny], list[str]]:
    return lambda tiny: [*spoil(tiny), *words]


DATA_CASES: dict[str, tuple[str, Callable[[Tiny], list[str]]]] = {
    "truncated npy": ("iemocap4", _truncate),
    "garbage npy": ("mosi", _garbage),
    "bad npy header": ("iemocap4", _bad_header),
    "npy header claims more data": ("mosi", _header_claims_more),
    "one file of another width": ("iemocap4", _wrong_width),
    "the first file has another width": ("mosi", _wrong_width_first),
    "label pickle with an extra item": ("iemocap4", _extra_item),
    "label pickle missing an item": ("mosi", _missing_item),
    "foreign class os.system": ("iemocap4", _foreign_system),
    "foreign class builtins.open": ("mosi", _foreign_open),
    "dialogue id without a session digit": ("iemocap4", _dialogue_without_session),
    "utterance id without a session digit": ("iemocap4", _utterance_without_session),
    "utterance id of another session": ("iemocap4", _utterance_in_another_session),
    "empty dialogue": ("iemocap4", _empty_dialogue),
    "empty video": ("mosi", _empty_dialogue),
    "class label = number of classes": ("iemocap4", _with(_set_label(4), "label 4", "0..3")),
    "negative class label": ("iemocap4", _with(_set_label(-1), "label -1", "0..3")),
    "fractional class label": ("iemocap4", _with(_set_label(2.5), "label 2.5")),
    "sentiment above 3": ("mosi", _with(_set_label(3.25), "label 3.25", "[-3, 3]")),
    "sentiment below -3": ("mosi", _with(_set_label(-7), "label -7", "[-3, 3]")),
    "NaN sentiment": ("mosi", _with(_set_label(math.nan), "label nan", "[-3, 3]")),
    "infinite sentiment": ("mosi", _with(_set_label(-math.inf), "label -inf", "[-3, 3]")),
    "sentiment too large for a float": ("mosi", _with(_set_label(10**400), "[-3, 3]")),
}


@pytest.fixture(params=list(DATA_CASES))
def spoiled(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Tiny, list[str]]:
    dataset, spoil = DATA_CASES[request.param]
    tiny = write_tiny(dataset, tmp_path / "data")
    return tiny, spoil(tiny)


def _assert_refused(message: str, words: list[str], tiny: Tiny, cache: Path) -> None:
    """The error names what is wrong, and the refused data left no cache and ran no code."""
    for word in words:
        assert word in message, (word, message)
    assert _cache_files(cache) == []
    assert not _pwned(tiny).exists(), "a label pickle ran code"


def test_bad_data_is_one_line_and_leaves_no_cache(
    spoiled: tuple[Tiny, list[str]], _cache_in_tmp: Path
) -> None:
    tiny, words = spoiled
    with pytest.raises(ImerbenchError) as info:
        read_gcnet(tiny.info, tiny.root, feature_names=None)
    message = str(info.value)
    assert "\n" not in message and "allow_pickle" not in message  # never advise unsafe loading
    _assert_refused(message, words, tiny, _cache_in_tmp)


def test_bad_data_fails_data_check_with_one_line(
    one_error_line,
    spoiled: tuple[Tiny, list[str]],
    _cache_in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tiny, words = spoiled
    line = one_error_line("data", "check", str(tiny.root), code=1)
    _assert_refused(line, words, tiny, _cache_in_tmp)


def test_bad_data_stops_a_run_before_any_cell(
    one_error_line,
    spoiled: tuple[Tiny, list[str]],
    _cache_in_tmp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tiny, words = spoiled
    out = tmp_path / "out"
    args = ["run", "--datasets", tiny.info.id, "--data-root", str(tiny.root)]
    args += ["--methods", "early-fusion", "--epochs", "1", "--jobs", "1", "--out", str(out)]
    line = one_error_line(*args)
    _assert_refused(line, words, tiny, _cache_in_tmp)
    assert not out.exists(), "a failed run left a results folder behind"


def test_the_tiny_dataset_itself_is_clean(
    run_cli,
    tmp_path: Path,
    _cache_in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The cases above fail because of what they spoil, not because the builder is wrong."""
    for dataset in ("iemocap4", "mosi"):
        tiny = write_tiny(dataset, tmp_path / dataset)
        corpus = read_gcnet(tiny.info, tiny.root, feature_names=None)
        np.testing.assert_array_equal(corpus.labels, tiny.corpus.labels)
        assert corpus.widths == WIDTHS
        code, out, err = run_cli("data", "check", str(tiny.root))
        assert code == 0 and err == "" and out.splitlines()[-1] == "all ok"
    assert len(_cache_files(_cache_in_tmp)) == 2  # valid data is cached


def test_data_check_reports_two_problems_as_two_lines(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line per problem, each naming its file; the report itself stays on stdout."""
    tiny = write_tiny("iemocap4", tmp_path)
    bad = [tiny.feature("a", tiny.corpus.utterance_ids[k]) for k in (3, 11)]
    for path in bad:
        path.write_bytes(b"junk")
    code, out, err = run_cli("data", "check", str(tiny.root))
    lines = err.splitlines()
    assert code == 1 and len(lines) == 2
    assert all(str(p) in line for p, line in zip(bad, lines, strict=True))
    assert "30 utterances in 10 dialogues" in out and "problems found: 2" in out


def test_writing_iemocap_checks_utterance_sessions(tmp_path: Path) -> None:
    """What the reader refuses, the writer refuses to write."""
    corpus = tiny_corpus("iemocap4")
    for uid, words in [("odd_M001", "no session digit"), ("Ses04F_x_M001", "from session 4")]:
        ids = list(corpus.utterance_ids)
        ids[4] = uid
        bad = replace(corpus, utterance_ids=tuple(ids))
        with pytest.raises(ImerbenchError, match=words) as info:
            write_gcnet(bad, resolve_dataset("iemocap4"), tmp_path / uid)
        assert f"'{uid}'" in str(info.value)
        assert not (tmp_path / uid / "IEMOCAP" / "IEMOCAP_features_raw_4way.pkl").exists()


# ------------------------------------------------------------------------------------------
# The safe loader's bounds: what a few bytes may not make it allocate, hash or build


def _object_array_claiming(elements: int) -> bytes:
    """An object array whose state claims `elements` elements (it holds two)."""
    data = pickle.dumps([np.array([1, None], dtype=object)], protocol=4)
    assert data.count(b"K\x02\x85") == 1  # the state's shape (2,)
    return data.replace(b"K\x02\x85", b"J" + elements.to_bytes(4, "little") + b"\x85")


def _dtype_with_object_flags() -> bytes:
    """A string dtype whose state carries the flags of an object dtype."""
    data = pickle.dumps([np.dtype("U3")], protocol=4)
    assert data.count(b"K\x04K\x08t") == 1  # alignment 4, flags 8
    return data.replace(b"K\x04K\x08t", b"K\x04K?t")


BOUND_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "array shape": (
        lambda: (
            b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            b"J\x00\x00\x00\x40\x85C\x01b\x87R."
        ),
        "an array of 1073741824 elements",
    ),
    "object array state": (lambda: _object_array_claiming(1 << 30), "of 1073741824 elements"),
    "dtype flags": (_dtype_with_object_flags, "a numpy dtype state other than"),
    "tuple key": (lambda: pickle.dumps([{("a", "b"): 1}], 4), "a tuple as a dict key"),
    "tuple in a set": (lambda: pickle.dumps([{("a",)}], 2), "a tuple as a dict key"),
    "long integer": (lambda: pickle.dumps([1 << 20000], 2), "an integer of 2501 bytes"),
    "bytearray": (
        lambda: b"\x80\x05\x96" + (1 << 40).to_bytes(8, "little") + b".",
        "a bytearray of 1099511627776 bytes",
    ),
    "extension code": (lambda: b"\x80\x02\x82\x01.", "extension code 1"),
    "ndarray called": (lambda: b"\x80\x02cnumpy\nndarray\nK\x05\x85R.", "called directly"),
    "state of a list": (lambda: b"\x80\x02]}b.", "to set the state of a list"),
}


@pytest.mark.parametrize("case", list(BOUND_CASES))
def test_the_safe_loader_refuses_what_would_cost_memory_or_time(tmp_path: Path, case: str) -> None:
    build, words = BOUND_CASES[case]
    path = tmp_path / "labels.pkl"
    path.write_bytes(build())
    start = time.perf_counter()
    with pytest.raises(ImerbenchError) as info:
        load_label_pickle(path)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert str(path) in message and words in message and "\n" not in message


def test_a_huge_memo_index_costs_nothing(tmp_path: Path) -> None:
    """Protocol-2 files name memo slots by number; the C unpickler would clear 8 GiB here."""
    path = tmp_path / "labels.pkl"
    path.write_bytes(b"\x80\x02]r" + (1 << 30).to_bytes(4, "little") + b".")
    start = time.perf_counter()
    assert load_label_pickle(path) == []
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------------------
# Grid files and CLI options


EF = 'methods = ["early-fusion"]\n'
GRID_FILE_CASES: list[tuple[str, list[str]]] = [
    (EF + "missing_rate = [0.3]", ["unknown key 'missing_rate'", "did you mean 'missing_rates'"]),
    (EF + 'seeds = "zero"', ["'seeds'", "zero is not an integer"]),
    (EF + "seeds = [0, 0.5]", ["'seeds'", "0.5 is not an integer"]),
    (EF + "seeds = [-3]", ["'seeds'", "-3 is below 0"]),
    (EF + "seeds = [1, 1]", ["'seeds' lists 1 twice"]),
    (EF + 'epochs = "ten"', ["'epochs'", "ten is not an integer"]),
    (EF + "epochs = 0", ["'epochs'", "0 is below 1"]),
    ("methods = 3", ["'methods'", "an integer (3) is not a method name"]),
    (EF + "datasets = {synthetic = 1}", ["'datasets' must be a list, not a table"]),
    (EF + "protocol = 1", ["'protocol' must be a string, not an integer"]),
    (EF + "missing_rates = [true]", ["a boolean (True) is not a missing rate"]),
    (EF + 'name = ["quick"]', ["'name' must be a non-empty string"]),
    (EF + 'name = "../elsewhere"', ["must be one folder name"]),
    (EF + "folds = [-1]", ["'folds'", "-1 is below 0"]),
    (EF + "missing_rates = [0.0, 0.8]", ["'missing_rates'", "0.8 is outside [0, 0.7]"]),
    (EF + "missing_rates = [-0.1]", ["'missing_rates'", "-0.1 is outside [0, 0.7]"]),
    ('methods = ["early-fusion", "early-fusion"]', ["'methods' lists early-fusion twice"]),
    ('methods = ["erly-fusion"]', ["unknown method 'erly-fusion'", "did you mean 'early-fusion'"]),
    (EF + 'datasets = ["iemocap5"]', ["unknown dataset 'iemocap5'", "did you mean 'iemocap"]),
    (EF + "seeds = [1]\nseeds = [2]", ["is not valid TOML"]),
]


@pytest.mark.parametrize(("text", "words"), GRID_FILE_CASES)
def test_bad_grid_file_is_one_line_naming_the_file(
    one_error_line,
    text: str,
    words: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    grid = tmp_path / "mine.toml"
    grid.write_text(text)
    line = one_error_line("run", str(grid), "--out", str(tmp_path / "o"))
    assert str(grid) in line
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / "o").exists()


OPTION_CASES: list[tuple[list[str], list[str]]] = [
    (["--missing-rates", "0.3,0.71"], ["--missing-rates", "missing rate 0.71 is outside [0, 0.7]"]),
    (["--missing-rates", "-0.2"], ["--missing-rates", "missing rate -0.2 is outside [0, 0.7]"]),
    (["--missing-rates", "nan"], ["--missing-rates", "'nan' is not a missing rate"]),
    (["--methods", "early-fusion,early-fusion"], ["--methods lists early-fusion twice"]),
    (["--methods", "early-fusoin"], ["--methods", "did you mean 'early-fusion'"]),
    (["--datasets", "mosii"], ["--datasets", "unknown dataset 'mosii'", "did you mean 'mosi'"]),
    (["--seeds", "-1"], ["--seeds", "-1 is below 0"]),
    (["--seeds", "0,x"], ["--seeds", "x is not an integer"]),
    (["--seeds", "1.5"], ["--seeds", "1.5 is not an integer"]),
    (["--seeds", "2,2"], ["--seeds lists 2 twice"]),
    (["--folds", "-1"], ["--folds", "-1 is below 0"]),
    (["--epochs", "0"], ["--epochs", "0 is below 1"]),
    (["--epochs", "-2"], ["--epochs", "-2 is below 1"]),
    (["--epochs", "abc"], ["'--epochs'", "'abc' given", "(see 'imerbench run --help')"]),
    (["--epochs=1.5"], ["'--epochs'", "'1.5' given"]),
    (["--epoch", "3"], ["No such option: --epoch", "--epochs"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "words"), OPTION_CASES)
def test_bad_option_is_one_line_naming_it(
    one_error_line,
    args: list[str],
    words: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "o"
    line = one_error_line("run", *args, "--dry-run", "--out", str(out))
    for word in words:
        assert word in line, (word, line)
    assert not out.exists()


def test_the_console_script_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    """The installed `imerbench` entry point, in a process of its own."""
    script = Path(sys.executable).with_name("imerbench")
    if not script.exists():
        pytest.skip("the imerbench console script is not installed next to this Python")
    tiny = write_tiny("iemocap4", tmp_path / "data")
    _truncate(tiny)
    env = {**os.environ, "IMERBENCH_CACHE": str(tmp_path / "cache")}
    runs = {
        "check": ([str(script), "data", "check", str(tiny.root)], 1),
        "run": ([str(script), "run", "--datasets", "iemocap4", "--data-root", str(tiny.root)], 2),
    }
    for name, (argv, status) in runs.items():
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
        )
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == status, (name, done.stderr)
        assert len(lines) == 1 and "Traceback" not in done.stderr, (name, done.stderr)
        assert str(tiny.feature("a", tiny.corpus.utterance_ids[4])) in lines[0]
    runs_dir = tmp_path / "runs"
    assert not runs_dir.exists() or not [p for p in runs_dir.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------------
# Fuzzing the readers: a damaged file reads as a valid corpus or fails with one line, never
# with another exception, never slowly, and never by running what it names

FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=3),
    database=None,  # no example database: every run draws afresh
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def mutations(draw: st.DrawFn, base: bytes, focus: tuple[int, int] | None = None) -> bytes:
    """`base` after 1-4 byte flips, truncations, insertions or deletions, placed anywhere or
    within `focus` (a byte range)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        lo, hi = focus or (0, len(data))
        lo, hi = min(lo, len(data) - 1), min(hi, len(data))
        pos = draw(st.integers(lo, max(lo, hi - 1)))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if kind == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


def _published_style(items: list, info: DatasetInfo) -> list:
    """The same labels as the published files store them: protocol 4, numpy float labels and
    sentence arrays for MOSI (the writer's protocol-2 files hold plain Python values)."""
    if info.task == "regression":
        items[1] = {v: [np.float64(x) for x in labels] for v, labels in items[1].items()}
        items[3] = {v: np.array([f"words {k}" for k in range(len(s))]) for v, s in items[3].items()}
    return items


@dataclass
class FuzzBase:
    """A tiny dataset and one label pickle of it to mutate."""

    tiny: Tiny
    base: bytes  # the label pickle to mutate
    items: list  # what it holds
    written: bytes  # the file as the writer left it: restored after every example


@pytest.fixture(scope="module")
def fuzz_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FuzzBase]:
    """Tiny datasets and the label pickles to mutate: the writer's own (protocol 2) and
    published-style (protocol 4)."""
    root = tmp_path_factory.mktemp("fuzz")
    out: dict[str, FuzzBase] = {}
    for dataset in ("iemocap4", "mosi"):
        tiny = write_tiny(dataset, root / dataset)
        written = tiny.label_path.read_bytes()
        out[f"{dataset}-p2"] = FuzzBase(tiny, written, load_label_pickle(tiny.label_path), written)
        items = _published_style(load_label_pickle(tiny.label_path), tiny.info)
        out[f"{dataset}-p4"] = FuzzBase(tiny, pickle.dumps(items, protocol=4), items, written)
    return out


def _read_or_refuse(tiny: Tiny, use_cache: bool = False) -> Corpus | None:
    """The corpus, checked to be structurally valid, or None after a one-line refusal."""
    try:
        corpus = read_gcnet(tiny.info, tiny.root, feature_names=None, use_cache=use_cache)
    except ImerbenchError as err:
        assert "\n" not in str(err)
        return None
    n = corpus.num_utterances
    assert corpus.widths == WIDTHS and bool(corpus.present.all())
    for m, x in corpus.features.items():
        assert np.isfinite(x).all() and x.shape == (n, WIDTHS[m])
    assert len(set(corpus.utterance_ids)) == n == len(corpus.labels)
    assert list(corpus.dialogue_ids) == sorted(set(corpus.dialogue_ids))
    assert np.all(np.diff(corpus.dialogue_offsets) > 0) and corpus.dialogue_offsets[-1] == n
    if tiny.info.task == "classification":
        assert corpus.labels.dtype == np.int64
        assert corpus.labels.min() >= 0 and corpus.labels.max() < tiny.info.num_classes
        for d, vid in enumerate(corpus.dialogue_ids):
            rows = range(corpus.dialogue_offsets[d], corpus.dialogue_offsets[d + 1])
            assert all(corpus.utterance_ids[i][4] == vid[4] for i in rows)
    else:
        assert corpus.labels.dtype == np.float32 and np.all(np.abs(corpus.labels) <= 3)
    for fold in corpus.folds:
        joined = np.concatenate([fold.train, fold.val, fold.test])
        assert len(np.unique(joined)) == len(joined) and joined.max() < corpus.num_dialogues
    return corpus


def test_the_fuzz_bases_read_cleanly(fuzz_data: dict[str, FuzzBase]) -> None:
    """Unmutated, every base is a valid dataset, so that what the fuzzing refuses is damage."""
    for fuzz in fuzz_data.values():
        fuzz.tiny.label_path.write_bytes(fuzz.base)
        try:
            corpus = _read_or_refuse(fuzz.tiny)
        finally:
            fuzz.tiny.label_path.write_bytes(fuzz.written)
        assert corpus is not None
        np.testing.assert_allclose(corpus.labels, fuzz.tiny.corpus.labels)


@FUZZ
@given(data=st.data())
def test_fuzzed_label_pickles_read_or_fail_with_one_line(
    fuzz_data: dict[str, FuzzBase], data: st.DataObject
) -> None:
    fuzz = fuzz_data[data.draw(st.sampled_from(sorted(fuzz_data)))]
    fuzz.tiny.label_path.write_bytes(data.draw(mutations(fuzz.base)))
    try:
        _read_or_refuse(fuzz.tiny)
    finally:
        fuzz.tiny.label_path.write_bytes(fuzz.written)


@FUZZ
@given(data=st.data())
def test_fuzzed_code_in_a_label_pickle_never_runs(
    fuzz_data: dict[str, FuzzBase], data: st.DataObject
) -> None:
    """A pickle that would create a file, its opcodes around the payload mutated."""
    name = data.draw(st.sampled_from(sorted(fuzz_data)))
    fuzz = fuzz_data[name]
    target = fuzz.tiny.root / "pwned"
    payload = data.draw(st.sampled_from([System, Open]))(target)
    items = copy.deepcopy(fuzz.items)
    items[3][fuzz.tiny.corpus.dialogue_ids[2]] = payload
    evil = pickle.dumps(items, protocol=int(name[-1]))
    at = evil.index(b"system" if isinstance(payload, System) else b"open")
    fuzz.tiny.label_path.write_bytes(data.draw(mutations(evil, focus=(max(0, at - 24), at + 24))))
    try:
        _read_or_refuse(fuzz.tiny)
        assert not target.exists(), "a label pickle ran code"
    finally:
        fuzz.tiny.label_path.write_bytes(fuzz.written)
        target.unlink(missing_ok=True)


@FUZZ
@given(data=st.data())
def test_fuzzed_feature_files_read_or_fail_without_a_cache_entry(
    fuzz_data: dict[str, FuzzBase], _cache_in_tmp: Path, data: st.DataObject
) -> None:
    tiny = fuzz_data[data.draw(st.sampled_from(["iemocap4-p2", "mosi-p2"]))].tiny
    modality = data.draw(st.sampled_from(sorted(WIDTHS)))
    path = tiny.feature(modality, data.draw(st.sampled_from(tiny.corpus.utterance_ids)))
    original = path.read_bytes()
    shutil.rmtree(_cache_in_tmp, ignore_errors=True)
    path.write_bytes(data.draw(mutations(original)))
    try:
        if _read_or_refuse(tiny, use_cache=True) is None:
            assert _cache_files(_cache_in_tmp) == []
    finally:
        path.write_bytes(original)
