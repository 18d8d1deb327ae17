"""Estimators for quantization-damage laws, all with one scikit-learn-style interface.

``fit(X, y=None, groups=None)`` (``y`` defaults to ``X[target]``) returns self; ``predict(X)`` returns a
``pd.Series``; ``predict_interval(X, alpha=0.1)`` returns a DataFrame with ``pred``, ``lo``, ``hi``.

**Target space.** Damage targets (dnll in nats, log ppl ratio) span four decades and can be slightly
negative for near-lossless formats (measurement noise), so every estimator works in
``z = asinh(y / s)`` with ``s = target_scale`` (default 1e-3 nats): ``z ~ log(2 y / s)`` for ``y >> s``
(a log fit, so power laws are linear) and ``z ~ y / s`` near zero. Example: y = 0.2 nats, s = 1e-3 ->
z = asinh(200) = 5.991; back-transform ``s * sinh(z)``.

**Intervals.** ``interval="conformal"`` (default): split-conformal on *grouped* out-of-fold residuals in z
space -- during ``fit`` the model is refitted on GroupKFold folds of the ``groups`` and the absolute
held-out residuals are kept; the (1 - alpha) interval is ``z_hat +- q`` with q the
ceil((n+1)(1-alpha))/n empirical quantile. ``interval="native"``: the model's own predictive interval
(parametric laws: delta method with the parameter covariance and residual variance, t quantiles; OLS:
statsmodels' observation interval; GP: predictive std incl. the fitted noise).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.model_selection import GroupKFold, KFold

from qscale.laws.features import feature_info

LN10 = math.log(10.0)


class LawError(ValueError):
    """Bad input to a law: missing feature columns, unknown estimator, unusable target."""


def to_z(y: np.ndarray, scale: float) -> np.ndarray:
    """asinh(y / scale): the target space every estimator fits in (see module docstring)."""
    return np.arcsinh(np.asarray(y, dtype=float) / scale)


def from_z(z: np.ndarray, scale: float) -> np.ndarray:
    """Inverse of :func:`to_z`: ``scale * sinh(z)``; beyond |z| ~ 710 that is +-inf, returned without an overflow
    warning (an interval bound that far out is unbounded, and says so)."""
    with np.errstate(over="ignore"):
        return scale * np.sinh(np.asarray(z, dtype=float))


def _conformal_q(abs_resid: np.ndarray, alpha: float) -> float:
    """Split-conformal quantile: the ceil((n+1)(1-alpha))-th smallest |residual| (inf if n too small)."""
    r = np.sort(np.asarray(abs_resid, dtype=float))
    n = r.size
    k = math.ceil((n + 1) * (1.0 - alpha))
    if n == 0 or k > n:
        return math.inf
    return float(r[k - 1])


class LawEstimator(RegressorMixin, BaseEstimator):
    """Base class: feature checks, target transform, domain bookkeeping and conformal calibration.

    Subclasses implement ``_fit_z(D, z)`` / ``_predict_z(D)`` on the transformed design frame ``D``
    (numeric features already log-transformed where their :class:`FeatureInfo` says so; categoricals kept
    as strings), and optionally ``_native_z(D, alpha) -> (z, lo, hi)``.
    """

    name: ClassVar[str] = "base"
    has_native: ClassVar[bool] = False
    storage: ClassVar[str] = "json"  # "json" or "skops" (see qscale.laws.artifacts)

    def __init__(
        self,
        features: Sequence[str] = (),
        target: str = "dnll",
        target_scale: float = 1e-3,
        interval: str = "conformal",
        calib_folds: int = 5,
    ) -> None:
        self.features = features
        self.target = target
        self.target_scale = target_scale
        self.interval = interval
        self.calib_folds = calib_folds

    # ----- input handling -------------------------------------------------------------------------
    def _check_columns(self, X: pd.DataFrame, features: Sequence[str]) -> None:
        if not isinstance(X, pd.DataFrame):
            raise LawError(f"{type(self).__name__} expects a pandas DataFrame, got {type(X).__name__}")
        missing = [f for f in features if f not in X.columns]
        if missing:
            raise LawError(
                f"law '{self.name}' needs feature column(s) {missing} which are missing; "
                f"available columns: {sorted(map(str, X.columns))}"
            )

    def _design(self, X: pd.DataFrame) -> pd.DataFrame:
        """Transformed feature frame (log for scale features); raises on non-positive log inputs."""
        out = {}
        for f in self.features_:
            info = self.feature_info_[f]
            if info["transform"] == "cat":
                out[f] = X[f].astype(str).to_numpy()
                continue
            v = pd.to_numeric(X[f], errors="coerce").to_numpy(dtype=float)
            if info["transform"] == "log":
                bad = ~(v > 0) & ~np.isnan(v)
                if bad.any():
                    raise LawError(
                        f"feature '{f}' must be > 0 for law '{self.name}' (log scale), got {v[bad][:3]}"
                    )
                v = np.log(v)
            out[f] = v
        return pd.DataFrame(out, index=X.index)

    def _valid_rows(self, X: pd.DataFrame) -> np.ndarray:
        ok = np.ones(len(X), dtype=bool)
        for f in self.features:
            col = X[f]
            ok &= col.notna().to_numpy()
        return ok

    # ----- fit / predict ----------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y: Sequence[float] | None = None, groups: Sequence[Any] | None = None):
        """Fit on the rows of ``X`` whose features are all present (others are counted in ``n_dropped_``)."""
        if self.interval not in ("conformal", "native"):
            raise LawError(f"interval must be 'conformal' or 'native', got {self.interval!r}")
        if self.interval == "native" and not self.has_native:
            raise LawError(f"law '{self.name}' has no native interval; use interval='conformal'")
        feats = list(self.features)
        if not feats:
            raise LawError(f"law '{self.name}' has no features")
        self._check_columns(X, feats)
        if y is None:
            self._check_columns(X, [self.target])
            y = X[self.target]
        y = np.asarray(pd.to_numeric(pd.Series(np.asarray(y)), errors="coerce"), dtype=float)
        ok = self._valid_rows(X) & np.isfinite(y)
        if ok.sum() < 3:
            raise LawError(f"law '{self.name}': only {int(ok.sum())} usable rows (features {feats})")
        Xo = X.loc[ok]
        yo = y[ok]
        g = None if groups is None else np.asarray(groups)[ok]
        self.features_ = feats
        self.feature_info_ = {}
        self.feature_ranges_ = {}
        self.categories_ = {}
        for f in feats:
            info = feature_info(f, X)
            self.feature_info_[f] = {"unit": info.unit, "transform": info.transform}
            if info.transform == "cat":
                self.categories_[f] = sorted(map(str, Xo[f].astype(str).unique()))
            else:
                v = pd.to_numeric(Xo[f], errors="coerce").astype(float)
                self.feature_ranges_[f] = [float(v.min()), float(v.max())]
        self.n_train_ = int(ok.sum())
        self.n_dropped_ = int((~ok).sum())
        z = to_z(yo, self.target_scale)
        D = self._design(Xo)
        self._fit_z(D, z)
        self.train_resid_std_ = float(np.std(z - self._predict_z(D)))
        if self.interval == "conformal":
            self._calibrate(Xo, yo, g)
        else:  # native intervals need no calibration folds
            self.calib_abs_resid_ = []
            self.calibration_ = "native"
        return self

    def _calibrate(self, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None) -> None:
        """Grouped out-of-fold absolute residuals (z space) for the conformal intervals."""
        z = to_z(y, self.target_scale)
        n_groups = 0 if groups is None else len(np.unique(groups))
        if n_groups >= 2:
            splitter = GroupKFold(n_splits=min(self.calib_folds, n_groups))
            splits = splitter.split(X, z, groups)
            self.calibration_ = f"grouped {min(self.calib_folds, n_groups)}-fold out-of-group residuals"
        elif len(z) >= 10:
            splits = KFold(n_splits=min(self.calib_folds, len(z)), shuffle=True, random_state=0).split(X)
            self.calibration_ = "row 5-fold out-of-fold residuals (no groups given)"
        else:
            self.calib_abs_resid_ = np.abs(z - self._predict_z(self._design(X))).tolist()
            self.calibration_ = "in-sample residuals (too few rows)"
            return
        resid = []
        for tr, te in splits:
            sub = clone(self).set_params(interval="conformal")
            try:
                sub._fit_only(X.iloc[tr], y[tr])
            except (LawError, np.linalg.LinAlgError, ValueError):
                continue
            resid.append(np.abs(z[te] - sub._predict_z(sub._design(X.iloc[te]))))
        self.calib_abs_resid_ = np.sort(np.concatenate(resid)).tolist() if resid else []

    def _fit_only(self, X: pd.DataFrame, y: np.ndarray) -> LawEstimator:
        """Fit without calibration (used for the calibration folds)."""
        self.features_ = list(self.features)
        self.feature_info_ = {}
        self.categories_ = {}
        self.feature_ranges_ = {}
        for f in self.features_:
            info = feature_info(f, X)
            self.feature_info_[f] = {"unit": info.unit, "transform": info.transform}
            if info.transform == "cat":
                self.categories_[f] = sorted(map(str, X[f].astype(str).unique()))
        self._fit_z(self._design(X), to_z(y, self.target_scale))
        return self

    def _prep(self, X: pd.DataFrame) -> pd.DataFrame:
        if not hasattr(self, "features_"):
            raise LawError(f"law '{self.name}' is not fitted; call fit() first")
        self._check_columns(X, self.features_)
        nan = [f for f in self.features_ if X[f].isna().any()]
        if nan:
            raise LawError(f"law '{self.name}': feature(s) {nan} have missing values in the rows to predict")
        return self._design(X)

    def predict_z(self, X: pd.DataFrame) -> np.ndarray:
        """Prediction in the transformed target space z = asinh(y / target_scale)."""
        return np.asarray(self._predict_z(self._prep(X)), dtype=float)

    def predict(self, X: pd.DataFrame) -> pd.Series:
        """Predicted target (same units as the target, e.g. nats for dnll)."""
        return pd.Series(from_z(self.predict_z(X), self.target_scale), index=X.index, name=self.target)

    def predict_interval(self, X: pd.DataFrame, alpha: float = 0.1) -> pd.DataFrame:
        """Central prediction and a (1 - alpha) interval: DataFrame with pred, lo, hi (target units)."""
        if not 0.0 < alpha < 1.0:
            raise LawError(f"alpha must be in (0, 1), got {alpha}")
        D = self._prep(X)
        if self.interval == "native":
            z, lo, hi = self._native_z(D, alpha)
        else:
            z = np.asarray(self._predict_z(D), dtype=float)
            q = _conformal_q(np.asarray(self.calib_abs_resid_), alpha)
            lo, hi = z - q, z + q
        s = self.target_scale
        return pd.DataFrame({"pred": from_z(z, s), "lo": from_z(lo, s), "hi": from_z(hi, s)}, index=X.index)

    def domain_warnings(self, X: pd.DataFrame, factor: float = 100.0) -> list[str]:
        """Warnings for inputs outside the training domain (unseen categories, values beyond the range;
        for log-scale features, 'far' means more than ``factor`` times beyond the range)."""
        msgs = []
        for f, (lo, hi) in self.feature_ranges_.items():
            if f not in X.columns:
                continue
            v = pd.to_numeric(X[f], errors="coerce").to_numpy(dtype=float)
            for x in np.unique(v[np.isfinite(v)]):
                if lo <= x <= hi:
                    continue
                far = ""
                if self.feature_info_[f]["transform"] == "log" and x > 0 and lo > 0:
                    ratio = max(x / hi, lo / x)
                    if ratio > factor:
                        far = f" -- {ratio:.0f}x beyond it, an extrapolation the law cannot support"
                msgs.append(f"{f}={x:g} is outside the training range [{lo:g}, {hi:g}]{far}")
        for f, cats in self.categories_.items():
            if f not in X.columns:
                continue
            for c in sorted(set(X[f].astype(str)) - set(cats)):
                msgs.append(f"{f}={c!r} was not seen in training (seen: {cats})")
        return msgs

    # ----- for artifacts ---------------------------------------------------------------------------
    def get_state(self) -> dict:
        """JSON-safe fitted state (subclasses add their parameters)."""
        return {
            "features_": self.features_,
            "feature_info_": self.feature_info_,
            "feature_ranges_": self.feature_ranges_,
            "categories_": self.categories_,
            "n_train_": self.n_train_,
            "n_dropped_": self.n_dropped_,
            "train_resid_std_": self.train_resid_std_,
            "calib_abs_resid_": list(self.calib_abs_resid_),
            "calibration_": self.calibration_,
        }

    def set_state(self, state: dict) -> LawEstimator:
        for k, v in state.items():
            setattr(self, k, v)
        return self

    def summary(self) -> pd.DataFrame:
        """Parameter table (name, estimate, stderr, ci_lo, ci_hi); empty for non-parametric models."""
        return pd.DataFrame(columns=["param", "estimate", "stderr", "ci_lo", "ci_hi"])

    # ----- to implement -----------------------------------------------------------------------------
    def _fit_z(self, D: pd.DataFrame, z: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict_z(self, D: pd.DataFrame) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _native_z(self, D: pd.DataFrame, alpha: float):  # pragma: no cover - abstract
        raise NotImplementedError


# ==================================================================================================
# Parametric laws: log f = B(X) @ theta, fitted by nonlinear least squares in z space
# ==================================================================================================
class ParametricLaw(LawEstimator):
    """A law that is log-linear in its parameters: ``y_hat = exp(B(X) @ theta)``.

    Fitted with ``scipy.optimize.least_squares`` on ``asinh(y_hat / s) - z`` (nonlinear in theta), started
    from ordinary least squares of log(y) on the positive rows. The parameter covariance is
    ``inv(J'J) * RSS / (n - p)``; :meth:`summary` reports the law's *named constants* (e.g. Ouyang's k, a,
    b, c) with delta-method standard errors.
    """

    has_native: ClassVar[bool] = True
    param_names: ClassVar[tuple[str, ...]] = ()
    published: ClassVar[tuple[float, ...] | None] = None

    def __init__(
        self,
        features: Sequence[str] = (),
        target: str = "dnll",
        target_scale: float = 1e-3,
        interval: str = "conformal",
        calib_folds: int = 5,
        use_published: bool = False,
    ) -> None:
        super().__init__(features, target, target_scale, interval, calib_folds)
        self.use_published = use_published

    def basis(self, D: pd.DataFrame) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def constants(self, theta: np.ndarray) -> dict[str, float]:
        """Named constants of the law from theta (default: theta itself)."""
        return dict(zip(self.param_names, map(float, theta), strict=True))

    def _zhat(self, theta: np.ndarray, B: np.ndarray) -> np.ndarray:
        logf = np.clip(B @ theta, -700, 700)
        return np.arcsinh(np.exp(logf) / self.target_scale)

    def _jac(self, theta: np.ndarray, B: np.ndarray) -> np.ndarray:
        u = np.exp(np.clip(B @ theta, -700, 700)) / self.target_scale
        return (u / np.sqrt(1.0 + u * u))[:, None] * B

    def _fit_z(self, D: pd.DataFrame, z: np.ndarray) -> None:
        from scipy.optimize import least_squares

        B = self.basis(D)
        n, p = B.shape
        if not self.use_published and np.linalg.matrix_rank(B) < p:
            const = [
                f for f in self.features_ if self.feature_info_[f]["transform"] != "cat" and np.ptp(D[f]) == 0
            ]
            why = f"feature(s) {const} are constant in the data" if const else "its basis is rank-deficient"
            raise LawError(f"law '{self.name}' is not identifiable here: {why}")
        if self.use_published:
            if self.published is None:
                raise LawError(f"law '{self.name}' has no published constants")
            self.theta_ = np.asarray(self.published, dtype=float)
            self.cov_ = np.zeros((p, p))
            resid = z - self._zhat(self.theta_, B)
            self.dof_ = max(n, 1)
            self.sigma2_ = float(resid @ resid / self.dof_)
            return
        y = from_z(z, self.target_scale)
        pos = y > 0
        theta0 = np.zeros(p)
        if pos.sum() > p:
            theta0, *_ = np.linalg.lstsq(B[pos], np.log(y[pos]), rcond=None)
        res = least_squares(
            lambda t: self._zhat(t, B) - z, theta0, jac=lambda t: self._jac(t, B), method="lm", max_nfev=5000
        )
        self.theta_ = res.x
        J = self._jac(self.theta_, B)
        self.dof_ = max(n - p, 1)
        self.sigma2_ = float(2.0 * res.cost / self.dof_)
        try:
            self.cov_ = np.linalg.pinv(J.T @ J) * self.sigma2_
        except np.linalg.LinAlgError:
            self.cov_ = np.full((p, p), np.nan)

    def _predict_z(self, D: pd.DataFrame) -> np.ndarray:
        return self._zhat(np.asarray(self.theta_), self.basis(D))

    def _native_z(self, D: pd.DataFrame, alpha: float):
        B = self.basis(D)
        theta = np.asarray(self.theta_)
        z = self._zhat(theta, B)
        G = self._jac(theta, B)
        var = self.sigma2_ + np.einsum("ij,jk,ik->i", G, np.ascontiguousarray(self.cov_, dtype=float), G)
        t = stats.t.ppf(1 - alpha / 2, self.dof_)
        half = t * np.sqrt(var)
        return z, z - half, z + half

    def theta_stderr(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(np.asarray(self.cov_)), 0, None))

    def summary(self, alpha: float = 0.05) -> pd.DataFrame:
        """Named constants with delta-method stderr and normal (1 - alpha) CIs."""
        theta = np.asarray(self.theta_, dtype=float)
        cov = np.asarray(self.cov_, dtype=float)
        names = list(self.constants(theta))
        vals = np.array(list(self.constants(theta).values()))
        eps = 1e-6
        J = np.zeros((len(vals), len(theta)))
        for j in range(len(theta)):
            d = np.zeros_like(theta)
            d[j] = eps * max(1.0, abs(theta[j]))
            J[:, j] = (np.array(list(self.constants(theta + d).values())) - vals) / d[j]
        se = np.sqrt(np.clip(np.diag(J @ cov @ J.T), 0, None))
        zq = stats.norm.ppf(1 - alpha / 2)
        return pd.DataFrame(
            {"param": names, "estimate": vals, "stderr": se, "ci_lo": vals - zq * se, "ci_hi": vals + zq * se}
        )

    def get_state(self) -> dict:
        state = super().get_state()
        state.update(
            theta_=list(map(float, self.theta_)),
            cov_=np.asarray(self.cov_, dtype=float).tolist(),
            sigma2_=self.sigma2_,
            dof_=self.dof_,
        )
        return state

    def set_state(self, state: dict) -> ParametricLaw:
        super().set_state(state)
        self.theta_ = np.asarray(self.theta_, dtype=float)
        self.cov_ = np.asarray(self.cov_, dtype=float)
        return self


class LogLinearLaw(ParametricLaw):
    """``log y = c0 + sum_j c_j * g_j(x_j)`` with g = log for scale features, identity otherwise.

    With one feature this is a naive baseline: ``bits-only`` (y = exp(c0 + c1 * bits), i.e. damage falls by
    a constant factor per extra bit) or ``sqnr-only`` (y = exp(c0 + c1 * SQNR_dB); c1 = -ln10/10 = -0.2303
    would mean damage proportional to noise power). Categorical features are one-hot (first level dropped).
    """

    name: ClassVar[str] = "loglinear"

    def _columns(self) -> list[str]:
        cols = ["intercept"]
        for f in self.features_:
            if self.feature_info_[f]["transform"] == "cat":
                cols += [f"{f}[{c}]" for c in self.categories_[f][1:]]
            else:
                cols.append(f"log({f})" if self.feature_info_[f]["transform"] == "log" else f)
        return cols

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self._columns())

    def basis(self, D: pd.DataFrame) -> np.ndarray:
        cols = [np.ones(len(D))]
        for f in self.features_:
            if self.feature_info_[f]["transform"] == "cat":
                v = D[f].to_numpy()
                cols += [(v == c).astype(float) for c in self.categories_[f][1:]]
            else:
                cols.append(D[f].to_numpy(dtype=float))
        return np.column_stack(cols)


class OuyangLaw(ParametricLaw):
    """Ouyang et al. 2024: ``dLoss = k * D^a / (N^b * P^c)`` (N non-embedding params, D training tokens,
    P bits). Published Pythia/GPTQ constants: k=0.017, a=0.5251, b=0.2261, c=5.4967 (``use_published``).
    Worked number: N=6.48e9, D=2e12, P=4 -> 0.017 * 2.87e6 / (165 * 2040) = 0.145 nats.

    features: (N column, D column, P column), e.g. ("n_nonembed", "train_tokens", "bits_per_element").
    theta = [log k, a, b, c] on basis [1, log D, -log N, -log P].
    """

    name: ClassVar[str] = "ouyang"
    param_names: ClassVar[tuple[str, ...]] = ("k", "a", "b", "c")
    published: ClassVar[tuple[float, ...]] = (math.log(0.017), 0.5251, 0.2261, 5.4967)

    def basis(self, D: pd.DataFrame) -> np.ndarray:
        n_col, d_col, p_col = self.features_
        p = D[p_col].to_numpy(dtype=float)
        if self.feature_info_[p_col]["transform"] != "log":
            p = np.log(np.clip(p, 1e-9, None))
        return np.column_stack([np.ones(len(D)), D[d_col].to_numpy(float), -D[n_col].to_numpy(float), -p])

    def constants(self, theta: np.ndarray) -> dict[str, float]:
        return {
            "k": float(np.exp(theta[0])),
            "a": float(theta[1]),
            "b": float(theta[2]),
            "c": float(theta[3]),
        }


class KumarLaw(ParametricLaw):
    """Kumar et al. 2024 post-training degradation: ``delta = C * D^gD / N^gN * exp(-P / g)``.

    features: (N column, D column, P column). theta = [log C, gD, gN, 1/g] on basis [1, log D, -log N, -P];
    reported constants C, gamma_D, gamma_N, gamma_post = g.
    """

    name: ClassVar[str] = "kumar"
    param_names: ClassVar[tuple[str, ...]] = ("C", "gamma_D", "gamma_N", "gamma_post")

    def basis(self, D: pd.DataFrame) -> np.ndarray:
        n_col, d_col, p_col = self.features_
        return np.column_stack(
            [np.ones(len(D)), D[d_col].to_numpy(float), -D[n_col].to_numpy(float), -D[p_col].to_numpy(float)]
        )

    def constants(self, theta: np.ndarray) -> dict[str, float]:
        inv_g = float(theta[3])
        return {
            "C": float(np.exp(theta[0])),
            "gamma_D": float(theta[1]),
            "gamma_N": float(theta[2]),
            "gamma_post": 1.0 / inv_g if inv_g != 0 else math.inf,
        }


class SecondOrderLaw(ParametricLaw):
    """qscale's second-order form: ``dnll = c * N^-b * 10^(-d * SQNR/10) * prod_j x_j^a_j``.

    A second-order Taylor expansion gives dnll ~ 1/2 * tr(H) * sigma_q^2 per parameter and
    sigma_q^2 = sigma_w^2 * 10^(-SQNR/10), so d = 1 and the curvature exponent a = 1 are the ideal values.
    features: ("sqnr_db", "n_nonembed", *optional curvature features, e.g. "trace_per_param").
    theta = [log c, b, d, a_1, ...] on basis [1, -log N, -SQNR * ln10/10, log x_1, ...].
    """

    name: ClassVar[str] = "second-order"

    def basis(self, D: pd.DataFrame) -> np.ndarray:
        s_col, n_col, *extra = self.features_
        cols = [np.ones(len(D)), -D[n_col].to_numpy(float), -D[s_col].to_numpy(float) * LN10 / 10.0]
        cols += [D[c].to_numpy(float) for c in extra]
        return np.column_stack(cols)

    def constants(self, theta: np.ndarray) -> dict[str, float]:
        out = {"c": float(np.exp(theta[0])), "b": float(theta[1]), "d": float(theta[2])}
        for name, t in zip(self.features_[2:], theta[3:], strict=True):
            out[f"a[{name}]"] = float(t)
        return out


# ==================================================================================================
# statsmodels formula regression
# ==================================================================================================
class OLSLaw(LawEstimator):
    """statsmodels OLS/WLS formula regression of z = asinh(y/s) (~ log(2y/s)) on the features.

    The formula's right-hand side defaults to the features: ``np.log(f)`` for scale features, ``C(f)``
    for categoricals, ``f`` otherwise, e.g. ``z ~ sqnr_db + np.log(n_nonembed) + C(fmt_family)``.
    ``weights`` (a column name) turns it into WLS. The observation interval equals
    ``get_prediction(X).summary_frame(obs=True)`` (tested); it is computed from the stored parameters,
    covariance and residual scale so a loaded law predicts identically without statsmodels objects.
    """

    name: ClassVar[str] = "ols"
    has_native: ClassVar[bool] = True

    def __init__(
        self,
        features: Sequence[str] = (),
        target: str = "dnll",
        target_scale: float = 1e-3,
        interval: str = "native",
        calib_folds: int = 5,
        formula: str | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__(features, target, target_scale, interval, calib_folds)
        self.formula = formula
        self.weights = weights

    def fit(self, X: pd.DataFrame, y=None, groups=None):
        """As :meth:`LawEstimator.fit`; with ``weights`` the column of that name gives the WLS weights
        (intervals are then for a new observation of weight 1)."""
        self._take_weights(X)
        return super().fit(X, y, groups)

    def _fit_only(self, X: pd.DataFrame, y: np.ndarray) -> LawEstimator:
        self._take_weights(X)
        return super()._fit_only(X, y)

    def _take_weights(self, X: pd.DataFrame) -> None:
        if self.weights:
            self._check_columns(X, [self.weights])
            self._weight_col = X[self.weights]

    def rhs(self) -> str:
        if self.formula:
            return self.formula.split("~", 1)[-1].strip()
        terms = []
        for f in self.features_:
            t = self.feature_info_[f]["transform"]
            terms.append(f"C({f})" if t == "cat" else f"np.log({f})" if t == "log" else f)
        return " + ".join(terms)

    def _raw(self, D: pd.DataFrame) -> pd.DataFrame:
        """Undo the log transform: the formula applies np.log itself."""
        out = D.copy()
        for f in self.features_:
            if self.feature_info_[f]["transform"] == "log":
                out[f] = np.exp(out[f].to_numpy(float))
        return out

    def _design_info(self):
        import patsy

        ref = pd.DataFrame(self.ref_frame_)
        return patsy.dmatrix(self.rhs(), ref, return_type="dataframe").design_info

    def _fit_z(self, D: pd.DataFrame, z: np.ndarray) -> None:
        import statsmodels.formula.api as smf

        data = self._raw(D).assign(_z=z)
        formula = f"_z ~ {self.rhs()}"
        if self.weights:
            w = pd.to_numeric(self._weight_col.loc[D.index], errors="coerce").to_numpy(float)
            if not np.all(np.isfinite(w) & (w > 0)):
                raise LawError(f"WLS weights column '{self.weights}' must be finite and > 0")
            self.results_ = smf.wls(formula, data, weights=w).fit()
        else:
            self.results_ = smf.ols(formula, data).fit()
        self.params_ = self.results_.params.to_numpy(dtype=float)
        self.param_index_ = list(self.results_.params.index)
        self.cov_ = self.results_.cov_params().to_numpy(dtype=float)
        self.scale_ = float(self.results_.scale)
        self.df_resid_ = float(self.results_.df_resid)
        ref = self._raw(D).iloc[: max(1, len(D))]
        # minimal reference frame for rebuilding the design: one row per categorical level + the first row
        keep = {0}
        for f in self.categories_:
            for c in self.categories_[f]:
                keep.add(int(np.flatnonzero(ref[f].to_numpy() == c)[0]))
        self.ref_frame_ = ref.iloc[sorted(keep)].reset_index(drop=True).to_dict(orient="list")

    def _X(self, D: pd.DataFrame) -> np.ndarray:
        import patsy

        raw = self._raw(D)
        for f, cats in self.categories_.items():
            # a level unseen in training gets the reference level's (zero) effect, as in the other
            # one-hot laws; domain_warnings() reports it
            v = raw[f].astype(str)
            raw[f] = v.where(v.isin(cats), cats[0])
        (X,) = patsy.build_design_matrices([self._design_info()], raw, return_type="matrix")
        return np.asarray(X, dtype=float)

    def _predict_z(self, D: pd.DataFrame) -> np.ndarray:
        return self._X(D) @ np.asarray(self.params_)

    def _native_z(self, D: pd.DataFrame, alpha: float):
        X = self._X(D)
        z = X @ np.asarray(self.params_)
        var = self.scale_ + np.einsum("ij,jk,ik->i", X, np.ascontiguousarray(self.cov_, dtype=float), X)
        half = stats.t.ppf(1 - alpha / 2, self.df_resid_) * np.sqrt(var)
        return z, z - half, z + half

    def summary(self, alpha: float = 0.05) -> pd.DataFrame:
        se = np.sqrt(np.diag(np.asarray(self.cov_)))
        t = stats.t.ppf(1 - alpha / 2, self.df_resid_)
        p = np.asarray(self.params_)
        return pd.DataFrame(
            {
                "param": self.param_index_,
                "estimate": p,
                "stderr": se,
                "ci_lo": p - t * se,
                "ci_hi": p + t * se,
            }
        )

    def get_state(self) -> dict:
        state = super().get_state()
        state.update(
            params_=list(map(float, self.params_)),
            param_index_=self.param_index_,
            cov_=np.asarray(self.cov_).tolist(),
            scale_=self.scale_,
            df_resid_=self.df_resid_,
            ref_frame_={
                k: [x if isinstance(x, str) else float(x) for x in v] for k, v in self.ref_frame_.items()
            },
        )
        return state


# ==================================================================================================
# scikit-learn models (stored with skops)
# ==================================================================================================
class _SklearnLaw(LawEstimator):
    """Shared one-hot + (optional) standardisation for scikit-learn regressors on z."""

    storage: ClassVar[str] = "skops"
    standardize: ClassVar[bool] = False

    def _matrix(self, D: pd.DataFrame, scaled: bool = True) -> np.ndarray:
        cols = []
        for f in self.features_:
            if self.feature_info_[f]["transform"] == "cat":
                v = D[f].to_numpy()
                cols += [(v == c).astype(float) for c in self.categories_[f]]
            else:
                cols.append(D[f].to_numpy(dtype=float))
        M = np.column_stack(cols)
        if self.standardize and scaled:
            M = (M - np.asarray(self.x_mean_)) / np.asarray(self.x_std_)
        return M

    def make_model(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit_z(self, D: pd.DataFrame, z: np.ndarray) -> None:
        if self.standardize:
            M = self._matrix(D, scaled=False)
            sd = M.std(axis=0)
            self.x_mean_ = M.mean(axis=0).tolist()
            self.x_std_ = np.where(sd > 0, sd, 1.0).tolist()
        self.model_ = self.make_model().fit(self._matrix(D), z)

    def _predict_z(self, D: pd.DataFrame) -> np.ndarray:
        return self.model_.predict(self._matrix(D))

    def get_state(self) -> dict:
        state = super().get_state()
        if self.standardize:
            state.update(x_mean_=list(self.x_mean_), x_std_=list(self.x_std_))
        return state


class ForestLaw(_SklearnLaw):
    """Random forest on z (Xu et al. 2024 use random forests to predict quantized-LLM quality)."""

    name: ClassVar[str] = "forest"

    def __init__(
        self,
        features: Sequence[str] = (),
        target: str = "dnll",
        target_scale: float = 1e-3,
        interval: str = "conformal",
        calib_folds: int = 5,
        n_estimators: int = 100,
        min_samples_leaf: int = 2,
        random_state: int = 0,
    ) -> None:
        super().__init__(features, target, target_scale, interval, calib_folds)
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def make_model(self):
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            random_state=self.random_state,
            n_jobs=1,
        )


class BoostingLaw(_SklearnLaw):
    """Gradient-boosted trees on z."""

    name: ClassVar[str] = "boosting"

    def __init__(
        self,
        features: Sequence[str] = (),
        target: str = "dnll",
        target_scale: float = 1e-3,
        interval: str = "conformal",
        calib_folds: int = 5,
        n_estimators: int = 200,
        max_depth: int = 3,
        learning_rate: float = 0.05,
        random_state: int = 0,
    ) -> None:
        super().__init__(features, target, target_scale, interval, calib_folds)
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.random_state = random_state

    def make_model(self):
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=1.0,
            random_state=self.random_state,
        )


class GPLaw(_SklearnLaw):
    """Gaussian process (constant * ARD RBF + white noise) on standardised features; native intervals
    from the predictive std, which includes the fitted noise level."""

    name: ClassVar[str] = "gp"
    has_native: ClassVar[bool] = True
    standardize: ClassVar[bool] = True
    max_ard_dims: ClassVar[int] = 5

    def __init__(
        self,
        features: Sequence[str] = (),
        target: str = "dnll",
        target_scale: float = 1e-3,
        interval: str = "native",
        calib_folds: int = 5,
        random_state: int = 0,
    ) -> None:
        super().__init__(features, target, target_scale, interval, calib_folds)
        self.random_state = random_state

    def make_model(self):
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        n = len(self.x_mean_)
        # ARD length scales for a few columns; one shared length scale beyond that (ARD over a dozen
        # one-hot columns costs ~20x the optimizer time for little gain)
        ls = np.ones(n) if n <= self.max_ard_dims else 1.0
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(ls, (1e-2, 1e3)) + WhiteKernel(0.1, (1e-6, 1e1))
        return GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=self.random_state)

    def _fit_z(self, D: pd.DataFrame, z: np.ndarray) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at kernel bounds is routine here
            super()._fit_z(D, z)

    def _native_z(self, D: pd.DataFrame, alpha: float):
        mu, sd = self.model_.predict(self._matrix(D), return_std=True)
        half = stats.norm.ppf(1 - alpha / 2) * sd
        return mu, mu - half, mu + half
