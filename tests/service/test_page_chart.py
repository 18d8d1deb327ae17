"""The page's ranking drawn as a chart (issue 17), in a real headless Chromium at 390 px and at 1280 px.

A zoo-kind KL law (fitted here on a small synthetic table) ranks real formats for a micro checkpoint, so the
ranking is the real /api/predict answer: features computed from the model's weights, extrapolation warnings where
a format's SQNR lies outside the law's training range, and one format that cannot be built skipped with its
reason. That format's name carries markup (the server's spec expansion is loosened to let it through, as if a
catalogue name held it) and must show as text. A plan computed on the same page must join the chart.

Every number the chart is checked against comes from the API's own answer: one marker and one interval bar per
returned format, the budget line at the x of the format whose bits equal the budget (and where the x ticks put
it), the chosen point the least damage at or under the budget, the interval labelled with the coverage that the
answer's alpha gives, the y axis named by the target's unit. The page must not scroll sideways on a 390 px phone,
must raise no script error and no Content-Security-Policy violation. The screenshots are written under the
test's tmp_path, and also to $QSCALE_SCREENSHOTS when that is set (to look at them).
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import qscale.service.app as service_app  # noqa: E402
from qscale.laws.profile import ProfileCalibration  # noqa: E402

from .conftest import CHROMIUM, chromium_page, live_server, synthetic_zoo_frame  # noqa: E402

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (apt-get install chromium)")

PAYLOAD = "<img src=x onerror=document.title=/pwned/.source>"
TITLE = "qscale: predict quantization damage"
FORMATS = ["int2-g16", "int3-g128", "int4-g128", "nf4-g64", "int8-pc"]
BUDGET = 4.125  # int4-g128's bits per weight: the budget line must pass through its marker
CANDS = "int3-g16,int4-g16,int8-pc"

#: Everything the assertions read from the page, in one evaluation.
READ = """(() => {
  const c = document.querySelector('#ranking-chart');
  const num = (e, a) => parseFloat(e.getAttribute(a));
  const q = (s) => [...c.querySelectorAll(s)];
  const out = document.querySelector('#out');
  const notes = document.querySelector('#notes');
  const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.right]; };
  return {
    innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth,
    title: document.title, images: out.querySelectorAll('img').length,
    chartWidth: num(c, 'width'), chartBox: box(c), notesBox: box(notes),
    markers: q('circle.fmt:not(.glyph)').map((m) => ({ format: m.dataset.format, cx: num(m, 'cx'), cls: m.getAttribute('class') })),
    bars: q('path.interval:not(.glyph)').map((b) => b.dataset.format),
    budget: q('line.budget:not(.glyph)').map((l) => [num(l, 'x1'), num(l, 'x2')]),
    xticks: q('text.tick.x').map((t) => [parseFloat(t.textContent), num(t, 'x')]),
    plan: q('path.plan:not(.glyph)').map((p) => p.getAttribute('d')),
    ylabel: c.querySelector('text.label.y').textContent,
    chartText: c.textContent, notesText: notes.textContent, choice: document.querySelector('#choice').textContent,
    budgetRow: document.querySelector('#bpw').parentElement.textContent,
  };
})()"""


@pytest.fixture(scope="module")
def chart_url(tmp_path_factory, model_dir):

    from qscale.laws.fitting import FitData, fit_law

    md = tmp_path_factory.mktemp("chart-models")
    frame = FitData("zoo", synthetic_zoo_frame("kld", slope=0.3, seed=1), "synthetic", target="kld")
    fit_law(frame, "sqnr-only", "zoo-kld-svc", "family", models_dir=md)
    ProfileCalibration(
        a_=0.0, b_=1.0, q_=0.3, models_=["x", "y"], n_runs_=10, raw_range_=(1e-6, 10.0), lomo_abs_resid_=[0.3] * 10
    ).save(md / "profile-kld.json")  # fmt: skip
    app = service_app.create_app(md, model_dirs=[model_dir], zoo_root=tmp_path_factory.mktemp("z"))
    with live_server(app) as base:
        yield base


@pytest.fixture(autouse=True)
def _setup(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QSCALE_PROFILE_DIR", str(tmp_path_factory.getbasetemp() / "chart-profiles"))
    real = service_app._expand_formats

    def lenient(formats):  # names with markup pass through to the prediction, which skips them
        parts = formats.split(",") if isinstance(formats, str) else list(formats)
        odd = [p for p in parts if "<" in p]
        return real([p for p in parts if "<" not in p]) + odd

    monkeypatch.setattr(service_app, "_expand_formats", lenient)


def _keep(shot: Path) -> None:
    if os.environ.get("QSCALE_SCREENSHOTS"):
        dest = Path(os.environ["QSCALE_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / shot.name)


def _x_of(ticks: list[list[float]], value: float) -> float:
    """Where ``value`` lies on the x axis, from two of the axis's own tick labels."""
    (va, xa), (vb, xb) = ticks[0], ticks[-1]
    return xa + (value - va) * (xb - xa) / (vb - va)


def test_the_ranking_is_a_chart_on_a_phone_and_a_desktop(chart_url, tmp_path):
    body = {"law": "zoo-kld-svc", "model": "llama", "formats": ",".join([*FORMATS, PAYLOAD])}
    r = httpx.post(f"{chart_url}/api/predict", json=body, timeout=120)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    preds = res["predictions"]
    assert [s["format"] for s in res["skipped"]] == [PAYLOAD]
    assert any(p["warnings"] for p in preds), "the law should warn about SQNR outside its training range"
    plan = httpx.post(
        f"{chart_url}/api/plan", json={"model": "llama", "candidates": CANDS, "target_bpw": 5.0}, timeout=120
    ).json()
    within = [p for p in preds if p["bits_per_element"] <= BUDGET]
    best = min(within, key=lambda p: (p["value"], p["bits_per_element"]))["format"]
    values = [p["value"] for p in preds]
    log = min(values) > 0 and max(values) / min(values) >= 10
    coverage = f"{round((1 - preds[0]['alpha']) * 100)}%"

    q = {**body, "bpw": str(BUDGET), "run": "1", "pmodel": "llama", "pcands": CANDS, "pbpw": "5", "plan": "1"}
    url = f"{chart_url}/?{urllib.parse.urlencode(q)}"
    ready = "document.querySelector('#ranking-chart path.plan:not(.glyph)') && document.querySelector('#frontier')"
    with chromium_page(tmp_path / "profile") as page:
        page.viewport(390, 844)
        page.goto(url)
        page.wait_for(ready)
        phone = page.js(READ)
        _keep(page.screenshot(tmp_path / "ranking-390.png"))
        page.viewport(1280, 900)
        page.wait_for("document.querySelector('#ranking-chart').getAttribute('width') > 500")
        page.wait_for(ready)
        desk = page.js(READ)
        _keep(page.screenshot(tmp_path / "ranking-1280.png"))
        assert page.errors == [] and page.csp_violations() == []

    assert phone["innerWidth"] == 390 and phone["scrollWidth"] <= 390, "the page scrolls sideways on a phone"
    assert desk["innerWidth"] == 1280 and desk["scrollWidth"] <= 1280
    assert (
        phone["chartBox"][0] >= 0 and phone["chartBox"][1] <= 390
    )  # drawn at its box's width, on the screen
    for s in (phone, desk):
        # one marker and one interval bar per returned format
        assert sorted(m["format"] for m in s["markers"]) == sorted(p["format"] for p in preds)
        assert sorted(s["bars"]) == sorted(p["format"] for p in preds)
        assert f"{coverage} interval" in s["chartText"] and coverage == "90%"
        assert s["ylabel"] == f"predicted KL (nats/token){', log scale' if log else ''}"
        # the budget line, where the budget is: through int4-g128's marker, and where the axis puts 4.125
        ((x1, x2),) = s["budget"]
        cx = {m["format"]: m["cx"] for m in s["markers"]}
        assert x1 == x2 == pytest.approx(cx["int4-g128"], abs=1e-6)
        assert x1 == pytest.approx(_x_of(s["xticks"], BUDGET), abs=0.5)
        assert cx["int8-pc"] == pytest.approx(_x_of(s["xticks"], 8.0), abs=0.5)
        assert "budget 4.125 bits/weight" in s["chartText"] and "bits per weight" in s["budgetRow"]
        # the chosen point: the least predicted damage at or under the budget
        assert [m["format"] for m in s["markers"] if "chosen" in m["cls"].split()] == [best]
        assert f"at or under 4.125 bits per weight: {best}" in s["choice"]
        # the plan computed on the page, at its bits per weight
        (d,) = s["plan"]
        plan_x = float(d[1:].split(",")[0])
        assert plan_x == pytest.approx(_x_of(s["xticks"], plan["bpw"]), abs=0.5)
        # warnings and the skipped format as text, the markup literal and inert
        for p in preds:
            for w in p["warnings"]:
                assert f"{p['format']}: {w}" in s["notesText"] or f"all formats: {w}" in s["notesText"]
        assert f"skipped {PAYLOAD}: " in s["notesText"]
        assert s["images"] == 0 and s["title"] == TITLE
    # side by side on a desktop, stacked on a phone
    assert desk["notesBox"][0] >= desk["chartBox"][1]
    assert phone["notesBox"][0] < phone["chartBox"][1]
    assert desk["chartWidth"] > phone["chartWidth"]


def test_a_damage_ceiling_marks_the_recommendation(chart_url, tmp_path):
    """Max damage (the API's budget): a horizontal line at it, the API's recommendation highlighted."""
    body = {"law": "zoo-kld-svc", "model": "llama", "formats": ",".join(FORMATS)}
    res = httpx.post(f"{chart_url}/api/predict", json=body, timeout=120).json()["result"]
    # a ceiling between two formats' upper bounds, so that the recommendation is not the cheapest format
    his = sorted(p["hi"] for p in res["predictions"])
    ceiling = float(f"{(his[1] + his[2]) / 2:.6g}")
    rec = httpx.post(f"{chart_url}/api/predict", json={**body, "budget": ceiling}, timeout=120).json()[
        "result"
    ]
    q = {**body, "budget": str(ceiling), "run": "1"}
    with chromium_page(tmp_path / "profile") as page:
        page.viewport(390, 844)
        page.goto(f"{chart_url}/?{urllib.parse.urlencode(q)}")
        page.wait_for("document.querySelector('#ranking-chart')")
        s = page.js(
            """(() => { const c = document.querySelector('#ranking-chart');
            return { chosen: [...c.querySelectorAll('circle.fmt.chosen:not(.glyph)')].map((m) => m.dataset.format),
                     ceiling: [...c.querySelectorAll('line.ceiling:not(.glyph)')].map((l) => parseFloat(l.dataset.y)),
                     budget: c.querySelectorAll('line.budget').length, pick: [...document.querySelectorAll('tr.pick td:first-child')].map((t) => t.textContent),
                     unit: document.querySelector('#budgetunit').textContent, scrollWidth: document.documentElement.scrollWidth }; })()"""
        )  # fmt: skip
        _keep(page.screenshot(tmp_path / "ceiling-390.png"))
        assert page.errors == [] and page.csp_violations() == []
    assert rec["recommended"] is not None
    assert s["chosen"] == [rec["recommended"]] == s["pick"]
    assert s["ceiling"] == [ceiling] and s["budget"] == 0  # no bits budget given: no vertical line
    assert s["unit"] == "nats/token" and s["scrollWidth"] <= 390
