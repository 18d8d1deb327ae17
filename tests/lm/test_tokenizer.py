"""The shared zoo tokenizer: deterministic training, byte-level round trips, special tokens."""

from __future__ import annotations

import json

from qscale.corpora import corpus_names, read_split
from qscale.lm.tokenizer import SPECIAL, VOCAB_SIZE, train_tokenizer


def _merges(tok) -> list:
    return json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]


def test_training_is_deterministic_and_data_dependent():
    docs = read_split("lee_news", "train")
    a = train_tokenizer(docs, vocab_size=600)
    b = train_tokenizer(list(docs), vocab_size=600)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(_merges(a)) == 600 - 257  # 256 byte symbols + <|endoftext|>, then merges fill the vocab
    c = train_tokenizer(read_split("kjv", "train")[:200], vocab_size=600)
    assert _merges(c) != _merges(a)


def test_shared_tokenizer(shared_tokenizer):
    tok = shared_tokenizer
    assert len(tok) == VOCAB_SIZE
    assert tok.bos_token == tok.eos_token == tok.pad_token == SPECIAL
    assert tok.convert_tokens_to_ids(SPECIAL) == 0
    for name in corpus_names():
        text = read_split(name, "test")[0][:2000]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text  # byte-level: lossless
        assert len(text.encode()) / len(ids) > 2.5, name  # it compresses English text
    odd = "naïve café — 東京 🐋\ttab"
    assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd
