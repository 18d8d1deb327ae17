"""Per-token dynamic activation fake quantization (qscale.kernels.act.act_fake_quant).

The torch path is checked against independent computations: numpy float32 arithmetic for int8, torch's
``float8_e4m3fn`` dtype (and ml_dtypes' where installed) for the FP8 element rounding, and hand-worked numbers.
The Triton path (forced, run by Triton's CPU interpreter) must be bit-identical to the torch path.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import numpy as np
import pytest
import torch

from qscale.formats import FormatError, get_format
from qscale.kernels import fake_quant
from qscale.kernels.act import act_fake_quant, per_token_format


def _bits(t: torch.Tensor) -> np.ndarray:
    """Bit patterns as int64 numpy, after the two documented freedoms: the sign of a zero (-0 -> +0) and the
    NaN payload (every NaN -> one canonical NaN). Any other difference, even one ulp, shows."""
    t = torch.where(t == 0, torch.zeros_like(t), t)
    t = torch.where(torch.isnan(t), torch.full_like(t, float("nan")), t)
    view = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype]
    return t.contiguous().view(view).numpy().astype(np.int64)


def _acts(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Activations with very different per-token ranges (log-uniform token scales over 6 decades)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    token_scale = torch.exp(torch.empty(shape[:-1] + (1,)).uniform_(-7.0, 7.0, generator=g))
    return (x * token_scale).to(dtype)


# ---------------------------------------------------------------------------------------------- torch path
def _int8_by_hand(x: np.ndarray) -> np.ndarray:
    """Per-row symmetric int8 in numpy float32: s = amax/127, q = clip(rint(x/s), -127, 127) * s."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float32)
    amax = np.abs(x2).max(axis=1, keepdims=True).astype(np.float32)
    s = (amax / np.float32(127)).astype(np.float32)
    s = np.where(s == 0, np.float32(1), s)
    q = np.clip(np.rint(x2 / s), -127, 127).astype(np.float32) * s
    return q.astype(np.float32).reshape(x.shape)


def test_int8_hand_worked():
    """The module docstring's example: one scale per token vs one per tensor."""
    x = torch.tensor([[0.5, -1.27], [100.0, 3.0]])
    q = act_fake_quant("int8-pt", x)
    s0 = np.float32(1.27) / np.float32(127)  # 0.01 in fp32
    s1 = np.float32(100.0) / np.float32(127)
    assert q[0].tolist() == [float(np.float32(50) * s0), float(np.float32(-127) * s0)]
    assert q[1].tolist() == [100.0, float(np.float32(4) * s1)]
    assert q[1, 1].item() == pytest.approx(3.1496063, abs=1e-6)
    assert q[0, 0].item() == pytest.approx(0.5, abs=1e-7)
    # per tensor: the loud token's scale 100/127 also applies to token 0 -> 1 and -2 steps
    qt = act_fake_quant("int8-pt", x, per_token=False)
    assert qt[0].tolist() == [float(np.float32(1) * s1), float(np.float32(-2) * s1)]


@pytest.mark.parametrize("spec", ["int8-pt", "int8-pc"])
@pytest.mark.parametrize("shape", [(7, 48), (2, 3, 40), (40,)])
def test_int8_per_token_matches_numpy(spec, shape):
    x = _acts(shape, seed=len(shape))
    x.view(-1, shape[-1])[0] = 0.0  # an all-zero token: scale 0 -> 1, stays exactly zero
    q = act_fake_quant(spec, x)
    assert q.shape == x.shape and q.dtype == x.dtype
    ref = _int8_by_hand(x.numpy())
    np.testing.assert_array_equal(q.numpy(), ref)
    assert (q.view(-1, shape[-1])[0] == 0).all()
    # every token's absmax element is reproduced exactly up to one fp32 rounding of (127 * s)
    x2, q2 = x.reshape(-1, shape[-1]), q.reshape(-1, shape[-1])
    i = x2.abs().argmax(dim=1)
    np.testing.assert_allclose(
        q2.gather(1, i[:, None]).numpy(), x2.gather(1, i[:, None]).numpy(), rtol=2e-7, atol=0
    )


def _fp8_e4m3_by_hand(x: torch.Tensor) -> torch.Tensor:
    """Per-row fp8-e4m3: s = amax/448 (fp32), y = clamp(x/s, +-448), torch float8_e4m3fn RNE cast, q = y8 * s."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    s = x2.abs().amax(dim=1, keepdim=True) / torch.tensor(448.0)
    s = torch.where(s == 0, torch.ones_like(s), s)
    y = torch.clamp(x2 / s, -448.0, 448.0)
    return (y.to(torch.float8_e4m3fn).float() * s).reshape(x.shape)


@pytest.mark.parametrize("shape", [(6, 64), (2, 4, 32)])
def test_fp8_e4m3_per_token_matches_float8_dtype(shape):
    x = _acts(shape, seed=11)
    q = act_fake_quant("fp8-e4m3-pt", x)
    np.testing.assert_array_equal(q.numpy(), _fp8_e4m3_by_hand(x).numpy())
    # the same with ml_dtypes' float8_e4m3fn as the element grid (a second independent reference)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x2 = x.reshape(-1, shape[-1]).numpy()
    s = (np.abs(x2).max(axis=1, keepdims=True) / np.float32(448)).astype(np.float32)
    y = np.clip(x2 / s, -448, 448).astype(np.float32)
    ref = y.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * s
    np.testing.assert_array_equal(q.reshape(-1, shape[-1]).numpy(), ref)


def test_fp8_hand_worked():
    """Token [448, 1.0625, -0.3] has scale 1: 1.0625 is a tie between 1.0 and 1.125 -> even mantissa 1.0;
    -0.3 -> -0.3125 (step 2^-5 in [0.25, 0.5)). Token [4.48, 0.01, 0] has scale 4.48/448 = 0.01: the elements become 448, 1 and 0 steps of it."""
    x = torch.tensor([[448.0, 1.0625, -0.3], [4.48, 0.01, 0.0]])
    q = act_fake_quant("fp8-e4m3-pt", x)
    assert q[0].tolist() == [448.0, 1.0, -0.3125]
    s = np.float32(4.48) / np.float32(448)  # 0.01 in fp32 arithmetic
    assert q[1].tolist() == [float(np.float32(448) * s), float(s), 0.0]
    assert q[1, 0].item() == pytest.approx(4.48, rel=1e-6)


def test_loud_token_does_not_change_others_and_bf16_kept():
    x = _acts((4, 3, 32), seed=3, dtype=torch.bfloat16)
    loud = x.clone()
    loud[2, 1] *= 1000.0
    a, b = act_fake_quant("int8-pt", x), act_fake_quant("int8-pt", loud)
    assert a.dtype == torch.bfloat16
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[2, 1] = False
    assert torch.equal(a[mask], b[mask])
    # per tensor, the loud token does change the others
    at, bt = act_fake_quant("int8-pt", x, per_token=False), act_fake_quant("int8-pt", loud, per_token=False)
    assert not torch.equal(at[mask], bt[mask])


@pytest.mark.parametrize("spec", ["int4-g16", "mxfp8-e4m3-b32", "nf4-g16", "int8-pc", "fp8-e4m3-raw"])
def test_non_tensor_formats_keep_their_granularity(spec):
    """Channel/group/block formats: per-token == the format's own fake quant along the feature axis."""
    x = _acts((3, 5, 64), seed=5)
    assert torch.equal(act_fake_quant(spec, x), fake_quant(spec, x, backend="torch"))
    assert str(per_token_format(spec)) == str(get_format(spec))


def test_per_token_false_is_fake_quant():
    x = _acts((5, 32), seed=9)
    for spec in ("int8-pt", "fp8-e4m3-pt", "int4-g16"):
        assert torch.equal(act_fake_quant(spec, x, per_token=False), fake_quant(spec, x, backend="torch"))


def test_per_token_format_names():
    assert str(per_token_format("int8-pt")) == "int8-pc"
    assert str(per_token_format("fp8-e4m3-pt")) == "fp8-e4m3-pc"
    assert str(per_token_format("int8-pt-mse")) == "int8-pc-mse"
    assert str(per_token_format("mxfp4")) == "mxfp4-e2m1-b32"


def test_bad_inputs_name_the_problem():
    x = torch.randn(2, 32)
    with pytest.raises(ValueError, match="Did you mean 'torch'"):
        act_fake_quant("int8-pt", x, backend="torhc")
    with pytest.raises(FormatError):
        act_fake_quant("int9-ptt", x)
    # a group that does not divide the features is a partial trailing group, not an error
    assert act_fake_quant("int4-g128", torch.randn(3, 100)).shape == (3, 100)
    with pytest.raises(ValueError, match="0-d"):
        act_fake_quant("int8-pt", torch.tensor(1.0))
    with pytest.raises(TypeError, match="torch.Tensor"):
        act_fake_quant("int8-pt", [1.0, 2.0])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- triton path
def _triton_runs_on_cpu() -> bool:
    try:
        import triton  # noqa: F401

        from qscale.kernels.triton_kernels import triton_available
    except ImportError:
        return False
    return triton_available("cpu")


needs_triton = pytest.mark.skipif(
    not _triton_runs_on_cpu(),
    reason="triton cannot run on CPU tensors here (not installed or not interpreted)",
)


@needs_triton
@pytest.mark.parametrize(
    "spec", ["int8-pt", "fp8-e4m3-pt", "int8-pc", "int4-g16", "mxfp8-e4m3-b32", "nf4-g16", "fp8-e4m3-raw"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_bit_identical_to_torch(spec, dtype):
    x = _acts((2, 5, 64), seed=13, dtype=dtype)
    x[0, 0] = 0.0  # an all-zero token
    x[1, 2, 3] = float("nan")  # NaN stays in its element, does not poison the token's scale
    t = act_fake_quant(spec, x, backend="torch")
    g = act_fake_quant(spec, x, backend="triton")
    assert g.dtype == dtype and g.shape == x.shape
    np.testing.assert_array_equal(_bits(g), _bits(t))
    assert torch.isnan(g[1, 2, 3]) and torch.isfinite(g[1, 2, :3]).all()


@needs_triton
def test_triton_forced_errors(monkeypatch):
    with pytest.raises(NotImplementedError, match="float32/float16/bfloat16"):
        act_fake_quant("int8-pt", torch.randn(2, 32, dtype=torch.float64), backend="triton")
    # auto on CPU never takes the Triton path, so float64 works there
    assert act_fake_quant("int8-pt", torch.randn(2, 32, dtype=torch.float64)).dtype == torch.float64
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        act_fake_quant("int8-pt", torch.randn(2, 32), backend="triton")
