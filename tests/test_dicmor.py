"""DiCMoR: equal to the released model at sequence length 1 under every missing pattern; its
flows are invertible with exact log-determinants; recovery reads available modalities only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from imerbench.methods.dicmor import (
    PRETRAIN,
    RECOVER,
    AffineCoupling,
    DiCMoRNet,
    Flow,
    convert_released_state_dict,
)
from imerbench.methods.mult import TransformerLayer
from tiny_corpus import tiny_corpus

from imerbench.data import Batch, SplitData
from imerbench.errors import ImerbenchError
from imerbench.method import DataSpec
from imerbench.registry import create_method
from imerbench.step import data_spec

FIXTURE = Path(__file__).parent / "data" / "dicmor_released.pt"
RELEASED_INDEX = {"t": 0, "v": 1, "a": 2}  # the released modality ids
NO_DROPOUT = dict.fromkeys(
    ["text_dropout", "attn_dropout", "attn_dropout_a", "embed_dropout", "output_dropout"], 0.0
)


def released(**changes: object) -> tuple[dict[str, Any], Any, Any]:
    data = torch.load(FIXTURE, weights_only=True)
    cfg = data["config"]
    spec = DataSpec("regression", 1, cfg["widths"], 1, 1)
    sizes = {k: cfg[k] for k in ("dim", "heads", "layers", "flow_steps", "coupling_hidden")}
    sizes |= {"refine_blocks": cfg["refine_blocks"], "refine_reduction": cfg["refine_reduction"]}
    method = create_method("dicmor", "mosi", **sizes, **changes)
    model = method.build(spec)
    model.load_state_dict(convert_released_state_dict(data["state_dict"]))  # strict
    return data, method, model


def batch_of(data: dict[str, Any], available: list[int]) -> Batch:
    """The fixture's 6 utterances as 6 dialogues of one, under one released pattern."""
    features = {m: x[:, None, :] for m, x in data["features"].items()}
    n = len(data["labels"])
    keep = torch.tensor([RELEASED_INDEX[m] in available for m in "atv"])
    mask = keep.expand(n, 1, 3).clone()
    valid = torch.ones(n, 1, dtype=torch.bool)
    labels, speakers = data["labels"][:, None], torch.zeros(n, 1, dtype=torch.long)
    complete = Batch(features, torch.ones_like(mask), valid, speakers, labels)
    masked = {m: x * mask[..., "atv".index(m), None] for m, x in features.items()}
    return Batch(masked, mask, valid, speakers, labels, complete)


def test_dicmor_equals_the_released_model_under_every_pattern() -> None:
    """The fixture holds a released `DICMOR` (mdswyz/DiCMoR 3d7e617) at length 1: widths
    t/a/v 7/5/6, d 8, 2 heads, 1 level, kernel-1 projections, 2 couplings per flow 8 wide and
    2 refinement blocks (the released code hard-codes 32, 64 and 20: the fixture script sets
    them through the same classes), regression priors; 6 utterances; its eval-mode prediction
    and training loss (L1 + 0.1 (three NLLs + reconstruction)) under all seven patterns of
    available modalities. Written by `benchmarks/tools/dicmor_released_fixture.py`."""
    data, _, model = released()
    _, quiet, quiet_model = released(**NO_DROPOUT)
    model.eval()
    quiet_model.train()  # the losses: training mode without dropout (released: eval mode)
    for run in data["runs"]:
        batch = batch_of(data, run["available"])
        with torch.no_grad():
            fused = model(batch, RECOVER).fused
            loss = quiet.loss(quiet_model, quiet_model(batch, RECOVER), batch, RECOVER)
        torch.testing.assert_close(fused.view(-1), run["M"].view(-1), rtol=0, atol=1e-5)
        torch.testing.assert_close(loss, run["loss"], rtol=1e-5, atol=1e-5)
    assert len({tuple(r["available"]) for r in data["runs"]}) == 7


@pytest.mark.parametrize(
    "name", ["flow_t_steps", "cat_v.weight", "rec_a.blocks.1.body.0.weight", "prior_bias"]
)
def test_a_perturbed_dicmor_weight_breaks_the_equality(name: str) -> None:
    data, method, model = released(**NO_DROPOUT)
    name = "flow_l.steps.1.net.4.linear.bias" if name == "flow_t_steps" else name
    with torch.no_grad():
        model.get_parameter(name).add_(0.1)
    model.train()
    worst = 0.0
    for run in data["runs"]:
        batch = batch_of(data, run["available"])
        with torch.no_grad():
            loss = method.loss(model, model(batch, RECOVER), batch, RECOVER)
        worst = max(worst, abs(loss.item() - run["loss"].item()))
    assert worst > 1e-4


def test_flows_invert_and_log_determinants_match_autograd() -> None:
    torch.manual_seed(0)
    flow = Flow(6, steps=3, hidden=5)
    for step in flow.steps:  # leave the zero initialisation: a non-trivial map
        torch.nn.init.normal_(step.net[4].linear.weight, 0.0, 0.3)
        torch.nn.init.normal_(step.net[4].linear.bias, 0.0, 0.3)
    x = torch.randn(4, 6)
    z, logdet = flow(x)
    torch.testing.assert_close(flow.reverse(z), x, rtol=0, atol=1e-5)
    for i in range(4):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jacobian)[1], atol=1e-5, rtol=0)


def test_coupling_keeps_its_first_half() -> None:
    coupling = AffineCoupling(4, 3)
    torch.nn.init.normal_(coupling.net[4].linear.weight)
    x = torch.randn(2, 4)
    y, _ = coupling(x)
    torch.testing.assert_close(y[:, :2], x[:, :2])
    assert not torch.allclose(y[:, 2:], x[:, 2:])


def test_recovery_reads_available_modalities_only() -> None:
    """A missing modality's recovery comes from the inverse flows of the available ones: its
    own hidden values never reach the prediction, the available ones do."""
    corpus = tiny_corpus("regression", num_dialogues=6)
    method = create_method("dicmor", "quick")
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    assert isinstance(model, DiCMoRNet)
    model.eval()
    data = SplitData(corpus, np.arange(6), "cpu")
    keep = np.zeros((data.num_utterances, 3), dtype=bool)
    keep[:, 1] = True  # text only
    batch = next(iter(data.with_mask(keep).batches(6)))
    with torch.no_grad():
        base = model(batch, RECOVER).fused
        other = {**batch.features, "a": batch.features["a"] + 7.0}
        assert torch.equal(model(batch.replace(features=other), RECOVER).fused, base)
        text = {**batch.features, "t": batch.features["t"] + 1.0}
        moved = model(batch.replace(features=text), RECOVER).fused
    assert (moved - base)[batch.valid].abs().max() > 1e-4


def test_pretraining_reads_the_complete_inputs() -> None:
    data, _, model = released(**NO_DROPOUT)
    model.eval()
    batch = batch_of(data, [0])  # text only under the mask
    with torch.no_grad():
        pretrain = model(batch, PRETRAIN).fused
        complete = model(batch.complete, PRETRAIN).fused
    torch.testing.assert_close(pretrain, complete)


def test_attention_over_one_position_is_its_value_path() -> None:
    """Over one key the softmax weight is 1: the shortcut equals torch's attention whatever
    the query and key; in training the weight is dropped out per head (0 or 1 / (1 - p))."""
    torch.manual_seed(0)
    layer = TransformerLayer(8, heads=2, attn_dropout=0.5, relu_dropout=0.0, res_dropout=0.0)
    layer.eval()
    q, kv = torch.randn(5, 8), torch.randn(5, 8)
    expected, _ = layer.self_attn(q[None], torch.randn(1, 5, 8), kv[None], need_weights=False)
    torch.testing.assert_close(layer.attend_one(kv), expected[0])
    with torch.no_grad():
        layer.self_attn.out_proj.weight.copy_(torch.eye(8))
        layer.self_attn.out_proj.bias.zero_()
    value = layer.attend_one(kv)  # eval: v_proj(kv)
    layer.train()
    dropped = layer.attend_one(kv.repeat(200, 1)).view(200, 5, 2, 4)
    scale = dropped / value.view(1, 5, 2, 4)
    per_head = scale[..., 0]
    assert torch.allclose(scale, per_head[..., None].expand_as(scale), atol=1e-5)  # per head
    assert set(per_head.round().unique().tolist()) == {0.0, 2.0}
    assert 0.4 < (per_head == 0).float().mean().item() < 0.6


def test_memory_depth_is_at_least_its_floor() -> None:
    spec = DataSpec("regression", 1, {"a": 5, "t": 7, "v": 6}, 1, 1)
    for layers, floor, depth in ((1, 3, 3), (4, 3, 4), (1, 1, 1)):
        model = create_method("dicmor", "quick", layers=layers, memory_min_layers=floor).build(spec)
        assert len(model.trans_l_mem.layers) == depth
        assert len(model.trans_l_with_a.layers) == layers


def test_each_utterance_recovers_as_in_a_batch_of_its_own() -> None:
    """Recovery runs on the rows where each modality is missing: in a batch of mixed
    patterns every prediction equals the utterance's prediction alone."""
    corpus = tiny_corpus("regression", num_dialogues=6)
    method = create_method("dicmor", "quick")
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    model.eval()
    data = SplitData(corpus, np.arange(6), "cpu")
    keep = np.random.default_rng(3).random((data.num_utterances, 3)) < 0.5
    keep[np.arange(data.num_utterances), np.arange(data.num_utterances) % 3] = True
    batch = next(iter(data.with_mask(keep).batches(6)))
    with torch.no_grad():
        together = model(batch, RECOVER).fused
        for d, u in batch.valid.nonzero().tolist()[:12]:
            alone = batch.replace(
                features={m: x[d : d + 1, u : u + 1] for m, x in batch.features.items()},
                available=batch.available[d : d + 1, u : u + 1],
                valid=batch.valid[d : d + 1, u : u + 1],
                speakers=batch.speakers[d : d + 1, u : u + 1],
                labels=batch.labels[d : d + 1, u : u + 1],
            )
            torch.testing.assert_close(model(alone, RECOVER).fused[0, 0], together[d, u])


@pytest.mark.parametrize("name", ["dicmor", "imder"])
def test_padding_never_reaches_the_losses(name: str) -> None:
    """Dialogues of 3 and 5 utterances padded into one batch give the loss of the same 8
    utterances as one unpadded dialogue: the recovery terms average over real utterances
    only (a padding row would count as one missing every modality)."""
    corpus = tiny_corpus("regression", num_dialogues=2)
    method = create_method(name, "quick")
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    model.eval()  # no dropout; IMDer samples from its fixed evaluation seed
    gen = torch.Generator().manual_seed(1)
    widths = data_spec(corpus).widths
    features = {m: torch.randn(1, 8, d, generator=gen) for m, d in widths.items()}
    available = torch.rand(1, 8, 3, generator=gen) < 0.5
    available[0, :, 1] = True  # text everywhere: every utterance has something to recover from
    labels = torch.randn(1, 8, generator=gen)

    def batch(split: bool) -> Batch:
        def grid(x: torch.Tensor) -> torch.Tensor:
            if not split:
                return x
            padded = x.new_zeros((2, 5, *x.shape[2:]))
            padded[0, :3], padded[1] = x[0, :3], x[0, 3:]
            return padded

        valid = grid(torch.ones(1, 8, dtype=torch.bool))
        masked = {m: grid(x * available[..., "atv".index(m), None]) for m, x in features.items()}
        speakers = torch.zeros_like(valid, dtype=torch.long)
        whole = {m: grid(x) for m, x in features.items()}
        complete = Batch(
            whole, valid[..., None].expand(*valid.shape, 3), valid, speakers, grid(labels)
        )
        return Batch(masked, grid(available), valid, speakers, grid(labels), complete)

    losses = []
    for split in (False, True):
        b = batch(split)
        torch.manual_seed(2)  # IMDer's score-matching draws
        losses.append(method.loss(model, model(b, RECOVER), b, RECOVER))
    torch.testing.assert_close(losses[1], losses[0])


@pytest.mark.parametrize(("name", "module"), [("dicmor", "flow_a"), ("imder", "score_a")])
def test_a_modality_never_recorded_is_no_target(name: str, module: str) -> None:
    """Audio absent from the corpus (`--missing-features mark`: absent in the complete batch
    too) gives no recovery target: the module that only its recovery terms train receives no
    gradient, while video's, masked but recorded, does."""
    corpus = tiny_corpus(num_dialogues=3)
    method = create_method(name, "quick")
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    data = SplitData(corpus, np.arange(3), "cpu")
    keep = np.ones((data.num_utterances, 3), dtype=bool)
    keep[:, 0] = False  # audio: never recorded
    keep[::2, 2] = False  # video: masked at every other utterance
    recorded = np.ones_like(keep)
    recorded[:, 0] = False
    batch = next(iter(data.with_mask(keep).batches(3)))
    complete = next(iter(data.with_mask(recorded).batches(3)))
    batch = batch.replace(complete=complete)
    loss = method.loss(model, model(batch, RECOVER), batch, RECOVER)
    loss.backward()
    audio = getattr(model, module)
    video = getattr(model, module.replace("_a", "_v"))
    assert all(p.grad is None or not p.grad.any() for p in audio.parameters())
    assert any(p.grad is not None and p.grad.any() for p in video.parameters())


def test_an_odd_width_is_refused_by_name() -> None:
    with pytest.raises(ImerbenchError, match=r"dicmor: dim=7 must be a multiple of 2 \(.*halves"):
        create_method("dicmor", "quick", dim=7)
    assert create_method("imder", "quick", dim=7).hp["dim"] == 7  # no halves there
