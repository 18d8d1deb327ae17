"""Evaluation windows: a corpus split turned into fixed-length token windows under a named protocol.

A *protocol* fixes how a token stream is cut into windows and which tokens are scored, because
perplexities from different protocols are not comparable (see docs/ARCHITECTURE "Known traps").
Every result records its protocol.

The token stream
----------------
``read_split(corpus, split)`` gives documents. Each document is tokenized on its own (no special
tokens) and the documents are joined with ONE separator token between consecutive documents: the
tokenizer's EOS token (else its SEP token; else the tokens of ``"\\n\\n"``). Separator tokens are
**context only**: they are never scored and carry 0 bytes, so the scored text is exactly the
documents' text and bits-per-byte needs no convention for the separator.

Bytes per token (exact bits-per-byte)
-------------------------------------
Every token owns the UTF-8 bytes of its document from the end of the previous token's character span
to the end of its own span (offsets from the fast tokenizer); the first token also owns any text
before it, the last token any text after it. So the bytes of a document's tokens always sum to
``len(doc.encode("utf-8"))``: whitespace a pre-tokenizer drops or trims is counted with the token
after it, and a character split over several byte-level tokens (an emoji over 4 byte tokens) is
counted once, with the first of them. Worked example: ``"naïve café"`` is 12 bytes; with a
byte-level BPE whose tokens are ``n a ï ï' v e ␣c a f é é'`` the bytes are
``1 1 2 0 1 1 2 1 1 2 0`` (sum 12).

Protocols (``seq_len`` = L, window = L tokens)
----------------------------------------------
BOS: by default (``add_bos=None``) a window starts with BOS when the model's own convention does
(:func:`model_adds_bos`): a tokenizer that declares ``add_bos_token`` (its ``tokenizer_config.json``, or a
GGUF file's ``tokenizer.ggml.add_bos_token``) is followed; one that declares nothing starts with BOS when it
has a BOS token. So Qwen2.5 and SmolLM2 (both declare ``add_bos_token: false``, as llama.cpp and
transformers encode them) get no BOS, Llama/Gemma-style tokenizers and the tiny zoo get one. This matters:
on Qwen2.5-Coder-0.5B, RTN int6-pc, the KL on 17 x 512 enwiki test tokens is 0.131 with ``<|endoftext|>``
prepended to every window and 0.029 without (its quantized model mis-handles a lone ``<|endoftext|>``: KL
0.80 at that position alone; bench/profile.md). ``add_bos=True``/``False`` forces either layout.
With BOS a window holds BOS and L-1 stream tokens; the BOS position is context only, so all L-1 text tokens
are scored (the first one predicted from BOS alone). Without BOS a window holds L stream tokens and its
first token, having no context, is not scored. Either way a full window scores at most L-1 tokens.

``stride`` (GPTQ paper convention): the stream is cut into non-overlapping chunks of W = L-1 (BOS) or
L (no BOS) tokens; the remainder shorter than W is dropped. Every chunk token with a context is
scored (separators excepted). Example: 10 stream tokens, L=4 with BOS -> W=3, windows
``[B t0 t1 t2] [B t3 t4 t5] [B t6 t7 t8]``, 9 scored, t9 dropped.

``rolling`` (lm-eval convention): windows of W stream tokens start at 0, S, 2S, ... (S = ``stride``,
default L//2); the first window scores all its tokens, each later window scores only the tokens
past the end of the previous one (its last S); the final window is aligned to end exactly at the end
of the stream. Every stream token is scored exactly once with the longest available context
(except separators, and without BOS the very first token of the stream). Requires 1 <= S <= W
(S <= W-1 without BOS, else the first token of each later window could never be scored). A stream
shorter than W gives one shorter window.

``max_tokens`` truncates the stream to its first ``max_tokens`` tokens before windowing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from qscale.registry import unknown_name_message

PROTOCOLS: tuple[str, ...] = ("stride", "rolling")

__all__ = [
    "PROTOCOLS",
    "EvalWindows",
    "TokenStream",
    "WindowError",
    "get_windows",
    "model_adds_bos",
    "tokenize_documents",
    "tokenizer_identity",
    "windows_from_documents",
    "windows_from_stream",
]


class WindowError(ValueError):
    """Bad protocol, sequence length, stride or corpus for building evaluation windows."""


def check_protocol(protocol: str) -> str:
    """Return ``protocol`` if it is a known protocol name, else raise :class:`WindowError`."""
    if protocol not in PROTOCOLS:
        raise WindowError(unknown_name_message(protocol, PROTOCOLS, "evaluation protocol"))
    return protocol


# --------------------------------------------------------------------------------------------------
# Tokenization into one stream


@dataclass(frozen=True, eq=False)
class TokenStream:
    """A tokenized corpus split: documents joined by separator tokens (see module docstring).

    ``ids``/``n_bytes``/``is_sep`` are 1-D numpy arrays of equal length; ``n_bytes`` is 0 for
    separators and sums to the UTF-8 byte length of all documents.
    """

    ids: np.ndarray  # int64 (T,)
    n_bytes: np.ndarray  # int64 (T,)
    is_sep: np.ndarray  # bool (T,)
    bos_id: int | None
    n_docs: int

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def truncate(self, max_tokens: int | None) -> TokenStream:
        """The first ``max_tokens`` tokens (all when None)."""
        if max_tokens is None or max_tokens >= len(self):
            return self
        if max_tokens < 1:
            raise WindowError(f"max_tokens must be a positive integer, got {max_tokens}.")
        return TokenStream(
            self.ids[:max_tokens],
            self.n_bytes[:max_tokens],
            self.is_sep[:max_tokens],
            self.bos_id,
            self.n_docs,
        )


def _backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind a transformers fast tokenizer (or the object itself)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend
    if hasattr(tokenizer, "encode_batch") and hasattr(tokenizer, "to_str"):
        return tokenizer
    raise TypeError(
        f"Need a fast tokenizer (transformers PreTrainedTokenizerFast / TokenizersBackend or a "
        f"tokenizers.Tokenizer) for exact byte offsets; got {type(tokenizer).__name__}."
    )


def _special_id(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, f"{name}_token_id", None)
    return int(value) if value is not None else None


def tokenizer_identity(tokenizer: Any) -> str:
    """A content hash of a tokenizer (vocabulary, merges, normalizer, special tokens), 16 hex chars.

    Two tokenizer objects loaded from the same files get the same identity, so cached token
    streams are shared between them.
    """
    h = hashlib.sha256()
    h.update(_backend(tokenizer).to_str().encode("utf-8"))
    for name in ("bos", "eos", "sep", "pad", "unk"):
        h.update(f"|{name}={_special_id(tokenizer, name)}".encode())
    return h.hexdigest()[:16]


def _char_to_byte_offsets(text: str) -> np.ndarray:
    """``out[c]`` = UTF-8 byte offset of character ``c`` (length ``len(text)+1``)."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
    out = np.zeros(len(cps) + 1, dtype=np.int64)
    np.cumsum(widths, out=out[1:])
    return out


def _token_bytes(text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Bytes owned by each token (module docstring); sums to ``len(text.encode())``."""
    n = len(offsets)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    char_to_byte = _char_to_byte_offsets(text)
    ends = np.fromiter((e for _, e in offsets), dtype=np.int64, count=n)
    ends = np.clip(np.maximum.accumulate(ends), 0, len(text))
    ends[-1] = len(text)  # trailing text the tokenizer dropped belongs to the last token
    byte_ends = char_to_byte[ends]
    return np.diff(byte_ends, prepend=0)


def _separator_ids(tokenizer: Any) -> list[int]:
    for name in ("eos", "sep"):
        tid = _special_id(tokenizer, name)
        if tid is not None:
            return [tid]
    ids = _backend(tokenizer).encode("\n\n", add_special_tokens=False).ids
    return list(ids)


def _declared_add_bos(tokenizer: Any) -> bool | None:
    """The tokenizer's own ``add_bos_token`` setting when its files declare one, else None."""
    kwargs = getattr(tokenizer, "init_kwargs", None)
    value = kwargs.get("add_bos_token") if isinstance(kwargs, dict) else None
    return None if value is None else bool(value)


def model_adds_bos(tokenizer: Any) -> bool:
    """Whether text for this model starts with BOS (the module docstring's rule).

    The tokenizer's declared ``add_bos_token`` wins (transformers and llama.cpp encode by it); a tokenizer that
    declares nothing starts with BOS when it has a BOS token (qscale's earlier rule, kept for the tiny zoo and
    for checkpoints that say nothing). No BOS token: no BOS.
    """
    if _special_id(tokenizer, "bos") is None:
        return False
    declared = _declared_add_bos(tokenizer)
    return True if declared is None else declared


def _bos_id(tokenizer: Any, add_bos: bool | None) -> int | None:
    bos = _special_id(tokenizer, "bos")
    if add_bos is None:
        return bos if model_adds_bos(tokenizer) else None
    if add_bos and bos is None:
        raise WindowError("add_bos=True but the tokenizer has no BOS token (bos_token_id is None).")
    return bos if add_bos else None


def tokenize_documents(tokenizer: Any, documents: Sequence[str], add_bos: bool | None = None) -> TokenStream:
    """Tokenize ``documents`` into one :class:`TokenStream` (separators between documents)."""
    if isinstance(documents, str):
        raise TypeError("documents must be a sequence of strings, not one string (wrap it in a list).")
    backend = _backend(tokenizer)
    sep = np.asarray(_separator_ids(tokenizer), dtype=np.int64)
    docs = [d for d in documents if d]
    encodings = backend.encode_batch(docs, add_special_tokens=False) if docs else []
    ids_parts: list[np.ndarray] = []
    bytes_parts: list[np.ndarray] = []
    sep_parts: list[np.ndarray] = []
    for i, (doc, enc) in enumerate(zip(docs, encodings, strict=True)):
        if i > 0:
            ids_parts.append(sep)
            bytes_parts.append(np.zeros(len(sep), dtype=np.int64))
            sep_parts.append(np.ones(len(sep), dtype=bool))
        ids = np.asarray(enc.ids, dtype=np.int64)
        if len(ids) == 0:  # a document of text the tokenizer ignores entirely: no bytes scored
            continue
        ids_parts.append(ids)
        bytes_parts.append(_token_bytes(doc, enc.offsets))
        sep_parts.append(np.zeros(len(ids), dtype=bool))
    if not ids_parts:
        empty = np.zeros(0, dtype=np.int64)
        return TokenStream(empty, empty.copy(), np.zeros(0, dtype=bool), _bos_id(tokenizer, add_bos), 0)
    return TokenStream(
        np.concatenate(ids_parts),
        np.concatenate(bytes_parts),
        np.concatenate(sep_parts),
        _bos_id(tokenizer, add_bos),
        len(docs),
    )


# --------------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True, eq=False)
class EvalWindows:
    """Token windows with their scoring bookkeeping; build once, evaluate many models on them.

    Attributes:
        input_ids: (n, L) int64 token ids (BOS first when ``bos``).
        score_mask: (n, L) bool; ``score_mask[i, j]`` means token ``j`` of window ``i`` is scored,
            i.e. predicted by the logits at position ``j-1``. Column 0 is always False.
        token_bytes: (n, L) int64 UTF-8 bytes each scored token owns (0 where not scored).
        positions: (n, L) int64 index of each token in the (truncated) stream, -1 for BOS.
        n_scored: number of scored tokens; n_bytes: bytes of the scored text (``token_bytes.sum()``).
    """

    input_ids: Any  # torch.LongTensor (n, L)
    score_mask: Any  # torch.BoolTensor (n, L)
    token_bytes: Any  # torch.LongTensor (n, L)
    positions: Any  # torch.LongTensor (n, L)
    n_scored: int
    n_bytes: int
    protocol: str
    seq_len: int
    stride: int | None
    bos: bool
    corpus: str = "custom"
    split: str = ""
    max_tokens: int | None = None
    stream_tokens: int = 0
    tokenizer_id: str = ""
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_windows(self) -> int:
        return int(self.input_ids.shape[0])

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the token ids and the score mask: equal fingerprints = same scored tokens."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.input_ids.numpy()).tobytes())
        h.update(np.ascontiguousarray(self.score_mask.numpy()).tobytes())
        h.update(str(tuple(self.input_ids.shape)).encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """The protocol record that goes with every result."""
        return {
            "protocol": self.protocol,
            "corpus": self.corpus,
            "split": self.split,
            "seq_len": self.seq_len,
            "stride": self.stride,
            "bos": self.bos,
            "max_tokens": self.max_tokens,
            "n_windows": self.n_windows,
            "n_tokens": self.n_scored,
            "n_bytes": self.n_bytes,
            "windows_fingerprint": self.fingerprint,
        }

    def batches(self, batch_size: int, device: Any = None) -> list:
        """Per batch: (ids, flat_index, targets, offset) already on ``device`` (cached per device).

        ``flat_index`` indexes the rows of the batch's logits flattened to (B*L, V) whose
        prediction is scored (row ``b*L + j-1`` predicts token ``j``), so selecting them needs no
        copy of the full logits; ``targets`` are the scored token ids in the same order, ``offset``
        is the index of the batch's first scored token in the window-major order of all scored
        tokens. Everything is moved to the device here, once, so the evaluation loop never waits
        on the host.
        """
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda" and dev.index is None:  # "cuda" and "cuda:0" share one plan
            dev = torch.device("cuda", torch.cuda.current_device())
        key = (str(dev), int(batch_size))
        cached = self._device_cache.get(key)
        if cached is not None:
            return cached
        out = []
        per_window = self.score_mask.sum(dim=1)
        # predicts[b, j]: the logits at position j are scored (they predict token j+1)
        predicts = torch.zeros_like(self.score_mask)
        predicts[:, :-1] = self.score_mask[:, 1:]
        offset = 0
        for start in range(0, self.n_windows, batch_size):
            ids = self.input_ids[start : start + batch_size]
            flat = predicts[start : start + batch_size].reshape(-1).nonzero().squeeze(1)
            targets = ids[self.score_mask[start : start + batch_size]]
            out.append((ids.to(dev), flat.to(dev), targets.to(dev), offset))
            offset += int(per_window[start : start + batch_size].sum())
        self._device_cache.clear()  # keep one plan: windows are reused for many formats
        self._device_cache[key] = out
        return out


def _stride_layout(T: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    n = T // W
    starts = np.arange(n, dtype=np.int64) * W
    return starts, starts.copy()  # (window starts, first scored stream index)


def _rolling_layout(T: int, W: int, S: int) -> tuple[np.ndarray, np.ndarray]:
    if T <= W:
        return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    starts = [0]
    while starts[-1] + W < T:
        starts.append(min(starts[-1] + S, T - W))
    starts_a = np.asarray(starts, dtype=np.int64)
    score_from = np.concatenate([[0], starts_a[:-1] + W])
    return starts_a, score_from


def windows_from_stream(
    stream: TokenStream,
    protocol: str = "stride",
    seq_len: int = 256,
    stride: int | None = None,
    max_tokens: int | None = None,
    *,
    corpus: str = "custom",
    split: str = "",
    tokenizer_id: str = "",
) -> EvalWindows:
    """Cut a token stream into :class:`EvalWindows` under ``protocol`` (module docstring)."""
    import torch

    check_protocol(protocol)
    if not isinstance(seq_len, int | np.integer) or seq_len < 2:
        raise WindowError(f"seq_len must be an integer >= 2, got {seq_len!r}.")
    stream = stream.truncate(max_tokens)
    bos = stream.bos_id is not None
    W = seq_len - 1 if bos else seq_len
    T = len(stream)
    if protocol == "stride":
        if stride is not None:
            raise WindowError(
                "stride applies only to protocol='rolling'; protocol='stride' uses non-overlapping "
                f"windows of seq_len={seq_len} tokens."
            )
        if T < W:
            raise WindowError(
                f"protocol='stride' needs at least {W} stream tokens for one window of seq_len={seq_len}, "
                f"but the stream has {T}" + (f" (max_tokens={max_tokens})." if max_tokens else ".")
            )
        starts, score_from = _stride_layout(T, W)
    else:
        if T < 2:
            raise WindowError(f"protocol='rolling' needs at least 2 stream tokens, the stream has {T}.")
        max_s = W if bos else W - 1
        if stride is None:
            stride = max(1, min(seq_len // 2, max_s))
        if not isinstance(stride, int | np.integer) or not 1 <= stride <= max_s:
            raise WindowError(
                f"rolling stride must be an integer in [1, {max_s}] for seq_len={seq_len} "
                f"({'with' if bos else 'without'} BOS), got {stride!r}."
            )
        starts, score_from = _rolling_layout(T, W, int(stride))
    width = min(W, T)
    pos = starts[:, None] + np.arange(width, dtype=np.int64)[None, :]
    ids = stream.ids[pos]
    scored = (pos >= score_from[:, None]) & ~stream.is_sep[pos]
    if not bos:
        scored[:, 0] = False  # no context for the first token
    nbytes = np.where(scored, stream.n_bytes[pos], 0)
    if bos:
        n = pos.shape[0]
        ids = np.concatenate([np.full((n, 1), stream.bos_id, dtype=np.int64), ids], axis=1)
        scored = np.concatenate([np.zeros((n, 1), dtype=bool), scored], axis=1)
        nbytes = np.concatenate([np.zeros((n, 1), dtype=np.int64), nbytes], axis=1)
        pos = np.concatenate([np.full((n, 1), -1, dtype=np.int64), pos], axis=1)
    return EvalWindows(
        input_ids=torch.from_numpy(np.ascontiguousarray(ids)),
        score_mask=torch.from_numpy(np.ascontiguousarray(scored)),
        token_bytes=torch.from_numpy(np.ascontiguousarray(nbytes)),
        positions=torch.from_numpy(np.ascontiguousarray(pos)),
        n_scored=int(scored.sum()),
        n_bytes=int(nbytes.sum()),
        protocol=protocol,
        seq_len=int(seq_len),
        stride=int(stride) if stride is not None else None,
        bos=bos,
        corpus=corpus,
        split=split,
        max_tokens=max_tokens,
        stream_tokens=T,
        tokenizer_id=tokenizer_id,
    )


def windows_from_documents(
    tokenizer: Any,
    documents: Sequence[str],
    protocol: str = "stride",
    seq_len: int = 256,
    stride: int | None = None,
    max_tokens: int | None = None,
    *,
    add_bos: bool | None = None,
    corpus: str = "custom",
    split: str = "",
) -> EvalWindows:
    """:func:`get_windows` for documents you already hold (no corpus lookup, no cache)."""
    check_protocol(protocol)
    stream = tokenize_documents(tokenizer, documents, add_bos=add_bos)
    return windows_from_stream(
        stream,
        protocol,
        seq_len,
        stride,
        max_tokens,
        corpus=corpus,
        split=split,
        tokenizer_id=tokenizer_identity(tokenizer),
    )


# --------------------------------------------------------------------------------------------------
# Cached token streams for named corpora


class _StreamCache:
    """A small thread-safe LRU of token streams keyed by (tokenizer identity, corpus, split, bos)."""

    def __init__(self, maxsize: int = 8) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, TokenStream] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> TokenStream | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, value: TokenStream) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


STREAM_CACHE = _StreamCache()


def read_documents(corpus: str, split: str) -> list[str]:
    """Documents of a named corpus split, via ``qscale.corpora.text.read_split``."""
    from qscale.corpora import text as _text

    return list(_text.read_split(corpus, split))


def corpus_stream(tokenizer: Any, corpus: str, split: str, add_bos: bool | None = None) -> TokenStream:
    """The cached :class:`TokenStream` of ``corpus``/``split`` for ``tokenizer``."""
    key: tuple = (tokenizer_identity(tokenizer), str(corpus), split, _bos_id(tokenizer, add_bos))
    path = Path(str(corpus)).expanduser()
    if path.suffix in (".txt", ".xz") and path.is_file():  # a user's file: an edit invalidates the entry
        st = path.stat()
        key += (str(path.resolve()), st.st_size, st.st_mtime_ns)
    stream = STREAM_CACHE.get(key)
    if stream is None:
        stream = tokenize_documents(tokenizer, read_documents(corpus, split), add_bos=add_bos)
        STREAM_CACHE.put(key, stream)
    return stream


def get_windows(
    tokenizer: Any,
    corpus: str = "enwiki_gensim",
    split: str = "test",
    protocol: str = "stride",
    seq_len: int = 256,
    stride: int | None = None,
    max_tokens: int | None = None,
    *,
    add_bos: bool | None = None,
) -> EvalWindows:
    """Evaluation windows of a corpus split under a named protocol (module docstring).

    Token streams are cached per (tokenizer identity, corpus, split), so building windows for a
    second protocol or sequence length costs only the cutting. ``add_bos=None`` prepends BOS when
    the model's convention does (:func:`model_adds_bos`); True / False force it.
    """
    check_protocol(protocol)  # fail before the (slow) tokenization
    stream = corpus_stream(tokenizer, corpus, split, add_bos=add_bos)
    return windows_from_stream(
        stream,
        protocol,
        seq_len,
        stride,
        max_tokens,
        corpus=corpus,
        split=split,
        tokenizer_id=tokenizer_identity(tokenizer),
    )
