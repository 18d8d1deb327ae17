"""Partial trailing groups (rule in qscale.formats.core): a row of n with group G is n // G full groups plus,
if n % G != 0, one partial group of the last n % G elements with its own scale.

The references here are built from slices: quantizing the row must equal quantizing each group's slice on its
own (a tensor whose row length is at most G is exactly one group) and concatenating; the independent numpy
re-implementation on the same widths lives in test_reference_numpy.py. GPTQ (which builds its quantizers with
make_quantizer on column slices of at most G) must run on a 576-wide layer with a 128-group format.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qscale.formats import get_format, list_formats
from qscale.kernels import fake_quant, fake_quant_with_sqnr
from qscale.kernels.reference import fake_quant_reference, make_quantizer

GROUP_FORMATS = [s for s in list_formats() if get_format(s).granularity == "group"]
WIDTHS = (576, 896, 1536, 4864, 8960, 100, 33, 1)


def _x(rows: int, n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=gen) * 0.02
    x[:, -min(n, 7) :] *= 300.0  # the tail is louder than the full groups
    return x.to(dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def test_catalogue_has_group_formats_of_every_family() -> None:
    assert {get_format(s).family for s in GROUP_FORMATS} == {"int", "fp", "mx", "lut"}


@pytest.mark.parametrize("spec", GROUP_FORMATS)
def test_row_is_its_groups_quantized_alone(spec: str) -> None:
    """Every full group and the partial tail equal their own slice quantized alone, on real and odd widths."""
    fmt = get_format(spec)
    G = fmt.group_size
    for n in WIDTHS:
        x = _x(2, n, seed=n)
        q = fake_quant(fmt, x)
        starts = list(range(0, n, G))
        pieces = [fake_quant(fmt, x[:, s : s + G].clone()) for s in starts]
        assert _same(q, torch.cat(pieces, dim=1)), (spec, n)
        tail = n % G
        if tail:  # the partial group is quantized with a scale from its own elements only
            assert _same(q[:, n - tail :], fake_quant(fmt, x[:, n - tail :].clone()))
            assert _same(make_quantizer(fmt, x[:, n - tail :])(x[:, n - tail :]), q[:, n - tail :])


@pytest.mark.parametrize(
    "spec", ["int4-g128", "int4-g128-asym-mse", "fp4-e2m1-g128", "mxint4-b128", "nf4-g128", "cbrt3-g128"]
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_partial_groups_half_dtypes_and_leading_axes(spec: str, dtype: torch.dtype) -> None:
    fmt = get_format(spec)
    x = _x(6, 200, seed=3).reshape(2, 3, 200).to(dtype)
    q = fake_quant(fmt, x)
    assert q.shape == x.shape and q.dtype == dtype
    ref = torch.cat([fake_quant(fmt, x[..., :128].clone()), fake_quant(fmt, x[..., 128:].clone())], dim=-1)
    assert _same(q, ref)


def test_tail_gets_its_own_scale_not_the_previous_groups() -> None:
    """A tail 1000x quieter than the group before it is not flushed to zero (it would be with a shared scale)."""
    x = torch.ones(1, 576)
    x[0, 512:] = 1e-3 * torch.linspace(-1, 1, 64)
    for spec in ("int4-g128", "mxfp4-e2m1-b128", "nf4-g128", "fp4-e2m1-g128", "int4-g128-mse", "cbrt4-g128"):
        q = fake_quant(get_format(spec), x)
        assert torch.count_nonzero(q[0, 512:]) > 32, spec
        assert float((q[0, 512:] - x[0, 512:]).abs().max()) < 2e-4, spec


def test_mse_clip_searched_per_partial_group() -> None:
    """-mse picks the clip ratio of the partial group from its own squared error (numpy search by hand)."""
    from qscale.formats import MSE_CLIP_RATIOS

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 150, generator=gen)
    x[0, 140] = 9.0  # an outlier in the 22-wide tail: clipping it pays off there, not in the first group
    q = fake_quant(get_format("int4-g128-mse"), x)
    tail = x[0, 128:].double().numpy()
    best, best_err = None, np.inf
    for r in MSE_CLIP_RATIOS:
        s = np.float32(np.float32(np.abs(tail).max()) * np.float32(r)) / np.float32(7)
        s = np.float32(s)
        qq = (np.clip(np.round(tail.astype(np.float32) / s), -7, 7) * s).astype(np.float32)
        err = float(((qq.astype(np.float64) - tail) ** 2).sum())
        if err < best_err:
            best, best_err = qq, err
    assert np.array_equal(q[0, 128:].numpy(), best)


@pytest.mark.parametrize("spec", ["int4-g128", "mxfp4-e2m1-b32", "nf4-g64", "int3-g128-mse"])
def test_sqnr_sums_on_partial_groups(spec: str) -> None:
    x = _x(4, 576, seed=9)
    x[1, 570] = float("nan")
    q, signal, noise = fake_quant_with_sqnr(spec, x, backend="torch")
    assert _same(q, fake_quant_reference(get_format(spec), x))
    xd, qd = x.double().numpy(), q.double().numpy()
    fin = np.isfinite(xd)
    assert float(signal) == pytest.approx(float((xd[fin] ** 2).sum()), rel=1e-12)
    assert float(noise) == pytest.approx(float(((xd - qd)[fin] ** 2).sum()), rel=1e-12)


@pytest.mark.parametrize(
    ("spec", "act_order"),
    [
        ("int4-g128", False),
        ("int4-g128", True),
        ("nf4-g128", False),
        ("mxfp4-e2m1-b128", True),
        ("int4-g128-mse", False),
    ],
)
def test_gptq_on_576_wide_layer_with_128_groups(spec: str, act_order: bool) -> None:
    """GPTQ slices groups [0:128], ..., [512:640] -> [512:576] (64 wide): the partial group works, every group
    of the result lies on one grid of its own, and GPTQ beats RTN on the calibration inputs."""
    from qscale.quantize.gptq import gptq_quantize_weight

    fmt = get_format(spec)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 576, generator=gen) * 0.02
    w[:, 512:] *= 0.01  # a quiet tail: it must keep its own scale through GPTQ too
    X = torch.randn(768, 576, generator=gen) @ (torch.eye(576) + 0.1 * torch.randn(576, 576, generator=gen))
    h = 2 * X.T @ X / X.shape[0]
    res = gptq_quantize_weight(w, h, fmt, act_order=act_order)
    q = res.q
    assert q.shape == w.shape and bool(torch.isfinite(q).all())
    levels = 2**fmt.element_bits
    for g0 in range(0, 576, 128):
        grp = q[:, g0 : g0 + 128]
        for row in grp:
            assert torch.unique(row).numel() <= levels
    assert torch.count_nonzero(q[:, 512:]) > q[:, 512:].numel() // 2  # the quiet tail was not flushed
    err_gptq = float(((w - q) @ X.T).square().sum())
    err_rtn = float(((w - fake_quant(fmt, w)) @ X.T).square().sum())
    assert err_gptq < err_rtn
