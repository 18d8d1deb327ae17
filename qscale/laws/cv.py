"""Grouped cross-validation of laws and the metrics reported for them.

Schemes (each holds out whole groups, so no group is ever on both sides of a split):

* ``family`` -- leave one model family out (column ``family``);
* ``size``   -- leave one model size out (column ``size`` for zoo data, ``params_b`` for public data);
  the fold holding out the largest size is also reported alone ("extrapolate to the largest model");
* ``table``  -- leave one public source table out (column ``table_id``).

Metrics on the raw target scale: MAE, RMSE, R^2; ``spearman`` = the Spearman rank correlation between
predicted and measured damage across the formats of each held-out *model* (``model`` / ``model_key``),
averaged over models with at least 3 rows and non-constant values; ``coverage`` = share of measured values
inside the (1 - alpha) interval (nominal 0.90); for public data also ``mae_delta_ppl``, the MAE of
``delta_ppl = baseline * (exp(log_ppl_ratio) - 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import clone

from qscale.laws.estimators import LawError, LawEstimator
from qscale.registry import unknown_name_message

SCHEMES = ("family", "size", "table")


def group_column(frame: pd.DataFrame, scheme: str) -> str:
    """The column whose values are held out together under ``scheme``."""
    if scheme not in SCHEMES:
        raise LawError(unknown_name_message(scheme, SCHEMES, "CV scheme"))
    candidates = {"family": ("family",), "size": ("size", "params_b", "n_nonembed"), "table": ("table_id",)}
    for col in candidates[scheme]:
        if col in frame.columns:
            return col
    raise LawError(f"CV scheme '{scheme}' needs one of columns {candidates[scheme]}; not in the data")


def model_column(frame: pd.DataFrame) -> str:
    for col in ("model_key", "model"):
        if col in frame.columns:
            return col
    raise LawError("data has no 'model' or 'model_key' column for within-model rank correlation")


def leave_one_group_out(groups: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, object]]:
    """Yield (train_idx, test_idx, held_out_group) for every distinct group, in sorted order."""
    groups = np.asarray(groups)
    for g in sorted(pd.unique(groups), key=str):
        test = np.flatnonzero(groups == g)
        train = np.flatnonzero(groups != g)
        yield train, test, g


def spearman_within(frame: pd.DataFrame, pred: str, true: str, by: str, min_rows: int = 3) -> float:
    """Mean over ``by`` groups of the Spearman correlation between ``pred`` and ``true`` (NaN if none)."""
    vals = []
    for _, sub in frame.groupby(by):
        if len(sub) < min_rows or sub[true].nunique() < 2 or sub[pred].nunique() < 2:
            continue
        rho = stats.spearmanr(sub[pred], sub[true]).statistic
        if np.isfinite(rho):
            vals.append(rho)
    return float(np.mean(vals)) if vals else float("nan")


#: The largest float64, and its log: a diverged fit's prediction (1e200, say) squared or exponentiated passes it.
_FMAX = float(np.finfo(float).max)
_LOG_FMAX = math.log(_FMAX)


def _mean(x: np.ndarray) -> float:
    """``mean(x)`` of values >= 0 that may sum past the float range: the plain mean (bit for bit) when the sum is
    finite, else ``max * mean(x / max)``, so no overflow warning and a finite mean wherever it is representable."""
    big = float(np.max(x)) if len(x) else math.nan
    if not math.isfinite(big) or big <= _FMAX / len(x):
        return float(np.mean(x))
    return big * float(np.mean(x / big))


def _squares_fit(x: np.ndarray) -> bool:
    """Whether ``sum(x**2)`` is computed without passing the float range (an inf or NaN in ``x`` is left to
    propagate as it is)."""
    big = float(np.max(np.abs(x))) if len(x) else math.nan
    return not math.isfinite(big) or big <= math.sqrt(_FMAX / len(x))


def _rms(x: np.ndarray) -> float:
    """``sqrt(mean(x**2))``: the plain form (bit for bit) while the squares fit the float range, else the
    squares of ``x / max|x|``, so an error of 1e200 gives an RMSE near 1e200 instead of an overflow to inf."""
    if _squares_fit(x):
        return float(np.sqrt(np.mean(x**2)))
    big = float(np.max(np.abs(x)))
    return big * float(np.sqrt(np.mean((x / big) ** 2)))


def _delta_ppl(b: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``b * expm1(z)``, +-inf (without an overflow warning) where it passes the float range: the test is made in
    log space, ``z + log|b| > log(max float)`` (with a factor 2 to spare for the difference of two of them)."""
    over = z > _LOG_FMAX - math.log(2.0) - np.log(np.maximum(np.abs(b), 1.0))
    if not over.any():
        return b * np.expm1(z)
    return np.where(over, np.copysign(np.inf, b), b * np.expm1(np.where(over, 0.0, z)))


def metrics(frame: pd.DataFrame, target: str, by: str | None = None) -> dict[str, float]:
    """MAE/RMSE/R2/Spearman-within/coverage (+ mae_delta_ppl) of a prediction frame (columns pred, lo, hi).

    A diverged fit's predictions (far beyond the float range once squared or exponentiated) give large or
    infinite scores, never an overflow warning (:func:`_rms`, :func:`_delta_ppl`)."""
    y = frame[target].to_numpy(float)
    p = frame["pred"].to_numpy(float)
    err = p - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    rmse = _rms(err)
    if ss_tot <= 0:
        r2 = float("nan")
    elif _squares_fit(err):
        r2 = float(1.0 - np.sum(err**2) / ss_tot)
    else:  # sum(err**2) = n * rmse**2 passes the float range: Python floats give -inf there, without a warning
        q = rmse / math.sqrt(ss_tot)
        r2 = 1.0 - len(err) * q * q
    out = {
        "n": int(len(y)),
        "mae": _mean(np.abs(err)),
        "rmse": rmse,
        "r2": r2,
        "spearman": spearman_within(frame, "pred", target, by) if by else float("nan"),
        "coverage": float(np.mean((frame["lo"].to_numpy() <= y) & (y <= frame["hi"].to_numpy()))),
    }
    if "baseline" in frame.columns and target == "log_ppl_ratio":
        b = frame["baseline"].to_numpy(float)
        out["mae_delta_ppl"] = _mean(np.abs(_delta_ppl(b, p) - _delta_ppl(b, y)))
    return out


@dataclass(frozen=True)
class CVResult:
    """Out-of-group predictions (one row per usable data row) and their metrics."""

    estimator: str
    scheme: str
    predictions: pd.DataFrame
    scores: dict[str, float]
    largest: dict[str, float] | None = None


def cross_validate(
    estimator: LawEstimator,
    frame: pd.DataFrame,
    scheme: str = "family",
    alpha: float = 0.1,
    name: str | None = None,
) -> CVResult:
    """Leave-one-group-out CV of ``estimator`` on ``frame``; rows lacking its features are skipped.

    Inside each training fold the estimator calibrates its conformal intervals on *its own* grouped
    folds (same grouping column), so the held-out group never informs the interval.
    """
    gcol = group_column(frame, scheme)
    mcol = model_column(frame)
    target = estimator.target
    if target not in frame.columns:
        raise LawError(f"target column '{target}' not in data (columns: {sorted(frame.columns)})")
    feats = list(estimator.features)
    missing = [f for f in feats if f not in frame.columns]
    if missing:
        raise LawError(f"estimator needs columns {missing}, not in data")
    ok = frame[feats].notna().all(axis=1) & np.isfinite(frame[target].astype(float))
    data = frame.loc[ok]
    groups = data[gcol].to_numpy()
    parts = []
    for train, test, g in leave_one_group_out(groups):
        tr = data.iloc[train]
        if len(tr) < 3 or len(np.unique(groups[train])) < 1:
            continue
        est = clone(estimator)
        try:
            est.fit(tr, groups=groups[train])
        except (LawError, np.linalg.LinAlgError) as err:
            raise LawError(f"fit failed when holding out {gcol}={g!r}: {err}") from err
        te = data.iloc[test]
        pi = est.predict_interval(te, alpha=alpha)
        keep = [
            c for c in dict.fromkeys([mcol, gcol, target, "baseline", "format", "method"]) if c in te.columns
        ]
        part = te[keep].copy()
        part[["pred", "lo", "hi"]] = pi[["pred", "lo", "hi"]].to_numpy()
        part["fold"] = str(g)
        part["row_id"] = te.index.to_numpy()  # the row's label in ``frame``
        parts.append(part)
    if not parts:
        raise LawError(f"no CV folds for scheme '{scheme}' (need at least 2 groups in '{gcol}')")
    preds = pd.concat(parts, ignore_index=True)
    scores = metrics(preds, target, by=mcol)
    largest = None
    if scheme == "size":
        top = preds[gcol].astype(float).max()
        sub = preds[preds[gcol].astype(float) == top]
        largest = metrics(sub, target, by=mcol)
    return CVResult(name or estimator.name, scheme, preds, scores, largest)


def compare(
    estimators: dict[str, LawEstimator], frame: pd.DataFrame, scheme: str, alpha: float = 0.1
) -> pd.DataFrame:
    """Cross-validate several estimators; one row of scores per estimator (errors become a note)."""
    rows = []
    for name, est in estimators.items():
        try:
            res = cross_validate(est, frame, scheme, alpha=alpha, name=name)
        except LawError as err:
            rows.append({"estimator": name, "scheme": scheme, "note": str(err)})
            continue
        rows.append(score_row(res))
    return pd.DataFrame(rows)


def score_row(res: CVResult) -> dict[str, Any]:
    """One row of a comparison table: the estimator, the scheme, its scores (and on the largest models)."""
    row = {"estimator": res.estimator, "scheme": res.scheme, **res.scores, "note": ""}
    if res.largest is not None:
        row["mae_largest"] = res.largest["mae"]
        row["spearman_largest"] = res.largest["spearman"]
    return row
