"""Reading, checking and writing the GCNet layout, on tiny folders built here and on the real
label pickles (with generated features) where shared/data/gcnet-labels is present."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from imerbench.data import (
    DEFAULT_FEATURE_NAMES,
    Corpus,
    DatasetInfo,
    check_data_root,
    read_gcnet,
    resolve_dataset,
    write_gcnet,
)
from imerbench.data.gcnet import features as gcnet_features
from imerbench.data.safe_pickle import load_label_pickle
from imerbench.errors import ImerbenchError

REAL_LABELS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gcnet-labels"
IEMOCAP4, IEMOCAP6, MOSI = (resolve_dataset(d) for d in ("iemocap4", "iemocap6", "mosi"))
A, T, V = (DEFAULT_FEATURE_NAMES[m] for m in "atv")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own parsed-feature cache, never the user's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("IMERBENCH_CACHE", str(folder))
    return folder


# ------------------------------------------------------------------------------------------
# Building tiny folders


@dataclass
class Built:
    """A folder written by a builder, with what a correct reader must find in it."""

    root: Path
    dataset_dir: Path
    dialogues: list[str]  # sorted
    utterances: list[str]  # corpus order
    speakers: list[str]
    labels: list
    expected: dict[str, np.ndarray]  # modality -> [N, D] the reader must return


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)


def _pickle(path: Path, items: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(items, protocol=4))


def _iemocap_dialogues() -> dict[str, list[tuple[str, str, int]]]:
    """Two dialogues per session, 3-4 utterances each, both speakers; labels cycle 0..3."""
    out: dict[str, list[tuple[str, str, int]]] = {}
    k = 0
    # Written out of order so that the reader's sorting is visible.
    for session in (3, 1, 5, 2, 4):
        for name, n in (("script01_1", 3), ("impro02", 4)):
            vid = f"Ses0{session}F_{name}"
            utts = []
            for j in range(n):
                spk = "FM"[j % 2]
                utts.append((f"{vid}_{spk}{j:03d}", spk, k % 4))
                k += 1
            out[vid] = utts
    return out


def build_iemocap(
    root: Path,
    *,
    widths: tuple[int, int, int] = (5, 7, 3),
    frames: bool = False,
    faces: bool = False,
    info_label_file: str = IEMOCAP4.label_file,
    seed: int = 0,
) -> Built:
    """An IEMOCAP-like folder. `frames`: text files are [T, D]; `faces`: video is face folders."""
    rng = np.random.default_rng(seed)
    dialogues = _iemocap_dialogues()
    video_ids = {vid: [u for u, _, _ in utts] for vid, utts in dialogues.items()}
    labels = {vid: [lab for _, _, lab in utts] for vid, utts in dialogues.items()}
    speakers = {vid: [s for _, s, _ in utts] for vid, utts in dialogues.items()}
    sentences = {vid: [f"words {u}" for u, _, _ in utts] for vid, utts in dialogues.items()}
    train = {v for v in dialogues if v[4] != "5"}
    test = {v for v in dialogues if v[4] == "5"}
    dataset_dir = root / "IEMOCAP"
    _pickle(dataset_dir / info_label_file, [video_ids, labels, speakers, sentences, train, test])
    order = sorted(dialogues)
    utts = [u for vid in order for u in video_ids[vid]]
    spks = [s for vid in order for s in speakers[vid]]
    expected = {
        m: np.zeros((len(utts), w), dtype=np.float32) for m, w in zip("atv", widths, strict=True)
    }
    for i, (uid, spk) in enumerate(zip(utts, spks, strict=True)):
        a = rng.standard_normal(widths[0]).astype(np.float32)
        _save(dataset_dir / "features" / A / f"{uid}.npy", a)
        expected["a"][i] = a
        if frames:
            t = rng.standard_normal((2 + i % 4, widths[1])).astype(np.float32)
            expected["t"][i] = t.astype(np.float64).mean(axis=0)
        else:
            t = rng.standard_normal(widths[1]).astype(np.float32)
            expected["t"][i] = t
        _save(dataset_dir / "features" / T / f"{uid}.npy", t)
        if faces:
            own, other = [], []
            for j in range(1 + i % 3):
                for who in "FM":
                    face = rng.standard_normal(widths[2]).astype(np.float32)
                    _save(dataset_dir / "features" / V / uid / f"{who}_{j:04d}.npy", face)
                    (own if who == spk else other).append(face)
            (dataset_dir / "features" / V / uid / "notes.txt").write_text("not a face")
            expected["v"][i] = np.mean(np.asarray(own, dtype=np.float64), axis=0)
        else:
            v = rng.standard_normal(widths[2]).astype(np.float32)
            _save(dataset_dir / "features" / V / f"{uid}.npy", v)
            expected["v"][i] = v
    flat_labels = [lab for vid in order for lab in labels[vid]]
    return Built(root, dataset_dir, order, utts, spks, flat_labels, expected)


MOSI_VIDEOS = {  # vid -> (number of utterances, split)
    "b_video": (4, "train"),
    "a_video": (3, "train"),
    "c_video": (5, "train"),
    "d_video": (2, "val"),
    "f_video": (3, "test"),
    "e_video": (4, "test"),
}


def build_mosi(root: Path, *, widths: tuple[int, int, int] = (4, 6, 8), seed: int = 1) -> Built:
    rng = np.random.default_rng(seed)
    video_ids, labels, speakers, sentences = {}, {}, {}, {}
    splits: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for vid, (n, split) in MOSI_VIDEOS.items():
        video_ids[vid] = [f"{vid}_{j + 1}" for j in range(n)]
        # Never zero by chance: the only zero label is set below.
        magnitudes = np.round(rng.uniform(0.1, 3.0, n), 1) * rng.choice([-1.0, 1.0], n)
        labels[vid] = [np.float64(x) for x in magnitudes]
        speakers[vid] = [""] * n
        sentences[vid] = np.array([f"text {j}" for j in range(n)])
        splits[split].add(vid)
    labels["a_video"][0] = np.float64(0.0)
    dataset_dir = root / "CMUMOSI"
    _pickle(
        dataset_dir / MOSI.label_file,
        [video_ids, labels, speakers, sentences, splits["train"], splits["val"], splits["test"]],
    )
    order = sorted(video_ids)
    utts = [u for vid in order for u in video_ids[vid]]
    expected = {
        m: np.zeros((len(utts), w), dtype=np.float32) for m, w in zip("atv", widths, strict=True)
    }
    for m, w in zip("atv", widths, strict=True):
        for i, uid in enumerate(utts):
            x = rng.standard_normal(w).astype(np.float32)
            _save(dataset_dir / "features" / DEFAULT_FEATURE_NAMES[m] / f"{uid}.npy", x)
            expected[m][i] = x
    flat = [float(x) for vid in order for x in labels[vid]]
    return Built(root, dataset_dir, order, utts, [""] * len(utts), flat, expected)


def _edit_pickle(path: Path, change: Callable[[list], None]) -> None:
    items = load_label_pickle(path)
    change(items)
    path.write_bytes(pickle.dumps(items, protocol=4))


def _one_line_error(call: Callable[[], object]) -> str:
    with pytest.raises(ImerbenchError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _read(info: DatasetInfo, root: Path, **kw: object) -> Corpus:
    kw.setdefault("feature_names", None)
    return read_gcnet(info, root, **kw)  # type: ignore[arg-type]


def _assert_same_corpus(a: Corpus, b: Corpus) -> None:
    assert a.name == b.name and a.task == b.task and a.num_classes == b.num_classes
    for m in "atv":
        np.testing.assert_array_equal(a.features[m], b.features[m])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.labels.dtype == b.labels.dtype
    np.testing.assert_array_equal(a.speakers, b.speakers)
    np.testing.assert_array_equal(a.present, b.present)
    np.testing.assert_array_equal(a.dialogue_offsets, b.dialogue_offsets)
    assert a.speaker_names == b.speaker_names
    assert a.utterance_ids == b.utterance_ids and a.dialogue_ids == b.dialogue_ids
    assert a.pad_length == b.pad_length and a.class_names == b.class_names
    assert len(a.folds) == len(b.folds)
    for fa, fb in zip(a.folds, b.folds, strict=True):
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(fa.get(split), fb.get(split))


# ------------------------------------------------------------------------------------------
# Valid folders


def test_reads_an_iemocap_like_folder(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path)
    corpus = _read(IEMOCAP4, tmp_path)
    assert corpus.num_utterances == 35 and corpus.num_dialogues == 10
    assert list(corpus.dialogue_ids) == sorted(_iemocap_dialogues())
    assert list(corpus.utterance_ids) == built.utterances
    assert corpus.widths == {"a": 5, "t": 7, "v": 3}
    for m in "atv":
        np.testing.assert_array_equal(corpus.features[m], built.expected[m])
        assert corpus.features[m].dtype == np.float32
    assert corpus.labels.dtype == np.int64 and corpus.labels.tolist() == built.labels
    assert corpus.speaker_names == ("F", "M")
    assert [corpus.speaker_names[s] for s in corpus.speakers] == built.speakers
    assert corpus.present is not None and corpus.present.all()
    assert corpus.pad_length == 150 and corpus.class_names == ("happy", "sad", "neutral", "angry")
    assert corpus.info["root"] == str(tmp_path)
    assert corpus.info["label_file"] == str(built.dataset_dir / IEMOCAP4.label_file)
    # Leave one session out: fold k tests exactly the dialogues of one session.
    assert len(corpus.folds) == 5
    sessions = [vid[4] for vid in corpus.dialogue_ids]
    tested = []
    for fold in corpus.folds:
        test_sessions = {sessions[d] for d in fold.test}
        assert len(test_sessions) == 1 and len(fold.test) == 2
        tested += test_sessions
        assert len(fold.val) >= 1
        assert not {sessions[d] for d in fold.train} & test_sessions
        assert len(fold.train) + len(fold.val) + len(fold.test) == 10
    assert sorted(tested) == ["1", "2", "3", "4", "5"]


def test_reads_a_mosi_like_folder(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    corpus = _read(MOSI, tmp_path)
    assert corpus.num_utterances == 21 and corpus.num_dialogues == 6
    assert list(corpus.dialogue_ids) == sorted(MOSI_VIDEOS)
    assert list(corpus.utterance_ids) == built.utterances
    assert corpus.widths == {"a": 4, "t": 6, "v": 8}
    for m in "atv":
        np.testing.assert_array_equal(corpus.features[m], built.expected[m])
    assert corpus.task == "regression" and corpus.labels.dtype == np.float32
    np.testing.assert_allclose(corpus.labels, built.labels, rtol=1e-6)
    assert corpus.speaker_names == ("",) and not corpus.speakers.any()
    assert corpus.pad_length == 65 and corpus.class_names == ()
    (fold,) = corpus.folds
    for split in ("train", "val", "test"):
        got = {corpus.dialogue_ids[d] for d in fold.get(split)}
        assert got == {v for v, (_, s) in MOSI_VIDEOS.items() if s == split}


def test_root_may_be_the_dataset_folder(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    corpus = _read(MOSI, built.dataset_dir)
    np.testing.assert_array_equal(corpus.features["a"], built.expected["a"])


def test_frames_are_mean_pooled(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path, frames=True)
    corpus = _read(IEMOCAP4, tmp_path)
    np.testing.assert_allclose(corpus.features["t"], built.expected["t"], rtol=1e-6)
    # Pooling is over T, not over the width: a frame-by-frame check of one file.
    raw = np.load(built.dataset_dir / "features" / T / f"{built.utterances[3]}.npy")
    assert raw.ndim == 2 and raw.shape[0] > 1
    np.testing.assert_allclose(corpus.features["t"][3], raw.mean(axis=0), rtol=1e-6)


def test_leading_unit_axes_are_dropped(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    uid = built.utterances[0]
    x = np.arange(4, dtype=np.float32)
    _save(built.dataset_dir / "features" / A / f"{uid}.npy", x.reshape(1, 1, 4))
    np.testing.assert_array_equal(_read(MOSI, tmp_path).features["a"][0], x)


def test_face_folders_are_averaged_per_speaker(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path, faces=True)
    corpus = _read(IEMOCAP4, tmp_path)
    np.testing.assert_allclose(corpus.features["v"], built.expected["v"], rtol=1e-6)
    # The other speaker's faces really are in the folder, and are not what was returned.
    uid = built.utterances[2]
    spk = built.speakers[2]
    folder = built.dataset_dir / "features" / V / uid
    other = [np.load(p) for p in sorted(folder.glob("*.npy")) if spk not in p.name]
    assert other and not np.allclose(corpus.features["v"][2], np.mean(other, axis=0))


def test_mosi_face_folders_average_every_face(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    uid = built.utterances[1]
    (built.dataset_dir / "features" / V / f"{uid}.npy").unlink()
    faces = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    for j, face in enumerate(faces):
        _save(built.dataset_dir / "features" / V / uid / f"frame_{j}.npy", face)
    corpus = _read(MOSI, tmp_path)
    np.testing.assert_allclose(corpus.features["v"][1], faces.mean(axis=0), rtol=1e-6)


def test_a_speaker_without_faces_counts_as_missing(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path, faces=True)
    i = 1
    folder = built.dataset_dir / "features" / V / built.utterances[i]
    for p in folder.glob(f"{built.speakers[i]}_*.npy"):
        p.unlink()
    message = _one_line_error(lambda: _read(IEMOCAP4, tmp_path))
    assert "1 utterances have no video feature file" in message
    assert built.utterances[i] in message
    corpus = _read(IEMOCAP4, tmp_path, missing_features="mark")
    assert corpus.present is not None and not corpus.present[i, 2]
    assert not corpus.features["v"][i].any()


def test_a_face_file_without_a_speaker_letter_is_refused(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path, faces=True)
    bad = built.dataset_dir / "features" / V / built.utterances[0] / "frame_0001.npy"
    _save(bad, np.zeros(3, dtype=np.float32))
    message = _one_line_error(lambda: _read(IEMOCAP4, tmp_path))
    assert str(bad) in message and "neither F nor M" in message


def test_feature_names_override_some_folders(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    features = built.dataset_dir / "features"
    (features / A).rename(features / "my-audio")
    corpus = _read(MOSI, tmp_path, feature_names={"a": "my-audio"})
    np.testing.assert_array_equal(corpus.features["a"], built.expected["a"])
    assert corpus.feature_names == {"a": "my-audio", "t": T, "v": V}
    message = _one_line_error(lambda: _read(MOSI, tmp_path, feature_names={"x": "my-audio"}))
    assert "unknown modality 'x'" in message


# ------------------------------------------------------------------------------------------
# Missing feature files


def test_missing_files_are_refused_by_default(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path)
    gone = [built.utterances[k] for k in (4, 9, 11, 20)]
    for uid in gone:
        (built.dataset_dir / "features" / A / f"{uid}.npy").unlink()
    message = _one_line_error(lambda: _read(IEMOCAP4, tmp_path))
    assert "4 utterances have no audio feature file" in message
    assert str(built.dataset_dir / "features" / A) in message
    assert all(uid in message for uid in gone[:3]) and gone[3] not in message
    assert "--missing-features mark" in message


def test_missing_files_in_two_modalities_make_one_line(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    (built.dataset_dir / "features" / A / f"{built.utterances[0]}.npy").unlink()
    (built.dataset_dir / "features" / V / f"{built.utterances[5]}.npy").unlink()
    message = _one_line_error(lambda: _read(MOSI, tmp_path))
    assert "1 utterances have no audio feature file" in message
    assert "1 utterances have no video feature file" in message


def test_missing_files_are_marked_absent_not_zero_and_present(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path)
    gone = {4: "a", 9: "a", 12: "t"}
    for i, m in gone.items():
        path = built.dataset_dir / "features" / DEFAULT_FEATURE_NAMES[m]
        (path / f"{built.utterances[i]}.npy").unlink()
    corpus = _read(IEMOCAP4, tmp_path, missing_features="mark")
    assert corpus.present is not None
    expected_present = np.ones((35, 3), dtype=bool)
    for i, m in gone.items():
        expected_present[i, "atv".index(m)] = False
        assert not corpus.features[m][i].any()
    np.testing.assert_array_equal(corpus.present, expected_present)
    # Every other row is the file's content, not shifted by the gaps.
    keep = expected_present[:, 0]
    np.testing.assert_array_equal(corpus.features["a"][keep], built.expected["a"][keep])
    assert corpus.info["missing"] == {"a": 2, "t": 1, "v": 0}


def test_an_unknown_missing_mode_is_refused(tmp_path: Path) -> None:
    build_mosi(tmp_path)
    message = _one_line_error(lambda: _read(MOSI, tmp_path, missing_features="zero"))
    assert "'zero'" in message and "refuse" in message and "mark" in message


def test_a_missing_modality_folder_lists_what_exists(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    shutil.rmtree(built.dataset_dir / "features" / V)
    (built.dataset_dir / "features" / "openface").mkdir()
    message = _one_line_error(lambda: _read(MOSI, tmp_path))
    assert str(built.dataset_dir / "features" / V) in message and "does not exist" in message
    assert ", ".join(sorted([A, T, "openface"])) in message


def test_a_folder_with_no_file_of_any_utterance_is_refused_even_when_marking(
    tmp_path: Path,
) -> None:
    built = build_mosi(tmp_path)
    for p in (built.dataset_dir / "features" / T).iterdir():
        p.unlink()
    message = _one_line_error(lambda: _read(MOSI, tmp_path, missing_features="mark"))
    assert "holds no usable file for any of the 21 utterances" in message


# ------------------------------------------------------------------------------------------
# Missing or malformed data


def test_missing_data_root(tmp_path: Path) -> None:
    message = _one_line_error(lambda: _read(MOSI, tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert "CMUMOSI/" in message


def test_missing_dataset_folder(tmp_path: Path) -> None:
    build_mosi(tmp_path)
    message = _one_line_error(lambda: _read(IEMOCAP4, tmp_path))
    assert "no IEMOCAP/ folder" in message and "CMUMOSI/" in message
    assert "IEMOCAP_features_raw_4way.pkl" in message


def test_missing_label_pickle(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path)
    message = _one_line_error(lambda: _read(IEMOCAP6, tmp_path))
    assert str(built.dataset_dir / IEMOCAP6.label_file) in message and "missing" in message
    # The same when the root is the dataset folder itself.
    message = _one_line_error(lambda: _read(IEMOCAP6, built.dataset_dir))
    assert str(built.dataset_dir / IEMOCAP6.label_file) in message


def test_missing_features_folder(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    shutil.rmtree(built.dataset_dir / "features")
    message = _one_line_error(lambda: _read(MOSI, tmp_path))
    assert "no features/ folder" in message and str(built.dataset_dir) in message


def test_a_dialogue_without_utterances(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)

    def empty(items: list) -> None:
        for k in range(4):
            items[k]["g_video"] = []

    _edit_pickle(built.dataset_dir / MOSI.label_file, empty)
    message = _one_line_error(lambda: _read(MOSI, tmp_path))
    assert "'g_video' has no utterances" in message


def test_a_dialogue_id_without_a_session_digit(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path)

    def rename(items: list) -> None:
        for k in range(4):
            items[k]["Sess_odd01"] = items[k].pop("Ses01F_impro02")

    _edit_pickle(built.dataset_dir / IEMOCAP4.label_file, rename)
    message = _one_line_error(lambda: _read(IEMOCAP4, tmp_path, missing_features="mark"))
    assert "'Sess_odd01'" in message and "no session digit at index 4" in message


def test_a_class_label_out_of_range_names_the_utterance(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path)

    def bad(items: list) -> None:
        items[1]["Ses02F_impro02"][2] = 4

    _edit_pickle(built.dataset_dir / IEMOCAP4.label_file, bad)
    message = _one_line_error(lambda: _read(IEMOCAP4, tmp_path))
    assert "label 4" in message and "'Ses02F_impro02_F002'" in message and "0..3" in message


def test_a_sentiment_label_out_of_range(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)

    def bad(items: list) -> None:
        items[1]["e_video"][1] = 3.5

    _edit_pickle(built.dataset_dir / MOSI.label_file, bad)
    message = _one_line_error(lambda: _read(MOSI, tmp_path))
    assert "3.5" in message and "'e_video_2'" in message and "[-3, 3]" in message


def test_a_split_naming_an_unknown_video(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    _edit_pickle(built.dataset_dir / MOSI.label_file, lambda items: items[5].add("ghost"))
    message = _one_line_error(lambda: _read(MOSI, tmp_path))
    assert "valVids" in message and "ghost" in message and "not in videoIDs" in message


def test_a_pickle_with_the_wrong_number_of_items(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    _edit_pickle(built.dataset_dir / MOSI.label_file, lambda items: items.pop())
    message = _one_line_error(lambda: _read(MOSI, tmp_path))
    assert "holds 6 items" in message and "testVids" in message


def test_an_unsafe_label_pickle_is_refused(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {target}",))

    items = load_label_pickle(built.dataset_dir / MOSI.label_file)
    items[3]["a_video"] = Payload()
    (built.dataset_dir / MOSI.label_file).write_bytes(pickle.dumps(items, protocol=4))
    message = _one_line_error(lambda: _read(MOSI, tmp_path))
    assert f"'{os.system.__module__}.system'" in message and not target.exists()


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5])


def _savez(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as fh:  # keeps the .npy name, so the reader meets an .npz inside it
        np.savez(fh, **arrays)


BAD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncated, "cannot be read as a .npy array"),
    "not npy": (lambda p: p.write_bytes(b"hello"), "cannot be read as a .npy array"),
    "strings": (lambda p: np.save(p, np.array(["a", "b"])), "not numbers"),
    "3-D": (lambda p: np.save(p, np.ones((2, 3, 4), np.float32)), "expected [D] or [T, D]"),
    "NaN": (lambda p: np.save(p, np.array([1.0, np.nan, 0, 0])), "NaN or inf"),
    "empty": (lambda p: np.save(p, np.zeros((0, 4), np.float32)), "holds no values"),
    "scalar": (lambda p: np.save(p, np.float32(1)), "expected [D] or [T, D]"),
    "npz": (lambda p: _savez(p, x=np.ones(4)), "not a single array"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_feature_file_is_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    built = build_mosi(tmp_path)
    path = built.dataset_dir / "features" / A / f"{built.utterances[7]}.npy"
    spoil, words = BAD_FILES[kind]
    spoil(path)
    message = _one_line_error(lambda: _read(MOSI, tmp_path, use_cache=False))
    assert str(path) in message and words in message


def test_a_width_mismatch_names_the_file_and_both_widths(tmp_path: Path) -> None:
    built = build_mosi(tmp_path)
    path = built.dataset_dir / "features" / T / f"{built.utterances[10]}.npy"
    np.save(path, np.ones(5, dtype=np.float32))
    message = _one_line_error(lambda: _read(MOSI, tmp_path))
    assert str(path) in message and "width 5" in message and "width 6" in message


# ------------------------------------------------------------------------------------------
# The parsed-feature cache


def _refuse_to_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path: str) -> np.ndarray:
        raise AssertionError(f"parsed {path} although the cache should have answered")

    monkeypatch.setattr(gcnet_features, "_read_array", fail)


def test_a_second_read_comes_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _cache_in_tmp: Path
) -> None:
    built = build_iemocap(tmp_path / "data", faces=True)
    first = _read(IEMOCAP4, built.root)
    assert first.info["cache"] == "miss"
    assert len(list(_cache_in_tmp.rglob("*.npz"))) == 1
    assert not list(_cache_in_tmp.rglob("*.tmp"))  # no temporary file left
    _refuse_to_parse(monkeypatch)
    second = _read(IEMOCAP4, built.root)
    assert second.info["cache"] == "hit"
    _assert_same_corpus(first, second)
    # Bypassing the cache parses again (and here fails, which proves it).
    with pytest.raises(ImerbenchError, match="parsed"):
        _read(IEMOCAP4, built.root, use_cache=False)


def test_touching_a_file_invalidates_the_cache(tmp_path: Path) -> None:
    built = build_mosi(tmp_path / "data")
    _read(MOSI, built.root)
    path = built.dataset_dir / "features" / V / f"{built.utterances[2]}.npy"
    new = np.full(8, 7.0, dtype=np.float32)
    np.save(path, new)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    again = _read(MOSI, built.root)
    assert again.info["cache"] == "miss"
    np.testing.assert_array_equal(again.features["v"][2], new)
    # Only the mtime moving (same bytes) is enough to re-parse.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 20_000_000))
    assert _read(MOSI, built.root).info["cache"] == "miss"


def test_a_new_face_file_invalidates_the_cache(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path / "data", faces=True)
    first = _read(IEMOCAP4, built.root)
    i = 0
    face = np.full(3, 5.0, dtype=np.float32)
    _save(built.dataset_dir / "features" / V / built.utterances[i] / "F_9999.npy", face)
    second = _read(IEMOCAP4, built.root)
    assert second.info["cache"] == "miss"
    assert not np.allclose(first.features["v"][i], second.features["v"][i])


def test_a_corrupt_cache_file_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _cache_in_tmp: Path
) -> None:
    built = build_mosi(tmp_path / "data")
    first = _read(MOSI, built.root)
    (cache_file,) = _cache_in_tmp.rglob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    again = _read(MOSI, built.root)
    assert again.info["cache"] == "miss"
    _assert_same_corpus(first, again)
    _refuse_to_parse(monkeypatch)
    assert _read(MOSI, built.root).info["cache"] == "hit"


def test_the_cache_key_changes_with_the_feature_names(tmp_path: Path) -> None:
    built = build_mosi(tmp_path / "data")
    features = built.dataset_dir / "features"
    shutil.copytree(features / A, features / "audio-copy")
    np.save(features / "audio-copy" / f"{built.utterances[0]}.npy", np.zeros(4, np.float32))
    _read(MOSI, built.root)
    other = _read(MOSI, built.root, feature_names={"a": "audio-copy"})
    assert other.info["cache"] == "miss" and not other.features["a"][0].any()


# ------------------------------------------------------------------------------------------
# Writing


def test_iemocap_round_trip_with_missing_features(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path / "in", frames=True, faces=True)
    (built.dataset_dir / "features" / T / f"{built.utterances[6]}.npy").unlink()
    original = _read(IEMOCAP4, built.root, missing_features="mark")
    stale = tmp_path / "out" / "IEMOCAP" / "features" / T / f"{built.utterances[6]}.npy"
    _save(stale, np.ones(7, dtype=np.float32))  # as an earlier, complete write would leave
    out = write_gcnet(original, IEMOCAP4, tmp_path / "out")
    assert out == tmp_path / "out" / "IEMOCAP"
    items = load_label_pickle(out / IEMOCAP4.label_file)
    assert len(items) == 6
    assert items[4] == {v for v in original.dialogue_ids if v[4] != "5"}
    assert items[5] == {v for v in original.dialogue_ids if v[4] == "5"}
    assert not (out / "features" / T / f"{built.utterances[6]}.npy").exists()
    back = _read(IEMOCAP4, tmp_path / "out", missing_features="mark", use_cache=False)
    _assert_same_corpus(original, back)


def test_mosi_round_trip(tmp_path: Path) -> None:
    built = build_mosi(tmp_path / "in")
    original = _read(MOSI, built.root)
    out = write_gcnet(original, MOSI, tmp_path / "out", feature_names={"v": "faces"})
    assert (out / "features" / "faces").is_dir()
    items = load_label_pickle(out / MOSI.label_file)
    assert len(items) == 7 and items[6] == {"e_video", "f_video"}
    back = _read(MOSI, tmp_path / "out", feature_names={"v": "faces"})
    _assert_same_corpus(original, back)


def test_written_pickle_uses_protocol_2(tmp_path: Path) -> None:
    original = _read(MOSI, build_mosi(tmp_path / "in").root)
    out = write_gcnet(original, MOSI, tmp_path / "out")
    assert (out / MOSI.label_file).read_bytes()[:2] == b"\x80\x02"


def test_writing_iemocap_needs_session_digits(tmp_path: Path) -> None:
    corpus = _read(IEMOCAP4, build_iemocap(tmp_path / "in").root)
    renamed = replace(corpus, dialogue_ids=("odd", *corpus.dialogue_ids[1:]))
    message = _one_line_error(lambda: write_gcnet(renamed, IEMOCAP4, tmp_path / "out"))
    assert "'odd'" in message and "session digit" in message


def test_writing_needs_the_same_task(tmp_path: Path) -> None:
    corpus = _read(MOSI, build_mosi(tmp_path / "in").root)
    message = _one_line_error(lambda: write_gcnet(corpus, IEMOCAP4, tmp_path / "out"))
    assert "regression" in message and "classification" in message


# ------------------------------------------------------------------------------------------
# check_data_root


def test_check_reports_every_dataset_and_goes_on_past_problems(tmp_path: Path) -> None:
    built = build_iemocap(tmp_path)
    mosi = build_mosi(tmp_path)
    (built.dataset_dir / "features" / A / f"{built.utterances[3]}.npy").unlink()
    np.save(built.dataset_dir / "features" / V / f"{built.utterances[5]}.npy", np.ones(9))
    np.save(built.dataset_dir / "features" / V / f"{built.utterances[8]}.npy", np.ones(9))
    (built.dataset_dir / "features" / T / f"{built.utterances[1]}.npy").write_bytes(b"junk")
    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {target}",))

    _pickle(mosi.dataset_dir / MOSI.label_file, [Payload()])
    report = check_data_root(tmp_path)
    assert not report.ok and not target.exists()
    assert [d.dataset for d in report.datasets] == ["iemocap4", "mosi"]
    iemocap, bad_mosi = report.datasets
    assert iemocap.utterances == 35 and iemocap.dialogues == 10
    assert iemocap.sessions == {1: 7, 2: 7, 3: 7, 4: 7, 5: 7}
    assert sum(iemocap.label_counts.values()) == 35
    widths = {f.modality: f.width for f in iemocap.features}
    assert widths == {"a": 5, "t": 7, "v": 3}
    audio = iemocap.features[0]
    assert audio.missing == 1 and audio.first_missing == (built.utterances[3],)
    problems = " | ".join(iemocap.problems)
    assert "1 utterances have no audio feature file" in problems
    assert f"{built.utterances[5]}.npy has width 9" in problems
    assert f"{built.utterances[8]}.npy has width 9" in problems  # went on past the first
    assert f"{built.utterances[1]}.npy: cannot be read" in problems
    assert any("refuses to load class" in p for p in bad_mosi.problems)
    lines = report.lines()
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    text = "\n".join(lines)
    assert "iemocap4" in text and "mosi" in text and "PROBLEM" in text


def test_check_a_clean_root_is_ok(tmp_path: Path) -> None:
    build_mosi(tmp_path)
    report = check_data_root(tmp_path)
    assert report.ok, report.lines()
    (mosi,) = report.datasets
    assert mosi.splits == {"train": (3, 12), "val": (1, 2), "test": (2, 7)}
    assert mosi.nonzero_test_labels == 7
    assert mosi.label_counts["zero"] == 1
    assert report.lines()[-1] == "all ok"


def test_check_names_a_dataset_folder_without_a_pickle(tmp_path: Path) -> None:
    build_mosi(tmp_path)
    (tmp_path / "IEMOCAP").mkdir()
    report = check_data_root(tmp_path)
    assert not report.ok
    assert any("IEMOCAP" in p and "holds no label pickle" in p for p in report.problems)


def test_check_an_empty_root(tmp_path: Path) -> None:
    report = check_data_root(tmp_path)
    assert not report.ok and "no dataset found" in report.problems[0]


def test_check_a_missing_root_raises(tmp_path: Path) -> None:
    message = _one_line_error(lambda: check_data_root(tmp_path / "nowhere"))
    assert "does not exist" in message


# ------------------------------------------------------------------------------------------
# The real label pickles, with generated features


REAL_FILES = {
    "IEMOCAP": ["IEMOCAP_features_raw_4way.pkl", "IEMOCAP_features_raw_6way.pkl"],
    "CMUMOSI": ["CMUMOSI_features_raw_2way.pkl"],
}


@dataclass
class RealData:
    root: Path
    corpora: dict[str, Corpus]
    report_lines: list[str]


def _write_random_features(
    folder: Path, pool: Path, uids: list[str], width: int, rng: np.random.Generator
) -> None:
    """One file per utterance, each a hard link to one of a pool of random vectors.

    Creating ~29k inodes takes 5-20 s on a busy disk; a link costs about a twentieth of that.
    Where links are not supported the pool file is copied.
    """
    folder.mkdir(parents=True)
    pool.mkdir(parents=True)
    sources = []
    for k, row in enumerate(rng.standard_normal((211, width)).astype(np.float32)):
        sources.append(pool / f"{k}.npy")
        np.save(sources[-1], row)
    for i, uid in enumerate(uids):
        target = folder / f"{uid}.npy"
        try:
            os.link(sources[i % len(sources)], target)
        except OSError:
            shutil.copyfile(sources[i % len(sources)], target)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> RealData:
    if not all((REAL_LABELS / f).is_file() for files in REAL_FILES.values() for f in files):
        pytest.skip("shared/data/gcnet-labels is absent")
    root = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    for folder, files in REAL_FILES.items():
        uids: set[str] = set()
        for name in files:
            (root / folder).mkdir(exist_ok=True)
            shutil.copy(REAL_LABELS / name, root / folder / name)
            for video in load_label_pickle(root / folder / name)[0].values():
                uids.update(video)
        for m, width in zip("atv", (4, 6, 8), strict=True):
            name = DEFAULT_FEATURE_NAMES[m]
            pool = root / "pools" / folder / name
            _write_random_features(
                root / folder / "features" / name, pool, sorted(uids), width, rng
            )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMERBENCH_CACHE", str(root / "cache"))
        corpora = {
            d.id: read_gcnet(d, root, feature_names=None) for d in (IEMOCAP4, IEMOCAP6, MOSI)
        }
        lines = check_data_root(root).lines()  # served by the cache the reads just wrote
    return RealData(root, corpora, lines)


def _split_counts(corpus: Corpus, split: str) -> tuple[int, int]:
    dialogues = corpus.fold(0).get(split)
    return len(dialogues), len(corpus.utterances(dialogues))


def test_real_mosi(real: RealData) -> None:
    mosi = real.corpora["mosi"]
    assert mosi.num_utterances == 2199 and mosi.num_dialogues == 93
    assert int(mosi.dialogue_lengths.max()) == 63
    assert len(mosi.folds) == 1
    assert _split_counts(mosi, "train") == (52, 1284)
    assert _split_counts(mosi, "val") == (10, 229)
    assert _split_counts(mosi, "test") == (31, 686)
    test_labels = mosi.labels[mosi.split_utterances(0, "test")]
    assert int(np.count_nonzero(test_labels)) == 656
    assert int((mosi.labels == 0).sum()) == 96
    assert mosi.widths == {"a": 4, "t": 6, "v": 8}
    assert mosi.speaker_names == ("",)


@pytest.mark.parametrize(
    ("dataset", "total", "sessions"),
    [
        ("iemocap4", 5531, [1085, 1023, 1151, 1031, 1241]),
        ("iemocap6", 7433, [1373, 1356, 1569, 1512, 1623]),
    ],
)
def test_real_iemocap(real: RealData, dataset: str, total: int, sessions: list[int]) -> None:
    corpus = real.corpora[dataset]
    assert corpus.num_utterances == total and corpus.num_dialogues == 151
    if dataset == "iemocap4":
        assert int(corpus.dialogue_lengths.max()) == 110
    assert corpus.speaker_names == ("F", "M")
    assert len(corpus.folds) == 5
    per_fold = [len(corpus.split_utterances(k, "test")) for k in range(5)]
    assert per_fold == sessions
    for k in range(5):
        fold = corpus.fold(k)
        assert len(fold.train) + len(fold.val) + len(fold.test) == 151
        assert len(fold.val) > 0


def test_real_iemocap_class_counts(real: RealData) -> None:
    counts4 = np.bincount(real.corpora["iemocap4"].labels, minlength=4)
    assert counts4.tolist() == [1636, 1084, 1708, 1103]
    counts6 = np.bincount(real.corpora["iemocap6"].labels, minlength=6)
    assert counts6.tolist() == [648, 1084, 1708, 1103, 1041, 1849]


def test_real_check_prints_the_counts(real: RealData) -> None:
    text = "\n".join(real.report_lines)
    assert "all ok" in text
    assert "2199 utterances in 93 videos (at most 63 per video)" in text
    assert "train 52 videos / 1284 utterances" in text
    assert "val 10 videos / 229 utterances" in text
    assert "test 31 videos / 686 utterances" in text
    assert "non-zero test labels: 656" in text
    assert "5531 utterances in 151 dialogues" in text
    assert "Ses01 1085, Ses02 1023, Ses03 1151, Ses04 1031, Ses05 1241" in text
    assert "happy 1636, sad 1084, neutral 1708, angry 1103" in text
    assert "7433 utterances in 151 dialogues" in text
    assert "Ses01 1373, Ses02 1356, Ses03 1569, Ses04 1512, Ses05 1623" in text
    assert "width 4" in text and "width 6" in text and "width 8" in text
