"""ComP's promises: the released model reproduced (`comp-ref`), each quirk fixed (`comp`)."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from imerbench.methods.comp import (
    FIXES,
    ComP,
    ComPNet,
    UniformDropout,
    convert_released_state_dict,
    modulator_targets,
    released_name,
)
from tiny_corpus import tiny_corpus
from torch import Tensor

from imerbench.data import Batch, SplitData
from imerbench.errors import ImerbenchError
from imerbench.grid_file import load_grid
from imerbench.method import (
    EVAL_BATCH_DIALOGUES,
    DataSpec,
    ModelOutput,
    RunContext,
    evaluation_batching,
)
from imerbench.registry import create_method
from imerbench.step import data_spec

FIXTURE = Path(__file__).parent / "data" / "comp_released.pt"
CTX = RunContext.for_metric("f1")  # the modulator reads no context
ROOT = Path(__file__).resolve().parents[1]


def build(name: str, spec: DataSpec, **overrides: object) -> tuple[ComP, ComPNet]:
    method = create_method(name, "quick", **overrides)
    assert isinstance(method, ComP)
    torch.manual_seed(0)
    model = method.build(spec)
    assert isinstance(model, ComPNet)
    return method, model


# ---- the released model ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("profile", "classes", "length", "expected"),
    [("mosi", 1, 65, 8_112_627), ("iemocap", 4, 150, 8_122_347)],
)
def test_comp_ref_has_the_released_parameter_count(
    profile: str, classes: int, length: int, expected: int
) -> None:
    task = "regression" if classes == 1 else "classification"
    spec = DataSpec(task, classes, {"a": 512, "t": 1024, "v": 1024}, length, 2)  # type: ignore[arg-type]
    model = create_method("comp-ref", profile).build(spec)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_released_names_map_one_to_one() -> None:
    spec = DataSpec("classification", 4, {"a": 6, "t": 8, "v": 5}, 12, 2)
    _, model = build("comp-ref", spec, hidden=8)
    ours = [n for n, _ in model.named_parameters()]
    released = [released_name(n) for n in ours]
    assert len(set(released)) == len(ours)
    assert convert_released_state_dict(dict.fromkeys(released, torch.zeros(1))).keys() == set(ours)
    assert released_name("prompt1.a.proj_n.fc1.weight") == "prop_former_a_1.proj_n.fc1.weight"
    assert (
        released_name("block2.layers.1.v.mlp.fc2.bias")
        == "block2.blocks.1.Transformer_v.mlp.fc2.bias"
    )
    assert released_name("in_proj.t.weight") == "t_in_proj.0.weight"
    assert released_name("prop_out2.t.fc1.weight") == "prop_proj_rev_t_2.fc1.weight"
    with pytest.raises(ValueError, match="unknown names"):
        convert_released_state_dict({"transformer.weight": torch.zeros(1)})


def fixture_batch(data: dict) -> Batch:
    labels = data["labels"]
    return Batch(
        features=data["features"],
        available=data["available"],
        valid=data["valid"],
        speakers=torch.zeros_like(labels),
        labels=labels,
    )


def test_comp_ref_outputs_equal_the_released_model() -> None:
    """The fixture holds a released `ComP` (commit 28192d3a5683543d7383e40898f9a98d1f114a08 of
    WenjueHE/2026-AAAI-ComP) built at a tiny size: widths a/t/v 6/8/5, hidden 8, depth 4, 2
    heads, 3 classes, padded length 12, lbd 0.3, dropout 0.5, torch seed 0; its state dict, a
    batch of 3 dialogues (lengths 12, 9, 5; random availability, one dialogue without text),
    its eval-mode outputs (fused and unimodal, both stages) and its training losses composed
    from the released loss classes. Written by `benchmarks/tools/comp_released_fixture.py`
    from a checkout of the released code (it imports the released modules; none is copied).
    """
    data = torch.load(FIXTURE, weights_only=True)
    cfg = data["config"]
    spec = DataSpec("classification", cfg["classes"], cfg["widths"], cfg["length"], 2)
    batch = fixture_batch(data)
    state = convert_released_state_dict(data["state_dict"])
    hp = {"hidden": cfg["hidden"], "depth": cfg["depth"], "heads": cfg["heads"], "lbd": cfg["lbd"]}
    method, model = build("comp-ref", spec, dropout=cfg["dropout"], **hp)
    model.load_state_dict(state)  # strict: every name matches
    model.eval()
    for stage in ComP.stages:
        with torch.no_grad():
            out = model(batch, stage)
        expected = data["outputs"][stage]
        torch.testing.assert_close(out.fused, expected["fused"], rtol=0, atol=1e-5)
        for m in "atv":
            torch.testing.assert_close(out.heads[m], expected[m], rtol=0, atol=1e-5)
    # The loss: in training mode with dropout 0 (the released loss came from eval mode).
    method, model = build("comp-ref", spec, dropout=0.0, **hp)
    model.load_state_dict(state)
    model.train()
    for stage in ComP.stages:
        with torch.no_grad():
            loss = method.loss(model, model(batch, stage), batch, stage)
        torch.testing.assert_close(loss, data["losses"][stage], rtol=1e-5, atol=1e-5)


def test_fixture_stays_small() -> None:
    assert FIXTURE.stat().st_size < 1_000_000


# ---- variants and options ----------------------------------------------------------------------
def test_variants_and_their_options() -> None:
    ref, comp = create_method("comp-ref", "mosi"), create_method("comp", "mosi")
    assert all(ref.hp[f] is False for f in FIXES) and all(comp.hp[f] is True for f in FIXES)
    assert ref.prediction_group() == 32 and evaluation_batching(ref) == (256, True)  # 8 pools
    assert comp.prediction_group() is None
    assert evaluation_batching(comp) == (EVAL_BATCH_DIALOGUES, False)
    assert create_method("comp", "quick", per_dialogue_prototypes=False).prediction_group() == 16
    with pytest.raises(ImerbenchError, match="fixed"):
        create_method("comp-ref", "quick", fix_modulator=True)
    published = {"batch_size": 32, "epochs": 300, "stage_epoch": 150, "lr": 1e-4}
    published |= {"weight_decay": 1e-5, "hidden": 256, "depth": 4, "heads": 2}
    published |= {"dropout": 0.5, "lbd": 0.3}
    assert {k: comp.hp[k] for k in published} == published
    iemocap, mosei = create_method("comp", "iemocap"), create_method("comp", "mosei")
    assert (iemocap.hp["batch_size"], iemocap.hp["epochs"], iemocap.hp["stage_epoch"]) == (
        16,
        200,
        100,
    )
    assert (mosei.hp["batch_size"], mosei.hp["epochs"], mosei.hp["stage_epoch"]) == (32, 100, 50)


def test_ablation_grid_switches_each_fix_off_in_turn() -> None:
    grid = load_grid("comp-ablation")
    switched = [dict(m.overrides) for m in grid.methods if m.name == "comp" and m.overrides]
    assert sorted(k for o in switched for k in o) == sorted(FIXES)
    assert all(list(o.values()) == [False] for o in switched)
    assert grid.datasets == ("synthetic",)


# ---- padding: trimmed batches and packed rows --------------------------------------------------
# (variant, task, overrides): the pooled prototypes in several pools (batch_size 3 < 7
# dialogues) and in one; the fixes whose absence makes the model read padded rows.
PADDING_CASES = {
    "comp-ref, regression, pools of 3": ("comp-ref", "regression", {"batch_size": 3}),
    "comp-ref, classes, one pool": ("comp-ref", "classification", {"batch_size": 16}),
    "comp": ("comp", "classification", {}),
    "comp, padded losses": ("comp", "regression", {"fix_loss_padding": False}),
    "comp, released prototype mask": (
        "comp",
        "classification",
        {"fix_prototype_mask": False, "per_dialogue_prototypes": False, "batch_size": 3},
    ),
}


def full_and_trimmed(task: str) -> tuple[DataSpec, Batch, Batch]:
    """The 7 shortest of 12 dialogues, padded to the corpus's padded length and trimmed."""
    corpus = tiny_corpus(task, num_dialogues=12)
    data = SplitData(corpus, np.arange(12), "cpu", pad_to=corpus.pad_length)
    data = data.with_mask(np.random.default_rng(5).random((data.num_utterances, 3)) < 0.6)
    order = data.by_length()[:7]
    full = next(iter(data.batches(7, order, fixed_length=True)))
    trimmed = next(iter(data.batches(7, order, fixed_length=False)))
    assert full.length == corpus.pad_length and trimmed.length < full.length - 2
    assert trimmed.valid.sum() < trimmed.valid.numel()  # padding left in the trimmed batch
    return data_spec(corpus), full, trimmed


@pytest.mark.parametrize("packed", [True, False], ids=["packed (CPU)", "dense (GPU)"])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("stage", ComP.stages)
@pytest.mark.parametrize("case", PADDING_CASES)
def test_trimmed_batch_computes_what_the_full_padded_batch_computes(
    case: str, stage: str, training: bool, packed: bool
) -> None:
    """Reference: the whole batch padded to the padded length, every row computed. Against it,
    the trimmed batch (the harness's), its rows packed in training (a CPU's default) or every
    row of the trimmed batch computed (a GPU's): the same predictions (evaluation: at every
    position of the trimmed batch), losses and gradients."""
    name, task, overrides = PADDING_CASES[case]
    spec, full, trimmed = full_and_trimmed(task)
    dropout = 0.0 if training else 0.5  # training: the two draw different numbers of masks
    results = []
    for batch, pack in ((full, False), (trimmed, packed)):
        method, model = build(name, spec, dropout=dropout, **overrides)
        model.pack_rows = pack
        model.train(training)
        out = model(batch, stage)
        loss, grads = torch.zeros(()), {}
        if training:  # the loss needs the training-only ingredients
            loss = method.loss(model, out, batch, stage)
            loss.backward()
            method.after_backward(model, out, batch, stage, RunContext.for_metric("wa"))
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            assert grads
        results.append((out, loss.detach(), grads))
    (ref, ref_loss, ref_grads), (out, loss, grads) = results
    n, valid = trimmed.length, trimmed.valid
    outputs = {"fused": (ref.fused, out.fused), **{m: (ref.heads[m], out.heads[m]) for m in "atv"}}
    for key, (expected, got) in outputs.items():
        assert got.shape == (*valid.shape, spec.num_classes), key
        where = valid if training else slice(None)  # training: real utterances only
        torch.testing.assert_close(got[where], expected[:, :n][where], rtol=0, atol=1e-6)
        if training and packed:  # nothing computed at padding
            assert torch.all(got[~valid] == 0) and torch.any(expected[:, :n][~valid] != 0), key
    if stage == "multimodal":
        for m in "atv":
            torch.testing.assert_close(
                out.extras["prototypes"][m], ref.extras["prototypes"][m], rtol=0, atol=1e-6
            )
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[key], rtol=0, atol=1e-6, msg=key)


def test_a_batch_longer_than_the_padded_length_is_refused() -> None:
    spec, full, _ = full_and_trimmed("classification")
    _, model = build("comp", replace(spec, pad_length=full.length - 1))
    with pytest.raises(ValueError, match="exceeds the padded length"):
        model(full, "multimodal")


def test_dropout_masks_are_bernoulli_and_scaled() -> None:
    """`UniformDropout` (every dropout of the model): P(drop) = p, kept values scaled by
    1 / (1 - p), the identity in evaluation."""
    spec = DataSpec("classification", 3, {"a": 4, "t": 5, "v": 3}, 6, 2)
    _, model = build("comp-ref", spec, hidden=8, dropout=0.3)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(isinstance(m, UniformDropout) for m in drops)
    layer = UniformDropout(0.3)
    x = torch.full((200_000,), 2.0)
    torch.manual_seed(1)
    y = layer(x)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.3) < 0.005  # 5 standard errors
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 2.0 / 0.7))
    assert torch.equal(layer.eval()(x), x)


# ---- batch independence and the prototypes -----------------------------------------------------
def predictions_by_dialogue(
    model: ComPNet, data: SplitData, size: int, order: np.ndarray, stage: str
) -> dict[int, Tensor]:
    """Each dialogue's fused and unimodal predictions, [L, 4C], whatever batch it was in."""
    out: dict[int, Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(order), size):
            chosen = order[start : start + size]
            batch = next(iter(data.batches(size, chosen, fixed_length=True)))
            res = model(batch, stage)
            stacked = torch.cat([res.fused, *res.heads.values()], dim=-1)
            for i, d in enumerate(chosen):
                out[int(d)] = stacked[i]
    return out


@pytest.mark.parametrize("name", ["comp", "comp-ref"])
def test_prediction_does_not_depend_on_the_rest_of_the_batch(name: str) -> None:
    corpus = tiny_corpus(num_dialogues=12)
    _, model = build(name, data_spec(corpus))
    data = SplitData(corpus, np.arange(12), "cpu", pad_to=corpus.pad_length)
    data = data.with_mask(np.random.default_rng(0).random((data.num_utterances, 3)) < 0.7)
    model.eval()
    first = predictions_by_dialogue(model, data, 4, np.arange(12), "multimodal")
    shuffled = np.random.default_rng(1).permutation(12)
    second = predictions_by_dialogue(model, data, 5, shuffled, "multimodal")
    diffs = [float((first[d] - second[d]).abs().max()) for d in range(12)]
    if name == "comp":
        assert max(diffs) < 1e-5
    else:  # the released model pools the prototypes of the whole batch
        assert max(diffs) > 1e-4


def test_released_pools_are_the_training_batches_whatever_the_evaluation_batch() -> None:
    """comp-ref pools prototypes over groups of `batch_size` consecutive dialogues: scoring
    many groups per batch gives what scoring one released batch at a time gives."""
    corpus = tiny_corpus(num_dialogues=14)
    method, model = build("comp-ref", data_spec(corpus), batch_size=4)
    assert evaluation_batching(method) == (256, True)
    data = SplitData(corpus, np.arange(14), "cpu", pad_to=corpus.pad_length)
    data = data.with_mask(np.random.default_rng(0).random((data.num_utterances, 3)) < 0.7)
    model.eval()
    order = np.arange(14)
    released = predictions_by_dialogue(model, data, 4, order, "multimodal")  # 4+4+4+2
    for size in (8, 12, 256):  # whole pools per batch; the last pool is the short one
        grouped = predictions_by_dialogue(model, data, size, order, "multimodal")
        assert max(float((released[d] - grouped[d]).abs().max()) for d in order) < 1e-5
    # Pools that are not the training batches change the predictions: the pooling is real.
    other = predictions_by_dialogue(model, data, 5, order, "multimodal")
    assert max(float((released[d] - other[d]).abs().max()) for d in order) > 1e-4


@pytest.mark.parametrize("name", ["comp", "comp-ref"])
def test_missing_and_padded_utterances_do_not_feed_the_prototypes(name: str) -> None:
    corpus = tiny_corpus(num_dialogues=8)
    _, model = build(name, data_spec(corpus))
    data = SplitData(corpus, np.arange(8), "cpu", pad_to=corpus.pad_length)
    data = data.with_mask(np.random.default_rng(2).random((data.num_utterances, 3)) < 0.6)
    batch = next(iter(data.batches(8, None, fixed_length=True)))
    hidden = ~(batch.available & batch.valid.unsqueeze(-1))  # [B, L, 3] missing or padding
    assert hidden[..., 0][batch.valid].any() and (~batch.valid).any()
    model.eval()
    with torch.no_grad():
        clean = model(batch, "multimodal").extras["prototypes"]

    def scramble(module: torch.nn.Module, inputs: object, output: Tensor) -> Tensor:
        garbage = 50 * torch.randn(output.shape, generator=torch.Generator().manual_seed(3))
        return torch.where(hidden[..., :1], garbage, output)  # audio's missing and padding

    handle = model.shared_enc["a"].register_forward_hook(scramble)
    with torch.no_grad():
        dirty = model(batch, "multimodal").extras["prototypes"]
    handle.remove()
    change = float((clean["a"] - dirty["a"]).abs().max())
    if name == "comp":
        assert change == 0.0
    else:  # the released row mask is a no-op: they feed the projector over the utterance axis
        assert change > 1e-3
    torch.testing.assert_close(clean["t"], dirty["t"], rtol=0, atol=0)  # other generators


# ---- the gradient modulator --------------------------------------------------------------------
def modulator_setup(name: str, task: str) -> tuple[ComP, ComPNet, Batch, ModelOutput]:
    """A built model, a 2-dialogue batch (lengths 3 and 2, padded to 3), one real backward."""
    classes = 1 if task == "regression" else 2
    spec = DataSpec(task, classes, {"a": 4, "t": 5, "v": 3}, 3, 1)  # type: ignore[arg-type]
    method, model = build(name, spec, hidden=8, depth=2, dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    dtype = torch.float32 if task == "regression" else torch.int64
    batch = Batch(
        features={m: torch.randn(2, 3, d, generator=gen) for m, d in spec.widths.items()},
        available=valid.unsqueeze(-1).repeat(1, 1, 3),
        valid=valid,
        speakers=torch.zeros(2, 3, dtype=torch.int64),
        labels=torch.zeros(2, 3, dtype=dtype),
    )
    model.train()
    out = model(batch, "multimodal")
    method.loss(model, out, batch, "multimodal").backward()
    return method, model, batch, out


def grads(model: ComPNet) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def with_heads(out: ModelOutput, heads: dict[str, list[list[float]]]) -> ModelOutput:
    """Regression heads from per-utterance values [B][L] (labels are 0: values are errors)."""
    return ModelOutput(
        fused=out.fused, heads={m: torch.tensor(v).unsqueeze(-1) for m, v in heads.items()}
    )


PAD = 100.0  # a padded position's prediction: must not count
EXACT = [[0, 0, 0], [0, 0, PAD]]  # a head without error
# Per case: per-utterance errors of heads a, t, v (dialogues of 3 and 2 utterances), then the
# column weights each modality's projector must get, computed by hand from the spec.
MODULATOR_CASES = {
    "no clipping": (
        {"a": [[1, 0, 0], [0, 0, PAD]], "t": EXACT, "v": EXACT},
        {"a": [0.5, 1.0, 1.0], "t": [0.75, 1.0, 1.0], "v": [0.75, 1.0, 1.0]},
    ),
    "clipping": (  # unclipped, a would get [0, 1.5, 1]
        {"a": [[3, 0, 0], [0, 0, PAD]], "t": [[0, 2, 0], [0, 0, PAD]], "v": EXACT},
        {"a": [0.5, 1.25, 1.0], "t": [0.75, 1.0, 1.0], "v": [0.75, 0.75, 1.0]},
    ),
    "equal errors": (  # the released formula would give 0: no gradient at all
        {m: [[0.7, 0.7, 0.7], [0.7, 0.7, PAD]] for m in "atv"},
        {m: [1.0, 1.0, 1.0] for m in "atv"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", MODULATOR_CASES)
def test_modulator_rescales_the_prototype_projector_by_the_spec_weights(case: str) -> None:
    errors, expected = MODULATOR_CASES[case]
    method, model, batch, out = modulator_setup("comp", "regression")
    before = grads(model)
    targets = {m: f"prompt1.{m}.proj_n.fc1.weight" for m in "atv"}
    for name in targets.values():
        assert before[name].shape == (10, 3) and torch.all(before[name].abs().sum(0) > 0)
    method.after_backward(model, with_heads(out, errors), batch, "multimodal", CTX)
    after = grads(model)
    for m, name in targets.items():
        weights = torch.tensor(expected[m])
        torch.testing.assert_close(after[name], before[name] * weights, rtol=1e-6, atol=1e-9)
    for name in before.keys() - set(targets.values()):  # nothing else moves
        assert torch.equal(after[name], before[name]), name


def test_modulator_uses_one_minus_p_true_for_classes() -> None:
    method, model, batch, out = modulator_setup("comp", "classification")
    before = grads(model)
    even = torch.zeros(2, 3, 2)
    t_logits = even.clone()
    t_logits[0, 0, 0] = math.log(3.0)  # p(true class 0) = 3/4: error 1/4 (others 1/2)
    heads = {"a": even, "t": t_logits, "v": even.clone()}
    method.after_backward(
        model, ModelOutput(fused=out.fused, heads=heads), batch, "multimodal", CTX
    )
    expected = {"a": [0.75, 1.0, 1.0], "t": [0.5, 1.0, 1.0], "v": [0.75, 1.0, 1.0]}
    for m, w in expected.items():
        name = f"prompt1.{m}.proj_n.fc1.weight"
        got = model.get_parameter(name).grad
        torch.testing.assert_close(got, before[name] * torch.tensor(w), rtol=1e-5, atol=1e-8)


def test_released_modulator_changes_nothing() -> None:
    method, model, batch, out = modulator_setup("comp-ref", "regression")
    names = [released_name(n) for n, _ in model.named_parameters()]
    assert "prop_former_a_1.proj_n.fc1.weight" in names  # the projector exists...
    assert modulator_targets(model, fixed=False) == {}  # ...but the released filter misses it
    before = grads(model)
    errors, _ = MODULATOR_CASES["no clipping"]
    method.after_backward(model, with_heads(out, errors), batch, "multimodal", CTX)
    after = grads(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[n], before[n]) for n in before)


# ---- the stage-switch reload -------------------------------------------------------------------
EXPERT = re.compile(r"block[12]\.layers\.\d+\.(?P<m>[atv])\.")


@pytest.mark.parametrize("name", ["comp", "comp-ref"])
def test_stage_switch_restores_each_modalitys_best_experts(name: str) -> None:
    spec = DataSpec("classification", 3, {"a": 4, "t": 5, "v": 3}, 6, 2)
    method, model = build(name, spec, hidden=8)
    ctx = RunContext.for_metric("wa")
    method.on_stage_start(model, "unimodal", ctx)
    history = [  # head-m validation wa per epoch: a best at 1, t at 0, v at 0
        {"a": 0.5, "t": 0.9, "v": 0.8},
        {"a": 0.7, "t": 0.2, "v": 0.1},
        {"a": 0.6, "t": 0.3, "v": 0.3},
    ]
    for epoch, scores in enumerate(history):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(epoch))
        val = {
            "fused": {"wa": 0.1},
            **{f"head-{m}": {"wa": s, "ua": 0.0} for m, s in scores.items()},
        }
        method.on_epoch_end(model, epoch, "unimodal", val, ctx)
    method.on_stage_start(model, "multimodal", ctx)
    best = {"a": 1.0, "t": 0.0, "v": 0.0}
    for param_name, param in model.named_parameters():
        match = EXPERT.match(param_name)
        expected = best[match["m"]] if name == "comp" and match else 2.0  # 2: the last weights
        assert torch.all(param == expected), param_name


# ---- diagnostics -------------------------------------------------------------------------------
def test_diagnostics_report_the_last_evaluation_pass() -> None:
    corpus = tiny_corpus(num_dialogues=10)
    method, model = build("comp", data_spec(corpus))
    data = SplitData(corpus, np.arange(10), "cpu", pad_to=corpus.pad_length)
    data = data.with_mask(np.random.default_rng(4).random((data.num_utterances, 3)) < 0.7)
    assert method.diagnostics(model) == {}
    model.eval()
    weights = []
    with torch.no_grad():
        for batch in data.batches(4, None, fixed_length=True):
            out = model(batch, "multimodal")
            weights.append(out.extras["coordinator"][batch.valid])
    expected = torch.cat(weights).mean(0)
    diag = method.diagnostics(model)
    assert list(diag) == ["coordinator_weight_a", "coordinator_weight_t", "coordinator_weight_v"]
    torch.testing.assert_close(torch.tensor(list(diag.values())), expected, rtol=1e-5, atol=1e-6)
    model.train()
    model.eval()  # a new evaluation pass starts empty
    assert method.diagnostics(model) == {}
