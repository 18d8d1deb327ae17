"""Weight-side features: SQNR of a format on a model's weights (no evaluation needed) and weight statistics.

Both are cheap ("weights" cost): one pass over the linear weights, the model untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from qscale.lm.layers import linear_layers
from qscale.quantize.sqnr import layers_sqnr, sqnr_db

__all__ = ["model_sqnr", "weight_stats", "model_weight_stats", "sqnr_db"]


@torch.no_grad()
def model_sqnr(
    model: nn.Module,
    fmt: Any,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-layer and aggregate (sum of signal over sum of noise) SQNR of ``fmt`` on the model's linear weights:
    ``{"layers": {name: {"sqnr_db", ...}}, "sqnr_db", "signal", "noise"}``.

    ``fmt`` is a Format or a spec string. The model is not modified.
    """
    if isinstance(fmt, str):
        from qscale.formats import get_format

        fmt = get_format(fmt)
    return layers_sqnr(linear_layers(model, include, exclude), fmt)


def weight_stats(w: torch.Tensor) -> dict[str, float]:
    """Statistics of one weight tensor, in float64.

    ``kurtosis``: excess kurtosis E[(x-mu)^4]/var^2 - 3 (0 for a Gaussian, -1.2 for a uniform, 3 for a Laplace);
    ``max_over_std``: max|x - mu| / std; ``frac_beyond_6std``: share of |x - mu| > 6 std; ``absmax``, ``std``.
    """
    x = w.detach().double().flatten()
    mu = x.mean()
    c = x - mu
    var = c.square().mean()
    std = var.sqrt()
    if float(std) == 0.0:
        return {
            "kurtosis": float("nan"),
            "max_over_std": float("nan"),
            "frac_beyond_6std": 0.0,
            "absmax": float(x.abs().max()),
            "std": 0.0,
        }
    return {
        "kurtosis": float(c.pow(4).mean() / var.square() - 3.0),
        "max_over_std": float(c.abs().max() / std),
        "frac_beyond_6std": float((c.abs() > 6 * std).double().mean()),
        "absmax": float(x.abs().max()),
        "std": float(std),
    }


def model_weight_stats(
    model: nn.Module, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> dict[str, Any]:
    """:func:`weight_stats` per linear layer plus model-wide aggregates (mean and max of each statistic)."""
    per_layer = {ref.name: weight_stats(ref.get_weight()) for ref in linear_layers(model, include, exclude)}
    agg: dict[str, float] = {}
    for key in ("kurtosis", "max_over_std", "frac_beyond_6std"):
        vals = torch.tensor([s[key] for s in per_layer.values()], dtype=torch.float64)
        vals = vals[torch.isfinite(vals)]
        agg[f"{key}_mean"] = float(vals.mean()) if len(vals) else float("nan")
        agg[f"{key}_max"] = float(vals.max()) if len(vals) else float("nan")
    return {"layers": per_layer, **agg}
