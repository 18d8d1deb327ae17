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

Training data: the train splits of the six packaged corpora (the tokenizer's mix), each document followed by
``<|endoftext|>``, concatenated into one token stream (about 4.26M tokens; the full preset repeats it about 5
times). Batches are windows at random offsets drawn from a ``torch.Generator`` seeded with the model's seed, so
the data order is a function of the seed only. Validation loss is the mean next-token loss over consecutive
non-overlapping ``seq_len + 1`` windows of the validation-split stream, at most ``val_tokens`` tokens of them,
evenly spaced over the stream (:func:`validation_windows`).

Optimiser: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only), linear warmup then cosine decay to 10%
of the peak LR, gradient clipping at 1.0, dropout 0. Same seed + same hardware + same thread count gives the
same weights bit for bit on CPU (tested); on CUDA deterministic algorithms are requested.

Each checkpoint directory is an ordinary HF checkpoint (``save_pretrained``, safetensors) with the tokenizer and
``qscale_zoo.json`` (see :func:`train_model` for its fields). A model whose metadata matches its spec
(same config hash and seed) is skipped on the next ``train_zoo``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qscale.lm.loading import ZOO_META, default_zoo_root
from qscale.lm.locking import exclusive
from qscale.lm.tokenizer import TOKENIZER_CORPORA, shared_tokenizer, tokenizer_key

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


# ---------------------------------------------------------------------------------------------- data


def token_streams(root: str | Path) -> dict[str, Any]:
    """``{"train": ..., "validation": ...}`` uint16 numpy token streams of the mix, cached under ``root``."""
    import numpy as np

    from qscale.corpora import read_split

    root = Path(root)
    d = root / f"data-{tokenizer_key()}-v{DATA_VERSION}"
    out = {}
    for split in ("train", "validation"):
        f = d / f"{split}.npy"
        if not f.is_file():
            with exclusive(root / "data.lock"):
                if not f.is_file():
                    tok = shared_tokenizer(root)
                    docs = [doc for c in TOKENIZER_CORPORA for doc in read_split(c, split)]
                    ids = tok(docs, add_special_tokens=False)["input_ids"]
                    eos = tok.eos_token_id
                    flat = np.fromiter((t for x in ids for t in (*x, eos)), dtype=np.uint16)
                    d.mkdir(parents=True, exist_ok=True)
                    tmp = d / f"{split}.tmp.npy"
                    np.save(tmp, flat)
                    tmp.rename(f)
        out[split] = np.load(f)
    return out


def unigram_baseline(train: Any, validation: Any, vocab_size: int) -> float:
    """Validation cross-entropy (nats/token) of the add-one-smoothed unigram distribution of ``train``."""
    import numpy as np

    counts = np.bincount(train.astype(np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[validation.astype(np.int64)].mean())


# ------------------------------------------------------------------------------------------ training


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({os.cpu_count()} cpus)"


def _lr_at(step: int, spec: ZooSpec) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from ``lr`` to ``0.1 lr`` at the last step."""
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    frac = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


def validation_windows(stream: Any, seq_len: int, max_tokens: int) -> Any:
    """``(n, seq_len + 1)`` int64 windows for validation: the stream cut into consecutive windows, of which
    ``n = max_tokens // (seq_len + 1)`` evenly spaced ones are kept (all if there are fewer), so a capped
    validation set still samples every corpus of the mix. Example: 1,000 windows, n=250 -> every 4th."""
    import numpy as np

    w = seq_len + 1
    n_all = len(stream) // w
    all_windows = np.asarray(stream[: n_all * w], dtype=np.int64).reshape(n_all, w)
    n = max(1, min(n_all, max_tokens // w))
    keep = (np.arange(n) * n_all) // n
    return all_windows[keep]


def validation_loss(model: Any, stream: Any, seq_len: int, max_tokens: int, batch_size: int = 16) -> float:
    """Mean next-token loss (nats) over :func:`validation_windows` of ``stream``."""
    import torch

    windows = torch.from_numpy(validation_windows(stream, seq_len, max_tokens))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            x = windows[i : i + batch_size].to(device)
            logits = model(input_ids=x[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += x[:, 1:].numel()
    model.train(was_training)
    return total / count


def train_model(
    spec: ZooSpec, root: str | Path | None = None, device: str = "cpu", force: bool = False
) -> Path:
    """Train one zoo model (or skip it if its checkpoint matches ``spec``); return its directory.

    ``qscale_zoo.json`` fields: name, family, model_type, size, preset, n_params, n_nonembed, train_tokens, seed,
    final_train_loss (mean of the last 10% of steps), val_loss, val_tokens, unigram_val_loss (baseline),
    wall_time_s, hardware, device, threads, torch, transformers, qscale, config_hash, tokenizer, spec, created.
    """
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    import qscale
    from qscale.lm.facts import count_params

    root = zoo_dir(root=root)
    out = root / spec.name
    if not force and _is_trained(spec, root):
        return out

    streams = token_streams(root)
    tok = shared_tokenizer(root)
    train, val = streams["train"], streams["validation"]
    sid = tok.eos_token_id
    config = spec.hf_config(len(tok), sid)

    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(spec.seed)
    data = torch.from_numpy(train.astype(np.int64))
    offsets = torch.arange(spec.seq_len + 1)
    use_cuda = device.startswith("cuda")
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else contextlib.nullcontext()
    )  # bf16 on GPU only
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    losses: list[float] = []
    try:
        for step in range(spec.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, spec)
            starts = torch.randint(0, len(data) - spec.seq_len - 1, (spec.batch_size,), generator=gen)
            x = data[starts[:, None] + offsets].to(device)
            with autocast:
                logits = model(input_ids=x[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
    finally:
        torch.use_deterministic_algorithms(prev_det)
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"zoo model {spec.name}: training diverged (non-finite loss)")
    wall = time.perf_counter() - t0
    model.eval()
    val_loss = validation_loss(model, val, spec.seq_len, spec.val_tokens)
    tail = losses[-max(1, spec.steps // 10) :]
    n_params, n_nonembed, _ = count_params(model)
    val_used = validation_windows(val, spec.seq_len, spec.val_tokens).reshape(-1)
    meta = {
        "name": spec.name,
        "family": spec.family,
        "model_type": config.model_type,
        "size": spec.size,
        "preset": spec.preset,
        "n_params": n_params,
        "n_nonembed": n_nonembed,
        "train_tokens": spec.train_tokens,
        "seed": spec.seed,
        "final_train_loss": sum(tail) / len(tail),
        "val_loss": val_loss,
        "val_tokens": int(len(val_used)),
        "unigram_val_loss": unigram_baseline(train, val_used, len(tok)),
        "wall_time_s": round(wall, 2),
        "hardware": _hardware(device),
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "qscale": qscale.__version__,
        "config_hash": spec.config_hash(),
        "tokenizer": tokenizer_key(),
        "spec": dataclasses.asdict(spec),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    tmp = root / f".{spec.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    from qscale.progress import quiet_third_party

    with quiet_third_party():  # no "Writing model shards" bar: `qscale zoo train` prints a line per model
        model.to("cpu").save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / ZOO_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    with exclusive(root / f".{spec.name}.lock"):
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def train_zoo(
    preset: str = "tiny",
    families: Iterable[str] | None = None,
    root: str | Path | None = None,
    device: str = "cpu",
    force: bool = False,
    progress: Callable[[ZooSpec, Path, float], None] | None = None,
    workers: int | None = None,
) -> dict[str, Path]:
    """Train (or reuse) every model of ``preset`` for ``families``; returns name -> checkpoint directory.

    ``progress(spec, path, seconds)`` is called after each model (seconds = 0-ish when it was skipped).
    ``workers``: on CPU, models train in this many processes at once, one torch thread each (default: the
    number of CPU cores, at most 4), so the weights do not depend on the worker count; on CUDA one at a time.
    """
    specs = select(preset, families)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ZooError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
    elif device != "cpu":
        raise ZooError(f"unknown device {device!r}. Valid choices: cpu, cuda, cuda:<index>.")
    root = zoo_dir(root=root)
    if workers is None:
        workers = 1 if device != "cpu" else max(1, min(os.cpu_count() or 1, 4))
    todo = [s for s in specs if force or not _is_trained(s, root)]
    paths = {s.name: zoo_dir(s.name, root) for s in specs if s not in todo}
    if progress is not None:
        for s in specs:
            if s not in todo:
                progress(s, paths[s.name], 0.0)
    if workers > 1 and device == "cpu" and len(todo) > 1:
        import concurrent.futures as cf
        import multiprocessing as mp

        shared_tokenizer(root)  # build the shared caches once, before the workers read them
        token_streams(root)
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
            started = {pool.submit(_train_one_thread, s, root, force): s for s in todo}
            for fut in cf.as_completed(started):
                s = started[fut]
                path, seconds = fut.result()
                paths[s.name] = Path(path)
                if progress is not None:
                    progress(s, paths[s.name], seconds)
    else:
        for spec in todo:
            t = time.perf_counter()
            paths[spec.name] = train_model(spec, root=root, device=device, force=force)
            if progress is not None:
                progress(spec, paths[spec.name], time.perf_counter() - t)
    return {s.name: paths[s.name] for s in specs}


def _is_trained(spec: ZooSpec, root: str | Path | None) -> bool:
    meta_path = zoo_dir(spec.name, root) / ZOO_META
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return meta.get("config_hash") == spec.config_hash() and meta.get("seed") == spec.seed


def _train_one_thread(spec: ZooSpec, root: str | Path | None, force: bool) -> tuple[str, float]:
    """Worker-process entry: one torch thread, so a model's weights do not depend on how many run at once.

    Returns the checkpoint directory and the seconds this model took (not counting time queued)."""
    import torch

    torch.set_num_threads(1)
    t = time.perf_counter()
    path = train_model(spec, root=root, device="cpu", force=force)
    return str(path), time.perf_counter() - t


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
