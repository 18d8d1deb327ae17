"""POST /api/plan and the page's plan panel: a plan for a served model, its budget kept, its chart drawn.

The plan's numbers are checked against what they must satisfy, recomputed here from the formats themselves: the
bits per weight from ``bits_per_element_for`` and the layer sizes, the predicted KL as the sum of the layers'
terms (identity calibration), and optimality against every uniform candidate under the budget.
"""

from __future__ import annotations

import re
import urllib.parse

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from qscale.formats import get_format  # noqa: E402
from qscale.laws.profile import ProfileCalibration  # noqa: E402
from qscale.service.app import create_app  # noqa: E402

from .conftest import live_server  # noqa: E402
from .test_browser import CHROMIUM, _dump  # noqa: E402

CANDS = "int3-g16,int4-g16,int8-pc"


@pytest.fixture(scope="module")
def plan_app(tmp_path_factory, model_dir):
    md = tmp_path_factory.mktemp("plan-models")
    ProfileCalibration(
        a_=0.0, b_=1.0, q_=0.3, models_=["x", "y"], n_runs_=10, raw_range_=(1e-6, 10.0), lomo_abs_resid_=[0.3] * 10
    ).save(md / "profile-kld.json")  # fmt: skip
    return create_app(md, model_dirs=[model_dir], zoo_root=tmp_path_factory.mktemp("z"))


@pytest.fixture(autouse=True)
def _profiles(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QSCALE_PROFILE_DIR", str(tmp_path_factory.getbasetemp() / "plan-profiles"))


def test_plan_keeps_the_budget_and_beats_uniform(plan_app):
    client = TestClient(plan_app, base_url="http://127.0.0.1")
    r = client.post("/api/plan", json={"model": "llama", "candidates": CANDS, "target_bpw": 5.0})
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["model"]["name"] == "llama" and "path" not in plan["profile"]
    bits = sum(
        get_format(d["format"]).bits_per_element_for(d["in_features"]) * d["numel"]
        for d in plan["detail"].values()
    )
    n = sum(d["numel"] for d in plan["detail"].values())
    assert bits / n == pytest.approx(plan["bpw"], rel=1e-12)
    assert 4.99 <= plan["bpw"] <= 5.0
    assert plan["predicted"]["value"] == pytest.approx(
        sum(d["kld"] for d in plan["detail"].values()), rel=1e-9
    )
    for u in plan["uniform"]:
        if u["bpw"] <= 5.0:
            assert plan["predicted"]["value"] <= u["value"] * (1 + 1e-9), u
    assert set(plan["formats_used"]) <= set(CANDS.split(","))


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": "llama", "candidates": CANDS}, "exactly one of"),
        ({"model": "llama", "candidates": CANDS, "target_bpw": 4, "max_kld": 0.1}, "exactly one of"),
        ({"model": "llama", "candidates": "int4-g16,int9-pc", "target_bpw": 4.0}, "int9"),
        ({"model": "llama", "candidates": CANDS, "target_bpw": 2.0}, "below the cheapest"),
        ({"model": "../etc", "candidates": CANDS, "target_bpw": 4.0}, ""),
    ],
)
def test_bad_plan_requests_are_400_with_a_reason(plan_app, body, needle):
    client = TestClient(plan_app, base_url="http://127.0.0.1")
    r = client.post("/api/plan", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["detail"]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (apt-get install chromium)")
def test_the_page_draws_the_plan(plan_app, tmp_path):
    with live_server(plan_app) as base:
        q = urllib.parse.urlencode({"pmodel": "llama", "pcands": CANDS, "pbpw": "5", "plan": "1"})
        dom = _dump(f"{base}/?{q}", tmp_path / "profile")
    out = re.search(r'<div id="pout">(.*?)</div>\s*<script', dom, re.S)
    assert out, dom[-3000:]
    html = out.group(1)
    assert 'id="frontier"' in html, html[:2000]
    assert len(re.findall(r'<circle[^>]*class="uniform"', html)) == 3
    assert len(re.findall(r'<circle[^>]*class="plan"', html)) == 1
    m = re.search(r'<p id="plansummary">([\d.]+) bits/weight', html)
    assert m and 4.99 <= float(m.group(1)) <= 5.0, html[:1000]
