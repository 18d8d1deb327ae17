"""Models come only from the roots the operator allows (issue 15, item 3), named relative to them; every other
name gets one and the same answer (no file oracle). The Host header must name this server (DNS rebinding)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from qscale.service.app import create_app  # noqa: E402
from qscale.service.models import ModelRoots, refusal  # noqa: E402


@pytest.fixture(scope="module")
def roots(tmp_path_factory, model_dir, fake_zoo):
    """An allowed model dir with an escaping symlink, an empty panel root, and paths outside every root."""
    base = tmp_path_factory.mktemp("roots")
    allowed = base / "allowed"
    shutil.copytree(model_dir / "gpt2", allowed / "gpt2")
    shutil.copytree(model_dir / "llama", allowed / "sub" / "llama")
    outside = base / "outside"
    shutil.copytree(model_dir / "opt", outside / "opt")
    (outside / "notes.txt").write_text("secret")
    os.symlink(outside / "opt", allowed / "escape")  # a symlink out of the root: refused
    os.symlink(allowed / "gpt2", allowed / "alias")  # a symlink that stays inside: fine
    (allowed / "empty").mkdir()
    (allowed / "config-only").mkdir()
    (allowed / "config-only" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    panel = base / "panel"
    panel.mkdir()
    return {"allowed": allowed, "outside": outside, "panel": panel, "zoo": fake_zoo}


@pytest.fixture(scope="module")
def client(roots, zoo_models):
    app = create_app(
        zoo_models, model_dirs=[roots["allowed"]], zoo_root=roots["zoo"], panel_root=roots["panel"]
    )
    return TestClient(app, base_url="http://127.0.0.1")


def _predict(client, model):
    return client.post("/api/predict", json={"law": "zoo-svc", "model": model, "format": "int4-g128"})


@pytest.mark.parametrize("name", ["gpt2", "sub/llama", "alias", "zoo:tiny-llama-s"])
def test_allowed_names_load(client, name):
    r = _predict(client, name)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["model"] == name  # the client's name, never the server path
    assert res["costs"]["sqnr_db"] == "weights" and res["features"]["sqnr_db"] > 0


def test_every_refusal_is_the_same_answer(client, roots):
    outside, allowed = roots["outside"], roots["allowed"]
    names = [
        str(outside / "opt"),  # an existing checkpoint outside the roots
        str(allowed / "gpt2"),  # an allowed checkpoint, but by absolute path
        str(outside / "notes.txt"),  # an existing file
        str(outside),  # an existing directory
        str(outside / "missing"),  # a missing path
        "/etc/passwd",
        "/nonexistent/model.gguf",
        "~/.cache",
        "../outside/opt",
        "sub/../gpt2",
        "./gpt2",
        "sub//llama",
        "sub\\llama",
        "escape",  # symlink escaping the root
        "empty",  # a directory that is not a checkpoint
        "config-only",  # config but no weights
        "missing",
        "zoo:../allowed/gpt2",
        "zoo:../../../../etc",
        "zoo:tiny-llama-s/../tiny-llama-s",
        "zoo:tiny-opt-s",  # a zoo name that is not trained under this root
        "zoo:",
        "panel:smollm2-135m",  # not built under this panel root
        "panel:../allowed/gpt2",
        "gpt2\x00.gguf",
    ]
    seen = set()
    for name in names:
        r = _predict(client, name)
        assert r.status_code == 400, (name, r.text)
        detail = r.json()["detail"]
        assert detail == refusal(name), (name, detail)
        seen.add(detail.replace(repr(name), "NAME"))
    assert len(seen) == 1  # one message for every reason: nothing tells files, dirs and missing paths apart
    assert "secret" not in "".join(seen) and str(outside) not in "".join(seen)


def test_models_lists_what_may_be_loaded(client):
    names = {m["name"] for m in client.get("/api/models").json()}
    assert {"zoo:tiny-llama-s", "gpt2", "alias", "sub/llama"} <= names
    assert not names & {"escape", "empty", "config-only", "opt"}


def test_resolve_uses_the_real_path(roots):
    r = ModelRoots([roots["allowed"]], zoo_root=roots["zoo"], panel_root=roots["panel"])
    assert r.resolve("alias").path == (roots["allowed"] / "gpt2").resolve()
    assert r.resolve("zoo:tiny-llama-s").path == (roots["zoo"] / "tiny-llama-s").resolve()


def test_a_broken_checkpoint_in_a_root_says_little(tmp_path, zoo_models, model_dir):
    d = tmp_path / "models"
    shutil.copytree(model_dir / "gpt2", d / "broken")
    for f in (d / "broken").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    client = TestClient(create_app(zoo_models, model_dirs=[d], zoo_root=tmp_path / "z", panel_root=tmp_path / "p"),
                        base_url="http://127.0.0.1")  # fmt: skip
    r = _predict(client, "broken")
    assert r.status_code == 400
    assert "could not be loaded" in r.json()["detail"] and str(tmp_path) not in r.json()["detail"]


def test_no_model_dirs_means_only_zoo_and_panel(zoo_models, roots):
    client = TestClient(create_app(zoo_models, zoo_root=roots["zoo"], panel_root=roots["panel"]),
                        base_url="http://127.0.0.1")  # fmt: skip
    assert _predict(client, "gpt2").json()["detail"] == refusal("gpt2")
    assert _predict(client, "zoo:tiny-llama-s").status_code == 200


# --- Host header (DNS rebinding) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8000", 200),
        ("localhost", 200),
        ("LOCALHOST:1234", 200),
        ("[::1]:8000", 200),
        ("evil.example", 400),
        ("evil.example:8000", 400),
        ("127.0.0.1.evil.example", 400),
        ("", 400),
    ],
)
def test_host_header_is_checked(public_models, host, status):
    client = TestClient(create_app(public_models), base_url="http://127.0.0.1")
    for path in ("/", "/api/health", "/api/laws"):
        r = client.get(path, headers={"host": host})
        assert r.status_code == status, (path, host, r.text)
    if status == 400:
        r = client.post("/api/predict", headers={"host": host}, json={"law": "public-svc"})
        assert r.status_code == 400 and "Host" in r.json()["detail"]


def test_allowed_hosts_and_bind_address(public_models):
    app = create_app(public_models, bind="192.0.2.7", allowed_hosts=["qscale.lan"])
    client = TestClient(app, base_url="http://127.0.0.1")
    for host, status in (("192.0.2.7:8000", 200), ("qscale.lan", 200), ("evil.example", 400)):
        assert client.get("/api/health", headers={"host": host}).status_code == status
    wildcard = TestClient(create_app(public_models, bind="0.0.0.0"), base_url="http://127.0.0.1")
    assert wildcard.get("/api/health", headers={"host": "0.0.0.0"}).status_code == 400


def test_serve_options(tmp_path):
    from typer.testing import CliRunner

    from qscale.cli import app

    r = CliRunner().invoke(app, ["serve", "--model-dir", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "not a directory" in " ".join(r.output.replace("│", " ").split())
    r = CliRunner().invoke(app, ["serve", "--max-concurrent", "0"])
    assert r.exit_code != 0
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert "--model-dir" in r.output and "--allowed-host" in r.output and "--time-limit" in r.output


def test_a_path_outside_is_not_touched(client, roots, monkeypatch):
    """Resolution refuses before any file access outside the roots: the loader is never called."""
    calls: list[str] = []
    pool = client.app.state.pool
    monkeypatch.setattr(pool, "_loader", lambda p: calls.append(p))
    assert _predict(client, str(Path(roots["outside"]) / "opt")).status_code == 400
    assert calls == []
