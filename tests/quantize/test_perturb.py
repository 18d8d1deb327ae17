"""The perturbation method: hand-worked noise values, per-row norm matching (relative and to a format's RTN error),
clipping by norm and by quantile, activation noise per token, seeds, and the cube-root method against its grid."""

from __future__ import annotations

import math

import pytest
import torch

from qscale.formats import get_format
from qscale.kernels import fake_quant
from qscale.quantize import MethodError, quantized
from qscale.quantize.perturb import perturb_tensor
from tests.helpers import tiny_lm


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


ROW = torch.tensor([[3.0, -1.0, 2.0, 0.0]])  # norm sqrt(14) = 3.742


def test_hand_example_independent_rademacher():
    q = perturb_tensor(ROW, noise="rademacher", mode="independent", generator=gen(), rel=0.1)
    e = (q - ROW).abs()
    assert torch.allclose(e, torch.full_like(e, 0.1 * math.sqrt(14) / 2), atol=1e-6)  # 0.1871 each


def test_hand_example_magnitude_aware():
    q = perturb_tensor(ROW, noise="rademacher", mode="aware", generator=gen(), rel=0.1, power=1.0)
    e = (q - ROW).abs()
    assert torch.allclose(e, torch.tensor([[0.3, 0.1, 0.2, 0.0]]), atol=3e-4)
    # the reverse: the zero weight gets by far the largest noise
    q = perturb_tensor(ROW, noise="gaussian", mode="aware", generator=gen(), rel=0.1, power=-1.0)
    e = (q - ROW).abs()[0]
    assert int(e.argmax()) == 3


@pytest.mark.parametrize("noise", ["gaussian", "uniform", "rademacher"])
@pytest.mark.parametrize("mode", ["independent", "aware"])
def test_row_norms_match_relative_strength(noise, mode):
    w = torch.randn(16, 96, generator=gen(1)) * torch.linspace(0.1, 2.0, 16)[:, None]
    q = perturb_tensor(w, noise=noise, mode=mode, generator=gen(2), rel=0.07)
    ratio = (q - w).double().norm(dim=1) / w.double().norm(dim=1)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.07), rtol=1e-5)
    if noise == "uniform" and mode == "independent":  # U(-1, 1) scaled: bounded by sqrt(3) x the rms
        e = (q - w) / (0.07 * w.norm(dim=1, keepdim=True) / math.sqrt(96))
        assert e.abs().max() <= math.sqrt(3) * 1.5


def test_match_format_rtn_error_norm():
    fmt = get_format("int4-g32")
    w = torch.randn(8, 64, generator=gen(3))
    q = perturb_tensor(w, noise="gaussian", mode="independent", generator=gen(4), match_fmt=fmt)
    target = (fake_quant(fmt, w) - w).double().norm(dim=1)
    assert torch.allclose((q - w).double().norm(dim=1), target, rtol=1e-5)


def test_clip_by_norm_and_by_quantile():
    w = torch.randn(6, 200, generator=gen(5))
    q = perturb_tensor(w, noise="gaussian", mode="clip", generator=gen(), rel=0.05)
    err = (q - w).double().norm(dim=1) / w.double().norm(dim=1)
    assert torch.allclose(err, torch.full_like(err, 0.05), rtol=1e-4)
    c = q.abs().amax(dim=1, keepdim=True)
    assert torch.equal(q, torch.maximum(torch.minimum(w, c), -c))  # pure clipping, nothing else moved
    q = perturb_tensor(w, noise="gaussian", mode="clip", generator=gen(), clip_quantile=0.9)
    moved = (q != w).float().mean()
    assert 0.08 <= float(moved) <= 0.11  # about 10% of the entries beyond the 0.9 quantile


def test_method_seeds_records_and_restore():
    model = tiny_lm("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {"noise": "gaussian", "rel": 0.1, "seed": 7}
    with quantized(model, None, method="perturb", params=params) as info:
        w1 = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    with quantized(model, None, method="perturb", params=params):
        w2 = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    with quantized(model, None, method="perturb", params={**params, "seed": 8}):
        w3 = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    assert torch.equal(w1, w2) and not torch.equal(w1, w3)
    assert info["seed"] == 7 and info["w_rel_err_mean"] == pytest.approx(0.1, rel=1e-5)
    seeds = [rec["w_seed"] for rec in info["layers"].values()]
    assert len(set(seeds)) == len(seeds) == 14  # 7 linears x 2 blocks, one seed each
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_activation_noise_per_token():
    model = tiny_lm("llama")
    ids = torch.randint(0, 128, (2, 16), generator=gen(9))
    name = "model.layers.0.self_attn.q_proj"
    mod = dict(model.named_modules())[name]
    got = []
    h = mod.register_forward_hook(lambda _m, a, _o: got.append(a[0].detach().clone()))
    with torch.no_grad():
        model(ids)
        with quantized(
            model, None, method="perturb", params={"target": "a", "rel": 0.2, "noise": "uniform"}
        ) as info:
            model(ids)
    h.remove()
    x, xp = (t.reshape(-1, 64).double() for t in got)
    ratio = (xp - x).norm(dim=1) / x.norm(dim=1)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.2), rtol=1e-4)
    assert "a_seed" in info["layers"][name] and "w_seed" not in info["layers"][name]


def test_bad_parameters_are_clear():
    model = tiny_lm("llama")
    cases = [
        ({"rel": 0.1, "match": "int4"}, "not both"),
        ({"mode": "independent"}, "needs a strength"),
        ({"rel": 0.1, "noise": "gausian"}, "Did you mean 'gaussian'"),
        ({"rel": 0.1, "mode": "awre"}, "Did you mean 'aware'"),
        ({"rel": -1.0}, "non-negative"),
    ]
    for params, msg in cases:
        with pytest.raises(MethodError, match=msg), quantized(model, None, method="perturb", params=params):
            pass


def test_cbrt_w4_on_cube_root_grid_and_w8a8_per_token():
    model = tiny_lm("llama", seed=2)
    ref = model.model.layers[1].mlp.down_proj.weight.detach().clone()  # (64, 128)
    with quantized(model, None, method="cbrt", params={"config": "w4", "group": 32}) as info:
        q = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    assert info["w"] == "cbrt4-g32" and info["a"] is None
    # independent check of the grid: in every group of 32, q / absmax(group) is one of +-(k/7)^3, k = 0..7
    levels = torch.tensor([(k / 7) ** 3 for k in range(8)])
    for g0 in range(0, 128, 32):
        amax = ref[:, g0 : g0 + 32].abs().amax(dim=1, keepdim=True)
        r = (q[:, g0 : g0 + 32] / amax).abs()
        assert (r.unsqueeze(-1) - levels).abs().min(dim=-1).values.max() < 1e-5
        # and it is the nearest level in the cube-root domain
        k = (ref[:, g0 : g0 + 32].abs() / amax).pow(1 / 3) * 7
        assert torch.allclose(r, (k.round() / 7).pow(3), atol=1e-5)
    name = "model.layers.0.mlp.gate_proj"
    mod = dict(model.named_modules())[name]
    got = []
    h = mod.register_forward_hook(lambda _m, a, _o: got.append(a[0].detach().clone()))
    ids = torch.randint(0, 128, (1, 8), generator=gen(4))
    with quantized(model, None, method="cbrt", params={"config": "w8a8"}) as info, torch.no_grad():
        model(ids)
    h.remove()
    assert info["w"] == "cbrt8-pc" and info["a"] == "cbrt8-pc" and info["a_scale"] == "dynamic"
    xa = got[0].reshape(-1, 64)
    amax = xa.abs().amax(dim=1, keepdim=True)
    r = (xa / amax).abs()
    k = r.pow(1 / 3) * 127
    assert (k - k.round()).abs().max() < 1e-3  # on the 8-bit cube-root grid of its own token's absmax
