"""Small shared test helpers (not fixtures): a byte-level BPE trained in a second on a few documents."""

from __future__ import annotations

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
