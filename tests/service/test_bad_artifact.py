"""Issue 15 item 9: one corrupt artifact does not disable the other laws; /api/health reports it."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from qscale.laws.fitting import fit_law, load_fit_data  # noqa: E402
from qscale.service.app import create_app  # noqa: E402


def test_corrupt_artifact_is_skipped_and_reported(tmp_path):
    data = load_fit_data(public=True)
    fit_law(data, "size-bits", "public-good", "table", models_dir=tmp_path)
    fit_law(data, "size-bits", "public-bad", "table", models_dir=tmp_path)
    params = tmp_path / "public-bad" / "params.json"
    params.write_text(params.read_text().replace("1", "2", 1))
    client = TestClient(create_app(tmp_path), base_url="http://127.0.0.1", raise_server_exceptions=False)

    laws = client.get("/api/laws")
    assert laws.status_code == 200
    assert [m["name"] for m in laws.json()] == ["public-good"]

    health = client.get("/api/health").json()
    assert health["status"] == "degraded" and health["laws"] == 1
    assert [b["name"] for b in health["bad_laws"]] == ["public-bad"]
    assert "params.json does not match its sha256" in health["bad_laws"][0]["reason"]
    assert str(tmp_path) not in health["bad_laws"][0]["reason"]

    one = client.get("/api/laws/public-bad")
    assert one.status_code == 400 and "public-bad" in one.json()["detail"]
    pred = client.post(
        "/api/predict", json={"law": "public-bad", "format": "int4", "inputs": {"params_b": 7}}
    )
    assert pred.status_code == 400


def test_health_ok_without_bad_artifacts(tmp_path):
    fit_law(load_fit_data(public=True), "size-bits", "public-good", "table", models_dir=tmp_path)
    client = TestClient(create_app(tmp_path), base_url="http://127.0.0.1")
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["bad_laws"] == [] and health["laws"] == 1
