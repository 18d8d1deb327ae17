"""Triton device code for bulk fake quantization (imported only by :mod:`qscale.kernels.triton_kernels`).

Every kernel works on a contiguous ``(n_rows, n_cols)`` view of the input (the last axis is the one
that groups, blocks and channels run along).  One program owns ``ROWS`` rows times one *scale span*
(a quantization group, an MX block, a whole row for per-channel formats, or a column chunk for
per-tensor formats), walks it in ``NCHUNK`` chunks of ``BLOCK_K`` columns, and does all arithmetic
in fp32 registers.  No atomics: each program owns its scales; per-program partial sums (absmax for
per-tensor scales, the SQNR sums) go to a scratch buffer the host reduces.

Numerics are exact by construction: round-half-to-even through the ``1.5 * 2**23`` magic number
(exact for ``|v| < 2**22``; every caller clamps first), minifloat rounding by splitting the fp32
exponent out of the bits and rounding the significand at the element's quantum, powers of two built
from exponent bits, and IEEE division through ``div_rn`` (Triton's plain ``/`` is approximate on
NVIDIA).  Kernels are launched with ``enable_fp_fusion=False`` so no multiply-add is contracted.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Element kinds and scale modes (constexpr switches; mirrored in triton_kernels._Plan).
ELEM_INT = 0  # integer grid [QMIN, QMAX] (asymmetric formats shift by a zero point)
ELEM_FP = 1  # minifloat with MBITS mantissa bits, min normal exponent EMIN, max normal MAXN
ELEM_LUT = 2  # arbitrary sorted grid, nearest point through midpoints (ties go to the upper point)

SCALE_ABSMAX = 0  # scale = absmax / DIVISOR (fp32), zero -> 1
SCALE_MINMAX = 1  # asymmetric: scale = (max - min) / (QMAX - QMIN), zero point = clamp(rne(-min / scale))
SCALE_E8M0 = (
    2  # scale = 2 ** (clamp(floor(log2(absmax)) - EMAX_ELEM, -127, 127) - ESHIFT), from exponent bits
)
SCALE_NONE = 3  # unit scale (formats without a scale, e.g. a bare fp8 cast)


@triton.jit
def _rne(v):
    """Round half to even; exact for |v| < 2**22 (1.5 * 2**23 makes the ulp exactly 1)."""
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _pow2(k):
    """2.0 ** k as fp32 for integer tensors k in [-149, 127], built from bits (exact, no exp2)."""
    normal = ((k + 127) << 23).to(tl.float32, bitcast=True)
    sub = (tl.full(k.shape, 1, tl.int32) << tl.maximum(k + 149, 0)).to(tl.float32, bitcast=True)
    return tl.where(k >= -126, normal, sub)


@triton.jit
def _exponent(a):
    """floor(log2(a)) for fp32 a > 0 (normal or subnormal) from the exponent bits; a == 0 -> -127."""
    bits = a.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    biased = bits >> 23
    # Subnormal: floor(log2(m * 2**-149)) = 31 - clz(m) - 149 = the top set bit's position - 149.
    man = bits & 0x7FFFFF
    e = tl.where(biased > 0, biased - 127, _top_bit(tl.maximum(man, 1)) - 149)
    return tl.where(bits == 0, -127, e)


@triton.jit
def _top_bit(m):
    """Position of the highest set bit of a positive int32 < 2**23 (binary search, branch free)."""
    p = tl.zeros_like(m)
    s = tl.where(m >= (1 << 16), 16, 0)
    p += s
    m = m >> s
    s = tl.where(m >= (1 << 8), 8, 0)
    p += s
    m = m >> s
    s = tl.where(m >= (1 << 4), 4, 0)
    p += s
    m = m >> s
    s = tl.where(m >= (1 << 2), 2, 0)
    p += s
    m = m >> s
    s = tl.where(m >= (1 << 1), 1, 0)
    return p + s


@triton.jit
def _bf16_rne(y):
    """fp32 -> the nearest bfloat16 value (half to even), still as fp32, so the final cast is exact.

    Triton's interpreter truncates on fp32 -> bf16 casts; the GPU rounds to nearest even. Rounding here
    makes both equal torch's ``.to(torch.bfloat16)``. NaN passes through (the caller keeps it).
    """
    b = y.to(tl.int32, bitcast=True)
    r = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
    return tl.where(y != y, y, r.to(tl.float32, bitcast=True))


@triton.jit
def _round_minifloat(v, MBITS: tl.constexpr, EMIN: tl.constexpr, MAXN: tl.constexpr):
    """Round fp32 v to the nearest minifloat (half to even), subnormals kept, saturating at +-MAXN.

    The quantum at |v| is 2**(max(e, EMIN) - MBITS) with e = floor(log2|v|); dividing by it and
    multiplying back are exact power-of-two scalings, so only the one RNE step rounds.  E.g. E4M3
    (MBITS=3, EMIN=-6, MAXN=448): 0.3 -> e=-2, quantum 2**-5, 0.3*32 = 9.6 -> 10 -> 0.3125;
    1e-3 -> subnormal quantum 2**-9, 0.512 -> 1 -> 2**-9; 460 -> saturates to 448.
    """
    a = tl.minimum(tl.abs(v), MAXN)  # also maps +inf to MAXN; NaN handled by the caller
    e = tl.maximum(_exponent(a), EMIN)
    k = e - MBITS
    # |k| <= 17 for every element (EMIN - MBITS >= -17, e <= 15): both powers are normal fp32.
    r = _rne(a * ((127 - k) << 23).to(tl.float32, bitcast=True)) * ((k + 127) << 23).to(
        tl.float32, bitcast=True
    )
    return tl.where(v < 0, -r, r)


@triton.jit
def _round_lut(v, mid_ptr, val_ptr, N_LUT: tl.constexpr):
    """Grid point whose decision interval holds v: index = #thresholds <= v (a tie goes to the upper point).

    +-Inf land on the extreme points (saturation); the caller keeps NaN.
    """
    # Thresholds ascend, so the last one <= v names the level: a select chain of scalar (uniform)
    # loads instead of a per-element gather.
    y = tl.zeros(v.shape, tl.float32) + tl.load(val_ptr)
    for i in tl.static_range(N_LUT - 1):
        y = tl.where(v >= tl.load(mid_ptr + i), tl.load(val_ptr + i + 1), y)
    return y


@triton.jit
def _scale_from_stats(
    amax,
    lo,
    hi,
    SCALE: tl.constexpr,
    QMIN: tl.constexpr,
    QMAX: tl.constexpr,
    DIVISOR: tl.constexpr,
    EMAX_ELEM: tl.constexpr,
    ESHIFT: tl.constexpr,
):
    """Per-row (scale, zero point, 1/scale) from finite absmax (or min and max).

    The zero point is nonzero for asymmetric int only; 1/scale is exact and used only for E8M0 scales
    (2**-k with k the clamped exponent before ESHIFT: multiplying by it is exactly x / 2**k, faster).
    """
    inv = tl.full(amax.shape, 1.0, tl.float32)
    if SCALE == 0:
        s = tl.math.div_rn(amax, tl.full(amax.shape, DIVISOR, tl.float32))
        s = tl.where(s > 0, s, 1.0)
        zp = tl.zeros_like(s)
    elif SCALE == 1:
        lo = tl.minimum(lo, 0.0)
        hi = tl.maximum(hi, 0.0)
        s = tl.math.div_rn(hi - lo, tl.full(amax.shape, QMAX - QMIN, tl.float32))
        s = tl.where(s > 0, s, 1.0)
        zp = tl.minimum(tl.maximum(_rne(tl.math.div_rn(-lo, s)), QMIN), QMAX)
    elif SCALE == 2:
        k = tl.minimum(tl.maximum(_exponent(amax) - EMAX_ELEM, -127), 127)
        s = _pow2(k - ESHIFT)
        inv = _pow2(-k)
        zp = tl.zeros_like(s)
    else:
        s = tl.full(amax.shape, 1.0, tl.float32)
        zp = tl.zeros_like(s)
    return s, zp, inv


@triton.jit
def _quant_tile(
    x,
    s,
    zp,
    inv,
    mid_ptr,
    val_ptr,
    ELEM: tl.constexpr,
    SCALE: tl.constexpr,
    ESHIFT: tl.constexpr,
    QMIN: tl.constexpr,
    QMAX: tl.constexpr,
    MBITS: tl.constexpr,
    EMIN: tl.constexpr,
    MAXN: tl.constexpr,
    N_LUT: tl.constexpr,
):
    """Fake-quantize an fp32 tile x with per-row scale s[:, None] (zero point zp, inverse inv likewise).

    x / s is an IEEE division (div_rn), except for E8M0 scales where x * 2**-k * 2**ESHIFT is the same
    exact value, and for unscaled casts.
    """
    if SCALE == 2:
        v = x * inv
        if ESHIFT > 0:
            v = v * (1 << ESHIFT)
    elif SCALE == 3:
        v = x
    else:
        v = tl.math.div_rn(x, s)
    if ELEM == 0:
        q = tl.minimum(tl.maximum(_rne(v) + zp, QMIN), QMAX)
        y = (q - zp) * s
    elif ELEM == 1:
        y = _round_minifloat(v, MBITS, EMIN, MAXN) * s
    else:
        y = _round_lut(v, mid_ptr, val_ptr, N_LUT) * s
    return tl.where(x != x, x, y)


@triton.jit
def _clip_err(
    x_ptr,
    roff,
    rmask,
    c0,
    span,
    n_cols,
    cs,
    czp,
    mid_ptr,
    val_ptr,
    ELEM: tl.constexpr,
    SCALE: tl.constexpr,
    QMIN: tl.constexpr,
    QMAX: tl.constexpr,
    MBITS: tl.constexpr,
    EMIN: tl.constexpr,
    MAXN: tl.constexpr,
    N_LUT: tl.constexpr,
    ESHIFT: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NCHUNK: tl.constexpr,
):
    """Per-row float64 sum of (y - x)**2 over the finite x of a span, y quantized with scale cs, zero czp.

    As the reference: the fp32 y of each element, differences and squares in float64 (exact for most
    spans), so candidates only tie where the reference's sums tie too, up to float64 summation order.
    """
    err = tl.zeros((ROWS,), tl.float64)
    for c in range(NCHUNK):
        cols = c0 + c * BLOCK_K + tl.arange(0, BLOCK_K)
        m = rmask[:, None] & (cols < n_cols)[None, :] & (cols < c0 + span)[None, :]
        x = tl.load(x_ptr + roff + cols[None, :], mask=m, other=0.0).to(tl.float32)
        y = _quant_tile(
            x,
            cs[:, None],
            czp[:, None],
            cs[:, None],
            mid_ptr,
            val_ptr,
            ELEM,
            SCALE,
            ESHIFT,
            QMIN,
            QMAX,
            MBITS,
            EMIN,
            MAXN,
            N_LUT,
        )
        d = tl.where(m & (tl.abs(x) < float("inf")), y.to(tl.float64) - x.to(tl.float64), 0.0)
        err += tl.sum(d * d, axis=1)
    return err


@triton.jit
def _clip_err_kernel(
    x_ptr,
    stats_ptr,
    mid_ptr,
    val_ptr,
    clip_ptr,
    err_ptr,
    n_rows,
    n_cols,
    span,
    n_spans,
    n_clip,
    ELEM: tl.constexpr,
    SCALE: tl.constexpr,
    QMIN: tl.constexpr,
    QMAX: tl.constexpr,
    MBITS: tl.constexpr,
    EMIN: tl.constexpr,
    MAXN: tl.constexpr,
    N_LUT: tl.constexpr,
    DIVISOR: tl.constexpr,
    EMAX_ELEM: tl.constexpr,
    ESHIFT: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NCHUNK: tl.constexpr,
):
    """Per-tensor MSE clipping: this program's float64 error for every clip ratio -> err_ptr[pid, i]."""
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_r * ROWS + tl.arange(0, ROWS)
    rmask = rows < n_rows
    roff = rows[:, None].to(tl.int64) * n_cols
    c0 = pid_s * span
    amax = tl.zeros((ROWS,), tl.float32) + tl.load(stats_ptr + 0)
    lo = tl.zeros((ROWS,), tl.float32) + tl.load(stats_ptr + 1)
    hi = tl.zeros((ROWS,), tl.float32) + tl.load(stats_ptr + 2)
    pid = pid_r * n_spans + pid_s
    for i in range(n_clip):
        r = tl.load(clip_ptr + i)
        cs, czp, _ = _scale_from_stats(
            amax * r, lo * r, hi * r, SCALE, QMIN, QMAX, DIVISOR, EMAX_ELEM, ESHIFT
        )
        err = _clip_err(
            x_ptr,
            roff,
            rmask,
            c0,
            span,
            n_cols,
            cs,
            czp,
            mid_ptr,
            val_ptr,
            ELEM,
            SCALE,
            QMIN,
            QMAX,
            MBITS,
            EMIN,
            MAXN,
            N_LUT,
            ESHIFT,
            ROWS,
            BLOCK_K,
            NCHUNK,
        )
        tl.store(err_ptr + pid * n_clip + i, tl.sum(err, axis=0))


@triton.jit
def _stats_kernel(
    x_ptr,
    part_ptr,
    n_rows,
    n_cols,
    span,
    n_spans,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NCHUNK: tl.constexpr,
):
    """Per-tensor scales, pass 1: per-program finite absmax, min and max -> part_ptr[pid, 0:3]."""
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_r * ROWS + tl.arange(0, ROWS)
    rmask = rows < n_rows
    c0 = pid_s * span
    amax = tl.zeros((ROWS,), tl.float32)
    lo = tl.full((ROWS,), float("inf"), tl.float32)
    hi = tl.full((ROWS,), float("-inf"), tl.float32)
    for c in range(NCHUNK):
        cols = c0 + c * BLOCK_K + tl.arange(0, BLOCK_K)
        m = rmask[:, None] & (cols < n_cols)[None, :] & (cols < c0 + span)[None, :]
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * n_cols + cols[None, :], mask=m, other=0.0)
        x = x.to(tl.float32)
        fin = m & (tl.abs(x) < float("inf"))
        amax = tl.maximum(amax, tl.max(tl.where(fin, tl.abs(x), 0.0), axis=1))
        lo = tl.minimum(lo, tl.min(tl.where(fin, x, float("inf")), axis=1))
        hi = tl.maximum(hi, tl.max(tl.where(fin, x, float("-inf")), axis=1))
    pid = pid_r * n_spans + pid_s
    tl.store(part_ptr + pid * 3 + 0, tl.max(amax, axis=0))
    tl.store(part_ptr + pid * 3 + 1, tl.min(lo, axis=0))
    tl.store(part_ptr + pid * 3 + 2, tl.max(hi, axis=0))


@triton.jit
def _fake_quant_kernel(
    x_ptr,
    y_ptr,
    stats_ptr,
    mid_ptr,
    val_ptr,
    clip_ptr,
    sq_ptr,
    n_rows,
    n_cols,
    span,
    n_spans,
    n_clip,
    ELEM: tl.constexpr,
    SCALE: tl.constexpr,
    GLOBAL_STATS: tl.constexpr,
    QMIN: tl.constexpr,
    QMAX: tl.constexpr,
    MBITS: tl.constexpr,
    EMIN: tl.constexpr,
    MAXN: tl.constexpr,
    N_LUT: tl.constexpr,
    DIVISOR: tl.constexpr,
    EMAX_ELEM: tl.constexpr,
    ESHIFT: tl.constexpr,
    MSE: tl.constexpr,
    WITH_SQNR: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NCHUNK: tl.constexpr,
):
    """Fake-quantize ROWS rows x one scale span (pass 2 for per-tensor scales, the only pass otherwise).

    GLOBAL_STATS: read (absmax, min, max) from stats_ptr (per-tensor) instead of reducing the span.
    MSE: try scale * clip_ptr[i] for i < n_clip, keep per row the first with the least squared error.
    WITH_SQNR: store this program's fp32 sums of x**2 and (x - y)**2 over finite x to sq_ptr[pid, 0:2].
    """
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_r * ROWS + tl.arange(0, ROWS)
    rmask = rows < n_rows
    roff = rows[:, None].to(tl.int64) * n_cols
    c0 = pid_s * span

    # Pass 1: statistics of the span (finite values only: NaN and +-Inf never choose a scale).
    if GLOBAL_STATS:
        amax = tl.zeros((ROWS,), tl.float32) + tl.load(stats_ptr + 0)
        lo = tl.zeros((ROWS,), tl.float32) + tl.load(stats_ptr + 1)
        hi = tl.zeros((ROWS,), tl.float32) + tl.load(stats_ptr + 2)
    else:
        amax = tl.zeros((ROWS,), tl.float32)
        lo = tl.full((ROWS,), float("inf"), tl.float32)
        hi = tl.full((ROWS,), float("-inf"), tl.float32)
        for c in range(NCHUNK):
            cols = c0 + c * BLOCK_K + tl.arange(0, BLOCK_K)
            m = rmask[:, None] & (cols < n_cols)[None, :] & (cols < c0 + span)[None, :]
            x = tl.load(x_ptr + roff + cols[None, :], mask=m, other=0.0).to(tl.float32)
            fin = m & (tl.abs(x) < float("inf"))
            amax = tl.maximum(amax, tl.max(tl.where(fin, tl.abs(x), 0.0), axis=1))
            if SCALE == 1:
                lo = tl.minimum(lo, tl.min(tl.where(fin, x, float("inf")), axis=1))
                hi = tl.maximum(hi, tl.max(tl.where(fin, x, float("-inf")), axis=1))
    s, zp, inv = _scale_from_stats(amax, lo, hi, SCALE, QMIN, QMAX, DIVISOR, EMAX_ELEM, ESHIFT)

    # Optional MSE clipping search: candidate i scales the statistics by clip_ptr[i].
    if MSE:
        best = tl.full((ROWS,), float("inf"), tl.float64)
        for i in range(n_clip):
            r = tl.load(clip_ptr + i)
            cs, czp, _ = _scale_from_stats(
                amax * r, lo * r, hi * r, SCALE, QMIN, QMAX, DIVISOR, EMAX_ELEM, ESHIFT
            )
            err = _clip_err(
                x_ptr,
                roff,
                rmask,
                c0,
                span,
                n_cols,
                cs,
                czp,
                mid_ptr,
                val_ptr,
                ELEM,
                SCALE,
                QMIN,
                QMAX,
                MBITS,
                EMIN,
                MAXN,
                N_LUT,
                ESHIFT,
                ROWS,
                BLOCK_K,
                NCHUNK,
            )
            better = err < best
            best = tl.where(better, err, best)
            s = tl.where(better, cs, s)
            zp = tl.where(better, czp, zp)

    # Pass 2: quantize, store, and (optionally) the SQNR partial sums.
    sig = tl.zeros((ROWS,), tl.float32)
    noi = tl.zeros((ROWS,), tl.float32)
    for c in range(NCHUNK):
        cols = c0 + c * BLOCK_K + tl.arange(0, BLOCK_K)
        m = rmask[:, None] & (cols < n_cols)[None, :] & (cols < c0 + span)[None, :]
        xr = tl.load(x_ptr + roff + cols[None, :], mask=m, other=0.0)
        x = xr.to(tl.float32)
        y = _quant_tile(
            x,
            s[:, None],
            zp[:, None],
            inv[:, None],
            mid_ptr,
            val_ptr,
            ELEM,
            SCALE,
            ESHIFT,
            QMIN,
            QMAX,
            MBITS,
            EMIN,
            MAXN,
            N_LUT,
        )
        if xr.dtype == tl.bfloat16:
            y = _bf16_rne(y)
        yo = y.to(xr.dtype)
        tl.store(y_ptr + roff + cols[None, :], yo, mask=m)
        if WITH_SQNR:
            fin = m & (tl.abs(x) < float("inf"))
            d = tl.where(fin, x - yo.to(tl.float32), 0.0)
            xf = tl.where(fin, x, 0.0)
            sig += tl.sum(xf * xf, axis=1)
            noi += tl.sum(d * d, axis=1)
    if WITH_SQNR:
        pid = pid_r * n_spans + pid_s
        tl.store(sq_ptr + pid * 2 + 0, tl.sum(sig, axis=0))
        tl.store(sq_ptr + pid * 2 + 1, tl.sum(noi, axis=0))


__all__ = ["triton"]
