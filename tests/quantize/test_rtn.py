"""RTN on real transformers models: in-place, restorable, right layout, SQNR against float64 by hand."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from qscale.formats import get_format
from qscale.kernels import fake_quant
from qscale.lm.layers import linear_layers
from qscale.measure.weights import model_sqnr, sqnr_db, weight_stats
from qscale.quantize import MethodError, MethodSpec, get_method, quantized
from qscale.quantize.sqnr import db


def _gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=2)
    return GPT2LMHeadModel(cfg).eval()


def _llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("make", [_gpt2, _llama], ids=["gpt2-conv1d", "llama"])
def test_layers_found_with_out_in_layout(make):
    model = make()
    refs = linear_layers(model)
    names = [r.name for r in refs]
    assert not any("lm_head" in n for n in names)
    if make is _gpt2:
        # 2 blocks x (c_attn, c_proj, c_fc, mlp.c_proj), all Conv1D stored (in, out)
        assert len(refs) == 8 and all(r.transposed for r in refs)
        attn = next(r for r in refs if r.name.endswith("attn.c_attn"))
        assert attn.get_weight().shape == (3 * 64, 64)  # (out, in)
    else:
        assert len(refs) == 14 and not any(r.transposed for r in refs)  # 7 linears per block
    with pytest.raises(ValueError, match="matched no linear layer"):
        linear_layers(model, include=["nothing.*"])


@pytest.mark.parametrize("make", [_gpt2, _llama], ids=["gpt2-conv1d", "llama"])
def test_rtn_quantizes_along_input_axis_and_restores_bit_exactly(make):
    model = make()
    before = _state(model)
    fmt = get_format("int4-g32")
    refs = linear_layers(model)
    expected = {r.name: fake_quant(fmt, r.get_weight().contiguous().clone()) for r in refs}
    with quantized(model, fmt, method="rtn") as info:
        for r in refs:
            assert torch.equal(r.get_weight(), expected[r.name]), r.name
            # groups of 32 along the input axis hold at most 16 distinct values (4 bits)
            g = r.get_weight().reshape(r.out_features, -1, 32)
            assert max(len(torch.unique(g[i, j])) for i in range(2) for j in range(g.shape[1])) <= 16
        head = model.lm_head.weight if hasattr(model, "lm_head") else None
        assert torch.equal(head, before["lm_head.weight"]), "the output head is excluded by default"
        assert info["format"] == "int4-g32" and info["method"]["name"] == "rtn"
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_restore_after_exception_and_include_rules():
    model = _llama()
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"), quantized(model, "int3", include=["*.mlp.*"]) as info:
        assert set(info["layers"]) == {n for n, _ in model.named_modules() if ".mlp." in n and "proj" in n}
        q = model.model.layers[0].self_attn.q_proj.weight
        assert torch.equal(q, before["model.layers.0.self_attn.q_proj.weight"])  # not included
        raise RuntimeError("boom")
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sqnr_matches_float64_by_hand():
    model = _gpt2()
    fmt = get_format("int4-g32")
    res = model_sqnr(model, fmt)
    sig = noise = 0.0
    for r in linear_layers(model):
        w = r.get_weight().double()
        q = fake_quant(fmt, r.get_weight().contiguous()).double()
        s, n = float((w**2).sum()), float(((w - q) ** 2).sum())
        assert res["layers"][r.name]["sqnr_db"] == pytest.approx(10 * math.log10(s / n), rel=1e-9)
        sig, noise = sig + s, noise + n
    assert res["sqnr_db"] == pytest.approx(10 * math.log10(sig / noise), rel=1e-9)
    # more bits, more SQNR: about 6 dB per bit for a uniform grid
    s8 = model_sqnr(model, "int8-g32")["sqnr_db"]
    assert 20 < s8 - res["sqnr_db"] < 28


def test_db_and_weight_stats_worked_numbers():
    assert db(101.0, 2.0) == pytest.approx(17.0329, abs=1e-4)
    assert db(1.0, 0.0) == math.inf
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert sqnr_db(w, w) == math.inf
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(200_000, generator=g, dtype=torch.float64)
    st = weight_stats(gauss)
    assert abs(st["kurtosis"]) < 0.05 and st["frac_beyond_6std"] < 1e-4
    uni = torch.rand(200_000, generator=g, dtype=torch.float64)
    assert weight_stats(uni)["kurtosis"] == pytest.approx(-1.2, abs=0.02)
    spiky = torch.zeros(1000, dtype=torch.float64)
    spiky[0] = 100.0
    assert weight_stats(spiky)["frac_beyond_6std"] == pytest.approx(1e-3)


def test_method_errors_name_valid_choices():
    with pytest.raises(MethodError, match="Did you mean 'rtn'"):
        get_method("rnt")
    with pytest.raises(MethodError, match="unknown parameter"):
        MethodSpec.of("rtn", {"damp": 0.1})
    with pytest.raises(MethodError, match="needs a format"), quantized(_gpt2(), None, method="rtn"):
        pass
    assert MethodSpec.of("rtn").canonical() == '{"name":"rtn","params":{}}'


def test_calibration_need_follows_the_parameters():
    m = get_method("act-quant")
    assert not m.calibration_needed(m.resolve_params({"a": "int8-pc"}))
    assert m.calibration_needed(m.resolve_params({"a_scale": "static"}))
    assert m.calibration_needed(m.resolve_params({"w_method": "gptq"}))
    assert get_method("gptq").calibration_needed({}) and not get_method("rtn").calibration_needed({})
    with (
        pytest.raises(MethodError, match="needs calibration"),
        quantized(_llama(), "int8-pc", method="act-quant", params={"a_scale": "static"}),
    ):
        pass
