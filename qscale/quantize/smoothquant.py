"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights before W8A8 quantization.

For a normalisation layer feeding linear layers (``norm -> q/k/v``, ``norm -> gate/up``), per input channel ``j``::

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

with ``max|X_j|`` over the calibration tokens and ``max|W_j|`` over all output rows of all linears fed by that norm.
Dividing the norm's output channel ``j`` by ``s_j`` (folded into its weight and bias) and multiplying the linears'
input column ``j`` by ``s_j`` leaves the float model unchanged: ``(x / s) (W diag(s))^T = x W^T``. Worked example,
alpha = 0.5: an outlier channel with ``max|X| = 64`` and ``max|W| = 0.25`` gets ``s = 8 / 0.5 = 16``: its
activations shrink to ``max 4`` and its weights grow to ``max 4``, both now easy to quantize.

Pairs are found generically, by tracing one calibration batch with hooks: a *norm* is any leaf module with a 1-D
``weight`` whose output tensor is, as the same tensor object, the input of selected linear layers and of no other
module. How to fold is probed, not looked up: with its weight (and bias) zeroed, a norm computing ``n(x) * w + b``
(LayerNorm, RMSNorm) outputs 0 while a Gemma-style norm computing ``n(x) * (1 + w)`` outputs ``n(x)``; the folded
weight is ``w / s`` or ``(1 + w) / s - 1`` respectively (bias ``b / s``). Each fold is checked on the traced input
(``norm'(x) == norm(x) / s``); a norm that fails the check, and every selected linear with no foldable norm in front
(``o_proj``, ``down_proj``, ...), is left unsmoothed and listed in ``info["unsmoothed"]``.

Method ``smoothquant``: smoothing, then the ``act-quant`` quantization (same params, plus ``alpha``). With
``w=None, a=None`` it only smooths (the model must then compute the same function, up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qscale.lm.layers import LinearRef
from qscale.quantize.activation import _calib_record, apply_weight_activation, calibrate_absmax
from qscale.quantize.registry import Method, MethodContext, MethodError, register_method

__all__ = ["NormGroup", "SmoothQuant", "find_norm_groups", "smooth_model"]


@dataclass(eq=False)
class NormGroup:
    """A normalisation module and the selected linear layers that read its output."""

    norm_name: str
    norm: nn.Module
    linears: list[LinearRef]
    norm_input: torch.Tensor  # traced input, for the fold check
    one_plus: bool = False  # Gemma-style n(x) * (1 + w)


def _is_norm_candidate(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (
        isinstance(w, torch.Tensor)
        and w.ndim == 1
        and next(module.children(), None) is None
        and not isinstance(module, nn.Linear | nn.Embedding)
    )


@torch.no_grad()
def find_norm_groups(
    model: nn.Module, layers: Sequence[LinearRef], sample: torch.Tensor
) -> tuple[list[NormGroup], list[str]]:
    """Trace ``model`` on ``sample`` token ids: (norm -> linears groups, names of selected linears left out)."""
    selected = {id(r.module): r for r in layers}
    norm_out: dict[
        int, tuple[str, nn.Module, torch.Tensor, torch.Tensor]
    ] = {}  # id(output) -> norm, out, input
    consumers: dict[int, list[nn.Module]] = {}
    keep: list[torch.Tensor] = []  # keep traced tensors alive so that ids stay unique
    handles = []

    def norm_hook(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
                norm_out[id(output)] = (name, module, output, args[0])
                keep.extend([output, args[0]])

        return hook

    def consumer_hook(module, args, kwargs):
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor):
                consumers.setdefault(id(a), []).append(module)
                keep.append(a)

    for name, module in model.named_modules():
        if _is_norm_candidate(module):
            handles.append(module.register_forward_hook(norm_hook(name)))
        if next(module.children(), None) is None:
            handles.append(module.register_forward_pre_hook(consumer_hook, with_kwargs=True))
    device = next(model.parameters()).device
    try:
        model(input_ids=sample.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()

    groups: list[NormGroup] = []
    covered: set[int] = set()
    for key, (name, module, _out, inp) in norm_out.items():
        users = consumers.get(key, [])
        lin = [selected[id(m)] for m in users if id(m) in selected]
        if not lin or len(lin) != len(users) or any(id(r.module) in covered for r in lin):
            continue  # no selected linear, or the output also feeds something we cannot rescale
        uniq = list({id(r.module): r for r in lin}.values())
        groups.append(NormGroup(name, module, uniq, inp.detach().clone()))
        covered.update(id(r.module) for r in uniq)
    left = [r.name for r in layers if id(r.module) not in covered]
    return groups, left


def _norm_params(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = getattr(norm, "bias", None)
    return norm.weight, bias if isinstance(bias, torch.Tensor) else None


@torch.no_grad()
def _probe_one_plus(group: NormGroup) -> bool:
    """True when the norm computes n(x) * (1 + w) (+ b): with w = b = 0 its output is not zero."""
    w, b = _norm_params(group.norm)
    w0, b0 = w.detach().clone(), None if b is None else b.detach().clone()
    try:
        w.zero_()
        if b is not None:
            b.zero_()
        y = group.norm(group.norm_input)
    finally:
        w.copy_(w0)
        if b is not None:
            b.copy_(b0)
    y = y[0] if isinstance(y, tuple) else y
    return bool(y.abs().amax() > 0)


@torch.no_grad()
def smooth_model(
    model: nn.Module,
    layers: Sequence[LinearRef],
    calib: torch.Tensor,
    alpha: float = 0.5,
    *,
    save=None,
    batch_size: int = 8,
    rtol: float = 1e-3,
) -> dict[str, Any]:
    """Fold SmoothQuant scales into norms and linears in place; ``save(t)`` is called before changing ``t``.

    Returns ``{"alpha", "groups": {norm: [linears]}, "unsmoothed": [...], "scale_max": {norm: max s}}``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise MethodError(f"alpha must be in [0, 1], got {alpha}")
    if calib is None:
        raise MethodError("smoothquant needs calibration tokens (calib=...)")
    groups, left = find_norm_groups(model, layers, calib[: min(2, calib.shape[0])])
    grouped = [r for g in groups for r in g.linears]
    xmax = calibrate_absmax(model, grouped, calib, batch_size=batch_size, per_channel=True)
    out_groups: dict[str, list[str]] = {}
    scale_max: dict[str, float] = {}
    unsmoothed = list(left)
    for g in groups:
        ws = [r.get_weight().float() for r in g.linears]
        wmax = torch.cat(ws, dim=0).abs().amax(dim=0)
        amax = xmax[g.linears[0].name]
        for r in g.linears[1:]:
            amax = torch.maximum(amax, xmax[r.name])
        s = amax.pow(alpha) / wmax.pow(1.0 - alpha)
        s = torch.where((amax > 0) & (wmax > 0) & torch.isfinite(s), s, torch.ones_like(s)).clamp_min(1e-5)

        g.one_plus = _probe_one_plus(g)
        w, b = _norm_params(g.norm)
        y_ref = g.norm(g.norm_input)
        w_old, b_old = w.detach().clone(), None if b is None else b.detach().clone()
        sw = s.to(w.device)
        if save is not None:
            save(w)
            if b is not None:
                save(b)
        if g.one_plus:
            w.copy_(((1.0 + w.float()) / sw - 1.0).to(w.dtype))
        else:
            w.copy_((w.float() / sw).to(w.dtype))
        if b is not None:
            b.copy_((b.float() / sw.to(b.device)).to(b.dtype))
        y_new = g.norm(g.norm_input).float()
        expect = y_ref.float() / sw.to(y_ref.device)
        tol = rtol * float(expect.abs().amax()) + 1e-6
        if not bool(((y_new - expect).abs() <= tol).all()):
            w.copy_(w_old)
            if b is not None:
                b.copy_(b_old)
            unsmoothed.extend(r.name for r in g.linears)
            continue
        for r, wf in zip(g.linears, ws, strict=True):
            if save is not None:
                save(r.weight)
            r.set_weight(wf * s.to(wf.device).unsqueeze(0))
        out_groups[g.norm_name] = [r.name for r in g.linears]
        scale_max[g.norm_name] = float(s.max())
    return {"alpha": alpha, "groups": out_groups, "unsmoothed": unsmoothed, "scale_max": scale_max}


@register_method("smoothquant", "smooth")
class SmoothQuant(Method):
    """SmoothQuant smoothing (alpha) then weight + activation quantization as in ``act-quant``."""

    description = "SmoothQuant: activation outliers migrated into weights, then W8A8 (needs calibration)"
    needs_calibration = True
    needs_format = False
    defaults: dict[str, Any] = {
        "alpha": 0.5,
        "w": "fmt",
        "a": "fmt",
        "a_scale": "dynamic",
        "w_method": "rtn",
        "batch_size": 8,
    }

    def apply(self, ctx: MethodContext) -> dict[str, Any]:
        p = ctx.params
        smooth = smooth_model(
            ctx.model,
            ctx.layers,
            ctx.calib,
            float(p["alpha"]),
            save=ctx.save,
            batch_size=int(p["batch_size"]),
        )
        info = apply_weight_activation(ctx, p)
        info["smoothquant"] = smooth
        info.update(_calib_record(ctx.calib))
        return info
