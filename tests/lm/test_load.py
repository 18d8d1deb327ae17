"""qscale.lm.load on HF directories (safetensors and .bin) and ModelFacts against hand counts."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from qscale.lm import LoadError, ModelFacts, load
from qscale.lm.zoo import FAMILIES, random_model

V = 8192


def _gpt2_by_hand(d: int, n_layers: int, n_pos: int) -> tuple[int, int]:
    """(n_params, n_nonembed) of a tied GPT-2: per block attn 4d^2+4d, mlp 8d^2+5d, two LayerNorms 4d."""
    block = (4 * d * d + 4 * d) + (8 * d * d + 5 * d) + 4 * d
    nonembed = n_layers * block + 2 * d  # + final LayerNorm
    return nonembed + V * d + n_pos * d, nonembed


def _llama_by_hand(d: int, n_layers: int, ffn: int) -> tuple[int, int]:
    """(n_params, n_nonembed) of an untied Llama with full-width kv heads and no biases."""
    block = 4 * d * d + 3 * d * ffn + 2 * d  # q,k,v,o + gate,up,down + two RMSNorm weights
    nonembed = n_layers * block + d  # + final RMSNorm
    return nonembed + 2 * V * d, nonembed  # token embedding + untied head


def test_facts_gpt2_by_hand(micro_model):
    facts = micro_model.facts
    assert (facts.n_params, facts.n_nonembed) == _gpt2_by_hand(32, 2, 64)
    assert (facts.family, facts.n_layers, facts.d_model, facts.vocab_size) == ("gpt2", 2, 32, V)
    assert facts.tied_embeddings is True and facts.train_tokens is None


def test_facts_llama_by_hand(micro_llama):
    facts = micro_llama.facts
    ffn = micro_llama.model.config.intermediate_size
    assert ffn == 96  # 8/3 * 32 rounded up to a multiple of 16
    assert (facts.n_params, facts.n_nonembed) == _llama_by_hand(32, 2, ffn)
    assert facts.tied_embeddings is False and facts.family == "llama"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_n_params_equals_a_manual_count(shared_tokenizer, family):
    lm = random_model(family, shared_tokenizer, d_model=32, n_layers=2, n_heads=4, seq_len=48)
    # independent count: unique storages of the state dict (a tied head shares the embedding's storage)
    seen, total = set(), 0
    for t in lm.model.state_dict().values():
        if t.is_floating_point() and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.numel()
    assert lm.facts.n_params == total
    # non-embedding: minus every embedding table and an untied head
    emb = sum(m.weight.numel() for m in lm.model.modules() if isinstance(m, torch.nn.Embedding))
    head = 0 if lm.facts.tied_embeddings else lm.model.get_output_embeddings().weight.numel()
    assert lm.facts.n_nonembed == total - emb - head
    assert lm.facts.n_nonembed > 0 and lm.facts.d_model == 32
    assert ModelFacts.from_dict(json.loads(lm.facts.to_json())) == lm.facts


def _save(lm, path, fmt):
    path.mkdir()
    if fmt == "safetensors":
        lm.model.save_pretrained(str(path))
    else:  # the legacy PyTorch pickle layout: config.json + pytorch_model.bin
        lm.model.config.save_pretrained(str(path))
        torch.save(lm.model.state_dict(), path / "pytorch_model.bin")
    lm.tokenizer.save_pretrained(str(path))
    return path


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_load_hf_dir_roundtrip(micro_llama, tmp_path, fmt):
    path = _save(micro_llama, tmp_path / fmt, fmt)
    lm = load(str(path))
    assert not lm.model.training
    assert lm.model.config._attn_implementation == "eager"
    ref = micro_llama.model.state_dict()
    got = lm.model.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert lm.facts.n_params == micro_llama.facts.n_params
    assert lm.facts.n_nonembed == micro_llama.facts.n_nonembed
    weights = sorted(path.glob("*.safetensors")) or [path / "pytorch_model.bin"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in weights)).hexdigest()[:16]
    assert lm.facts.identity == f"sha256:{digest}"
    x = torch.tensor([lm.tokenizer("The whale", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(lm.model(x).logits, micro_llama.model(x).logits, atol=1e-6)


def test_identity_changes_with_the_weights(micro_model, tmp_path):
    a = load(str(_save(micro_model, tmp_path / "a", "safetensors")))
    with torch.no_grad():
        micro_model.model.transformer.h[0].mlp.c_fc.weight[0, 0] += 1.0
    b = load(str(_save(micro_model, tmp_path / "b", "safetensors")))
    assert a.facts.identity != b.facts.identity
    assert a.facts.n_params == b.facts.n_params


def test_load_dtype(micro_model, tmp_path):
    lm = load(str(_save(micro_model, tmp_path / "m", "safetensors")), dtype=torch.bfloat16)
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}


def test_load_errors(tmp_path, micro_model, monkeypatch):
    with pytest.raises(LoadError, match="not found"):
        load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="config.json"):
        load(str(tmp_path / "empty"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(LoadError, match="gguf"):
        load(str(tmp_path / "x.txt"))
    with pytest.raises(LoadError, match="Did you mean 'tiny-llama-s'"):
        load("zoo:tiny-lama-s", zoo_root=tmp_path)
    monkeypatch.setenv("QSCALE_ZOO_DIR", str(tmp_path / "zoo"))
    with pytest.raises(LoadError, match=r"qscale zoo train --preset tiny"):
        load("zoo:tiny-gpt2-s")
