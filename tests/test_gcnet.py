"""GCNet: the graphs' windows and relations, dialogue and padding isolation, and a
reconstruction loss that only sees the missing entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from imerbench.methods.gcnet import (
    GCNetNet,
    convert_released_state_dict,
    reconstruction_loss,
    speaker_relations,
    temporal_relations,
    window_adjacency,
)
from released_graphs import assert_equals_released, released_model
from tiny_corpus import tiny_corpus

from imerbench.data import Batch, SplitData
from imerbench.registry import create_method
from imerbench.step import data_spec


def test_window_adjacency_is_the_hand_written_matrix() -> None:
    # 5 real utterances then one padding slot; a node hears 2 earlier and 1 later utterance.
    valid = torch.tensor([[True, True, True, True, True, False]])
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 0, 1, 1, 1, 0],  # its later neighbour is padding: no edge
            [0, 0, 0, 0, 0, 0],  # padding hears nothing
        ],
        dtype=torch.bool,
    )
    assert torch.equal(window_adjacency(valid, past=2, future=1)[0], expected)


def test_temporal_relations_are_earlier_same_later() -> None:
    valid = torch.ones(1, 4, dtype=torch.bool)
    rel = temporal_relations(valid, past=1, future=1)[0]
    earlier = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    later = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert rel.shape == (3, 4, 4)
    assert torch.equal(rel[0], earlier.float())
    assert torch.equal(rel[1], torch.eye(4))
    assert torch.equal(rel[2], later.float())


def test_speaker_relations_for_a_known_speaker_sequence() -> None:
    speakers = torch.tensor([[0, 1, 1, 0]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    rel = speaker_relations(speakers, valid, past=1, future=1, num_speakers=2)[0]

    def edges(*pairs: tuple[int, int]) -> torch.Tensor:
        m = torch.zeros(4, 4)
        for receiver, sender in pairs:
            m[receiver, sender] = 1
        return m

    # relation = 2 * speaker(receiver) + speaker(sender)
    expected = torch.stack(
        [
            edges((0, 0), (3, 3)),  # 0 hears 0
            edges((0, 1), (3, 2)),  # 0 hears 1
            edges((1, 0), (2, 3)),  # 1 hears 0
            edges((1, 1), (1, 2), (2, 1), (2, 2)),  # 1 hears 1
        ]
    )
    assert torch.equal(rel, expected)


def test_default_window_and_relation_counts() -> None:
    valid = torch.ones(1, 7, dtype=torch.bool)
    adj = window_adjacency(valid, past=2, future=2)[0]
    assert adj.sum(1).tolist() == [3, 4, 5, 5, 5, 4, 3]  # self loop + up to 2 each side
    rel = temporal_relations(valid, 2, 2)[0]
    assert rel.sum((1, 2)).tolist() == [11, 7, 11]  # earlier, same, later
    speakers = torch.tensor([[0, 1, 0, 0, 1, 1, 0]])
    by_speaker = speaker_relations(speakers, valid, 2, 2, num_speakers=2)[0]
    # every edge has exactly one temporal and one speaker relation
    assert torch.equal(by_speaker.sum(0), adj.float())
    assert torch.equal(rel.sum(0), adj.float())


@pytest.mark.parametrize(("speakers", "relations"), [(1, 1), (2, 4), (3, 9)])
def test_speaker_graph_has_one_relation_per_speaker_pair(speakers: int, relations: int) -> None:
    corpus = tiny_corpus()
    spec = data_spec(corpus)
    spec = type(spec)(**{**spec.__dict__, "num_speakers": speakers})
    model = GCNetNet(spec, hidden=8, graph_hidden=4, window_past=2, window_future=2, dropout=0)
    assert model.speaker.conv1.relations == relations
    assert model.temporal.conv1.relations == 3


def _model_and_batch():
    corpus = tiny_corpus(num_dialogues=6, seed=1)
    method = create_method("gcnet", "quick", hidden=8, graph_hidden=4)
    torch.manual_seed(0)
    model = method.build(data_spec(corpus)).eval()
    data = SplitData(corpus, np.arange(corpus.num_dialogues), "cpu")
    return model, data


def test_no_edge_crosses_dialogues() -> None:
    model, data = _model_and_batch()
    batch = next(iter(data.batches(6)))
    other = {m: x.clone() for m, x in batch.features.items()}
    for x in other.values():
        x[1:] = 50 * torch.randn_like(x[1:])  # every dialogue but the first
    with torch.no_grad():
        a = model(batch, "train").fused[0]
        b = model(batch.replace(features=other), "train").fused[0]
    n = int(batch.valid[0].sum())
    torch.testing.assert_close(a[:n], b[:n])
    with torch.no_grad():
        c = model(batch, "train").fused[1]
        d = model(batch.replace(features=other), "train").fused[1]
    assert not torch.allclose(c, d)  # the perturbation does reach its own dialogue


def test_no_edge_touches_padding() -> None:
    """A dialogue alone, or padded beside a longer one with garbage in its padding slots
    (even marked available), gives the same outputs for its real utterances."""
    model, data = _model_and_batch()
    lengths = data.lengths
    short, long = int(np.argmin(lengths)), int(np.argmax(lengths))
    assert lengths[short] < lengths[long]
    alone = next(iter(data.batches(1, np.array([short]))))
    padded = next(iter(data.batches(2, np.array([short, long]))))
    pad = ~padded.valid[0]  # [L] the padding slots of the short dialogue
    feats = {m: x.clone() for m, x in padded.features.items()}
    for x in feats.values():
        x[0, pad] = 100 * torch.randn_like(x[0, pad])
    available = padded.available.clone()
    available[0, pad] = True
    speakers = padded.speakers.clone()
    speakers[0, pad] = 1
    dirty = padded.replace(features=feats, available=available, speakers=speakers)
    with torch.no_grad():
        a = model(alone, "train").fused[0]
        b = model(dirty, "train").fused[0, : lengths[short]]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _loss_case() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    # One dialogue of 2 real utterances + 1 padding slot; widths a=2, t=1, v=1.
    recon = torch.zeros(1, 3, 4)
    target = {
        "a": torch.tensor([[[1.0, 2.0], [5.0, 5.0], [7.0, 7.0]]]),
        "t": torch.tensor([[[4.0], [3.0], [7.0]]]),
        "v": torch.tensor([[[6.0], [6.0], [7.0]]]),
    }
    missing = torch.tensor([[[True, False, False], [False, True, False], [True, True, True]]])
    valid = torch.tensor([[True, True, False]])
    return recon, target, missing, valid


def test_reconstruction_loss_value() -> None:
    recon, target, missing, valid = _loss_case()
    # a missing at utterance 0: (1 + 4) / width 2; t missing at utterance 1: 9 / width 1;
    # the padding slot never counts; divided by the 2 real utterances.
    expected = ((1 + 4) / 2 + 9 / 1) / 2
    assert reconstruction_loss(recon, target, missing, valid).item() == pytest.approx(expected)


def test_reconstruction_loss_ignores_present_entries() -> None:
    recon, target, missing, valid = _loss_case()
    base = reconstruction_loss(recon, target, missing, valid)
    present = {m: t.clone() for m, t in target.items()}
    present["a"][0, 1] = 1e6  # a is present at utterance 1
    present["t"][0, 0] = -1e6  # t is present at utterance 0
    present["v"][0, :2] = float("nan")  # v is present everywhere real
    assert reconstruction_loss(recon, present, missing, valid).item() == base.item()
    hidden = {m: t.clone() for m, t in target.items()}
    hidden["a"][0, 0, 1] = 0.0  # a is missing at utterance 0
    assert reconstruction_loss(recon, hidden, missing, valid).item() != base.item()


def test_training_loss_targets_the_complete_features_at_missing_entries() -> None:
    corpus = tiny_corpus(num_dialogues=6, seed=1)
    method = create_method("gcnet", "quick", hidden=8, graph_hidden=4)
    torch.manual_seed(0)
    model = method.build(data_spec(corpus)).eval()
    data = SplitData(corpus, np.arange(corpus.num_dialogues), "cpu")
    rng = np.random.default_rng(0)
    data = data.with_mask(rng.random((data.num_utterances, 3)) > 0.5)
    batch = next(iter(data.batches(6, complete=True)))
    assert batch.complete is not None
    out = model(batch, "train")
    base = method.loss(model, out, batch, "train")

    def with_complete(change: torch.Tensor) -> Batch:
        full = {m: x.clone() for m, x in batch.complete.features.items()}
        full["a"][change] += 10.0
        return batch.replace(complete=batch.complete.replace(features=full))

    present_a = batch.available[..., 0] & batch.valid
    missing_a = ~batch.available[..., 0] & batch.valid
    assert present_a.any() and missing_a.any()
    same = method.loss(model, out, with_complete(present_a), "train")
    moved = method.loss(model, out, with_complete(missing_a), "train")
    assert same.item() == base.item()
    assert moved.item() > base.item()
    with pytest.raises(ValueError, match="complete"):
        method.loss(model, out, batch.replace(complete=None), "train")


# ---- the released model ------------------------------------------------------------------------
def test_gcnet_outputs_equal_the_released_model() -> None:
    """The fixture holds a released GCNet `GraphModel` (zeroQiaoba/GCNet 8cce4a0, base LSTM,
    no nodal attention) at widths a/t/v 6/8/6, hidden 6, graph width 3, 3 classes, two
    speakers, --windowp 2 --windowf 1 (asymmetric: it checks that a receiver hears F = 1
    earlier and P = 2 later utterances), dropout 0.5; a batch of 3 dialogues of 7 utterances
    (random availability and speakers, equal lengths: the released LSTMs read padding, ours
    do not); its eval-mode logits, reconstruction, each graph's output and the released
    training loss (CE + reconstruction). Written by
    `benchmarks/tools/graph_released_fixtures.py gcnet`."""
    data, model, batch, method = released_model("gcnet", convert_released_state_dict)
    assert_equals_released(data, model, batch, method, model.lstm)


@pytest.mark.parametrize(
    "name",
    ["lstm.forward_rnn.0.weight_ih_l0", "speaker.conv1.rel.weight", "temporal.conv2.root.weight"],
)
def test_a_perturbed_gcnet_weight_breaks_the_equality(name: str) -> None:
    data, model, batch, _ = released_model("gcnet", convert_released_state_dict)
    with torch.no_grad():
        model.get_parameter(name).add_(0.1)
        fused = model(batch, "train").fused
    assert (fused - data["outputs"]["fused"]).abs().max() > 1e-4  # 10x the tolerance


def test_swapped_windows_differ_from_the_released_model() -> None:
    """Reading --windowp as our window_past (the released flag's name) gives other outputs:
    the windows are asymmetric, and the equality above needs them swapped."""
    data, model, batch, _ = released_model(
        "gcnet", convert_released_state_dict, window_past=2, window_future=1
    )
    assert (data["config"]["windowp"], data["config"]["windowf"]) == (2, 1)
    with torch.no_grad():
        fused = model(batch, "train").fused
    assert (fused - data["outputs"]["fused"]).abs().max() > 1e-4


def test_nodal_attention_equals_the_released_time_attn() -> None:
    """The same released weights with `--time-attn` (the fixture runs its model again with
    the flag on): our `nodal_attention=True` gives its logits and reconstruction."""

    def convert(state, order):  # type: ignore[no-untyped-def]
        return convert_released_state_dict(state, order, nodal_attention=True)

    data, model, batch, _ = released_model("gcnet", convert, nodal_attention=True)
    expected = data["outputs"]
    with torch.no_grad():
        out = model(batch, "train")
    torch.testing.assert_close(out.fused, expected["fused_time_attn"], rtol=0, atol=1e-5)
    rec = out.extras["reconstruction"]
    torch.testing.assert_close(rec, expected["reconstruction_time_attn"], rtol=0, atol=1e-5)
    assert (out.fused - expected["fused"]).abs().max() > 1e-3  # the attention changed them


def test_nodal_attention_reads_real_utterances_only() -> None:
    corpus = tiny_corpus(num_dialogues=6, seed=4)
    method = create_method("gcnet", "quick", nodal_attention=True)
    torch.manual_seed(0)
    model = method.build(data_spec(corpus)).eval()
    data = SplitData(corpus, np.arange(corpus.num_dialogues), "cpu")
    batch = next(iter(data.batches(6)))
    assert not batch.valid.all()  # some padding
    h = torch.randn(*batch.valid.shape, 2 * (2 * 32 + 16))
    attention = model.temporal.attention
    noisy = torch.where(batch.valid[..., None], h, torch.full_like(h, 1e3))
    with torch.no_grad():
        a, b = attention(h, batch.valid), attention(noisy, batch.valid)
    torch.testing.assert_close(a[batch.valid], b[batch.valid])
