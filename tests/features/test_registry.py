"""The one feature registry (issue 16 §1): every feature is one complete entry, read by collect and laws alike."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from qscale.features import (
    COSTS,
    LEVELS,
    SETTINGS,
    TRANSFORMS,
    FeatureError,
    column_info,
    compute_features,
    data_features,
    feature_of_column,
    flex_columns,
    get_feature,
    list_features,
    register_feature,
)
from qscale.features import core as registry

ROOT = Path(__file__).resolve().parents[2]


def test_every_feature_has_unit_transform_level_cost_and_settings():
    feats = list_features()
    assert len(feats) >= 30
    for f in feats:
        assert f.level in LEVELS and f.cost in COSTS and f.transform in TRANSFORMS, f
        assert f.unit and f.unit != "?", f
        assert set(f.settings) <= set(SETTINGS), f
        assert f.computed == (f.cost != "given"), f  # a given feature has no function, a measured one has
        assert f.columns and all(c.feature == f.name for c in f.columns), f
        for c in f.columns:
            assert c.unit and c.unit != "?" and c.transform in TRANSFORMS, c
            assert column_info(c.name) is c and feature_of_column(c.name) is f


def test_law_inputs_come_from_the_registry_not_from_silent_defaults():
    """Every column a shipped law takes is registered, with the unit and transform its manifest records."""
    from qscale.laws.features import feature_info

    seen = 0
    for manifest in sorted((ROOT / "models").glob("*/manifest.json")):
        for f in json.loads(manifest.read_text())["features"]:
            info = feature_info(f["name"])
            assert info.feature, f"{manifest.parent.name}: {f['name']} is no registered feature"
            assert (info.unit, info.transform) == (f["unit"], f["transform"]), (manifest.parent.name, f)
            seen += 1
    assert seen > 10
    # a user's own column is not a qscale feature: numeric with unknown unit, or a category
    assert (feature_info("my_column").unit, feature_info("my_column").feature) == ("?", "")


def test_the_flexible_laws_optional_columns_keep_their_order():
    from qscale.laws.registry import ZOO_OPTIONAL

    assert (
        ZOO_OPTIONAL
        == flex_columns()
        == (
            "trace_per_param",
            "top_eig",
            "qdir_pred_dloss",
            "weight_stats_kurtosis_max",
            "weight_stats_max_over_std_max",
            "float_nll",
        )
    )


def test_data_features_are_those_that_look_at_text():
    names = [f.name for f in list_features()]
    assert set(data_features(names)) == {f.name for f in list_features() if f.cost in ("eval", "hvp")}
    assert get_feature("top_eig").settings == ("calibration", "landscape")
    assert get_feature("float_nll").settings == ("eval",) and get_feature("sqnr_db").settings == ()


def test_a_registration_must_say_everything(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_COLUMNS", dict(registry._COLUMNS))
    with pytest.raises(TypeError):  # no silent defaults: unit, transform, settings, ... are required
        register_feature("x_new", level="model", unit="1", cost="free")
    with pytest.raises(FeatureError, match="a unit is required"):
        register_feature("x_new", level="model", unit="?", cost="free", transform="none", settings=())
    with pytest.raises(FeatureError, match="setting"):
        register_feature("x_new", level="model", unit="1", cost="free", transform="none", settings=("seq",))
    with pytest.raises(FeatureError, match="a function is needed"):
        register_feature("x_new", level="model", unit="1", cost="free", transform="none", settings=())(None)

    @register_feature(
        "x_new", level="model", unit="1", cost="free", transform="none", settings=(), columns={"a": {}}
    )
    def _x(ctx):
        return {"a": 1.0, "b": 2.0}

    with pytest.raises(FeatureError, match="does not declare"):  # a dict feature's columns are declared
        compute_features(None, None, ["x_new"])


def test_format_features_need_no_model_and_given_ones_are_refused():
    got = compute_features(
        None, "int4-g128", ["bits_per_element", "element_bits", "fmt_family", "log2_group"]
    )
    assert got == {"bits_per_element": 4.125, "element_bits": 4.0, "fmt_family": "int", "log2_group": 7.0}
    assert compute_features(None, "int8-pc", ["log2_group"])["log2_group"] == 12.0
    assert math.isnan(compute_features(None, "int8-pc", ["group_size"])["group_size"])
    with pytest.raises(FeatureError, match="needs a format"):
        compute_features(None, None, ["bits_per_element"])
    with pytest.raises(FeatureError, match="not measured by qscale"):
        compute_features(None, "int4-g128", ["baseline_acc"])
    with pytest.raises(FeatureError, match="unknown feature 'sqnr_dbb'. Did you mean 'sqnr_db'"):
        get_feature("sqnr_dbb")


def test_the_registry_imports_no_torch_and_nothing_above_it():
    code = "import sys, qscale.features; print('torch' in sys.modules, any(m.startswith(('qscale.collect', 'qscale.laws')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
