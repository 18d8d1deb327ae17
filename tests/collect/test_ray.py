"""The Ray backend on a local 2-CPU cluster: same rows as the local backend, a killed worker is retried."""

from __future__ import annotations

import pytest

from qscale.collect.runner import collect
from qscale.collect.spec import parse_spec
from qscale.collect.store import RunStore

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_backend_matches_local_and_survives_a_killed_worker(tiny_models, tmp_path, monkeypatch):
    from qscale.collect.ray_backend import FAULT_ENV

    spec = parse_spec(
        {
            "models": [str(tiny_models[0])],  # one model task: Ray start-up dominates, keep the rest small
            "formats": ["int8-pc", "int4-g32"],
            "eval": {"seq_len": 64, "max_tokens": 512},
            "features": ["sqnr_db"],
        }
    )
    with RunStore(tmp_path / "local.sqlite") as st:
        collect(spec, st, progress=False)
        local = st.to_frame().set_index("run_key")

    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    monkeypatch.setenv(FAULT_ENV, str(fault_dir))  # workers inherit it: the model task's first attempt dies
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with RunStore(tmp_path / "ray.sqlite") as st:
            res = collect(spec, st, backend="ray", progress=False)
            remote = st.to_frame().set_index("run_key")
            rows = st.rows()
    finally:
        ray.shutdown()
    assert len(list(fault_dir.iterdir())) == 1  # the first attempt really died
    assert (res.n_ok, res.n_error, res.failures) == (2, 0, ())
    assert set(remote.index) == set(local.index)  # same run keys: same configurations
    for key in local.index:
        for col in ("nll", "float_nll", "dnll", "kld", "top1", "sqnr_db"):
            assert remote.loc[key, col] == pytest.approx(local.loc[key, col], rel=1e-6, abs=1e-9), col
    assert all(r["attempts"] == 1 for r in rows)  # the driver wrote each run once
