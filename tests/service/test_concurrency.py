"""Model-backed predictions under concurrency (issue 15, item 1), against a live uvicorn server on 127.0.0.1.

Before the fix, 32 concurrent requests over three checkpoints answered 500 ("Cannot copy out of meta tensor":
two transformers loads at once) and left the server broken. Now loads are exclusive, loaded models are cached
(LRU of 2), at most max_workers run and max_queue wait (beyond: 503 + Retry-After), and a prediction past
the time limit answers 503 too.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from qscale.service.app import create_app  # noqa: E402
from qscale.service.models import ModelPool, WorkQueue  # noqa: E402

from .conftest import live_server  # noqa: E402

MODELS = ("llama", "gpt2", "opt")


def _body(i: int) -> dict:
    return {"law": "zoo-svc", "model": MODELS[i % 3], "formats": ["int4-g128", "int8"] if i % 2 else "int3"}


def _fire(url: str, n: int, body=_body) -> list[tuple[int | str, dict, dict]]:
    def one(i: int):
        try:
            r = httpx.post(f"{url}/api/predict", json=body(i), timeout=120)
            return r.status_code, dict(r.headers), r.json()
        except httpx.HTTPError as err:  # a reset connection counts as a failure
            return type(err).__name__, {}, {}

    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


def test_32_concurrent_model_backed_predictions(zoo_models, model_dir):
    app = create_app(zoo_models, model_dirs=[model_dir], max_workers=4, max_queue=64, model_cache=2)
    with live_server(app) as url:
        results = _fire(url, 32)
        codes = Counter(code for code, _, _ in results)
        assert codes == {200: 32}, [r for r in results if r[0] != 200][:3]
        # same model, same format -> same answer, whichever thread computed it
        by_key: dict[tuple, set] = {}
        for i, (_, _, j) in enumerate(results):
            res = j["result"]
            for p in res.get("predictions", [res]):
                by_key.setdefault((MODELS[i % 3], p["format"]), set()).add(p["value"])
        assert len(by_key) == 9 and all(len(v) == 1 for v in by_key.values())
        assert len(app.state.pool) <= 2  # bounded cache
        # the server keeps answering afterwards
        after = httpx.post(f"{url}/api/predict", json=_body(0), timeout=60)
        assert after.status_code == 200, after.text
        assert httpx.get(f"{url}/api/health", timeout=10).json()["models"]["pending"] == 0


def test_full_server_answers_503_with_retry_after(zoo_models, model_dir, monkeypatch):
    from qscale.laws import predict as P

    real = P.predict_formats
    gate = threading.Event()

    def slow(*args, **kwargs):
        gate.wait(timeout=30)  # hold the workers until the burst has been answered
        return real(*args, **kwargs)

    monkeypatch.setattr(P, "predict_formats", slow)
    app = create_app(zoo_models, model_dirs=[model_dir], max_workers=1, max_queue=2, time_limit=60)
    with live_server(app) as url:
        holders = ThreadPoolExecutor(3)
        held = [holders.submit(httpx.post, f"{url}/api/predict", json=_body(0), timeout=60) for _ in range(3)]
        deadline = time.monotonic() + 30
        while app.state.queue.pending < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        results = _fire(url, 32)
        codes = Counter(code for code, _, _ in results)
        assert codes == {503: 32}, codes
        for _, headers, j in results:
            assert int(headers["retry-after"]) >= 1 and "busy" in j["detail"]
        gate.set()
        assert [f.result().status_code for f in held] == [200, 200, 200]
        holders.shutdown()
        assert httpx.post(f"{url}/api/predict", json=_body(1), timeout=60).status_code == 200


def test_time_limit_answers_503_and_frees_the_slot(zoo_models, model_dir, monkeypatch):
    from qscale.laws import predict as P

    real = P.predict_formats
    delay = {"s": 1.5}

    def slow(*args, **kwargs):
        time.sleep(delay["s"])
        return real(*args, **kwargs)

    monkeypatch.setattr(P, "predict_formats", slow)
    app = create_app(zoo_models, model_dirs=[model_dir], max_workers=1, max_queue=1, time_limit=0.3)
    with live_server(app) as url:
        r = httpx.post(f"{url}/api/predict", json=_body(0), timeout=60)
        assert r.status_code == 503 and "time limit of 0.3 s" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        deadline = time.monotonic() + 30
        while app.state.queue.pending and time.monotonic() < deadline:  # the work ends in the background
            time.sleep(0.05)
        assert app.state.queue.pending == 0
        delay["s"] = 0.0
        assert httpx.post(f"{url}/api/predict", json=_body(0), timeout=60).status_code == 200


def test_model_cache_is_lru_and_loads_once(zoo_models, model_dir):
    from fastapi.testclient import TestClient

    app = create_app(zoo_models, model_dirs=[model_dir], model_cache=2)
    client = TestClient(app, base_url="http://127.0.0.1")
    pool = app.state.pool
    for name, loads in (("llama", 1), ("gpt2", 2), ("llama", 2), ("opt", 3), ("llama", 3), ("gpt2", 4)):
        r = client.post("/api/predict", json={"law": "zoo-svc", "model": name, "format": "int4"})
        assert r.status_code == 200, r.text
        assert (pool.loads, len(pool)) == (loads, min(loads, 2)), name
    # one model per request: the schema takes one name, not a list
    r = client.post("/api/predict", json={"law": "zoo-svc", "model": ["llama", "gpt2"], "format": "int4"})
    assert r.status_code == 422


def test_one_format_that_does_not_fit_is_skipped(zoo_models, model_dir, monkeypatch):
    """Issue 15, item 5: a ranking reports the format that cannot be computed and ranks the others."""
    from fastapi.testclient import TestClient

    import qscale.features as F

    real = F.compute_features

    def picky(lm, fmt=None, names=None, **kw):
        if fmt is not None and str(fmt) == "nf4-g16":
            raise F.FeatureError("nf4-g16 does not fit this model (test)")
        return real(lm, fmt, names, **kw)

    monkeypatch.setattr(F, "compute_features", picky)
    client = TestClient(create_app(zoo_models, model_dirs=[model_dir]), base_url="http://127.0.0.1")
    body = {"law": "zoo-svc", "model": "llama", "formats": ["int4-g128", "nf4-g16", "int8"], "budget": 1.0}
    r = client.post("/api/predict", json=body)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert [p["format"] for p in res["predictions"]] == ["int8-pc", "int4-g128"]
    assert res["skipped"] == [{"format": "nf4-g16", "reason": "nf4-g16 does not fit this model (test)"}]
    assert res["recommended"] == "int4-g128"
    r = client.post("/api/predict", json={**body, "formats": ["nf4-g16"]})
    assert r.status_code == 400 and "does not fit" in r.json()["detail"]


def test_queue_and_pool_units():
    q = WorkQueue(max_workers=1, max_queue=0, time_limit=5)
    assert q.run(lambda: 41 + 1) == 42 and q.pending == 0
    with pytest.raises(ZeroDivisionError):
        q.run(lambda: 1 / 0)
    assert q.pending == 0
    q.shutdown()
    loaded: list[str] = []
    pool = ModelPool(size=1, loader=lambda p: loaded.append(p) or p)
    from pathlib import Path

    from qscale.service.models import ModelRef

    a, b = (ModelRef(n, Path(f"/x/{n}"), (n,)) for n in "ab")
    for ref in (a, a, b, a):
        with pool.use(ref) as lm:
            assert lm == str(ref.path)
    assert loaded == ["/x/a", "/x/b", "/x/a"]
