"""`imerbench table --balance`: paired differences against the base, recomputed here by hand
and with scipy from rows written by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_analysis import row

from imerbench.balance_table import balance_effects, balance_table
from imerbench.errors import ImerbenchError
from imerbench.results import separate_configurations

BASE, OGM, PMR = "late-fusion", "late-fusion+ogm-ge[alpha=0.5]", "late-fusion+pmr"
FUSED = {BASE: [0.60, 0.62, 0.61], OGM: [0.63, 0.64, 0.62], PMR: [0.60, 0.63, 0.60]}
FORCED = {  # per method: a, t, v at seeds 0, 1, 2
    BASE: {"a": [0.50] * 3, "t": [0.70] * 3, "v": [0.40, 0.41, 0.42]},
    OGM: {"a": [0.52] * 3, "t": [0.66] * 3, "v": [0.46, 0.48, 0.50]},
    PMR: {"a": [0.50] * 3, "t": [0.70] * 3, "v": [0.40, 0.41, 0.42]},
}


def frame() -> pd.DataFrame:
    rows = []
    for seed in range(3):
        for method in (BASE, OGM, PMR):
            rows.append(row(method, "0.5", seed, "mask", FUSED[method][seed]))
            rows += [row(method, "0.5", seed, m, v[seed]) for m, v in FORCED[method].items()]
        for m, ceiling in {"a": 0.55, "t": 0.72, "v": 0.45}.items():
            rows.append(row(f"unimodal-{m}", "0.0", seed, "mask", ceiling, role="ceiling",
                            ceiling_of=m))  # fmt: skip
        rows.append(row("momke+pmr", "0.5", seed, "mask", 0.7))  # its base never ran
    return pd.DataFrame(rows)


def test_each_effect_is_the_paired_difference_with_its_interval_and_test() -> None:
    effects = balance_effects(frame())
    assert set(effects["strategy"]) == {"ogm-ge[alpha=0.5]", "pmr"}  # momke+pmr: no base
    ogm = effects[effects["strategy"] == "ogm-ge[alpha=0.5]"].set_index("quantity")
    diffs = np.subtract(FUSED[OGM], FUSED[BASE])  # 0.03, 0.02, 0.01
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    assert ogm.loc["fused", "diff"] == pytest.approx(0.02)
    assert ogm.loc["fused", "ci95"] == pytest.approx(half)
    assert ogm.loc["fused", "p"] == pytest.approx(stats.ttest_rel(FUSED[OGM], FUSED[BASE]).pvalue)
    assert ogm.loc["fused", "base_mean"] == pytest.approx(0.61)
    # gap: base t - v = 0.30, 0.29, 0.28; ogm 0.20, 0.18, 0.16
    assert ogm.loc["gap", "diff"] == pytest.approx(-0.11)
    # under-optimization of v: score - 0.45 in both, so the difference of the forced scores
    assert ogm.loc["under-opt v", "diff"] == pytest.approx(0.07)
    assert ogm.loc["under-opt t", "diff"] == pytest.approx(-0.04)
    assert ogm.loc["under-opt v", "seeds"] == 3
    assert (ogm["weak"] == "v").all()  # the base's worst forced modality
    # Holm within the fused column: two comparisons
    p = effects[effects["quantity"] == "fused"].set_index("strategy")["p"]
    adjusted = effects[effects["quantity"] == "fused"].set_index("strategy")["p_holm"]
    low, high = sorted(p.index, key=p.__getitem__)
    assert adjusted[low] == pytest.approx(min(1.0, 2 * p[low]))
    assert adjusted[high] == pytest.approx(max(adjusted[low], min(1.0, p[high])))


def test_the_table_shows_each_effect_with_its_marks() -> None:
    text = balance_table(frame())
    line = next(s for s in text.splitlines() if s.startswith(f"| {OGM} "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:4] == [OGM, "0.5", "3", "61.00"]
    assert cells[4] == f"+2.00 ± {100 * stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3):.2f}"
    assert cells[-1] == "+7.00 ± 2.48* ◦"  # p = 0.007 (t = 12.1, 2 df), alone in its column; v weak
    latex = balance_table(frame(), fmt="latex")
    assert r"$\Delta$ fused" in latex and "◦" not in latex and "Δ" not in latex


def test_without_a_strategy_beside_its_base_it_says_what_to_run() -> None:
    df = frame()
    with pytest.raises(ImerbenchError, match="--methods late-fusion,late-fusion\\+ogm-ge"):
        balance_table(df[~df["method"].str.contains(r"\+") | (df["method"] == "momke+pmr")])


def test_a_strategy_is_measured_against_its_base_s_own_ceilings() -> None:
    from imerbench.analysis import ceilings
    from imerbench.grid import Grid, parse_method_ref

    grid = Grid(methods=(parse_method_ref(BASE), parse_method_ref(OGM)), missing_rates=("0.5",),
                seeds=(0,), ceilings=True)  # fmt: skip
    masks = {(c.method.label, str(c.mask)) for c in grid.cells()}
    assert masks == {(BASE, "0.5"), (BASE, "a"), (BASE, "t"), (BASE, "v"), (OGM, "0.5")}
    df = frame()
    df = df[~df["method"].str.startswith("unimodal-")]
    own = [row(BASE, m, seed, "mask", 0.3) for m in "atv" for seed in range(3)]
    df = pd.concat([df, pd.DataFrame(own)])
    found = ceilings(df)
    mine = found[found["method"] == OGM]
    assert len(mine) == 9 and set(mine["source"]) == {f"{BASE} on {m}" for m in "atv"}
    effects = balance_effects(df).set_index(["strategy", "quantity"])
    assert effects.loc[("ogm-ge[alpha=0.5]", "under-opt v"), "diff"] == pytest.approx(0.07)


def test_differences_pair_fold_by_fold() -> None:
    """Five folds; the strategy failed on the last one, where every method scored lower: its
    seeds compare over the four folds both finished (no difference), not its four-fold mean
    against the base's five-fold one."""
    rows = []
    for seed in range(3):
        for fold in range(5):
            value = 0.7 if fold < 4 else 0.3
            for method in (BASE, OGM):
                status = "failed" if method == OGM and fold == 4 else "ok"
                rows.append(row(method, "0.5", seed, "mask", value, fold=fold, status=status))
                rows += [
                    row(method, "0.5", seed, m, value, fold=fold, status=status) for m in "atv"
                ]
    effects = balance_effects(pd.DataFrame(rows)).set_index("quantity")
    assert effects.loc["fused", "diff"] == pytest.approx(0.0)
    assert effects.loc["fused", "base_mean"] == pytest.approx(0.7)
    assert effects.loc["fused", "seeds"] == 3


def test_a_strategy_run_with_other_epochs_pairs_with_its_base_at_those_epochs() -> None:
    """Two configurations of `base+strategy` in one folder: each is labelled with its epochs
    on the base's side, the side `table --balance` pairs on."""
    rows = []
    for label in ("late-fusion+agm", "late-fusion[dropout=0.1]+agm[alpha=2.0]"):
        for epochs in (3, 10):
            rows.append(row(label, "0.5", 0, "mask", 0.6, epochs=epochs,
                            config_hash=f"{label}{epochs}"))  # fmt: skip
    labels = set(separate_configurations(pd.DataFrame(rows), "run")["method"])
    assert labels == {
        "late-fusion[epochs=3]+agm",
        "late-fusion[epochs=10]+agm",
        "late-fusion[dropout=0.1,epochs=3]+agm[alpha=2.0]",
        "late-fusion[dropout=0.1,epochs=10]+agm[alpha=2.0]",
    }
