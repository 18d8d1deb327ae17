"""Torch reference fake quantization for every format (CPU and CUDA; the numerics Triton must match bit for bit).

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

On CPU tensors :func:`fake_quant_reference` runs the fused C loops of :mod:`qscale.kernels.cpu_fused`
(every format but the grouped ``-mse`` ones; built once with the system C compiler): the arithmetic below,
in the same order, one read of each group for its scale and one for its output, 1-2x a copy on the panel's
weight shapes instead of 3-19x. :func:`fake_quant_eager` is the op-by-op torch version (any device; the CPU
fallback when there is no compiler or ``QSCALE_CPU_FUSED=0``); ``tests/kernels/test_reference_fast_fused.py``
checks the two give the same bits. ``fake_quant_with_sqnr_reference`` builds its float64 terms in C too
(same tensors, same torch sums).

How the eager CPU path is made fast without changing a bit (``tests/kernels/test_reference_fast.py`` checks
it against a frozen copy of the straightforward version, signed zeros included; ``bench/fake_quant.md``):

* big tensors are processed in row chunks of about ``CHUNK_ELEMS`` elements (whole groups, so scales are
  unchanged; full and partial groups are strided views, not copies) with in-place elementwise ops writing
  straight into the output, so temporaries stay in cache and are not re-allocated;
* ``amax`` / ``min`` / ``max`` reduce the raw values and fall back to the finite-only reduction only
  when a result is not finite (a NaN/Inf in that chunk): max and min are exact, so this is the same;
* the clamp to the element range is skipped for symmetric absmax int and absmax-scaled fp when the
  chunk is finite and its scales are normal fp32 (then it provably changes nothing, see ``_params_for``);
* ``x / X`` for a power-of-two MX scale is computed as ``x * (1 / X)`` (both are the correctly rounded
  ``x * 2^-k``); minifloat rounding builds ``step`` from the exponent bits and rounds the signed value
  (round half to even is odd-symmetric, so no abs / copysign);
* LUT formats look the level up in a per-format cell table keyed by the top bits of an order-preserving
  integer image of ``y`` (each cell holds at most one decision boundary, resolved by one integer
  compare), built once and cached; formats whose boundaries are too dense fall back to ``bucketize``;
* ``-mse`` evaluates the 26 clip ratios of a batch of groups at once, in float64 as before, with the
  same per-group row sums; ``argmin`` keeps the first minimum like the strict ``<`` of the ratio loop;
* the SQNR sums skip the ``isfinite`` masks when ``sum x^2`` is finite (then every ``x`` is finite and
  the same tensors are summed in the same layout).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from qscale.formats.core import MSE_CLIP_RATIOS, FloatFormat, Format, IntFormat, LUTFormat, MXFormat
from qscale.formats.elements import E8M0_MAX_EXP, E8M0_MIN_EXP, MiniFloat
from qscale.kernels import cpu_fused

#: Elements per row chunk of the CPU path (fp32: 1 MiB), so a chunk and its temporaries stay in cache.
CHUNK_ELEMS = 1 << 18
#: Groups x ratios per batch of the vectorised ``-mse`` search (fp32 + fp64 temporaries: ~1.5 MiB).
MSE_BATCH_ELEMS = 1 << 17


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
    return _round_minifloat_(y.to(torch.float32, copy=True), mini)


def _round_minifloat_(y: torch.Tensor, mini: MiniFloat) -> torch.Tensor:
    """In-place :func:`round_minifloat` of an fp32 ``y`` (any strides); returns ``y``.

    The exponent field of ``|y|`` (``bits & 0x7F800000``), clamped at ``emin``, minus ``mbits`` is the bit
    pattern of ``step = 2^(max(e, emin) - mbits)``; ``round(y / step) * step`` equals
    ``copysign(round(|y| / step) * step, y)`` (round half to even is odd-symmetric). NaN stays NaN.
    """
    step = torch.bitwise_and(y.view(torch.int32), 0x7F800000)
    step.clamp_(min=(mini.emin + 127) << 23).sub_(mini.mbits << 23)
    st = step.view(torch.float32)
    return y.div_(st).round_().mul_(st)


def lut_tables(fmt: LUTFormat, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(levels, boundaries) of a LUT format as fp32 tensors (computed in float64, then rounded once)."""
    levels, bounds = _lut_tables_cpu(fmt)
    return levels.to(device, copy=True), bounds.to(device, copy=True)


@functools.lru_cache(maxsize=128)
def _lut_tables_cpu(fmt: LUTFormat) -> tuple[torch.Tensor, torch.Tensor]:
    levels = torch.tensor(fmt.grid, dtype=torch.float64).to(torch.float32)
    bounds = torch.tensor(fmt.boundaries, dtype=torch.float64).to(torch.float32)
    return levels, bounds


@functools.lru_cache(maxsize=128)
def _lut_tables_on(fmt: LUTFormat, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    levels, bounds = _lut_tables_cpu(fmt)
    return levels.to(device), bounds.to(device)


class _LUTCells(NamedTuple):
    """Cell tables of a LUT format: cell ``c = (key(y) >> (shift - 1)) & ~1`` plus ``offset`` (see below)."""

    shift: int
    offset: int
    thresholds: torch.Tensor  # int32, per 2 * cell + 1: the key of the cell's one boundary
    values: torch.Tensor  # fp32, per 2 * cell + {0, 1}: the level below / at-or-above that boundary


def _sortable_key_np(bits: np.ndarray) -> np.ndarray:
    """int32 image of fp32 bit patterns whose integer order is the float order (-0 just below +0)."""
    b = bits.astype(np.int64)
    return np.where(b < 2**31, b, (2**31 - 1) - b)  # negative floats: the int32 bits with the low 31 flipped


@functools.lru_cache(maxsize=128)
def _lut_cells(fmt: LUTFormat) -> _LUTCells | None:
    """Build the cell tables, or None when the decision boundaries are too dense for them.

    ``key(y) = bits ^ ((bits >> 31) & 0x7FFFFFFF)`` (int32 ``bits`` of fp32 ``y``) is increasing in the value of
    ``y`` (``-0`` just below ``+0``; NaNs beyond +-Inf). Cells are runs of ``2**shift`` consecutive keys;
    ``shift`` is the largest (the smallest table) with at most one boundary key inside any finite cell. For a
    ``y`` in cell ``c`` with ``T`` boundaries at or below the cell's first key, the level index is
    ``T + [key(y) >= threshold(c)]`` -- exactly ``bucketize(y, bounds, right=True)``. Cells of NaN keys hold
    NaN (so NaN stays NaN); the +-Inf cells the extreme levels (saturation).
    """
    levels, bounds = (t.numpy().astype(np.float32) for t in _lut_tables_cpu(fmt))
    bkeys = _sortable_key_np(bounds.view(np.uint32))
    bkeys = np.where(bounds == 0, -1, bkeys)  # y >= 0 holds for y = -0 too: compare with the key of -0
    pinf = 0x7F800000
    ninf = -0x7F800000 - 1  # key of -inf: 0x807FFFFF as int32
    for shift in range(22, 11, -1):  # shift <= 22 keeps quiet NaNs out of the +-Inf cells
        n_cells = 1 << (32 - shift)
        first = (np.arange(n_cells, dtype=np.int64) - (n_cells >> 1)) << shift  # first key of each cell
        last = first + (1 << shift) - 1
        t_lo = np.searchsorted(bkeys, first, side="right")  # boundaries with key <= first key
        t_hi = np.searchsorted(bkeys, last, side="right")
        finite = (first > ninf) & (last < pinf)
        if np.any((t_hi - t_lo)[finite] > 1):
            continue
        inside = (t_hi - t_lo) == 1
        thr = np.where(inside, bkeys[np.minimum(t_lo, len(bkeys) - 1)], first)
        lo_val = levels[t_lo]
        hi_val = np.where(inside, levels[np.minimum(t_lo + 1, len(levels) - 1)], lo_val)
        lo_val = lo_val.astype(np.float32)
        hi_val = hi_val.astype(np.float32)
        nan_cell = (first > pinf) | (last < ninf)
        lo_val[nan_cell] = hi_val[nan_cell] = np.nan
        inf_cell = (first <= pinf) & (last >= pinf)
        lo_val[inf_cell] = hi_val[inf_cell] = levels[-1]
        ninf_cell = (first <= ninf) & (last >= ninf)
        lo_val[ninf_cell] = hi_val[ninf_cell] = levels[0]
        thr[inf_cell | ninf_cell | nan_cell] = first[inf_cell | ninf_cell | nan_cell]
        thresholds = np.zeros(2 * n_cells, np.int32)
        thresholds[1::2] = thr.astype(np.int32)
        values = np.stack([lo_val, hi_val], axis=1).reshape(-1)
        return _LUTCells(shift, n_cells, torch.from_numpy(thresholds), torch.from_numpy(values))
    return None


def _lut_levels(fmt: LUTFormat, y: torch.Tensor) -> torch.Tensor:
    """``levels[bucketize(y, bounds, right=True)]`` for fp32 ``y`` (NaN -> NaN), as a new tensor."""
    cells = _lut_cells(fmt) if y.device.type == "cpu" else None
    if cells is None:
        levels, bounds = _lut_tables_on(fmt, y.device)
        q = levels[torch.bucketize(y.contiguous(), bounds, right=True)]
        return torch.where(torch.isnan(y), y, q)
    yc = y.contiguous()
    bits = yc.view(torch.int32)
    key = torch.bitwise_right_shift(bits, 31).bitwise_and_(0x7FFFFFFF).bitwise_xor_(bits)
    cell = torch.bitwise_right_shift(key, cells.shift - 1).bitwise_and_(-2).add_(cells.offset + 1)
    thr = cells.thresholds.index_select(0, cell.view(-1)).view(cell.shape)
    torch.sub(key, thr, out=thr).bitwise_right_shift_(31)  # -1 below the boundary, 0 at or above it
    cell.add_(thr)
    return cells.values.index_select(0, cell.view(-1)).view(y.shape)


def _nonzero(s: torch.Tensor) -> torch.Tensor:
    """``s`` with zeros replaced by 1 (in place: callers pass a fresh tensor)."""
    return s.masked_fill_(s == 0, 1.0)


def _finite(v: torch.Tensor) -> bool:
    """True when the 0-d ``v`` is finite (one host sync)."""
    return math.isfinite(float(v))


def _amax(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Absmax over the finite elements (keepdim), or of the whole tensor for ``dim=None``."""
    return _amax_finite(x, dim)[0]


def _amax_finite(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, bool]:
    """(:func:`_amax`, True when every element of ``x`` is known finite)."""
    if not x.is_cuda:  # max is exact: the plain reduction is right unless a NaN/Inf reached a result,
        a = x.abs().amax(dim=dim, keepdim=True) if dim is not None else x.abs().amax()
        if _finite(a.max()):  # and then the max of the results (NaN and +Inf propagate) says so
            return a, True
    a = torch.where(torch.isfinite(x), x.abs(), torch.zeros_like(x))
    return (a.amax(dim=dim, keepdim=True) if dim is not None else a.amax()), False


def _lo_hi(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min(min x, 0), max(max x, 0))`` over the finite elements (keepdim)."""
    lo, hi, _ = _lo_hi_finite(x, dim)
    return lo, hi


def _lo_hi_finite(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if not x.is_cuda:
        if dim is None:
            lo, hi = x.amin(), x.amax()
        else:
            lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
        if _finite(lo.min()) and _finite(hi.max()):  # -Inf/NaN reach lo.min(), +Inf/NaN hi.max()
            return lo.clamp_(max=0), hi.clamp_(min=0), True
    xz = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    if dim is None:
        return xz.amin().clamp(max=0), xz.amax().clamp(min=0), False
    return xz.amin(dim=dim, keepdim=True).clamp(max=0), xz.amax(dim=dim, keepdim=True).clamp(min=0), False


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


def _apply_int(
    fmt: IntFormat, x: torch.Tensor, p: QParams, out: torch.Tensor | None = None, saturate: bool = True
) -> torch.Tensor:
    y = torch.div(x, p.scale, out=out) if out is not None else torch.div(x, p.scale)
    if fmt.symmetric:
        y.round_()
        return (y.clamp_(-fmt.qmax, fmt.qmax) if saturate else y).mul_(p.scale)
    assert p.zero is not None
    return y.round_().add_(p.zero).clamp_(0, fmt.qmax).sub_(p.zero).mul_(p.scale)


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


def apply_params(
    fmt: Format, x: torch.Tensor, p: QParams, out: torch.Tensor | None = None, saturate: bool = True
) -> torch.Tensor:
    """Fake-quantize fp32 ``x`` with fixed parameters ``p`` (broadcast against ``x``).

    ``out`` (optional): an fp32 tensor (any strides) of the broadcast shape that receives the result.
    ``saturate=False`` skips the clamp of symmetric int and scaled fp elements to the element range; only
    for callers that proved it a no-op (see :func:`_params_for`).
    """
    if isinstance(fmt, IntFormat):
        return _apply_int(fmt, x, p, out, saturate)
    if isinstance(fmt, FloatFormat):
        m = fmt.mini
        y = _div_into(x, p.scale, out)
        if saturate:
            y.clamp_(-m.max_normal, m.max_normal)
        return _round_minifloat_(y, m).mul_(p.scale)
    if isinstance(fmt, MXFormat):
        # X is a power of two in [2^-127, 2^127]: x * (1 / X) is exactly x / X (both round x * 2^-k once)
        inv = torch.reciprocal(p.scale)
        y = torch.mul(x, inv, out=out) if out is not None else torch.mul(x, inv)
        y.clamp_(-fmt.max_normal, fmt.max_normal)
        if fmt.mini is not None:
            return _round_minifloat_(y, fmt.mini).mul_(p.scale)
        k = float(2 ** (fmt.element_bits - 2))
        return y.mul_(k).round_().div_(k).mul_(p.scale)
    if isinstance(fmt, LUTFormat):
        y = x / p.scale
        q = _lut_levels(fmt, y)
        return torch.mul(q, p.scale, out=out) if out is not None else q.mul_(p.scale)
    raise TypeError(f"no reference kernel for {type(fmt).__name__}")


def _div_into(x: torch.Tensor, s: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return torch.div(x, s, out=out) if out is not None else torch.div(x, s)


def _mse_search_seq(fmt: IntFormat, x: torch.Tensor, dim: int | None) -> QParams:
    """Ratio by ratio (per-tensor formats: the error of the whole tensor is one float64 sum)."""
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


@functools.lru_cache(maxsize=8)
def _ratios(device: torch.device) -> torch.Tensor:
    return torch.tensor(MSE_CLIP_RATIOS, dtype=torch.float32, device=device)


def _mse_search(fmt: IntFormat, x: torch.Tensor, dim: int | None) -> QParams:
    """Per-group clip ratio minimising the float64 squared error over finite elements (first minimum wins).

    Groups (rows of the reduced axis) are searched in batches: all ratios of a batch at once, the same
    fp32 scales and elements, the same float64 row sums as the ratio-by-ratio loop (:func:`_mse_search_seq`).
    """
    if dim is None:
        return _mse_search_seq(fmt, x, None)
    xm = x.movedim(dim, -1)
    lead, span = xm.shape[:-1], xm.shape[-1]
    xg = xm.reshape(-1, span)
    n_groups = xg.shape[0]
    scale = torch.empty((n_groups, 1), dtype=torch.float32, device=x.device)
    zero = None if fmt.symmetric else torch.empty_like(scale)
    ratios = _ratios(x.device).view(-1, 1, 1)
    per = max(1, MSE_BATCH_ELEMS // (span * len(MSE_CLIP_RATIOS)))
    for g0 in range(0, n_groups, per):
        xc = xg[g0 : g0 + per]
        if fmt.symmetric:
            amax, finite = _amax_finite(xc, -1)
        else:
            lo, hi, finite = _lo_hi_finite(xc, -1)
        if not finite:  # non-finite elements add no error: search on them as zeros
            xc = torch.where(torch.isfinite(xc), xc, torch.zeros_like(xc))
        # (ratios, groups, 1) parameters, exactly _int_params(fmt, xz, -1, r) for every r
        if fmt.symmetric:
            s = _nonzero(amax * ratios / fmt.qmax)
            q = torch.div(xc, s).round_().clamp_(-fmt.qmax, fmt.qmax).mul_(s)
        else:
            lo_r, hi_r = lo * ratios, hi * ratios
            s = _nonzero((hi_r - lo_r) / fmt.qmax)
            z = torch.clamp(torch.round(-lo_r / s), 0, fmt.qmax)
            q = torch.div(xc, s).round_().add_(z).clamp_(0, fmt.qmax).sub_(z).mul_(s)
        d = q.double().sub_(xc.double())
        err = d.mul_(d).sum(dim=-1)  # (ratios, groups): the same row sums as (q.double() - xd) ** 2
        best = torch.argmin(err, dim=0).view(1, -1, 1)  # first minimum, like the strict `<` of the loop
        scale[g0 : g0 + per] = s.gather(0, best).squeeze(0)
        if zero is not None:
            zero[g0 : g0 + per] = z.gather(0, best).squeeze(0)
    shape = (*lead, 1)
    sc = scale.view(shape).movedim(-1, dim)
    return QParams(sc, None if zero is None else zero.view(shape).movedim(-1, dim))


# ------------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------------
def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fake_quant expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"fake_quant expects a floating-point tensor (fp32/fp16/bf16), got {x.dtype}")


def fake_quant_reference(fmt: Format, x: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize ``x`` in ``fmt`` (same shape and dtype; fp32 arithmetic).

    CPU tensors go through the fused C loops of :mod:`qscale.kernels.cpu_fused` when they are available and
    cover ``fmt`` (the same bits, one pass); everything else through :func:`fake_quant_eager`.
    """
    _check_input(x)
    if x.numel() == 0:
        return x.clone()
    if x.is_cpu:
        kernel = cpu_fused.kernel_for(fmt)
        if kernel is not None:
            params = None
            if fmt.per_tensor and isinstance(fmt, IntFormat) and fmt.clip != "absmax":
                p = compute_params(fmt, x.reshape(-1).to(torch.float32), None)  # the -mse search stays here
                params = (float(p.scale), 0.0 if p.zero is None else float(p.zero))
            return cpu_fused.fake_quant_fused(fmt, x, params, kernel)
    return fake_quant_eager(fmt, x)


def fake_quant_eager(fmt: Format, x: torch.Tensor) -> torch.Tensor:
    """:func:`fake_quant_reference` op by op in torch (any device): the specification the fused CPU loops
    and the Triton kernels reproduce bit for bit."""
    _check_input(x)
    if x.numel() == 0:
        return x.clone()
    shape = x.shape
    cpu = x.device.type == "cpu"
    if fmt.per_tensor:
        xf = x.reshape(-1).to(torch.float32)
        p = compute_params(fmt, xf, None)
        out = torch.empty(xf.shape, dtype=x.dtype, device=x.device)
        step = CHUNK_ELEMS if cpu else xf.numel()
        for i in range(0, xf.numel(), step):
            oc = out[i : i + step]
            if oc.dtype == torch.float32:
                apply_params(fmt, xf[i : i + step], p, out=oc)
            else:
                oc.copy_(apply_params(fmt, xf[i : i + step], p))
        return out.reshape(shape)
    n = shape[-1] if x.dim() else 1
    x2 = x.reshape(-1, n)
    span = min(fmt.scale_span(n), n)
    n_full = (n // span) * span
    # (first column, width, group): the full groups, then the partial trailing group with its own scale
    parts = [(c0, w, g) for c0, w, g in ((0, n_full, span), (n_full, n - n_full, n - n_full)) if w]
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    rows = max(1, CHUNK_ELEMS // n) if cpu else x2.shape[0]
    for r0 in range(0, x2.shape[0], rows):
        xc, oc = x2[r0 : r0 + rows].to(torch.float32), out[r0 : r0 + rows]
        target = oc if oc.dtype == torch.float32 else torch.empty_like(xc)
        for c0, w, g in parts:  # (rows, w // g, g) views of the columns, no copies
            xg = xc[:, c0 : c0 + w].unflatten(1, (w // g, g))
            p, saturate = _params_for(fmt, xg, -1)
            apply_params(fmt, xg, p, target[:, c0 : c0 + w].unflatten(1, (w // g, g)), saturate)
        if target is not oc:
            oc.copy_(target)
    return out.reshape(shape)


def _params_for(fmt: Format, x: torch.Tensor, dim: int | None) -> tuple[QParams, bool]:
    """``(compute_params(fmt, x, dim), saturate)``: ``saturate`` is False when the element clamp is a no-op.

    For symmetric absmax int and absmax-scaled fp, with every ``x`` finite and every scale a normal fp32
    (``s = amax / M`` then has relative error <= 2^-24): ``|x / s| <= M (1 + 2^-23)``, which rounds to at most
    ``qmax`` (int) or to ``max_normal`` (fp: ``M (1 + 2^-22)`` is within half a quantum of it), so clamping
    to +-M first changes nothing.
    """
    if (isinstance(fmt, IntFormat) and fmt.symmetric and fmt.clip == "absmax") or (
        isinstance(fmt, FloatFormat) and fmt.granularity != "none"
    ):
        amax, finite = _amax_finite(x, dim)
        divisor = fmt.qmax if isinstance(fmt, IntFormat) else fmt.mini.max_normal
        s = _nonzero(amax / divisor)
        safe = finite and float(s.min()) >= 2.0**-126
        return QParams(s), not safe
    return compute_params(fmt, x, dim), True


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
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous() and cpu_fused.available():
        # the float64 terms x * x and (q - x)^2 built in one C pass: the same tensors as below, same sums
        xx, dd = cpu_fused.sq_terms(x, q)
        signal = xx.sum()
        if _finite(signal):
            return q, signal, dd.sum()
    xd = x.double()
    if not x.is_cuda and x.is_contiguous():
        # signal is finite iff every x is (a finite fp32 squared is < 2^256): then the masks below keep
        # everything and the same tensors are summed in the same layout, without isfinite/where passes
        signal = (xd * xd).sum()
        if _finite(signal):
            d = q.double().sub_(xd)  # q - x: the same squares as (x - q) ** 2
            return q, signal, d.mul_(d).sum()
    fin = torch.isfinite(xd)
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    signal = torch.where(fin, xd * xd, zero).sum()
    noise = torch.where(fin, (xd - q.double()) ** 2, zero).sum()
    return q, signal, noise


__all__ = [
    "CHUNK_ELEMS",
    "QParams",
    "apply_params",
    "compute_params",
    "fake_quant_eager",
    "fake_quant_reference",
    "fake_quant_with_sqnr_reference",
    "floor_log2",
    "lut_tables",
    "make_quantizer",
    "pow2",
    "round_minifloat",
]
