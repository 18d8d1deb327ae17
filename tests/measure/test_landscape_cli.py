"""`qscale landscape` and `qscale outliers` on a tiny random GPT-2 checkpoint: the printed numbers equal the
library's on the same calibration batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import small_bpe


def _checkpoint(out: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from qscale.corpora import read_split

    fast = small_bpe(read_split("austen", "train")[:5], 300)
    fast.save_pretrained(str(out))
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(fast), n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    GPT2LMHeadModel(cfg).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("landscape_ckpt"))


def _app():
    from qscale.cli import app

    return app


def test_landscape_json_matches_library(ckpt):
    res = CliRunner().invoke(
        _app(),
        ["landscape", "--model", str(ckpt), "--format", "int8", "--format", "int4-g16", "--corpus", "random_tokens",
         "--n-seqs", "2", "--seq-len", "64", "--samples", "4", "--iters", "10", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["batch"] == {"n_seqs": 2, "seq_len": 32, "corpus": "random_tokens", "seed": 0}  # capped at 32

    from qscale.corpora import calibration_batch
    from qscale.lm import load
    from qscale.measure import hessian_trace, quant_direction_terms

    lm = load(str(ckpt))
    ids = calibration_batch(lm.tokenizer, "random_tokens", n_samples=2, seq_len=32, seed=0)
    t = hessian_trace(lm.model, ids, samples=4, seed=0)
    assert out["trace"]["value"] == pytest.approx(t.value, rel=1e-6)
    assert set(out["trace"]["groups"]) == {
        "transformer.wte",
        "transformer.wpe",
        "transformer.h.0",
        "transformer.h.1",
        "transformer.ln_f",
    }
    q = quant_direction_terms(lm.model, ids, "int4-g16", measure=True)
    got = out["quant_directions"][1]
    assert got["format"] == "int4-g16"
    assert got["quadratic"] == pytest.approx(q.quadratic, rel=1e-6)
    assert got["measured_dloss"] == pytest.approx(q.measured_dloss, rel=1e-4, abs=1e-7)
    assert len(out["top_eigenvalues"]["values"]) == 1


def test_landscape_bad_format_and_outliers_table(ckpt):
    runner = CliRunner()
    res = runner.invoke(_app(), ["landscape", "--model", str(ckpt), "--format", "int4-g0"])
    assert res.exit_code != 0
    res = runner.invoke(_app(), ["landscape", "--model", str(ckpt), "--group-by", "blok"])
    assert res.exit_code != 0 and "block" in res.output
    res = runner.invoke(
        _app(),
        [
            "outliers",
            "--model",
            str(ckpt),
            "--corpus",
            "random_tokens",
            "--n-seqs",
            "2",
            "--seq-len",
            "16",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    layers = out["activations"]["layers"]
    assert len(layers) == 8  # 2 blocks x (c_attn, c_proj, c_fc, mlp.c_proj)
    assert out["activations"]["n_tokens"] == 32
    assert set(out["weights"]["layers"]) == set(layers)
    res = runner.invoke(
        _app(),
        ["outliers", "--model", str(ckpt), "--corpus", "random_tokens", "--n-seqs", "1", "--seq-len", "8"],
    )
    assert res.exit_code == 0, res.output
    assert "transformer.h.1.mlp.c_proj" in res.output
