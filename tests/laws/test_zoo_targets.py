"""Zoo laws can target kld (an always-positive damage measure) besides dnll; kld is never a feature."""

import numpy as np
import pandas as pd
import pytest

from qscale.laws.fitting import load_fit_data
from qscale.laws.registry import make_estimator


def _frame(n_models=6, fmts=(3, 4, 5, 6, 8)):
    rng = np.random.default_rng(0)
    rows = []
    for m in range(n_models):
        n = 1e5 * 2**m
        for b in fmts:
            sqnr = 6.02 * b + rng.normal(0, 0.3)
            kld = 0.5 * 10 ** (-sqnr / 10) * n**-0.2 * 50
            rows.append(
                {
                    "model": f"m{m}",
                    "family": ["a", "b", "c"][m % 3],
                    "format": f"int{b}-pc",
                    "method": "rtn",
                    "n_params": 2 * n,
                    "n_nonembed": n,
                    "train_tokens": 1e6,
                    "float_nll": 5.0,
                    "bits_per_element": float(b),
                    "element_bits": b,
                    "fmt_family": "int",
                    "sqnr_db": sqnr,
                    "dnll": kld * rng.normal(1, 0.5),
                    "kld": kld,
                    "top1": 1 - kld,
                    "status": "ok",
                    "run_key": f"{m}-{b}",
                }
            )
    return pd.DataFrame(rows)


def test_kld_is_a_target_not_a_feature(tmp_path):
    p = tmp_path / "runs.parquet"
    _frame().to_parquet(p)
    data = load_fit_data(runs=p, target="kld")
    assert data.target == "kld" and "kld" in data.frame.columns
    est = make_estimator("second-order", "zoo", data.frame, "kld").fit(data.frame)
    assert "kld" not in est.features_ and "top1" not in est.features_
    forest = make_estimator("forest", "zoo", data.frame, "kld")
    assert "kld" not in forest.features and "dnll" not in forest.features
    # the synthetic law is exactly second-order in SQNR (d = 1) with N^-0.2: the fit recovers it
    c = est.constants(est.theta_)
    assert c["d"] == pytest.approx(1.0, abs=0.05) and c["b"] == pytest.approx(0.2, abs=0.05)
    with pytest.raises(ValueError, match="target 'klx' is not a column"):
        load_fit_data(runs=p, target="klx")


def test_kld_interval_never_below_zero(tmp_path):
    from qscale.laws.artifacts import Law
    from qscale.laws.predict import predict

    frame = _frame()
    est = make_estimator("bits-only", "zoo", frame, "kld").fit(frame, groups=frame["family"].to_numpy())
    law = Law(name="k", estimator=est, kind="zoo", preset="bits-only")
    raw = est.predict_interval(pd.DataFrame([{"bits_per_element": 8.0}]), alpha=0.1).iloc[0]
    p = predict(law=law, bits_per_element=8.0)
    assert raw["lo"] < 0 <= p.lo == 0.0  # the raw conformal band dips below 0; the prediction does not
    assert p.value == pytest.approx(raw["pred"]) and p.hi == pytest.approx(raw["hi"])
