"""Triton fake quantization is bit-identical to the torch reference for every catalogue format.

Runs under Triton's CPU interpreter (TRITON_INTERPRET=1 is set before triton is imported; CI exports it too).
Inputs are small but adversarial: exact ties of the element grid times an exactly known scale, subnormals,
zeros and all-zero groups, max-normal boundaries and just above, huge and tiny magnitudes, NaN and +-Inf.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import dataclasses
import math

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from qscale.formats import get_format, list_formats  # noqa: E402
from qscale.kernels.reference import (  # noqa: E402
    fake_quant_reference,
    fake_quant_with_sqnr_reference,
    lut_tables,
)
from qscale.kernels.triton_kernels import (  # noqa: E402
    act_quant_triton,
    fake_quant_triton,
    fake_quant_triton_with_sqnr,
    plan_for,
    triton_available,
)

if not triton_available("cpu"):
    pytest.skip(
        "triton cannot run on CPU tensors here (TRITON_INTERPRET not active)", allow_module_level=True
    )

N_COLS = 256  # divisible by every group / block size in the catalogue (32, 64, 128)
EXTRA_SPECS = (
    "int8-pt-mse",
    "int4-pt-asym",
    "int4-g64-asym-mse",
    "int6-pc-asym",
    "fp8-e4m3-g32",
    "fp4-e2m1-pt",
    "fp6-e3m2-raw",
    "mxfp8-e4m3-b128",
    "mxint8-b128",
    "nf4-pc",
    "nf2-pt",
    "cbrt8-g32",
    "lut[-1.5,-0.5,0.0,0.25,3.0]-g32",
)
ALL_SPECS = tuple(list_formats()) + EXTRA_SPECS


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Exactly equal values, NaN in the same places (+0 and -0 count as equal), same dtype and shape."""
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _element_grid(fmt) -> tuple[np.ndarray, float]:
    """(non-negative element values in units of the scale, the value that pins the scale exactly).

    The pin is a group absmax whose scale is a power of two: qmax * 2^-3 for int (scale 2^-3),
    max_normal * 2^-2 for fp (scale 2^-2), max_normal for MX (E8M0 scale 1), max|level| for LUT (scale 1).
    """
    if fmt.family == "int":
        if not fmt.symmetric:
            return np.arange(fmt.qmax + 1, dtype=np.float64) / fmt.qmax, 1.0  # pin irrelevant
        return np.arange(fmt.qmax + 1, dtype=np.float64) * 0.125, fmt.qmax * 0.125
    if fmt.family == "fp":
        g = np.array(fmt.mini.grid())
        return (g, 1.0) if fmt.granularity == "none" else (g * 0.25, fmt.mini.max_normal * 0.25)
    if fmt.family == "mx":
        if fmt.is_int:
            k = 2.0 ** (fmt.element_bits - 2)
            return np.arange(int(fmt.max_normal * k) + 1) / k, 1.0
        return np.array(fmt.mini.grid()), fmt.mini.max_normal
    levels, _ = lut_tables(fmt)
    return levels.double().numpy(), float(levels.abs().max())


def adversarial(fmt, rows: int = 10, seed: int = 0) -> torch.Tensor:
    """A (rows, 256) fp32 tensor of hard cases for fmt (see the module docstring)."""
    rng = np.random.default_rng(seed)
    span = fmt.scale_span(N_COLS)
    x = np.zeros((rows, N_COLS), dtype=np.float64)
    x[0] = rng.standard_normal(N_COLS) * 0.02
    x[1] = rng.standard_t(2, N_COLS)  # heavy tails, outliers
    x[2] = rng.choice([-1, 1], N_COLS) * 10.0 ** rng.uniform(-7, 5, N_COLS)
    # exact ties: midpoints of the element grid in units of a scale pinned by the group's first element
    grid, pin = _element_grid(fmt)
    mids = (grid[:-1] + grid[1:]) / 2
    ties = rng.choice(np.concatenate([mids, grid]), N_COLS) * rng.choice([-1, 1], N_COLS)
    ties[::span] = pin
    x[3] = ties
    if fmt.family == "lut":  # LUT ties are the fp32 decision boundaries themselves
        _, bounds = lut_tables(fmt)
        b = bounds.double().numpy()
        x[3] = rng.choice(b, N_COLS)
        x[3, ::span] = pin
    # zeros, an all-zero group, NaN, +-Inf, -0
    x[4] = rng.standard_normal(N_COLS)
    x[4, :span] = 0.0
    x[4, span // 2] = -0.0
    if span < N_COLS:
        x[4, span + 1] = np.nan
        x[4, span + 2] = np.inf
        x[4, 2 * span - 1 if 2 * span <= N_COLS else span + 3] = -np.inf
    x[5] = rng.standard_normal(N_COLS) * 1e-39  # fp32 subnormals
    x[5, 7] = 2.0**-149
    x[6] = rng.standard_normal(N_COLS) * 1e30  # huge
    x[6, 3] = 3.0e38
    # MX: group maxima just below the next power of two saturate (E2M1: 7.99 -> X = 1, 7.99 -> 6)
    x[7] = rng.uniform(-1, 1, N_COLS) * 2.0 ** rng.integers(-20, 20, N_COLS)
    x[7, ::span] = np.nextafter(np.float32(8.0), np.float32(0)) * 2.0 ** rng.integers(-10, 10, N_COLS // span)
    x[8] = rng.standard_normal(N_COLS) * 1e-8
    x[9] = rng.standard_normal(N_COLS)
    x[9, 5] = np.nan
    return torch.from_numpy(x.astype(np.float32))


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_every_format_bit_identical_fp32(spec):
    fmt = get_format(spec)
    x = adversarial(fmt)
    assert_bits_equal(fake_quant_triton(fmt, x), fake_quant_reference(fmt, x))


REPRESENTATIVE = (
    "int4-g128",
    "int8-pt",
    "int4-g128-asym",
    "int3-g128-mse",
    "fp8-e4m3-pt",
    "fp8-e5m2-raw",
    "fp4-e2m1-g32",
    "mxfp4-e2m1-b32",
    "mxfp8-e4m3-b32",
    "mxint8-b32",
    "nf4-g64",
    "cbrt4-g128",
)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", REPRESENTATIVE)
def test_half_dtypes_bit_identical(spec, dtype):
    """fp16/bf16 in and out, 3-D input (scales along the last axis), including the fp32 -> half rounding."""
    fmt = get_format(spec)
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 3, N_COLS, generator=gen) * torch.logspace(-3, 3, N_COLS)).to(dtype)
    x[0, 0, 1] = float("nan")
    x[1, 2, 2] = float("-inf")
    y = fake_quant_triton(fmt, x)
    assert y.dtype == dtype and y.shape == x.shape
    assert_bits_equal(y, fake_quant_reference(fmt, x))


def test_random_scales_many_seeds():
    """Random inputs at several scales through int, fp, mx and lut (one per family), four seeds."""
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        scale = 10.0 ** (4 * seed - 6)
        x = torch.randn(16, 128, generator=gen) * scale
        for spec in ("int4-g32", "fp6-e2m3-pc", "mxfp6-e3m2-b32", "nf3-g64"):
            assert_bits_equal(
                fake_quant_triton(spec_fmt := get_format(spec), x), fake_quant_reference(spec_fmt, x)
            )


@pytest.mark.parametrize("spec", ["int4-g128", "fp8-e4m3-pt", "mxfp4-e2m1-b32", "nf4-g64", "int4-pc-mse"])
def test_sqnr_sums_match_reference(spec):
    """Elements bit-identical; fp32 per-program partials summed in float64 agree with float64 sums."""
    fmt = get_format(spec)
    x = adversarial(fmt)[[0, 1, 3, 4, 7, 9]]
    q, sig, noise = fake_quant_triton_with_sqnr(fmt, x)
    rq, rsig, rnoise = fake_quant_with_sqnr_reference(fmt, x)
    assert_bits_equal(q, rq)
    assert sig.dtype == torch.float64 and sig.dim() == 0
    assert float(sig) == pytest.approx(float(rsig), rel=1e-5)
    assert float(noise) == pytest.approx(float(rnoise), rel=1e-5)
    assert 0 < float(noise) < float(sig)


def _per_token(fmt):
    """The reference format act_quant_triton must equal: per-tensor formats become per-channel (per row)."""
    return dataclasses.replace(fmt, granularity="channel") if fmt.granularity == "tensor" else fmt


@pytest.mark.parametrize("spec", ["int8-pt", "fp8-e4m3-pt", "int8-pc", "mxfp8-e4m3-b32", "fp8-e4m3-raw"])
def test_act_quant_per_token(spec):
    """Per-token dynamic activation quantization: one scale per row, equal to the per-channel reference."""
    fmt = get_format(spec)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 5, 64, generator=gen, dtype=torch.float32)
    x[0, 1] *= 1000.0  # one loud token must not change the other tokens' scales
    x = x.to(torch.bfloat16)
    y = act_quant_triton(fmt, x)
    assert_bits_equal(y, fake_quant_reference(_per_token(fmt), x))
    if fmt.granularity == "tensor":
        quiet = act_quant_triton(fmt, x[1:])
        assert_bits_equal(y[1:], quiet)


def test_plans_for_catalogue():
    """Every catalogue format maps to a plan; constants spot-checked against the format docs."""
    for spec in list_formats():
        plan_for(get_format(spec))
    p = plan_for(get_format("mxint8-b32"))
    assert (p.elem, p.scale, p.qmax, p.eshift, p.group) == ("int", "e8m0", 127, 6, 32)
    p = plan_for(get_format("mxfp4"))
    assert (p.elem, p.mbits, p.emin, p.max_normal, p.emax_elem) == ("fp", 1, 0, 6.0, 2)
    p = plan_for(get_format("int4-g128-asym"))
    assert (p.scale, p.qmin, p.qmax) == ("minmax", 0, 15)
    assert len(plan_for(get_format("nf4")).thresholds) == 15


GROUP_SPECS = tuple(s for s in ALL_SPECS if get_format(s).granularity == "group")


@pytest.mark.parametrize("spec", GROUP_SPECS)
def test_partial_trailing_groups_bit_identical(spec):
    """Row lengths the group does not divide (576 = 4.5 x 128; odd 100, 33, 1): the masked last span
    quantizes the partial group with its own scale exactly as the reference does."""
    fmt = get_format(spec)
    gen = torch.Generator().manual_seed(11)
    for n in (576, 100, 33, 1):
        x = torch.randn(3, n, generator=gen) * torch.logspace(-3, 3, n)
        x[0, -1] = 50.0  # an outlier in the tail group only
        if n > 2:
            x[1, n - 2] = float("nan")
            x[2, n - 1] = float("-inf")
        y = fake_quant_triton(fmt, x)
        assert_bits_equal(y, fake_quant_reference(fmt, x))
        tail = n % fmt.group_size
        if tail:
            assert_bits_equal(y[:, n - tail :], fake_quant_triton(fmt, x[:, n - tail :].contiguous()))


@pytest.mark.parametrize("spec", ["int4-g128", "int4-g128-mse", "mxfp4-e2m1-b32", "nf4-g64"])
def test_partial_groups_half_dtypes_and_sqnr(spec):
    fmt = get_format(spec)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(2, 3, 200, generator=gen) * 0.02
    for dt in (torch.bfloat16, torch.float16):
        assert_bits_equal(fake_quant_triton(fmt, x.to(dt)), fake_quant_reference(fmt, x.to(dt)))
    q, sig, noise = fake_quant_triton_with_sqnr(fmt, x)
    rq, rsig, rnoise = fake_quant_with_sqnr_reference(fmt, x)
    assert_bits_equal(q, rq)
    assert float(sig) == pytest.approx(float(rsig), rel=1e-5)
    assert float(noise) == pytest.approx(float(rnoise), rel=1e-5)


def test_empty_and_float64():
    fmt = get_format("int4-g32")
    assert fake_quant_triton(fmt, torch.empty(0, 32)).shape == (0, 32)
    with pytest.raises(NotImplementedError, match="float32/float16/bfloat16"):
        fake_quant_triton(fmt, torch.randn(2, 32, dtype=torch.float64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("spec", REPRESENTATIVE)
def test_cuda_bit_identical(spec):
    """On a GPU: compiled kernels (not the interpreter) equal the reference computed on the same device."""
    fmt = get_format(spec)
    x = adversarial(fmt).cuda()
    assert_bits_equal(fake_quant_triton(fmt, x), fake_quant_reference(fmt, x))
    xb = (torch.randn(64, 4096, device="cuda") * 0.05).to(torch.bfloat16)
    assert_bits_equal(fake_quant_triton(fmt, xb), fake_quant_reference(fmt, xb))
    assert math.isfinite(float(fake_quant_triton_with_sqnr(fmt, xb)[2]))


def test_ptx_for_h100_is_exact_and_vectorised():
    """Compile (no GPU needed) for sm_90: IEEE division, no FMA contraction or flush-to-zero, 16-byte loads.

    Runs in a subprocess without TRITON_INTERPRET (the interpreter replaces triton.jit in this process).
    """
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "qscale.kernels.triton_ptx", "int4-g128", "mxfp4", "--dtype", "bf16"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        if "ptxas" in proc.stderr or "No such file" in proc.stderr:
            pytest.skip(f"no NVIDIA toolchain to compile with: {proc.stderr.strip().splitlines()[-1]}")
        raise AssertionError(proc.stderr)
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["spec"] for r in reports] == ["int4-g128", "mxfp4-e2m1-b32"]
    for r in reports:
        assert not r["approx_div"] and not r["fma_f32"] and not r["ftz"], r
        assert r["vector_loads"] > 0 and r["scalar_x_loads"] == 0, r
    assert reports[0]["div_rn_f32"]  # x / scale is an IEEE division like torch's
    assert not reports[1]["div_rn_f32"]  # E8M0 scales: exact multiplication by 2**-k, no division at all


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    spec=st.sampled_from(
        ["int3-g32", "int5-pc-asym", "fp6-e3m2-g64", "mxfp4-e2m1-b64", "mxint4-b32", "nf3-g32"]
    ),
    rows=st.integers(1, 9),
    groups=st.integers(1, 4),
    log_scale=st.integers(-40, 38),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes_and_magnitudes(spec, rows, groups, log_scale, dtype, seed):
    """Any row count, row length (whole groups), magnitude and dtype: bits equal the reference."""
    fmt = get_format(spec)
    n_cols = groups * 64
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, n_cols, generator=gen, dtype=torch.float64) * 10.0**log_scale).to(torch.float32)
    x = x.to(dtype)  # may overflow to +-Inf or flush to 0 in half precision: both are valid inputs
    assert_bits_equal(fake_quant_triton(fmt, x), fake_quant_reference(fmt, x))
