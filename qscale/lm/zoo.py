"""The qscale zoo: small causal LMs of several architecture families that qscale trains itself.

Families (transformers configs; they differ in ways that matter for quantization):

=======  =========  =================================================================  ===========
family   type       what is distinctive                                                head
=======  =========  =================================================================  ===========
gpt2     gpt2       LayerNorm, GELU MLP, learned positions, Conv1D (in, out) weights   tied
llama    llama      RMSNorm, SwiGLU MLP, RoPE, no biases                               untied
opt      opt        LayerNorm, ReLU MLP, learned positions (offset 2), biases          tied
neox     gpt_neox   parallel attention + MLP residual, partial RoPE, GELU              untied
qwen2    qwen2      RMSNorm, SwiGLU, RoPE, grouped-query attention (kv heads = h/2),   tied
                    q/k/v biases
=======  =========  =================================================================  ===========

Presets (``ZOO_PRESETS``):

* ``tiny``: 5 families x 3 sizes (d_model 32/64/96, 2 layers), seq 64, batch 8, 300 steps (153,600 tokens),
  peak LR 1e-2/1e-2/8e-3; trains on 2 CPU cores in minutes, two models at a time (see ``bench/zoo.md``). For
  tests, the demo and smoke runs: small and briefly trained, not good language models.
* ``full``: 5 families x 5 sizes, non-embedding N from about 0.1M (d 64, 2 layers) to 25M (d 512, 8 layers),
  seq 256, batch 128, 610 steps (about 20M tokens) each, plus ``llama-s`` and ``llama-m`` at 5M and 80M tokens
  (laws in N and D). Written for one CUDA GPU (bf16 autocast); ``bench/train_zoo_full.py`` runs it.

Names: full-preset models are ``<family>-<size>`` (``llama-m``), token-budget variants ``llama-m-d80m``, tiny
models ``tiny-<family>-<size>`` (``tiny-gpt2-s``). Load one with ``qscale.lm.load("zoo:llama-m")``.

Each checkpoint directory is an ordinary HF checkpoint (``save_pretrained``, safetensors) with the tokenizer and
``qscale_zoo.json`` (see :func:`qscale.lm.zoo_train.train_model` for its fields). A model whose metadata matches
its spec (same config hash and seed, :func:`is_trained`) is skipped on the next ``train_zoo``.

This module is the catalogue: the specs and their transformers configs, the presets, name lookups, where the
checkpoints live and their status (:func:`list_zoo`), and untrained zoo-architecture models
(:func:`random_model`). The trainer (token streams, the training loop, ``train_zoo``) is
:mod:`qscale.lm.zoo_train`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qscale.lm.loading import ZOO_META, default_zoo_root
from qscale.lm.tokenizer import TOKENIZER_CORPORA, tokenizer_key

DATA_VERSION = 1  # bump when the token-stream recipe changes; part of every config hash


@dataclass(frozen=True)
class ZooSpec:
    """One zoo model: architecture size and training recipe. ``train_tokens = steps * batch_size * seq_len``."""

    name: str
    family: str
    size: str
    preset: str
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup_steps: int
    weight_decay: float = 0.1
    seed: int = 0
    val_tokens: int = 65_536

    @property
    def train_tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len

    def hf_config(self, vocab_size: int, special_id: int) -> Any:
        """The transformers config of this model (randomly initialised by ``from_config``)."""
        return FAMILIES[self.family](self, vocab_size, special_id)

    def config_hash(self) -> str:
        """10 hex digits over everything that determines the weights except the seed and the name."""
        d = dataclasses.asdict(self)
        for k in ("name", "seed", "preset", "size"):
            d.pop(k)
        d["tokenizer"] = tokenizer_key()
        d["data"] = [DATA_VERSION, *TOKENIZER_CORPORA]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def _swiglu_width(d: int) -> int:
    """8/3 d rounded up to a multiple of 16 (d=64 -> 176)."""
    return 16 * math.ceil(8 * d / 3 / 16)


def _gpt2(s: ZooSpec, v: int, sid: int) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=v, n_positions=s.seq_len, n_embd=s.d_model, n_layer=s.n_layers, n_head=s.n_heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=sid, eos_token_id=sid,
        tie_word_embeddings=True,
    )  # fmt: skip


def _llama(s: ZooSpec, v: int, sid: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=v, hidden_size=s.d_model, intermediate_size=_swiglu_width(s.d_model),
        num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads, num_key_value_heads=s.n_heads,
        max_position_embeddings=s.seq_len, bos_token_id=sid, eos_token_id=sid, pad_token_id=None,
        tie_word_embeddings=False,
    )  # fmt: skip


def _opt(s: ZooSpec, v: int, sid: int) -> Any:
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=v, hidden_size=s.d_model, num_hidden_layers=s.n_layers, ffn_dim=4 * s.d_model,
        num_attention_heads=s.n_heads, max_position_embeddings=s.seq_len, word_embed_proj_dim=s.d_model,
        do_layer_norm_before=True, activation_function="relu", dropout=0.0, attention_dropout=0.0,
        layerdrop=0.0, bos_token_id=sid, eos_token_id=sid, pad_token_id=None, tie_word_embeddings=True,
    )  # fmt: skip


def _neox(s: ZooSpec, v: int, sid: int) -> Any:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=v, hidden_size=s.d_model, num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
        intermediate_size=4 * s.d_model, hidden_act="gelu", attention_dropout=0.0, hidden_dropout=0.0,
        max_position_embeddings=s.seq_len, use_parallel_residual=True, bos_token_id=sid, eos_token_id=sid,
        pad_token_id=None, tie_word_embeddings=False,
    )  # fmt: skip


def _qwen2(s: ZooSpec, v: int, sid: int) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=v, hidden_size=s.d_model, intermediate_size=_swiglu_width(s.d_model),
        num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
        num_key_value_heads=max(1, s.n_heads // 2), max_position_embeddings=s.seq_len, bos_token_id=sid,
        eos_token_id=sid, pad_token_id=None, tie_word_embeddings=True,
    )  # fmt: skip


FAMILIES: dict[str, Callable[[ZooSpec, int, int], Any]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "opt": _opt,
    "neox": _neox,
    "qwen2": _qwen2,
}

# (size label, d_model, n_layers, n_heads)
_TINY_SIZES = (("s", 32, 2, 2), ("m", 64, 2, 4), ("l", 96, 2, 4))
_FULL_SIZES = (("xs", 64, 2, 4), ("s", 128, 4, 4), ("m", 256, 4, 4), ("l", 384, 6, 6), ("xl", 512, 8, 8))
_FULL_STEPS = 610  # x 128 x 256 = 19,988,480 tokens


def _tiny() -> tuple[ZooSpec, ...]:
    lr = {"s": 1e-2, "m": 1e-2, "l": 8e-3}
    return tuple(
        ZooSpec(
            name=f"tiny-{fam}-{size}",
            family=fam,
            size=size,
            preset="tiny",
            d_model=d,
            n_layers=n_layers,
            n_heads=h,
            seq_len=64,
            batch_size=8,
            steps=300,
            lr=lr[size],
            warmup_steps=20,
            val_tokens=16_384,
        )
        for fam in FAMILIES
        for size, d, n_layers, h in _TINY_SIZES
    )


def _full() -> tuple[ZooSpec, ...]:
    lr = {"xs": 3e-3, "s": 2e-3, "m": 1.5e-3, "l": 1e-3, "xl": 8e-4}
    base = [
        ZooSpec(
            name=f"{fam}-{size}",
            family=fam,
            size=size,
            preset="full",
            d_model=d,
            n_layers=n_layers,
            n_heads=h,
            seq_len=256,
            batch_size=128,
            steps=_FULL_STEPS,
            lr=lr[size],
            warmup_steps=60,
        )  # fmt: skip
        for fam in FAMILIES
        for size, d, n_layers, h in _FULL_SIZES
    ]
    budgets = []
    for spec in base:
        if spec.family == "llama" and spec.size in ("s", "m"):
            for label, steps in (("d5m", _FULL_STEPS // 4), ("d80m", _FULL_STEPS * 4)):
                budgets.append(
                    dataclasses.replace(
                        spec, name=f"{spec.name}-{label}", steps=steps, warmup_steps=min(60, steps // 10)
                    )
                )
    return tuple(base + budgets)


ZOO_PRESETS: dict[str, tuple[ZooSpec, ...]] = {"tiny": _tiny(), "full": _full()}


class ZooError(ValueError):
    """Bad preset / family / model name, with the valid choices."""


def _choice_error(kind: str, name: str, valid: Iterable[str]) -> ZooError:
    from qscale.registry import unknown_name_message

    return ZooError(unknown_name_message(name, valid, kind))


def zoo_names() -> list[str]:
    """Every zoo model name over all presets."""
    return [s.name for p in ZOO_PRESETS.values() for s in p]


def get_spec(name: str) -> ZooSpec:
    for preset in ZOO_PRESETS.values():
        for s in preset:
            if s.name == name:
                return s
    raise _choice_error("zoo model", name, zoo_names())


def preset_of(name: str) -> str:
    return get_spec(name).preset


def preset_hash(preset: str) -> str:
    """Hash of a whole preset (every spec's config hash and seed): the cache key of a trained preset."""
    specs = select(preset)
    s = ";".join(f"{x.name}:{x.config_hash()}/{x.seed}" for x in specs)
    return hashlib.sha256(s.encode()).hexdigest()[:10]


def select(preset: str, families: Iterable[str] | None = None) -> list[ZooSpec]:
    """Specs of ``preset`` restricted to ``families`` (None: all)."""
    if preset not in ZOO_PRESETS:
        raise _choice_error("preset", preset, ZOO_PRESETS)
    fams = list(families) if families else list(FAMILIES)
    for f in fams:
        if f not in FAMILIES:
            raise _choice_error("family", f, FAMILIES)
    return [s for s in ZOO_PRESETS[preset] if s.family in fams]


def zoo_dir(name: str | None = None, root: str | Path | None = None) -> Path:
    """The zoo root (``root``, ``$QSCALE_ZOO_DIR`` or ``~/.cache/qscale/zoo``), or model ``name``'s directory in it."""
    r = Path(root).expanduser() if root is not None else default_zoo_root()
    return r / name if name else r


def is_trained(spec: ZooSpec, root: str | Path | None = None) -> bool:
    """True when ``spec``'s checkpoint under ``root`` was trained with its recipe (same config hash and seed)."""
    meta_path = zoo_dir(spec.name, root) / ZOO_META
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return meta.get("config_hash") == spec.config_hash() and meta.get("seed") == spec.seed


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model's status: ``"trained"``, ``"missing"`` or ``"stale"`` (trained with another recipe)."""

    name: str
    preset: str
    family: str
    size: str
    status: str
    path: str
    meta: dict[str, Any] | None


def list_zoo(root: str | Path | None = None, preset: str | None = None) -> list[ZooEntry]:
    """Every zoo model (of ``preset``, or all) with its status and metadata."""
    specs = select(preset) if preset else [s for p in ZOO_PRESETS.values() for s in p]
    out = []
    for s in specs:
        d = zoo_dir(s.name, root)
        meta = None
        status = "missing"
        if (d / ZOO_META).is_file():
            meta = json.loads((d / ZOO_META).read_text())
            ok = meta.get("config_hash") == s.config_hash() and meta.get("seed") == s.seed
            status = "trained" if ok else "stale"
        out.append(ZooEntry(s.name, s.preset, s.family, s.size, status, str(d), meta))
    return out


def random_model(
    family: str,
    tokenizer: Any,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 2,
    seq_len: int = 64,
    seed: int = 0,
) -> Any:
    """An untrained zoo-architecture model (eval mode, fp32, CPU) with ``tokenizer``, as a ``LoadedModel``.

    For unit tests that need a real architecture but no training: weights are transformers' initialisation
    under ``torch.manual_seed(seed)``; identity is ``"random:<family>-d<d_model>x<n_layers>/<seed>"``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from qscale.lm.facts import model_facts
    from qscale.lm.loading import LoadedModel

    if family not in FAMILIES:
        raise _choice_error("family", family, FAMILIES)
    spec = ZooSpec(
        name=f"random-{family}", family=family, size="-", preset="-", d_model=d_model, n_layers=n_layers,
        n_heads=n_heads, seq_len=seq_len, batch_size=1, steps=0, lr=0.0, warmup_steps=0, seed=seed,
    )  # fmt: skip
    torch.manual_seed(seed)
    config = spec.hf_config(len(tokenizer), tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    identity = f"random:{family}-d{d_model}x{n_layers}/{seed}"
    facts = model_facts(model, name=spec.name, identity=identity)
    return LoadedModel(model=model, tokenizer=tokenizer, facts=facts, name=spec.name)
