"""``qscale eval``: float-only and --format runs on a tiny model, checked against the Python API."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from typer.testing import CliRunner

import qscale.lm
from qscale.cli import app
from qscale.corpora import read_split
from qscale.measure import evaluate
from tests.helpers import small_bpe

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def lm():
    tok = small_bpe(read_split("lee_news", "train")[:40], 320)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=2, attn_implementation="eager"
    )
    return SimpleNamespace(model=GPT2LMHeadModel(cfg).eval(), tokenizer=tok, name="tiny")


@pytest.fixture
def patched_load(lm, monkeypatch):
    calls = []

    def fake_load(name, dtype=None, device="cpu", **kw):
        calls.append((name, dtype, device))
        return lm

    monkeypatch.setattr(qscale.lm, "load", fake_load, raising=False)
    return calls


ARGS = ["--corpus", "lee_news", "--seq-len", "32", "--max-tokens", "400", "--json"]


def test_eval_float_matches_python_api(lm, patched_load):
    res = CliRunner().invoke(app, ["eval", "--model", "tiny", "--protocol", "rolling", *ARGS])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    direct = evaluate(lm.model, lm.tokenizer, "lee_news", "test", "rolling", 32, max_tokens=400)
    assert out["nll"] == pytest.approx(direct["nll"], rel=1e-9) and out["bpb"] == pytest.approx(direct["bpb"])
    assert out["protocol"] == "rolling" and out["n_tokens"] == direct["n_tokens"] and out["model"] == "tiny"
    assert patched_load == [("tiny", torch.float32, "cpu")]


def test_eval_bos_follows_the_model_unless_forced(lm, patched_load):
    """small_bpe declares nothing and has a BOS: BOS by default; --no-bos matches the API's add_bos=False."""
    outs = {}
    for flag in ([], ["--no-bos"], ["--bos"]):
        res = CliRunner().invoke(app, ["eval", "--model", "tiny", *flag, *ARGS])
        assert res.exit_code == 0, res.output
        outs[tuple(flag)] = json.loads(res.output)
    assert outs[()]["bos"] and outs[("--bos",)]["bos"] and not outs[("--no-bos",)]["bos"]
    direct = evaluate(lm.model, lm.tokenizer, "lee_news", "test", "stride", 32, max_tokens=400, add_bos=False)
    assert outs[("--no-bos",)]["nll"] == pytest.approx(direct["nll"], rel=1e-9)
    assert outs[("--no-bos",)]["nll"] != pytest.approx(outs[()]["nll"], rel=1e-6)


def test_eval_with_format_reports_float_quantized_and_deltas(lm, patched_load):
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    res = CliRunner().invoke(app, ["eval", "--model", "tiny", "--format", "int3-g64", *ARGS])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    f, q = out["float"], out["quantized"]
    direct = evaluate(lm.model, lm.tokenizer, "lee_news", "test", "stride", 32, max_tokens=400)
    assert f["nll"] == pytest.approx(direct["nll"], rel=1e-6)  # float baseline from the reference cache
    assert f["bpb"] == pytest.approx(direct["bpb"], rel=1e-6)
    assert q["nll"] != f["nll"] and out["kld"] > 0 and 0 < out["top1_agreement"] <= 1
    assert out["delta"]["nll"] == pytest.approx(q["nll"] - f["nll"])
    assert out["delta"]["ppl"] == pytest.approx(math.exp(q["nll"]) - math.exp(f["nll"]))
    assert out["format"] == "int3-g64" and out["kld_top_k"] is None  # tiny vocab: exact KL
    # the model is restored bit-exactly after the run
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_eval_table_output(patched_load):
    res = CliRunner().invoke(app, ["eval", "-m", "tiny", "-f", "int4-g32", *ARGS[:-1]])
    assert res.exit_code == 0, res.output
    assert "delta" in res.output and "top-1 agreement" in res.output and "int4-g32" in res.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--protocol", "rollin"], "Did you mean 'rolling'"),
        (["--format", "innt4-g128"], "did you mean int4-g128"),
        (["--format", "int4-g0"], "int4-g0"),
        (["--dtype", "fp12"], "valid choices"),
        (["--top-k", "many"], "--top-k"),
        (["--corpus", "lee_newz"], "lee_news"),
    ],
)
def test_eval_bad_options(patched_load, extra, message):
    res = CliRunner().invoke(app, ["eval", "--model", "tiny", *ARGS, *extra])
    assert res.exit_code != 0
    flat = " ".join(res.output.replace("│", " ").split())  # undo rich's box and line wrapping
    assert message in flat
