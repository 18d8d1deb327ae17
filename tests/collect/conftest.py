"""Fixtures for the collection tests: tiny random HF checkpoints with a tiny byte-level BPE tokenizer.

Nothing is downloaded: the tokenizer is trained here on a few kilobytes of the packaged corpus and the
models are randomly initialised Llama checkpoints (a few thousand parameters) saved as safetensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import EOT, small_bpe


def _train_tokenizer(out: Path) -> int:
    from qscale.corpora import read_split

    text = read_split("enwiki_gensim", "train")[:4]
    fast = small_bpe(text, 384, pad=EOT)
    fast.save_pretrained(str(out))
    return len(fast)


def make_tiny_model(
    out: Path, seed: int = 0, hidden: int = 32, layers: int = 2, tokenizer_from: Path | None = None
) -> Path:
    """A random Llama checkpoint (hidden ``hidden``, ``layers`` blocks) with its tokenizer, in ``out``.

    ``tokenizer_from``: copy that checkpoint's tokenizer instead of training one.
    """
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is None:
        vocab = _train_tokenizer(out)
    else:
        for f in tokenizer_from.glob("*token*"):
            shutil.copy(f, out / f.name)
        vocab = len(AutoTokenizer.from_pretrained(str(out)))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two random tiny checkpoints of different widths."""
    root = tmp_path_factory.mktemp("tiny_models")
    a = make_tiny_model(root / "tiny-a", seed=0, hidden=32)
    return [a, make_tiny_model(root / "tiny-b", seed=1, hidden=64, tokenizer_from=a)]
