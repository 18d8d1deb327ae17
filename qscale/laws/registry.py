"""Named estimator presets for the two kinds of data (zoo runs, public tables), with good errors.

``make_estimator("ouyang", kind="zoo")`` returns an unfitted estimator with the feature columns of that data
kind; ``estimator_names(kind)`` lists what exists; a typo gets "did you mean ...?".
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from qscale.laws.estimators import (
    BoostingLaw,
    ForestLaw,
    GPLaw,
    KumarLaw,
    LawError,
    LawEstimator,
    LogLinearLaw,
    OLSLaw,
    OuyangLaw,
    SecondOrderLaw,
)

KINDS = ("zoo", "public")

#: Optional per-run measurements (landscape / outliers) used by the flexible models when present.
ZOO_OPTIONAL = (
    "trace_per_param",
    "top_eig",
    "qdir_pred_dloss",
    "weight_stats_kurtosis_max",
    "weight_stats_max_over_std_max",
    "float_nll",
)


@dataclass(frozen=True)
class DataKind:
    """Column roles for one kind of data: target, grouping columns for CV, N / D / bits columns."""

    name: str
    target: str
    bits: str
    n: str = "n_nonembed"
    d: str = "train_tokens"
    category: str = "fmt_family"
    target_scale: float = 1e-3


DATA_KINDS = {
    "zoo": DataKind("zoo", target="dnll", bits="bits_per_element", category="fmt_family"),
    "public": DataKind("public", target="log_ppl_ratio", bits="bpw", category="method"),
}


def _present(frame: pd.DataFrame | None, cols: tuple[str, ...]) -> list[str]:
    if frame is None:
        return []
    return [c for c in cols if c in frame.columns and frame[c].notna().any()]


def _extra(frame: pd.DataFrame | None, kind: DataKind) -> list[str]:
    if kind.name != "zoo":
        return []
    return _present(frame, ZOO_OPTIONAL)


Factory = Callable[[DataKind, "pd.DataFrame | None"], LawEstimator]


def _common(k: DataKind) -> dict:
    return {"target": k.target, "target_scale": k.target_scale}


_PRESETS: dict[str, tuple[str, Factory]] = {
    "bits-only": (
        "baseline: log damage linear in bits per weight",
        lambda k, f: LogLinearLaw(features=(k.bits,), **_common(k)),
    ),
    "sqnr-only": (
        "baseline: log damage linear in SQNR (dB)",
        lambda k, f: LogLinearLaw(features=("sqnr_db",), **_common(k)),
    ),
    "size-bits": (
        "log damage linear in log N and bits (+ format family / method)",
        lambda k, f: LogLinearLaw(features=(k.n, k.bits, k.category), **_common(k)),
    ),
    "ouyang-published": (
        "Ouyang et al. 2024 with the published Pythia/GPTQ constants (not refitted)",
        lambda k, f: OuyangLaw(features=(k.n, k.d, k.bits), use_published=True, **_common(k)),
    ),
    "ouyang": (
        "Ouyang et al. 2024 form k D^a / (N^b P^c), refitted",
        lambda k, f: OuyangLaw(features=(k.n, k.d, k.bits), **_common(k)),
    ),
    "kumar": (
        "Kumar et al. 2024 form C D^gD / N^gN exp(-P/g), refitted",
        lambda k, f: KumarLaw(features=(k.n, k.d, k.bits), **_common(k)),
    ),
    "second-order": (
        "qscale: c N^-b 10^(-d SQNR/10) (x curvature^a when measured)",
        lambda k, f: SecondOrderLaw(
            features=("sqnr_db", k.n, *_present(f, ("trace_per_param",))), **_common(k)
        ),
    ),
    "second-order-direct": (
        "qscale: the measured second-order change g.D + 1/2 D^T H D along Q(W) - W, calibrated (+ SQNR)",
        lambda k, f: LogLinearLaw(features=("qdir_pred_dloss", "sqnr_db"), **_common(k)),
    ),
    "ols": (
        "statsmodels OLS on asinh-log damage",
        lambda k, f: OLSLaw(
            features=(
                ("sqnr_db", k.n, k.bits, k.category, *_present(f, ("trace_per_param",)))
                if k.name == "zoo"
                else (k.n, k.bits, k.category)
            ),
            **_common(k),
        ),
    ),
    "forest": (
        "random forest (Xu et al. 2024 style), conformal intervals",
        lambda k, f: ForestLaw(features=_flex(k, f), **_common(k)),
    ),
    "boosting": (
        "gradient boosting, conformal intervals",
        lambda k, f: BoostingLaw(features=_flex(k, f), **_common(k)),
    ),
    "gp": (
        "Gaussian process, native predictive intervals",
        lambda k, f: GPLaw(features=_flex(k, f), **_common(k)),
    ),
}


def _flex(k: DataKind, frame: pd.DataFrame | None) -> tuple[str, ...]:
    if k.name == "zoo":
        base = ["sqnr_db", k.n, k.bits, "element_bits", k.category, *_present(frame, ("train_tokens",))]
        return tuple(dict.fromkeys(base + _extra(frame, k)))
    return (k.n, k.bits, k.category)


#: Estimators that need columns a kind of data does not have.
_NEEDS = {
    "sqnr-only": ("sqnr_db",),
    "second-order": ("sqnr_db",),
    "second-order-direct": ("qdir_pred_dloss", "sqnr_db"),
}


def estimator_names(kind: str | None = None) -> list[str]:
    """Preset names; with ``kind``, only those applicable to that data kind."""
    names = list(_PRESETS)
    if kind == "public":
        names = [n for n in names if "sqnr_db" not in _NEEDS.get(n, ())]
    return names


def describe(name: str) -> str:
    return _PRESETS[_check_name(name)][0]


def _check_name(name: str) -> str:
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, list(_PRESETS), n=1)
        hint = f" -- did you mean '{close[0]}'?" if close else ""
        raise LawError(f"unknown estimator '{name}'{hint}; choices: {', '.join(_PRESETS)}")
    return name


def data_kind(kind: str) -> DataKind:
    if kind not in DATA_KINDS:
        close = difflib.get_close_matches(kind, list(DATA_KINDS), n=1)
        hint = f" -- did you mean '{close[0]}'?" if close else ""
        raise LawError(f"unknown data kind '{kind}'{hint}; choices: {', '.join(DATA_KINDS)}")
    return DATA_KINDS[kind]


def make_estimator(
    name: str, kind: str = "zoo", frame: pd.DataFrame | None = None, target: str | None = None
) -> LawEstimator:
    """An unfitted estimator preset for a data kind; optional feature columns are taken from ``frame``;
    ``target`` overrides the kind's default target column."""
    _check_name(name)
    k = data_kind(kind)
    if target is not None:
        k = dataclasses.replace(k, target=target)
    if kind == "public" and name in _NEEDS:
        raise LawError(f"estimator '{name}' needs {_NEEDS[name]}, which public tables do not have")
    return _PRESETS[name][1](k, frame)


def parse_estimators(spec: str, kind: str) -> list[str]:
    """'all' or a comma list -> validated names ('all' = every preset applicable to ``kind``)."""
    if spec.strip() == "all":
        return estimator_names(kind)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise LawError(
            "no estimator given; use 'all' or a comma list of: " + ", ".join(estimator_names(kind))
        )
    for n in names:
        _check_name(n)
    return names
