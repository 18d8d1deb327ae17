"""Sweep specs: parsing, validation with field paths, planning, run keys."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from qscale.collect.spec import (
    SETTING_DEFAULTS,
    CalibrationSpec,
    EvalSpec,
    SpecError,
    key_settings,
    load_spec,
    parse_spec,
    plan,
    run_key,
)
from qscale.features import SETTINGS, LandscapeSettings


@pytest.fixture
def model_dirs(tmp_path):
    dirs = []
    for name in ("m-a", "m-b"):
        d = tmp_path / "ckpt" / name
        d.mkdir(parents=True)
        dirs.append(d)
    return dirs


def _spec(model_dirs, **over):
    raw = {
        "name": "t",
        "models": [str(model_dirs[0])],
        "formats": ["int8", "int4-g32"],
        "methods": ["rtn"],
        "eval": {"seq_len": 64, "max_tokens": 512},
    }
    raw.update(over)
    return raw


def test_formats_are_canonical_sets_expand_and_duplicates_go(model_dirs):
    from qscale.formats import format_set, get_format

    spec = parse_spec(_spec(model_dirs, formats=["int8", "int8-pc", "all-3bit", "int3-pc"]))
    expected = ["int8-pc", *[str(f) for f in format_set("all-3bit")]]
    assert list(spec.formats) == list(dict.fromkeys(expected))
    assert spec.formats[0] == str(get_format("int8"))


def test_globs_and_paths(model_dirs):
    spec = parse_spec(_spec(model_dirs, models=[str(model_dirs[0].parent / "m-*"), str(model_dirs[1])]))
    assert list(spec.models) == [str(model_dirs[0]), str(model_dirs[1])]  # sorted glob, no duplicate


def test_zoo_preset_expands_to_its_models():
    from qscale.lm.zoo import ZOO_PRESETS

    spec = parse_spec({"models": ["zoo:tiny"], "formats": ["int4-g32"]})
    assert list(spec.models) == [f"zoo:{s.name}" for s in ZOO_PRESETS["tiny"]]
    assert len(spec.models) == 15


def test_every_problem_is_reported_with_its_field_path(model_dirs):
    raw = _spec(
        model_dirs,
        models=[str(model_dirs[0]), "zoo:tiny-lama-s", "/no/such/dir"],
        formats=["int8", "int4", "fp8", "int33"],
        methods=["rtn", {"name": "gptqq"}, {"name": "gptq", "params": {"dampp": 0.1}}],
        calibration={"corpus": "enwiki", "n_samples": 0},
        eval={"protocol": "strid", "split": "tset"},
        features=["sqnr_dbb"],
        fromats=["int4"],
    )
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    errs = info.value.errors
    text = "\n".join(errs)
    assert any(e.startswith("formats[3]: unknown format 'int33'") and "did you mean" in e for e in errs), text
    assert any(e.startswith("fromats: unknown key 'fromats'. Did you mean 'formats'?") for e in errs), text
    assert any(
        e.startswith("models[1]: unknown zoo model or preset 'tiny-lama-s'. Did you mean") for e in errs
    ), text
    assert any(e.startswith("models[2]: no such model path") for e in errs), text
    assert any(e.startswith("methods[1]: unknown method 'gptqq'") and "gptq" in e for e in errs), text
    assert any(e.startswith("methods[2]:") and "dampp" in e for e in errs), text
    assert any(e.startswith("calibration.n_samples: expected a positive integer") for e in errs), text
    assert any(
        e.startswith("calibration.corpus: unknown corpus 'enwiki'. Did you mean 'enwiki_gensim'")
        for e in errs
    )
    assert any(
        e.startswith("eval.protocol: unknown protocol 'strid'. Did you mean 'stride'?") for e in errs
    ), text
    assert any(e.startswith("eval.split: unknown split 'tset'") for e in errs), text
    assert any(
        e.startswith("features[0]: unknown feature 'sqnr_dbb'. Did you mean 'sqnr_db'") for e in errs
    ), text
    assert len(errs) == 11, text


def test_calibration_axis_only_multiplies_methods_that_need_it(model_dirs):
    raw = _spec(
        model_dirs,
        models=[str(d) for d in model_dirs],
        methods=["rtn", {"name": "gptq", "params": {"percdamp": 0.05}}],
        calibration=[{"n_samples": 4, "seq_len": 32}, {"n_samples": 4, "seq_len": 32, "seed": 1}],
    )
    spec = parse_spec(raw)
    runs = plan(spec)
    # 2 models x 2 formats x (rtn once + gptq x 2 calibrations)
    assert len(runs) == 2 * 2 * (1 + 2)
    assert [r.model for r in runs[:6]] == [str(model_dirs[0])] * 6  # grouped by model
    rtn = [r for r in runs if r.method.name == "rtn"]
    gptq = [r for r in runs if r.method.name == "gptq"]
    assert all(r.calibration is None for r in rtn)
    assert {r.calibration for r in gptq} == {
        CalibrationSpec(n_samples=4, seq_len=32),
        CalibrationSpec(n_samples=4, seq_len=32, seed=1),
    }
    assert gptq[0].method.param_dict["percdamp"] == 0.05 and gptq[0].method.param_dict["blocksize"] == 128
    assert len(plan(spec, limit=5)) == 5


def test_run_key_is_sha256_of_the_canonical_config(model_dirs):
    spec = parse_spec(_spec(model_dirs))
    run = plan(spec)[0]
    config = run.config("sha256:0123")
    expected = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert run.key("sha256:0123") == run_key(config) == expected
    assert config["model"] == "sha256:0123" and config["format"] == "int8-pc"
    assert config["method"] == {"name": "rtn", "params": {}} and config["calibration"] is None
    assert config["eval"] == {
        "corpus": "enwiki_gensim", "split": "test", "protocol": "stride", "seq_len": 64, "max_tokens": 512,
    }  # fmt: skip
    # identity, format and eval settings change the key; the batch size (speed only) does not
    assert run.key("sha256:4567") != run.key("sha256:0123")
    assert plan(spec)[1].key("sha256:0123") != run.key("sha256:0123")
    other_eval = parse_spec(_spec(model_dirs, eval={"seq_len": 64, "max_tokens": 1024}))
    assert plan(other_eval)[0].key("sha256:0123") != run.key("sha256:0123")
    batch = parse_spec(_spec(model_dirs, eval={"seq_len": 64, "max_tokens": 512, "batch_size": 2}))
    assert plan(batch)[0].key("sha256:0123") == run.key("sha256:0123")
    # add_bos: left out of the key at its default (the model's convention), in it when forced
    forced = {}
    for value in (True, False):
        s = parse_spec(_spec(model_dirs, eval={"seq_len": 64, "max_tokens": 512, "add_bos": value}))
        forced[value] = plan(s)[0]
        assert forced[value].config("sha256:0123")["eval"]["add_bos"] is value
    assert len({r.key("sha256:0123") for r in (run, *forced.values())}) == 3
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(model_dirs, eval={"add_bos": "yes"}))
    assert info.value.errors == [
        "eval.add_bos: expected true, false or null (the model's convention), got 'yes'"
    ]


def test_a_features_settings_change_its_run_key(model_dirs):
    """Issue 16 §1: the settings a run's features depend on (``Feature.settings``) are part of its key, each only
    when it differs from its default, so that runs measured with the defaults keep the keys they had."""
    ident = "sha256:0123"
    a = {"corpus": "enwiki_gensim", "n_samples": 4, "seq_len": 64, "seed": 0}

    def run(features, calibration=None):
        raw = _spec(model_dirs, features=list(features))
        if calibration is not None:
            raw["calibration"] = calibration
        return plan(parse_spec(raw))[0]

    plain = run(())
    # act_outliers looks at the calibration batch: another batch, another run
    ra, rb = run(["act_outliers"], a), run(["act_outliers"], {**a, "seed": 1})
    assert len({plain.key(ident), ra.key(ident), rb.key(ident)}) == 3
    assert ra.config(ident)["feature_settings"] == {"calibration": a}
    # at the default calibration the key is the one from before settings were keyed (no entry at all)
    default = run(["act_outliers"])
    assert default.key(ident) == plain.key(ident) and "feature_settings" not in default.config(ident)
    # no settings (sqnr_db), or only the run's own eval record, already in the key (float_nll): key unchanged
    assert run(["sqnr_db", "float_nll"], a).key(ident) == plain.key(ident)
    # general over the registry's settings, not special-cased: landscape settings count the same way
    assert key_settings(["top_eig"], {"landscape": LandscapeSettings(seq_len=64)}) == (
        ("landscape", LandscapeSettings(seq_len=64)),
    )
    assert key_settings(["top_eig"], {"landscape": LandscapeSettings()}) == ()
    assert set(SETTING_DEFAULTS) == set(SETTINGS)  # every setting a feature may name has a default record


def test_yaml_and_toml_files_give_the_same_spec(model_dirs, tmp_path):
    raw = _spec(model_dirs, eval={"seq_len": 64, "max_tokens": 512, "protocol": "rolling"})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    toml = (
        'name = "t"\n'
        f'models = ["{model_dirs[0]}"]\n'
        'formats = ["int8", "int4-g32"]\n'
        'methods = ["rtn"]\n'
        '[eval]\nseq_len = 64\nmax_tokens = 512\nprotocol = "rolling"\n'
    )
    (tmp_path / "s.toml").write_text(toml)
    a, b = load_spec(tmp_path / "s.yaml"), load_spec(tmp_path / "s.toml")
    assert a == b
    assert a.evals == (EvalSpec(protocol="rolling", seq_len=64, max_tokens=512),)


def test_unreadable_files(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("models: [a, b\n")
    with pytest.raises(SpecError, match="cannot parse"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(tmp_path / "list.yaml")


def test_the_shipped_sweeps_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "data" / "sweeps"
    files = sorted(root.glob("*.yaml"))
    assert files, "data/sweeps/*.yaml missing"
    for f in files:
        spec = load_spec(f)
        assert plan(spec), f
