"""qscale.measure: nll / ppl / bits-per-byte / kld / top-1 agreement, sqnr, loss landscape, outliers.

A plain list of guarded re-exports: each block imports one module's public names and skips it
while that module is not there yet. Append your own block; keep heavy imports (torch) inside
functions so ``import qscale.measure`` stays light.
"""

from __future__ import annotations

import importlib

__all__: list[str] = []


def _reexport(module: str, names: tuple[str, ...]) -> None:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:  # that layer has not landed yet
        if err.name != module:
            raise
        return
    for name in names:
        globals()[name] = getattr(mod, name)
        __all__.append(name)


_reexport("qscale.measure.eval", ("ReferenceOutputs", "evaluate", "evaluate_windows", "reference_outputs"))
_reexport(
    "qscale.measure.landscape",
    (
        "hessian_trace",
        "hessian_top_eigenvalues",
        "hvp",
        "quant_direction_terms",
        "radial_profile",
        "TraceResult",
        "EigenResult",
        "QuantDirectionTerms",
        "RadialProfile",
        "CurvatureError",
    ),
)
_reexport("qscale.measure.outliers", ("activation_stats", "outlier_report", "ActivationStats"))
_reexport("qscale.measure.weights", ("model_sqnr", "model_weight_stats", "sqnr_db", "weight_stats"))
