"""Round-to-nearest (RTN) weight quantization: each selected weight replaced by ``fake_quant(fmt, w)``.

Its info dict carries the per-layer and model SQNR (:mod:`qscale.quantize.sqnr`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qscale.lm.layers import LinearRef
from qscale.quantize.registry import Method, MethodContext, register_method
from qscale.quantize.sqnr import layers_sqnr

__all__ = ["RTN", "quantize_layers"]


def quantize_layers(
    layers: Sequence[LinearRef], fmt: Any, *, write: bool, ctx: MethodContext | None = None
) -> dict[str, Any]:
    """RTN-quantize each layer's ``(out, in)`` weight along the input axis; optionally write it back.

    Returns ``{"layers": {name: {"sqnr_db", "signal", "noise", "shape"}}, "sqnr_db", "signal", "noise"}``
    (:func:`qscale.quantize.sqnr.layers_sqnr`). With ``write=False`` the model is untouched. ``fmt`` may map layer
    names to formats (a mixed-precision plan).
    """

    def write_back(ref: LinearRef, q: Any) -> None:
        if ctx is not None:
            ctx.save(ref.weight)
        ref.set_weight(q)

    return layers_sqnr(layers, fmt, on_quantized=write_back if write else None)


@register_method("rtn", "round-to-nearest")
class RTN(Method):
    """Round-to-nearest: every selected linear weight replaced by ``fake_quant(fmt, w)``; no calibration."""

    description = "round-to-nearest weight quantization (no calibration)"
    defaults: dict[str, Any] = {}
    per_layer_formats = True

    def apply(self, ctx: MethodContext) -> dict[str, Any]:
        return quantize_layers(ctx.layers, ctx.fmt, write=True, ctx=ctx)
