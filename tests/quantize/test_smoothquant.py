"""SmoothQuant: float function unchanged after smoothing (LayerNorm, RMSNorm, Gemma (1+w) RMSNorm), the scales
against a float64 recomputation of the formula, the traced norm -> linear groups, and W8A8 with smoothing beating
W8A8 without on a model with injected activation outlier channels."""

from __future__ import annotations

import pytest
import torch

from qscale.lm.layers import linear_layers
from qscale.quantize import MethodError, quantized
from qscale.quantize.smoothquant import _probe_one_plus, find_norm_groups, smooth_model
from tests.helpers import tiny_lm


def tiny(family: str, seed: int = 0):
    model = tiny_lm(family, seed)
    # non-trivial norm weights and biases so that folding is really exercised
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name or name.endswith(("ln_1.weight", "ln_2.weight")):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif p.ndim == 1 and name.endswith(("ln_1.bias", "ln_2.bias")):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


CALIB = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
HELD = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(2))

EXPECTED_GROUPS = {
    "llama": {
        "model.layers.0.input_layernorm": ["q_proj", "k_proj", "v_proj"],
        "model.layers.0.post_attention_layernorm": ["gate_proj", "up_proj"],
    },
    "gemma": {
        "model.layers.0.input_layernorm": ["q_proj", "k_proj", "v_proj"],
        "model.layers.0.post_attention_layernorm": ["gate_proj", "up_proj"],
    },
    "gpt2": {"transformer.h.0.ln_1": ["c_attn"], "transformer.h.0.ln_2": ["c_fc"]},
}


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_smoothing_keeps_float_function(family):
    model = tiny(family)
    with torch.no_grad():
        ref = model(HELD).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with quantized(model, None, method="smoothquant", params={"w": None, "a": None}, calib=CALIB) as info:
        with torch.no_grad():
            out = model(HELD).logits
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    sq = info["smoothquant"]
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())), float(
        (out - ref).abs().max()
    )
    assert len(changed) > 0 and max(sq["scale_max"].values()) > 1.5  # it really did rescale
    for norm, short in EXPECTED_GROUPS[family].items():
        assert [n.rsplit(".", 1)[1] for n in sq["groups"][norm]] == short
    # layers with no norm in front (o_proj/down_proj, c_proj) are reported, 2 per block
    assert len(sq["unsmoothed"]) == 4
    assert info["n_samples"] == 4 and info["seq_len"] == 16
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gemma_norm_detected_as_one_plus_w():
    model = tiny("gemma")
    groups, _ = find_norm_groups(model, linear_layers(model), CALIB[:1])
    assert len(groups) == 4 and all(_probe_one_plus(g) for g in groups)
    llama = tiny("llama")
    groups, _ = find_norm_groups(llama, linear_layers(llama), CALIB[:1])
    assert len(groups) == 4
    assert not any(_probe_one_plus(g) for g in groups)


def test_scales_match_float64_formula():
    model = tiny("llama", seed=3)
    layers = linear_layers(model)
    mods = dict(model.named_modules())
    norm = mods["model.layers.1.post_attention_layernorm"]
    w_before = norm.weight.detach().double().clone()
    # max |X_j| over the calibration tokens at the gate/up input, recomputed in float64
    xs = []
    h = mods["model.layers.1.mlp.gate_proj"].register_forward_hook(lambda _m, a, _o: xs.append(a[0].double()))
    with torch.no_grad():
        for row in CALIB:
            model(row[None])
    h.remove()
    xmax = torch.cat([x.reshape(-1, 64) for x in xs]).abs().amax(0)
    wcat = torch.cat(
        [mods[f"model.layers.1.mlp.{n}"].weight.detach().double() for n in ("gate_proj", "up_proj")]
    )
    alpha = 0.7
    s = xmax.pow(alpha) / wcat.abs().amax(0).pow(1 - alpha)
    info = smooth_model(model, layers, CALIB, alpha=alpha)
    assert info["alpha"] == alpha
    assert torch.allclose(norm.weight.detach().double(), w_before / s, rtol=1e-5)
    assert info["scale_max"]["model.layers.1.post_attention_layernorm"] == pytest.approx(
        float(s.max()), rel=1e-5
    )
    with pytest.raises(MethodError, match="alpha"):
        smooth_model(model, layers, CALIB, alpha=1.5)


def inject_outliers(model, channels=(3, 17, 40), factor=40.0):
    """Float-equivalent rewrite with activation outlier channels: norm weight * factor, next linears' columns / factor."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for i in range(len(model.model.layers)):
            pre = f"model.layers.{i}"
            for norm, lins in (
                ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
            ):
                mods[f"{pre}.{norm}"].weight[list(channels)] *= factor
                for lin in lins:
                    mods[f"{pre}.{lin}"].weight[:, list(channels)] /= factor


@pytest.mark.parametrize("a_scale", ["dynamic", "static"])
def test_w8a8_smoothing_beats_plain_with_outlier_channels(a_scale):
    model = tiny("llama", seed=5)
    inject_outliers(model)
    with torch.no_grad():
        ref = model(HELD).logits
    params = {"a": "int8", "a_scale": a_scale}
    with quantized(model, "int8", method="act-quant", params=params, calib=CALIB), torch.no_grad():
        plain = float((model(HELD).logits - ref).square().mean())
    with quantized(model, "int8", method="smoothquant", params=params, calib=CALIB) as info, torch.no_grad():
        smooth = float((model(HELD).logits - ref).square().mean())
    assert info["smoothquant"]["alpha"] == 0.5
    assert smooth < 0.5 * plain, (smooth, plain)
