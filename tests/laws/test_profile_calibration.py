"""The profile calibration line and its leave-one-model-out conformal interval, on data with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from qscale.laws.estimators import LawError
from qscale.laws.profile import ProfileCalibration, lomo_scores


def _data(a=0.2, b=0.9, sd=0.1, models=("m1", "m2", "m3", "m4"), n=25, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for m in models:
        raw = np.exp(rng.uniform(np.log(1e-3), np.log(2.0), n))
        kld = np.exp(a + b * np.log(raw) + rng.normal(0, sd, n))
        rows += [{"model": m, "raw": r, "kld": k, "dnll": k} for r, k in zip(raw, kld, strict=True)]
    return pd.DataFrame(rows)


def test_line_recovers_known_coefficients_and_interval_covers():
    cal = ProfileCalibration().fit(_data())
    assert cal.a_ == pytest.approx(0.2, abs=0.05) and cal.b_ == pytest.approx(0.9, abs=0.02)
    # |N(0, 0.1)| 90% quantile is 0.1645; the conformal quantile of 100 LOMO residuals lands near it
    assert cal.q_ == pytest.approx(0.1645, rel=0.3)
    v, lo, hi = cal.interval([0.28])
    assert v[0] == pytest.approx(math.exp(cal.a_ + cal.b_ * math.log(0.28)))
    assert hi[0] / lo[0] == pytest.approx(math.exp(2 * cal.q_))
    fresh = _data(models=("new",), n=400, seed=9)
    v, lo, hi = cal.interval(fresh["raw"].to_numpy())
    cover = np.mean((fresh["kld"] >= lo) & (fresh["kld"] <= hi))
    assert 0.84 <= cover <= 0.96


def test_lomo_scores_and_roundtrip(tmp_path):
    df = _data()
    s = lomo_scores(df)
    assert set(s["model"]) == {"m1", "m2", "m3", "m4"}
    assert (s["spearman"] > 0.95).all() and (s["median_abs_ln_ratio"] < 0.15).all()
    cal = ProfileCalibration().fit(df)
    back = ProfileCalibration.load(cal.save(tmp_path / "c.json"))
    assert back.to_dict() == cal.to_dict()


def test_refuses_what_it_cannot_fit():
    one = ProfileCalibration(form="offset").fit(_data(models=("only",)))
    assert one.lomo_ is False and one.a_ == pytest.approx(0.2 + (0.9 - 1) * -2.6, abs=0.4)
    with pytest.raises(LawError, match="form"):
        ProfileCalibration(form="cubic").fit(_data())
    with pytest.raises(LawError, match="lacks columns"):
        ProfileCalibration().fit(pd.DataFrame({"model": ["a"], "kld": [0.1]}))
    with pytest.raises(LawError, match="not fitted"):
        ProfileCalibration().predict([0.1])


def test_probe_calibration_reads_each_models_own_level(tmp_path):
    """Each model's measured KL is raw x its own level f_m (1.3, 2.1, 0.8, 1.6) with 5% noise; the probe measured f_m.
    Without the probe a cross-model offset cannot know a held-out model's level; with it the residual is the noise."""
    rng = np.random.default_rng(3)
    levels = {"m1": 1.3, "m2": 2.1, "m3": 0.8, "m4": 1.6}
    rows = []
    for m, f in levels.items():
        raw = np.exp(rng.uniform(np.log(1e-3), np.log(2.0), 30))
        kld = raw * f * np.exp(rng.normal(0, 0.05, 30))
        rows += [{"model": m, "raw": r, "kld": k, "probe_factor": f} for r, k in zip(raw, kld, strict=True)]
    df = pd.DataFrame(rows)
    plain = lomo_scores(df, form="offset")
    probed = lomo_scores(df, form="identity", probe=True)
    assert plain["median_abs_ln_ratio"].median() > 0.3
    assert (probed["median_abs_ln_ratio"] < 0.06).all() and probed["probe"].all()
    cal = ProfileCalibration(form="offset", probe=True).fit(df)
    assert cal.a_ == pytest.approx(0.0, abs=0.02)
    # |N(0, 0.05)| 90% quantile is 0.082
    assert cal.q_ == pytest.approx(0.082, rel=0.35)
    # the prediction is raw x factor through the line
    assert cal.predict([0.1], [2.0])[0] == pytest.approx(0.2 * math.exp(cal.a_))
    # the range it was fitted on is in the predictor's units (raw x factor)
    x = df["raw"] * df["probe_factor"]
    assert cal.raw_range_ == pytest.approx((x.min(), x.max()))
    with pytest.raises(LawError, match="noise probe"):
        cal.predict([0.1])
    back = ProfileCalibration.load(cal.save(tmp_path / "p.json"))
    assert back.probe and back.to_dict() == cal.to_dict()
    with pytest.raises(LawError, match="lacks columns"):
        ProfileCalibration(probe=True).fit(df.drop(columns="probe_factor"))
