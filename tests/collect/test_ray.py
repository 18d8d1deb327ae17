"""The Ray backend on a local 2-CPU cluster: same rows as the local backend, a killed worker is retried, and runs
are claimed in the store's lease table before a task measures them (issue 15, leases for Ray).

Faults are injected from here: the test replaces ``ray_backend._model_task`` (looked up when tasks are
dispatched) with a closure, which Ray ships to the workers by value; production code has no test switch.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from qscale.collect import ray_backend
from qscale.collect.runner import collect
from qscale.collect.spec import parse_spec
from qscale.collect.store import RunStore

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module (start-up dominates these tests)."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _spec(model: Path, formats=("int8-pc", "int4-g32")):
    return parse_spec(
        {
            "models": [str(model)],  # one model task: keep the rest small
            "formats": list(formats),
            "eval": {"seq_len": 64, "max_tokens": 512},
            "features": ["sqnr_db"],
        }
    )


def _dies_on_first_attempt(original, fault_dir: str):
    """A model task whose first attempt kills its own worker (leaving a marker file); Ray must retry it."""

    def task(model_ref, *args):
        import hashlib
        import os
        from pathlib import Path

        marker = Path(fault_dir) / hashlib.sha256(model_ref.encode()).hexdigest()[:16]
        if not marker.exists():
            marker.write_text(model_ref)
            os._exit(17)
        return original(model_ref, *args)

    return task


def _records_leases(original, store: str, out: str):
    """A model task that, once it has measured its runs (their rows not yet written), records the leases."""

    def task(model_ref, *args):
        import json
        import sqlite3

        rows, summary = original(model_ref, *args)
        with sqlite3.connect(store) as conn:
            leases = [list(r) for r in conn.execute("SELECT run_key, owner FROM run_leases ORDER BY run_key")]
        with open(out, "w") as fh:
            json.dump({"leases": leases, "measured": [r["run_key"] for r in rows]}, fh)
        return rows, summary

    return task


@pytest.mark.slow
def test_ray_backend_matches_local_and_survives_a_killed_worker(
    tiny_models, tmp_path, monkeypatch, ray_cluster
):
    spec = _spec(tiny_models[0])
    with RunStore(tmp_path / "local.sqlite") as st:
        collect(spec, st, progress=False)
        local = st.to_frame().set_index("run_key")

    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    monkeypatch.setattr(
        ray_backend, "_model_task", _dies_on_first_attempt(ray_backend._model_task, str(fault_dir))
    )
    with RunStore(tmp_path / "ray.sqlite") as st:
        res = collect(spec, st, backend="ray", progress=False)
        remote = st.to_frame().set_index("run_key")
        rows = st.rows()
        leases = st.leases()
    assert len(list(fault_dir.iterdir())) == 1  # the first attempt really died
    assert (res.n_ok, res.n_error, res.failures) == (2, 0, ())
    assert set(remote.index) == set(local.index)  # same run keys: same configurations
    for key in local.index:
        for col in ("nll", "float_nll", "dnll", "kld", "top1", "sqnr_db"):
            assert remote.loc[key, col] == pytest.approx(local.loc[key, col], rel=1e-6, abs=1e-9), col
    assert all(r["attempts"] == 1 for r in rows)  # the driver wrote each run once
    assert leases == []  # the retried task's claims were released with its rows


def test_production_code_has_no_fault_switch():
    src = Path(ray_backend.__file__).read_text()
    assert "QSCALE_TEST" not in src and "os._exit" not in src and "environ" not in src


@pytest.mark.slow
def test_ray_tasks_claim_runs_and_skip_those_another_collect_holds(
    tiny_models, tmp_path, monkeypatch, ray_cluster
):
    spec = _spec(tiny_models[0])
    with RunStore(tmp_path / "scratch.sqlite") as scratch:
        collect(spec, scratch, progress=False, device="cpu")
        keys = {r["format"]: r["run_key"] for r in scratch.rows("ok")}

    path = tmp_path / "r.sqlite"
    seen = tmp_path / "seen.json"
    monkeypatch.setattr(
        ray_backend, "_model_task", _records_leases(ray_backend._model_task, str(path), str(seen))
    )
    with RunStore(path) as st:
        with st._write() as conn:  # another qscale collect (our parent process: alive) holds int4-g32
            conn.execute(
                "INSERT INTO run_leases (run_key, owner, host, pid, heartbeat) VALUES (?, 'other', ?, ?, ?)",
                (keys["int4-g32"], socket.gethostname(), os.getppid(), time.time()),
            )
        res = collect(spec, st, backend="ray", progress=False)  # old code: measured int4-g32 too
        assert (res.n_ok, res.n_leased, res.failures) == (1, 1, ())
        assert {r["format"] for r in st.rows()} == {"int8-pc"}
        assert [lease["owner"] for lease in st.leases()] == ["other"]  # ours released, theirs kept
    inside = json.loads(seen.read_text())
    assert inside["measured"] == [keys["int8-pc"]]
    held = dict(map(tuple, inside["leases"]))
    # while the task measured int8-pc, this collection held its lease (claimed before measuring)
    assert held[keys["int4-g32"]] == "other"
    assert keys["int8-pc"] in held and held[keys["int8-pc"]] != "other"


class _RecordingClaims:
    """The Claims protocol, recording what the backend claims and releases."""

    def __init__(self, refuse=()):
        self.refuse = set(refuse)
        self.held: set[str] = set()
        self.claimed: list[str] = []

    def claim(self, key):
        if key in self.refuse:
            return False
        self.held.add(key)
        self.claimed.append(key)
        return True

    def release(self, key=None):
        if key is None:
            self.held.clear()
        else:
            self.held.discard(key)


def _fails_after_measuring(original):
    def task(model_ref, *args):
        original(model_ref, *args)
        raise RuntimeError("task failed after measuring")

    return task


@pytest.mark.slow
def test_a_failed_task_releases_its_leases_at_once(tiny_models, monkeypatch, ray_cluster):
    from qscale.collect.spec import plan

    spec = _spec(tiny_models[0])
    runs = plan(spec)
    monkeypatch.setattr(ray_backend, "_model_task", _fails_after_measuring(ray_backend._model_task))
    monkeypatch.setattr(ray_backend, "MAX_RETRIES", 0)
    claims = _RecordingClaims()
    held_at_error: list[set[str]] = []
    rows: list[dict] = []
    ray_backend.collect_ray(
        {str(tiny_models[0]): runs},
        spec.features,
        frozenset(),
        rows.append,
        lambda summary, n: None,
        lambda: False,
        lambda ref, err: held_at_error.append(set(claims.held)),
        device="cpu",
        feature_calibration=spec.calibrations[0],
        claims=claims,
    )
    assert rows == [] and len(claims.claimed) == 2  # both runs were claimed before being measured
    assert held_at_error == [set()]  # ... and released before the failure was reported


def test_claims_broker_round_trip():
    broker = ray_backend._ClaimBroker()
    a, b = broker.ask("m", "k1"), broker.ask("m", "k2")
    assert broker.questions() == [(a, "m", "k1"), (b, "m", "k2")] and broker.questions() == []
    assert broker.answer(a) is None
    broker.reply(a, True)
    broker.reply(b, False)
    assert (broker.answer(a), broker.answer(b), broker.answer(a)) == (True, False, None)
