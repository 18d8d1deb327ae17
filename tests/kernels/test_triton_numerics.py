"""Triton kernel numerics against independent references (ml_dtypes casts, numpy fp32/fp64 recomputation).

These tests drive the kernels through :class:`KernelPlan` directly, so they check the device code without
the format layer. They run under Triton's CPU interpreter (TRITON_INTERPRET=1, set before triton is imported).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math

import numpy as np
import pytest
import torch

ml_dtypes = pytest.importorskip("ml_dtypes")
pytest.importorskip("triton", reason="triton is not installed")

from qscale.kernels.triton_kernels import (  # noqa: E402
    KernelPlan,
    TritonUnavailable,
    run_plan,
    triton_available,
    triton_next_pow2,
)

if not triton_available("cpu"):
    pytest.skip(
        "triton cannot run on CPU tensors here (TRITON_INTERPRET not active)", allow_module_level=True
    )

# name, ml_dtypes type, mbits, emin, max_normal
ELEMENTS = [
    ("e4m3", ml_dtypes.float8_e4m3fn, 3, -6, 448.0),
    ("e5m2", ml_dtypes.float8_e5m2, 2, -14, 57344.0),
    ("e3m2", ml_dtypes.float6_e3m2fn, 2, -2, 28.0),
    ("e2m3", ml_dtypes.float6_e2m3fn, 3, 0, 7.5),
    ("e2m1", ml_dtypes.float4_e2m1fn, 1, 0, 6.0),
]


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Exactly equal values (NaN where the other has NaN; +0 and -0 count as equal), same dtype."""
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _grid(mt: type, maxn: float) -> np.ndarray:
    """All non-negative finite values of an ml_dtypes element, ascending."""
    vals = np.arange(256, dtype=np.uint8).view(mt).astype(np.float64)
    vals = vals[np.isfinite(vals) & (vals >= 0) & (vals <= maxn)]
    return np.unique(vals)


def _adversarial(mt: type, maxn: float) -> np.ndarray:
    """Grid points, exact midpoints (ties), their fp32 neighbours, beyond max, specials, in fp32."""
    g = _grid(mt, maxn)
    mids = (g[:-1] + g[1:]) / 2
    m32 = mids.astype(np.float32)
    up = np.nextafter(m32, np.float32(np.inf))
    down = np.nextafter(m32, np.float32(0))
    over = np.array([maxn * 1.01, maxn * 1.5, maxn * 4, 3e38, np.inf], dtype=np.float32)
    tiny = np.array([1e-30, 1e-40, 2.0**-149, g[1] / 2, g[1] / 4], dtype=np.float32)
    pos = np.concatenate([g.astype(np.float32), m32, up, down, over, tiny])
    vals = np.concatenate([pos, -pos, np.array([0.0, -0.0, np.nan], dtype=np.float32)])
    return vals.astype(np.float32)


@pytest.mark.parametrize("name,mt,mbits,emin,maxn", ELEMENTS, ids=[e[0] for e in ELEMENTS])
def test_minifloat_rounding_matches_ml_dtypes(name, mt, mbits, emin, maxn):
    """Unscaled cast: RNE with subnormals and saturation equals ml_dtypes' cast of the clamped value."""
    x = torch.from_numpy(_adversarial(mt, maxn))
    n = x.numel()
    x = torch.nn.functional.pad(x, (0, (-n) % 64), value=0.0).reshape(-1, 64)
    plan = KernelPlan("fp", "none", "tensor", mbits=mbits, emin=emin, max_normal=maxn)
    y, _, _ = run_plan(plan, x)
    xn = x.numpy()
    ref = np.clip(xn, -maxn, maxn).astype(mt).astype(np.float32)
    ref = np.where(np.isnan(xn), np.nan, ref).astype(np.float32)
    assert_bits_equal(y, torch.from_numpy(ref))
    # Spot checks worked by hand (e4m3): a tie 9.5 * 2**-5 rounds to even 10 * 2**-5; 460 saturates.
    if name == "e4m3":
        probe = torch.tensor([[0.296875, 0.3, 460.0, 1e-3, -float("inf")]])
        got, _, _ = run_plan(plan, probe)
        assert got.tolist() == [[0.3125, 0.3125, 448.0, 2.0**-9, -448.0]]


def _np_int_fake_quant(x: np.ndarray, span: int, qmax: int) -> np.ndarray:
    """Symmetric restricted-range int fake quant in numpy fp32 (scale absmax/qmax, zero scale -> 1)."""
    rows, k = x.shape
    g = x.reshape(rows, k // span, span)
    fin = np.where(np.isfinite(g), np.abs(g), 0).astype(np.float32)
    s = (fin.max(axis=-1, keepdims=True) / np.float32(qmax)).astype(np.float32)
    s = np.where(s > 0, s, np.float32(1)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        q = np.clip(np.round(np.clip(g / s, -qmax, qmax)), -qmax, qmax).astype(np.float32) * s
    q = np.where(np.isnan(g), np.nan, q)
    return q.reshape(rows, k).astype(np.float32)


@pytest.mark.parametrize("granularity,group", [("group", 32), ("group", 128), ("channel", 0)])
@pytest.mark.parametrize("bits", [4, 8])
def test_int_symmetric_matches_numpy(granularity, group, bits):
    rng = np.random.default_rng(bits + group)
    x = (rng.standard_normal((9, 256)) * np.logspace(-3, 2, 256)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero group
    x[1, 5] = np.nan
    x[2, 7] = np.inf
    x[3, 9] = -np.inf
    qmax = 2 ** (bits - 1) - 1
    # exact ties: (k + 1/2) * scale with scale = 2**-3 (absmax 7 * 2**-3 fixes the scale exactly)
    x[4, :8] = (np.arange(8) - 3.5) * 0.125
    x[4, 8] = qmax * 0.125
    plan = KernelPlan("int", "absmax", granularity, group, qmin=-qmax, qmax=qmax, divisor=float(qmax))
    y, _, _ = run_plan(plan, torch.from_numpy(x))
    span = group or 256
    ref = _np_int_fake_quant(x, span, qmax)
    # +-Inf saturates to +-absmax of the finite values of its group (= +-qmax * scale).
    assert_bits_equal(y, torch.from_numpy(ref))
    assert y[0, :32].abs().sum() == 0


def test_int_asymmetric_hand_worked():
    """int4 asym, codes 0..15: group [-1, 0.5, 2]: lo=-1, hi=2, scale=0.2, zero=round(5)=5."""
    plan = KernelPlan("int", "minmax", "group", 4, qmin=0, qmax=15)
    x = torch.tensor(
        [[-1.0, 0.5, 2.0, 0.3], [1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-4.0, -1.0, -0.1, 0.0]]
    )
    y, _, _ = run_plan(plan, x)
    s0 = np.float32(3.0) / np.float32(15)
    s1 = np.float32(3.0) / np.float32(15)  # lo is widened to 0
    s3 = np.float32(4.0) / np.float32(15)
    z0 = np.round(np.float32(1.0) / s0)
    z3 = np.round(np.float32(4.0) / s3)
    exp = np.empty((4, 4), np.float32)
    for r, (s, z) in enumerate([(s0, z0), (s1, 0.0), (np.float32(1.0), 0.0), (s3, z3)]):
        q = np.clip(np.round(x[r].numpy() / s) + z, 0, 15)
        exp[r] = ((q - z) * s).astype(np.float32)
    assert_bits_equal(y, torch.from_numpy(exp))
    assert y[3, 3] == 0.0 and y[1, 3] == 0.0  # zero maps exactly to zero


def _np_mx(x: np.ndarray, block: int, mt: type, emax: int, maxn: float) -> np.ndarray:
    """MX via np.frexp (floor(log2 a) = e - 1, exact for subnormals too); all-zero block -> 2**-127."""
    rows, k = x.shape
    g = x.reshape(rows, k // block, block).astype(np.float64)
    amax = np.where(np.isfinite(g), np.abs(g), 0).max(axis=-1, keepdims=True)
    _, e = np.frexp(amax)
    k_exp = np.where(amax > 0, e - 1, -127) - emax
    scale = np.ldexp(1.0, np.clip(k_exp, -127, 127))
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.clip(g / scale, -maxn, maxn).astype(np.float32)
    q = v.astype(mt).astype(np.float64) * scale
    q = np.where(np.isnan(g), np.nan, q)
    return q.reshape(rows, k).astype(np.float32)


@pytest.mark.parametrize("name,mt,mbits,emin,maxn", [ELEMENTS[0], ELEMENTS[4]], ids=["mxfp8", "mxfp4"])
@pytest.mark.parametrize("block", [32, 128])
def test_mx_e8m0_matches_frexp_reference(name, mt, mbits, emin, maxn, block):
    emax = math.floor(math.log2(maxn))
    rng = np.random.default_rng(block)
    x = (rng.standard_normal((4, 256)) * np.float32(2.0) ** rng.integers(-30, 30, (4, 1))).astype(np.float32)
    x[0, :block] = 0.0  # all-zero block: scale 2**-127, stays zero
    x[1, :block] = rng.standard_normal(block).astype(np.float32) * np.float32(1e-39)  # fp32 subnormals
    x[1, block] = np.float32(2.0**-149)  # the smallest subnormal alone in a block
    x[1, block + 1 : 2 * block] = 0.0
    x[2, :block] = 1.0e38  # E8M0 clamps at 2**127 (floor(log2 1e38) - emax < 127 for fp4/fp8 anyway)
    x[2, 0] = 2.0**126 * 1.999  # just below a power of two
    x[3, :4] = [4.0, 8.0, np.nextafter(np.float32(8.0), np.float32(0)), np.nan]
    x[3, 4] = np.inf
    plan = KernelPlan("fp", "e8m0", "group", block, mbits=mbits, emin=emin, max_normal=maxn, emax_elem=emax)
    y, _, _ = run_plan(plan, torch.from_numpy(x))
    assert_bits_equal(y, torch.from_numpy(_np_mx(x, block, mt, emax, maxn)))


def test_lut_thresholds_tie_goes_up():
    """NF-like grid: a value exactly on a threshold takes the upper level; +-Inf take the extremes."""
    levels = (-1.0, -0.5, 0.0, 0.25, 1.0)
    plan = KernelPlan("lut", "absmax", "channel", lut=levels)
    row = torch.tensor([[1.0, -0.75, -0.25, 0.125, 0.625, 0.6249999, -1.0, 0.0, float("inf"), float("nan")]])
    y, _, _ = run_plan(plan, row)
    assert_bits_equal(
        y,
        torch.tensor([[1.0, -0.5, 0.0, 0.25, 1.0, 0.25, -1.0, 0.0, 1.0, float("nan")]], dtype=torch.float32),
    )


def test_mse_clip_search_matches_fp64_bruteforce():
    """Per-group MSE clipping: the kernel's choice equals an exhaustive float64 search (first best wins)."""
    ratios = tuple(round(1.0 - 0.02 * i, 2) for i in range(26))
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, (8, 128)).astype(np.float32)
    plan = KernelPlan("int", "absmax", "group", 64, qmin=-7, qmax=7, divisor=7.0, clip=ratios)
    y, _, _ = run_plan(plan, torch.from_numpy(x))
    g = x.reshape(8, 2, 64)
    amax = np.abs(g).max(-1, keepdims=True)
    best_err = np.full((8, 2, 1), np.inf)
    best_q = np.zeros_like(g)
    for r in ratios:
        s = ((amax * np.float32(r)).astype(np.float32) / np.float32(7)).astype(np.float32)
        q = (np.clip(np.round(g / s), -7, 7) * s).astype(np.float32)
        err = ((q.astype(np.float64) - g) ** 2).sum(-1, keepdims=True)
        better = err < best_err * (1 - 1e-6)  # float64 vs fp32 sums: only clear wins count here
        best_err = np.where(better, err, best_err)
        best_q = np.where(better, q, best_q)
    assert_bits_equal(y, torch.from_numpy(best_q.reshape(8, 128)))
    # and the clipped result is strictly better than plain absmax on these heavy tails
    plain, _, _ = run_plan(
        KernelPlan("int", "absmax", "group", 64, qmin=-7, qmax=7, divisor=7.0), torch.from_numpy(x)
    )
    assert ((y - torch.from_numpy(x)) ** 2).sum() < ((plain - torch.from_numpy(x)) ** 2).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sqnr_sums_and_dtypes(dtype):
    """Output keeps dtype and shape (3-D input, ragged row tiles); sums match float64 recomputation."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 5, 96, generator=gen) * 3).to(dtype)
    x[0, 0, 0] = float("nan")
    x[0, 0, 1] = float("inf")
    plan = KernelPlan("fp", "absmax", "group", 32, mbits=3, emin=-6, max_normal=448.0, divisor=448.0)
    y, sig, noise = run_plan(plan, x, with_sqnr=True)
    assert y.dtype == dtype and y.shape == x.shape
    y2, _, _ = run_plan(plan, x.float())  # same elements computed from the fp32 copy, rounded to dtype
    assert_bits_equal(y, y2.to(dtype))
    xf, yf = x.double(), y.double()
    fin = torch.isfinite(xf)
    assert float(sig) == pytest.approx(float((xf[fin] ** 2).sum()), rel=1e-5)
    assert float(noise) == pytest.approx(float(((xf - yf)[fin] ** 2).sum()), rel=1e-5)
    assert noise > 0


def test_chunked_rows_equal_single_chunk():
    """Per-channel rows longer than one column block (the multi-chunk loops) give the same bits."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 300, generator=gen)
    x[1, 299] = 40.0  # the absmax sits in the last, partial chunk
    for plan in [
        KernelPlan("int", "absmax", "channel", qmin=-7, qmax=7, divisor=7.0, clip=(1.0, 0.9, 0.8)),
        KernelPlan("int", "minmax", "tensor", qmin=0, qmax=15),
    ]:
        one, _, _ = run_plan(plan, x)
        many, _, _ = run_plan(plan, x, max_block=64, tile_elems=64)
        assert_bits_equal(one, many)
    # per-tensor: every element shares the global absmax 40 -> scale 40/15 (asym: lo=min, hi=40)
    lo = float(x.min())
    s = np.float32(np.float32(40.0) - np.float32(lo)) / np.float32(15)
    assert many[1, 299] == pytest.approx(40.0, abs=float(s))


def test_errors_name_the_problem(monkeypatch):
    plan = KernelPlan("int", "absmax", "channel", qmin=-7, qmax=7, divisor=7.0)
    with pytest.raises(TypeError, match="float32/float16/bfloat16"):
        run_plan(plan, torch.ones(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="valid: tensor, channel, group"):
        KernelPlan("int", "absmax", "row")
    with pytest.raises(ValueError, match="unknown element kind"):
        KernelPlan("float", "absmax", "channel")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(TritonUnavailable, match="backend='torch'"):
        run_plan(plan, torch.ones(2, 4))


def test_next_pow2():
    assert [triton_next_pow2(n) for n in (1, 2, 3, 100, 128, 129)] == [1, 2, 4, 128, 128, 256]


def test_autotune_candidates_agree_and_best_is_remembered():
    """Every (tile, num_warps) candidate gives the same bits; autotune returns and caches one of them."""
    from qscale.kernels.triton_kernels import _TUNED, _tune_key, autotune

    plan = KernelPlan("fp", "e8m0", "group", 32, mbits=1, emin=0, max_normal=6.0, emax_elem=2)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(8, 128, generator=gen)
    cands = ((64, 1), (512, 2), (4096, 4))
    outs = [run_plan(plan, x, tile_elems=t, num_warps=w)[0] for t, w in cands]
    for y in outs[1:]:
        assert_bits_equal(outs[0], y)
    best = autotune(plan, x, candidates=cands, reps=1)
    assert best in cands
    assert _TUNED.best[_tune_key(plan, x, False)] == best
