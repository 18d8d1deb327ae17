"""The optimised torch reference gives the same bits as the straightforward one it replaced.

``tests/kernels/_reference_v1.py`` is a frozen copy of ``qscale.kernels.reference`` before its CPU speed work
(chunking, in-place ops, raw-then-finite reductions, bit-built minifloat steps, LUT cell tables, batched
``-mse`` search, skipped no-op clamps). Outputs are compared as raw bits: signed zeros must match too, NaN
only by position. The independent numpy/ml_dtypes/float8 checks live in the other test files.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qscale.kernels.reference as ref
from qscale.formats import MINIFLOATS, get_format, list_formats
from qscale.kernels import fake_quant
from tests.kernels import _reference_v1 as v1

EXTRA = (
    "int8-pt-mse",
    "int4-pt-asym",
    "int4-g64-asym-mse",
    "int3-pc-asym-mse",
    "fp8-e4m3-g32",
    "fp6-e2m3-pt",
    "fp4-e2m1-raw",
    "mxfp8-e5m2-b128",
    "mxint8-b128",
    "nf4-pc",
    "nf2-pt",
    "nf8-g64",
    "cbrt8-g32",
    "cbrt2-g32",
    "lut[-1.5,-0.5,0.0,0.25,3.0]-g32",
    "lut[-1,0,1]-pt",
    "lut[-3,-1,1,3]-g64",
)
SPECS = tuple(list_formats()) + EXTRA


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64}.get(t.dtype, torch.int16))


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    same = (_bits(a) == _bits(b)) | (torch.isnan(a) & torch.isnan(b))
    bad = (~same).nonzero()
    assert bad.numel() == 0, (
        f"{bad.shape[0]} differ, first at {bad[:3].tolist()}: {a[tuple(bad[0])]} vs {b[tuple(bad[0])]}"
    )


def _hard(n: int, seed: int) -> torch.Tensor:
    """8 rows of length n: scales 1e-38..1e30, signed zeros, grid-like values, NaN/Inf, exact group maxima."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, n, generator=gen) * torch.logspace(-3, 3, n)
    x[0] *= 1e-38  # subnormal scales: the element clamps must stay
    x[1, ::7] = 0.0
    x[1, 3::11] = -0.0
    x[2] = torch.randn(n, generator=gen) * 0.02
    x[3] = torch.round(torch.randn(n, generator=gen) * 8) / 8  # many exact ties
    amax = float(2.0 ** torch.randint(-60, 60, (1,), generator=gen).item()) * 1.2345678
    x[4] = torch.where(torch.rand(n, generator=gen) < 0.5, amax, -amax)  # every element is +-amax
    x[5] = x[4] * (1 - 2.0**-23)
    x[6] = torch.randn(n, generator=gen) * 1e30
    if n > 3:
        x[7, 1], x[7, 2], x[7, n - 1] = float("nan"), float("inf"), float("-inf")
    return x


@pytest.mark.parametrize("spec", SPECS)
def test_fast_reference_equals_v1(spec: str) -> None:
    fmt = get_format(spec)
    for n in (576, 256, 100, 33, 1):
        x = _hard(n, seed=n)
        for dtype in (torch.float32, torch.bfloat16):
            xx = x.to(dtype)
            assert_same_bits(ref.fake_quant_reference(fmt, xx), v1.fake_quant_reference(fmt, xx))


@pytest.mark.parametrize(
    "spec", ["int4-g128", "int4-g64-mse", "int3-g64-asym", "fp8-e4m3-pc", "mxfp4", "nf4-g64"]
)
def test_fast_reference_chunking_layouts_and_sqnr(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few rows (and a ragged last chunk), 3-D, transposed and fp16 input, and the SQNR sums."""
    fmt = get_format(spec)
    monkeypatch.setattr(ref, "CHUNK_ELEMS", 1000)
    monkeypatch.setattr(ref, "MSE_BATCH_ELEMS", 3000)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(37, 576, generator=gen) * 0.02
    x[5, 9] = float("nan")
    for xx in (x, x.reshape(37, 4, 144), x[:, :320].t(), x.to(torch.float16), x[1:2]):
        assert_same_bits(ref.fake_quant_reference(fmt, xx), v1.fake_quant_reference(fmt, xx))
    for xx in (x[:, :512] * 1.0, x.t(), torch.randn(3, 5, 100, generator=gen)):
        q, s, n = ref.fake_quant_with_sqnr_reference(fmt, xx)
        q1, s1, n1 = v1.fake_quant_with_sqnr_reference(fmt, xx)
        assert_same_bits(q, q1)
        assert float(s) == float(s1) and float(n) == float(n1)  # the same float64 sums, bit for bit


@pytest.mark.parametrize(
    "spec", ["int4-g128", "int4-g128-mse", "int4-g128-asym-mse", "mxfp4", "nf4-g128", "fp4-e2m1-g128"]
)
def test_make_quantizer_equals_v1(spec: str) -> None:
    fmt = get_format(spec)
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(16, 64, generator=gen) * 0.02  # a partial group of 64 for the 128 formats
    other = torch.randn(16, 3, generator=gen) * 0.05
    a, b = ref.make_quantizer(fmt, w), v1.make_quantizer(fmt, w)
    assert_same_bits(a(w), b(w))
    assert_same_bits(a(other), b(other))


@pytest.mark.parametrize("name", list(MINIFLOATS))
def test_round_minifloat_equals_v1_dense(name: str) -> None:
    """Every fp32 with the low 12 mantissa bits zero in [0, max_normal] (plus their neighbours), both signs."""
    mini = MINIFLOATS[name]
    hi = int(np.float32(mini.max_normal).view(np.int32))
    pats = np.arange(0, hi + 1, 1 << 12, dtype=np.int64)
    pats = np.unique(np.concatenate([pats, pats + 1, np.maximum(pats - 1, 0)]))
    pats = pats[pats <= hi].astype(np.int32)
    y = torch.from_numpy(pats.view(np.float32).copy())
    y = torch.cat([y, -y])
    assert_same_bits(ref.round_minifloat(y, mini), v1.round_minifloat(y, mini))


@pytest.mark.parametrize(
    "spec", ["nf4-g64", "nf3-g64", "nf8-g64", "cbrt4-g128", "cbrt8-g32", "lut[-3,-1,0,1,3]-g32"]
)
def test_lut_cells_equal_bucketize(spec: str) -> None:
    """The cell-table lookup against bucketize on every boundary +-4 ulps, zeros, +-Inf, NaNs and a dense sweep."""
    fmt = get_format(spec)
    assert ref._lut_cells(fmt) is not None
    levels, bounds = ref.lut_tables(fmt)
    b = bounds.numpy()
    near = [b]
    for direction in (np.inf, -np.inf):
        cur = b.copy()
        for _ in range(4):
            cur = np.nextafter(cur, np.float32(direction))
            near.append(cur)
    rng = np.random.default_rng(0)
    sweep = (rng.uniform(-1.2, 1.2, 200_000) * 2.0 ** rng.integers(-30, 1, 200_000)).astype(np.float32)
    special = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 3.0e38, -3.0e38, 1e-45, -1e-45], np.float32
    )
    y = torch.from_numpy(np.concatenate([*near, sweep, special]).astype(np.float32))
    got = ref._lut_levels(fmt, y)
    want = torch.where(torch.isnan(y), y, levels[torch.bucketize(y, bounds, right=True)])
    assert_same_bits(got, want)
    nan_payloads = torch.tensor([0x7FC00001, 0x7FFFFFFF, -0x00400000, -1], dtype=torch.int32).view(
        torch.float32
    )
    assert bool(torch.isnan(ref._lut_levels(fmt, nan_payloads)).all())


def test_signaling_nan_input_stays_nan() -> None:
    """A NaN with the quiet bit clear (payload 1) is quieted by the first division and stays NaN everywhere."""
    x = torch.randn(2, 64)
    x.view(torch.int32)[0, 3] = 0x7F800001
    x.view(torch.int32)[1, 5] = -0x007FFFFF  # negative NaN, quiet bit clear
    for spec in ("int4-g32", "fp8-e4m3-pc", "fp4-e2m1-g32", "mxfp4", "mxint8", "nf4-g64", "cbrt4-g64"):
        q = fake_quant(get_format(spec), x)
        assert bool(torch.isnan(q[0, 3])) and bool(torch.isnan(q[1, 5])), spec
        assert int(torch.isnan(q).sum()) == 2, spec
