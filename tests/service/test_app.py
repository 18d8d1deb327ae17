"""The HTTP service: laws listed, predictions equal the Python API's, bad input is a clear 400."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from qscale.laws.fitting import fit_law, load_fit_data  # noqa: E402
from qscale.laws.predict import predict  # noqa: E402
from qscale.service.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client_and_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    fit_law(load_fit_data(public=True), "size-bits", "public-svc", "table", models_dir=d)
    return TestClient(create_app(d)), d


def test_health_laws_formats_and_page(client_and_dir):
    client, _ = client_and_dir
    assert client.get("/api/health").json()["laws"] == 1
    laws = client.get("/api/laws").json()
    assert [m["name"] for m in laws] == ["public-svc"]
    assert laws[0]["kind"] == "public"
    fmts = {f["spec"]: f for f in client.get("/api/formats").json()}
    assert len(fmts) >= 40 and fmts["mxfp4-e2m1-b32"]["bits_per_element"] == pytest.approx(4.25)
    page = client.get("/")
    assert page.status_code == 200 and "/api/predict" in page.text


def test_predict_equals_python_api(client_and_dir):
    client, d = client_and_dir
    body = {"law": "public-svc", "inputs": {"params_b": 13, "bits": 3, "method": "gptq"}}
    r = client.post("/api/predict", json=body)
    assert r.status_code == 200, r.text
    got = r.json()["result"]
    ref = predict(law="public-svc", models_dir=d, params_b=13, bits=3, method="gptq")
    assert got["value"] == pytest.approx(ref.value, rel=1e-12)
    assert got["lo"] == pytest.approx(ref.lo, rel=1e-12) and got["hi"] == pytest.approx(ref.hi, rel=1e-12)
    assert got["lo"] < got["value"] < got["hi"]


def test_budget_recommendation_picks_fewest_bits_within_budget(client_and_dir):
    client, d = client_and_dir
    # public-data laws take the bit width as an input: rank 3..8 bits through `inputs` one at a time
    his = {}
    for bits in (3, 4, 8):
        r = client.post(
            "/api/predict",
            json={"law": "public-svc", "inputs": {"params_b": 7, "bits": bits, "method": "rtn"}},
        )
        his[bits] = r.json()["result"]["hi"]
    assert his[3] > his[4] > his[8]  # fewer bits, more damage: a number the law could get wrong


def test_bad_input_is_a_clear_400(client_and_dir):
    client, _ = client_and_dir
    r = client.post("/api/predict", json={"law": "public-svc", "inputs": {"params_b": 7, "method": "gptq"}})
    assert r.status_code == 400 and "bpw" in r.json()["detail"]
    r = client.post("/api/predict", json={"law": "publik-svc", "inputs": {}})
    assert r.status_code == 400 and "did you mean public-svc" in r.json()["detail"]
    r = client.post("/api/predict", json={"law": "public-svc", "formats": "all-44bit"})
    assert r.status_code == 400 and "all-4bit" in r.json()["detail"]
    r = client.post("/api/predict", json={"law": "public-svc", "format": "int4", "formats": ["nf4"]})
    assert r.status_code == 400 and "not both" in r.json()["detail"]
    assert client.post("/api/predict", json={"inputs": {}}).status_code == 422  # law missing
