"""Balance strategies: their rules on hand-computed examples with real backward passes, the
pairing errors, what a composed cell records, and that no strategy reads values at missing
positions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_corpus import tiny_corpus

from imerbench.balance import agm, create_strategy, list_strategies
from imerbench.balance.compose import Balanced, balanced, state_of
from imerbench.balance.g_blending import blend_weights
from imerbench.balance.mmpareto import combine, pareto_weights
from imerbench.balance.ogm_ge import coefficients
from imerbench.balance.pmr import distances
from imerbench.data import Batch, SplitData, draw_rate_mask
from imerbench.errors import ImerbenchError
from imerbench.grid import Cell, Grid, parse_method_ref
from imerbench.method import RunContext
from imerbench.plan import cell_config, cell_method, config_hash
from imerbench.registry import create_method, get_entry, list_methods
from imerbench.step import data_spec

PAIRS = [
    (m, s)
    for s in ["ogm-ge", "pmr", "agm", "mmpareto", "g-blending"]
    for m in ["early-fusion", "late-fusion", "momke"]
    if not create_strategy(s).missing(get_entry(m).cls.offers)
]


def setup(name: str, strategy: str, rate: float = 0.3, task: str = "classification", **hp):  # type: ignore[no-untyped-def]
    corpus = tiny_corpus(task, num_dialogues=16)
    method = balanced(create_method(name, "quick"), strategy, hp)
    torch.manual_seed(0)
    model = method.build(data_spec(corpus))
    data = SplitData(corpus, np.arange(corpus.num_dialogues), "cpu")
    data = data.with_mask(draw_rate_mask(data.num_utterances, rate, np.random.default_rng(0)))
    batch = next(iter(data.batches(16, complete=method.needs_complete)))
    state_of(model).holdout = data  # what G-Blending measures on (the harness: held out)
    return method, model, batch


def backward(method: Balanced, model: torch.nn.Module, batch: Batch):  # type: ignore[no-untyped-def]
    """One training step up to the strategy's hook; the gradients before it."""
    stage = method.stages[-1]
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(batch, stage)
    loss = method.loss(model, out, batch, stage)
    loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, loss, before


# ---- OGM-GE ---------------------------------------------------------------------------------
def test_ogm_ge_coefficients_by_hand() -> None:
    k = coefficients({"a": 0.2, "t": 0.6, "v": 0.4}, alpha=0.3)
    assert k["a"] == 1.0  # the weakest is never slowed
    # rho_t = 0.6 / 0.2 = 3: 1 - tanh(0.9); rho_v = 2: 1 - tanh(0.6)
    assert k["t"] == pytest.approx(1 - 0.7162979, abs=1e-4)
    assert k["v"] == pytest.approx(1 - 0.5370496, abs=1e-4)


def test_ogm_ge_scales_each_encoder_by_its_coefficient() -> None:
    """Real backward on late fusion: each modality's matrices times k_m (from its head's mean
    true-class probability over the utterances where it is present), vectors and the heads
    untouched."""
    method, model, batch = setup("late-fusion", "ogm-ge", noise=False, alpha=0.5)
    out, _, before = backward(method, model, batch)
    method.after_backward(model, out, batch, method.stages[-1], RunContext.for_metric("wa"))
    scores = {}
    for k, m in enumerate("atv"):
        present = (batch.available[..., k] & batch.valid).numpy()
        probs = torch.softmax(out.heads[m].detach(), -1).numpy()[present]
        scores[m] = probs[np.arange(len(probs)), batch.labels.numpy()[present]].mean()
    low = min(scores.values())
    for m in "atv":
        rho = scores[m] / low
        expected = 1 - math.tanh(0.5 * rho) if rho > 1 + 1e-9 else 1.0
        assert state_of(model).values["coefficients"][m] == pytest.approx(expected, abs=1e-3)
        for name, p in model.named_parameters():
            if not name.startswith(f"nets.{m}.") or name.startswith(f"nets.{m}.6."):
                continue  # another modality's, or the head (layer 6)
            factor = expected if p.dim() >= 2 else 1.0
            torch.testing.assert_close(p.grad, before[name] * factor, rtol=2e-3, atol=1e-7)
    torch.testing.assert_close(model.nets.a[6].weight.grad, before["nets.a.6.weight"])


def test_ogm_ge_noise_has_the_gradients_spread() -> None:
    method, model, batch = setup("early-fusion", "ogm-ge", alpha=0.0)  # k = 1: noise only
    out, _, before = backward(method, model, batch)
    method.after_backward(model, out, batch, method.stages[-1], RunContext.for_metric("wa"))
    state = state_of(model)
    assert hasattr(state, "probes")  # early fusion has no heads: probes on its features
    g, g0 = model.net[0].weight.grad, before["net.0.weight"]
    start = 0
    for m, width in model.widths.items():
        block, block0 = g[:, start : start + width], g0[:, start : start + width]
        noise = block - block0
        assert noise.std().item() == pytest.approx(block0.std().item(), rel=0.25), m
        start += width
    torch.testing.assert_close(g[:, start:], g0[:, start:])  # the availability flags' columns


def test_a_modality_absent_from_the_batch_is_left_alone() -> None:
    method, model, batch = setup("late-fusion", "ogm-ge")
    keep = batch.available.clone()
    keep[..., 2] = False  # no video in the batch
    batch = batch.replace(available=keep)
    out, _, before = backward(method, model, batch)
    method.after_backward(model, out, batch, method.stages[-1], RunContext.for_metric("wa"))
    for name, p in model.named_parameters():
        if name.startswith("nets.v."):
            assert p.grad is None or torch.equal(p.grad, before[name])
    assert "v" not in state_of(model).values["coefficients"]


# ---- PMR ---------------------------------------------------------------------------------------
def hand_batch(labels: list[int], available: list[list[bool]]) -> Batch:
    n = len(labels)
    avail = torch.tensor(available, dtype=torch.bool)[None]
    feats = {m: torch.zeros(1, n, 2) for m in "atv"}
    return Batch(feats, avail, torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n).long(),
                 torch.tensor(labels)[None])  # fmt: skip


def test_pmr_prototypes_are_class_means_over_present_utterances() -> None:
    corpus = tiny_corpus(num_dialogues=4)
    strategy = create_strategy("pmr", mu=0.25, min_present=1)
    method = create_method("late-fusion", "quick")
    from imerbench.balance.base import BalanceState

    state = BalanceState("train")
    strategy.build_state(state, data_spec(corpus), method)
    state.values["sums"] = {m: torch.zeros(3, 2) for m in "atv"}
    state.values["counts"] = {m: torch.zeros(3) for m in "atv"}
    batch = hand_batch([0, 0, 1, 2], [[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]])
    h = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [100.0, 100.0]]])
    out = SimpleNamespace(extras={"modality_features": {m: h for m in "atv"}})
    base = torch.tensor(0.0)
    assert strategy.loss(torch.nn.Module(), out, batch, base, state).item() == 0.0  # none yet
    strategy.on_epoch_end(torch.nn.Module(), state)
    protos = state.values["prototypes"]
    # audio: class 0 = mean of utterances 0 and 1, class 1 = utterance 2, class 2 never seen
    torch.testing.assert_close(protos["a"][:2], torch.tensor([[2.0, 1.0], [5.0, 5.0]]))
    assert state.values["seen"].tolist()[0] == [True, True, False]
    # video misses utterance 1: class 0 is utterance 0 alone
    torch.testing.assert_close(protos["v"][0], torch.tensor([1.0, 0.0]))
    # second epoch: audio sees class 0 at (2, 2) only; c <- 0.75 new + 0.25 old
    strategy.loss(torch.nn.Module(), SimpleNamespace(extras={"modality_features": {
        m: torch.full((1, 4, 2), 2.0) for m in "atv"}}), hand_batch([0, 0, 0, 0], [[1, 0, 0]] * 4),
        base, state)  # fmt: skip
    strategy.on_epoch_end(torch.nn.Module(), state)
    new = state.values["prototypes"]["a"]
    torch.testing.assert_close(new[0], torch.tensor([2.0, 1.75]))  # 0.75 (2, 2) + 0.25 (2, 1)
    torch.testing.assert_close(new[1], torch.tensor([5.0, 5.0]))  # absent: kept
    # third epoch: class 2 appears for the first time, at (4, 4): its prototype is its mean
    strategy.loss(torch.nn.Module(), SimpleNamespace(extras={"modality_features": {
        m: torch.full((1, 1, 2), 4.0) for m in "atv"}}), hand_batch([2], [[1, 1, 1]]),
        base, state)  # fmt: skip
    strategy.on_epoch_end(torch.nn.Module(), state)
    torch.testing.assert_close(state.values["prototypes"]["a"][2], torch.tensor([4.0, 4.0]))
    assert state.values["seen"].tolist()[0] == [True, True, True]


def test_pmr_adds_the_prototype_loss_of_the_weaker_modalities_only() -> None:
    corpus = tiny_corpus(num_dialogues=4)
    strategy = create_strategy("pmr", alpha=2.0, min_present=1)
    from imerbench.balance.base import BalanceState

    state = BalanceState("train")
    strategy.build_state(state, data_spec(corpus), create_method("late-fusion", "quick"))
    state.values["sums"] = {m: torch.zeros(3, 2) for m in "atv"}
    state.values["counts"] = {m: torch.zeros(3) for m in "atv"}
    protos = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    state.values["prototypes"] = {m: protos for m in "atv"}
    state.values["seen"] = torch.ones(3, 3, dtype=torch.bool)
    state.epoch = 1
    batch = hand_batch([0, 1], [[1, 1, 1], [1, 1, 1]])
    close = torch.tensor([[[0.0, 0.0], [4.0, 0.0]]])  # on their class prototypes: strongest
    far = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]], requires_grad=True)  # ambiguous
    out = SimpleNamespace(extras={"modality_features": {"a": far, "t": close, "v": close}})
    loss = strategy.loss(torch.nn.Module(), out, batch, torch.tensor(0.0), state)
    assert state.values["weaker"] == ["a"]
    d = distances(far[0].detach(), protos)  # sqrt(2), sqrt(10), sqrt(10)
    expected = 2.0 * torch.nn.functional.cross_entropy(-d, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert d[0, 0].item() == pytest.approx(math.sqrt(2), rel=1e-5)
    loss.backward()
    assert far.grad is not None and far.grad.abs().sum() > 0  # it reaches the features


# ---- AGM -----------------------------------------------------------------------------------------
def test_shapley_shares_by_hand() -> None:
    f = {frozenset(k): torch.tensor(v) for k, v in
         [("a", 1.0), ("t", 2.0), ("v", 4.0), ("at", 5.0), ("av", 6.0), ("tv", 7.0),
          ("atv", 10.0)]}  # fmt: skip
    r = agm.shapley(f, ["a", "t", "v"])
    # r_a = (f(atv) - f(tv) + f(a)) / 3 + (f(at) - f(t) + f(av) - f(v)) / 6 = 4/3 + 5/6
    assert r["a"].item() == pytest.approx(13 / 6)
    assert r["t"].item() == pytest.approx(6 / 3 + 7 / 6)
    assert r["v"].item() == pytest.approx(9 / 3 + 10 / 6)
    two = {frozenset("a"): torch.tensor(1.0), frozenset("v"): torch.tensor(3.0),
           frozenset("av"): torch.tensor(5.0)}  # fmt: skip
    r2 = agm.shapley(two, ["a", "v"])  # the released two-modality form: (f(av) - f(v) + f(a)) / 2
    assert (r2["a"].item(), r2["v"].item()) == pytest.approx((1.5, 3.5))


def test_agm_coefficients_by_hand() -> None:
    scores, history = {"a": 1.0, "t": 0.4, "v": 0.7}, {"a": 0.9, "t": 0.5, "v": 0.7}
    k = agm.coefficients(scores, history, alpha=1.0, cap=7.0)
    # ratio = exp(1.5 (0.7 - s)): a 0.637628, t 1.568312, v 1; optimal on history: a 0.740818,
    # t 1.349859, v 1; k = exp(optimal - ratio)
    assert k["a"] == pytest.approx(math.exp(0.740818 - 0.637628), rel=1e-5)  # lags: boosted
    assert k["t"] == pytest.approx(math.exp(1.349859 - 1.568312), rel=1e-5)  # ahead: slowed
    assert k["v"] == pytest.approx(1.0)
    capped = agm.coefficients(scores, history, alpha=2.0, cap=0.05)
    assert capped["a"] == pytest.approx(math.exp(0.1))
    assert agm.coefficients({"a": 1.0, "v": 0.2}, {"a": 0, "v": 0}, 1.0, 7.0)["a"] == pytest.approx(
        math.exp(1 - math.exp(2 * (0.6 - 1.0))))  # fmt: skip


def test_agm_scales_each_encoder_by_its_shapley_coefficient() -> None:
    """Real backward on late fusion: the subsets' fused outputs computed here, the shares by
    the three-modality formula, k from the shares' cross-entropies (first step: history 0,
    so optimal = 1); every encoder parameter times k_m, the heads untouched. A second step
    on the same batch finds the shares at their history: k = 1."""
    method, model, batch = setup("late-fusion", "agm", rate=0.3, alpha=0.7)
    stage = method.stages[-1]
    out, _, before = backward(method, model, batch)
    model.eval()
    f = {}
    with torch.no_grad():
        for subset in ["a", "t", "v", "at", "av", "tv", "atv"]:
            keep = torch.tensor([m in subset for m in "atv"])
            avail = batch.available & keep
            feats = {m: batch.features[m] * avail[..., k : k + 1] for k, m in enumerate("atv")}
            f[subset] = model(batch.replace(features=feats, available=avail), stage).fused
    model.train()
    r = {
        "a": (f["atv"] - f["tv"] + f["a"]) / 3 + (f["at"] - f["t"] + f["av"] - f["v"]) / 6,
        "t": (f["atv"] - f["av"] + f["t"]) / 3 + (f["at"] - f["a"] + f["tv"] - f["v"]) / 6,
        "v": (f["atv"] - f["at"] + f["v"]) / 3 + (f["av"] - f["a"] + f["tv"] - f["t"]) / 6,
    }
    s = {}
    for k, m in enumerate("atv"):
        present = batch.available[..., k] & batch.valid
        missing = ~batch.available[..., k] & batch.valid
        assert r[m][missing].abs().max() < 1e-6  # late fusion: no share where m is missing
        s[m] = torch.nn.functional.cross_entropy(r[m][present], batch.labels[present]).item()
    mean = sum(s.values()) / 3
    expected = {m: math.exp(0.7 * (1 - math.exp(1.5 * (mean - s[m])))) for m in "atv"}
    method.after_backward(model, out, batch, stage, RunContext.for_metric("wa"))
    got = state_of(model).values["coefficients"]
    for m in "atv":
        assert got[m] == pytest.approx(expected[m], rel=1e-4)
        for name, p in model.named_parameters():
            if name.startswith(f"nets.{m}.") and not name.startswith(f"nets.{m}.6."):
                torch.testing.assert_close(p.grad, before[name] * expected[m], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(model.nets.a[6].weight.grad, before["nets.a.6.weight"])
    assert state_of(model).values["history"] == pytest.approx(s, rel=1e-5)
    backward(method, model, batch)
    method.after_backward(model, out, batch, stage, RunContext.for_metric("wa"))
    assert state_of(model).values["coefficients"] == pytest.approx(dict.fromkeys("atv", 1.0))


@pytest.mark.parametrize("name", ["early-fusion", "momke"])
def test_agm_shares_are_zero_where_a_modality_is_missing(name: str) -> None:
    """f(S) is 0 at an utterance that has none of S (f(empty) = 0), also for a model whose
    output on no input is not 0: a modality missing at an utterance has no share there, and
    the shares still sum to f(all)."""
    method, model, batch = setup(name, "agm", rate=0.5)
    stage = method.stages[-1]
    f = agm.subset_predictions(model, batch, list("atv"), stage)
    r = agm.shapley(f, list("atv"))
    for k, m in enumerate("atv"):
        missing = ~batch.available[..., k] & batch.valid
        assert missing.any()
        assert r[m][missing].abs().max() == 0.0, m
    only_t = batch.valid & batch.available[..., 1] & ~batch.available[..., 0]
    assert only_t.any() and not f[frozenset("a")][only_t].any()
    torch.testing.assert_close(sum(r.values()), f[frozenset("atv")])


def test_agm_history_is_each_modality_s_running_mean() -> None:
    history, steps = {"a": 0.0, "t": 0.0}, {"a": 0, "t": 0}
    agm.remember(history, steps, {"a": 1.0, "t": 0.5})
    agm.remember(history, steps, {"a": 0.4})  # t inactive this step
    assert history == pytest.approx({"a": 0.7, "t": 0.5})
    assert steps == {"a": 2, "t": 1}


def test_agm_acts_within_its_window_only() -> None:
    method, model, batch = setup("early-fusion", "agm", end_epoch=2)
    state_of(model).epoch = 3
    out, _, before = backward(method, model, batch)
    method.after_backward(model, out, batch, method.stages[-1], RunContext.for_metric("wa"))
    assert "coefficients" not in state_of(model).values
    torch.testing.assert_close(model.net[0].weight.grad, before["net.0.weight"])


# ---- G-Blending -------------------------------------------------------------------------------
def test_blend_weights_by_hand() -> None:
    before = (torch.ones(4), torch.full((4,), 2.0))  # (L_T, L_V) of fused, a, t, v
    after = (torch.tensor([0.4, 0.8, 0.9, 0.2]), torch.tensor([1.5, 1.9, 2.1, 1.0]))
    # dG = (0.5, 0.1, 0 [val got worse], 1.0); O: 1 -> (1.1, 1.1, 1.2, 0.8), dO^2 = (.01, .01,
    # .04, .04); w = (50, 10, 0, 25) / 85
    w = blend_weights(before, after)
    assert w is not None
    torch.testing.assert_close(w, torch.tensor([50.0, 10.0, 0.0, 25.0]) / 85)
    same = (torch.tensor([0.5, 0.8, 0.9, 0.2]), after[1])  # fused's O unchanged: floor 1e-8
    w = blend_weights(before, same)
    assert w is not None and w[0].item() == pytest.approx(0.5e8 / (0.5e8 + 10 + 25))
    assert blend_weights(before, (after[0], torch.full((4,), 2.5))) is None  # no gain anywhere


def test_g_blending_weights_losses_and_measures_on_held_out_dialogues() -> None:
    method, model, batch = setup("late-fusion", "g-blending", super_epoch=2)
    stage, state = method.stages[-1], state_of(model)
    ce = torch.nn.functional.cross_entropy

    def head_losses(out, b):  # type: ignore[no-untyped-def]
        fused = ce(out.fused[b.valid], b.labels[b.valid])
        heads = []
        for k, m in enumerate("atv"):
            present = b.available[..., k] & b.valid
            heads.append(ce(out.heads[m][present], b.labels[present]))
        return torch.stack([fused, *heads])

    state.values["weights"] = torch.tensor([0.4, 0.3, 0.2, 0.1])
    torch.manual_seed(1)
    out = model(batch, stage)
    loss = method.loss(model, out, batch, stage)
    own = head_losses(out, batch).detach()
    base = method.base.loss(model, out, batch, stage).detach()
    expected = 0.4 * base + own[1:] @ torch.tensor([0.3, 0.2, 0.1])
    assert loss.detach().item() == pytest.approx(expected.item(), rel=1e-5)
    trained = own.detach()
    held = state.holdout
    model.eval()
    with torch.no_grad():
        val_batch = next(iter(held.batches(64)))
        measured = head_losses(model(val_batch, stage), val_batch)
    model.train()
    method.on_epoch_end(model, 1, stage, {}, RunContext.for_metric("wa"))  # stage epoch 0
    torch.testing.assert_close(state.values["record"][0], trained)  # one batch: its losses
    torch.testing.assert_close(state.values["record"][1], measured, rtol=1e-5, atol=1e-6)
    assert state.values["train_steps"] == 0
    method.on_epoch_end(model, 2, stage, {}, RunContext.for_metric("wa"))  # epoch 1: nothing
    torch.testing.assert_close(state.values["record"][0], trained)
    # A later record (epoch 2): with the earlier one set so that, against this model's
    # held-out losses, dG = (0.5, 0.1, 0, 1) and dO = (0.1, 0.1, 0.2, -0.2): w = (50, 10, 0, 25)/85
    gain = torch.tensor([0.5, 0.1, -0.2, 1.0])
    state.values["record"] = (measured + gain - 1.0, measured + gain)
    now_train = measured - torch.tensor([1.1, 1.1, 1.2, 0.8])
    state.values["train_sum"], state.values["train_steps"] = now_train * 3, 3
    method.on_epoch_end(model, 3, stage, {}, RunContext.for_metric("wa"))
    expected = torch.tensor([50.0, 10.0, 0.0, 25.0]) / 85
    torch.testing.assert_close(state.values["weights"], expected, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(state.values["record"][0], now_train)


def test_hold_out_draws_a_share_of_the_training_dialogues_per_cell() -> None:
    from imerbench.data import hold_out

    train = np.arange(100, 150)
    kept, held = hold_out(train, 0.1, "synthetic", 0, 0)
    assert len(held) == 5 and len(kept) == 45
    assert sorted(np.concatenate([kept, held]).tolist()) == train.tolist()
    assert (np.diff(held) > 0).all() and (np.diff(kept) > 0).all()  # split order
    again = hold_out(train, 0.1, "synthetic", 0, 0)[1]
    assert again.tolist() == held.tolist()
    assert hold_out(train, 0.1, "synthetic", 0, 1)[1].tolist() != held.tolist()
    assert len(hold_out(train[:3], 0.5, "x", 0, 0)[0]) >= 1  # never all of them


def test_a_g_blending_cell_trains_without_its_held_out_dialogues(small_grid, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from imerbench.compute import Workspace
    from imerbench.plan import RunOptions, plan_grid

    grid = small_grid(methods=["late-fusion+g-blending[holdout=0.2]"], missing_rates=[0.5])
    options = RunOptions(out=tmp_path, device="cpu")
    (planned,) = plan_grid(grid, options).todo
    ws = Workspace(grid, options, store_masks=False)
    splits = ws.splits(planned)
    fold = ws.corpus("synthetic").fold(0)
    train, held = splits["train"].dialogues, splits["holdout"].dialogues
    assert not set(train) & set(held)
    assert sorted([*train, *held]) == sorted(fold.train.tolist())
    assert len(held) == round(0.2 * len(fold.train))
    available = held_mask = splits["holdout"].available[splits["holdout"].valid]
    assert held_mask.shape[1] == 3
    assert 0.4 < 1 - available.float().mean().item() < 0.6  # the cell's missing rate


def test_a_held_out_cell_trains_under_its_base_s_masks(small_grid, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every utterance a G-Blending cell trains on has, in every epoch, the mask it has in
    its base's cell (the draw is the whole training split's): a paired comparison."""
    from imerbench.compute import Workspace
    from imerbench.plan import RunOptions, plan_grid
    from imerbench.step import member_mask

    methods = ["late-fusion", "late-fusion+g-blending[holdout=0.2]"]
    grid = small_grid(methods=methods, missing_rates=[0.5])
    options = RunOptions(out=tmp_path, device="cpu")
    ws = Workspace(grid, options, store_masks=False)
    corpus = ws.corpus("synthetic")
    base, held = sorted(plan_grid(grid, options).todo, key=lambda p: "+" in p.cell.method.label)
    mine, theirs = ws.member(held), ws.member(base)
    assert theirs.within is None and mine.within is not None
    kept = mine.splits["train"].utterances
    position = {u: i for i, u in enumerate(theirs.splits["train"].utterances.tolist())}
    groups = corpus.mask_groups(theirs.splits["train"].utterances)
    for epoch in (0, 3):
        expected = member_mask(corpus, theirs, 0, epoch, groups)[[position[u] for u in kept]]
        got = member_mask(corpus, mine, 0, epoch, None)
        assert got.shape == (len(kept), 3)
        assert np.array_equal(got, expected), epoch
    assert not np.array_equal(
        member_mask(corpus, mine, 0, 0, None), member_mask(corpus, mine, 0, 1, None)
    )  # redrawn every epoch, as the base's


# ---- MMPareto ------------------------------------------------------------------------------------
def test_pareto_weights_and_combination_by_hand() -> None:
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # conflict: w1 = (|g2|^2 - g1.g2) / |g1 - g2|^2 = (2 + 1) / 5
    assert pareto_weights(g1, g2) == pytest.approx((0.6, 0.4))
    # gh = 2 (0.6 g1 + 0.4 g2) = (0.4, 0.8), |gh| = 0.894 < |g1 + g2| = 1: rescaled, times 1.5
    (new,) = combine([g1], [g2], gamma=1.5)
    torch.testing.assert_close(new, 1.5 * torch.tensor([0.4, 0.8]) / math.sqrt(0.8))
    (agree,) = combine([g1], [torch.tensor([1.0, 1.0])], gamma=1.5)
    torch.testing.assert_close(agree, torch.tensor([3.0, 1.5]))  # gamma (g1 + g2)
    # (25 + 5) / 36: the larger gradient gets the smaller weight
    assert pareto_weights(g1, torch.tensor([-5.0, 0.0]))[0] == pytest.approx(5 / 6)


def test_mmpareto_gives_each_encoder_its_pareto_gradient() -> None:
    method, model, batch = setup("late-fusion", "mmpareto", rate=0.3)
    stage = method.stages[-1]
    model.train()
    torch.manual_seed(1)
    out = model(batch, stage)
    own = method.base.loss(model, out, batch, stage)
    parts = state_of(model).values["parts"]
    params = {m: [p.param for p in parts[m]] for m in "atv"}
    heads = {}
    for k, m in enumerate("atv"):
        present = batch.available[..., k] & batch.valid
        ce = torch.nn.functional.cross_entropy(out.heads[m][present], batch.labels[present])
        heads[m] = ce
    g1 = {m: torch.autograd.grad(own, params[m], retain_graph=True) for m in "atv"}
    g2 = {m: torch.autograd.grad(heads[m], params[m], retain_graph=True) for m in "atv"}
    _, loss, _ = backward(method, model, batch)  # the same dropout draw (seed 1)
    torch.testing.assert_close(loss, own + sum(heads.values()))
    method.after_backward(model, out, batch, stage, RunContext.for_metric("wa"))
    for m in "atv":
        flat1 = torch.cat([g.flatten() for g in g1[m]])
        flat2 = torch.cat([g.flatten() for g in g2[m]])
        w1, w2 = pareto_weights(flat1, flat2)
        for p, a, b in zip(params[m], g1[m], g2[m], strict=True):
            mixed = 2 * (w1 * a + w2 * b)
            scale = max((a + b).norm() / mixed.norm(), 1.0)
            torch.testing.assert_close(p.grad, 1.5 * mixed * scale, rtol=1e-4, atol=1e-7)


def test_mmpareto_without_two_active_modalities_leaves_the_plain_gradient() -> None:
    method, model, batch = setup("late-fusion", "mmpareto", rate=0.3, min_present=10_000)
    out, _, before = backward(method, model, batch)
    method.after_backward(model, out, batch, method.stages[-1], RunContext.for_metric("wa"))
    encoders = [n for n in before if n.startswith("nets.")]
    assert encoders
    for name, param in model.named_parameters():
        if name in before:
            torch.testing.assert_close(param.grad, before[name])


# ---- composition ---------------------------------------------------------------------------------
def test_a_base_s_own_hold_out_is_kept_and_never_doubled() -> None:
    base = create_method("late-fusion", "quick")

    class HeldOut(type(base)):  # type: ignore[misc, valid-type]
        holdout = 0.15

    own = HeldOut(base.info, **base.hp)
    assert balanced(own, "ogm-ge", {}).holdout == 0.15
    with pytest.raises(ImerbenchError, match=r"late-fusion\+g-blending: both hold training"):
        balanced(own, "g-blending", {})


def test_a_wrong_pairing_is_one_line_naming_what_is_missing() -> None:
    with pytest.raises(ImerbenchError, match=r"early-fusion\+mmpareto: mmpareto needs heads"):
        parse_method_ref("early-fusion+mmpareto")
    with pytest.raises(ImerbenchError, match="did you mean 'ogm-ge'"):
        parse_method_ref("late-fusion+ogm-gee")
    with pytest.raises(ImerbenchError, match="unknown hyper-parameter 'alpah'"):
        parse_method_ref("late-fusion+pmr[alpah=1]")


def test_the_strategy_is_in_the_label_the_hash_and_the_cell_config() -> None:
    grid = Grid(methods=(parse_method_ref("late-fusion"),), missing_rates=("0.5",), seeds=(0,))
    ref = parse_method_ref("late-fusion[hidden=64]+ogm-ge[alpha=0.5]")
    assert ref.label == "late-fusion[hidden=64]+ogm-ge[alpha=0.5]"
    cell = Cell(ref, "synthetic", 0, grid.missing_rates[0], 0)
    plain = Cell(parse_method_ref("late-fusion[hidden=64]"), "synthetic", 0, cell.mask, 0)
    config = cell_config(cell, cell_method(cell), grid)
    assert config["balance"]["strategy"] == "ogm-ge"
    assert config["balance"]["hparams"]["alpha"] == 0.5
    assert config["hparams"] == cell_config(plain, cell_method(plain), grid)["hparams"]
    assert config_hash(config) != config_hash(cell_config(plain, cell_method(plain), grid))
    other = Cell(parse_method_ref("late-fusion[hidden=64]+ogm-ge[alpha=0.6]"), "synthetic", 0,
                 cell.mask, 0)  # fmt: skip
    assert config_hash(cell_config(other, cell_method(other), grid)) != config_hash(config)
    assert cell_method(cell).name == "late-fusion"  # the base's seeds: a paired comparison


def test_every_strategy_applies_to_two_base_methods_at_least() -> None:
    for strategy in list_strategies():
        carriers = [m for m in list_methods() if not create_strategy(strategy).missing(
            get_entry(m).cls.offers)]  # fmt: skip
        assert len(carriers) >= 2, strategy


@pytest.mark.parametrize(("name", "strategy"), PAIRS)
def test_no_strategy_reads_values_at_missing_positions(name: str, strategy: str) -> None:
    """Garbage where modalities are missing changes neither the loss nor any gradient after
    the strategy's hook (its noise drawn from the same seed)."""
    method, model, clean = setup(name, strategy, rate=0.5)
    gen = torch.Generator().manual_seed(2)
    noisy = {
        m: torch.where(
            clean.available[..., k : k + 1], x, 100 * torch.randn(x.shape, generator=gen)
        )
        for k, (m, x) in enumerate(clean.features.items())
    }
    dirty = clean.replace(features=noisy)
    grads, losses = [], []
    for batch in (clean, dirty):
        if "prototypes" in state_of(model).values:
            state_of(model).values["prototypes"] = None
        state_of(model).epoch = 0
        for _ in range(2):  # PMR: prototypes after the first epoch, its loss in the second
            out, loss, _ = backward(method, model, batch)
            torch.manual_seed(3)
            method.after_backward(model, out, batch, method.stages[-1], RunContext.for_metric("wa"))
            method.on_epoch_end(model, 1, method.stages[-1], {}, RunContext.for_metric("wa"))
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)


@pytest.mark.parametrize(("name", "strategy"), PAIRS)
def test_every_parameter_learns_under_the_strategy(name: str, strategy: str) -> None:
    method, model, batch = setup(name, strategy, rate=0.3)
    for stage in method.stages:
        model.zero_grad(set_to_none=True)
        out = model(batch, stage)
        loss = method.loss(model, out, batch, stage)
        assert torch.isfinite(loss)
        loss.backward()
        method.after_backward(model, out, batch, stage, RunContext.for_metric("wa"))
        idle = method.idle_parameters(model, stage)
        starved = [
            n for n, p in model.named_parameters()
            if n not in idle and (p.grad is None or not torch.any(p.grad != 0))
        ]  # fmt: skip
        assert not starved, (stage, starved[:5])


def test_a_balanced_cell_runs_from_a_grid_and_records_its_strategy(small_grid, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from imerbench.cli import app
    from imerbench.plan import RunOptions
    from imerbench.results import read_results
    from imerbench.runner import run_grid

    label = "late-fusion+ogm-ge[alpha=0.5]"
    grid = small_grid(methods=["late-fusion", label], missing_rates=[0.5], epochs=2)
    run_grid(grid, RunOptions(out=tmp_path, device="cpu"))
    df = read_results(tmp_path)
    assert set(df["method"]) == {"late-fusion", label}
    assert set(df[df["method"] == label]["status"]) == {"ok"}
    (folder,) = tmp_path.glob("cells/synthetic/late-fusion_ogm-ge*/*")  # a safe folder name
    meta = json.loads((folder / "cell.json").read_text())
    hparams = {"alpha": 0.5, "noise": True, "start_epoch": 0, "end_epoch": 1000, "min_present": 4}
    assert meta["balance"] == {"strategy": "ogm-ge", "hparams": hparams}
    plain, balanced_rows = (df[df["method"] == m] for m in ("late-fusion", label))
    assert (plain["role"] == "reference").all() and (balanced_rows["role"] == "reference").all()
    table = CliRunner().invoke(app, ["table", str(tmp_path), "--balance"])
    assert table.exit_code == 0, table.output
    (line,) = [s for s in table.output.splitlines() if s.startswith(f"| {label} |")]
    assert line.split("|")[2:4] == [" 0.5 ", " 1 "]  # MR, seeds paired
    from imerbench.report import write_report

    page = write_report(tmp_path, df, tmp_path / "report.html").read_text()
    assert "<section id='balance'><h2>Balance strategies</h2>" in page and label in page
    alone = write_report(tmp_path, plain, tmp_path / "plain.html").read_text()
    assert "id='balance'" not in alone
    listing = CliRunner().invoke(app, ["list"])
    assert "mmpareto" in listing.output
    line = next(s for s in listing.output.splitlines() if s.strip().startswith("mmpareto"))
    assert line.endswith("on: late-fusion, momke")


def test_pmr_bins_regression_labels() -> None:
    from imerbench.balance.pmr import class_index

    labels = torch.tensor([[-2.6, -0.4, 0.0, 0.4, 3.7]])
    batch = Batch({}, torch.ones(1, 5, 3, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool),
                  torch.zeros(1, 5).long(), labels)  # fmt: skip
    assert class_index(batch, "sign").tolist() == [[0, 0, 1, 1, 1]]
    assert class_index(batch, "seven").tolist() == [[0, 3, 3, 3, 6]]  # round(clip(y)) + 3
