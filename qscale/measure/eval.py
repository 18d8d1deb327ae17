"""Language-model quality on evaluation windows: NLL, perplexity, bits-per-byte, KL and top-1 agreement.

``evaluate(model, tokenizer, corpus, split, protocol, seq_len, ...)`` builds (cached) windows with
:func:`qscale.corpora.windows.get_windows` and calls :func:`evaluate_windows`; the sweep builds the
windows once and calls :func:`evaluate_windows` for every format.

Definitions (sums over the N scored tokens t_i with context c_i, see the window protocols):

* ``nll``  = -(1/N) sum_i log p(t_i | c_i), in nats; ``ppl`` = exp(nll)
* ``bpb``  = -sum_i log2 p(t_i | c_i) / n_bytes, n_bytes = UTF-8 bytes of the scored text (exact)
* ``kld``  = (1/N) sum_i KL(p_float(. | c_i) || p_quant(. | c_i)), in nats
* ``top1_agreement`` = fraction of scored positions where both models' argmax tokens agree

Worked numbers: 1000 scored tokens with total NLL 2772.6 nats over 4000 bytes give nll = 2.7726,
ppl = 16.0, bpb = 2772.6 / ln 2 / 4000 = 1.0.

Numerics: the model runs in its own dtype (fp32/bf16/fp16); logits of the scored positions are cast
to fp32 before the log-softmax and all sums accumulate in fp64 on the model's device, with no
host synchronisation until the end (window batches and their scored-position indices are moved to
the device once, before the loop).

Reference caches (:class:`ReferenceOutputs`). Evaluating many quantized variants against one float
model would rerun the float model every time, so :func:`reference_outputs` runs it once and stores,
per scored token, the float model's log-probs, the log-prob of the target and the argmax.

**KL is exact by default at any vocabulary size.** The full fp32 log-prob table (N x V x 4 bytes) is
kept in memory when it fits ``max_bytes`` (512 MiB) and otherwise written, batch by batch, to an
unlinked temporary file that is memory-mapped (``spill_dir``, default ``$QSCALE_CACHE_DIR`` or the
system temp dir; the file disappears with the cache object). Each evaluation then reads the rows of
its batch. Sizes: 8,192 tokens x 49,152 (SmolLM2) = 1.6 GB; x 151,936 (Qwen2.5) = 5.0 GB;
x 262,144 (Gemma) = 8.6 GB of disk, never more than one batch of it in RAM at a time beyond what the
page cache keeps.

``top_k=<int>`` is an explicit, cheaper option that stores only the ``top_k`` largest log-probs with
their token ids and the log of the remaining mass (``rest``), and computes the KL on the coarsened
distribution (the top-k tokens of p plus one "everything else" bucket):

    KL_k = sum_{v in top-k} p_v (log p_v - log q_v) + p_rest (log p_rest - log q_rest)

By the chain rule KL = KL_k + p_rest * KL(p_tail || q_tail) (tails renormalised), so KL_k <= KL: a
**lower bound**, and results say so (``kld_top_k`` = k, ``kld_is_bound`` = True, ``kld_coverage`` = mean
top-k mass). Measured (2-core CPU, random-init 2-layer GPT-2 with a 384-token vocabulary vs a
weight-perturbed copy, lee_news test, rolling L=32, 1878 tokens, exact KL 0.303; the models of
tests/measure/test_eval.py): coverage 0.60 at k=32 with KL_k 39% low, 0.89 at k=128 with 11% low, 0.98
at k=256 with 1.8% low. Top-1 agreement and the reference NLL are exact either way. Passing a float
*model* as ``reference`` computes the exact KL with both models in the same batch loop.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from qscale.corpora.windows import EvalWindows, get_windows

__all__ = [
    "AUTO_TOP_K",
    "DEFAULT_MAX_BYTES",
    "ReferenceOutputs",
    "evaluate",
    "evaluate_windows",
    "reference_metrics",
    "reference_outputs",
]

AUTO_TOP_K = 256  # the k of the old lower-bound default; kept for callers that ask for a bound by name
DEFAULT_MAX_BYTES = 512 * 2**20  # in-memory budget of the exact table; larger tables are memory-mapped
LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------------
# Model plumbing


def _model_device(model: Any) -> Any:
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _prepare(model: Any, device: Any, dtype: Any) -> Any:
    """Move/cast ``model`` in place when ``device``/``dtype`` are given; return its device."""
    import torch

    if dtype is not None:
        dtype = _parse_dtype(dtype)
    if device is not None or dtype is not None:
        model.to(device=torch.device(device) if device is not None else None, dtype=dtype)
    return _model_device(model)


def _parse_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp64": torch.float64,
        "float64": torch.float64,
    }
    if str(dtype) not in names:
        raise ValueError(f"Unknown dtype {dtype!r}; valid choices: {', '.join(names)}.")
    return names[str(dtype)]


def _forward_fn(model: Any):
    """A function ids -> logits (B, L, V) for HF causal LMs and plain modules returning logits."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        params = {}
    kwargs = {"use_cache": False} if "use_cache" in params else {}

    def run(ids: Any) -> Any:
        out = model(input_ids=ids, **kwargs) if "input_ids" in params else model(ids)
        if hasattr(out, "logits"):
            return out.logits
        if isinstance(out, tuple | list):
            return out[0]
        return out

    return run


def _scored_forward(model: Any, autocast: Any = None):
    """A function ``(ids, flat) -> (n, V)`` logits of the scored rows only (``flat`` from ``EvalWindows.batches``).

    A model with an output-embedding module (every HF causal LM) gets its head applied to the scored hidden
    states alone: a pre-hook on the head selects the rows, so the (B, L, V) logits are never built and never
    copied. With the reused buffers below this took SmolLM2's exact-KL evaluation from 0.77x to 0.87x a plain
    forward on a 2-core CPU (bench/results/eval_panel.md). Element-wise head post-processing (Gemma's soft-capping, Cohere's logit scale) works on
    any shape. A model whose forward reshapes the head's output, or any module without a head, gets the full
    logits and then the rows. ``autocast``: a torch dtype to run the forward under ``torch.autocast``.
    """
    import torch

    forward = _forward_fn(model)
    get_head = getattr(model, "get_output_embeddings", None)
    try:
        head = get_head() if callable(get_head) else None
    except (NotImplementedError, AttributeError):
        head = None
    state = {"hook": isinstance(head, torch.nn.Module)}

    def call(ids: Any) -> Any:
        if autocast is None:
            return forward(ids)
        with torch.autocast(ids.device.type, dtype=autocast):
            return forward(ids)

    def full(ids: Any, flat: Any) -> Any:
        logits = call(ids)
        return logits.reshape(-1, logits.shape[-1]).index_select(0, flat)

    def run(ids: Any, flat: Any) -> Any:
        if not state["hook"]:
            return full(ids, flat)

        def select(_module: Any, args: tuple) -> tuple:
            h = args[0]
            return (h.reshape(-1, h.shape[-1]).index_select(0, flat), *args[1:])

        handle = head.register_forward_pre_hook(select)
        try:
            logits = call(ids)
        except Exception:  # the forward needs the head's output in (B, L, V): the plain path from now on
            state["hook"] = False
            return full(ids, flat)
        finally:
            handle.remove()
        if logits.dim() == 2 and logits.shape[0] == flat.shape[0]:
            return logits
        state["hook"] = False
        return full(ids, flat)

    return run


def _autocast_dtype(autocast: Any) -> Any:
    """None, or the torch dtype of an ``autocast`` option (bf16 | fp16)."""
    if autocast is None:
        return None
    import torch

    dtype = _parse_dtype(autocast) if not isinstance(autocast, torch.dtype) else autocast
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast must be bf16 or fp16 (or None for none), got {autocast!r}.")
    return dtype


@contextmanager
def _eval_mode(*models: Any) -> Iterator[None]:
    """Dropout off while measuring; each module's train/eval flag is restored afterwards."""
    modules = [m for m in models if hasattr(m, "train") and hasattr(m, "training")]
    flags = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.train(flag)


def _progress(iterable: Any, progress: bool | None, desc: str) -> Any:
    """Batches with a progress row (stderr, :mod:`qscale.progress`): a row of the command's open display, or with
    ``progress=None`` a display of its own on a terminal when there are 16 batches or more; False: none."""
    from qscale.progress import active, track

    items = list(iterable)
    if progress is False or (progress is None and len(items) < 16 and not active()):
        return items
    return track(items, desc, enabled=progress)


# --------------------------------------------------------------------------------------------------
# Reference cache


@dataclass(frozen=True, eq=False)
class ReferenceOutputs:
    """The float model's outputs on fixed windows, for KL / top-1 / delta-NLL of many variants.

    Per scored token, in window-major order: ``logp`` (N, k) fp32 top-k log-probs sorted
    descending with ``index`` (N, k) int64 token ids (``top_k=None``: ``logp`` is (N, V), ``index``
    is None), ``rest_logp`` (N,) log of the probability outside the top-k (-inf if none),
    ``target_logp`` (N,) and ``argmax`` (N,). See the module docstring for the KL approximation.
    """

    windows: EvalWindows
    top_k: int | None
    logp: Any
    index: Any
    rest_logp: Any
    target_logp: Any
    argmax: Any
    vocab_size: int
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_tokens(self) -> int:
        return int(self.target_logp.shape[0])

    @property
    def exact(self) -> bool:
        return self.index is None

    @property
    def nll(self) -> float:
        """The float model's mean NLL on the windows (nats/token)."""
        return float(-self.target_logp.double().mean())

    @cached_property
    def coverage(self) -> float:
        """Mean probability mass of the stored top-k tokens (1.0 when exact)."""
        if self.exact:
            return 1.0
        return float(self.logp.double().exp().sum(-1).mean())

    @property
    def nbytes(self) -> int:
        tensors = [self.logp, self.index, self.rest_logp, self.target_logp, self.argmax]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def to(self, device: Any) -> dict:
        """The cached tensors on ``device`` (moved once, reused for every evaluation)."""
        import torch

        key = str(torch.device(device))
        if key not in self._device_cache:
            self._device_cache.clear()
            self._device_cache[key] = {
                name: (t.to(device) if t is not None else None)
                for name, t in (
                    ("logp", self.logp),
                    ("index", self.index),
                    ("rest_logp", self.rest_logp),
                    ("target_logp", self.target_logp),
                    ("argmax", self.argmax),
                )
            }
        return self._device_cache[key]


def _window_kwargs_error(kwargs: dict) -> None:
    allowed = {"corpus", "split", "protocol", "seq_len", "stride", "max_tokens", "add_bos"}
    bad = sorted(set(kwargs) - allowed)
    if bad:
        raise TypeError(f"Unexpected window argument(s) {bad}; valid: {sorted(allowed)}.")


def _vocab_hint(model: Any) -> int | None:
    """The output vocabulary size if the model says (HF ``get_output_embeddings``/config), else None."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(vocab) if vocab else None


def _resolve_top_k(top_k: Any, n_tokens: int, vocab: int, max_bytes: int) -> int | None:
    """None = store everything (exact; "auto" is exact too, spilled to disk past ``max_bytes``); else k."""
    if top_k in ("auto", "exact", None):
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be 'auto', None (exact) or a positive integer, got {top_k!r}.")
    return None if top_k >= vocab else top_k


def reference_outputs(
    model: Any,
    windows_or_tokenizer: Any,
    *,
    top_k: int | str | None = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    batch_size: int = 8,
    device: Any = None,
    dtype: Any = None,
    progress: bool | None = None,
    spill_dir: str | None = None,
    **window_kwargs: Any,
) -> ReferenceOutputs:
    """Run the float ``model`` once on the windows and cache what KL/top-1 need.

    ``windows_or_tokenizer`` is an :class:`EvalWindows`, or a tokenizer plus the keyword arguments of
    :func:`get_windows` (corpus, split, protocol, seq_len, stride, max_tokens). ``top_k``: "auto" or
    None (exact: in memory when N x V x 4 bytes <= ``max_bytes``, else memory-mapped from an unlinked
    file in ``spill_dir``) or an integer (a lower bound; see the module docstring). Tensors are kept on
    the CPU; a top-k cache takes N x (12k + 20) bytes.
    """
    import torch

    if isinstance(windows_or_tokenizer, EvalWindows):
        if window_kwargs:
            raise TypeError("Pass either an EvalWindows or a tokenizer with window arguments, not both.")
        windows = windows_or_tokenizer
    else:
        _window_kwargs_error(window_kwargs)
        windows = get_windows(windows_or_tokenizer, **window_kwargs)
    if top_k not in ("auto", None):
        _resolve_top_k(top_k, 1, 2**62, max_bytes)  # validate early
    dev = _prepare(model, device, dtype)
    forward = _scored_forward(model)
    n = windows.n_scored
    parts: dict[str, list] = {k: [] for k in ("logp", "index", "rest", "target", "argmax")}
    vocab = _vocab_hint(model)
    k = _resolve_top_k(top_k, n, vocab, max_bytes) if vocab is not None else "unknown"
    table = None  # the exact (N, V) log-prob table, filled batch by batch
    with torch.inference_mode(), _eval_mode(model):
        for ids, flat, targets, offset in _progress(
            windows.batches(batch_size, dev), progress, "float reference"
        ):
            logits = forward(ids, flat)
            if vocab is None or k == "unknown" or logits.shape[-1] != vocab:
                vocab = int(logits.shape[-1])
                k = _resolve_top_k(top_k, n, vocab, max_bytes)
            if k is None and table is None:
                table = _exact_table(n, vocab, max_bytes, spill_dir)
            rows = slice(offset, offset + logits.shape[0])
            direct = k is None and table.device == logits.device  # straight into the table's rows
            lp = (
                torch.log_softmax(logits.float(), -1, out=table[rows])
                if direct
                else logits.float().log_softmax(-1)
            )
            del logits
            parts["target"].append(lp.gather(1, targets[:, None]).squeeze(1))
            parts["argmax"].append(lp.argmax(-1))
            if k is None:
                if not direct:
                    table[rows] = lp.cpu()
                continue
            vals, idx = lp.topk(k, dim=-1, sorted=True)
            parts["logp"].append(vals)
            parts["index"].append(idx)
            parts["rest"].append(lp.scatter(1, idx, float("-inf")).logsumexp(-1))
    cat = {name: torch.cat(v).cpu() if v else None for name, v in parts.items()}
    return ReferenceOutputs(
        windows=windows,
        top_k=k,
        logp=table if k is None else cat["logp"],
        index=cat["index"],
        rest_logp=cat["rest"] if k is not None else torch.full((n,), float("-inf")),
        target_logp=cat["target"],
        argmax=cat["argmax"],
        vocab_size=int(vocab or 0),
    )


def reference_metrics(reference: ReferenceOutputs) -> dict:
    """The float model's own nll / ppl / bpb on the reference windows, from the cached target log-probs.

    Equal (to fp64 summation order) to ``evaluate_windows(float_model, windows)`` without a second pass.
    """
    windows = reference.windows
    nll_sum = float(-reference.target_logp.double().sum())
    n = windows.n_scored
    return {
        "nll": nll_sum / n,
        "ppl": math.exp(nll_sum / n),
        "bpb": nll_sum / LN2 / windows.n_bytes if windows.n_bytes else float("nan"),
        **windows.describe(),
    }


def _exact_table(n: int, vocab: int, max_bytes: int, spill_dir: str | None) -> Any:
    """An (n, vocab) fp32 tensor: in memory within ``max_bytes``, else memory-mapped from an unlinked file."""
    import os
    import tempfile

    import numpy as np
    import torch

    if n * vocab * 4 <= max_bytes:
        return torch.empty((n, vocab), dtype=torch.float32)
    where = spill_dir or os.environ.get("QSCALE_CACHE_DIR") or None
    if where:
        os.makedirs(where, exist_ok=True)
    f = tempfile.TemporaryFile(dir=where, prefix="qscale-ref-")  # noqa: SIM115 - unlinked; lives with the map
    f.truncate(n * vocab * 4)
    arr = np.memmap(f, dtype=np.float32, mode="r+", shape=(n, vocab))
    return torch.from_numpy(arr)


# --------------------------------------------------------------------------------------------------
# Evaluation


def _kl_from_cache(lq: Any, ref: dict, sl: slice, exact: bool, work: Any = None) -> Any:
    """Per-token KL(p || q) with p from the cache slice and q = log-probs ``lq`` (n, V).

    Exact: ``sum_v exp(lp) * (lp - lq)``, element by element as written; it overwrites ``lq`` with
    ``lp - lq`` and uses ``work`` (n, V) for ``exp(lp)`` when given, so a batch allocates nothing of size V.
    """
    import torch

    lp = ref["logp"][sl]
    if exact:
        diff = torch.sub(lp, lq, out=lq)
        p = torch.exp(lp, out=work) if work is not None else lp.exp()
        return torch.mul(p, diff, out=p).sum(-1)
    idx = ref["index"][sl]
    head = (lp.exp() * (lp - lq.gather(1, idx))).sum(-1)
    rest_p = ref["rest_logp"][sl]
    rest_q = lq.scatter(1, idx, float("-inf")).logsumexp(-1)
    tail = torch.where(torch.isfinite(rest_p), rest_p.exp() * (rest_p - rest_q), torch.zeros_like(rest_p))
    return head + tail


def evaluate_windows(
    model: Any,
    windows: EvalWindows,
    *,
    reference: Any = None,
    batch_size: int = 8,
    device: Any = None,
    dtype: Any = None,
    progress: bool | None = None,
    autocast: Any = None,
) -> dict:
    """NLL, ppl, bpb (+ kld, top1_agreement, reference_nll, dnll with ``reference``) on ``windows``.

    ``reference`` is a float model (exact KL, run alongside in the same loop) or a
    :class:`ReferenceOutputs` made on these same windows. ``device``/``dtype`` move/cast the model
    in place first (``model.to``); by default it runs where and as it is. ``autocast="bf16"`` (or fp16)
    runs ``model``'s forward under ``torch.autocast`` (a float-model reference runs without it), so the KL
    includes what the lower-precision arithmetic itself adds; the result says ``"autocast"``.
    """
    import torch

    if not isinstance(windows, EvalWindows):
        raise TypeError(f"windows must be an EvalWindows (from get_windows), got {type(windows).__name__}.")
    if windows.n_scored == 0:
        raise ValueError("The windows score no tokens; nothing to evaluate.")
    cast = _autocast_dtype(autocast)
    dev = _prepare(model, device, dtype)
    forward = _scored_forward(model, cast)
    ref_cache = ref_forward = None
    ref_dev = dev
    if isinstance(reference, ReferenceOutputs):
        if reference.windows.fingerprint != windows.fingerprint:
            raise ValueError(
                "reference was computed on different windows "
                f"({reference.windows.describe()}) than these ({windows.describe()}); "
                "make it with reference_outputs(float_model, windows)."
            )
        ref_cache = reference.to(dev)
    elif reference is not None:
        if not callable(reference):
            raise TypeError(
                f"reference must be a float model or a ReferenceOutputs, got {type(reference).__name__}."
            )
        ref_forward = _scored_forward(reference)
        ref_dev = _model_device(reference)

    with torch.inference_mode(), _eval_mode(model, reference):
        acc = torch.zeros(4, dtype=torch.float64, device=dev)  # nll, kl, top1, ref_nll sums
        # (n, V) buffers reused by every batch: the log-probs, and exp of the reference's for the exact KL
        lq_buf = work = None
        for ids, flat, targets, offset in _progress(windows.batches(batch_size, dev), progress, "evaluate"):
            logits = forward(ids, flat)
            n_rows, vocab = logits.shape
            if lq_buf is None or lq_buf.shape[0] < n_rows or lq_buf.shape[1] != vocab:
                lq_buf = torch.empty((n_rows, vocab), dtype=torch.float32, device=logits.device)
            lq = torch.log_softmax(logits.float(), -1, out=lq_buf[:n_rows])
            del logits
            acc[0] -= lq.gather(1, targets[:, None]).sum(dtype=torch.float64)
            if ref_cache is not None:
                if reference.vocab_size != vocab:
                    raise ValueError(f"reference vocab {reference.vocab_size} != model vocab {vocab}.")
                sl = slice(offset, offset + targets.shape[0])
                acc[2] += (lq.argmax(-1) == ref_cache["argmax"][sl]).sum()
                acc[3] -= ref_cache["target_logp"][sl].sum(dtype=torch.float64)
                if reference.exact and (work is None or work.shape != lq_buf.shape):
                    work = torch.empty_like(lq_buf)
                w = work[:n_rows] if reference.exact else None
                acc[1] += _kl_from_cache(lq, ref_cache, sl, reference.exact, w).sum(dtype=torch.float64)
            elif ref_forward is not None:
                lp = ref_forward(ids.to(ref_dev), flat.to(ref_dev)).float()
                lp = lp.log_softmax(-1).to(dev)
                acc[1] += (lp.exp() * (lp - lq)).sum(dtype=torch.float64)
                acc[2] += (lq.argmax(-1) == lp.argmax(-1)).sum()
                acc[3] -= lp.gather(1, targets[:, None]).sum(dtype=torch.float64)
    nll_sum, kl_sum, top1, ref_nll_sum = acc.tolist()  # the one host sync
    n = windows.n_scored
    nll = nll_sum / n
    result = {
        "nll": nll,
        "ppl": math.exp(nll),
        "bpb": nll_sum / LN2 / windows.n_bytes if windows.n_bytes else float("nan"),
        **windows.describe(),
        "dtype": str(next(iter(model.parameters())).dtype).replace("torch.", "")
        if _has_params(model)
        else None,
        "device": str(dev),
    }
    if cast is not None:
        result["autocast"] = str(cast).replace("torch.", "")
    if reference is not None:
        ref_nll = ref_nll_sum / n
        result.update(
            {
                "kld": kl_sum / n,
                "top1_agreement": top1 / n,
                "reference_nll": ref_nll,
                "reference_ppl": math.exp(ref_nll),
                "dnll": nll - ref_nll,
                "kld_top_k": reference.top_k if isinstance(reference, ReferenceOutputs) else None,
                "kld_is_bound": isinstance(reference, ReferenceOutputs) and not reference.exact,
                "kld_coverage": reference.coverage if isinstance(reference, ReferenceOutputs) else 1.0,
            }
        )
    return result


def _has_params(model: Any) -> bool:
    return any(True for _ in model.parameters())


def evaluate(
    model: Any,
    tokenizer: Any,
    corpus: str = "enwiki_gensim",
    split: str = "test",
    protocol: str = "stride",
    seq_len: int = 256,
    max_tokens: int | None = None,
    reference: Any = None,
    batch_size: int = 8,
    device: Any = None,
    dtype: Any = None,
    progress: bool | None = None,
    *,
    stride: int | None = None,
    add_bos: bool | None = None,
    autocast: Any = None,
) -> dict:
    """Evaluate a causal LM on a corpus split under a named protocol; returns a flat dict.

    Keys: nll, ppl, bpb, n_tokens, n_bytes, protocol, corpus, split, seq_len, stride, bos,
    max_tokens, n_windows, windows_fingerprint, dtype, device; with ``reference`` also kld,
    top1_agreement, reference_nll, reference_ppl, dnll, kld_top_k (None = exact KL), kld_coverage.
    """
    windows = get_windows(
        tokenizer,
        corpus=corpus,
        split=split,
        protocol=protocol,
        seq_len=seq_len,
        stride=stride,
        max_tokens=max_tokens,
        add_bos=add_bos,
    )
    return evaluate_windows(
        model,
        windows,
        reference=reference,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        progress=progress,
        autocast=autocast,
    )
