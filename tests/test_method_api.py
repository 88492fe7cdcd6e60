"""The Method contract: frozen, validated configuration; metadata declared once; profiles
checked where they are declared."""

from __future__ import annotations

import pickle

import pytest
from imerbench.methods.fusion import EarlyFusionNet

from imerbench.errors import ImerbenchError
from imerbench.method import DataSpec, Method, MethodInfo, Param, RunContext, known_profiles
from imerbench.registry import (
    create_method,
    get_entry,
    list_methods,
    method_info,
    register_method,
    unregister_method,
)


def test_hyper_parameters_are_frozen_and_a_change_is_a_new_validated_method() -> None:
    method = create_method("momke", "quick")
    with pytest.raises(TypeError, match="with_params"):
        method.hp["epochs"] = 3
    with pytest.raises(TypeError):
        method.hp.update(epochs=3)
    changed = method.with_params(hidden=8)
    assert changed is not method and type(changed) is type(method)
    assert (changed.hp["hidden"], method.hp["hidden"]) == (8, 32)
    assert changed.info == method.info and changed.name == "momke"
    with pytest.raises(ImerbenchError, match=r"momke: hidden=1 is below its minimum 2"):
        method.with_params(hidden=1)
    with pytest.raises(ImerbenchError, match="stage_epoch=60 must be below epochs=60"):
        method.with_params(stage_epoch=60)
    with pytest.raises(ImerbenchError, match=r"unknown hyper-parameter 'hiden'.*'hidden'"):
        method.with_params(hiden=8)


def test_frozen_hyper_parameters_serialize_as_the_plain_dict() -> None:
    method = create_method("comp-ref", "mosi")
    copy = pickle.loads(pickle.dumps(method.hp))
    assert copy == dict(method.hp) and type(copy) is type(method.hp)
    with pytest.raises(TypeError):
        copy["lr"] = 1.0


def test_epoch_override_moves_the_stage_switch() -> None:
    method = create_method("comp", "mosi")  # 300 epochs, stage 2 from 150
    assert (method.hp["epochs"], method.hp["stage_epoch"]) == (300, 150)
    short = method.with_epochs(10)
    assert (short.hp["epochs"], short.hp["stage_epoch"]) == (10, 5)
    assert method.with_epochs(2).hp["stage_epoch"] == 1  # never the first of two epochs
    assert method.with_epochs(1).hp["stage_epoch"] == 0
    assert create_method("early-fusion", "quick").with_epochs(3).hp["epochs"] == 3


def test_every_profile_of_every_method_resolves() -> None:
    for name in list_methods():
        entry = get_entry(name)
        assert set(entry.cls.profiles) <= set(known_profiles()), name
        for profile in known_profiles():
            method = create_method(name, profile)
            for key, value in entry.cls.profiles.get(profile, {}).items():
                if key not in entry.fixed:
                    assert method.hp[key] == value, (name, profile, key)


def test_an_unknown_profile_is_one_line_naming_it() -> None:
    with pytest.raises(ImerbenchError, match=r"unknown profile 'mosie' \(did you mean 'mosi'"):
        create_method("gcnet", "mosie")


def test_a_bad_profile_fails_where_the_method_registers() -> None:
    class Typo(Method):
        params = {"hidden": Param(4, low=1)}  # noqa: RUF012
        profiles = {"iemocpa": {"hidden": 8}}  # noqa: RUF012

    class BadKey(Method):
        profiles = {"mosi": {"hiden": 8}}  # noqa: RUF012

    class BadValue(Method):
        params = {"hidden": Param(4, low=1)}  # noqa: RUF012
        profiles = {"quick": {"hidden": 0}}  # noqa: RUF012

    cases = [
        (Typo, r"profile 'iemocpa' is not a dataset profile \(did you mean 'iemocap'"),
        (BadKey, r"\(profile mosi\): unknown hyper-parameter 'hiden'"),
        (BadValue, r"\(profile quick\): hidden=0 is below its minimum 1"),
    ]
    for cls, message in cases:
        with pytest.raises(ImerbenchError, match=message):
            register_method("test-bad-profile")(cls)
        assert "test-bad-profile" not in list_methods()


def test_the_model_gets_the_hyper_parameters_its_constructor_names() -> None:
    class Named(Method):
        params = {"hidden": Param(5, low=1), "dropout": Param(0.1), "other": Param(2)}  # noqa: RUF012
        model = EarlyFusionNet

    spec = DataSpec("classification", 3, {"a": 2, "t": 2, "v": 2}, 4, 1)
    method = Named(MethodInfo("named"), **Named.resolve_hparams("named", "quick"))
    assert method.model_kwargs(EarlyFusionNet) == {"hidden": 5, "dropout": 0.1}
    net = method.build(spec)
    assert isinstance(net, EarlyFusionNet) and net.net[0].out_features == 5

    class Unbuilt(Method):
        pass

    with pytest.raises(NotImplementedError, match="set `model` or override `build`"):
        Unbuilt().build(spec)


def test_metadata_is_declared_at_registration() -> None:
    assert method_info("unimodal-t[hidden=128]") == get_entry("unimodal-t").info
    roles = {name: method_info(name).role for name in list_methods()}
    assert {n for n, r in roles.items() if r == "ceiling"} == {f"unimodal-{m}" for m in "atv"}
    assert {n for n, r in roles.items() if r == "reference"} == {"early-fusion", "late-fusion"}
    assert method_info("unimodal-v").ceiling_of == "v"
    assert method_info("comp-ref").paper_name == "ComP" and method_info("comp").paper_name == ""
    assert method_info("not-installed") == MethodInfo("not-installed")  # a plain method
    with pytest.raises(ValueError, match="role 'floor'"):
        register_method("test-bad-role", role="floor")(Method)
    with pytest.raises(ValueError, match="ceiling_of"):
        register_method("test-bad-ceiling", role="ceiling")(Method)


def test_run_context_compares_by_the_metric_direction() -> None:
    higher, lower = RunContext.for_metric("wa"), RunContext.for_metric("mae")
    assert higher.higher_is_better and not lower.higher_is_better
    assert higher.better(0.6, 0.5) and not higher.better(0.5, 0.6)
    assert lower.better(0.5, 0.6) and not lower.better(0.6, 0.5)
    assert higher.better(0.1, None) and not higher.better(float("nan"), None)


def test_a_plugin_method_is_removed_by_unregister() -> None:
    @register_method("test-temporary", role="reference")
    class Temporary(Method):
        model = EarlyFusionNet
        params = {"hidden": Param(4), "dropout": Param(0.0)}  # noqa: RUF012

    try:
        assert create_method("test-temporary").info.role == "reference"
    finally:
        unregister_method("test-temporary")
    assert "test-temporary" not in list_methods()
    with pytest.raises(ImerbenchError, match="unknown method 'test-temporary'"):
        create_method("test-temporary")
