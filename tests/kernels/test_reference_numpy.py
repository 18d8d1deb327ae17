"""The torch reference against an independent numpy re-implementation of the documented numerics.

The numpy version loops over groups, takes minifloat and MX elements from ml_dtypes casts, finds LUT
levels by nearest-distance search (cube-root: by companding in float64) and derives MX scales with
math.frexp, so it shares no code with qscale.kernels.reference. Scales are fp32 like the spec says, so
the comparison is exact (bit for bit, NaN positions included), on every catalogue format.
"""

from __future__ import annotations

import math
import zlib

import ml_dtypes
import numpy as np
import pytest
import torch

from qscale.formats import (
    MSE_CLIP_RATIOS,
    FloatFormat,
    IntFormat,
    LUTFormat,
    MXFormat,
    get_format,
    list_formats,
)
from qscale.kernels import fake_quant

F32 = np.float32
ML = {
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e2m1": ml_dtypes.float4_e2m1fn,
}


def _cast(y: np.ndarray, element: str) -> np.ndarray:
    out = y.astype(ML[element]).astype(F32)
    return np.where(np.isnan(y), y, out)


def _int_group(fmt: IntFormat, g: np.ndarray, ratio: float) -> np.ndarray:
    fin = np.isfinite(g)
    gf = np.where(fin, g, F32(0))
    r = F32(ratio)
    qmax = F32(fmt.qmax)
    if fmt.symmetric:
        amax = F32(np.abs(gf).max())
        if ratio != 1.0:
            amax = F32(amax * r)
        s = F32(amax / qmax)
        s = F32(1) if s == 0 else s
        return (np.clip(np.round(g / s), -qmax, qmax) * s).astype(F32)
    lo, hi = F32(min(gf.min(), 0)), F32(max(gf.max(), 0))
    if ratio != 1.0:
        lo, hi = F32(lo * r), F32(hi * r)
    s = F32((hi - lo) / qmax)
    s = F32(1) if s == 0 else s
    z = F32(np.clip(np.round(-lo / s), 0, qmax))
    return ((np.clip(np.round(g / s) + z, 0, qmax) - z) * s).astype(F32)


def _int_mse_group(fmt: IntFormat, g: np.ndarray) -> np.ndarray:
    fin = np.isfinite(g)
    best, best_err = None, math.inf
    for r in MSE_CLIP_RATIOS:
        q = _int_group(fmt, g, r)
        err = float(np.sum((q[fin].astype(np.float64) - g[fin].astype(np.float64)) ** 2))
        if err < best_err:
            best, best_err = q, err
    assert best is not None
    return best


def _amax(g: np.ndarray) -> np.float32:
    return F32(np.abs(np.where(np.isfinite(g), g, 0)).max())


def _fp_group(fmt: FloatFormat, g: np.ndarray) -> np.ndarray:
    m = fmt.mini.max_normal
    if fmt.granularity == "none":
        s = F32(1)
    else:
        s = F32(_amax(g) / F32(m))
        s = F32(1) if s == 0 else s
    y = np.clip(g / s, -m, m).astype(F32)
    return (_cast(y, fmt.element) * s).astype(F32)


def _mx_group(fmt: MXFormat, g: np.ndarray) -> np.ndarray:
    amax = float(_amax(g))
    e = (math.frexp(amax)[1] - 1) if amax > 0 else -1000
    X = F32(2.0 ** min(max(e - fmt.emax_elem, -127), 127))
    m = F32(fmt.max_normal)
    y = np.clip(g / X, -m, m).astype(F32)
    if fmt.is_int:
        k = F32(2 ** (fmt.element_bits - 2))
        el = (np.round(y * k) / k).astype(F32)
    else:
        el = _cast(y, fmt.element)
    return (el * X).astype(F32)


def _lut_group(fmt: LUTFormat, g: np.ndarray) -> np.ndarray:
    levels64 = np.array(fmt.grid, np.float64)
    levels = levels64.astype(F32)
    top = F32(np.abs(levels).max())
    s = F32(_amax(g) / top)
    s = F32(1) if s == 0 else s
    y = (g / s).astype(F32)
    out = np.empty_like(y)
    mids = ((levels64[:-1] + levels64[1:]) / 2).astype(F32)
    for i, v in enumerate(y.astype(np.float64)):
        if np.isnan(v):
            out[i] = np.nan
            continue
        if fmt.kind == "cbrt":  # companding: round cbrt(v) * L to nearest integer, ties up
            L = 2 ** (fmt.bits - 1) - 1
            k = min(max(math.floor(np.cbrt(v) * L + 0.5), -L), L) if np.isfinite(v) else (L if v > 0 else -L)
            idx = k + L
        else:  # the level whose interval holds v; boundaries = fp32 midpoints, a tie goes up
            idx = int(np.sum(mids <= v))
        out[i] = F32(levels[idx] * s)
    return out


def _np_group(fmt, g: np.ndarray) -> np.ndarray:
    if isinstance(fmt, IntFormat):
        return _int_group(fmt, g, 1.0) if fmt.clip == "absmax" else _int_mse_group(fmt, g)
    if isinstance(fmt, FloatFormat):
        return _fp_group(fmt, g)
    if isinstance(fmt, MXFormat):
        return _mx_group(fmt, g)
    return _lut_group(fmt, g)


def np_fake_quant(fmt, x: np.ndarray) -> np.ndarray:
    """Group by group: each row is cut at 0, G, 2G, ... (G = group / block size, the row length for
    per-channel formats); the last piece may be shorter (a partial group, quantized on its own)."""
    x = np.asarray(x, F32)
    if fmt.per_tensor:
        return _np_group(fmt, x.reshape(-1)).reshape(x.shape)
    n = x.shape[-1]
    G = fmt.group_size if fmt.granularity == "group" else n
    rows = x.reshape(-1, n)
    out = np.empty_like(rows)
    for r, row in enumerate(rows):
        for start in range(0, n, G):
            out[r, start : start + G] = _np_group(fmt, row[start : start + G])
    return out.reshape(x.shape)


def _unit_grid(fmt) -> np.ndarray:
    """Non-negative element values of fmt when its scale is exactly 1 (to place exact ties)."""
    if isinstance(fmt, IntFormat):
        return np.arange(fmt.qmax + 1, dtype=np.float64)
    if isinstance(fmt, FloatFormat):
        return np.array(fmt.mini.grid())
    if isinstance(fmt, MXFormat):
        if fmt.is_int:
            k = 2 ** (fmt.element_bits - 2)
            return np.arange(2 * k) / k
        return np.array(fmt.mini.grid())
    return np.array([v for v in fmt.grid if v >= 0])


def _test_tensor(fmt, rng: np.random.Generator, rows: int = 4, cols: int = 256) -> np.ndarray:
    """Gaussian rows of different scales, heavy-tailed outliers, an all-zero group, exact zeros, a
    tiny-scale row, NaN and +-Inf, and a row of exact ties (midpoints of the grid at scale 1)."""
    x = rng.standard_normal((rows, cols)).astype(F32)
    x[0] *= F32(0.02)
    x[1] = rng.standard_t(2, cols).astype(F32) * F32(3.0)
    x[2, :64] = 0.0
    x[2, 64:] *= F32(1e-30)
    x[0, 5] = np.nan
    x[1, 7] = np.inf
    x[1, cols - 50] = -np.inf
    x[0, 100:110] = 0.0
    g = _unit_grid(fmt)
    mids = (g[:-1] + g[1:]) / 2
    top = g.max()
    if isinstance(fmt, MXFormat):  # max in [2^emax, 2^(emax+1)) gives X = 1
        top = fmt.max_normal
    ties = np.resize(np.concatenate([mids, -mids]), cols).astype(F32)
    ties[::16] = F32(top)  # every group (>= 16 wide) holds its max -> scale 1
    if isinstance(fmt, IntFormat) and not fmt.symmetric:
        ties = np.abs(ties)  # lo = 0, hi = qmax: scale 1, zero point 0
    x[3] = ties
    return x


@pytest.mark.parametrize("spec", list_formats())
def test_reference_matches_numpy(spec: str) -> None:
    fmt = get_format(spec)
    rng = np.random.default_rng(zlib.crc32(spec.encode()))
    x = _test_tensor(fmt, rng)
    ref = np_fake_quant(fmt, x)
    ours = fake_quant(fmt, torch.from_numpy(x)).numpy()
    same = (ours == ref) | (np.isnan(ours) & np.isnan(ref))
    bad = np.argwhere(~same)
    assert bad.size == 0, (
        f"{spec}: {len(bad)} mismatches, first at {bad[:3].tolist()}: x={x[tuple(bad[0])]}, ours={ours[tuple(bad[0])]}, ref={ref[tuple(bad[0])]}"
    )


@pytest.mark.parametrize(
    "spec",
    ["int4-g32-asym", "int3-pc-asym-mse", "fp6-e2m3-pt", "fp8-e5m2-g64", "mxfp4-e2m1-b64", "mxint7-b128",
     "nf2-pc", "cbrt5-g32", "lut[-1,-0.25,0,0.125,0.6,0.8]-g32", "lut[-3,-1,0,1,3]-pt"],
)  # fmt: skip
def test_reference_matches_numpy_off_catalogue(spec: str) -> None:
    fmt = get_format(spec)
    x = _test_tensor(fmt, np.random.default_rng(7), cols=128)
    ref = np_fake_quant(fmt, x)
    ours = fake_quant(fmt, torch.from_numpy(x)).numpy()
    assert np.array_equal(ours, ref, equal_nan=True)


def test_numpy_reference_hand_examples() -> None:
    """The independent reference itself, on numbers worked by hand."""
    # int4 symmetric, scale 7/7 = 1: 3.5 -> 4 and 2.5 -> 2 (half to even), -0.5 -> -0
    q = np_fake_quant(get_format("int4-pc"), np.array([[7.0, 3.5, 2.5, -0.5]]))
    assert q.tolist() == [[7.0, 4.0, 2.0, -0.0]]
    # MXFP4: block max 7 -> X = 1, 7 -> 6; block max 0.3 -> X = 2^-4, 0.3 -> 0.25
    x = np.zeros((1, 64), F32)
    x[0, 0], x[0, 32] = 7.0, 0.3
    q = np_fake_quant(get_format("mxfp4"), x)
    assert q[0, 0] == 6.0 and q[0, 32] == F32(0.25)


GROUP_FORMATS = [s for s in list_formats() if get_format(s).granularity == "group"]
#: Real model widths (SmolLM2 576 / 1536, Qwen2.5 896 / 4864 / 8960) and odd ones.
WIDTHS = (576, 896, 1536, 4864, 8960, 100, 33, 1)


def _width_tensor(fmt, n: int, rng: np.random.Generator) -> np.ndarray:
    """3 rows of length n: small gaussians with a loud tail, heavy tails with NaN/Inf in the tail, grid ties."""
    x = rng.standard_normal((3, n)).astype(F32) * F32(0.02)
    G = fmt.group_size
    t0 = (n // G) * G if n % G else max(n - G, 0)  # first column of the last (partial if n % G) group
    x[0, t0:] *= F32(1000.0)  # the last group is 1000x louder than the rest: a shared scale would show
    x[1] = (rng.standard_t(2, n) * 3.0).astype(F32)
    if n - t0 >= 3:
        x[1, n - 1], x[1, n - 2] = np.nan, -np.inf
    g = _unit_grid(fmt)
    mids = (g[:-1] + g[1:]) / 2
    top = fmt.max_normal if isinstance(fmt, MXFormat) else g.max()
    ties = np.resize(np.concatenate([mids, -mids]), n).astype(F32)
    ties[::16] = F32(top)  # each group start (G >= 16) holds the grid max: scale 1, full or partial
    if isinstance(fmt, IntFormat) and not fmt.symmetric:
        ties = np.abs(ties)
    x[2] = ties
    return x


@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("spec", GROUP_FORMATS)
def test_partial_groups_match_numpy(spec: str, n: int) -> None:
    """Every group/block catalogue format on real and odd widths: bit for bit against the group loop."""
    fmt = get_format(spec)
    x = _width_tensor(fmt, n, np.random.default_rng(zlib.crc32(f"{spec}/{n}".encode())))
    ours = fake_quant(fmt, torch.from_numpy(x)).numpy()
    ref = np_fake_quant(fmt, x)
    same = (ours == ref) | (np.isnan(ours) & np.isnan(ref))
    bad = np.argwhere(~same)
    assert bad.size == 0, f"{spec} n={n}: {len(bad)} mismatches, first at {bad[:3].tolist()}"


def test_numpy_reference_partial_group_hand_examples() -> None:
    """Partial groups worked by hand (the numpy reference and the torch kernel both)."""
    # int4-g128 on a row of 130: the 128-group has absmax 7 (scale 1), the 2-element tail [0.7, -1.4] its
    # own scale 1.4/7 = 0.2 -> [round(3.5) = 4 -> 0.8, -7 -> -1.4]; with the big group's scale 1 it would be [1, -1].
    x = np.zeros((1, 130), F32)
    x[0, 0] = 7.0
    x[0, 128:] = [0.7, -1.4]
    fmt = get_format("int4-g128")
    for q in (np_fake_quant(fmt, x), fake_quant(fmt, torch.from_numpy(x)).numpy()):
        assert q[0, 0] == 7.0 and q[0, 128] == F32(4) * F32(F32(1.4) / F32(7)) and q[0, 129] == F32(-1.4)
    # MXFP4 on 33: block 0 max 7 -> X = 1; the 1-element block [0.3] -> X = 2^(floor(log2 0.3) - 2) = 2^-4,
    # 0.3 / X = 4.8 -> 4 -> 0.25 (shared with block 0 it would be 0.3 -> 0.5 on the X = 1 grid).
    x = np.zeros((1, 33), F32)
    x[0, 0], x[0, 32] = 7.0, 0.3
    fmt = get_format("mxfp4")
    for q in (np_fake_quant(fmt, x), fake_quant(fmt, torch.from_numpy(x)).numpy()):
        assert q[0, 0] == 6.0 and q[0, 32] == F32(0.25)
    # nf4-g64 on 65: the lone tail element is its own absmax, so it maps to level 1 exactly (times itself).
    x = np.full((1, 65), 0.01, F32)
    x[0, 64] = -0.123
    for q in (
        np_fake_quant(get_format("nf4-g64"), x),
        fake_quant(get_format("nf4-g64"), torch.from_numpy(x)).numpy(),
    ):
        assert q[0, 64] == F32(-0.123) and np.all(q[0, :64] == F32(0.01))
