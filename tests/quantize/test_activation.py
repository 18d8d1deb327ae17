"""Activation quantization: per-token dynamic and static per-tensor scales against hand references (integer
rounding with absmax/127, torch's float8_e4m3fn cast), MX per-token independence, W8A8 < W4A8 < W4A4 errors."""

from __future__ import annotations

import pytest
import torch

from qscale.formats import get_format
from qscale.quantize import MethodError, quantized
from qscale.quantize.activation import ActivationQuantizer
from tests.helpers import tiny_lm


def int8_ref(x, amax):
    s = amax / 127.0
    return (x.clamp(-amax, amax) / s).round() * s


def capture_input(model, name, ids):
    """The input a module actually received (after pre-hooks) in one forward pass."""
    got = {}
    module = dict(model.named_modules())[name]
    h = module.register_forward_hook(lambda _m, args, _out: got.setdefault("x", args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        h.remove()
    return got["x"]


IDS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(5))
FIRST = "model.layers.0.self_attn.q_proj"  # its input does not depend on any quantized layer


def test_per_token_int8_matches_hand_reference():
    model = tiny_lm("llama")
    x = capture_input(model, FIRST, IDS)
    with quantized(model, None, method="act-quant", params={"w": None, "a": "int8"}) as info:
        xq = capture_input(model, FIRST, IDS)
    x2 = x.reshape(-1, x.shape[-1])
    ref = int8_ref(x2, x2.abs().amax(1, keepdim=True))
    assert torch.allclose(xq.reshape(ref.shape), ref, rtol=0, atol=1e-6)
    assert info["a"] == "int8-pc" and info["a_scale"] == "dynamic" and info["w"] is None
    # restored: hooks gone
    assert torch.equal(capture_input(model, FIRST, IDS), x)


def test_per_token_fp8_matches_torch_float8():
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 2, 64)
    q = ActivationQuantizer(get_format("fp8-e4m3"))(x)
    x2 = x.reshape(-1, 64)
    s = x2.abs().amax(1, keepdim=True) / 448.0
    ref = ((x2 / s).to(torch.float8_e4m3fn).float() * s).reshape(x.shape)
    assert torch.allclose(q, ref, rtol=1e-6, atol=0)


def test_mx_activation_scales_are_per_token():
    x = torch.randn(6, 96, generator=torch.Generator().manual_seed(1))
    x[2] *= 1000.0  # a huge token must not change the others' quantization
    quant = ActivationQuantizer(get_format("mxfp8"))
    q = quant(x)
    rows = torch.cat([quant(x[i : i + 1]) for i in range(6)])
    assert torch.equal(q, rows)
    assert not torch.equal(q, x)


def test_static_scale_calibrated_absmax_and_saturation():
    model = tiny_lm("llama")
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(2))
    # the calibration absmax of the first layer's input, computed independently
    amax = 0.0
    for row in calib:
        amax = max(amax, float(capture_input(model, FIRST, row[None]).abs().max()))
    x = capture_input(model, FIRST, IDS)
    with quantized(
        model, None, method="act-quant", params={"w": None, "a": "int8", "a_scale": "static"}, calib=calib
    ) as info:
        xq = capture_input(model, FIRST, IDS)
    assert info["a_amax"][FIRST] == pytest.approx(amax, rel=1e-6)
    assert info["n_samples"] == 4 and info["seq_len"] == 16
    ref = int8_ref(x, torch.tensor(info["a_amax"][FIRST]))
    assert torch.allclose(xq, ref, rtol=0, atol=1e-6)
    # any format with a scale works statically: per-tensor int8 and fp8-e4m3 (against torch's float8 cast)
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(8)) * 3
    assert torch.allclose(
        ActivationQuantizer(get_format("int8-pt"), amax=5.0)(x), int8_ref(x, 5.0), atol=1e-6
    )
    s = 5.0 / 448.0
    fp8 = (x.clamp(-5, 5) / s).to(torch.float8_e4m3fn).float() * s
    assert torch.allclose(ActivationQuantizer(get_format("fp8-e4m3"), amax=5.0)(x), fp8, rtol=1e-6, atol=0)
    # hand example from the module docstring: amax 2.54 -> scale 0.02; 0.031 -> 0.04, 9.0 -> 2.54
    q = ActivationQuantizer(get_format("int8"), amax=2.54)(torch.tensor([[0.031, 9.0, -9.0, 0.0]]))
    assert torch.allclose(q, torch.tensor([[0.04, 2.54, -2.54, 0.0]]), atol=1e-6)


def test_static_mx_and_bad_choices_are_clear_errors():
    model = tiny_lm("llama")
    calib = torch.randint(0, 128, (2, 8))
    with (
        pytest.raises(MethodError, match="MX"),
        quantized(
            model,
            None,
            method="act-quant",
            params={"w": None, "a": "mxfp8", "a_scale": "static"},
            calib=calib,
        ),
    ):
        pass
    with (
        pytest.raises(MethodError, match="Did you mean 'dynamic'"),
        quantized(model, "int8", method="act-quant", params={"a_scale": "dynamc"}),
    ):
        pass
    with (
        pytest.raises(MethodError, match="calibration"),
        quantized(model, "int8", method="act-quant", params={"a_scale": "static"}),
    ):
        pass


def test_w8a8_w4a8_w4a4_error_ordering():
    model = tiny_lm("llama", seed=3)
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
    configs = {
        "W8A8": ("int8", {"a": "int8"}),
        "W4A8": ("int4-g32", {"a": "int8"}),
        "W4A4": ("int4-g32", {"a": "int4-g32"}),
    }
    err = {}
    for name, (w, params) in configs.items():
        with quantized(model, w, method="act-quant", params=params) as info, torch.no_grad():
            err[name] = float((model(ids).logits - ref).square().mean())
        assert info["w"] == str(get_format(w))
    assert 0 < err["W8A8"] < err["W4A8"] < err["W4A4"], err
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)


def test_weights_with_gptq_under_activation_quant():
    model = tiny_lm("llama", seed=4)
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(4))
    with quantized(
        model, "int4-g32", method="act-quant", params={"a": "int8", "w_method": "gptq"}, calib=calib
    ) as info:
        assert info["w_method"] == "gptq"
        assert set(info["damp"]) == set(info["layers"])
