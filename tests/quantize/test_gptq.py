"""GPTQ: the lazy-block Cholesky implementation against a naive float64 OBS reference, GPTQ vs RTN on held-out
inputs for several formats, the Cholesky retry path, dead inputs, and the block pipeline on tiny models."""

from __future__ import annotations

import pytest
import torch

from qscale.formats import get_format
from qscale.kernels import fake_quant
from qscale.quantize import MethodError, quantized
from qscale.quantize.gptq import (
    GPTQError,
    HessianAccumulator,
    find_blocks,
    gptq_quantize_weight,
)
from tests.helpers import tiny_lm


class GridFmt:
    """Test-local symmetric uniform grid with absmax scales per row (per span): independent of qscale.formats and
    qscale.kernels (passed to GPTQ as ``quantizer=fmt.make_quantizer``)."""

    per_tensor = False
    family = "int"

    def __init__(self, levels: int = 7, group: int | None = None):
        self.levels, self.group = levels, group

    def scale_span(self, n: int) -> int:
        return self.group or n

    def make_quantizer(self, w):
        s = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / self.levels
        return lambda x: (x / s).round().clamp(-self.levels, self.levels) * s

    def fake_quant(self, w):
        span = self.scale_span(w.shape[1])
        return torch.cat(
            [self.make_quantizer(w[:, g : g + span])(w[:, g : g + span]) for g in range(0, w.shape[1], span)],
            1,
        )


def naive_obs(W, H, fmt, percdamp=0.01, order=None, static=False):
    """Optimal Brain Surgeon one column at a time in float64 with an explicit inverse Hessian (no Cholesky, no
    lazy blocks): after quantizing column j, w -= (w_j - q_j)/Hinv_jj * Hinv[j, :], then Hinv loses row/col j."""
    W = W.double().clone()
    n = W.shape[1]
    H = H.double() + percdamp * H.double().diagonal().mean() * torch.eye(n, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    order = list(range(n)) if order is None else list(order)
    span = fmt.scale_span(n)
    quants = {}
    if static:
        for g0 in range(0, n, span):
            quants[g0 // span] = fmt.make_quantizer(W[:, g0 : g0 + span].clone())
    Q = torch.zeros_like(W)
    for j in order:
        g = j // span
        if g not in quants:
            quants[g] = fmt.make_quantizer(W[:, g * span : (g + 1) * span].clone())
        q = quants[g](W[:, j : j + 1]).reshape(-1)
        Q[:, j] = q
        d = Hinv[j, j]
        W -= ((W[:, j] - q) / d).unsqueeze(1) * Hinv[j, :].unsqueeze(0)
        Hinv = Hinv - Hinv[:, j : j + 1] @ Hinv[j : j + 1, :] / d
    return Q


def correlated(n, d, seed, mix_seed=123):
    g = torch.Generator().manual_seed(mix_seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    scale = torch.linspace(0.2, 3.0, d, dtype=torch.float64)  # unequal feature energies
    g2 = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g2, dtype=torch.float64)
    return (z @ mix + 0.2 * torch.randn(n, d, generator=g2, dtype=torch.float64)) * scale


def test_hessian_accumulator_hand_example():
    acc = HessianAccumulator(2)
    acc.add(torch.tensor([[1.0, 0.0]]))
    acc.add(torch.tensor([[[1.0, 2.0]]]))  # any leading shape
    assert acc.n == 2
    assert torch.equal(acc.hessian, torch.tensor([[2.0, 2.0], [2.0, 4.0]], dtype=torch.float64))


@pytest.mark.parametrize("group,blocksize", [(None, 32), (None, 7), (16, 32), (16, 48), (32, 128)])
def test_gptq_equals_naive_obs(group, blocksize):
    d = 96
    X = correlated(600, d, seed=0)
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(24, d, generator=torch.Generator().manual_seed(1))
    fmt = GridFmt(7, group)
    res = gptq_quantize_weight(W, H, fmt, blocksize=blocksize, quantizer=fmt.make_quantizer)
    ref = naive_obs(W, H, fmt)
    assert (res.q.double() - ref).abs().max() < 1e-5
    assert res.damp == 0.01 and res.retries == 0 and res.n_dead == 0


def test_gptq_act_order_static_groups_equals_naive():
    d = 64
    X = correlated(400, d, seed=2)
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(16, d, generator=torch.Generator().manual_seed(3))
    fmt = GridFmt(3, 16)
    order = torch.argsort(H.diagonal(), descending=True).tolist()
    res = gptq_quantize_weight(W, H, fmt, blocksize=16, act_order=True, quantizer=fmt.make_quantizer)
    ref = naive_obs(W, H, fmt, order=order, static=True)
    assert (res.q.double() - ref).abs().max() < 1e-5
    # the result lies on the format's grid with the static (original-W) group scales
    for g0 in range(0, d, 16):
        s = W[:, g0 : g0 + 16].abs().amax(1, keepdim=True) / 3
        k = res.q[:, g0 : g0 + 16] / s
        assert (k - k.round()).abs().max() < 1e-4
    with pytest.raises(ValueError, match="static_groups"):
        gptq_quantize_weight(W, H, fmt, act_order=True, static_groups=False)


def test_gptq_reconstruction_beats_rtn_per_format_on_heldout_inputs():
    d_in, d_out = 256, 64
    X = correlated(2048, d_in, seed=10).float()
    Xtest = correlated(2048, d_in, seed=11).float()  # held out, same distribution
    acc = HessianAccumulator(d_in)
    acc.add(X)
    W = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(12)) * 0.05
    ratios = {}
    for spec in ["int4-g128", "int3", "fp4-e2m1-g32", "mxfp4", "nf4", "cbrt4-g128", "int8-pt"]:
        fmt = get_format(spec)
        q = gptq_quantize_weight(W, acc.hessian, fmt).q
        e_gptq = float(((W - q) @ Xtest.T).norm())
        e_rtn = float(((W - fake_quant(fmt, W)) @ Xtest.T).norm())
        ratios[spec] = e_gptq / e_rtn
        assert e_gptq < 0.95 * e_rtn, (spec, e_gptq, e_rtn)
    assert set(ratios) == {"int4-g128", "int3", "fp4-e2m1-g32", "mxfp4", "nf4", "cbrt4-g128", "int8-pt"}


def test_gptq_output_on_format_grid_int4_g128():
    fmt = get_format("int4-g128")
    X = correlated(512, 256, seed=4).float()
    acc = HessianAccumulator(256)
    acc.add(X)
    W = torch.randn(8, 256, generator=torch.Generator().manual_seed(5))
    q = gptq_quantize_weight(W, acc.hessian, fmt).q
    # every group of 128 of every row takes at most 16 distinct values (a 4-bit grid)
    for g0 in (0, 128):
        for row in q[:, g0 : g0 + 128]:
            assert row.unique().numel() <= 16


def test_cholesky_retry_records_damping():
    # H = I except H00 = -0.05 (mean diag ~ 1): 1% damping leaves -0.04 (fails), 10% gives +0.05 (succeeds)
    n = 8
    H = torch.eye(n, dtype=torch.float64)
    H[0, 0] = -0.05
    W = torch.randn(4, n, generator=torch.Generator().manual_seed(0))
    fmt = GridFmt(7)
    res = gptq_quantize_weight(W, H, fmt, percdamp=0.01, quantizer=fmt.make_quantizer)
    assert res.retries == 1
    assert res.damp == pytest.approx(0.1)
    assert torch.isfinite(res.q).all()

    # singular H (rank 1, no dead column) without damping: retried with the default 1%
    ones = torch.ones(n, n, dtype=torch.float64)
    res = gptq_quantize_weight(W, ones, fmt, percdamp=0.0, quantizer=fmt.make_quantizer)
    assert res.retries == 1 and res.damp == pytest.approx(0.01)

    # negative definite: every retry fails -> a clear error
    with pytest.raises(GPTQError, match="not positive-definite"):
        gptq_quantize_weight(
            W, -torch.eye(n, dtype=torch.float64), fmt, max_retries=2, quantizer=fmt.make_quantizer
        )


def test_dead_inputs_are_zeroed_and_counted():
    X = correlated(300, 32, seed=6)
    X[:, [3, 17]] = 0.0
    acc = HessianAccumulator(32)
    acc.add(X)
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(7))
    fmt = GridFmt(7)
    res = gptq_quantize_weight(W, acc.hessian, fmt, quantizer=fmt.make_quantizer)
    assert res.n_dead == 2
    assert torch.equal(res.q[:, [3, 17]], torch.zeros(8, 2))


# ----------------------------------------------------------------------------------------- pipeline on tiny models


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "neox", "qwen2"])
def test_pipeline_all_families_beats_rtn_and_restores(family):
    model = tiny_lm(family)
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 128, (8, 32), generator=g)
    held = torch.randint(0, 128, (4, 32), generator=g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(held).logits
    fmt = get_format("int3-g32")
    errs = {}
    for method in ("rtn", "gptq"):
        with quantized(model, fmt, method=method, calib=calib) as info, torch.no_grad():
            errs[method] = float((model(held).logits - ref).square().mean())
        if method == "gptq":
            n_blocks = len(find_blocks(model))
            assert n_blocks == 2
            assert info["n_samples"] == 8 and info["seq_len"] == 32
            assert info["rtn_fallback"] == []
            assert set(info["damp"]) == set(info["layers"]) and len(info["layers"]) >= 4 * n_blocks - 2
            assert all(v == 0.01 for v in info["damp"].values())
    assert errs["gptq"] < errs["rtn"], errs
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pipeline_true_sequential_sees_quantized_predecessors():
    """o_proj's Hessian in the true-sequential run is computed on outputs of the quantized q/k/v, so the two
    variants differ exactly from the first layer that follows an already-quantized group."""
    model = tiny_lm("llama", seed=1)
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    fmt = get_format("int3-g32")
    qs = {}
    for ts in (True, False):
        with quantized(model, fmt, method="gptq", params={"true_sequential": ts}, calib=calib):
            qs[ts] = {
                r: m.weight.detach().clone()
                for r, m in model.named_modules()
                if hasattr(m, "weight") and m.weight is not None
            }
    first = "model.layers.0.self_attn.q_proj"
    assert torch.equal(qs[True][first], qs[False][first])
    assert not torch.equal(
        qs[True]["model.layers.0.self_attn.o_proj"], qs[False]["model.layers.0.self_attn.o_proj"]
    )


def test_gptq_needs_calibration():
    model = tiny_lm("llama")
    with pytest.raises(MethodError, match="calibration"), quantized(model, "int4", method="gptq"):
        pass
    with (
        pytest.raises(MethodError, match="LongTensor"),
        quantized(model, "int4", method="gptq", calib=torch.randn(2, 8)),
    ):
        pass
