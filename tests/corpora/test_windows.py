"""Evaluation windows: protocol bookkeeping, BOS handling, exact byte counts, caching, errors."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from qscale.corpora import read_split
from qscale.corpora import windows as W
from qscale.corpora.windows import (
    STREAM_CACHE,
    TokenStream,
    WindowError,
    get_windows,
    tokenize_documents,
    windows_from_documents,
    windows_from_stream,
)

EOT = "<|endoftext|>"
UNICODE_DOC = "naïve café — 東京 🙂 crème brûlée; ok.\n\n  Ünïcödé   spaces\tand tabs  "


def _bpe(texts, vocab_size=400, pre=None, byte_level=True):
    tok = Tokenizer(models.BPE(unk_token=None if byte_level else "[UNK]"))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre or pre_tokenizers.Whitespace()
        alphabet = []
    special = [EOT] if byte_level else [EOT, "[UNK]"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return tok


@pytest.fixture(scope="module")
def train_text():
    return read_split("lee_news", "train")[:60]


@pytest.fixture(scope="module")
def tok_bos(train_text):
    """GPT-2 style: byte-level BPE, <|endoftext|> is BOS and EOS."""
    return PreTrainedTokenizerFast(tokenizer_object=_bpe(train_text), bos_token=EOT, eos_token=EOT)


@pytest.fixture(scope="module")
def tok_nobos(train_text):
    """No BOS token, EOS only."""
    return PreTrainedTokenizerFast(tokenizer_object=_bpe(train_text), eos_token=EOT)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- stride


def test_stride_with_bos_matches_hand_built_windows(tok_bos):
    doc = read_split("lee_news", "test")[0]
    ids = _ids(tok_bos, doc)
    L = 16
    w = windows_from_documents(tok_bos, [doc], "stride", L)
    n = len(ids) // (L - 1)
    assert n >= 3
    expect = np.array([[0, *ids[i * (L - 1) : (i + 1) * (L - 1)]] for i in range(n)])
    assert w.bos and tok_bos.bos_token_id == 0
    np.testing.assert_array_equal(w.input_ids.numpy(), expect)
    # BOS is context only; every one of the L-1 text tokens is scored
    assert not w.score_mask[:, 0].any() and w.score_mask[:, 1:].all()
    assert w.n_scored == n * (L - 1) == w.score_mask.sum()
    assert w.stream_tokens == len(ids)


def test_stride_without_bos_first_token_is_context(tok_nobos):
    doc = read_split("lee_news", "test")[0]
    ids = _ids(tok_nobos, doc)
    L = 16
    w = windows_from_documents(tok_nobos, [doc], "stride", L)
    n = len(ids) // L
    assert not w.bos
    np.testing.assert_array_equal(w.input_ids.numpy(), np.array(ids[: n * L]).reshape(n, L))
    assert not w.score_mask[:, 0].any() and w.score_mask[:, 1:].all()
    assert w.n_scored == n * (L - 1)


def test_bos_follows_the_tokenizers_declared_convention(train_text):
    """A tokenizer that declares add_bos_token=false (Qwen2.5, SmolLM2 in their GGUF and HF files) gets windows
    and calibration rows without BOS; one that declares true, or declares nothing and has a BOS, gets BOS."""
    from qscale.corpora.calibration import calibration_batch

    bpe = _bpe(train_text)
    declared_off = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOT, eos_token=EOT, add_bos_token=False
    )
    declared_on = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOT, eos_token=EOT, add_bos_token=True
    )
    silent = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT)
    no_bos = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOT, add_bos_token=True)
    assert [W.model_adds_bos(t) for t in (declared_off, declared_on, silent, no_bos)] == [
        False,
        True,
        True,
        False,
    ]
    doc = read_split("lee_news", "test")[0]
    ids = _ids(silent, doc)
    L = 16
    off = windows_from_documents(declared_off, [doc], "stride", L)
    on = windows_from_documents(declared_on, [doc], "stride", L)
    assert not off.bos and on.bos
    np.testing.assert_array_equal(
        off.input_ids[0].numpy(), ids[:L]
    )  # L stream tokens, the first context only
    np.testing.assert_array_equal(on.input_ids[0].numpy(), [0, *ids[: L - 1]])
    # an explicit add_bos still wins over the declaration
    assert windows_from_documents(declared_off, [doc], "stride", L, add_bos=True).bos
    rows = calibration_batch(declared_off, "lee_news", 2, 8, seed=0)
    assert (rows[:, 0] != 0).all()  # no BOS in the rows either (id 0 is <|endoftext|>)
    assert (calibration_batch(declared_on, "lee_news", 2, 8, seed=0)[:, 0] == 0).all()


def test_stride_hand_worked_example():
    # 10 stream tokens, L=4 with BOS -> W=3: [B t0 t1 t2] [B t3 t4 t5] [B t6 t7 t8], t9 dropped
    ids = np.arange(100, 110)
    s = TokenStream(ids, np.ones(10, dtype=np.int64), np.zeros(10, dtype=bool), bos_id=7, n_docs=1)
    w = windows_from_stream(s, "stride", 4)
    assert w.input_ids.tolist() == [[7, 100, 101, 102], [7, 103, 104, 105], [7, 106, 107, 108]]
    assert w.n_scored == 9 and w.n_bytes == 9
    assert w.positions[:, 0].tolist() == [-1, -1, -1]


# ---------------------------------------------------------------- rolling


def test_rolling_hand_worked_example():
    # T=10, L=4, BOS -> W=3, S=2: starts 0,2,4,6 then the last window aligned to the end (7)
    ids = np.arange(100, 110)
    s = TokenStream(ids, np.ones(10, dtype=np.int64), np.zeros(10, dtype=bool), bos_id=7, n_docs=1)
    w = windows_from_stream(s, "rolling", 4, stride=2)
    assert w.positions[:, 1:].tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8], [7, 8, 9]]
    scored = [p[m].tolist() for p, m in zip(w.positions, w.score_mask, strict=True)]
    assert scored == [[0, 1, 2], [3, 4], [5, 6], [7, 8], [9]]
    assert w.n_scored == 10


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize(("L", "S"), [(16, None), (16, 5), (9, 1), (12, 11)])
def test_rolling_scores_every_token_exactly_once_with_longest_context(tok_bos, bos, L, S):
    docs = read_split("lee_news", "test")[:4]
    if not bos and S == 11:
        S = 10  # without BOS the largest stride is W-1 = L-1
    w = windows_from_documents(tok_bos, docs, "rolling", L, stride=S, add_bos=bos)
    stream = tokenize_documents(tok_bos, docs, add_bos=bos)
    pos = w.positions.numpy()
    mask = w.score_mask.numpy()
    counts = np.bincount(pos[mask], minlength=len(stream))
    expected = (~stream.is_sep).astype(int)
    if not bos:
        expected[0] = 0  # the first stream token has no context at all
    np.testing.assert_array_equal(counts, expected)
    assert w.n_scored == expected.sum()
    Wn = L - 1 if bos else L
    stride = S if S is not None else L // 2
    assert w.stride == stride
    # context of each scored token: all earlier tokens when near the start, else at least W - S
    first = 1 if bos else 0
    for i, j in zip(*np.nonzero(mask), strict=True):
        p, ctx = pos[i, j], pos[i, j] - pos[i, first]
        assert ctx >= min(p, Wn - stride)
    assert w.input_ids.shape[1] == L
    # separators: EOS between documents, never scored, no bytes
    seps = np.nonzero(stream.is_sep)[0]
    assert len(seps) == len(docs) - 1 and (stream.ids[seps] == tok_bos.eos_token_id).all()
    assert not mask[np.isin(pos, seps)].any()


def test_rolling_short_stream_gives_one_window(tok_bos):
    w = windows_from_documents(tok_bos, ["a short doc"], "rolling", 64)
    n = len(_ids(tok_bos, "a short doc"))
    assert w.input_ids.shape == (1, n + 1) and w.n_scored == n


# ---------------------------------------------------------------- bytes


def test_token_bytes_hand_worked():
    # "naïve café" = 12 bytes; byte-level tokens n a ï ï' v e ␣c a f é é'
    text = "naïve café"
    offsets = [(0, 1), (1, 2), (2, 3), (2, 3), (3, 4), (4, 5), (5, 7), (7, 8), (8, 9), (9, 10), (9, 10)]
    got = W._token_bytes(text, offsets).tolist()
    assert got == [1, 1, 2, 0, 1, 1, 2, 1, 1, 2, 0]
    # trimmed offsets (whitespace skipped by the pre-tokenizer) go to the next token; tail to the last
    assert W._token_bytes("ab  cd ", [(0, 2), (4, 6)]).tolist() == [2, 5]


@pytest.mark.parametrize("kind", ["byte_level", "whitespace", "metaspace"])
def test_bytes_sum_exactly_to_utf8_length(train_text, kind):
    texts = [*train_text, UNICODE_DOC]
    if kind == "byte_level":
        tok = _bpe(texts)
    elif kind == "whitespace":
        tok = _bpe(texts, byte_level=False)
    else:
        tok = _bpe(texts, byte_level=False, pre=pre_tokenizers.Metaspace())
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT)
    docs = [UNICODE_DOC, "plain ascii text here", "  leading and trailing  "]
    stream = tokenize_documents(hf, docs)
    assert stream.n_bytes.sum() == sum(len(d.encode("utf-8")) for d in docs)
    assert (stream.n_bytes >= 0).all() and (stream.n_bytes[stream.is_sep] == 0).all()
    # rolling with BOS scores every text token: n_bytes is the whole text
    w = windows_from_documents(hf, docs, "rolling", 8)
    assert w.n_bytes == sum(len(d.encode("utf-8")) for d in docs)
    assert w.n_bytes == int(w.token_bytes.sum()) and (w.token_bytes[~w.score_mask] == 0).all()


def test_stride_bytes_equal_decoded_scored_prefix(tok_bos):
    doc = read_split("lee_news", "test")[1]
    ids = _ids(tok_bos, doc)
    L = 32
    w = windows_from_documents(tok_bos, [doc], "stride", L)
    k = w.n_windows * (L - 1)
    # byte-level BPE decodes exactly; the scored text is the first k tokens
    assert w.n_bytes == len(tok_bos.decode(ids[:k]).encode("utf-8"))
    assert w.n_bytes < len(doc.encode("utf-8"))


# ---------------------------------------------------------------- max_tokens, caching, corpora


def test_max_tokens_truncates_to_first_tokens(tok_bos):
    docs = read_split("lee_news", "test")[:3]
    full = windows_from_documents(tok_bos, docs, "stride", 16)
    cut = windows_from_documents(tok_bos, docs, "stride", 16, max_tokens=50)
    assert cut.n_windows == 50 // 15 and cut.stream_tokens == 50
    np.testing.assert_array_equal(cut.input_ids.numpy(), full.input_ids[: cut.n_windows].numpy())
    again = windows_from_documents(tok_bos, docs, "stride", 16, max_tokens=50)
    assert again.fingerprint == cut.fingerprint != full.fingerprint
    r = windows_from_documents(tok_bos, docs, "rolling", 16, max_tokens=40)
    assert r.n_scored == 40 - int(tokenize_documents(tok_bos, docs).is_sep[:40].sum())


def test_get_windows_caches_token_stream_per_tokenizer_identity(tok_bos, train_text, monkeypatch):
    STREAM_CACHE.clear()
    calls = []
    real = W.read_documents

    def counting(corpus, split):
        calls.append((corpus, split))
        return real(corpus, split)

    monkeypatch.setattr(W, "read_documents", counting)
    a = get_windows(tok_bos, "lee_news", "test", "stride", 32)
    b = get_windows(tok_bos, "lee_news", "test", "rolling", 64, max_tokens=500)
    twin = PreTrainedTokenizerFast(tokenizer_object=_bpe(train_text), bos_token=EOT, eos_token=EOT)
    c = get_windows(twin, "lee_news", "test", "stride", 32)
    assert calls == [("lee_news", "test")]
    assert a.fingerprint == c.fingerprint and b.protocol == "rolling"
    other = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(train_text, vocab_size=300), bos_token=EOT, eos_token=EOT
    )
    get_windows(other, "lee_news", "test", "stride", 32)
    assert len(calls) == 2
    assert a.describe()["corpus"] == "lee_news" and a.describe()["split"] == "test"


def test_get_windows_real_corpus_bytes(tok_bos):
    docs = read_split("lee_news", "test")
    w = get_windows(tok_bos, "lee_news", "test", "rolling", 128)
    assert w.n_bytes == sum(len(d.encode("utf-8")) for d in docs)


# ---------------------------------------------------------------- errors


def test_protocol_errors(tok_bos):
    docs = ["some text " * 20]
    with pytest.raises(WindowError, match="Did you mean 'rolling'"):
        windows_from_documents(tok_bos, docs, "rollin", 16)
    with pytest.raises(WindowError, match="Valid choices: stride, rolling"):
        get_windows(tok_bos, "lee_news", "test", "gptq", 16)
    with pytest.raises(WindowError, match="only to protocol='rolling'"):
        windows_from_documents(tok_bos, docs, "stride", 16, stride=4)
    with pytest.raises(WindowError, match=r"\[1, 15\]"):
        windows_from_documents(tok_bos, docs, "rolling", 16, stride=16)
    with pytest.raises(WindowError, match=r"\[1, 15\]"):
        windows_from_documents(tok_bos, docs, "rolling", 16, stride=16, add_bos=False)
    with pytest.raises(WindowError, match="seq_len"):
        windows_from_documents(tok_bos, docs, "stride", 1)
    with pytest.raises(WindowError, match="needs at least 15"):
        windows_from_documents(tok_bos, docs, "stride", 16, max_tokens=10)
    with pytest.raises(TypeError, match="sequence of strings"):
        windows_from_documents(tok_bos, "one string", "stride", 4)
    with pytest.raises(ValueError, match="lee_news"):
        get_windows(tok_bos, "lee_newz", "test")


def test_user_text_file_corpus_and_cache_invalidation(tok_bos, tmp_path, monkeypatch):
    f = tmp_path / "mine.txt"
    docs = ["first document here.", "second one, with ünïcode.", "third and last document."]
    f.write_text("\n\n".join(docs), encoding="utf-8")
    split = read_split(str(f), "train")
    w = get_windows(tok_bos, str(f), "train", "rolling", 8)
    assert w.n_bytes == sum(len(d.encode("utf-8")) for d in split)
    calls = []
    monkeypatch.setattr(W, "read_documents", lambda corpus, split: calls.append(corpus) or docs)
    get_windows(tok_bos, str(f), "train", "stride", 8)
    assert calls == []  # cached
    f.write_text("\n\n".join([*docs, "a fourth document"]), encoding="utf-8")  # new size: new key
    w2 = get_windows(tok_bos, str(f), "train", "rolling", 8)
    assert calls == [str(f)] and w2.n_bytes == sum(len(d.encode("utf-8")) for d in docs)
