"""Availability masks: the published procedure's statistics, determinism, storage, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imerbench.data import (
    SUBSETS,
    Corpus,
    Fold,
    MaskSpec,
    MaskStore,
    draw_mask,
    draw_rate_mask,
    eval_mask,
    export_gcnet_masks,
    parse_mask_spec,
    realized_missing_rate,
    train_mask,
)
from imerbench.errors import ImerbenchError

# The table of docs/protocol.md (section 3), measured by running the
# released procedure: MR -> (realized missing, P(1 present), P(2 present), P(3 present)).
PROTOCOL_TABLE: dict[float, tuple[float, float, float, float]] = {
    0.0: (0.000, 0.000, 0.000, 1.000),
    0.1: (0.101, 0.023, 0.257, 0.720),
    0.2: (0.201, 0.090, 0.423, 0.487),
    0.3: (0.301, 0.205, 0.494, 0.301),
    0.4: (0.401, 0.362, 0.479, 0.160),
    0.5: (0.502, 0.566, 0.373, 0.061),
    0.6: (0.602, 0.816, 0.175, 0.009),
    0.7: (0.667, 1.000, 0.000, 0.000),
}
N_STATS = 208_000  # 100 blocks of 2080 utterances per rate


def _stats(mask: np.ndarray) -> tuple[float, float, float, float]:
    k = mask.sum(axis=1)
    return (1 - mask.mean(), (k == 1).mean(), (k == 2).mean(), (k == 3).mean())


@pytest.mark.parametrize("rate", sorted(PROTOCOL_TABLE))
def test_rate_mask_matches_protocol_table(rate: float) -> None:
    mask = draw_rate_mask(N_STATS, rate, np.random.default_rng(1234))
    assert mask.shape == (N_STATS, 3)
    assert mask.dtype == bool
    got = _stats(mask)
    names = ("realized missing", "P1", "P2", "P3")
    for name, g, e in zip(names, got, PROTOCOL_TABLE[rate], strict=True):
        assert abs(g - e) <= 0.01, f"MR {rate}: {name} {g:.4f} vs protocol {e:.3f}"
    assert mask.any(axis=1).all(), "an utterance lost every modality"
    per_modality = mask.mean(axis=0)
    assert per_modality.max() - per_modality.min() <= 0.01, per_modality


def test_short_draws_keep_the_per_utterance_statistics() -> None:
    # Every draw is made at a full block and cut, so many short draws (one dialogue each) have
    # the table's per-utterance statistics, not those of a 50-utterance redraw loop.
    gen = np.random.default_rng(7)
    mask = np.concatenate([draw_rate_mask(50, 0.1, gen) for _ in range(1000)])
    got = _stats(mask)
    for g, e in zip(got[1:], PROTOCOL_TABLE[0.1][1:], strict=True):
        assert abs(g - e) <= 0.01


def test_rate_extremes() -> None:
    gen = np.random.default_rng(0)
    assert draw_rate_mask(100, 0.0, gen).all()
    one = draw_rate_mask(5000, 0.7, gen)
    assert (one.sum(axis=1) == 1).all()
    assert draw_rate_mask(0, 0.3, gen).shape == (0, 3)
    assert draw_rate_mask(3000, 0.3, gen).shape == (3000, 3)


def test_unrealizable_rate_is_a_clear_error() -> None:
    # At MR 0.66 both integer percentages truncate to 0: only the one-hot (1/3 kept) is drawn,
    # which never comes within 0.005 of 0.34; the released loop would spin forever.
    with pytest.raises(ImerbenchError, match=r"missing rate 0\.66"):
        draw_rate_mask(100, 0.66, np.random.default_rng(0))


@pytest.mark.parametrize("condition", SUBSETS)
def test_conditions_give_exactly_their_subset(condition: str) -> None:
    spec = parse_mask_spec(condition)
    mask = draw_mask(spec, 500, np.random.default_rng(0))
    expected = np.array([m in condition for m in "atv"])
    assert (mask == expected).all()


@pytest.mark.parametrize("rates", [(0.1, 0.2, 0.6), (0.5, 0.5, 0.9), (0.0, 0.3, 0.95)])
def test_per_modality_rates(rates: tuple[float, float, float]) -> None:
    n = 200_000
    mask = draw_mask(MaskSpec.per_modality(*rates), n, np.random.default_rng(5))
    assert mask.any(axis=1).all()
    keep = 1 - np.array(rates)
    # Independent drops, then an empty utterance (probability prod(r)) keeps modality m with
    # probability (1 - r_m) / sum(1 - r).
    implied = keep + np.prod(rates) * keep / keep.sum()
    assert np.abs(mask.mean(axis=0) - implied).max() <= 0.01
    # Independence between modalities among utterances that were not empty: P(a and t).
    both = (mask[:, 0] & mask[:, 1]).mean()
    assert abs(both - keep[0] * keep[1]) <= 0.01


def test_same_seed_same_mask_other_seed_other_mask() -> None:
    for spec in (MaskSpec(rate=0.3), MaskSpec(rates=(0.2, 0.3, 0.4))):
        a = draw_mask(spec, 3000, np.random.default_rng(11))
        b = draw_mask(spec, 3000, np.random.default_rng(11))
        c = draw_mask(spec, 3000, np.random.default_rng(12))
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_groups_are_drawn_independently_in_order() -> None:
    groups = np.array([0, 1] * 300 + [1] * 50)
    spec = MaskSpec(rate=0.5)
    mask = draw_mask(spec, len(groups), np.random.default_rng(3), groups)
    gen = np.random.default_rng(3)
    first = draw_mask(spec, int((groups == 0).sum()), gen)
    second = draw_mask(spec, int((groups == 1).sum()), gen)
    assert np.array_equal(mask[groups == 0], first)
    assert np.array_equal(mask[groups == 1], second)
    assert not np.array_equal(mask[groups == 0], mask[groups == 1][:300])
    with pytest.raises(ImerbenchError):
        draw_mask(spec, 10, np.random.default_rng(0), np.zeros(9, dtype=int))


def test_cell_seeded_masks() -> None:
    spec = MaskSpec(rate=0.4)
    base = eval_mask("iemocap4", 0, "test", spec, 0, 400)
    assert np.array_equal(base, eval_mask("iemocap4", 0, "test", spec, 0, 400))
    for other in (
        eval_mask("iemocap4", 1, "test", spec, 0, 400),
        eval_mask("iemocap4", 0, "val", spec, 0, 400),
        eval_mask("iemocap4", 0, "test", spec, 1, 400),
        eval_mask("mosi", 0, "test", spec, 0, 400),
        eval_mask("iemocap4", 0, "test", MaskSpec(rate=0.5), 0, 400),
    ):
        assert not np.array_equal(base, other)
    t0 = train_mask("iemocap4", 0, spec, 0, 0, 400)
    assert np.array_equal(t0, train_mask("iemocap4", 0, spec, 0, 0, 400))
    assert not np.array_equal(t0, train_mask("iemocap4", 0, spec, 0, 1, 400))
    assert not np.array_equal(t0, train_mask("iemocap4", 0, spec, 1, 0, 400))
    assert not np.array_equal(t0, base)


def test_realized_missing_rate() -> None:
    mask = np.array([[1, 0, 0], [1, 1, 1]], dtype=bool)
    assert realized_missing_rate(mask) == pytest.approx(2 / 6)
    assert np.isnan(realized_missing_rate(np.zeros((0, 3), dtype=bool)))


# --------------------------------------------------------------------------------------------
# Specs


@pytest.mark.parametrize(
    ("text", "expected", "as_text"),
    [
        ("0.3", MaskSpec(rate=0.3), "0.3"),
        (" 0.30 ", MaskSpec(rate=0.3), "0.3"),
        ("0", MaskSpec(rate=0.0), "0.0"),
        ("0.7", MaskSpec(rate=0.7), "0.7"),
        ("at", MaskSpec(condition="at"), "at"),
        ("VTA", MaskSpec(condition="atv"), "atv"),
        ("a=0.1,t=0.2,v=0.6", MaskSpec(rates=(0.1, 0.2, 0.6)), "a=0.1,t=0.2,v=0.6"),
        ("v=0.5", MaskSpec(rates=(0.0, 0.0, 0.5)), "a=0.0,t=0.0,v=0.5"),
    ],
)
def test_parse_and_stable_text(text: str, expected: MaskSpec, as_text: str) -> None:
    spec = parse_mask_spec(text)
    assert spec == expected
    assert str(spec) == as_text
    assert parse_mask_spec(str(spec)) == spec
    assert "/" not in spec.key and " " not in spec.key


def test_keys_are_distinct() -> None:
    specs = ["0.0", "0.3", "atv", "at", "a=0.3,t=0.3,v=0.3", "a=0.0,t=0.0,v=0.0"]
    keys = {parse_mask_spec(s).key for s in specs}
    assert len(keys) == len(specs)
    assert parse_mask_spec(0.3) == MaskSpec(rate=0.3)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0.8", "outside [0, 0.7]"),
        ("-0.1", "outside [0, 0.7]"),
        ("nan", "not"),
        ("abc", "'abc'"),
        ("aa", "'aa'"),
        ("", "empty"),
        ("a=1.0", "outside [0, 1)"),
        ("a=0.1,a=0.2", "at most once"),
        ("x=0.1", "'x=0.1'"),
        ("a=zero", "'zero'"),
    ],
)
def test_bad_specs_are_one_line_errors(text: str, fragment: str) -> None:
    with pytest.raises(ImerbenchError) as info:
        parse_mask_spec(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_spec_needs_exactly_one_form() -> None:
    with pytest.raises(ImerbenchError):
        MaskSpec()
    with pytest.raises(ImerbenchError):
        MaskSpec(rate=0.1, condition="a")


# --------------------------------------------------------------------------------------------
# Store and export


def _corpus(speakers: int = 2, present: np.ndarray | None = None) -> Corpus:
    n_dialogues, per = 12, 15
    n = n_dialogues * per
    gen = np.random.default_rng(0)
    return Corpus(
        name="toy",
        task="classification",
        num_classes=4,
        features={m: gen.normal(size=(n, 4)).astype(np.float32) for m in "atv"},
        labels=gen.integers(0, 4, size=n),
        speakers=gen.integers(0, speakers, size=n),
        speaker_names=("F", "M")[:speakers],
        utterance_ids=tuple(f"d{i // per}_u{i % per}" for i in range(n)),
        dialogue_ids=tuple(f"d{d}" for d in range(n_dialogues)),
        dialogue_offsets=np.arange(0, n + 1, per),
        folds=(
            Fold(train=np.arange(0, 8), val=np.arange(8, 10), test=np.arange(10, 12)),
            Fold(train=np.arange(4, 12), val=np.arange(2, 4), test=np.arange(0, 2)),
        ),
        pad_length=per,
        present=present,
    )


def test_store_writes_once_and_reloads(tmp_path: Path) -> None:
    corpus = _corpus()
    spec = MaskSpec(rate=0.5)
    mask = MaskStore(tmp_path).get(corpus, 0, "test", spec, 3)
    path = tmp_path / "toy" / "fold0-test-mr0.5-seed3.npz"
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    utts = corpus.split_utterances(0, "test")
    assert mask.shape == (len(utts), 3)
    with np.load(path) as data:
        assert list(data["utterance_ids"]) == [corpus.utterance_ids[i] for i in utts]
        assert np.array_equal(data["mask"], mask)
    # Drawn per speaker, from the cell alone.
    expected = eval_mask("toy", 0, "test", spec, 3, len(utts), corpus.speakers[utts])
    assert np.array_equal(mask, expected)
    # A fresh store reads the file: tamper with it to prove it is read, not redrawn.
    flipped = ~mask
    flipped[:, 0] = True
    np.savez(path, mask=flipped, utterance_ids=np.array([corpus.utterance_ids[i] for i in utts]))
    assert np.array_equal(MaskStore(tmp_path).get(corpus, 0, "test", spec, 3), flipped)
    other = MaskStore(tmp_path).get(corpus, 0, "val", spec, 3)
    assert other.shape == (len(corpus.split_utterances(0, "val")), 3)


def test_store_single_speaker_draws_without_groups() -> None:
    corpus = _corpus(speakers=1)
    spec = MaskSpec(rate=0.3)
    mask = MaskStore(None).get(corpus, 1, "train", spec, 0)
    n = len(corpus.split_utterances(1, "train"))
    assert np.array_equal(mask, eval_mask("toy", 1, "train", spec, 0, n))


def test_store_ands_with_present_but_stores_the_draw(tmp_path: Path) -> None:
    n = 12 * 15
    present = np.ones((n, 3), dtype=bool)
    present[::2, 2] = False  # every other utterance has no video file
    corpus = _corpus(present=present)
    spec = MaskSpec(rate=0.0)
    mask = MaskStore(tmp_path).get(corpus, 0, "test", spec, 0)
    utts = corpus.split_utterances(0, "test")
    assert np.array_equal(mask, present[utts])
    with np.load(tmp_path / "toy" / "fold0-test-mr0.0-seed0.npz") as data:
        assert data["mask"].all()


def test_store_refuses_a_file_for_other_utterances(tmp_path: Path) -> None:
    corpus = _corpus()
    spec = MaskSpec(condition="at")
    store = MaskStore(tmp_path)
    store.get(corpus, 0, "test", spec, 0)
    path = store.path("toy", 0, "test", spec, 0)
    with np.load(path) as data:
        ids = list(data["utterance_ids"])
        mask = data["mask"]
    ids[0] = "someone-else"
    np.savez(path, mask=mask, utterance_ids=np.array(ids))
    with pytest.raises(ImerbenchError, match=str(path).replace("\\", "\\\\")):
        MaskStore(tmp_path).get(corpus, 0, "test", spec, 0)


def test_memory_store_is_stable() -> None:
    corpus = _corpus()
    store = MaskStore(None)
    spec = parse_mask_spec("a=0.2,t=0.1,v=0.5")
    a = store.get(corpus, 0, "val", spec, 1)
    assert np.array_equal(a, store.get(corpus, 0, "val", spec, 1))
    assert np.array_equal(a, MaskStore(None).get(corpus, 0, "val", spec, 1))
    assert not np.array_equal(a, store.get(corpus, 0, "val", spec, 2))


def test_export_gcnet_masks(tmp_path: Path) -> None:
    corpus = _corpus()
    store = MaskStore(tmp_path / "masks")
    spec = MaskSpec(rate=0.3)
    out = export_gcnet_masks(store, corpus, 0, "test", spec, 0, tmp_path / "test_mask.npz")
    # Read it the way GCNet's baselines read `--test_mask`.
    name2mask = np.load(out, allow_pickle=True)["name2mask"].tolist()
    utts = corpus.split_utterances(0, "test")
    mask = store.get(corpus, 0, "test", spec, 0)
    assert list(name2mask) == [corpus.utterance_ids[i] for i in utts]
    for i, (name, row) in enumerate(name2mask.items()):
        assert name == corpus.utterance_ids[utts[i]]
        assert row == [int(x) for x in mask[i]]
        assert set(row) <= {0, 1}


def test_masks_export_says_where_it_writes(run_cli, tmp_path: Path) -> None:
    store, out = tmp_path / "store", tmp_path / "test_mask.npz"
    code, stdout, _ = run_cli(
        "masks", "export", "--masks-dir", str(store), "--out", str(out), "--missing-rate", "0.3"
    )
    assert code == 0 and out.is_file() and any(store.rglob("*"))
    assert str(out) in stdout and str(store) in stdout
