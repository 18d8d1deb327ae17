"""FROZEN copy of the straightforward torch reference (qscale.kernels.reference before its CPU speed work).

Kept only as a test oracle: the optimised reference must give the same bits (signed zeros included) on every
input (tests/kernels/test_reference_fast.py). Do not optimise or import this outside the tests. The original
module docstring follows.

Torch reference fake quantization for every format (CPU and CUDA; the numerics Triton must match bit for bit).

Layout: ``x`` of shape ``(..., n)`` is viewed as ``(..., n // span, span)`` (``span`` = group size, MX
block, or ``n`` per channel); scale parameters are reduced over the last axis (over everything for
per-tensor formats). When ``span`` does not divide ``n`` the first ``(n // span) * span`` columns are
grouped that way and the remaining ``n % span`` columns form one partial group per row, quantized as
the ``(..., 1, n % span)`` view of that tail slice alone (its own scale; the rule is documented in
:mod:`qscale.formats.core`). Arithmetic is fp32, in this order:

* int, symmetric: ``s = amax / qmax`` (0 -> 1); ``q = clamp(round(x / s), -qmax, qmax) * s``.
* int, asymmetric: ``lo = min(min x, 0)``, ``hi = max(max x, 0)``, ``s = (hi - lo) / qmax`` (0 -> 1),
  ``z = clamp(round(-lo / s), 0, qmax)``; ``q = (clamp(round(x / s) + z, 0, qmax) - z) * s``.
* int, ``-mse``: for each ratio r in ``MSE_CLIP_RATIOS`` (fp32), ``amax * r`` (or ``lo * r``, ``hi * r``)
  replaces the range above; the group keeps the first ratio with the smallest float64 squared error.
* fp: ``s = amax / max_normal`` (0 -> 1; ``-raw``: s = 1); ``y = clamp(x / s, -max, max)``;
  ``q = rne_minifloat(y) * s``.
* mx: ``X = pow2(clamp(floor_log2(amax) - emax_elem, -127, 127))``; ``y = clamp(x / X, -max, max)``;
  ``q = rne_element(y) * X`` (int elements: ``round(y * 2^(b-2)) / 2^(b-2)``).
* lut: ``s = amax / max|levels|`` (0 -> 1); ``y = x / s``; ``q = levels[i] * s`` with ``i`` the number of
  boundaries ``<= y`` (a value on a boundary goes to the upper level); NaN stays NaN.

``amax``/``lo``/``hi`` use finite elements only (NaN/Inf policy in :mod:`qscale.formats`). ``round`` is
``torch.round`` (half to even). Minifloat rounding (``round_minifloat``) works on the fp32 exponent:
``e = max(floor_log2(|y|), emin)``, ``step = 2^(e - mbits)``, ``q = round(|y| / step) * step`` with the
sign copied back; division by a power of two is exact, so this is exact round-to-nearest-even
including subnormals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from qscale.formats.core import MSE_CLIP_RATIOS, FloatFormat, Format, IntFormat, LUTFormat, MXFormat
from qscale.formats.elements import E8M0_MAX_EXP, E8M0_MIN_EXP, MiniFloat


class QParams(NamedTuple):
    """Scale parameters broadcastable against the grouped tensor (``zero`` only for asymmetric int)."""

    scale: torch.Tensor
    zero: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------------
# Bit-level helpers
# ------------------------------------------------------------------------------------------------------
def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) as int32 for fp32 ``a >= 0`` from the exponent bits; 0 and fp32 subnormals give -127.

    (Every caller clamps the result at or above -127, where the subnormal case agrees with the exact value.)

    >>> floor_log2(torch.tensor([7.0, 0.3, 1.0, 0.0])).tolist()
    [2, -2, 0, -127]
    """
    return ((a.contiguous().view(torch.int32) >> 23) & 0xFF) - 127


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2.0**e as fp32 for int32 ``e`` in [-149, 127], built from bits (exact; 2^-127 is an fp32 subnormal)."""
    e = e.to(torch.int32).clamp(-149, 127)
    normal = ((e.clamp(min=-126) + 127) << 23).view(torch.float32)
    sub = torch.bitwise_left_shift(torch.ones_like(e), (e + 149).clamp(0, 22)).view(torch.float32)
    return torch.where(e >= -126, normal, sub)


def round_minifloat(y: torch.Tensor, mini: MiniFloat) -> torch.Tensor:
    """Round fp32 ``y`` (already clamped to +-max_normal) to nearest-even on the element grid.

    >>> from qscale.formats import E2M1
    >>> round_minifloat(torch.tensor([0.25, 0.75, 2.5, 4.8, -5.0, 1.25]), E2M1).tolist()
    [0.0, 1.0, 2.0, 4.0, -4.0, 1.0]
    """
    a = y.abs()
    e = floor_log2(a).clamp(min=mini.emin)
    step = pow2(e - mini.mbits)
    q = torch.round(a / step) * step
    return torch.copysign(q, y)


def lut_tables(fmt: LUTFormat, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(levels, boundaries) of a LUT format as fp32 tensors (computed in float64, then rounded once)."""
    levels = torch.tensor(fmt.grid, dtype=torch.float64).to(torch.float32)
    bounds = torch.tensor(fmt.boundaries, dtype=torch.float64).to(torch.float32)
    return levels.to(device), bounds.to(device)


def _nonzero(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s == 0, torch.ones_like(s), s)


def _amax(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    a = torch.where(torch.isfinite(x), x.abs(), torch.zeros_like(x))
    return a.amax(dim=dim, keepdim=True) if dim is not None else a.amax()


def _lo_hi(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    xz = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    if dim is None:
        return xz.amin().clamp(max=0), xz.amax().clamp(min=0)
    return xz.amin(dim=dim, keepdim=True).clamp(max=0), xz.amax(dim=dim, keepdim=True).clamp(min=0)


# ------------------------------------------------------------------------------------------------------
# Parameters and element quantization
# ------------------------------------------------------------------------------------------------------
def _int_params(fmt: IntFormat, x: torch.Tensor, dim: int | None, ratio: float = 1.0) -> QParams:
    r = torch.tensor(ratio, dtype=torch.float32, device=x.device)
    if fmt.symmetric:
        amax = _amax(x, dim)
        if ratio != 1.0:
            amax = amax * r
        return QParams(_nonzero(amax / fmt.qmax))
    lo, hi = _lo_hi(x, dim)
    if ratio != 1.0:
        lo, hi = lo * r, hi * r
    s = _nonzero((hi - lo) / fmt.qmax)
    z = torch.clamp(torch.round(-lo / s), 0, fmt.qmax)
    return QParams(s, z)


def _apply_int(fmt: IntFormat, x: torch.Tensor, p: QParams) -> torch.Tensor:
    if fmt.symmetric:
        return torch.clamp(torch.round(x / p.scale), -fmt.qmax, fmt.qmax) * p.scale
    assert p.zero is not None
    c = torch.clamp(torch.round(x / p.scale) + p.zero, 0, fmt.qmax)
    return (c - p.zero) * p.scale


def compute_params(fmt: Format, x: torch.Tensor, dim: int | None) -> QParams:
    """Scale (and zero) of ``fmt`` for fp32 ``x`` reduced over ``dim`` (``None``: the whole tensor)."""
    if isinstance(fmt, IntFormat):
        if fmt.clip == "absmax":
            return _int_params(fmt, x, dim)
        return _mse_search(fmt, x, dim)
    if isinstance(fmt, FloatFormat):
        if fmt.granularity == "none":
            return QParams(torch.ones((), dtype=torch.float32, device=x.device))
        return QParams(_nonzero(_amax(x, dim) / fmt.mini.max_normal))
    if isinstance(fmt, MXFormat):
        e = (floor_log2(_amax(x, dim)) - fmt.emax_elem).clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)
        return QParams(pow2(e))
    if isinstance(fmt, LUTFormat):
        top = max(abs(v) for v in fmt.grid)
        return QParams(_nonzero(_amax(x, dim) / torch.tensor(top, dtype=torch.float32).item()))
    raise TypeError(f"no reference kernel for {type(fmt).__name__}")


def apply_params(fmt: Format, x: torch.Tensor, p: QParams) -> torch.Tensor:
    """Fake-quantize fp32 ``x`` with fixed parameters ``p`` (broadcast against ``x``)."""
    if isinstance(fmt, IntFormat):
        return _apply_int(fmt, x, p)
    if isinstance(fmt, FloatFormat):
        m = fmt.mini
        y = torch.clamp(x / p.scale, -m.max_normal, m.max_normal)
        return round_minifloat(y, m) * p.scale
    if isinstance(fmt, MXFormat):
        y = torch.clamp(x / p.scale, -fmt.max_normal, fmt.max_normal)
        if fmt.mini is not None:
            return round_minifloat(y, fmt.mini) * p.scale
        k = float(2 ** (fmt.element_bits - 2))
        return torch.round(y * k) / k * p.scale
    if isinstance(fmt, LUTFormat):
        levels, bounds = lut_tables(fmt, x.device)
        y = x / p.scale
        idx = torch.bucketize(y.contiguous(), bounds, right=True)
        q = levels[idx] * p.scale
        return torch.where(torch.isnan(y), y, q)
    raise TypeError(f"no reference kernel for {type(fmt).__name__}")


def _mse_search(fmt: IntFormat, x: torch.Tensor, dim: int | None) -> QParams:
    """Per-group clip ratio minimising the float64 squared error over finite elements (first minimum wins)."""
    xz = torch.where(torch.isfinite(x), x, torch.zeros_like(x))  # non-finite elements add no error
    xd = xz.double()
    best: QParams | None = None
    best_err: torch.Tensor | None = None
    for r in MSE_CLIP_RATIOS:
        p = _int_params(fmt, xz, dim, r)
        q = _apply_int(fmt, xz, p)
        d2 = (q.double() - xd) ** 2
        err = d2.sum(dim=dim, keepdim=True) if dim is not None else d2.sum()
        if best is None or best_err is None:
            best, best_err = p, err
            continue
        better = err < best_err
        scale = torch.where(better, p.scale, best.scale)
        zero = None if p.zero is None or best.zero is None else torch.where(better, p.zero, best.zero)
        best, best_err = QParams(scale, zero), torch.where(better, err, best_err)
    assert best is not None
    return best


# ------------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------------
def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fake_quant expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"fake_quant expects a floating-point tensor (fp32/fp16/bf16), got {x.dtype}")


def fake_quant_reference(fmt: Format, x: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize ``x`` in ``fmt`` (same shape and dtype; fp32 arithmetic)."""
    _check_input(x)
    if x.numel() == 0:
        return x.clone()
    xf = x.to(torch.float32)
    shape = xf.shape
    if xf.dim() == 0:
        xf = xf.reshape(1)
    if fmt.per_tensor:
        q = apply_params(fmt, xf, compute_params(fmt, xf, None))
    else:
        n = xf.shape[-1]
        span = min(fmt.scale_span(n), n)
        n_full = (n // span) * span
        if n_full == n:
            q = _quant_groups(fmt, xf, span)
        else:  # full groups, then the partial trailing group (its own scale), each as its own tensor
            q = torch.empty_like(xf)
            if n_full:
                q[..., :n_full] = _quant_groups(fmt, xf[..., :n_full], span)
            q[..., n_full:] = _quant_groups(fmt, xf[..., n_full:], n - n_full)
    return q.reshape(shape).to(x.dtype)


def _quant_groups(fmt: Format, x: torch.Tensor, span: int) -> torch.Tensor:
    """Fake-quantize fp32 ``x`` (..., k * span) with one scale per run of ``span`` last-axis columns."""
    n = x.shape[-1]
    xg = x.reshape(*x.shape[:-1], n // span, span)
    return apply_params(fmt, xg, compute_params(fmt, xg, -1)).reshape(x.shape)


def make_quantizer(fmt: Format, w_slice: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Parameters fixed from ``w_slice`` (per row over its last axis; per-tensor: over all of it)."""
    _check_input(w_slice)
    wf = w_slice.to(torch.float32)
    if fmt.per_tensor:
        p = compute_params(fmt, wf, None)
    else:
        if wf.dim() < 1 or wf.shape[-1] == 0:
            raise ValueError(f"make_quantizer needs a (rows, span) slice, got shape {tuple(w_slice.shape)}")
        # Same (rows, 1, span) view fake_quant uses for one span, so make_quantizer(w)(w) == fake_quant(w).
        p0 = compute_params(fmt, wf.unsqueeze(-2), -1)
        p = QParams(p0.scale.squeeze(-2), None if p0.zero is None else p0.zero.squeeze(-2))

    def quantize(x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        return apply_params(fmt, x.to(torch.float32), p).to(x.dtype)

    return quantize


def fake_quant_with_sqnr_reference(
    fmt: Format, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, signal, noise)``: q as :func:`fake_quant_reference`; float64 0-d sums over finite elements of
    ``x``: ``signal = sum x^2``, ``noise = sum (x - q)^2``. SQNR dB = 10 log10(signal / noise)."""
    q = fake_quant_reference(fmt, x)
    xd = x.double()
    fin = torch.isfinite(xd)
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    signal = torch.where(fin, xd * xd, zero).sum()
    noise = torch.where(fin, (xd - q.double()) ** 2, zero).sum()
    return q, signal, noise


__all__ = [
    "QParams",
    "apply_params",
    "compute_params",
    "fake_quant_reference",
    "fake_quant_with_sqnr_reference",
    "floor_log2",
    "lut_tables",
    "make_quantizer",
    "pow2",
    "round_minifloat",
]
