"""POST /api/predict without a law: the model's own sensitivity profile, ranked and recommended the way the CLI
does it, with the numbers of the Python workflow called directly on the same checkpoint."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from qscale.formats import get_format  # noqa: E402
from qscale.laws.profile import ProfileCalibration  # noqa: E402
from qscale.service.app import create_app  # noqa: E402

SPECS = ["int3-g16", "int4-g16", "int8-pc"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    md = tmp_path_factory.mktemp("profile-models")
    ProfileCalibration(
        a_=0.0, b_=1.0, q_=0.3, models_=["x", "y"], n_runs_=10, raw_range_=(1e-6, 10.0), lomo_abs_resid_=[0.3] * 10
    ).save(md / "profile-kld.json")  # fmt: skip
    return md


@pytest.fixture(scope="module")
def client(models, tmp_path_factory, model_dir):
    app = create_app(models, model_dirs=[model_dir], zoo_root=tmp_path_factory.mktemp("z"))
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture(autouse=True)
def _profiles(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QSCALE_PROFILE_DIR", str(tmp_path_factory.getbasetemp() / "predict-profiles"))


def test_profile_law_is_the_default_for_a_model(client, models, model_dir):
    from qscale.workflows.profile import predict_model

    budget = 1e9
    r = client.post("/api/predict", json={"model": "llama", "formats": SPECS, "budget": budget})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["law"] == "profile"
    out = body["result"]
    assert out["model"] == "llama" and "path" not in out["profile"]
    got = {p["format"]: p for p in out["predictions"]}
    assert set(got) == set(SPECS)
    # more bits, less damage; ranked least damage first
    assert got["int8-pc"]["value"] < got["int4-g16"]["value"] < got["int3-g16"]["value"]
    assert [p["format"] for p in out["predictions"]] == ["int8-pc", "int4-g16", "int3-g16"]
    # every budget-feasible format qualifies: the recommendation is the fewest bits per weight, recomputed here
    bpw = {s: float(get_format(s).bits_per_element) for s in SPECS}
    assert out["recommended"] == min(SPECS, key=bpw.__getitem__)
    # the same numbers as the workflow called directly on the checkpoint
    direct = predict_model(str(model_dir / "llama"), SPECS, models_dir=models)
    for p in direct["predictions"]:
        assert got[p["format"]]["value"] == pytest.approx(p["value"], rel=1e-9)
        assert got[p["format"]]["hi"] == pytest.approx(p["hi"], rel=1e-9)
    # a budget below every upper bound recommends nothing
    r = client.post("/api/predict", json={"model": "llama", "formats": SPECS, "budget": 0.0})
    assert r.status_code == 200 and r.json()["result"]["recommended"] is None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"formats": SPECS}, "give 'model'"),
        ({"law": "profile", "model": "llama"}, "give 'format' or 'formats'"),
        ({"model": "llama", "format": "int4-g16", "baseline_ppl": 20.0}, "not ['baseline_ppl']"),
        ({"model": "llama", "format": "int4-g16", "extrapolate": True}, "not ['extrapolate']"),
    ],
)
def test_bad_profile_requests_are_400_with_a_reason(client, body, needle):
    r = client.post("/api/predict", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["detail"]
