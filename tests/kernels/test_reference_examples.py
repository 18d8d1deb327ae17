"""Hand-worked examples: MX scale selection and saturation, MXINT8, int, fp, LUT; NaN/Inf/zero policy per
family; make_quantizer invariants; dtypes and leading dims; kernel backend dispatch and SQNR sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qscale.formats import get_format, list_formats
from qscale.kernels import (
    ENV_VAR,
    fake_quant,
    fake_quant_with_sqnr,
    get_backend,
    make_quantizer,
    resolve_backend,
    set_backend,
)

F32 = np.float32
NAN, INF = float("nan"), float("inf")


def fq(spec: str, values: list[float], width: int | None = None) -> list[float]:
    """Fake-quantize one row (zero-padded to ``width``) and return the first len(values) results."""
    row = torch.zeros(width or len(values))
    row[: len(values)] = torch.tensor(values)
    return fake_quant(get_format(spec), row[None])[0, : len(values)].tolist()


def same(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------------------
# MX (OCP v1.0) scale selection
# ------------------------------------------------------------------------------------------------------
def test_mxfp4_block_max_7_saturates_to_6() -> None:
    # floor(log2 7) = 2, emax(E2M1) = 2 -> X = 2^0 = 1; 7 -> 6 (saturate); 2.5 -> 2 (tie to even mantissa);
    # 0.25 -> 0 (tie between 0 and 0.5 -> 0); 0.75 -> 1.0 (tie between 0.5 and 1 -> 1.0, even)
    assert fq("mxfp4", [7.0, 2.5, 0.25, 0.75, -5.0, 3.5], 32) == [6.0, 2.0, 0.0, 1.0, -4.0, 4.0]


def test_mxfp4_block_max_0_3() -> None:
    # floor(log2 0.3) = -2 -> X = 2^-4; 0.3/X = 4.8 -> 4 -> 0.25; 0.1/X = 1.6 -> 1.5 -> 0.09375
    assert fq("mxfp4", [0.3, 0.1, -0.05], 32) == [0.25, 0.09375, -0.0625]


def test_mx_blocks_are_independent_and_sized() -> None:
    x = torch.zeros(1, 64)
    x[0, 0], x[0, 1], x[0, 32], x[0, 33] = 7.0, 1.0, 0.3, 0.1
    q = fake_quant(get_format("mxfp4"), x)[0]
    assert q[[0, 1, 32, 33]].tolist() == [6.0, 1.0, 0.25, 0.09375]
    q64 = fake_quant(get_format("mxfp4-b64"), x)[0]  # one block: X = 1, 0.3 -> 0.5 (E2M1), 0.1 -> 0
    assert q64[[0, 1, 32, 33]].tolist() == [6.0, 1.0, 0.5, 0.0]


def test_mxfp8_e4m3_and_e5m2_scales() -> None:
    # E4M3 emax 8: block max 1000 -> floor(log2) = 9 -> X = 2; 1000/2 = 500 -> saturates to 448 -> 896
    assert fq("mxfp8-e4m3", [1000.0, 3.0], 32) == [896.0, 3.0]
    # E5M2 emax 15: block max 1.0 -> X = 2^-15; 1.0 exact; 0.3 -> 0.3*2^15 = 9830.4 -> 10240 (E5M2 step 2048)
    assert fq("mxfp8-e5m2", [1.0, 0.3], 32) == [1.0, 10240 * 2.0**-15]


def test_mxint8_examples() -> None:
    # max 1.5 -> X = 1; elements k/64: 0.01 -> round(0.64) = 1 -> 1/64
    assert fq("mxint8", [1.5, 0.01, -0.75], 32) == [1.5, 1 / 64, -0.75]
    # max 3.99 -> floor(log2) = 1 -> X = 2; 3.99/2 = 1.995 -> clamp to 2 - 2^-6 = 1.984375 -> 3.96875
    # negative side clamps symmetrically: -3.99 -> -3.96875 (the code -2.0 is never produced)
    assert fq("mxint8", [3.99, -3.99, 1.0], 32) == [3.96875, -3.96875, 1.0]
    # MXINT4: implicit scale 2^-2, max 1.75; block max 0.9 -> X = 2^-1; 0.9/0.5 = 1.8 -> 1.75 -> 0.875
    assert fq("mxint4", [0.9, 0.3], 32) == [0.875, 0.25]


def test_mx_e8m0_scale_clamps() -> None:
    # huge block max: floor(log2 3e38) = 127, emax 2 -> X = 2^125; 3e38/2^125 = 7.05 -> 6 -> 6 * 2^125
    assert fq("mxfp4", [3e38], 32) == [6.0 * 2.0**125]
    # tiny block max 1e-40 (fp32 subnormal): X clamps to 2^-127; 1e-40/2^-127 = 0.017 -> 0 in E2M1
    assert fq("mxfp4", [1e-40], 32) == [0.0]
    # max 2^-126 with MXINT8 (emax 0): X = 2^-126 exactly, value exact
    assert fq("mxint8", [2.0**-126], 32) == [2.0**-126]


# ------------------------------------------------------------------------------------------------------
# int / fp / lut by hand
# ------------------------------------------------------------------------------------------------------
def test_int4_symmetric_by_hand() -> None:
    s = float(F32(1.4) / F32(7))
    q = fq("int4-pc", [0.7, -1.4, 0.1])
    assert q == [float(F32(4) * F32(s)), float(F32(-7) * F32(s)), float(F32(0) * F32(s))]
    assert fq("int4-pc", [7.0, 3.5, 2.5, -0.5, -7.0]) == [7.0, 4.0, 2.0, -0.0, -7.0]  # half to even
    assert fq("int8-pc", [127.0, 0.5, 1.5]) == [127.0, 0.0, 2.0]


def test_int4_asym_by_hand() -> None:
    # lo -0.5, hi 1.0 -> s = 1.5/15 = 0.1, z = round(5) = 5; 0.26 -> round(2.6) + 5 = 8 -> 0.3
    s = F32(F32(1.5) / F32(15))
    assert fq("int4-pc-asym", [1.0, -0.5, 0.26, 0.0]) == [
        float(F32(10) * s),
        float(F32(-5) * s),
        float(F32(3) * s),
        0.0,
    ]
    # all-positive row: range widened to include 0 -> lo = 0, z = 0
    assert fq("int2-pc-asym", [3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]


def test_int_mse_clipping_by_hand() -> None:
    # a Gaussian row with one 4-sigma value: clipping it trades its error for finer steps elsewhere
    rng = np.random.default_rng(0)
    x = [4.0] + rng.standard_normal(255).clip(-2.5, 2.5).astype(F32).tolist()
    q_abs, q_mse = np.array(fq("int4-pc", x)), np.array(fq("int4-pc-mse", x))
    e_abs, e_mse = ((q_abs - x) ** 2).sum(), ((q_mse - x) ** 2).sum()
    assert e_mse < 0.9 * e_abs
    # it is the best of the 26 ratios: recompute every candidate in float64 and compare
    xs = np.array(x, np.float64)
    errs = []
    for r in [1.0 - 0.02 * i for i in range(26)]:
        s = float(F32(F32(F32(4.0) * F32(round(r, 2))) / F32(7)))
        qq = np.clip(np.round(xs / s), -7, 7) * s
        errs.append(((qq - xs) ** 2).sum())
    assert e_mse == pytest.approx(min(errs), rel=1e-6)


def test_fp4_scaled_by_hand() -> None:
    # scale = 3/6 = 0.5; 0.4/0.5 = 0.8 -> 1.0 -> 0.5; 1.3/0.5 = 2.6 -> 3 -> 1.5
    assert fq("fp4-e2m1-pc", [3.0, 0.4, 1.3, -2.0]) == [3.0, 0.5, 1.5, -2.0]
    # fp8-e4m3 per tensor: scale = 448/448 = 1, so fake_quant is the plain cast
    assert fq("fp8-e4m3-pt", [448.0, 0.3, 17.0]) == [
        448.0,
        float(torch.tensor(0.3).to(torch.float8_e4m3fn)),
        16.0,
    ]


def test_nf4_by_hand() -> None:
    # scale 2; 1.0/2 = 0.5 -> nearest NF4 level 0.4407 (0.0593 away; 0.5626 is 0.0626 away)
    q = fq("nf4", [2.0, 1.0, -2.0, -0.1], 64)
    assert q[0] == 2.0 and q[2] == -2.0
    assert q[1] == pytest.approx(2 * 0.4407098, abs=1e-6)
    # -0.1/2 = -0.05 lies between levels -0.0910500 (0.0411 away) and 0 (0.05 away)
    assert q[3] == pytest.approx(2 * -0.0910500, abs=1e-6)


def test_cbrt4_by_hand() -> None:
    # scale 1; y = 0.1: cbrt(0.1) * 7 = 3.249 -> 3 -> (3/7)^3 = 27/343
    assert fq("cbrt4", [1.0, 0.1, -0.5], 128)[:3] == pytest.approx(
        [1.0, 27 / 343, -((round(0.5 ** (1 / 3) * 7) / 7) ** 3)]
    )
    # a value exactly on an fp32 decision boundary goes to the upper level
    b = float(F32((0.5 / 7) ** 3))
    assert fq("cbrt4", [1.0, b, -b], 128)[1:3] == [float(F32(1 / 343)), 0.0]


# ------------------------------------------------------------------------------------------------------
# NaN / Inf / zero policy, every family
# ------------------------------------------------------------------------------------------------------
def test_nan_inf_policy_int() -> None:
    s = F32(F32(1.4) / F32(7))
    top = float(F32(7) * s)
    assert same(
        fq("int4-pc", [INF, 1.4, -0.7, NAN, -INF, 0.0]), [top, top, float(F32(-4) * s), NAN, -top, 0.0]
    )
    s = F32(F32(1.5) / F32(15))
    assert same(fq("int4-pc-asym", [INF, 1.0, -0.5, NAN, -INF, 0.0]),
                [float(F32(10) * s), float(F32(10) * s), float(F32(-5) * s), NAN, float(F32(-5) * s), 0.0])  # fmt: skip
    q = fq("int4-pc-mse", [INF, 100.0, 1.0, NAN, -INF, 0.0] + [1.0, -2.0, 3.0] * 10)
    assert q[0] == q[1] == -q[4] and math.isnan(q[3]) and q[5] == 0.0  # +-Inf -> +-(clipped top)


def test_nan_inf_policy_fp_mx_lut() -> None:
    assert same(fq("fp4-e2m1-pc", [INF, 3.0, 0.4, NAN, -INF, 0.0]), [3.0, 3.0, 0.5, NAN, -3.0, 0.0])
    # MX: block max 3 -> X = 0.5; Inf -> 6 * X = 3
    assert same(fq("mxfp4", [INF, 3.0, 0.4, NAN, -INF, 0.0], 32), [3.0, 3.0, 0.5, NAN, -3.0, 0.0])
    # MX: block max 4 -> X = 1; Inf -> max_normal * X = 6 (larger than any finite value's result)
    assert same(fq("mxfp4", [INF, 4.0, NAN, -INF], 32), [6.0, 4.0, NAN, -6.0])
    assert same(fq("mxint8", [INF, 1.0, NAN, -INF], 32), [1.984375, 1.0, NAN, -1.984375])
    assert same(fq("nf4", [INF, 2.0, NAN, -INF, 0.0], 64), [2.0, 2.0, NAN, -2.0, 0.0])
    assert same(fq("cbrt4", [INF, 2.0, NAN, -INF, 0.0], 128), [2.0, 2.0, NAN, -2.0, 0.0])
    assert same(fq("fp8-e4m3-raw", [INF, NAN, -INF]), [448.0, NAN, -448.0])


def test_all_nan_or_inf_only_groups() -> None:
    # finite values all zero -> unit scale (int/fp/lut) or 2^-127 (mx); NaN stays, zeros stay, Inf saturates
    assert same(fq("int4-pc", [NAN, 0.0, INF]), [NAN, 0.0, 7.0])
    assert same(fq("fp4-e2m1-pc", [NAN, 0.0, -INF]), [NAN, 0.0, -6.0])
    assert same(fq("nf4", [NAN, 0.0, INF], 64), [NAN, 0.0, 1.0])
    assert same(fq("mxfp4", [NAN, 0.0, INF], 32), [NAN, 0.0, 6.0 * 2.0**-127])


@pytest.mark.parametrize("spec", list_formats())
def test_nan_does_not_poison_scale_and_zeros_stay(spec: str) -> None:
    fmt = get_format(spec)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 256, generator=g) * torch.tensor([[1e-3], [1.0], [50.0], [1e3]])
    x[:, 17] = 0.0
    x_nan = x.clone()
    x_nan[:, 40] = NAN
    x_zero = x.clone()
    x_zero[:, 40] = 0.0
    q_nan, q_zero = fake_quant(fmt, x_nan), fake_quant(fmt, x_zero)
    assert torch.isnan(q_nan[:, 40]).all()
    keep = torch.ones(256, dtype=torch.bool)
    keep[40] = False
    assert torch.equal(q_nan[:, keep], q_zero[:, keep])
    assert (q_zero[:, 17] == 0).all() and (q_zero[:, 40] == 0).all()
    assert torch.equal(fake_quant(fmt, torch.zeros(3, 256)), torch.zeros(3, 256))


# ------------------------------------------------------------------------------------------------------
# make_quantizer, dtypes, shapes
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", list_formats())
def test_make_quantizer_invariant(spec: str) -> None:
    fmt = get_format(spec)
    g = torch.Generator().manual_seed(5)
    W = torch.randn(6, 256, generator=g) * torch.linspace(0.1, 3, 6)[:, None]
    W[2, 3] = NAN
    if fmt.per_tensor:
        quant = make_quantizer(fmt, W)
        assert torch.equal(quant(W).nan_to_num(7.0), fake_quant(fmt, W).nan_to_num(7.0))
        return
    span = fmt.scale_span(256)
    w = W[:, :span].clone()
    quant = make_quantizer(fmt, w)
    ref = fake_quant(fmt, w)
    assert torch.equal(quant(w).nan_to_num(7.0), ref.nan_to_num(7.0))
    # column by column (GPTQ's use): same numbers, scales fixed by the slice
    cols = torch.cat([quant(w[:, i : i + 1]) for i in range(span)], dim=1)
    assert torch.equal(cols.nan_to_num(7.0), ref.nan_to_num(7.0))


def test_make_quantizer_scales_are_fixed() -> None:
    w = torch.tensor([[1.4, -0.7, 0.2], [7.0, 1.0, -3.5]])
    quant = make_quantizer(get_format("int4-pc"), w)
    s = np.array([F32(1.4) / F32(7), F32(7.0) / F32(7)], F32)[:, None]
    x = torch.tensor([[2.8, 0.3], [10.0, 2.5]])
    expected = np.clip(np.round(x.numpy() / s), -7, 7) * s  # saturates with the slice's scale
    assert np.array_equal(quant(x).numpy(), expected.astype(F32))
    # asymmetric: the zero point is fixed by the slice too
    qa = make_quantizer(get_format("int4-pc-asym"), torch.tensor([[1.0, -0.5]]))
    assert qa(torch.tensor([[-2.0, 0.0, 5.0]])).tolist() == [[pytest.approx(-0.5), 0.0, pytest.approx(1.0)]]


@pytest.mark.parametrize("spec", ["int4-g128", "int8-pc-asym", "fp8-e4m3-pc", "mxfp4", "nf4", "int4-g64-mse"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(spec: str, dtype: torch.dtype) -> None:
    fmt = get_format(spec)
    x = (torch.randn(3, 256, generator=torch.Generator().manual_seed(0)) * 2).to(dtype)
    q = fake_quant(fmt, x)
    assert q.dtype == dtype and q.shape == x.shape
    assert torch.equal(q, fake_quant(fmt, x.float()).to(dtype))


@pytest.mark.parametrize("spec", ["int4-g128", "int8-pt", "fp6-e2m3-pc", "mxint8", "nf3", "cbrt4-g64"])
def test_leading_dims_and_views(spec: str) -> None:
    fmt = get_format(spec)
    x = torch.randn(2, 3, 256, generator=torch.Generator().manual_seed(1))
    q = fake_quant(fmt, x)
    assert torch.equal(q, fake_quant(fmt, x.reshape(6, 256)).reshape(2, 3, 256))
    xt = torch.randn(256, 6, generator=torch.Generator().manual_seed(2)).t()  # non-contiguous
    assert torch.equal(fake_quant(fmt, xt), fake_quant(fmt, xt.contiguous()))
    v = torch.randn(256, generator=torch.Generator().manual_seed(3))  # 1-D: one row
    assert torch.equal(fake_quant(fmt, v), fake_quant(fmt, v[None])[0])
    assert fake_quant(fmt, torch.empty(0, 256)).shape == (0, 256)


def test_bad_inputs() -> None:
    # a row shorter than the group is one partial group, not an error (rule in qscale.formats.core)
    x = torch.randn(2, 100)
    assert torch.equal(fake_quant(get_format("int4-g128"), x), fake_quant(get_format("int4-pc"), x))
    with pytest.raises(TypeError, match="floating-point"):
        fake_quant(get_format("int4"), torch.ones(2, 4, dtype=torch.int64))


# ------------------------------------------------------------------------------------------------------
# dispatch and SQNR sums
# ------------------------------------------------------------------------------------------------------
def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 128)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert get_backend() == "auto" and resolve_backend(x) == "torch"  # CPU tensor
    assert torch.equal(fake_quant("int4-g128", x, backend="torch"), fake_quant(get_format("int4-g128"), x))
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        fake_quant("int4", x, backend="triton")
    with pytest.raises(ValueError, match="Did you mean 'triton'"):
        fake_quant("int4", x, backend="trition")
    monkeypatch.setenv(ENV_VAR, "torch")
    assert get_backend() == "torch"
    monkeypatch.setenv(ENV_VAR, "tourch")
    with pytest.raises(ValueError, match=ENV_VAR):
        get_backend()
    monkeypatch.setenv(ENV_VAR, "triton")
    try:
        set_backend("torch")  # the override wins over the environment
        assert resolve_backend(x) == "torch"
        set_backend(None)
        with pytest.raises(ValueError, match="needs a CUDA tensor"):
            resolve_backend(x)
        assert resolve_backend(x, "torch") == "torch"  # the argument wins over everything
    finally:
        set_backend(None)
    with pytest.raises(ValueError, match="Valid choices: auto, torch, triton"):
        set_backend("gpu")


@pytest.mark.parametrize("spec", ["int4-g128", "mxfp4", "nf4", "fp8-e5m2-pc"])
def test_fake_quant_with_sqnr(spec: str) -> None:
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(4))
    x[0, 0], x[1, 1] = NAN, INF
    q, signal, noise = fake_quant_with_sqnr(spec, x)
    assert torch.equal(q.nan_to_num(9.0), fake_quant(spec, x).nan_to_num(9.0))
    assert signal.dtype == torch.float64 and signal.dim() == 0
    xd, qd = x.double().numpy(), q.double().numpy()
    fin = np.isfinite(xd)
    assert signal.item() == pytest.approx(float(np.sum(xd[fin] ** 2)), rel=1e-12)
    assert noise.item() == pytest.approx(float(np.sum((xd[fin] - qd[fin]) ** 2)), rel=1e-12)
    assert 0 < noise.item() < signal.item()
