"""Crash safety: a sweep killed with SIGKILL mid-way loses nothing finished; SIGINT stops cleanly."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import yaml

from qscale.collect.runner import collect
from qscale.collect.spec import load_spec, plan
from qscale.collect.store import RunStore

FORMATS = ["int8-pc", "int4-g32", "fp8-e4m3-pc", "int3-pc"]

# A sweep driver whose method sleeps (when $SLOW_S is set) so the test can hit it mid-sweep.
HARNESS = textwrap.dedent(
    """
    import os, sys, time
    from qscale.quantize import Method, get_method, register_method

    @register_method("slow-rtn")
    class SlowRTN(Method):
        def apply(self, ctx):
            time.sleep(float(os.environ.get("SLOW_S", "0")))
            return get_method("rtn").apply(ctx)

    from qscale.collect.runner import collect
    from qscale.collect.spec import load_spec
    from qscale.collect.store import RunStore

    with RunStore(sys.argv[2]) as st:
        res = collect(load_spec(sys.argv[1]), st, progress=False)
    print("STOPPED" if res.stopped else "DONE", res.n_ok, flush=True)
    """
)


def _register_slow_rtn():
    from qscale.quantize import Method, get_method, list_methods, register_method

    if "slow-rtn" in list_methods():
        return

    @register_method("slow-rtn")
    class SlowRTN(Method):  # same name and params as the harness's: same run keys
        def apply(self, ctx):
            return get_method("rtn").apply(ctx)


def _setup(tmp_path, tiny_models):
    _register_slow_rtn()
    spec_path = tmp_path / "crash.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "crash",
                "models": [str(m) for m in tiny_models],
                "formats": FORMATS,
                "methods": ["slow-rtn"],
                "eval": {"seq_len": 64, "max_tokens": 512},
            }
        )
    )
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    return spec_path, harness


def _count_ok(path) -> int:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'ok'").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def _start(harness, spec_path, store, slow_s):
    env = {**os.environ, "SLOW_S": str(slow_s), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(harness), str(spec_path), str(store)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_rows(proc, store, n, timeout=120.0):
    t0 = time.monotonic()
    while _count_ok(store) < n:
        assert proc.poll() is None, f"sweep ended early: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "sweep made no progress"
        time.sleep(0.02)


def test_sigkill_mid_sweep_loses_nothing_finished(tmp_path, tiny_models):
    spec_path, harness = _setup(tmp_path, tiny_models)
    store = tmp_path / "runs.sqlite"
    proc = _start(harness, spec_path, store, slow_s=0.4)
    try:
        _wait_for_rows(proc, store, 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    spec = load_spec(spec_path)
    planned = plan(spec)
    with RunStore(store) as st:
        assert st._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        before = {r["run_key"]: r for r in st.rows()}
        assert 3 <= len(before) < len(planned), "the kill did not land mid-sweep"
        assert {r["status"] for r in before.values()} == {"ok"}
        res = collect(spec, st, progress=False)
        after = {r["run_key"]: r for r in st.rows()}
        identities = {r["model_ref"]: r["model_identity"] for r in after.values()}
    assert res.n_skipped == len(before) and res.n_ok == len(planned) - len(before)
    # every configured run present exactly once, under the key of its configuration
    expected = {run.key(identities[run.model]) for run in planned}
    assert set(after) == expected and len(after) == len(planned) == 8
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in after.values())
    for key, row in before.items():  # finished rows untouched by the re-run
        assert after[key]["created_utc"] == row["created_utc"]
        assert after[key]["metrics"] == row["metrics"]


def test_sigint_stops_after_the_current_run(tmp_path, tiny_models):
    """A real SIGINT delivered while a run is being stored: the sweep stops after it, the store is intact."""
    spec_path, _ = _setup(tmp_path, tiny_models[:1])
    spec = load_spec(spec_path)
    with RunStore(tmp_path / "runs.sqlite") as st:
        real_put = st.put

        def put_and_interrupt(row):
            out = real_put(row)
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C were pressed during the first run
            return out

        st.put = put_and_interrupt
        res = collect(spec, st, progress=False)
        st.put = real_put
        assert res.stopped and res.n_ok == 1 and len(st) == 1
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
        res = collect(spec, st, progress=False)
        assert (res.n_ok, res.n_skipped) == (len(FORMATS) - 1, 1) and len(st) == len(FORMATS)
