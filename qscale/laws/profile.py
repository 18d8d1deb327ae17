"""The profile calibration: measured KL from the sensitivity profile's raw prediction, with conformal intervals.

The profile (:mod:`qscale.measure.sensitivity`) gives a raw second-order prediction ``raw`` of a model's mean KL in a
format, from its weights alone. Where the quadratic model is exact, measured = raw; in practice the diagonal
Fisher, the label sampling and the breakdown of the quadratic regime at large errors (KL saturates) bend it. The
calibration is a straight line in log-log space fitted on measured runs of several models,

    ln(measured) = a + b * ln(raw)          (least squares over runs with measured KL in [lo_fit, hi_fit])

(``form="line"``; ``"offset"`` fixes b = 1 and fits a; ``"identity"`` fixes a = 0, b = 1: the raw second-order
prediction itself, a law with no fitted constant), and the interval is split-conformal on **leave-one-model-out**
residuals: for every model, the line is refitted
without it and its runs' residuals are collected; the (1 - alpha) quantile q of |residual| gives
[pred * e^-q, pred * e^q]. So the interval's width is what the line achieves on a model it has not seen.

Worked numbers: a = 0.1, b = 0.95, raw = 0.28 -> pred = exp(0.1 + 0.95 ln 0.28) = 0.329; with q = 0.35 the 90%
interval is [0.232, 0.467] (hi/lo = e^0.7 = 2.01).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qscale.laws.estimators import LawError, _conformal_q

FIT_RANGE = (1e-4, 10.0)
FORMS = (
    "identity",
    "offset",
    "line",
)  # measured KL (nats/token) used for the line; outside it KL is noise or saturated
TARGETS = ("kld", "dnll")


@dataclass
class ProfileCalibration:
    """``ln(measured) = a + b ln(raw)`` with a leave-one-model-out conformal interval (see the module docstring)."""

    target: str = "kld"
    alpha: float = 0.1
    fit_range: tuple[float, float] = FIT_RANGE
    form: str = "line"  # "identity" (a=0, b=1), "offset" (b=1), "line" (a and b)
    #: True: the line reads raw x the profile's noise-probe factor (the model's own measured level), not raw
    probe: bool = False
    a_: float = float("nan")
    b_: float = float("nan")
    q_: float = float("nan")  # conformal half-width in ln units at level 1 - alpha
    lomo_abs_resid_: list[float] = field(default_factory=list)
    models_: list[str] = field(default_factory=list)
    n_runs_: int = 0
    raw_range_: tuple[float, float] = (float("nan"), float("nan"))
    lomo_: bool = True  # False: fitted on one model, interval from in-sample residuals

    def _rows(self, df: pd.DataFrame) -> pd.DataFrame:
        need = {"model", "raw", self.target} | ({"probe_factor"} if self.probe else set())
        missing = need - set(df.columns)
        if missing:
            raise LawError(f"calibration data lacks columns {sorted(missing)}; has {sorted(df.columns)}")
        lo, hi = self.fit_range
        d = df[(df[self.target] >= lo) & (df[self.target] <= hi) & (df["raw"] > 0)]
        d = d[np.isfinite(d["raw"]) & np.isfinite(d[self.target])]
        if self.probe:
            d = d[np.isfinite(d["probe_factor"]) & (d["probe_factor"] > 0)]
        return d

    def predictor(self, raw: Any, probe_factor: Any = None) -> np.ndarray:
        """What the line reads: ``raw``, or ``raw * probe_factor`` for a ``probe`` calibration."""
        r = np.asarray(raw, dtype=float)
        if not self.probe:
            return r
        if probe_factor is None:
            raise LawError(
                "this calibration reads the profile's noise probe (probe=True) and none was given; "
                "recompute the profile with its probe (qscale profile compute MODEL)"
            )
        return r * np.asarray(probe_factor, dtype=float)

    def _x(self, d: pd.DataFrame) -> np.ndarray:
        return np.log(self.predictor(d["raw"], d["probe_factor"] if self.probe else None))

    def _line(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        if self.form not in FORMS:
            raise LawError(f"unknown calibration form {self.form!r}; valid: {', '.join(FORMS)}")
        if self.form == "identity":
            return 0.0, 1.0
        if x.size < 1:
            raise LawError("no runs to fit the calibration on")
        if self.form == "offset":
            return float(np.mean(y - x)), 1.0
        if x.size < 2 or np.ptp(x) == 0:
            raise LawError(
                f"need at least 2 runs with distinct raw predictions to fit the line, got {x.size}"
            )
        b, a = np.polyfit(x, y, 1)
        return float(a), float(b)

    def fit(self, df: pd.DataFrame) -> ProfileCalibration:
        """Fit on ``df`` (columns model, raw, target). With one model only, the interval comes from its in-sample
        residuals (``lomo_`` False): there is no other model to hold out."""
        d = self._rows(df)
        x, y = self._x(d), np.log(d[self.target].to_numpy(float))
        self.a_, self.b_ = self._line(x, y)
        models = sorted(d["model"].unique())
        resid: list[float] = []
        if len(models) < 2:
            resid = np.abs(y - (self.a_ + self.b_ * x)).tolist()
            self.lomo_ = False
        else:
            self.lomo_ = True
            for m in models:
                tr, te = d[d["model"] != m], d[d["model"] == m]
                a, b = self._line(self._x(tr), np.log(tr[self.target].to_numpy(float)))
                pred = a + b * self._x(te)
                resid.extend(np.abs(np.log(te[self.target].to_numpy(float)) - pred).tolist())
        self.lomo_abs_resid_ = [float(r) for r in resid]
        self.q_ = _conformal_q(np.asarray(resid), self.alpha)
        self.models_ = [str(m) for m in models]
        self.n_runs_ = int(len(d))
        x = np.exp(self._x(d))
        self.raw_range_ = (float(x.min()), float(x.max()))
        return self

    def predict(self, raw: float | Sequence[float] | np.ndarray, probe_factor: Any = None) -> np.ndarray:
        """Calibrated value of a raw prediction (times ``probe_factor`` for a ``probe`` calibration)."""
        if not math.isfinite(self.a_):
            raise LawError("the calibration is not fitted")
        r = self.predictor(raw, probe_factor)
        with np.errstate(divide="ignore"):
            return np.exp(self.a_ + self.b_ * np.log(np.clip(r, 1e-300, None)))

    def interval(
        self, raw: float | Sequence[float] | np.ndarray, probe_factor: Any = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v = self.predict(raw, probe_factor)
        return v, v * math.exp(-self.q_), v * math.exp(self.q_)

    # --- artifact ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "profile-calibration"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProfileCalibration:
        if d.get("kind") != "profile-calibration":
            raise LawError(f"not a profile calibration artifact (kind {d.get('kind')!r})")
        kw = {k: v for k, v in d.items() if k != "kind"}
        for k in ("fit_range", "raw_range_"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ProfileCalibration:
        return cls.from_dict(json.loads(Path(path).read_text()))


def lomo_scores(
    df: pd.DataFrame,
    target: str = "kld",
    alpha: float = 0.1,
    fit_range=FIT_RANGE,
    score_range: tuple[float, float] = (1e-3, 3.0),
    form: str = "line",
    probe: bool = False,
) -> pd.DataFrame:
    """Per held-out model: the line fitted on the other models, scored on this model's runs with measured
    ``target`` in ``score_range``: Spearman, median |ln(pred/meas)|, coverage and median hi/lo of the interval
    (its half-width from the conformal quantile of the other models' leave-one-out residuals)."""
    from scipy.stats import spearmanr

    rows = []
    models = sorted(df["model"].unique())
    for m in models:
        train = df[df["model"] != m]
        try:
            cal = ProfileCalibration(
                target=target, alpha=alpha, fit_range=fit_range, form=form, probe=probe
            ).fit(train)
        except LawError as err:
            rows.append({"model": m, "error": str(err)})
            continue
        te = df[(df["model"] == m) & (df[target] >= score_range[0]) & (df[target] <= score_range[1])]
        te = te[te["raw"] > 0]
        if te.empty:
            continue
        v, lo, hi = cal.interval(
            te["raw"].to_numpy(float), te["probe_factor"].to_numpy(float) if probe else None
        )
        meas = te[target].to_numpy(float)
        ratio = np.log(v / meas)
        rows.append(
            {
                "model": m,
                "form": form,
                "probe": probe,
                "n": int(len(te)),
                "spearman": float(spearmanr(te["raw"], meas).statistic) if len(te) > 2 else float("nan"),
                "median_abs_ln_ratio": float(np.median(np.abs(ratio))),
                "median_ln_ratio": float(np.median(ratio)),
                "coverage": float(np.mean((meas >= lo) & (meas <= hi))),
                "median_hi_lo": float(np.median(hi / lo)),
                "raw_median_abs_ln_ratio": float(np.median(np.abs(np.log(te["raw"].to_numpy(float) / meas)))),
                "a": cal.a_,
                "b": cal.b_,
                "q": cal.q_,
            }
        )
    return pd.DataFrame(rows)


__all__ = ["FIT_RANGE", "FORMS", "TARGETS", "ProfileCalibration", "lomo_scores"]
