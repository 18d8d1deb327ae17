"""Round-to-nearest (RTN) weight quantization, and the per-layer SQNR that every method reports.

SQNR in dB of a weight ``w`` and its fake-quantized ``q``: ``10*log10(sum(w^2) / sum((w - q)^2))`` with the sums in
float64. Model-level SQNR aggregates over layers as *sum of signal over sum of noise* (not a mean of dB values), so
big layers weigh in proportion to their energy. Worked number: a layer with signal 100 and noise 1 (20 dB) and one
with signal 1 and noise 1 (0 dB) aggregate to 10*log10(101/2) = 17.03 dB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from qscale.lm.layers import LinearRef
from qscale.quantize.registry import Method, MethodContext, layer_format, register_method

__all__ = ["RTN", "db", "quantize_layers", "layer_sqnr"]


def db(signal: float, noise: float) -> float:
    """``10*log10(signal/noise)``; ``inf`` for zero noise, ``nan`` for zero signal with zero noise."""
    if noise == 0.0:
        return math.nan if signal == 0.0 else math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _fake_quant_with_sqnr(fmt: Any, w: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Fake-quantize ``w`` and return (q, signal, noise) with float64 sums (fused kernel when available)."""
    try:
        from qscale.kernels import fake_quant_with_sqnr
    except ImportError:  # kernels without the fused entry point
        fake_quant_with_sqnr = None
    if fake_quant_with_sqnr is not None:
        q, signal, noise = fake_quant_with_sqnr(fmt, w)
        return q, float(signal), float(noise)
    q = fmt.fake_quant(w)
    return q, *layer_sqnr(w, q)


def layer_sqnr(w: torch.Tensor, q: torch.Tensor) -> tuple[float, float]:
    """(signal, noise) = (sum w^2, sum (w-q)^2) in float64, NaNs ignored."""
    w64 = w.detach().double()
    err = w64 - q.detach().double()
    finite = torch.isfinite(w64) & torch.isfinite(err)
    return float(w64[finite].square().sum()), float(err[finite].square().sum())


@torch.no_grad()
def quantize_layers(
    layers: Sequence[LinearRef], fmt: Any, *, write: bool, ctx: MethodContext | None = None
) -> dict[str, Any]:
    """RTN-quantize each layer's ``(out, in)`` weight along the input axis; optionally write it back.

    Returns ``{"layers": {name: {"sqnr_db", "signal", "noise", "shape"}}, "sqnr_db", "signal", "noise"}``.
    With ``write=False`` the model is untouched (SQNR as a feature, no evaluation needed). ``fmt`` may map layer
    names to formats (a mixed-precision plan).
    """
    per_layer: dict[str, dict[str, Any]] = {}
    total_s = total_n = 0.0
    for ref in layers:
        w = ref.get_weight().contiguous()
        q, signal, noise = _fake_quant_with_sqnr(layer_format(fmt, ref.name), w)
        if write:
            if ctx is not None:
                ctx.save(ref.weight)
            ref.set_weight(q)
        per_layer[ref.name] = {
            "sqnr_db": db(signal, noise),
            "signal": signal,
            "noise": noise,
            "shape": [ref.out_features, ref.in_features],
        }
        total_s += signal
        total_n += noise
    return {"layers": per_layer, "sqnr_db": db(total_s, total_n), "signal": total_s, "noise": total_n}


@register_method("rtn", "round-to-nearest")
class RTN(Method):
    """Round-to-nearest: every selected linear weight replaced by ``fmt.fake_quant(w)``; no calibration."""

    description = "round-to-nearest weight quantization (no calibration)"
    defaults: dict[str, Any] = {}
    per_layer_formats = True

    def apply(self, ctx: MethodContext) -> dict[str, Any]:
        return quantize_layers(ctx.layers, ctx.fmt, write=True, ctx=ctx)
