"""qscale.measure: nll / ppl / bits-per-byte / kld / top-1 agreement, sqnr, loss landscape, outliers."""

from __future__ import annotations

from qscale.measure.eval import ReferenceOutputs, evaluate, evaluate_windows, reference_outputs
from qscale.measure.landscape import (
    CurvatureError,
    EigenResult,
    QuantDirectionTerms,
    RadialProfile,
    TraceResult,
    hessian_top_eigenvalues,
    hessian_trace,
    hvp,
    quant_direction_terms,
    radial_profile,
)
from qscale.measure.outliers import ActivationStats, activation_stats, outlier_report
from qscale.measure.weights import model_sqnr, model_weight_stats, sqnr_db, weight_stats

__all__ = [
    "ActivationStats",
    "CurvatureError",
    "EigenResult",
    "QuantDirectionTerms",
    "RadialProfile",
    "ReferenceOutputs",
    "TraceResult",
    "activation_stats",
    "evaluate",
    "evaluate_windows",
    "hessian_top_eigenvalues",
    "hessian_trace",
    "hvp",
    "model_sqnr",
    "model_weight_stats",
    "outlier_report",
    "quant_direction_terms",
    "radial_profile",
    "reference_outputs",
    "sqnr_db",
    "weight_stats",
]
