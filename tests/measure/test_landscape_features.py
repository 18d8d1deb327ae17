"""The registered curvature / outlier features, and the second-order chain with real qscale formats."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from qscale.features import LandscapeSettings, compute_features, get_feature
from qscale.formats import get_format
from qscale.measure.landscape import hessian_top_eigenvalues, hessian_trace, quant_direction_terms
from qscale.measure.outliers import activation_stats

VOCAB = 40


def _gpt2(dtype=torch.float32, n_positions=16):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=n_positions,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def _lm(model):
    return SimpleNamespace(model=model, tokenizer=None, facts=None)


def test_features_equal_direct_calls_and_record_settings():
    model = _gpt2()
    calib = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(0))
    names = [
        "hessian_trace",
        "hessian_trace_se",
        "trace_per_param",
        "trace_linear",
        "trace_linear_pp",
        "top_eig",
        "act_outliers",
        "landscape_settings",
        "qdir_linear",
        "qdir_quadratic",
        "qdir_pred_dloss",
    ]
    cache: dict = {}
    feats = compute_features(_lm(model), "int4-g16", names, calib=calib, cache=cache)
    batch = calib[:2, :16]  # default 2 sequences; 128 tokens capped at the 16 positions
    assert torch.equal(cache["landscape_batch"], batch)
    assert feats["landscape_settings_n_seqs"] == 2 and feats["landscape_settings_seq_len"] == 16
    assert feats["landscape_settings_trace_samples"] == 8
    t = hessian_trace(model, batch, samples=8, seed=0)
    assert feats["hessian_trace"] == t.value and feats["hessian_trace_se"] == t.stderr
    assert feats["trace_per_param"] == pytest.approx(t.value / sum(p.numel() for p in model.parameters()))
    lin = [f"transformer.h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    tl = t.groups("tensor")
    assert feats["trace_linear"] == pytest.approx(sum(tl[n].value for n in lin), rel=1e-12)
    n_lin = sum(tl[n].n_params for n in lin)
    assert feats["trace_linear_pp"] == pytest.approx(feats["trace_linear"] / n_lin, rel=1e-12)
    e = hessian_top_eigenvalues(model, batch, k=1, iters=20, tol=1e-3)
    assert feats["top_eig"] == e.values[0] and e.values[0] > 0
    q = quant_direction_terms(model, batch, get_format("int4-g16"))
    assert feats["qdir_linear"] == q.linear and feats["qdir_quadratic"] == q.quadratic
    assert feats["qdir_pred_dloss"] == pytest.approx(q.linear + q.quadratic)
    a = activation_stats(model, batch).summary()
    for k, v in a.items():
        assert feats[f"act_outliers_{k}"] == pytest.approx(v, nan_ok=True)
    assert get_feature("qdir_quadratic").level == "model_format"
    assert get_feature("hessian_trace").cost == "hvp" and get_feature("act_outliers").cost == "eval"


def test_settings_override_through_the_cache():
    model = _gpt2()
    calib = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
    cache = {"landscape_settings": LandscapeSettings(n_seqs=1, seq_len=8, trace_samples=4, seed=3)}
    feats = compute_features(
        _lm(model), None, ["hessian_trace", "landscape_settings"], calib=calib, cache=cache
    )
    assert feats["landscape_settings_n_seqs"] == 1 and feats["landscape_settings_seq_len"] == 8
    assert feats["hessian_trace"] == hessian_trace(model, calib[:1, :8], samples=4, seed=3).value


@pytest.mark.parametrize("spec", ["int8", "fp8-e4m3-pc", "int4-g16"])
def test_second_order_prediction_with_real_formats(spec):
    """g.D + 1/2 D^T H D against the really quantized model's loss change (float64 model, same batch)."""
    model = _gpt2(torch.float64)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    q = quant_direction_terms(model, ids, spec, measure=True)
    assert q.format == str(get_format(spec))
    assert abs(q.measured_dloss) > 1e-7
    err = abs(q.predicted_dloss - q.measured_dloss)
    # 8-bit directions are tiny: the Taylor remainder is far below the change; 4-bit is coarser but close.
    tol = 0.02 if spec != "int4-g16" else 0.1
    assert err <= tol * abs(q.measured_dloss), (q.predicted_dloss, q.measured_dloss)
    assert q.d_norm > 0 and math.isfinite(q.curvature_along_d)
