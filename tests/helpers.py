"""Small shared test helpers (not fixtures): a byte-level BPE trained in a second on a few documents, a run-store row."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

EOT = "<|endoftext|>"


def small_bpe(
    texts: Iterable[str], vocab_size: int, extra_special: Sequence[str] = (), pad: str | None = None
):
    """A byte-level BPE tokenizer trained on ``texts`` with ``<|endoftext|>`` as BOS and EOS (``pad``: pad token),
    as a transformers ``PreTrainedTokenizerFast``: the same kind of tokenizer as the zoo's, but tiny."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    extra = {"pad_token": pad} if pad is not None else {}
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT, **extra)


def tiny_lm(family: str, seed: int = 0):
    """A randomly initialised 2-layer causal LM (width 64, vocab 128, context 64) of a transformers family,
    in eval mode; weights drawn under ``torch.manual_seed(seed)``. Families: llama, gpt2, opt, neox, qwen2, gemma."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    common = {"vocab_size": 128, "max_position_embeddings": 64}
    gqa = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2}  # fmt: skip
    if family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**gqa, **common))
    elif family == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
        )
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "opt":
        cfg = tf.OPTConfig(
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=64,
            **common,
        )
        model = tf.OPTForCausalLM(cfg)
    elif family == "neox":
        cfg = tf.GPTNeoXConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, **common
        )
        model = tf.GPTNeoXForCausalLM(cfg)
    elif family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**gqa, **common))
    elif family == "gemma":
        model = tf.GemmaForCausalLM(tf.GemmaConfig(**gqa, head_dim=16, **common))
    else:
        raise ValueError(f"unknown family {family!r}; valid: llama, gpt2, opt, neox, qwen2, gemma")
    return model.eval()


def store_row(key: str, status: str = "ok", **extra) -> dict:
    """One run-store row (``RunStore.put``) of a fictional zoo run; ``extra`` replaces top-level fields."""
    row = {
        "run_key": key,
        "status": status,
        "model": "zoo:m",
        "model_ref": "zoo:m",
        "model_identity": "id-1",
        "format": "int4-g32",
        "method": "rtn",
        "config": {"format": "int4-g32", "k": key},
        "facts": {
            "family": "llama",
            "n_params": 1000,
            "n_nonembed": 600,
            "train_tokens": None,
            "n_layers": 2,
        },
        "format_info": {"bits_per_element": 4.5, "element_bits": 4, "family": "int"},
        "metrics": {
            "float_nll": 3.0,
            "nll": 3.25,
            "dnll": 0.25,
            "ppl": math.exp(3.25),
            "kld": 0.1,
            "top1": 0.9,
        },
        "features": {"sqnr_db": 19.5, "weight_stats_kurtosis_max": 1.5},
        "timings": {"eval_s": 0.5},
        "provenance": {"qscale_version": "0.1.0"},
    }
    row.update(extra)
    return row
