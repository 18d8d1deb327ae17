"""Property tests (hypothesis) for every family: idempotence (or what holds instead), sign symmetry,
half-step error bounds from first principles, zeros, shapes.

What holds, per family (documented here and checked below):

* mx and fp ``-raw``: idempotent bit for bit (power-of-two / unit scales, q(x) already on the grid and
  its block max stays in the same binade).
* int symmetric absmax, fp scaled, lut: idempotent up to fp32 rounding of the recomputed scale
  (``amax(q) / qmax`` can differ from the first scale by an ulp): |q(q(x)) - q(x)| <= 1e-5 * amax.
* int asymmetric and ``-mse``: not idempotent in general (the zero point / clip ratio is re-chosen);
  what holds is the error bound on the second pass and, for ``-mse``, error <= the absmax error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qscale.formats import FloatFormat, IntFormat, LUTFormat, MXFormat, get_format
from qscale.kernels import fake_quant

COLS = 128
SETTINGS = settings(
    max_examples=15,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

SPECS = [
    "int4-pc",
    "int3-g32",
    "int8-pt",
    "int4-g64-asym",
    "int4-g32-mse",
    "int3-g64-asym-mse",
    "fp8-e4m3-pc",
    "fp8-e5m2-g32",
    "fp6-e3m2-pt",
    "fp6-e2m3-g64",
    "fp4-e2m1-g32",
    "fp8-e4m3-raw",
    "mxfp8-e4m3",
    "mxfp6-e2m3",
    "mxfp4",
    "mxint8",
    "mxint4-b64",
    "nf4",
    "nf3-g32",
    "cbrt4-g32",
]


@st.composite
def matrices(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(1, 3))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 30.0, 1e4]))
    elems = st.floats(-1.0, 1.0, width=32, allow_subnormal=False)
    x = draw(arrays(np.float32, (rows, COLS), elements=elems))
    return (x * np.float32(scale)).astype(np.float32)


def _groups(fmt, x: np.ndarray) -> np.ndarray:
    if fmt.per_tensor:
        return x.reshape(1, -1)
    return x.reshape(-1, fmt.scale_span(x.shape[-1]))


def _amax_rows(fmt, x: np.ndarray) -> np.ndarray:
    """Group absmax broadcast back to x's shape (float64)."""
    g = _groups(fmt, x).astype(np.float64)
    return np.repeat(np.abs(g).max(axis=1, keepdims=True), g.shape[1], axis=1).reshape(x.shape)


def _bound(fmt, x: np.ndarray) -> np.ndarray:
    """Largest |x - q| allowed per element, from first principles (float64, small slack for fp32 rounding)."""
    xd = x.astype(np.float64)
    amax = _amax_rows(fmt, x)
    slack = 1e-6 * amax + 1e-30
    if isinstance(fmt, IntFormat):
        # -mse: the clip ratio r >= 0.5 shrinks the step (bound unchanged) but values beyond r * amax
        # saturate, adding at most |x| - amax / 2 (or x - hi / 2, lo / 2 - x asymmetric)
        if fmt.symmetric:
            sat = np.maximum(np.abs(xd) - 0.5 * amax, 0) if fmt.clip == "mse" else 0.0
            return 0.5 * amax / fmt.qmax * (1 + 1e-5) + sat + slack
        g = _groups(fmt, x).astype(np.float64)

        def spread(v: np.ndarray) -> np.ndarray:
            return np.repeat(v, g.shape[1], axis=1).reshape(x.shape)

        lo = spread(np.minimum(g.min(axis=1, keepdims=True), 0))
        hi = spread(np.maximum(g.max(axis=1, keepdims=True), 0))
        sat = np.maximum(np.maximum(xd - 0.5 * hi, 0.5 * lo - xd), 0) if fmt.clip == "mse" else 0.0
        return (hi - lo) / fmt.qmax * (1 + 1e-5) + sat + slack  # zero-point rounding: up to a full step
    if isinstance(fmt, FloatFormat):
        m = fmt.mini
        s = np.ones_like(amax) if fmt.granularity == "none" else amax / m.max_normal
        y = np.abs(xd) / np.where(s == 0, 1, s)
        e = np.clip(np.floor(np.log2(np.maximum(y, 1e-300))), m.emin, m.emax)
        sat = np.maximum(y - m.max_normal, 0) * s  # only -raw casts saturate (scaled: y <= max_normal)
        return 0.5 * 2.0 ** (e - m.mbits) * s * (1 + 1e-5) + sat + slack
    if isinstance(fmt, MXFormat):
        e_blk = np.floor(np.log2(np.maximum(amax, 1e-300))) - fmt.emax_elem
        X = 2.0 ** np.clip(e_blk, -127, 127)
        y = np.abs(xd) / X
        if fmt.is_int:
            half = 0.5 * 2.0 ** -(fmt.element_bits - 2) * X
        else:
            m = fmt.mini
            e = np.maximum(np.floor(np.log2(np.maximum(y, 1e-300))), m.emin)
            half = 0.5 * 2.0 ** (e - m.mbits) * X
        sat = np.maximum(y - fmt.max_normal, 0) * X  # saturated part (block max above max_normal * X)
        return half + sat + slack
    assert isinstance(fmt, LUTFormat)
    lv = np.array(fmt.grid)
    s = amax / np.abs(lv).max()
    y = xd / np.where(s == 0, 1, s)
    hi_idx = np.clip(np.searchsorted(lv, y), 1, len(lv) - 1)
    gap = lv[hi_idx] - lv[hi_idx - 1]  # q is one of the two levels around y
    return gap * s * (1 + 1e-5) + slack


@pytest.mark.parametrize("spec", SPECS)
@SETTINGS
@given(x=matrices())
def test_error_bound(spec: str, x: np.ndarray) -> None:
    fmt = get_format(spec)
    q = fake_quant(fmt, torch.from_numpy(x)).numpy().astype(np.float64)
    err = np.abs(q - x)
    bound = _bound(fmt, x)
    assert np.all(err <= bound), f"max excess {np.max(err - bound)} at {np.argmax(err - bound)}"


@pytest.mark.parametrize("spec", SPECS)
@SETTINGS
@given(x=matrices())
def test_idempotence(spec: str, x: np.ndarray) -> None:
    fmt = get_format(spec)
    q = fake_quant(fmt, torch.from_numpy(x))
    q2 = fake_quant(fmt, q)
    if isinstance(fmt, MXFormat) or (isinstance(fmt, FloatFormat) and fmt.granularity == "none"):
        assert torch.equal(q2, q)
    elif isinstance(fmt, IntFormat) and (not fmt.symmetric or fmt.clip == "mse"):
        # not idempotent in general: the second pass obeys its own error bound around q
        qn = q.numpy()
        assert np.all(np.abs(q2.numpy() - qn) <= _bound(fmt, qn))
    else:
        amax = _amax_rows(fmt, x)
        assert np.all(np.abs(q2.numpy().astype(np.float64) - q.numpy()) <= 1e-5 * amax + 1e-30)


@pytest.mark.parametrize("spec", [s for s in SPECS if "asym" not in s and not s.startswith("nf")])
@SETTINGS
@given(x=matrices())
def test_sign_symmetry(spec: str, x: np.ndarray) -> None:
    fmt = get_format(spec)
    if isinstance(fmt, LUTFormat):  # ties go to the upper level: exclude values exactly on a boundary
        b = np.array(fmt.boundaries, np.float64).astype(np.float32)
        amax = _amax_rows(fmt, x).astype(np.float32)
        y = x / np.where(amax == 0, np.float32(1), amax)
        assume(not np.isin(np.abs(y), np.abs(b)).any())
    t = torch.from_numpy(x)
    assert torch.equal(fake_quant(fmt, -t), -fake_quant(fmt, t))


@pytest.mark.parametrize("spec", ["int4-g32-mse", "int3-pc-mse", "int4-g64-asym-mse", "int2-g32-mse"])
@SETTINGS
@given(x=matrices())
def test_mse_never_worse_than_absmax(spec: str, x: np.ndarray) -> None:
    fmt = get_format(spec)
    base = get_format(spec.replace("-mse", ""))
    t = torch.from_numpy(x)
    xd = x.astype(np.float64)
    e_mse = ((fake_quant(fmt, t).numpy() - xd) ** 2).reshape(-1, fmt.scale_span(COLS)).sum(axis=1)
    e_abs = ((fake_quant(base, t).numpy() - xd) ** 2).reshape(-1, fmt.scale_span(COLS)).sum(axis=1)
    assert np.all(e_mse <= e_abs * (1 + 1e-9) + 1e-300)


@pytest.mark.parametrize("spec", SPECS)
@SETTINGS
@given(x=matrices(), zero_frac=st.floats(0.0, 1.0))
def test_zeros_stay_zero_and_shape_dtype(spec: str, x: np.ndarray, zero_frac: float) -> None:
    fmt = get_format(spec)
    mask = np.random.default_rng(int(zero_frac * 1e6)).random(x.shape) < zero_frac
    x = np.where(mask, np.float32(0), x)
    q = fake_quant(fmt, torch.from_numpy(x))
    assert q.shape == x.shape and q.dtype == torch.float32
    assert np.all(q.numpy()[mask] == 0)
    assert np.all(np.isfinite(q.numpy()))
    # the largest magnitude never exceeds the group's max representable value
    assert math.isfinite(float(np.abs(q.numpy()).max()))
