"""``run_lens`` and ``qscale lens`` on a tiny checkpoint: zero strength is exactly lossless, entries agree with
direct measurements, the model is restored, the CLI writes its JSON/Markdown and rejects bad options."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import small_bpe

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def lm():
    import transformers as tf

    from qscale.corpora import read_split

    tok = small_bpe(read_split("lee_news", "train")[:60], 384)
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,  # a peaked random model, so that perturbations move its NLL clearly
    )
    return tf.LlamaForCausalLM(cfg).eval(), tok


def test_run_lens_tables(lm):
    from qscale.corpora.windows import get_windows
    from qscale.measure import evaluate_windows
    from qscale.quantize import quantized
    from qscale.workflows.lens import LensConfig, format_lens, run_lens, weight_group

    model, tok = lm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LensConfig(corpus="lee_news", seq_len=32, max_tokens=256, strengths=(0.0, 0.5))
    res = run_lens(model, tok, cfg)
    assert weight_group(model) == res["group"] == 64
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    windows = get_windows(tok, "lee_news", "test", protocol="stride", seq_len=32, max_tokens=256)
    base = evaluate_windows(model, windows)["nll"]
    assert res["float_nll"] == pytest.approx(base, abs=1e-9)
    zero, strong = res["strength"]
    assert zero["rel"] == 0.0 and all(zero[k] == 0.0 for k in zero if k != "rel")  # no noise, no change
    # a random model's NLL may go either way under noise; what must hold is that every perturbation acted
    assert all(strong[k] != 0.0 for k in strong if k != "rel")
    with quantized(model, "int4-g64", method="rtn"):
        direct = evaluate_windows(model, windows)["nll"] - base
    w4 = res["uniform_vs_cbrt"][0]
    assert w4["config"] == "W4 (g64)" and w4["uniform"] == pytest.approx(direct, abs=1e-9)
    prop = {(r["target"], r["kind"]): r for r in res["property"]}
    assert prop[("w", "RTN int4-g64")]["dnll"] == pytest.approx(direct, abs=1e-9)
    # matched-norm rows really have the reference error's norm (relative error equal to RTN's, per row)
    rtn_rel = prop[("w", "independent (norm of int4-g64)")]["w_rel_err"]
    assert rtn_rel == pytest.approx(prop[("w", "aware p=+1 (norm of int4-g64)")]["w_rel_err"], rel=1e-4)
    md = format_lens(res, "tiny")
    assert md.count("\n| ") >= 2 + 10 + 2 and "Uniform vs cube-root" in md


def test_lens_cli(lm, tmp_path):
    from typer.testing import CliRunner

    from qscale.cli import app

    model, tok = lm
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    out = tmp_path / "out"
    args = ["lens", "--model", str(ckpt), "--corpus", "lee_news", "--max-tokens", "128", "--seq-len", "32"]
    result = CliRunner().invoke(
        app, [*args, "--strengths", "0,0.3", "--seeds", "2", "--json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["rel"] for r in data["strength"]] == [0.0, 0.3]
    noisy = [r for r in data["property"] if "dnll_seeds" in r]
    assert len(noisy) == 8 and all(len(r["dnll_seeds"]) == 2 for r in noisy)
    assert all(r["dnll"] == pytest.approx(sum(r["dnll_seeds"]) / 2) for r in noisy)
    assert data["config"]["n_seeds"] == 2
    assert json.loads((out / "lens.json").read_text())["float_nll"] == data["float_nll"]
    assert "## Which property matters" in (out / "lens.md").read_text()
    bad = CliRunner().invoke(app, [*args, "--strengths", "0.1,abc"])
    assert bad.exit_code == 2 and "comma-separated" in bad.output
