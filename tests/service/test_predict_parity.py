"""One predict -> rank -> recommend workflow (issue 16 §2): ``qscale predict --law ... --json`` and
``POST /api/predict`` are adapters of :func:`qscale.laws.predict.rank_formats`, so the same inputs give the same
ranking (least damage first, then fewest bits per element), skipped formats, recommendation and delta-ppl. The
laws are the shipped public ones (models/): no model, no training."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from qscale.cli import app  # noqa: E402
from qscale.laws.artifacts import Law  # noqa: E402
from qscale.laws.estimators import LawError, LogLinearLaw  # noqa: E402
from qscale.laws.predict import rank_formats  # noqa: E402
from qscale.service.app import create_app  # noqa: E402

runner = CliRunner()
FORMATS = ["int3-g128", "int4-g128", "mxfp4", "nf4-g64", "int8", "int4-g64"]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), base_url="http://127.0.0.1")  # the shipped laws


def _cli(*args: str) -> dict:
    r = runner.invoke(app, ["predict", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize(
    ("law", "inputs", "cli_inputs", "baseline"),
    [
        ("public-ppl", {"params_b": 7, "method": "gptq"}, ["--params-b", "7", "--method", "gptq"], 5.47),
        (
            "public-kld",
            {"params_b": 7, "family": "Llama-2", "method": "rtn"},
            ["--params-b", "7", "--family", "Llama-2", "--method", "rtn"],
            None,
        ),
    ],
)
def test_cli_json_and_service_rank_and_recommend_alike(client, law, inputs, cli_inputs, baseline):
    extra = [] if baseline is None else ["--baseline-ppl", str(baseline)]
    cli = _cli("--law", law, "--formats", ",".join(FORMATS), "--budget", "0.05", *extra, *cli_inputs)
    body = {"law": law, "formats": FORMATS, "inputs": inputs, "budget": 0.05}
    if baseline is not None:
        body["baseline_ppl"] = baseline
    r = client.post("/api/predict", json=body)
    assert r.status_code == 200, r.text
    svc = r.json()["result"]
    assert cli == svc  # one Ranking.to_dict(): predictions (+ delta_ppl), budget, recommended
    preds = svc["predictions"]
    keys = [(p["value"], p["bits_per_element"]) for p in preds]
    assert keys == sorted(keys)  # the one order: value, then bits per element
    assert {p["format"] for p in preds} == {
        "int3-g128",
        "int4-g128",
        "mxfp4-e2m1-b32",
        "nf4-g64",
        "int8-pc",
        "int4-g64",
    }
    ok = [p for p in preds if p["hi"] <= 0.05]
    want = min(ok, key=lambda p: (p["bits_per_element"], p["hi"]))["format"] if ok else None
    assert svc["recommended"] == want and svc["budget"] == 0.05
    assert all(("delta_ppl" in p) == (baseline is not None) for p in preds)
    # the public-law format handling lives once: the bits per element is the format's, in both
    by = {p["format"]: p for p in preds}
    assert by["int4-g128"]["bits_per_element"] == pytest.approx(4.125)
    assert by["int4-g128"]["features"]["bpw"] == pytest.approx(4.125)


@pytest.fixture(scope="module")
def ouyang_dir(tmp_path_factory):
    """Two public KL laws fitted here: without capacity features (Ouyang: N, D and bits per weight) and with
    them (rate-distortion)."""
    from qscale.laws.fitting import FitData, fit_law
    from qscale.laws.public import public_fit_frame

    out = tmp_path_factory.mktemp("laws")
    data = FitData("public", public_fit_frame(target="kld"), "test", "kld")
    fit_law(data, "ouyang", "kld-ouyang", scheme="family", models_dir=out)
    fit_law(data, "rate-distortion", "kld-capacity", scheme="family", models_dir=out)
    return out


def test_non_integer_format_warning_and_clash_are_the_same_in_cli_and_service(client, ouyang_dir):
    """A law without capacity features: an MX format enters only through its bits per weight, which both
    adapters say; a format beside --bits is refused by both."""
    inputs = {"params_b": 7, "family": "Llama-2", "method": "rtn"}
    args = ["--law", "kld-ouyang", "--models-dir", str(ouyang_dir), "--params-b", "7"]
    cli = _cli(*args, "--format", "mxfp4", "--family", "Llama-2", "--method", "rtn")
    (p,) = cli["predictions"]
    assert p["format"] == "mxfp4-e2m1-b32" and any("integer weight formats" in w for w in p["warnings"])
    svc = TestClient(create_app(ouyang_dir), base_url="http://127.0.0.1")
    r = svc.post("/api/predict", json={"law": "kld-ouyang", "format": "mxfp4", "inputs": inputs})
    assert r.status_code == 200 and r.json()["result"]["warnings"] == p["warnings"]
    # a law with capacity features (rate-distortion, fitted beside it) reads the format: no such warning
    more = ["--models-dir", str(ouyang_dir), "--format", "mxfp4", "--params-b", "7", "--method", "rtn"]
    (q,) = _cli("--law", "kld-capacity", *more)["predictions"]
    assert not any("integer weight formats" in w for w in q.get("warnings", []))
    r = runner.invoke(
        app, ["predict", "--law", "public-kld", "--format", "int4", "--bits", "4", "--params-b", "7"]
    )
    assert r.exit_code == 2 and "not both" in r.output
    r = client.post(
        "/api/predict", json={"law": "public-kld", "format": "int4", "inputs": {**inputs, "bits": 4}}
    )
    assert r.status_code == 400 and "not both" in r.json()["detail"]


def test_cli_checks_inputs_and_refuses_a_model_for_a_public_law_as_the_service_does(client):
    r = runner.invoke(
        app, ["predict", "--law", "public-ppl", "-f", "int4", "--params-b", "7", "--feature", "alpha=1"]
    )
    assert r.exit_code == 2 and "unknown input(s) ['alpha']" in r.output
    r = runner.invoke(
        app, ["predict", "--law", "public-ppl", "-f", "int4", "--params-b", "7", "--model", "zoo:x"]
    )
    assert r.exit_code == 2 and "public-data law" in r.output
    r = client.post("/api/predict", json={"law": "public-ppl", "model": "zoo:x", "inputs": {"params_b": 7}})
    assert r.status_code == 400 and "public-data law" in r.json()["detail"]


def test_ties_rank_by_bits_per_element():
    """The one sort key: value, then bits per element (the CLI used to keep the input order on ties)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    eb, groups = np.tile([2.0, 3, 4, 6, 8], 6), np.repeat(np.arange(6), 5)
    df = pd.DataFrame({"element_bits": eb, "dnll": 3 * np.exp(-0.9 * eb + 0.1 * rng.normal(size=eb.size))})
    est = LogLinearLaw(features=("element_bits",)).fit(df, groups=groups)  # damage from element bits only
    law = Law("eb", est, kind="zoo", preset="bits-only")
    ranking = rank_formats(None, ["int4-g32", "int8-pc", "int4-pc", "int4-g128"], law, budget=0.5)
    assert [p.format for p in ranking.predictions] == ["int8-pc", "int4-pc", "int4-g128", "int4-g32"]
    assert ranking.recommended.format == "int4-pc" and ranking.to_dict()["recommended"] == "int4-pc"
    with pytest.raises(LawError, match=r"unknown input\(s\) \['params_b'\]"):
        rank_formats(None, ["int4-pc"], law, inputs={"params_b": 7})
