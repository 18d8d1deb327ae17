"""The run store: upsert semantics, schema migration, flattening, export."""

from __future__ import annotations

import json
import math
import sqlite3

import pandas as pd
import pytest

from qscale.collect.store import FRAME_COLUMNS, MIGRATIONS, SCHEMA_VERSION, RunStore, StoreError
from tests.helpers import store_row


def test_put_is_an_upsert_that_never_loses_a_finished_run(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as st:
        assert st.put(store_row("aaaa0001", "error", error="boom", metrics={}))
        assert st.status_of(["aaaa0001", "bbbb"]) == {"aaaa0001": "error"}
        assert st.put(store_row("aaaa0001", "ok"))  # a retry that succeeds replaces the error
        assert not st.put(store_row("aaaa0001", "error", error="later failure"))  # ok is never replaced
        row = st.get("aaaa0001")
        assert row["status"] == "ok" and row["error"] is None and row["attempts"] == 2
        assert row["metrics"]["dnll"] == 0.25
        assert len(st) == 1 and st.counts() == {"ok": 1}


def test_bad_rows_are_rejected_with_the_field_named(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as st:
        with pytest.raises(StoreError, match="status must be one of"):
            st.put(store_row("k1", "done"))
        with pytest.raises(StoreError, match="unknown field"):
            st.put(store_row("k1", nll=3.0))
        bad = store_row("k1")
        del bad["config"]
        with pytest.raises(StoreError, match="config"):
            st.put(bad)


def test_get_by_unique_prefix(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as st:
        st.put(store_row("abcd1111"))
        st.put(store_row("abcd2222"))
        assert st.get("abcd1")["run_key"] == "abcd1111"
        with pytest.raises(StoreError, match="ambiguous"):
            st.get("abcd")
        with pytest.raises(StoreError, match="no run with key"):
            st.get("ffff")


def test_v1_store_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    # A file as the first release wrote it: the v1 schema only, version 1, one run.
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    MIGRATIONS[0](conn)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute(
        "INSERT INTO runs (run_key, status, model, model_ref, format, method, config, metrics, created_utc) "
        "VALUES ('k-old', 'ok', 'm', 'm', 'int8-pc', 'rtn', '{}', ?, '2026-01-01T00:00:00Z')",
        (json.dumps({"nll": 2.5, "dnll": 0.01}),),
    )
    conn.commit()
    conn.close()

    with RunStore(path) as st:
        assert st.schema_version == SCHEMA_VERSION == 2
        row = st.get("k-old")
        assert row["attempts"] == 1 and row["updated_utc"] == "2026-01-01T00:00:00Z"
        assert row["metrics"] == {"nll": 2.5, "dnll": 0.01}
        st.remember_model("m", "sig", "id-m", {"n_params": 5})  # the v2 table exists
        assert st.cached_model("m", "sig") == ("id-m", {"n_params": 5})
        assert st.cached_model("m", "other-sig") is None
    with RunStore(path) as st:  # opening again is a no-op
        assert st.schema_version == 2 and len(st) == 1


def test_newer_or_foreign_files_are_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        RunStore(path)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE runs (x INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a qscale store"):
        RunStore(other)
    with pytest.raises(StoreError, match="no run store"):
        RunStore(tmp_path / "missing.sqlite", readonly=True)


def test_wal_mode(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as st:
        st.put(store_row("k1"))
    conn = sqlite3.connect(tmp_path / "r.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_to_frame_flattens_to_the_documented_columns(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as st:
        st.put(store_row("k1"))
        st.put(store_row("k2", "error", error="oops", metrics={}, features={}))
        st.put(store_row("k3", config={"format": "int4-g32", "eval": {"corpus": "austen", "split": "test"}}))
        frame = st.to_frame()
        detail = st.to_frame(detail=True)
        ok = st.to_frame("ok")
    assert list(frame.columns[: len(FRAME_COLUMNS)]) == list(FRAME_COLUMNS)
    assert list(frame.columns[-2:]) == ["status", "run_key"]
    assert "weight_stats_kurtosis_max" in frame.columns
    r = frame.set_index("run_key").loc["k1"]
    assert r["family"] == "llama" and r["n_nonembed"] == 600 and math.isnan(r["train_tokens"])
    assert r["bits_per_element"] == 4.5 and r["fmt_family"] == "int" and r["sqnr_db"] == 19.5
    assert r["dnll"] == pytest.approx(r["nll"] - r["float_nll"])
    e = frame.set_index("run_key").loc["k2"]
    assert e["status"] == "error" and math.isnan(e["nll"])
    # the detail frame adds bookkeeping and secondary outcomes, kept out of the default (law) frame
    assert {"error", "time_eval_s", "eval_protocol", "dbpb"} <= set(detail.columns)
    assert not {"error", "time_eval_s", "dbpb"} & set(frame.columns)
    assert list(ok["run_key"]) == ["k1", "k3"]
    # the corpus a run was measured on is a core column: one (model, format, method) may have a run per corpus
    corpus = frame.set_index("run_key")["eval_corpus"]
    assert corpus.loc["k3"] == "austen" and corpus.isna().loc["k1"]  # k1's config has no eval record
    assert list(detail.columns).count("eval_corpus") == 1


def test_a_missing_sqnr_db_stays_missing_not_the_methods_sqnr(tmp_path):
    """A law fitted on float-weight SQNR must not predict from the SQNR of GPTQ's weights: a run that did not
    measure the ``sqnr_db`` feature has NaN there, and ``method_sqnr_db`` stays a column of its own."""
    with RunStore(tmp_path / "r.sqlite") as st:
        st.put(store_row("k1"))  # measured sqnr_db = 19.5
        gptq = {**store_row("k2")["metrics"], "method_sqnr_db": 23.0}
        st.put(store_row("k2", method="gptq", metrics=gptq, features={"weight_stats_kurtosis_max": 1.5}))
        frame = st.to_frame().set_index("run_key")
        detail = st.to_frame(detail=True).set_index("run_key")
    assert frame.loc["k1", "sqnr_db"] == 19.5
    assert math.isnan(frame.loc["k2", "sqnr_db"])
    assert "method_sqnr_db" not in frame.columns
    assert detail.loc["k2", "method_sqnr_db"] == 23.0 and math.isnan(detail.loc["k2", "sqnr_db"])
    with RunStore(tmp_path / "only.sqlite") as st:
        st.put(store_row("k3", metrics=gptq, features={}))
        only = st.to_frame()
    assert "sqnr_db" not in only.columns  # no run measured it: no column, and nothing filled in


def test_empty_store_frame_and_export_round_trip(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as st:
        empty = st.to_frame()
        assert list(empty.columns) == [*FRAME_COLUMNS, "status", "run_key"] and len(empty) == 0
        st.put(store_row("k1"))
        st.put(store_row("k2", metrics={"float_nll": 3.0, "nll": 3.5, "dnll": 0.5}))
        pq = st.export(tmp_path / "runs.parquet")
        csv = st.export(tmp_path / "out.txt", "csv")
        with pytest.raises(StoreError, match="valid: parquet, csv"):
            st.export(tmp_path / "x.json")
        frame = st.to_frame()
    back = pd.read_parquet(pq)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    back_csv = pd.read_csv(csv)
    assert list(back_csv["dnll"]) == [0.25, 0.5]


def test_runs_of_a_superseded_model_identity_leave_the_frame(tmp_path):
    with RunStore(tmp_path / "r.sqlite") as st:
        st.put(store_row("old1", model_identity="zoo:m@aaaa/0"))
        st.put(store_row("old2", model_identity="zoo:m@aaaa/0", format="int8-pc"))
        st.put(store_row("other", model_ref="zoo:n", model="zoo:n", model_identity="zoo:n@cccc/0"))
        assert sorted(st.to_frame()["run_key"]) == ["old1", "old2", "other"]
        st.put(store_row("new1", model_identity="zoo:m@bbbb/0"))  # the model was retrained
        assert sorted(st.to_frame()["run_key"]) == ["new1", "other"]
        assert sorted(st.to_frame(superseded=True)["run_key"]) == ["new1", "old1", "old2", "other"]
        assert len(st) == 4  # nothing is deleted
