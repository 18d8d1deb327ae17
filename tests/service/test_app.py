"""The HTTP service: laws listed, predictions equal the Python API's, bad input is a clear 400 (or a 422 that
names the valid range), formats are used by public laws, unknown inputs and oversized requests are refused."""

from __future__ import annotations

import json
import math
import re

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from qscale.formats import get_format  # noqa: E402
from qscale.laws.fitting import fit_law, load_fit_data  # noqa: E402
from qscale.laws.predict import predict  # noqa: E402
from qscale.service.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client_and_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    fit_law(load_fit_data(public=True), "size-bits", "public-svc", "table", models_dir=d)
    return TestClient(create_app(d), base_url="http://127.0.0.1"), d


PUBLIC = {"params_b": 7, "method": "gptq"}


def test_health_laws_formats_and_page(client_and_dir):
    client, _ = client_and_dir
    assert client.get("/api/health").json()["laws"] == 1
    laws = client.get("/api/laws").json()
    assert [m["name"] for m in laws] == ["public-svc"]
    assert laws[0]["kind"] == "public"
    fmts = {f["spec"]: f for f in client.get("/api/formats").json()}
    assert len(fmts) >= 40 and fmts["mxfp4-e2m1-b32"]["bits_per_element"] == pytest.approx(4.25)
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert "/api/predict" in client.get("/static/app.js").text


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
    assert (
        r.status_code == 400 and "Did you mean 'public-svc'?" in r.json()["detail"]
    )  # qscale.registry's style
    r = client.post("/api/predict", json={"law": "public-svc", "formats": "all-44bit"})
    assert r.status_code == 400 and "all-4bit" in r.json()["detail"]
    r = client.post("/api/predict", json={"law": "public-svc", "format": "int4", "formats": ["nf4"]})
    assert r.status_code == 400 and "not both" in r.json()["detail"]
    # no law: the profile law, which predicts for a model (issue 12), so inputs alone are refused
    r = client.post("/api/predict", json={"inputs": {}})
    assert r.status_code == 400 and "give 'model'" in r.json()["detail"]


# --- the public law uses the format (issue 15, item 4) -------------------------------------------------------


def test_public_law_uses_the_format_and_rejects_unknown_ones(client_and_dir):
    client, d = client_and_dir
    got = {}
    for spec in ("int2", "int4-g128", "int8"):
        r = client.post("/api/predict", json={"law": "public-svc", "format": spec, "inputs": PUBLIC})
        assert r.status_code == 200, r.text
        got[spec] = r.json()["result"]
        assert got[spec]["format"] == str(get_format(spec))  # canonical: int2 -> int2-pc
    assert got["int2"]["value"] > got["int4-g128"]["value"] > got["int8"]["value"]
    # the format's bits per element (16/128 scale bits included) is the law's bpw input
    assert got["int4-g128"]["bits_per_element"] == pytest.approx(4.125)
    ref = predict(law="public-svc", models_dir=d, params_b=7, bpw=4.125, method="gptq")
    assert got["int4-g128"]["value"] == pytest.approx(ref.value, rel=1e-12)
    r = client.post("/api/predict", json={"law": "public-svc", "format": "garbage-format", "inputs": PUBLIC})
    assert r.status_code == 400 and "garbage-format" in r.json()["detail"]
    r = client.post(
        "/api/predict", json={"law": "public-svc", "formats": ["int4", "garbage-format"], "inputs": PUBLIC}
    )
    assert r.status_code == 400 and "garbage-format" in r.json()["detail"]
    # a format and bit inputs contradict each other
    r = client.post(
        "/api/predict", json={"law": "public-svc", "format": "int4", "inputs": {**PUBLIC, "bits": 8}}
    )
    assert r.status_code == 400 and "not both" in r.json()["detail"]


def test_public_law_ranks_a_format_set_with_a_budget(client_and_dir):
    client, _ = client_and_dir
    body = {"law": "public-svc", "formats": "all-4bit", "inputs": PUBLIC}
    r = client.post("/api/predict", json=body)
    assert r.status_code == 200, r.text
    # a budget that some formats meet and some do not: the median upper bound (the law is refitted on the data)
    his = sorted(p["hi"] for p in r.json()["result"]["predictions"])
    budget = his[len(his) // 2]
    r = client.post("/api/predict", json={**body, "budget": budget})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    values = [p["value"] for p in res["predictions"]]
    assert len(values) > 5 and values == sorted(values)
    ok = [p for p in res["predictions"] if p["hi"] <= budget]
    assert 0 < len(ok) < len(values)
    assert res["recommended"] == min(ok, key=lambda p: (p["bits_per_element"], p["hi"]))["format"]
    mx = next(p for p in res["predictions"] if p["format"].startswith("mx"))
    assert any("integer weight formats" in w for w in mx["warnings"])


def test_public_law_refuses_a_model(client_and_dir):
    client, _ = client_and_dir
    r = client.post("/api/predict", json={"law": "public-svc", "model": "zoo:tiny-llama-s", "inputs": PUBLIC})
    assert r.status_code == 400 and "public-data law" in r.json()["detail"]


def test_baseline_ppl_adds_delta_ppl(client_and_dir):
    client, _ = client_and_dir
    r = client.post(
        "/api/predict", json={"law": "public-svc", "format": "int3", "inputs": PUBLIC, "baseline_ppl": 5.47}
    )
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["delta_ppl"]["value"] == pytest.approx(5.47 * math.expm1(res["value"]), rel=1e-9)


def test_extrapolate_is_a_request_field(client_and_dir):
    """Far outside the training range a law refuses (400) unless the request sets "extrapolate": true, as the
    CLI's --extrapolate and the Python API's extrapolate=True; then the answer carries a warning."""
    client, d = client_and_dir
    body = {"law": "public-svc", "inputs": {"params_b": 7000, "bits": 4, "method": "gptq"}}
    r = client.post("/api/predict", json=body)
    assert r.status_code == 400 and "refuses to extrapolate" in r.json()["detail"]
    r = client.post("/api/predict", json={**body, "extrapolate": True})
    assert r.status_code == 200, r.text
    got = r.json()["result"]
    assert any("beyond it" in w for w in got["warnings"])
    ref = predict(law="public-svc", models_dir=d, params_b=7000, bits=4, method="gptq", extrapolate=True)
    assert got["value"] == pytest.approx(ref.value, rel=1e-12)
    assert client.post("/api/predict", json={**body, "extrapolate": False}).status_code == 400
    spec = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]["properties"]
    assert (
        spec["extrapolate"]["type"] == "boolean"
        and "Valid: true or false" in spec["extrapolate"]["description"]
    )


# --- validation (items 7, 8) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"inputs": {"n_nonembed": "abc", "bits": 4, "method": "gptq"}}, "n_nonembed", "> 0"),
        ({"inputs": {"params_b": True, "bits": 4, "method": "gptq"}}, "params_b", "not a boolean"),
        ({"inputs": {"params_b": 0, "bits": 4, "method": "gptq"}}, "params_b", "> 0"),
        ({"inputs": {"params_b": 7, "bits": -4, "method": "gptq"}}, "bits", "from 1 to 32"),
        ({"inputs": {"params_b": 7, "bits": 4, "group_size": -128, "method": "gptq"}}, "group_size", ">= 1"),
        ({"inputs": {"params_b": 7, "bits": 4, "group_size": 0, "method": "gptq"}}, "group_size", ">= 1"),
        ({"inputs": {"params_b": 7, "bits": 4, "group_size": 1.5, "method": "gptq"}}, "group_size", ">= 1"),
        ({"inputs": {"params_b": 7, "bits": 4, "method": ""}}, "method", "characters"),
        ({"alpha": 1.5, "inputs": PUBLIC}, "alpha", "between 0 and 1"),
        ({"alpha": 0, "inputs": PUBLIC}, "alpha", "between 0 and 1"),
        ({"budget": -1, "inputs": PUBLIC}, "budget", ">= 0"),
        ({"baseline_ppl": -5, "inputs": PUBLIC}, "baseline_ppl", "> 0"),
        ({"formats": [f"int{2 + i % 7}-g{2 ** (i % 9 + 3)}" for i in range(201)]}, "formats", "at most 200"),
        ({"extrapolate": "yes", "inputs": PUBLIC}, "extrapolate", "true or false"),
        ({"extrapolate": 1, "inputs": PUBLIC}, "extrapolate", "true or false"),
        ({"inputs": {**PUBLIC, "bits": 4, "Alpha": 1}}, "inputs", "feature name"),
    ],
)
def test_invalid_input_is_a_422_naming_the_range(client_and_dir, body, field, says):
    client, _ = client_and_dir
    r = client.post("/api/predict", json={"law": "public-svc", **body})
    assert r.status_code == 422, r.text
    errs = r.json()["detail"]
    assert any(field in map(str, e["loc"]) or field in e["msg"] for e in errs), errs
    assert any(says in e["msg"] for e in errs), errs


@pytest.mark.parametrize(
    "raw",
    [
        b'{"law": "public-svc", "budget": Infinity, "inputs": {"params_b": 7, "bits": 4, "method": "gptq"}}',
        b'{"law": "public-svc", "budget": NaN, "inputs": {"params_b": 7, "bits": 4, "method": "gptq"}}',
        b'{"law": "public-svc", "inputs": {"n_nonembed": Infinity, "bits": 4, "method": "gptq"}}',
        b'{"law": "public-svc", "inputs": {"params_b": 7, "bpw": NaN, "method": "gptq"}}',
        b'{"law": "public-svc", "inputs": {"params_b": 7, "bits": 4, "method": "gptq", "x_feature": Infinity}}',
    ],
)
def test_infinity_and_nan_are_refused(client_and_dir, raw):
    client, _ = client_and_dir
    r = client.post("/api/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "finite" in json.dumps(r.json()["detail"])


@pytest.mark.parametrize(
    "name", ["alpha", "extrapolate", "features", "models_dir", "skipped", "train_tokenz"]
)
def test_inputs_take_only_documented_names(client_and_dir, name):
    client, _ = client_and_dir
    r = client.post(
        "/api/predict",
        json={"law": "public-svc", "inputs": {"params_b": 7, "bits": 4, "method": "gptq", name: 1}},
    )
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert name in detail and "it takes: bits, bpw" in detail


def test_inputs_of_a_zoo_law_are_its_features(zoo_models):
    client = TestClient(create_app(zoo_models), base_url="http://127.0.0.1")
    r = client.post("/api/predict", json={"law": "zoo-svc", "inputs": {"sqnr_db": 20.0}})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["features"] == {"sqnr_db": 20.0}
    r = client.post("/api/predict", json={"law": "zoo-svc", "inputs": {"sqnr_db": 20.0, "params_b": 7}})
    assert r.status_code == 400 and "it takes: sqnr_db" in r.json()["detail"]


# --- limits (item 10) ------------------------------------------------------------------------------------


def test_body_size_is_bounded(client_and_dir):
    client, _ = client_and_dir
    big = {"law": "public-svc", "inputs": PUBLIC, "formats": ["int4"] * 5, "pad": "x" * (70 * 1024)}
    r = client.post("/api/predict", json=big)
    assert r.status_code == 413 and "at most 65536 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: a chunked body is counted as it arrives
        for _ in range(80):
            yield b"x" * 1024

    r = client.post("/api/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/api/health").status_code == 200


def test_named_sets_and_lists_are_bounded(client_and_dir):
    client, _ = client_and_dir
    r = client.post("/api/predict", json={"law": "public-svc", "formats": ["int4"] * 201, "inputs": PUBLIC})
    assert r.status_code == 422
    r = client.post("/api/predict", json={"law": "public-svc", "formats": ",".join(["int4"] * 2000)})
    assert r.status_code == 422  # the string form is bounded too (4096 characters)
    r = client.post("/api/predict", json={"law": "public-svc", "formats": "all", "inputs": PUBLIC})
    # a named set within the bound
    assert r.status_code == 200 and len(r.json()["result"]["predictions"]) > 40


# --- headers, page (item 2, the part that needs no browser) --------------------------------------------------


def test_security_headers_and_no_inline_script(client_and_dir):
    client, _ = client_and_dir
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text and "<style>" not in page.text
    assert re.search(r"\son[a-z]+\s*=", page.text) is None  # no inline event handlers
    js = client.get("/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in js.text and "insertAdjacentHTML" not in js.text and "textContent" in js.text
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")
    for path in ("/api/health", "/api/laws", "/api/formats"):
        assert client.get(path).headers["x-content-type-options"] == "nosniff"


def test_openapi_documents_the_errors(client_and_dir):
    client, _ = client_and_dir
    spec = client.get("/openapi.json").json()
    responses = spec["paths"]["/api/predict"]["post"]["responses"]
    assert {"200", "400", "413", "422", "503"} <= set(responses)
