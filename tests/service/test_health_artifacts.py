"""/api/health names each artifact's state: verified (hashes match), unverified (an artifact from before the
hashes), bad (failed its hash check or load; the status is then "degraded"). Documented in docs/security.md."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from qscale.service.app import create_app  # noqa: E402


def test_health_reports_verified_unverified_and_bad(public_models, tmp_path):
    for name in ("good", "old", "broken"):
        shutil.copytree(public_models / "public-svc", tmp_path / name)
    old = tmp_path / "old" / "manifest.json"
    manifest = json.loads(old.read_text())
    del manifest["files"]
    old.write_text(json.dumps(manifest))
    (tmp_path / "broken" / "params.json").write_text("{}\n")
    health = TestClient(create_app(tmp_path), base_url="http://127.0.0.1").get("/api/health").json()
    assert health["status"] == "degraded" and health["laws"] == 2
    assert health["artifacts"] == {"good": "verified", "old": "unverified", "broken": "bad"}
    assert [b["name"] for b in health["bad_laws"]] == ["broken"]


def test_health_is_ok_when_every_artifact_loads(public_models):
    health = TestClient(create_app(public_models), base_url="http://127.0.0.1").get("/api/health").json()
    assert (
        health["status"] == "ok"
        and health["artifacts"] == {"public-svc": "verified"}
        and health["bad_laws"] == []
    )
