"""Named estimator presets for the two kinds of data (zoo runs, public tables), with good errors.

``make_estimator("ouyang", kind="zoo")`` returns an unfitted estimator with the feature columns of that data
kind; ``estimator_names(kind)`` lists what exists; a typo gets "did you mean ...?".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from qscale.features import flex_columns
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
from qscale.registry import lookup

KINDS = ("zoo", "public")

#: Optional per-run measurements (landscape / outliers) used by the flexible models when present: the feature
#: registry's ``flex`` columns, in their order (:func:`qscale.features.flex_columns`).
ZOO_OPTIONAL = flex_columns()


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


def _common(k: DataKind) -> dict:
    return {"target": k.target, "target_scale": k.target_scale}


Params = Callable[[DataKind, "pd.DataFrame | None"], dict]


@dataclass(frozen=True)
class Preset:
    """A named estimator: its class, its parameters for a data kind (and the frame's optional columns), and the
    columns it needs that not every kind of data has."""

    description: str
    cls: type[LawEstimator]
    params: Params
    needs: tuple[str, ...] = ()  # columns public tables do not have (sqnr_db, qdir_pred_dloss)
    public_only: bool = False  # built on public-table columns (format capacity, group size)

    def make(self, k: DataKind, frame: pd.DataFrame | None) -> LawEstimator:
        return self.cls(**self.params(k, frame), **_common(k))


#: THE estimator registry: preset name -> :class:`Preset`. Artifacts name the class (:data:`ESTIMATOR_CLASSES`,
#: derived from this table); users name the preset.
PRESETS: dict[str, Preset] = {
    "bits-only": Preset(
        "baseline: log damage linear in bits per weight",
        LogLinearLaw,
        lambda k, f: {"features": (k.bits,)},
    ),
    "sqnr-only": Preset(
        "baseline: log damage linear in SQNR (dB)",
        LogLinearLaw,
        lambda k, f: {"features": ("sqnr_db",)},
        needs=("sqnr_db",),
    ),
    "size-bits": Preset(
        "log damage linear in log N and bits (+ format family / method)",
        LogLinearLaw,
        lambda k, f: {"features": (k.n, k.bits, k.category)},
    ),
    "ouyang-published": Preset(
        "Ouyang et al. 2024 with the published Pythia/GPTQ constants (not refitted)",
        OuyangLaw,
        lambda k, f: {"features": (k.n, k.d, k.bits), "use_published": True},
    ),
    "ouyang": Preset(
        "Ouyang et al. 2024 form k D^a / (N^b P^c), refitted",
        OuyangLaw,
        lambda k, f: {"features": (k.n, k.d, k.bits)},
    ),
    "kumar": Preset(
        "Kumar et al. 2024 form C D^gD / N^gN exp(-P/g), refitted",
        KumarLaw,
        lambda k, f: {"features": (k.n, k.d, k.bits)},
    ),
    "second-order": Preset(
        "qscale: c N^-b 10^(-d SQNR/10) (x curvature^a when measured)",
        SecondOrderLaw,
        lambda k, f: {"features": ("sqnr_db", k.n, *_present(f, ("trace_per_param",)))},
        needs=("sqnr_db",),
    ),
    "second-order-direct": Preset(
        "qscale: the measured second-order change g.D + 1/2 D^T H D along Q(W) - W, calibrated (+ SQNR)",
        LogLinearLaw,
        lambda k, f: {"features": ("qdir_pred_dloss", "sqnr_db")},
        needs=("qdir_pred_dloss", "sqnr_db"),
    ),
    "capacity-only": Preset(
        "baseline: log damage linear in the format's effective bits (SQNR/6.02 on Gaussian weights)",
        LogLinearLaw,
        lambda k, f: {"features": ("eff_bits_gauss",)},
        public_only=True,
    ),
    "rate-distortion": Preset(
        "damage ~ N^-a 4^(-P_eff) per method: log damage linear in log N and effective bits",
        LogLinearLaw,
        lambda k, f: {"features": (k.n, "eff_bits_gauss", k.category)},
        public_only=True,
    ),
    "rate-distortion-d": Preset(
        "rate-distortion with training tokens: N^-a D^b exp(-c P_eff) per method",
        LogLinearLaw,
        lambda k, f: {"features": (k.n, k.d, "eff_bits_gauss", k.category)},
        public_only=True,
    ),
    "chen": Preset(
        "Chen et al. 2025 (arXiv 2505.14302) k D^gD (log2 G)^gG / N^gN, with exp(-c P) for the bits",
        LogLinearLaw,
        lambda k, f: {"features": (k.n, k.d, k.bits, "log2_group")},
        public_only=True,
    ),
    "ols": Preset(
        "statsmodels OLS on asinh-log damage",
        OLSLaw,
        lambda k, f: {
            "features": (
                ("sqnr_db", k.n, k.bits, k.category, *_present(f, ("trace_per_param",)))
                if k.name == "zoo"
                else (k.n, k.bits, k.category)
            )
        },
    ),
    "forest": Preset(
        "random forest (Xu et al. 2024 style), conformal intervals",
        ForestLaw,
        lambda k, f: {"features": _flex(k, f)},
    ),
    "boosting": Preset(
        "gradient boosting, conformal intervals",
        BoostingLaw,
        lambda k, f: {"features": _flex(k, f)},
    ),
    "gp": Preset(
        "Gaussian process, native predictive intervals",
        GPLaw,
        lambda k, f: {"features": _flex(k, f)},
    ),
}

#: Estimator classes by their ``name`` (what an artifact records), derived from :data:`PRESETS`.
ESTIMATOR_CLASSES: dict[str, type[LawEstimator]] = {p.cls.name: p.cls for p in PRESETS.values()}


def _flex(k: DataKind, frame: pd.DataFrame | None) -> tuple[str, ...]:
    if k.name == "zoo":
        base = ["sqnr_db", k.n, k.bits, "element_bits", k.category, *_present(frame, ("train_tokens",))]
        return tuple(dict.fromkeys(base + _extra(frame, k)))
    # accuracy can only fall as far as the float model stands above chance: its accuracy is a feature
    extra = ("baseline_acc",) if k.target == "acc_drop" else ()
    return (k.n, "eff_bits_gauss", "eff_bits_t5", k.bits, k.category, *extra)


def estimator_names(kind: str | None = None) -> list[str]:
    """Preset names; with ``kind``, only those applicable to that data kind."""
    names = list(PRESETS)
    if kind == "public":
        names = [n for n in names if "sqnr_db" not in PRESETS[n].needs]
    elif kind == "zoo":
        names = [n for n in names if not PRESETS[n].public_only]
    return names


def describe(name: str) -> str:
    return _preset(name).description


def _preset(name: str) -> Preset:
    return lookup(PRESETS, name, what="estimator", error=LawError)


def data_kind(kind: str) -> DataKind:
    return lookup(DATA_KINDS, kind, what="data kind", error=LawError)


def make_estimator(
    name: str, kind: str = "zoo", frame: pd.DataFrame | None = None, target: str | None = None
) -> LawEstimator:
    """An unfitted estimator preset for a data kind; optional feature columns are taken from ``frame``;
    ``target`` overrides the kind's default target column."""
    preset = _preset(name)
    k = data_kind(kind)
    if target is not None:
        k = dataclasses.replace(k, target=target)
    if kind == "public":
        from qscale.laws.public import TARGETS

        if k.target in TARGETS:  # each public target has its own scale (accuracy points vs nats)
            k = dataclasses.replace(k, target_scale=TARGETS[k.target].scale)
    if kind == "public" and preset.needs:
        raise LawError(f"estimator '{name}' needs {preset.needs}, which public tables do not have")
    if kind == "zoo" and preset.public_only:
        raise LawError(f"estimator '{name}' needs public-table columns (format capacity, group size)")
    return preset.make(k, frame)


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
        _preset(n)
    return names
