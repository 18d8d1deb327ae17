"""`qscale predict --model M --formats ...` without --law: the profile law end to end on a small model.

The raw profile prediction is checked against KL measured on the RTN-quantized model (exact, full vocabulary,
``qscale.measure.evaluate``): an independent number, not the code under test."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from qscale.cli import app
from qscale.laws.profile import ProfileCalibration

runner = CliRunner()


@pytest.fixture
def model_dir(tmp_path, shared_tokenizer):
    from qscale.lm.zoo import random_model

    lm = random_model("llama", shared_tokenizer, d_model=64, n_layers=2, n_heads=4, seq_len=64, seed=7)
    d = tmp_path / "m"
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def identity_calibration(tmp_path):
    md = tmp_path / "models"
    cal = ProfileCalibration(
        a_=0.0,
        b_=1.0,
        q_=0.3,
        models_=["x", "y"],
        n_runs_=10,
        raw_range_=(1e-5, 10.0),
        lomo_abs_resid_=[0.3] * 10,
    )
    cal.save(md / "profile-kld.json")
    return md


def test_predict_from_profile_matches_measured_kl(model_dir, identity_calibration, tmp_path, monkeypatch):
    monkeypatch.setenv("QSCALE_PROFILE_DIR", str(tmp_path / "profiles"))
    args = [
        "predict",
        "--model",
        str(model_dir),
        "--formats",
        "int8-pc,int6-pc,int4-g16",
        "--json",
        "--models-dir",
        str(identity_calibration),
        "--no-progress",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["law"] == "profile" and out["profile"]["computed"] is True
    preds = {p["format"]: p for p in out["predictions"]}
    assert list(preds) == ["int8-pc", "int6-pc", "int4-g16"]  # sorted by predicted KL
    for p in preds.values():
        assert p["target"] == "kld" and p["lo"] < p["value"] < p["hi"]
        assert p["value"] == pytest.approx(p["raw"])  # identity calibration
        assert sum(t["share"] for t in p["top_layers"]) <= 1 + 1e-9
    assert preds["int4-g16"]["bits_per_weight"] == pytest.approx(5.0)

    from qscale.formats import get_format
    from qscale.lm import load
    from qscale.measure import evaluate
    from qscale.quantize import quantized

    lm = load(str(model_dir))
    ref = lm.model
    import copy

    float_model = copy.deepcopy(ref)
    for spec in ("int8-pc", "int4-g16"):
        with quantized(lm.model, get_format(spec)):
            m = evaluate(
                lm.model,
                lm.tokenizer,
                corpus="enwiki_gensim",
                split="test",
                seq_len=64,
                max_tokens=4096,
                reference=float_model,
            )
        # second order, diagonal Fisher from 2,048 calibration tokens: within a factor 1.6 of the measured KL
        assert 1 / 1.6 < preds[spec]["raw"] / m["kld"] < 1.6, (spec, preds[spec]["raw"], m["kld"])

    r2 = runner.invoke(app, args)
    assert json.loads(r2.stdout)["profile"]["computed"] is False  # cached by weights identity

    # the Python API gives the CLI's numbers, ranked by the same rule, with the recommendation
    import qscale

    api = qscale.predict_model(
        str(model_dir), ["int4-g16", "int8-pc"], models_dir=identity_calibration, budget=1e9
    )
    assert [p["format"] for p in api["predictions"]] == ["int8-pc", "int4-g16"]
    for p in api["predictions"]:
        assert p["value"] == pytest.approx(preds[p["format"]]["value"], rel=1e-9)
    assert api["recommended"] == "int4-g16"  # every format is within the budget: the fewest bits per weight
    torch.manual_seed(0)


def test_predict_errors_are_one_line(model_dir, tmp_path):
    r = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(model_dir),
            "--formats",
            "int4-pc",
            "--models-dir",
            str(tmp_path / "none"),
        ],
    )
    assert r.exit_code == 2 and "qscale profile validate" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["predict", "--formats", "int4-pc"])
    assert r.exit_code == 2 and "--model" in r.output
