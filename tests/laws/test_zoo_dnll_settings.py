"""Issue 15 item 6: a law's data-dependent features are measured at predict time exactly as for its training data.

``zoo-dnll`` was fitted on ``data/runs.sqlite`` (``data/sweeps/demo.yaml``: 64-token windows, 8,192 tokens of the
enwiki test split; the features' calibration batch is the default record). Its manifest stores those settings,
and a prediction for a 64-position zoo model measures ``float_nll`` (and the curvature features) with them. The
old code scored ``float_nll`` on ``evaluate()``'s 256-token windows: an IndexError on these models (a 500 in the
service). The reference values are the collection loop's own (a fresh collection of the demo sweep's settings on
the zoo this machine trained), not a recomputation through the prediction path. The committed store's rows are not
the reference: the zoo's weights depend on the CPU that trained it (its identity is name@config/seed), and on
another machine they differ by ~0.2% in float NLL.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from qscale.laws.artifacts import default_models_dir, load_law, verify_law
from qscale.laws.estimators import LawError
from qscale.laws.predict import predict, predict_formats

REPO = Path(__file__).resolve().parents[2]
MODEL = "zoo:tiny-gpt2-s"  # 64 positions
FORMATS = ["int8-pc", "int4-g16"]


def _by_format(rows: list[dict]) -> dict[str, dict]:
    """Store rows by format, as the flat rows a law is fitted on (+ the model identity)."""
    from qscale.collect.store import flatten_row

    return {r["format"]: {**flatten_row(r), "_identity": r["model_identity"]} for r in rows}


def _stored_runs() -> dict[str, dict]:
    """The committed zoo runs of MODEL by format."""
    from qscale.collect.store import RunStore

    with RunStore(REPO / "data" / "runs.sqlite", readonly=True) as st:
        return _by_format([r for r in st.rows("ok") if r["model"] == MODEL])


def test_zoo_dnll_stores_the_settings_of_its_sweep():
    from qscale.collect.spec import feature_calibration, feature_settings, load_spec

    spec = load_spec(REPO / "data" / "sweeps" / "demo.yaml")
    law = load_law("zoo-dnll")
    assert law.feature_settings == feature_settings(spec.evals[0], feature_calibration(spec))
    assert (
        law.feature_settings["eval"]["seq_len"] == 64 and law.feature_settings["eval"]["max_tokens"] == 8192
    )
    assert verify_law("zoo-dnll") == "verified"  # manifest and files hashed


def test_bad_feature_settings_are_refused_by_name(tmp_path):
    shutil.copytree(default_models_dir() / "zoo-dnll", tmp_path / "zoo-dnll")
    mpath = tmp_path / "zoo-dnll" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["feature_settings"]["eval"]["windows"] = 3  # not a setting the collection has
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(LawError, match=r"feature_settings.eval has unknown key\(s\) \['windows'\]"):
        load_law("zoo-dnll", tmp_path)
    del manifest["feature_settings"]["eval"]["windows"]
    manifest["feature_settings"]["eval"]["seq_len"] = "64"
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(LawError, match="feature_settings.eval.seq_len has an invalid value '64'"):
        load_law("zoo-dnll", tmp_path)
    # a forced BOS layout is a setting (true / false / null); anything else is refused
    manifest["feature_settings"]["eval"]["seq_len"] = 64
    manifest["feature_settings"]["eval"]["add_bos"] = True
    mpath.write_text(json.dumps(manifest))
    assert load_law("zoo-dnll", tmp_path).feature_settings["eval"]["add_bos"] is True
    manifest["feature_settings"]["eval"]["add_bos"] = "yes"
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(LawError, match="feature_settings.eval.add_bos has an invalid value 'yes'"):
        load_law("zoo-dnll", tmp_path)


@pytest.fixture(scope="module")
def stored(tiny_zoo, tmp_path_factory) -> dict[str, dict]:
    """MODEL x FORMATS collected afresh with the demo sweep's eval, calibration and features, as flat rows."""
    from qscale.collect.runner import collect
    from qscale.collect.spec import load_spec, parse_spec
    from qscale.collect.store import RunStore
    from qscale.lm import load

    demo = load_spec(REPO / "data" / "sweeps" / "demo.yaml")
    spec = parse_spec(
        {
            "models": [MODEL],
            "formats": FORMATS,
            "eval": dataclasses.asdict(demo.evals[0]),
            "features": list(demo.features),
        }
    )
    path = tmp_path_factory.mktemp("zoo-dnll") / "runs.sqlite"
    with RunStore(path) as st:
        collect(spec, st, progress=False, device="cpu")
        rows = st.rows("ok")
    runs = _by_format(rows)
    assert sorted(runs) == sorted(FORMATS)
    # the law's sweep and this collection are one model under one identity
    identity = load(MODEL).facts.identity
    assert {r["_identity"] for r in runs.values()} == {identity}
    assert identity in {r["_identity"] for r in _stored_runs().values()}
    return runs


@pytest.mark.slow
def test_predict_measures_every_feature_as_the_training_runs(stored):
    law = load_law("zoo-dnll")
    preds = predict_formats(MODEL, FORMATS, law)  # old code: IndexError (256-token windows, 64 positions)
    assert [p.format for p in preds] == FORMATS
    for p in preds:
        run = stored[p.format]
        assert not any("feature" in w and "measured" in w for w in p.warnings), p.warnings
        for name, value in p.features.items():
            # curvature features are float32 power iterations: their reductions vary with the thread count (1e-7);
            # wrong settings move them by far more (top_eig 4.72 vs 8.20 without the stored calibration)
            assert value == pytest.approx(run[name], rel=1e-5, abs=1e-12), name
        # ... hence the prediction is the law applied to its own training row
        import pandas as pd

        row = pd.DataFrame([{f: run[f] for f in law.features}])
        assert p.value == pytest.approx(float(law.estimator.predict(row).iloc[0]), rel=1e-12)


@pytest.mark.slow
def test_float_nll_equals_a_fresh_collection_of_the_same_model(stored):
    # ``stored`` is that fresh collection (the demo sweep's eval settings)
    p = predict(
        MODEL,
        "int8-pc",
        "zoo-dnll",
        features={k: v for k, v in stored["int8-pc"].items() if k != "float_nll"},
    )
    assert p.costs["float_nll"] == "eval"
    assert p.features["float_nll"] == pytest.approx(stored["int8-pc"]["float_nll"], rel=1e-9)


@pytest.mark.slow
def test_cli_predicts_for_a_64_position_zoo_model(stored):
    from typer.testing import CliRunner

    from qscale.cli import app

    res = CliRunner().invoke(
        app, ["predict", "--law", "zoo-dnll", "--model", MODEL, "--format", "int8-pc", "--json"]
    )
    assert res.exit_code == 0, res.output
    (pred,) = json.loads(res.stdout)["predictions"]
    assert pred["features"]["float_nll"] == pytest.approx(stored["int8-pc"]["float_nll"], rel=1e-9)


@pytest.mark.slow
def test_service_predicts_for_a_64_position_zoo_model(stored, zoo_root):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from qscale.service.app import create_app

    client = TestClient(create_app(zoo_root=zoo_root), base_url="http://127.0.0.1")
    r = client.post("/api/predict", json={"law": "zoo-dnll", "model": MODEL, "format": "int8-pc"})
    assert r.status_code == 200, r.text  # old code: 500 (IndexError)
    feats = r.json()["result"]["features"]
    assert feats["float_nll"] == pytest.approx(stored["int8-pc"]["float_nll"], rel=1e-9)
    assert feats["top_eig"] == pytest.approx(stored["int8-pc"]["top_eig"], rel=1e-5)


def _law_without_settings(tmp_path: Path) -> Path:
    shutil.copytree(default_models_dir() / "zoo-dnll", tmp_path / "old-dnll")
    mpath = tmp_path / "old-dnll" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    del manifest["feature_settings"]
    mpath.write_text(json.dumps(manifest))
    return tmp_path


def _all_but_float_nll(law) -> dict:
    ranges = law.estimator.feature_ranges_
    return {f: (ranges[f][0] + ranges[f][1]) / 2 for f in law.features if f in ranges and f != "float_nll"}


def test_law_without_settings_uses_the_collection_defaults_and_says_so(tmp_path, shared_tokenizer):
    from qscale.collect.spec import EvalSpec
    from qscale.lm.zoo import random_model
    from qscale.measure import evaluate

    d = _law_without_settings(tmp_path)
    law = load_law("old-dnll", d)
    assert law.feature_settings == {}
    lm = random_model("llama", shared_tokenizer, seq_len=256)  # long enough for the default windows
    given = {**_all_but_float_nll(law), "fmt_family": "int"}
    p = predict(lm, "int8-pc", law, features=given, extrapolate=True)
    assert any(
        "does not store how its features were measured" in w and "256-token windows" in w for w in p.warnings
    )
    ref = evaluate(lm.model, lm.tokenizer, **EvalSpec().window_kwargs(), progress=False)["nll"]
    assert p.features["float_nll"] == pytest.approx(ref, rel=1e-9)


def test_model_shorter_than_the_laws_windows_is_one_line(tmp_path, shared_tokenizer):
    from qscale.lm.zoo import random_model

    d = _law_without_settings(tmp_path)
    law = load_law("old-dnll", d)
    lm = random_model("gpt2", shared_tokenizer, seq_len=64)
    with pytest.raises(
        LawError, match=r"256-token windows \(the collection defaults.*this model has 64 positions"
    ):
        predict(lm, "int8-pc", law, features=_all_but_float_nll(law), extrapolate=True)


def test_model_level_features_are_computed_once_for_many_formats(shared_tokenizer, monkeypatch):
    from qscale.features import core as registry
    from qscale.lm.zoo import random_model

    info = registry.get_feature("top_eig")
    calls = []

    def counted(ctx):
        calls.append(ctx.fmt)
        return info.fn(ctx)

    monkeypatch.setitem(registry._REGISTRY, "top_eig", dataclasses.replace(info, fn=counted))
    law = load_law("zoo-dnll")
    lm = random_model("gpt2", shared_tokenizer, seq_len=64)
    given = {k: v for k, v in _all_but_float_nll(law).items() if k not in ("top_eig", "sqnr_db")}
    given["float_nll"] = 7.0
    preds = predict_formats(lm, ["int8-pc", "int4-g16", "int3-pc"], law, features=given, extrapolate=True)
    assert len(preds) == 3 and len(calls) == 1
    assert len({p.features["top_eig"] for p in preds}) == 1
    assert len({p.features["sqnr_db"] for p in preds}) == 3  # model-format features: once per format
