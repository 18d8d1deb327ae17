"""The zoo trainer: the token streams of the packaged corpora, the training loop, and ``train_zoo``.

The models, presets and names are the catalogue, :mod:`qscale.lm.zoo`; this module trains them into the checkpoint
directories the catalogue names (``zoo_dir``).

Training data: the train splits of the six packaged corpora (the tokenizer's mix), each document followed by
``<|endoftext|>``, concatenated into one token stream (about 4.26M tokens; the full preset repeats it about 5
times). Batches are windows at random offsets drawn from a ``torch.Generator`` seeded with the model's seed, so
the data order is a function of the seed only. Validation loss is the mean next-token loss over consecutive
non-overlapping ``seq_len + 1`` windows of the validation-split stream, at most ``val_tokens`` tokens of them,
evenly spaced over the stream (:func:`validation_windows`).

Optimiser: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only), linear warmup then cosine decay to 10%
of the peak LR, gradient clipping at 1.0, dropout 0. Same seed + same hardware + same thread count gives the
same weights bit for bit on CPU (tested); on CUDA deterministic algorithms are requested.

Each checkpoint is written to a temporary directory and renamed into place under a lock, with ``qscale_zoo.json``
(see :func:`train_model` for its fields). A model whose metadata matches its spec (same config hash and seed,
:func:`qscale.lm.zoo.is_trained`) is skipped on the next ``train_zoo``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from qscale.lm.loading import ZOO_META
from qscale.lm.locking import exclusive
from qscale.lm.tokenizer import TOKENIZER_CORPORA, shared_tokenizer, tokenizer_key
from qscale.lm.zoo import DATA_VERSION, ZooError, ZooSpec, is_trained, select, zoo_dir

__all__ = [
    "token_streams",
    "train_model",
    "train_zoo",
    "unigram_baseline",
    "validation_loss",
    "validation_windows",
]


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
    if not force and is_trained(spec, root):
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
    todo = [s for s in specs if force or not is_trained(s, root)]
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


def _train_one_thread(spec: ZooSpec, root: str | Path | None, force: bool) -> tuple[str, float]:
    """Worker-process entry: one torch thread, so a model's weights do not depend on how many run at once.

    Returns the checkpoint directory and the seconds this model took (not counting time queued)."""
    import torch

    torch.set_num_threads(1)
    t = time.perf_counter()
    path = train_model(spec, root=root, device="cpu", force=force)
    return str(path), time.perf_counter() - t
