"""Estimators recover known parameters; intervals are right; OLS intervals equal statsmodels'."""

import math

import numpy as np
import pandas as pd
import pytest

from qscale.laws.estimators import (
    ForestLaw,
    GPLaw,
    KumarLaw,
    LawError,
    LogLinearLaw,
    OLSLaw,
    OuyangLaw,
    SecondOrderLaw,
    from_z,
    to_z,
)
from qscale.laws.registry import make_estimator
from tests.laws.conftest import OUYANG, ouyang_frame, sqnr_frame

NDP = ("n_nonembed", "train_tokens", "bits_per_element")


def test_target_transform_round_trip():
    y = np.array([-0.01, 0.0, 1e-5, 0.2, 3.0])
    assert np.allclose(from_z(to_z(y, 1e-3), 1e-3), y, rtol=1e-12, atol=1e-15)
    assert to_z(np.array([0.2]), 1e-3)[0] == pytest.approx(math.asinh(200.0))
    assert to_z(np.array([0.2]), 1e-3)[0] == pytest.approx(math.log(400.0), abs=1e-5)


def test_far_out_bounds_are_infinite_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = from_z(np.array([800.0, -800.0, 700.0]), 1e-3)
    assert got[0] == math.inf and got[1] == -math.inf
    assert got[2] == pytest.approx(1e-3 * math.sinh(700.0), rel=1e-12)


def test_ouyang_refit_recovers_constants(ouyang_data):
    law = OuyangLaw(features=NDP).fit(ouyang_data)
    s = law.summary().set_index("param")
    for name, true in OUYANG.items():
        est, se = s.loc[name, "estimate"], s.loc[name, "stderr"]
        assert abs(est - true) < 4 * se + 1e-9, (name, est, true, se)
    assert s.loc["c", "estimate"] == pytest.approx(5.4967, abs=0.05)
    assert s.loc["a", "estimate"] == pytest.approx(0.5251, abs=0.03)


def test_ouyang_published_constants_worked_number():
    x = pd.DataFrame(
        {"n_nonembed": [6.476e9], "train_tokens": [2e12], "bits_per_element": [4.0], "dnll": [0.1]}
    )
    law = OuyangLaw(features=NDP, use_published=True).fit(pd.concat([x] * 3))
    expect = 0.017 * 2e12**0.5251 / (6.476e9**0.2261 * 4.0**5.4967)  # float64 reference
    assert law.predict(x).iloc[0] == pytest.approx(expect, rel=1e-10)
    assert 0.14 < expect < 0.15
    assert list(law.summary()["estimate"].round(4)) == [0.017, 0.5251, 0.2261, 5.4967]


def test_kumar_recovers_exponential_precision_term():
    rng = np.random.default_rng(1)
    df = ouyang_frame()
    c, gd, gn, g = 0.2, 0.3, 0.4, 0.7
    y = c * df.train_tokens**gd / df.n_nonembed**gn * np.exp(-df.bits_per_element / g)
    df["dnll"] = y * np.exp(0.03 * rng.normal(size=len(df)))
    s = KumarLaw(features=NDP).fit(df).summary().set_index("param")["estimate"]
    assert s["gamma_post"] == pytest.approx(g, rel=0.03)
    assert s["gamma_N"] == pytest.approx(gn, abs=0.05)
    assert s["gamma_D"] == pytest.approx(gd, abs=0.05)


def test_second_order_law_recovers_sqnr_slope():
    df = sqnr_frame()
    s = SecondOrderLaw(features=("sqnr_db", "n_nonembed")).fit(df).summary().set_index("param")
    assert s.loc["d", "estimate"] == pytest.approx(1.0, abs=0.03)
    assert s.loc["b", "estimate"] == pytest.approx(0.3, abs=0.03)
    lo, hi = s.loc["d", "ci_lo"], s.loc["d", "ci_hi"]
    assert lo < 1.0 < hi


def test_loglinear_equals_least_squares_on_logs_without_noise():
    # exact data: y = exp(1 - 0.7 * bits) -> the z-space NLS must find the same line
    df = pd.DataFrame({"bits_per_element": np.arange(2.0, 9.0)})
    df["dnll"] = np.exp(1.0 - 0.7 * df["bits_per_element"])
    s = LogLinearLaw(features=("bits_per_element",)).fit(df).summary()
    assert s["estimate"].tolist() == pytest.approx([1.0, -0.7], abs=1e-6)


def test_ols_interval_equals_statsmodels_summary_frame(ouyang_data):
    law = OLSLaw(features=(*NDP, "fmt_family")).fit(ouyang_data)
    new = ouyang_data.iloc[[0, 5, 17, 40]]
    pi = law.predict_interval(new, alpha=0.1)
    raw = law._raw(law._design(new)).assign(_z=0.0)
    sf = law.results_.get_prediction(raw).summary_frame(alpha=0.1)
    s = law.target_scale
    assert np.allclose(pi["pred"], from_z(sf["mean"], s), rtol=1e-10)
    assert np.allclose(pi["lo"], from_z(sf["obs_ci_lower"], s), rtol=1e-10)
    assert np.allclose(pi["hi"], from_z(sf["obs_ci_upper"], s), rtol=1e-10)
    coef = law.summary().set_index("param")
    assert coef.loc["bits_per_element", "estimate"] < 0  # more bits, less damage


def test_conformal_coverage_near_nominal_on_fresh_data():
    train = sqnr_frame(n_groups=40, seed=2)
    test = sqnr_frame(n_groups=150, seed=3)
    law = LogLinearLaw(features=("sqnr_db", "n_nonembed")).fit(train, groups=train["family"])
    pi = law.predict_interval(test, alpha=0.1)
    cover = np.mean((pi["lo"] <= test["dnll"]) & (test["dnll"] <= pi["hi"]))
    assert 0.85 <= cover <= 0.95, cover
    assert "grouped" in law.calibration_
    # the parametric native interval is also close to nominal on this well-specified data
    nat = LogLinearLaw(features=("sqnr_db", "n_nonembed"), interval="native").fit(train)
    pn = nat.predict_interval(test, alpha=0.1)
    cover_n = np.mean((pn["lo"] <= test["dnll"]) & (test["dnll"] <= pn["hi"]))
    assert 0.85 <= cover_n <= 0.95, cover_n


def test_gp_and_forest_fit_smooth_law_out_of_sample():
    train = sqnr_frame(n_groups=30, per_group=8, noise=0.05, seed=4)
    test = sqnr_frame(n_groups=20, per_group=8, noise=0.05, seed=5)
    zt = to_z(test["dnll"].to_numpy(), 1e-3)
    for law in (
        GPLaw(features=("sqnr_db", "n_nonembed")),
        ForestLaw(features=("sqnr_db", "n_nonembed"), n_estimators=30),
    ):
        law.fit(train, groups=train["family"])
        zp = law.predict_z(test)
        r2 = 1 - np.sum((zp - zt) ** 2) / np.sum((zt - zt.mean()) ** 2)
        assert r2 > 0.9, (law.name, r2)
    pi = GPLaw(features=("sqnr_db", "n_nonembed")).fit(train).predict_interval(test, 0.1)
    cover = np.mean((pi["lo"] <= test["dnll"]) & (test["dnll"] <= pi["hi"]))
    assert 0.8 <= cover <= 1.0


def test_missing_feature_and_typo_errors(ouyang_data):
    with pytest.raises(LawError, match=r"needs feature column\(s\) \['sqnr_db'\]"):
        LogLinearLaw(features=("sqnr_db",)).fit(ouyang_data)
    with pytest.raises(LawError, match="Did you mean 'ouyang'"):
        make_estimator("ouyng")
    with pytest.raises(LawError, match="not fitted"):
        LogLinearLaw(features=("bits_per_element",)).predict(ouyang_data)
    with pytest.raises(LawError, match="no native interval"):
        ForestLaw(features=("bits_per_element",), interval="native").fit(ouyang_data)


def test_domain_warnings(ouyang_data):
    law = OuyangLaw(features=NDP).fit(ouyang_data)
    x = ouyang_data.iloc[[0]].assign(n_nonembed=3e10)  # 1000x the largest training N (3e7)
    msgs = law.domain_warnings(x)
    assert any("n_nonembed" in m and "1000x beyond" in m for m in msgs)
    assert law.domain_warnings(ouyang_data.iloc[[0]]) == []


def test_wls_weights_match_statsmodels_and_downweight_outliers(ouyang_data):
    import statsmodels.api as sm

    df = ouyang_data.copy()
    df.loc[df.index[:5], "dnll"] *= 50.0  # five corrupted rows
    df["w"] = 1.0
    df.loc[df.index[:5], "w"] = 1e-6
    df["log_bits"] = np.log(df["bits_per_element"])  # the true law is linear in log P
    feats = ("n_nonembed", "train_tokens", "log_bits")
    # target_scale far below the data: z = asinh(y/s) ~ log(2y/s), so the log-linear law is exact
    wls = OLSLaw(features=feats, weights="w", target_scale=1e-7).fit(df)
    ols = OLSLaw(features=feats, target_scale=1e-7).fit(df)
    X = sm.add_constant(np.column_stack([np.log(df.n_nonembed), np.log(df.train_tokens), df.log_bits]))
    ref = sm.WLS(to_z(df["dnll"].to_numpy(), 1e-7), X, weights=df["w"].to_numpy()).fit()
    assert np.allclose(wls.params_, ref.params, rtol=1e-8)
    clean = df.iloc[5:]
    err = lambda m: np.mean(np.abs(m.predict_z(clean) - to_z(clean["dnll"].to_numpy(), 1e-7)))  # noqa: E731
    assert err(wls) < 0.06 < 0.5 * err(ols)  # noise sd 0.05 -> mean |err| ~ 0.04
    with pytest.raises(LawError, match=r"\['nope'\]"):
        OLSLaw(features=feats, weights="nope").fit(df)


def test_unidentifiable_law_is_refused(ouyang_data):
    df = ouyang_data.assign(train_tokens=1e6)  # D constant: log D is collinear with the intercept
    with pytest.raises(
        LawError, match=r"not identifiable here: feature\(s\) \['train_tokens'\] are constant"
    ):
        OuyangLaw(features=NDP).fit(df)
    assert OuyangLaw(features=NDP, use_published=True).fit(df).predict(df.head(1)).iloc[0] > 0
