"""Issue 15 (low/medium items on the collection side): exit codes, foreign stores, YAML bombs, leases."""

from __future__ import annotations

import sqlite3

import pytest
import yaml
from typer.testing import CliRunner

from qscale.cli import app

runner = CliRunner()


def _spec(tmp_path, formats=("int8-pc",)):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "h", "models": [str(model)], "formats": list(formats)}))
    return path


def test_collect_exits_nonzero_and_counts_failed_runs(tmp_path, monkeypatch):
    from qscale.collect import runner as collect_runner

    def fake_collect(spec, store, **kw):
        return collect_runner.CollectResult(
            n_planned=3, n_ok=1, n_error=2, n_skipped=0, n_models=1, stopped=False, seconds=1.0,
            load_seconds=0.0,
        )  # fmt: skip

    monkeypatch.setattr(collect_runner, "collect", fake_collect)
    res = runner.invoke(
        app, ["collect", str(_spec(tmp_path)), "--store", str(tmp_path / "r.sqlite"), "--no-progress"]
    )
    assert res.exit_code == 1, res.output
    assert "2 run(s) failed" in res.output


def test_collect_exits_zero_when_nothing_failed(tmp_path, monkeypatch):
    from qscale.collect import runner as collect_runner

    def fake_collect(spec, store, **kw):
        return collect_runner.CollectResult(
            n_planned=1, n_ok=1, n_error=0, n_skipped=0, n_models=1, stopped=False, seconds=1.0,
            load_seconds=0.0,
        )  # fmt: skip

    monkeypatch.setattr(collect_runner, "collect", fake_collect)
    res = runner.invoke(
        app, ["collect", str(_spec(tmp_path)), "--store", str(tmp_path / "r.sqlite"), "--no-progress"]
    )
    assert res.exit_code == 0, res.output


def _foreign_db(path):
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices (total) VALUES (9.5)")
    conn.commit()
    conn.close()


def test_foreign_sqlite_store_is_refused_and_left_untouched(tmp_path):
    from qscale.collect.store import RunStore, StoreError

    db = tmp_path / "accounts.sqlite"
    _foreign_db(db)
    before = db.read_bytes()
    with pytest.raises(StoreError, match="accounts.sqlite.*not a qscale run store"):
        RunStore(db)
    assert db.read_bytes() == before
    conn = sqlite3.connect(str(db))
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"invoices"}


def test_non_sqlite_store_is_refused(tmp_path):
    from qscale.collect.store import RunStore, StoreError

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a database\n" * 10)
    with pytest.raises(StoreError, match="notes.txt is not a SQLite file"):
        RunStore(notes)
    assert notes.read_text().startswith("my notes")


def test_empty_and_new_files_still_become_stores(tmp_path):
    from qscale.collect.store import SCHEMA_VERSION, RunStore

    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for path in (empty, tmp_path / "new.sqlite"):
        with RunStore(path) as st:
            assert st.schema_version == SCHEMA_VERSION
        with RunStore(path) as st:  # and reopen
            assert len(st) == 0


def test_cli_refuses_foreign_store_in_one_line(tmp_path):
    db = tmp_path / "accounts.sqlite"
    _foreign_db(db)
    res = runner.invoke(app, ["collect", str(_spec(tmp_path)), "--store", str(db), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "accounts.sqlite" in res.output and "Traceback" not in res.output
    assert "not a qscale run store" in res.output
    res = runner.invoke(app, ["runs", "list", "--store", str(db)])
    assert res.exit_code == 2 and "not a qscale run store" in res.output


BOMB = """\
a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
models: *i
formats: [int8]
"""


def test_yaml_alias_bomb_is_refused_before_expanding(tmp_path):
    from qscale.collect.spec import SpecError, load_spec

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    with pytest.raises(SpecError, match=r"anchors \(&a\) are not allowed") as info:
        load_spec(bomb)
    assert "bomb.yaml" in str(info.value)
    res = runner.invoke(app, ["collect", str(bomb), "--dry-run"])
    assert res.exit_code == 2 and "not allowed in a sweep spec" in res.output


def test_yaml_alias_without_anchor_and_oversized_spec_are_refused(tmp_path):
    from qscale.collect.spec import MAX_SPEC_BYTES, SpecError, load_spec

    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_SPEC_BYTES // 10 + 10) + "models: [x]\nformats: [int8]\n")
    with pytest.raises(SpecError, match="at most"):
        load_spec(big)
    bad = tmp_path / "alias.yaml"
    bad.write_text("models: *nothing\nformats: [int8]\n")
    with pytest.raises(SpecError):
        load_spec(bad)


def test_plain_yaml_spec_still_loads(tmp_path):
    from qscale.collect.spec import load_spec

    spec = load_spec(_spec(tmp_path, formats=("int8-pc", "int4-g32")))
    assert spec.formats == ("int8-pc", "int4-g32")


def _feature_spec(tmp_path, model, features):
    path = tmp_path / "f.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "feat",
                "models": [str(model)],
                "formats": ["int8-pc"],
                "eval": {"seq_len": 64, "max_tokens": 256},
                "features": list(features),
            }
        )
    )
    return path


def test_added_feature_reruns_finished_runs_and_says_so(tiny_models, tmp_path):
    from qscale.collect.store import RunStore

    store = tmp_path / "runs.sqlite"
    first = runner.invoke(
        app,
        [
            "collect",
            str(_feature_spec(tmp_path, tiny_models[0], ["n_layers"])),
            "--store",
            str(store),
            "--no-progress",
        ],
    )
    assert first.exit_code == 0, first.output
    with RunStore(store) as st:
        (row,) = st.rows("ok")
    assert "n_layers" in row["features"] and "d_model" not in row["features"]

    second = runner.invoke(
        app,
        [
            "collect",
            str(_feature_spec(tmp_path, tiny_models[0], ["n_layers", "d_model"])),
            "--store",
            str(store),
            "--no-progress",
        ],
    )
    assert second.exit_code == 0, second.output
    assert "1 finished run(s) lacked requested features" in second.output
    with RunStore(store) as st:
        rows = st.rows("ok")
    assert len(rows) == 1 and rows[0]["run_key"] == row["run_key"]  # same run, updated in place
    assert {"n_layers", "d_model"} <= set(rows[0]["features"]) and rows[0]["attempts"] == 2

    third = runner.invoke(
        app,
        [
            "collect",
            str(_feature_spec(tmp_path, tiny_models[0], ["d_model"])),
            "--store",
            str(store),
            "--no-progress",
        ],
    )
    assert third.exit_code == 0 and "1 already in store" in third.output and "lacked" not in third.output


def test_feature_presence_does_not_confuse_prefixes():
    from qscale.collect.runner import _feature_present

    names = ["hessian_trace", "hessian_trace_se", "top_eig"]
    assert not _feature_present("hessian_trace", {"hessian_trace_se"}, names)
    assert _feature_present("hessian_trace", {"hessian_trace"}, names)
    assert _feature_present("top_eig", {"top_eig_value", "top_eig_iters"}, names)


def _dead_pid():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_store_leases_claim_skip_and_expire(tmp_path):
    import os
    import time

    from qscale.collect import store as store_mod
    from qscale.collect.store import RunStore

    with RunStore(tmp_path / "r.sqlite") as a, RunStore(tmp_path / "r.sqlite") as b:
        assert a.claim("k1", "owner-a") == "claimed"
        assert b.claim("k1", "owner-b") == "leased"  # same live process here, another owner
        assert a.claim("k1", "owner-a") == "claimed"  # re-claiming one's own lease is fine
        a.release("owner-a", "k1")
        assert b.claim("k1", "owner-b") == "claimed"
        # a lease of a dead process on this host is stale
        with b._write() as conn:
            conn.execute("UPDATE run_leases SET pid = ? WHERE run_key = 'k1'", (_dead_pid(),))
        assert a.claim("k1", "owner-a") == "claimed"
        # ... and so is one whose heartbeat is older than the TTL (another host)
        with a._write() as conn:
            conn.execute(
                "UPDATE run_leases SET host = 'elsewhere', pid = ?, heartbeat = ? WHERE run_key = 'k1'",
                (os.getpid(), time.time() - store_mod.LEASE_TTL_S - 1),
            )
        assert b.claim("k1", "owner-b") == "claimed"
        # a finished run is never claimed
        a.put({"run_key": "k2", "status": "ok", "model": "m", "model_ref": "m", "format": "int8",
               "method": "rtn", "config": {}})  # fmt: skip
        assert b.claim("k2", "owner-b") == "done"
        b.release("owner-b")
        assert a.leases() == []


def test_collect_skips_runs_leased_by_a_live_other_collect(tiny_models, tmp_path):
    import os
    import time

    from qscale.collect.runner import collect
    from qscale.collect.spec import load_spec
    from qscale.collect.store import RunStore

    spec_path = tmp_path / "l.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "lease",
                "models": [str(tiny_models[0])],
                "formats": ["int8-pc", "int4-g32"],
                "eval": {"seq_len": 64, "max_tokens": 256},
            }  # fmt: skip
        )
    )
    spec = load_spec(spec_path)
    with RunStore(tmp_path / "scratch.sqlite") as scratch:
        collect(spec, scratch, progress=False, device="cpu")
        keys = sorted(r["run_key"] for r in scratch.rows("ok") if r["format"] == "int4-g32")
    assert len(keys) == 1

    with RunStore(tmp_path / "r.sqlite") as st:
        with st._write() as conn:  # another qscale collect (our parent process: alive) holds int4-g32
            conn.execute(
                "INSERT INTO run_leases (run_key, owner, host, pid, heartbeat) VALUES (?, 'other', ?, ?, ?)",
                (keys[0], __import__("socket").gethostname(), os.getppid(), time.time()),
            )
        res = collect(spec, st, progress=False, device="cpu")
        assert res.n_ok == 1 and res.n_leased == 1
        assert {r["format"] for r in st.rows()} == {"int8-pc"}
        assert [lease["owner"] for lease in st.leases()] == ["other"]  # ours released, theirs kept

        with st._write() as conn:  # that collect died
            conn.execute("UPDATE run_leases SET pid = ?", (_dead_pid(),))
        res = collect(spec, st, progress=False, device="cpu")
        assert res.n_ok == 1 and res.n_leased == 0
        assert {r["format"] for r in st.rows()} == {"int8-pc", "int4-g32"} and st.leases() == []


def test_disk_full_during_collect_is_one_line(tmp_path, monkeypatch):
    from qscale.collect import runner as collect_runner

    def full(spec, store, **kw):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(collect_runner, "collect", full)
    res = runner.invoke(
        app, ["collect", str(_spec(tmp_path)), "--store", str(tmp_path / "r.sqlite"), "--no-progress"]
    )
    assert res.exit_code == 2 and "database or disk is full" in res.output
    assert isinstance(res.exception, SystemExit)
