"""The lens of perturbation (Gong et al. 2024): quantization seen as additive noise of a given strength and shape.

Method ``perturb`` replaces a tensor ``t`` (a weight ``(out, in)`` or an activation ``(tokens, features)``) by
``t + e`` with

* ``noise``: the distribution of the raw noise ``z``: ``gaussian`` N(0, 1), ``uniform`` U(-1, 1), ``rademacher`` +-1;
* ``mode``: its shape:

  - ``independent``: ``e = z`` (magnitude-independent);
  - ``aware``: ``e = z * (|t| / rms(t) + 1e-3) ** power``: with ``power > 0`` larger values get larger noise (as a
    relative-error quantizer such as floating point or cube-root would), with ``power < 0`` the reverse;
  - ``clip``: no random noise: values beyond a per-row threshold ``c`` are clipped, ``e = clamp(t, -c, c) - t``;

* strength, row by row (a weight's output channel, an activation's token), one of

  - ``rel``: ``||e_row|| = rel * ||t_row||``;
  - ``match``: a format spec (or ``"fmt"``): ``||e_row|| = ||Q(t)_row - t_row||``, the error the format's RTN would
    make (for activations: its dynamic per-token quantization);
  - for ``clip`` only, neither: ``c`` = the ``clip_quantile`` of ``|t_row|``; with a strength, ``c`` is found by
    bisection so that the clipping error has the requested norm (``c = 0`` if even that is too weak).

Worked example (``rel = 0.1``, independent, rademacher): a row of 4 weights ``[3, -1, 2, 0]`` (norm 3.742) gets noise
``+-0.1871`` in every element (norm 0.3742). Aware with ``power = 1`` on the same row puts
``0.1 * 3.742 * |w| / ||w|| = 0.1 * |w|`` on each element: ``+-0.3, +-0.1, +-0.2, +-0.0001``.

Seeds: layer ``i`` (in ``ctx.layers`` order) draws its weight noise from ``torch.Generator`` seeded ``seed + 7919*i``
and its activation noise from one seeded ``seed + 7919*i + 104729`` (consumed call after call), on the CPU, so a run
is reproducible on any device. All are recorded in the info dict.

Method ``cbrt``: the cube-root companding quantizer as a first-class method: ``config="w4"`` quantizes weights with
``cbrt4-g<group>`` (``group=128`` by default); ``config="w8a8"`` quantizes weights with ``cbrt8-pc`` and activations with ``cbrt8-pc`` dynamic
per token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from qscale.kernels import fake_quant
from qscale.quantize.activation import (
    _calib_record,
    _choice,
    apply_weight_activation,
    resolve_format,
)
from qscale.quantize.registry import Method, MethodContext, MethodError, register_method

__all__ = ["CBRT", "NOISES", "MODES", "TARGETS", "Perturb", "perturb_tensor", "raw_noise"]

NOISES = ("gaussian", "uniform", "rademacher")
MODES = ("independent", "aware", "clip")
TARGETS = ("w", "a", "wa")
CBRT_CONFIGS = {"w4": ("cbrt4-g{group}", None), "w8a8": ("cbrt8-pc", "cbrt8-pc")}


def raw_noise(shape: Sequence[int], noise: str, generator: torch.Generator) -> torch.Tensor:
    """Noise of the given type on the CPU, float32."""
    if noise == "gaussian":
        return torch.randn(*shape, generator=generator)
    if noise == "uniform":
        return torch.rand(*shape, generator=generator) * 2.0 - 1.0
    if noise == "rademacher":
        return torch.randint(0, 2, tuple(shape), generator=generator).float() * 2.0 - 1.0
    raise MethodError(f"noise={noise!r} is not valid; choose one of {list(NOISES)}")


def _row_norm(x: torch.Tensor) -> torch.Tensor:
    return x.double().square().sum(dim=1, keepdim=True).sqrt()


def _clip_to_norm(t: torch.Tensor, target: torch.Tensor, iters: int = 60) -> torch.Tensor:
    """Per-row threshold ``c`` with ``||clamp(t, -c, c) - t|| == target`` (bisection; ``c = 0`` when unreachable)."""
    a = t.abs().double()
    lo = torch.zeros(t.shape[0], 1, dtype=torch.float64, device=t.device)
    hi = a.amax(dim=1, keepdim=True)
    for _ in range(iters):
        mid = (lo + hi) / 2
        err = (a - mid).clamp_min(0).square().sum(dim=1, keepdim=True).sqrt()
        too_big = err > target  # clipping too hard: raise the threshold
        lo = torch.where(too_big, mid, lo)
        hi = torch.where(too_big, hi, mid)
    return hi.float()


@torch.no_grad()
def perturb_tensor(
    t: torch.Tensor,
    *,
    noise: str,
    mode: str,
    generator: torch.Generator,
    rel: float | None = None,
    match_fmt: Any = None,
    power: float = 1.0,
    clip_quantile: float = 0.99,
) -> torch.Tensor:
    """``t + e`` for a 2-D ``t`` (rows = output channels or tokens), the noise ``e`` as in the module docstring."""
    if t.ndim != 2:
        raise ValueError(f"perturb_tensor expects a 2-D tensor, got shape {tuple(t.shape)}")
    x = t.float()
    target = None
    if match_fmt is not None:
        target = _row_norm(fake_quant(match_fmt, x) - x)
    elif rel is not None:
        target = rel * _row_norm(x)
    if mode == "clip":
        if target is None:
            c = torch.quantile(x.abs(), clip_quantile, dim=1, keepdim=True)
        else:
            c = _clip_to_norm(x, target)
        return torch.maximum(torch.minimum(x, c), -c).to(t.dtype)
    if target is None:
        raise MethodError(f"mode={mode!r} needs a strength: rel=<float> or match=<format spec>")
    z = raw_noise(x.shape, noise, generator).to(x.device)
    if mode == "aware":
        rms = x.double().square().mean().sqrt().clamp_min(1e-30).float()
        z = z * (x.abs() / rms + 1e-3).pow(power)
    elif mode != "independent":
        raise MethodError(f"mode={mode!r} is not valid; choose one of {list(MODES)}")
    zn = _row_norm(z)
    e = z.double() * torch.where(zn > 0, target / zn, torch.zeros_like(zn))
    return (x.double() + e).to(t.dtype)


def _rel_error(t: torch.Tensor, p: torch.Tensor) -> float:
    s = float(t.double().square().sum())
    return math.sqrt(float((p.double() - t.double()).square().sum()) / s) if s > 0 else 0.0


@register_method("perturb", "noise")
class Perturb(Method):
    """Weights and/or activations perturbed by noise of a given type, shape and strength (the perturbation lens)."""

    description = "add noise of a given type/shape/strength to weights and/or activations (Gong et al. 2024)"
    needs_format = False
    defaults: dict[str, Any] = {
        "target": "w",
        "noise": "gaussian",
        "mode": "independent",
        "power": 1.0,
        "rel": None,
        "match": None,
        "clip_quantile": 0.99,
        "seed": 0,
    }

    def apply(self, ctx: MethodContext) -> dict[str, Any]:
        p = ctx.params
        target = _choice(p["target"], TARGETS, "target")
        noise = _choice(p["noise"], NOISES, "noise")
        mode = _choice(p["mode"], MODES, "mode")
        if p["rel"] is not None and p["match"] is not None:
            raise MethodError("give one strength: rel=<float> or match=<format spec>, not both")
        if p["rel"] is not None and not float(p["rel"]) >= 0:
            raise MethodError(f"rel must be a non-negative number, got {p['rel']!r}")
        if p["rel"] is None and p["match"] is None and mode != "clip":
            raise MethodError(f"mode={mode!r} needs a strength: rel=<float> or match=<format spec or 'fmt'>")
        if not 0.0 < float(p["clip_quantile"]) <= 1.0:
            raise MethodError(f"clip_quantile must be in (0, 1], got {p['clip_quantile']}")
        match_fmt = resolve_format(p["match"], ctx.fmt, "match")
        seed = int(p["seed"])
        kw = {
            "noise": noise,
            "mode": mode,
            "rel": None if p["rel"] is None else float(p["rel"]),
            "match_fmt": match_fmt,
            "power": float(p["power"]),
            "clip_quantile": float(p["clip_quantile"]),
        }
        info: dict[str, Any] = {
            "target": target,
            "noise": noise,
            "mode": mode,
            "seed": seed,
            "match": None if match_fmt is None else str(match_fmt),
            "layers": {},
        }
        info.update(_calib_record(ctx.calib))
        if "w" in target:
            for i, ref in enumerate(ctx.layers):
                layer_seed = seed + 7919 * i
                gen = torch.Generator().manual_seed(layer_seed)
                w = ref.get_weight()
                q = perturb_tensor(w, generator=gen, **kw)
                ctx.save(ref.weight)
                info["layers"][ref.name] = {"w_seed": layer_seed, "w_rel_err": _rel_error(w, q)}
                ref.set_weight(q)
        if "a" in target:
            for i, ref in enumerate(ctx.layers):
                a_seed = seed + 7919 * i + 104729
                info["layers"].setdefault(ref.name, {})["a_seed"] = a_seed
                ctx.add_hook(ref.module.register_forward_pre_hook(_activation_hook(a_seed, kw)))
        errs = [rec["w_rel_err"] for rec in info["layers"].values() if "w_rel_err" in rec]
        if errs:
            info["w_rel_err_mean"] = sum(errs) / len(errs)
        return info


def _activation_hook(seed: int, kw: dict[str, Any]):
    gen = torch.Generator().manual_seed(seed)

    def hook(_module, args):
        x = args[0]
        x2 = x.reshape(-1, x.shape[-1])
        return (perturb_tensor(x2, generator=gen, **kw).reshape(x.shape), *args[1:])

    return hook


@register_method("cbrt", "cube-root")
class CBRT(Method):
    """Cube-root companding quantization (Gong et al. 2024): ``config`` w4 (weights cbrt4-g<group>, group 128 by
    default) or w8a8 (cbrt8-pc weights, cbrt8-pc per-token activations)."""

    description = (
        "cube-root companding quantizer: W4 (cbrt4-g128) or W8A8 (cbrt8 weights + per-token activations)"
    )
    needs_format = False
    defaults: dict[str, Any] = {"config": "w4", "group": 128, "w_method": "rtn", "batch_size": 8}

    def apply(self, ctx: MethodContext) -> dict[str, Any]:
        config = _choice(ctx.params["config"], tuple(CBRT_CONFIGS), "config")
        w, a = CBRT_CONFIGS[config]
        w = w.format(group=int(ctx.params["group"]))
        info = apply_weight_activation(
            ctx,
            {"w": w, "a": a, "a_scale": "dynamic", **{k: ctx.params[k] for k in ("w_method", "batch_size")}},
        )
        info["config"] = config
        return info
