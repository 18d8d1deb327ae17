"""Translate qscale format dataclasses into :class:`~qscale.kernels.triton_kernels.KernelPlan` numbers.

One function per family, dispatched on the format's ``family`` attribute (never on spec strings):

=================  =======  =======  ==========================================================
format             elem     scale    constants
=================  =======  =======  ==========================================================
int4-g128          int      absmax   qmin=-7, qmax=7, divisor=7 (restricted symmetric range)
int4-g128-asym     int      minmax   qmin=0, qmax=15
int8-pc-mse        int      absmax   qmax=127, clip=(1.0, 0.98, ..., 0.5) (26 ratios)
fp8-e4m3-pt        fp       absmax   mbits=3, emin=-6, max_normal=448, divisor=448
fp8-e4m3-raw       fp       none     (direct saturating cast)
mxfp4-e2m1-b32     fp       e8m0     mbits=1, emin=0, max_normal=6, emax_elem=2
mxint8-b32         int      e8m0     qmin=-127, qmax=127, eshift=6 (elements k * 2**-6)
nf4-g64            lut      absmax   16 levels, 15 fp32 midpoints, divisor=max|level|=1
=================  =======  =======  ==========================================================
"""

from __future__ import annotations

from typing import Any

from qscale.kernels.triton_kernels import KernelPlan


def _gran(fmt: Any) -> tuple[str, int]:
    g = fmt.granularity
    if g == "none":
        return "tensor", 0
    return g, (fmt.group_size if g == "group" else 0)


def _plan_int(fmt: Any) -> KernelPlan:
    from qscale.formats.core import MSE_CLIP_RATIOS

    gran, group = _gran(fmt)
    qmax = int(fmt.qmax)
    clip = tuple(MSE_CLIP_RATIOS) if fmt.clip == "mse" else ()
    if fmt.symmetric:
        return KernelPlan("int", "absmax", gran, group, qmin=-qmax, qmax=qmax, divisor=float(qmax), clip=clip)
    return KernelPlan("int", "minmax", gran, group, qmin=0, qmax=qmax, clip=clip)


def _plan_fp(fmt: Any) -> KernelPlan:
    m = fmt.mini
    gran, group = _gran(fmt)
    scale = "none" if fmt.granularity == "none" else "absmax"
    return KernelPlan(
        "fp", scale, gran, group, mbits=m.mbits, emin=m.emin, max_normal=m.max_normal, divisor=m.max_normal
    )


def _plan_mx(fmt: Any) -> KernelPlan:
    if fmt.is_int:
        b = fmt.element_bits
        q = 2 ** (b - 1) - 1
        return KernelPlan("int", "e8m0", "group", fmt.block_size, qmin=-q, qmax=q, emax_elem=0, eshift=b - 2)
    m = fmt.mini
    return KernelPlan(
        "fp",
        "e8m0",
        "group",
        fmt.block_size,
        mbits=m.mbits,
        emin=m.emin,
        max_normal=m.max_normal,
        emax_elem=m.emax,
    )


def _plan_lut(fmt: Any) -> KernelPlan:
    import torch

    levels = torch.tensor(fmt.grid, dtype=torch.float64).to(torch.float32)
    bounds = torch.tensor(fmt.boundaries, dtype=torch.float64).to(torch.float32)
    gran, group = _gran(fmt)
    return KernelPlan(
        "lut",
        "absmax",
        gran,
        group,
        lut=tuple(levels.tolist()),
        thresholds=tuple(bounds.tolist()),
        divisor=float(levels.abs().max()),
    )


_PLANNERS = {"int": _plan_int, "fp": _plan_fp, "mx": _plan_mx, "lut": _plan_lut}


def plan_for_format(fmt: Any) -> KernelPlan:
    """The KernelPlan of a qscale format (int, fp, mx or lut family)."""
    family = getattr(fmt, "family", None)
    planner = _PLANNERS.get(str(family))
    if planner is None:
        raise NotImplementedError(
            f"no Triton kernel for format family {family!r} ({fmt!r}); valid families: {', '.join(_PLANNERS)}"
        )
    return planner(fmt)
