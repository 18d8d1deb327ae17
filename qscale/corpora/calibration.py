"""Calibration batches for data-dependent quantizers (GPTQ, SmoothQuant, activation ranges).

``calibration_batch(tokenizer, corpus, n_samples, seq_len, seed)`` returns a (n_samples, seq_len)
LongTensor, deterministic in ``seed``:

* a named corpus (``enwiki_gensim``, ...): random windows of the **train** split's token stream
  (documents joined by the EOS separator exactly as in :mod:`qscale.corpora.windows`), window starts
  drawn uniformly with ``numpy.random.default_rng(seed)``, with replacement. Evaluation uses the
  test split, so calibration text never overlaps evaluation text.
* ``random_tokens``: token ids drawn uniformly from the vocabulary minus every special token
  (BOS/EOS/PAD/UNK and added special tokens): the synthetic "random" calibration set of
  Paglieri et al. (2024).
* ``random_punct``: random strings of ASCII punctuation (with a space between runs of 1-8
  characters) tokenized, and the first tokens kept: a calibration set with no natural language.

Like the evaluation windows, a row starts with BOS when the model's convention does (``add_bos=None``,
:func:`qscale.corpora.windows.model_adds_bos`), followed by seq_len-1 tokens, so a model that needs BOS
(Gemma) sees the same layout in calibration and evaluation; otherwise (or ``add_bos=False``) a row is
seq_len tokens from the source only.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import numpy as np

from qscale.corpora.windows import WindowError, _bos_id, _special_id, corpus_stream
from qscale.registry import unknown_name_message

SYNTHETIC_CALIBRATION: tuple[str, ...] = ("random_tokens", "random_punct")
CALIBRATION_SPLIT = "train"
_PUNCT = string.punctuation

__all__ = [
    "CALIBRATION_SPLIT",
    "SYNTHETIC_CALIBRATION",
    "calibration_batch",
    "calibration_corpora",
    "calibration_from_record",
]


def calibration_corpora() -> list[str]:
    """Every valid corpus name for :func:`calibration_batch`: packaged corpora + synthetic sets.

    (A path to a user's ``.txt`` file is accepted too, as everywhere a corpus name is.)
    """
    from qscale.corpora.text import corpus_names

    return [*corpus_names(), *SYNTHETIC_CALIBRATION]


def _check_corpus(corpus: str) -> None:
    valid = calibration_corpora()
    if corpus in valid or Path(str(corpus)).suffix in (".txt", ".xz"):  # a file: read_split judges it
        return
    raise WindowError(unknown_name_message(str(corpus), [*valid, "<path/to/file.txt>"], "calibration corpus"))


def _special_ids(tokenizer: Any) -> set[int]:
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    for name in ("bos", "eos", "pad", "unk", "sep", "cls", "mask"):
        tid = _special_id(tokenizer, name)
        if tid is not None:
            ids.add(tid)
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    decoder = getattr(backend, "get_added_tokens_decoder", None)
    if decoder is not None:
        ids.update(int(i) for i, tok in decoder().items() if getattr(tok, "special", False))
    return ids


def _vocab_size(tokenizer: Any) -> int:
    try:
        return len(tokenizer)
    except TypeError:
        return int(tokenizer.get_vocab_size(with_added_tokens=True))


def _random_tokens(tokenizer: Any, n: int, width: int, rng: np.random.Generator) -> np.ndarray:
    special = _special_ids(tokenizer)
    allowed = np.setdiff1d(np.arange(_vocab_size(tokenizer), dtype=np.int64), np.fromiter(special, np.int64))
    if allowed.size == 0:
        raise WindowError("The tokenizer has no non-special tokens to sample random_tokens from.")
    return allowed[rng.integers(0, allowed.size, size=(n, width))]


def _random_punct_text(rng: np.random.Generator, n_chars: int) -> str:
    parts: list[str] = []
    total = 0
    while total < n_chars:
        run = int(rng.integers(1, 9))
        chars = "".join(_PUNCT[i] for i in rng.integers(0, len(_PUNCT), size=run))
        parts.append(chars)
        total += run + 1
    return " ".join(parts)


def _random_punct(tokenizer: Any, n: int, width: int, rng: np.random.Generator) -> np.ndarray:
    from qscale.corpora.windows import _backend

    backend = _backend(tokenizer)
    rows = np.empty((n, width), dtype=np.int64)
    for i in range(n):
        n_chars = 4 * width
        while True:
            ids = backend.encode(_random_punct_text(rng, n_chars), add_special_tokens=False).ids
            if len(ids) >= width:
                break
            n_chars *= 2
        rows[i] = ids[:width]
    return rows


def calibration_batch(
    tokenizer: Any,
    corpus: str = "enwiki_gensim",
    n_samples: int = 32,
    seq_len: int = 256,
    seed: int = 0,
    *,
    add_bos: bool | None = None,
) -> Any:
    """A (n_samples, seq_len) LongTensor of calibration windows (module docstring).

    Example: ``calibration_batch(tok, "enwiki_gensim", 4, 8, seed=1)`` with a tokenizer that starts text
    with BOS (:func:`~qscale.corpora.windows.model_adds_bos`) gives 4 rows ``[BOS, t_s, ..., t_{s+6}]`` for
    4 random starts ``s`` in the train stream; the same call always returns the same tensor.
    """
    import torch

    if n_samples < 1:
        raise WindowError(f"n_samples must be >= 1, got {n_samples}.")
    if seq_len < 2:
        raise WindowError(f"seq_len must be >= 2, got {seq_len}.")
    _check_corpus(corpus)
    bos = _bos_id(tokenizer, add_bos)
    width = seq_len - 1 if bos is not None else seq_len
    rng = np.random.default_rng(seed)
    if corpus == "random_tokens":
        rows = _random_tokens(tokenizer, n_samples, width, rng)
    elif corpus == "random_punct":
        rows = _random_punct(tokenizer, n_samples, width, rng)
    else:
        stream = corpus_stream(tokenizer, corpus, CALIBRATION_SPLIT, add_bos=add_bos)
        n_tok = len(stream)
        if n_tok < width:
            raise WindowError(
                f"The {CALIBRATION_SPLIT} split of {corpus!r} has {n_tok} tokens, fewer than one "
                f"calibration window of {width}."
            )
        starts = rng.integers(0, n_tok - width + 1, size=n_samples)
        rows = stream.ids[starts[:, None] + np.arange(width)[None, :]]
    if bos is not None:
        rows = np.concatenate([np.full((n_samples, 1), bos, dtype=np.int64), rows], axis=1)
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))


def calibration_from_record(tokenizer: Any, record: Any) -> Any:
    """The batch a calibration record names: a mapping with corpus, n_samples, seq_len, seed and optionally
    add_bos (``CalibrationSpec.to_dict()``, a profile's or a law's recorded calibration)."""
    return calibration_batch(
        tokenizer,
        record["corpus"],
        record["n_samples"],
        record["seq_len"],
        record["seed"],
        add_bos=record.get("add_bos"),
    )
