"""Feature tables for the laws: the known features (units, transforms) and the zoo-run table.

A law's design matrix is built from named columns. Each known feature has a unit and a transform:
``log`` for scale-like quantities (parameters, tokens, curvature), ``none`` for already-logarithmic or small
ranged ones (bits, dB), ``cat`` for categories (one-hot). Columns not listed here are accepted when numeric
(unit "?", no transform) so landscape/outlier features added later by the measurement layer can be used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FeatureInfo:
    """How a feature enters a law: ``transform`` is 'log', 'none' or 'cat'."""

    name: str
    unit: str
    transform: str
    description: str = ""


_KNOWN = (
    FeatureInfo("n_nonembed", "parameters", "log", "non-embedding parameter count N"),
    FeatureInfo("n_params", "parameters", "log", "total parameter count"),
    FeatureInfo("params_b", "billions of parameters (nominal)", "log", "nominal size from the model name"),
    FeatureInfo("train_tokens", "tokens", "log", "pre-training tokens D"),
    FeatureInfo("float_nll", "nats/token", "none", "NLL of the unquantized model"),
    FeatureInfo("bits_per_element", "bits", "none", "storage bits per weight incl. scale overhead"),
    FeatureInfo("element_bits", "bits", "none", "bits of one element, no scale overhead"),
    FeatureInfo("bits", "bits", "none", "nominal weight bit width (public tables)"),
    FeatureInfo("bpw", "bits", "none", "bits per weight incl. scale overhead (public tables)"),
    FeatureInfo("group_size", "elements", "log", "quantization group size"),
    FeatureInfo("log2_group", "bits", "log", "log2 of the group size (Chen et al. 2025; per-channel = 12)"),
    FeatureInfo("eff_bits_gauss", "bits", "none", "format capacity: SQNR/6.02 on Gaussian weights"),
    FeatureInfo("eff_bits_t5", "bits", "none", "format capacity: SQNR/6.02 on Student-t5 weights"),
    FeatureInfo("baseline_acc", "accuracy points", "none", "accuracy of the unquantized model"),
    FeatureInfo("sqnr_db", "dB", "none", "weight signal-to-quantization-noise ratio, 10 log10(S/N)"),
    FeatureInfo("fmt_family", "category", "cat", "int | fp | mx | lut"),
    FeatureInfo("method", "category", "cat", "quantization algorithm (rtn, gptq, ...)"),
    FeatureInfo("hessian_trace", "nats/token/param^2", "log", "Hutchinson trace of the loss Hessian"),
    FeatureInfo("trace_per_param", "nats/token/param^2", "log", "Hessian trace / parameters"),
    FeatureInfo("top_eig", "nats/token/param^2", "log", "largest Hessian eigenvalue"),
    FeatureInfo("qdir_pred_dloss", "nats/token", "none", "second-order loss change along Q(W) - W"),
    FeatureInfo("weight_stats_kurtosis_max", "1", "log", "max over layers of the weight kurtosis"),
    FeatureInfo("weight_stats_max_over_std_max", "1", "log", "max over layers of max|w| / std(w)"),
)

FEATURES: dict[str, FeatureInfo] = {f.name: f for f in _KNOWN}


def feature_info(name: str, frame: pd.DataFrame | None = None) -> FeatureInfo:
    """The :class:`FeatureInfo` of ``name``; an unknown column is numeric, unit '?', or 'cat' if non-numeric."""
    if name in FEATURES:
        return FEATURES[name]
    if frame is not None and name in frame.columns and not pd.api.types.is_numeric_dtype(frame[name]):
        return FeatureInfo(name, "category", "cat")
    return FeatureInfo(name, "?", "none")


#: Columns of the zoo law table (from the run store frame); landscape/outlier columns are kept when present.
ZOO_BASE_COLUMNS = (
    "model",
    "family",
    "format",
    "method",
    "n_params",
    "n_nonembed",
    "train_tokens",
    "float_nll",
    "bits_per_element",
    "element_bits",
    "fmt_family",
    "sqnr_db",
)

_NOT_FEATURES = {
    "nll",
    "dnll",
    "ppl",
    "float_ppl",
    "bpb",
    "kld",
    "top1",
    "status",
    "run_key",
}


#: Damage measures of a run besides dnll that a zoo law may be fitted to (``qscale fit --target kld``).
ALT_TARGETS = ("kld", "top1")


def zoo_table(frame: pd.DataFrame, ok_status: str = "ok") -> pd.DataFrame:
    """The law-fitting table from ``RunStore(path).to_frame()``: finished runs with a finite ``dnll``.

    Keeps the base columns, every other numeric feature column (landscape/outlier measurements), and the
    target ``dnll``; adds ``group`` (= family) and ``size`` (rank of N within the family) for grouped CV.
    """
    needed = ["model", "family", "format", "dnll", "n_nonembed", "bits_per_element"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        from qscale.laws.estimators import LawError

        raise LawError(
            f"not a run table: it lacks columns {missing}; expected the columns of RunStore.to_frame() / "
            f"`qscale runs export` (docs/interfaces.md), got {sorted(frame.columns)}"
        )
    df = frame
    if "status" in df.columns:
        df = df[df["status"].astype(str) == ok_status]
    df = df[np.isfinite(pd.to_numeric(df["dnll"], errors="coerce"))]
    keep = [c for c in ZOO_BASE_COLUMNS if c in df.columns]
    extra = [
        c
        for c in df.columns
        if c not in keep and c not in _NOT_FEATURES and c != "dnll" and pd.api.types.is_numeric_dtype(df[c])
    ]
    # other damage measures stay in the table as alternative targets (--target kld), never as features
    targets = ["dnll", *[c for c in ALT_TARGETS if c in df.columns]]
    out = df[keep + extra + targets].copy()
    for col in ("n_params", "n_nonembed", "train_tokens", "float_nll", "bits_per_element", "sqnr_db"):
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    out["group"] = out["family"].astype(str)
    # size = rank of the model's N within its family (1 = smallest): leave-one-size-out then holds out
    # e.g. every family's largest model at once ("extrapolate to the largest model")
    out["size"] = out.groupby("family")["n_nonembed"].rank(method="dense").astype(int)
    return out.reset_index(drop=True)
