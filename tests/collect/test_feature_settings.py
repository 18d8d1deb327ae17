"""A finished run whose features were measured with other settings is not reused.

Issue 16 §1: the settings a run's features depend on are part of its run key (:mod:`qscale.collect.spec`), each
only when it differs from its default: a sweep whose data-dependent features get another calibration batch plans
other runs. The eval settings were in the key already. The settings are also recorded with each run
(``provenance.feature_settings``); a run stored under a default-settings key but recorded with another
calibration (the in-place scheme of issue 15) is measured again, in place, and counted in ``n_resettled``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from qscale.collect.runner import collect
from qscale.collect.spec import CalibrationSpec, load_spec, parse_spec, plan
from qscale.collect.store import RunStore

REPO = Path(__file__).resolve().parents[2]


def _spec(model: Path, calibration: dict | None):
    raw = {
        "models": [str(model)],
        "formats": ["int8-pc"],
        "eval": {"seq_len": 64, "max_tokens": 256},
        "features": ["act_outliers"],  # cost "eval": looks at the calibration batch
    }
    if calibration is not None:
        raw["calibration"] = calibration
    return parse_spec(raw)


def _outliers(row: dict) -> dict:
    return {k: v for k, v in row["features"].items() if k.startswith("act_outliers")}


def test_other_calibration_is_another_run(tiny_models, tmp_path):
    a = {"corpus": "enwiki_gensim", "n_samples": 4, "seq_len": 64, "seed": 0}
    b = {**a, "seed": 1}
    with RunStore(tmp_path / "r.sqlite") as st:
        first = collect(_spec(tiny_models[0], a), st, progress=False, device="cpu")
        (row1,) = st.rows("ok")
        assert first.n_ok == 1
        assert row1["provenance"]["feature_settings"] == {
            "eval": {
                "corpus": "enwiki_gensim",
                "split": "test",
                "protocol": "stride",
                "seq_len": 64,
                "max_tokens": 256,
            },
            "calibration": a,
        }
        assert row1["config"]["feature_settings"] == {"calibration": a}  # in the key

        again = collect(_spec(tiny_models[0], a), st, progress=False, device="cpu")
        assert (again.n_ok, again.n_skipped, again.n_resettled) == (0, 1, 0)  # same settings: reused

        other = collect(_spec(tiny_models[0], b), st, progress=False, device="cpu")
        assert (other.n_ok, other.n_skipped, other.n_resettled, other.n_refilled) == (1, 0, 0, 0)
        rows = {r["run_key"]: r for r in st.rows("ok")}
        assert len(rows) == 2 and rows[row1["run_key"]]["attempts"] == 1  # the first run is kept as it was
        (row2,) = (r for k, r in rows.items() if k != row1["run_key"])
        assert row2["provenance"]["feature_settings"]["calibration"] == b
        assert _outliers(row2) != _outliers(row1)  # really measured on the other batch
        assert row2["metrics"]["nll"] == pytest.approx(
            row1["metrics"]["nll"], rel=1e-9
        )  # the run itself: same
        back = collect(_spec(tiny_models[0], a), st, progress=False, device="cpu")
        assert (back.n_ok, back.n_skipped) == (0, 1)  # both settings stay in the store
        assert st.leases() == []


def test_runs_stored_before_the_record_count_as_the_default_calibration(tiny_models, tmp_path):
    with RunStore(tmp_path / "r.sqlite") as st:
        collect(_spec(tiny_models[0], None), st, progress=False, device="cpu")
        (row,) = st.rows("ok")
        assert "feature_settings" not in row["config"]  # default settings: the key of before
        with st._write() as conn:  # a row from before the record: no provenance.feature_settings
            conn.execute("UPDATE runs SET provenance = json_remove(provenance, '$.feature_settings')")
        assert "feature_settings" not in st.rows("ok")[0]["provenance"]
        same = collect(_spec(tiny_models[0], None), st, progress=False, device="cpu")  # default calibration
        assert (same.n_ok, same.n_skipped) == (0, 1)
        changed = collect(
            _spec(tiny_models[0], {"corpus": "enwiki_gensim", "n_samples": 4, "seq_len": 64, "seed": 3}),
            st,
            progress=False,
            device="cpu",
        )
        assert (changed.n_ok, changed.n_resettled) == (1, 0)  # another key: a new run
        assert len(st.rows("ok")) == 2


def test_a_default_key_recorded_with_another_calibration_is_remeasured_in_place(tiny_models, tmp_path):
    """A store of the issue-15 scheme: another calibration re-measured the run under its default-settings key."""
    other = {"corpus": "enwiki_gensim", "n_samples": 4, "seq_len": 64, "seed": 3}
    with RunStore(tmp_path / "r.sqlite") as st:
        collect(_spec(tiny_models[0], None), st, progress=False, device="cpu")
        (row1,) = st.rows("ok")
        with st._write() as conn:
            conn.execute(
                "UPDATE runs SET provenance = json_set(provenance, '$.feature_settings.calibration', json(?))",
                (json.dumps(other),),
            )
        res = collect(_spec(tiny_models[0], None), st, progress=False, device="cpu")
        assert (res.n_ok, res.n_resettled) == (1, 1)
        (row2,) = st.rows("ok")
        assert row2["run_key"] == row1["run_key"] and row2["attempts"] == 2
        assert row2["provenance"]["feature_settings"]["calibration"] == CalibrationSpec().to_dict()


def test_calibration_does_not_matter_without_data_dependent_features(tiny_models, tmp_path):
    def spec(seed):
        return parse_spec(
            {
                "models": [str(tiny_models[0])],
                "formats": ["int8-pc"],
                "eval": {"seq_len": 64, "max_tokens": 256},
                "calibration": {"corpus": "enwiki_gensim", "n_samples": 4, "seq_len": 64, "seed": seed},
                "features": ["sqnr_db"],  # cost "weights": no calibration batch
            }
        )

    with RunStore(tmp_path / "r.sqlite") as st:
        collect(spec(0), st, progress=False, device="cpu")
        assert st.rows("ok")[0]["provenance"]["feature_settings"]["calibration"] is None
        res = collect(spec(5), st, progress=False, device="cpu")
        assert (res.n_ok, res.n_skipped, res.n_resettled) == (0, 1, 0)


def test_committed_stores_keep_their_keys_and_are_not_remeasured():
    from qscale.collect.runner import other_feature_settings
    from qscale.collect.spec import feature_calibration

    for sweep, store in (("demo.yaml", "runs.sqlite"), ("tiny_methods.yaml", "runs_methods.sqlite")):
        spec = load_spec(REPO / "data" / "sweeps" / sweep)
        with RunStore(REPO / "data" / store, readonly=True) as st:
            rows = st.rows("ok")
            calib = feature_calibration(spec)
            assert other_feature_settings(st, spec.features, calib) == set(), sweep
        # the run key is what it was: every stored run is found again by planning its sweep
        by_ref = {}
        for r in rows:
            by_ref[r["model_ref"]] = r["model_identity"]
        planned = {run.key(by_ref[run.model]) for run in plan(spec) if run.model in by_ref}
        assert {r["run_key"] for r in rows} <= planned, sweep
    assert feature_calibration(load_spec(REPO / "data" / "sweeps" / "demo.yaml")) == CalibrationSpec()


def test_the_panel_store_records_the_bos_it_was_measured_with_and_its_sweeps_find_every_run():
    """data/runs_panel.sqlite was measured with BOS forced (the rule before the model's declared convention was
    followed): every run says so (eval.add_bos, metrics.bos) and the committed panel sweeps, which force it
    too, plan every stored key; a default sweep of the same models plans none of them."""
    with RunStore(REPO / "data" / "runs_panel.sqlite", readonly=True) as st:
        rows = st.rows("ok")
    assert rows and all(r["config"]["eval"]["add_bos"] is True and r["metrics"]["bos"] is True for r in rows)
    by_ref = {r["model_ref"]: r["model_identity"] for r in rows}
    planned: set[str] = set()
    default: set[str] = set()
    for f in sorted((REPO / "data" / "sweeps").glob("panel_*.yaml")):
        spec = load_spec(f)
        planned |= {run.key(by_ref[run.model]) for run in plan(spec) if run.model in by_ref}
        native = replace(spec, evals=tuple(replace(e, add_bos=None) for e in spec.evals))
        default |= {run.key(by_ref[run.model]) for run in plan(native) if run.model in by_ref}
    keys = {r["run_key"] for r in rows}
    assert keys <= planned and not keys & default


def test_the_native_panel_store_was_measured_without_bos_and_its_sweeps_find_every_run():
    """data/runs_panel_native.sqlite (what the profile law is fitted on) was measured in the models' own layout:
    no BOS (the panel's GGUFs declare add_bos_token false), nothing forced, every run found by its sweeps."""
    with RunStore(REPO / "data" / "runs_panel_native.sqlite", readonly=True) as st:
        rows = st.rows("ok")
    assert len(rows) == 42 and all(r["metrics"]["bos"] is False for r in rows)
    assert all("add_bos" not in r["config"]["eval"] for r in rows)
    by_ref = {r["model_ref"]: r["model_identity"] for r in rows}
    planned: set[str] = set()
    for f in ("panel_native_core.yaml", "panel_native_core_qwen15.yaml"):
        planned |= {run.key(by_ref[run.model]) for run in plan(load_spec(REPO / "data" / "sweeps" / f))}
    assert {r["run_key"] for r in rows} == planned
