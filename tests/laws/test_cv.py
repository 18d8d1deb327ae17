"""Grouped CV: no group leaks into its own training fold (incl. the conformal calibration), metrics."""

import numpy as np
import pandas as pd
import pytest

from qscale.laws.cv import compare, cross_validate, leave_one_group_out, metrics, spearman_within
from qscale.laws.estimators import LawError, LogLinearLaw
from tests.laws.conftest import ouyang_frame


class SpyLaw(LogLinearLaw):
    """Records the groups of every fit (including the nested calibration fits)."""

    name = "spy"
    seen: list = []

    def _fit_z(self, D, z):
        SpyLaw.seen.append(set(self._spy_groups.loc[D.index]))
        super()._fit_z(D, z)


def test_leave_one_group_out_partitions():
    groups = np.array(list("aabbbcdd"))
    seen = []
    for train, test, g in leave_one_group_out(groups):
        assert set(groups[test]) == {g}
        assert g not in set(groups[train])
        assert len(train) + len(test) == len(groups)
        seen.append(g)
    assert seen == ["a", "b", "c", "d"]


@pytest.mark.parametrize("scheme,col", [("family", "family"), ("size", "size")])
def test_cross_validate_never_trains_on_the_held_out_group(scheme, col):
    df = ouyang_frame()
    SpyLaw.seen = []
    SpyLaw._spy_groups = df[col]
    res = cross_validate(SpyLaw(features=("bits_per_element", "n_nonembed")), df, scheme)
    preds = res.predictions
    assert len(preds) == len(df)
    assert (preds["fold"] == preds[col].astype(str)).all()
    n_groups = df[col].nunique()
    # per fold: one main fit + calibration fits; each saw only the other groups
    assert len(SpyLaw.seen) >= n_groups
    folds = iter(sorted(df[col].unique(), key=str))
    held = next(folds)
    for s in SpyLaw.seen:
        if len(s) == n_groups - 1 and held in s:  # next fold's main fit
            held = next(folds)
        assert held not in s


def test_size_scheme_reports_largest_fold():
    res = cross_validate(LogLinearLaw(features=("bits_per_element", "n_nonembed")), ouyang_frame(), "size")
    assert res.largest is not None and res.largest["n"] == 24  # 4 families x 6 bit widths at the largest size


def test_metrics_hand_worked():
    frame = pd.DataFrame(
        {
            "model": ["a"] * 3 + ["b"] * 3,
            "dnll": [1.0, 2.0, 3.0, 1.0, 2.0, 3.0],
            "pred": [1.5, 2.0, 2.0, 3.0, 2.0, 1.0],
            "lo": [0.0] * 6,
            "hi": [2.5] * 6,
        }
    )
    m = metrics(frame, "dnll", by="model")
    assert m["mae"] == pytest.approx((0.5 + 0 + 1 + 2 + 0 + 2) / 6)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 1 + 4 + 4) / 6))
    assert m["r2"] == pytest.approx(1 - 9.25 / 4.0)
    # model a: ranks (1, 2.5, 2.5) vs (1,2,3) -> rho = 0.8660; model b: reversed -> -1
    assert spearman_within(frame, "pred", "dnll", "model") == pytest.approx((0.8660254 - 1) / 2, abs=1e-6)
    assert m["coverage"] == pytest.approx(4 / 6)


def test_public_metric_mae_delta_ppl():
    frame = pd.DataFrame(
        {
            "model_key": ["x", "x"],
            "log_ppl_ratio": [np.log(1.1), 0.0],
            "baseline": [10.0, 5.0],
            "pred": [0.0, 0.0],
        }
    ).assign(lo=-1.0, hi=1.0)
    assert metrics(frame, "log_ppl_ratio", by="model_key")["mae_delta_ppl"] == pytest.approx(0.5)


def test_metrics_of_a_diverged_prediction_do_not_overflow():
    """A diverged fit predicting 1e200 (its square, its exp pass the float range): large or infinite scores,
    no RuntimeWarning; the finite case keeps the plain formulas' numbers."""
    import warnings

    frame = pd.DataFrame(
        {
            "model_key": ["x", "x", "x"],
            "log_ppl_ratio": [0.1, 0.2, 0.3],
            "baseline": [10.0, 5.0, 8.0],
            "pred": [1e200, 0.2, 800.0],
        }
    ).assign(lo=-1.0, hi=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = metrics(frame, "log_ppl_ratio", by="model_key")
    assert m["mae"] == pytest.approx((1e200 - 0.1 + 799.7) / 3)
    assert m["rmse"] == pytest.approx(1e200 / np.sqrt(3))  # representable: not an overflow to inf
    assert m["r2"] == -np.inf and m["mae_delta_ppl"] == np.inf and m["coverage"] == 1.0

    ok = frame.assign(pred=[0.0, 0.25, 0.5])
    y, p, b = ok["log_ppl_ratio"].to_numpy(), ok["pred"].to_numpy(), ok["baseline"].to_numpy()
    m = metrics(ok, "log_ppl_ratio", by="model_key")
    assert m["rmse"] == float(np.sqrt(np.mean((p - y) ** 2)))  # bit for bit
    assert m["r2"] == float(1.0 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2))
    assert m["mae_delta_ppl"] == float(np.mean(np.abs(b * np.expm1(p) - b * np.expm1(y))))


def test_bad_scheme_and_compare_notes():
    df = ouyang_frame()
    with pytest.raises(LawError, match="Did you mean 'table'"):
        cross_validate(LogLinearLaw(features=("bits_per_element",)), df, "tabel")
    with pytest.raises(LawError, match="table_id"):
        cross_validate(LogLinearLaw(features=("bits_per_element",)), df, "table")
    out = compare(
        {"ok": LogLinearLaw(features=("bits_per_element",)), "bad": LogLinearLaw(features=("nope",))},
        df,
        "family",
    )
    assert out.set_index("estimator").loc["bad", "note"].startswith("estimator needs columns ['nope']")
    assert out.set_index("estimator").loc["ok", "n"] == len(df)
