"""Element-level numerics of the torch reference against independent casts.

Minifloat rounding (round_minifloat) is compared on every representable value, every midpoint (ties)
and their fp32 neighbours with torch's float8 casts (E4M3fn, E5M2) and ml_dtypes (all five elements);
pow2 against the 255 finite E8M0 codes of ml_dtypes; floor_log2 against math.frexp.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from qscale.formats import MINIFLOATS, get_format
from qscale.kernels import fake_quant
from qscale.kernels.reference import floor_log2, pow2, round_minifloat

ML = {
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e2m1": ml_dtypes.float4_e2m1fn,
}
TORCH = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def _probe_points(grid: np.ndarray, max_normal: float) -> np.ndarray:
    """Grid values, midpoints (exact ties), and the fp32 neighbours of both; both signs; within range."""
    g = np.asarray(grid, np.float64)
    mids = (g[:-1] + g[1:]) / 2
    base = np.concatenate([g, mids]).astype(np.float32)
    up = np.nextafter(base, np.float32(np.inf))
    down = np.nextafter(base, np.float32(-np.inf))
    pts = np.concatenate([base, up, down])
    pts = pts[(pts >= 0) & (pts <= max_normal)]
    return np.concatenate([pts, -pts])


@pytest.mark.parametrize("name", list(MINIFLOATS))
def test_grid_matches_ml_dtypes(name: str) -> None:
    mini = MINIFLOATS[name]
    ours = np.array(mini.grid())
    dt = ML[name]
    # every value of our grid is representable (cast is identity) and the max normal matches finfo
    assert np.array_equal(ours.astype(np.float32).astype(dt).astype(np.float64), ours)
    assert float(ml_dtypes.finfo(dt).max) == mini.max_normal
    assert float(ml_dtypes.finfo(dt).smallest_subnormal) == mini.min_subnormal
    # count: 2^(bits-1) non-negative codes minus NaN/Inf encodings
    expected = {"e4m3": 127, "e5m2": 124, "e3m2": 32, "e2m3": 32, "e2m1": 8}[name]
    assert len(ours) == expected


@pytest.mark.parametrize("name", list(MINIFLOATS))
def test_round_minifloat_exhaustive_vs_ml_dtypes(name: str) -> None:
    mini = MINIFLOATS[name]
    pts = _probe_points(np.array(mini.grid()), mini.max_normal)
    # extra: tiny values around half the smallest subnormal (tie to 0) and random in-range values
    rng = np.random.default_rng(0)
    rand = rng.uniform(-1, 1, 20000) * np.exp2(rng.integers(mini.emin - mini.mbits - 3, mini.emax + 1, 20000))
    rand = np.clip(rand, -mini.max_normal, mini.max_normal).astype(np.float32)
    sub = np.float32(mini.min_subnormal)
    pts = np.concatenate([pts, rand, np.array([sub / 2, sub / 4, sub * 0.75, 0.0], np.float32)])
    ref = pts.astype(ML[name]).astype(np.float32)
    ours = round_minifloat(torch.from_numpy(pts), mini).numpy()
    bad = np.flatnonzero(ours != ref)
    assert bad.size == 0, f"{name}: {pts[bad[:5]]} -> ours {ours[bad[:5]]}, ml_dtypes {ref[bad[:5]]}"


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_fp8_raw_cast_vs_torch_float8(name: str) -> None:
    mini = MINIFLOATS[name]
    pts = torch.from_numpy(_probe_points(np.array(mini.grid()), mini.max_normal))
    ref = pts.to(TORCH[name]).to(torch.float32)
    ours = fake_quant(get_format(f"fp8-{name}-raw"), pts)
    assert torch.equal(ours, ref)
    # the reference decodes torch's every finite code to exactly our grid
    codes = torch.arange(256, dtype=torch.uint8).view(TORCH[name]).to(torch.float64)
    finite = codes[torch.isfinite(codes)].abs().unique().numpy()
    assert np.array_equal(finite, np.array(mini.grid()))


@pytest.mark.parametrize("name", list(MINIFLOATS))
def test_raw_cast_saturates(name: str) -> None:
    mini = MINIFLOATS[name]
    m = mini.max_normal
    x = torch.tensor([m * 1.01, m * 4, 1e30, float("inf"), -m * 1.01, float("-inf"), float("nan"), 0.0])
    q = fake_quant(get_format(f"fp{mini.bits}-{name}-raw"), x)
    assert q[:4].tolist() == [m] * 4
    assert q[4:6].tolist() == [-m, -m]
    assert math.isnan(q[6].item()) and q[7].item() == 0.0


def test_pow2_matches_e8m0_codes() -> None:
    e = torch.arange(-127, 128, dtype=torch.int32)
    ours = pow2(e).double().numpy()
    ref = np.arange(255, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float64)
    assert np.array_equal(ours, ref)
    assert ours[0] == 2.0**-127  # an fp32 subnormal, built exactly


def test_floor_log2_vs_frexp() -> None:
    rng = np.random.default_rng(1)
    a = np.abs(rng.standard_normal(5000) * np.exp2(rng.integers(-120, 120, 5000))).astype(np.float32)
    a = np.concatenate([a, np.exp2(np.arange(-126, 128)).astype(np.float32)])  # exact powers of two
    ours = floor_log2(torch.from_numpy(a)).numpy()
    ref = np.array([math.frexp(float(v))[1] - 1 for v in a])
    assert np.array_equal(ours, ref)
    assert floor_log2(torch.tensor([0.0, 1e-40])).tolist() == [-127, -127]  # zero and subnormal clamp low
