"""Activation quantization: the inputs of linear layers fake-quantized on the fly (W8A8, W4A8, W4A4, ...).

Method ``act-quant`` (alias ``w-a``), params:

* ``"w"``: weight format spec, ``None`` for float weights; default ``"fmt"`` = the format passed to ``quantized``;
* ``"w_method"``: ``"rtn"`` (default) or ``"gptq"`` (needs calibration) for the weights;
* ``"a"``: activation format spec (default ``"fmt"``), ``None`` for float activations;
* ``"a_scale"``: ``"dynamic"`` (default) or ``"static"``.

*Dynamic* scales are recomputed for every forward call from the tensor itself. The activation ``x`` of shape
``(..., features)`` is flattened to ``(tokens, features)`` and quantized with the format's own granularity along the
last axis, so a per-channel format (one scale per row) gives **per-token** scales, a grouped format (``int4-g128``)
one scale per token per group of 128 features, an MX format one shared exponent per block of 32 features of a token,
and a per-tensor format one scale for the whole activation.

*Static* scales are calibrated once: the absolute maximum of each layer's input over the whole calibration batch,
one scale per tensor. A static quantizer is ``make_quantizer(fmt, ref)``, the format's quantizer built from a reference
row ``[amax, -amax, 0, ...]`` one scale span wide, so its scale is exactly the one the format would pick for a
tensor whose range is ``[-amax, amax]``; it is then applied to every span of every token. Values beyond ``amax``
saturate. MX formats have no static variant (their shared exponents are per block by design): asking for one is an
error. Worked example (int8, symmetric absmax): calibrated ``amax = 2.54`` gives scale ``2.54/127 = 0.02``; an input
``0.031`` becomes ``0.04`` and ``9.0`` saturates to ``2.54``.

The weights are quantized first (RTN or GPTQ on float activations), then the activation pre-hooks are installed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from qscale.kernels import fake_quant, make_quantizer
from qscale.lm.layers import LinearRef
from qscale.quantize.registry import Method, MethodContext, MethodError, register_method

__all__ = [
    "ActQuant",
    "ActivationQuantizer",
    "calibrate_absmax",
    "install_activation_hooks",
    "resolve_format",
    "quantize_weights",
]

A_SCALES = ("dynamic", "static")
W_METHODS = ("rtn", "gptq")


def resolve_format(spec: Any, default: Any, what: str) -> Any:
    """``"fmt"`` -> ``default``; ``None`` -> None; a spec string -> its Format; a Format passes through."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec == "fmt":
            if default is None:
                raise MethodError(
                    f"{what}='fmt' but no format was given; pass fmt=... or a spec such as 'int8'"
                )
            return default
        from qscale.formats import get_format

        return get_format(spec)
    return spec


def _choice(value: Any, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        from qscale.registry import unknown_name_message

        raise MethodError(unknown_name_message(str(value), choices, what))
    return value


class ActivationQuantizer:
    """Fake-quantizes activations ``(..., features)`` with a format, dynamic or with a static (calibrated) range."""

    def __init__(self, fmt: Any, amax: float | None = None):
        self.fmt = fmt
        self.amax = amax
        self._static: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._span: int | None = None
        if amax is not None and getattr(fmt, "family", None) == "mx":
            raise MethodError(
                f"static activation scales are not defined for the MX format {fmt}: its block exponents are "
                "dynamic by design; use a_scale='dynamic' or an int/fp format"
            )

    def _static_quantizer(self, n_features: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
        if self._static is None or self._span is None:
            span = (
                n_features if getattr(self.fmt, "per_tensor", False) else int(self.fmt.scale_span(n_features))
            )
            ref = torch.zeros(1, span)
            ref[0, 0] = self.amax
            if span > 1:
                ref[0, 1] = -self.amax
            self._static, self._span = make_quantizer(self.fmt, ref), span
        return self._static, self._span

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, shape[-1]).float()
        if self.amax is None:
            q = fake_quant(self.fmt, x2)
        else:
            quant, span = self._static_quantizer(shape[-1])
            x2 = x2.clamp(-self.amax, self.amax)
            q = torch.cat([quant(x2[:, g0 : g0 + span]) for g0 in range(0, shape[-1], span)], dim=1)
        return q.reshape(shape).to(dtype)


@torch.no_grad()
def calibrate_absmax(
    model: nn.Module,
    refs: Sequence[LinearRef],
    calib: torch.Tensor,
    batch_size: int = 8,
    per_channel: bool = False,
) -> dict[str, torch.Tensor]:
    """Absolute maximum of each layer's input over the calibration tokens (per input channel if asked), float32."""
    stats: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, args):
            x = args[0].detach()
            x2 = x.reshape(-1, x.shape[-1]).abs().float()
            m = x2.amax(dim=0) if per_channel else x2.amax()
            stats[name] = m if name not in stats else torch.maximum(stats[name], m)

        return hook

    for ref in refs:
        handles.append(ref.module.register_forward_pre_hook(make_hook(ref.name)))
    device = next(model.parameters()).device
    try:
        for batch in calib.split(batch_size):
            model(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


def install_activation_hooks(
    ctx: MethodContext, refs: Sequence[LinearRef], quantizers: dict[str, ActivationQuantizer]
) -> None:
    """A forward pre-hook per layer replacing its input by ``quantizers[name](input)``; registered with ``ctx``."""

    def make_hook(quant: ActivationQuantizer):
        def hook(_module, args):
            return (quant(args[0]), *args[1:])

        return hook

    for ref in refs:
        ctx.add_hook(ref.module.register_forward_pre_hook(make_hook(quantizers[ref.name])))


def quantize_weights(ctx: MethodContext, wfmt: Any, w_method: str, gptq_params: dict | None = None) -> dict:
    """Quantize ``ctx.layers`` weights with RTN or GPTQ (saving every tensor first); the method's info dict."""
    if w_method == "rtn":
        from qscale.quantize.rtn import quantize_layers

        return quantize_layers(ctx.layers, wfmt, write=True, ctx=ctx)
    from qscale.quantize.gptq import GPTQ

    if ctx.calib is None:
        raise MethodError("w_method='gptq' needs calibration tokens (calib=...)")
    sub = MethodContext(
        model=ctx.model,
        fmt=wfmt,
        params=GPTQ().resolve_params(gptq_params),
        calib=ctx.calib,
        layers=ctx.layers,
    )
    sub._saved = ctx._saved  # share the restore registry: the outer context restores everything
    sub._hooks = ctx._hooks
    return GPTQ().apply(sub)


def _calib_record(calib: torch.Tensor | None) -> dict[str, Any]:
    if calib is None:
        return {"n_samples": 0, "seq_len": 0}
    return {"n_samples": int(calib.shape[0]), "seq_len": int(calib.shape[1])}


@register_method("act-quant", "w-a", "wa")
class ActQuant(Method):
    """Weights (RTN/GPTQ) and linear-layer inputs (dynamic per-token or static per-tensor) quantized."""

    description = "weight + activation quantization (W8A8, W4A8, W4A4; dynamic per-token or static scales)"
    needs_format = False
    defaults: dict[str, Any] = {
        "w": "fmt",
        "a": "fmt",
        "a_scale": "dynamic",
        "w_method": "rtn",
        "batch_size": 8,
    }

    def calibration_needed(self, params: Mapping[str, Any]) -> bool:
        """Static activation scales and GPTQ weights are calibrated; dynamic RTN needs no data."""
        return params.get("a_scale") == "static" or params.get("w_method") == "gptq"

    def apply(self, ctx: MethodContext) -> dict[str, Any]:
        return apply_weight_activation(ctx, ctx.params)


def apply_weight_activation(ctx: MethodContext, p: dict[str, Any]) -> dict[str, Any]:
    """The shared body of act-quant, smoothquant and cbrt: weights first, then activation hooks."""
    wfmt = resolve_format(p["w"], ctx.fmt, "w")
    afmt = resolve_format(p["a"], ctx.fmt, "a")
    a_scale = _choice(p["a_scale"], A_SCALES, "a_scale")
    w_method = _choice(p["w_method"], W_METHODS, "w_method")
    if a_scale == "static" and afmt is not None and ctx.calib is None:
        raise MethodError(
            "a_scale='static' needs calibration tokens to find each layer's input range (calib=...)"
        )
    info: dict[str, Any] = {
        "w": None if wfmt is None else str(wfmt),
        "a": None if afmt is None else str(afmt),
    }
    info["a_scale"] = a_scale
    info.update(_calib_record(ctx.calib))
    amax: dict[str, torch.Tensor] = {}
    if afmt is not None and a_scale == "static":  # calibrated on the float model
        amax = calibrate_absmax(ctx.model, ctx.layers, ctx.calib, batch_size=int(p["batch_size"]))
        missing = [r.name for r in ctx.layers if r.name not in amax]
        if missing:
            raise MethodError(f"layers never reached by the calibration data: {missing[:5]}")
        info["a_amax"] = {name: float(v) for name, v in amax.items()}
    if wfmt is not None:
        info.update(quantize_weights(ctx, wfmt, w_method))
        info["w_method"] = w_method
    if afmt is not None:
        quants = {
            r.name: ActivationQuantizer(afmt, float(amax[r.name]) if amax else None) for r in ctx.layers
        }
        install_activation_hooks(ctx, ctx.layers, quants)
    return info
