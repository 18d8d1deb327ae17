"""Calibration batches: determinism, train split only, synthetic sets, errors."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch

from qscale.corpora import calibration_batch, read_split
from qscale.corpora import windows as W
from qscale.corpora.calibration import calibration_corpora
from qscale.corpora.windows import STREAM_CACHE, WindowError, tokenize_documents
from tests.helpers import small_bpe

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok():
    return small_bpe(read_split("lee_news", "train")[:60], 400, extra_special=("<pad>",), pad="<pad>")


def _matches(haystack: np.ndarray, needle: np.ndarray) -> np.ndarray:
    """Start positions where ``needle`` occurs contiguously in ``haystack``."""
    view = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return np.nonzero((view == needle).all(axis=1))[0]


def test_deterministic_by_seed_and_shape(tok):
    a = calibration_batch(tok, "lee_news", n_samples=6, seq_len=24, seed=3)
    b = calibration_batch(tok, "lee_news", n_samples=6, seq_len=24, seed=3)
    c = calibration_batch(tok, "lee_news", n_samples=6, seq_len=24, seed=4)
    assert a.dtype == torch.long and a.shape == (6, 24)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, 0] == tok.bos_token_id).all()
    no_bos = calibration_batch(tok, "lee_news", n_samples=6, seq_len=24, seed=3, add_bos=False)
    assert no_bos.shape == (6, 24)


def test_windows_come_from_train_split_only(tok, monkeypatch):
    STREAM_CACHE.clear()
    asked = []
    real = W.read_documents

    def recording(corpus, split):
        asked.append(split)
        return real(corpus, split)

    monkeypatch.setattr(W, "read_documents", recording)
    batch = calibration_batch(tok, "lee_news", n_samples=8, seq_len=32, seed=0)
    assert asked == ["train"]
    train = tokenize_documents(tok, read_split("lee_news", "train")).ids
    test = tokenize_documents(tok, read_split("lee_news", "test")).ids
    starts = []
    for row in batch.numpy():
        found = _matches(train, row[1:])  # a contiguous window of the train stream
        assert len(found) >= 1 and len(_matches(test, row[1:])) == 0
        starts.append(found[0])
    # starts are spread over the stream, not all at its beginning
    assert max(starts) > len(train) // 4 and len(set(starts)) == len(starts)


def test_random_tokens_exclude_special_and_cover_vocab(tok):
    x = calibration_batch(tok, "random_tokens", n_samples=16, seq_len=65, seed=1)
    body = x[:, 1:]
    special = set(tok.all_special_ids)
    assert special == {0, 1}
    assert not any(int(t) in special for t in body.flatten())
    assert int(body.min()) >= 0 and int(body.max()) < len(tok)
    # 1024 uniform draws from 398 ids: expect ~398*(1-exp(-1024/398)) = 368 distinct
    assert 330 < len(set(body.flatten().tolist())) <= 398
    assert torch.equal(x, calibration_batch(tok, "random_tokens", n_samples=16, seq_len=65, seed=1))


def test_random_punct_is_punctuation(tok):
    x = calibration_batch(tok, "random_punct", n_samples=3, seq_len=40, seed=2)
    assert x.shape == (3, 40)
    allowed = set(string.punctuation) | {" "}
    for row in x[:, 1:]:
        text = tok.decode(row.tolist())
        assert text and set(text) <= allowed
    assert torch.equal(x, calibration_batch(tok, "random_punct", n_samples=3, seq_len=40, seed=2))


def test_unknown_corpus_lists_choices(tok):
    assert {"enwiki_gensim", "random_tokens", "random_punct"} <= set(calibration_corpora())
    with pytest.raises(WindowError, match="Did you mean 'random_tokens'") as err:
        calibration_batch(tok, "random_token", 2, 8)
    assert "enwiki_gensim" in str(err.value) and "random_punct" in str(err.value)
    with pytest.raises(WindowError, match="seq_len"):
        calibration_batch(tok, "lee_news", 2, 1)
