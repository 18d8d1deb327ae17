"""GGUF loading: the test writes a tiny random Llama GGUF itself (``gguf.GGUFWriter``, llama.cpp tensor names
and metadata keys, f32 tensors) and loads it back through ``qscale.lm.load``.

llama.cpp's converter stores q/k projection rows permuted (interleaved rotary halves) and transformers undoes
that on load; so the writer applies the permutation, and the loaded weights must equal the originals bit for
bit. Writing q/k unpermuted is shown to change the model, which proves the check can fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from qscale.lm import load  # noqa: E402


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp layout: within each head, rows (r0, r1, ..., r_{h/2}, ...) -> pairs of the two halves."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(lm, path, permute_qk: bool = True, add_bos: bool | None = None) -> None:
    model, cfg, tok = lm.model, lm.model.config, lm.tokenizer
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    tj = json.loads(tok.backend_tokenizer.to_str())
    vocab = tj["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))  # 3 = control (<|endoftext|>), 1 = normal
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    if add_bos is not None:  # tokenizer.ggml.add_bos_token, as llama.cpp's converter writes it
        w.add_add_bos_token(add_bos)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if permute_qk:
            q, k = _permute_rows(q, cfg.num_attention_heads), _permute_rows(k, cfg.num_key_value_heads)
        names = {
            "attn_q": q,
            "attn_k": k,
            "attn_v": sd[p + "self_attn.v_proj.weight"],
            "attn_output": sd[p + "self_attn.o_proj.weight"],
            "ffn_gate": sd[p + "mlp.gate_proj.weight"],
            "ffn_up": sd[p + "mlp.up_proj.weight"],
            "ffn_down": sd[p + "mlp.down_proj.weight"],
            "attn_norm": sd[p + "input_layernorm.weight"],
            "ffn_norm": sd[p + "post_attention_layernorm.weight"],
        }
        for name, arr in names.items():
            w.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(arr))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def gguf_lm(shared_tokenizer):
    from qscale.lm.zoo import random_model

    return random_model("llama", shared_tokenizer, d_model=32, n_layers=2, n_heads=4, seq_len=64, seed=3)


def test_gguf_roundtrip_is_bit_exact(gguf_lm, tmp_path):
    path = tmp_path / "tiny-llama-f32.gguf"
    write_llama_gguf(gguf_lm, path)
    lm = load(str(path))
    assert not lm.model.training
    ref, got = gguf_lm.model.state_dict(), lm.model.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    text = "Call me Ishmael. Some years ago"
    ids = gguf_lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert lm.tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert lm.tokenizer.decode(ids) == text
    f = lm.facts
    assert (f.family, f.n_params, f.n_nonembed, f.tied_embeddings) == (
        "llama",
        gguf_lm.facts.n_params,
        gguf_lm.facts.n_nonembed,
        False,
    )
    import hashlib

    assert f.identity == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_unpermuted_qk_is_detected(gguf_lm, tmp_path):
    path = tmp_path / "wrong.gguf"
    write_llama_gguf(gguf_lm, path, permute_qk=False)
    got = load(str(path)).model.state_dict()
    ref = gguf_lm.model.state_dict()
    assert not torch.equal(
        got["model.layers.0.self_attn.q_proj.weight"], ref["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(
        got["model.layers.0.self_attn.v_proj.weight"], ref["model.layers.0.self_attn.v_proj.weight"]
    )
