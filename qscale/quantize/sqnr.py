"""SQNR, computed in one place: every method's per-layer SQNR, the ``sqnr_db`` feature and the profiles use it.

SQNR in dB of a weight ``w`` and its fake-quantized ``q``: ``10*log10(sum(w^2) / sum((w - q)^2))`` with the sums in
float64. Model-level SQNR aggregates over layers as *sum of signal over sum of noise* (not a mean of dB values), so
big layers weigh in proportion to their energy. Worked number: a layer with signal 100 and noise 1 (20 dB) and one
with signal 1 and noise 1 (0 dB) aggregate to 10*log10(101/2) = 17.03 dB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from qscale.kernels import fake_quant_with_sqnr
from qscale.lm.layers import LinearRef
from qscale.quantize.registry import layer_format

__all__ = ["db", "fake_quant_sqnr", "layer_record", "layer_sqnr", "layers_sqnr", "sqnr_db"]


def db(signal: float, noise: float) -> float:
    """``10*log10(signal/noise)``; ``inf`` for zero noise, ``nan`` for zero signal with zero noise."""
    if noise == 0.0:
        return math.nan if signal == 0.0 else math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def layer_sqnr(w: torch.Tensor, q: torch.Tensor) -> tuple[float, float]:
    """(signal, noise) = (sum w^2, sum (w-q)^2) in float64, NaNs ignored."""
    w64 = w.detach().double()
    err = w64 - q.detach().double()
    finite = torch.isfinite(w64) & torch.isfinite(err)
    return float(w64[finite].square().sum()), float(err[finite].square().sum())


def sqnr_db(w: torch.Tensor, q: torch.Tensor) -> float:
    """SQNR of ``q`` as an approximation of ``w`` in dB: ``10*log10(sum w^2 / sum (w-q)^2)``, float64 sums."""
    return db(*layer_sqnr(w, q))


def fake_quant_sqnr(fmt: Any, w: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Fake-quantize ``w`` with ``fmt``: ``(q, signal, noise)``, the sums fused into the kernel."""
    q, signal, noise = fake_quant_with_sqnr(fmt, w)
    return q, float(signal), float(noise)


@torch.no_grad()
def layer_record(ref: Any, signal: float, noise: float) -> dict[str, Any]:
    """One layer's entry in a quantization report: sqnr_db, signal, noise and the weight's [out, in] shape."""
    return {
        "sqnr_db": db(signal, noise),
        "signal": signal,
        "noise": noise,
        "shape": [ref.out_features, ref.in_features],
    }


def layers_sqnr(
    layers: Sequence[LinearRef],
    fmt: Any,
    on_quantized: Callable[[LinearRef, torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """Fake-quantize each layer's ``(out, in)`` weight along the input axis and measure its SQNR.

    Returns ``{"layers": {name: {"sqnr_db", "signal", "noise", "shape"}}, "sqnr_db", "signal", "noise"}``. ``fmt``
    may map layer names to formats (a mixed-precision plan). ``on_quantized(ref, q)`` sees each quantized weight
    (RTN writes it back); without it the model is untouched.
    """
    per_layer: dict[str, dict[str, Any]] = {}
    total_s = total_n = 0.0
    for ref in layers:
        q, signal, noise = fake_quant_sqnr(layer_format(fmt, ref.name), ref.get_weight().contiguous())
        if on_quantized is not None:
            on_quantized(ref, q)
        per_layer[ref.name] = layer_record(ref, signal, noise)
        total_s += signal
        total_n += noise
    return {"layers": per_layer, "sqnr_db": db(total_s, total_n), "signal": total_s, "noise": total_n}
