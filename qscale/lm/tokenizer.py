"""The zoo's one shared tokenizer: byte-level BPE, vocab 8192, trained on the corpora's train splits.

Byte-level means every string round-trips (no unknown token). The only special token is ``<|endoftext|>``
(id 0), used as BOS, EOS and padding, as GPT-2 does. Training is deterministic: the same documents give
the same merges (``tests/lm`` trains it twice and compares the files), because the BPE trainer breaks ties
between equally frequent pairs by the pair itself, not by thread timing.

The mix (``TOKENIZER_CORPORA``): the train splits of all six packaged corpora, in a fixed order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

VOCAB_SIZE = 8192
SPECIAL = "<|endoftext|>"
TOKENIZER_CORPORA: tuple[str, ...] = ("enwiki_gensim", "austen", "kjv", "shakespeare", "mobydick", "lee_news")
TOKENIZER_VERSION = 1  # bump when the recipe below changes; part of the cache key


def tokenizer_key(corpora: tuple[str, ...] = TOKENIZER_CORPORA, vocab_size: int = VOCAB_SIZE) -> str:
    """Short hash naming a tokenizer recipe (corpora, vocab size, recipe version)."""
    s = f"v{TOKENIZER_VERSION}|{vocab_size}|{','.join(corpora)}"
    return hashlib.sha256(s.encode()).hexdigest()[:10]


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL, unk_token=None
    )


def shared_tokenizer(cache_dir: str | Path, corpora: tuple[str, ...] = TOKENIZER_CORPORA) -> Any:
    """The shared zoo tokenizer, trained once and cached in ``cache_dir/tokenizer-<key>/``.

    Safe to call from several processes: training happens under a lock file, the result is written to a
    temporary directory and renamed into place.
    """
    from transformers import PreTrainedTokenizerFast

    from qscale.corpora import read_split
    from qscale.lm.locking import exclusive

    target = Path(cache_dir) / f"tokenizer-{tokenizer_key(corpora)}"
    if not (target / "tokenizer.json").is_file():
        with exclusive(target.with_suffix(".lock")):
            if not (target / "tokenizer.json").is_file():
                texts = [d for c in corpora for d in read_split(c, "train")]
                tok = train_tokenizer(texts)
                tmp = target.with_name(target.name + ".tmp")
                tok.save_pretrained(str(tmp))
                tmp.rename(target)
    return PreTrainedTokenizerFast.from_pretrained(str(target))
