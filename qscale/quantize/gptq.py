"""GPTQ for every format: column-wise quantization with second-order error compensation.

For one linear layer with weight ``W`` (out, in) and calibration inputs ``X`` (in, N), GPTQ minimises
``||W X - Q X||^2`` column by column. With ``H = 2 X X^T / N`` and ``U`` the upper Cholesky factor of ``H^-1``
(so ``H^-1 = U^T U``), quantizing column ``j`` to ``q_j`` leaves the error ``e = (w_j - q_j) / U[j, j]`` which is
spread over the not-yet-quantized columns ``k > j`` as ``w_k -= e * U[j, k]``. Columns are processed in lazy blocks
(default 128): updates inside a block are applied column by column, the rest of the matrix is updated once per block.

The format is used only through its quantizer interface, so every format works the same way:

* a *scale span* (``fmt.scale_span(n)``: group size, MX block, or ``n`` for per-channel and per-tensor formats)
  decides where scales are computed: at the first column of each span ``g0`` the quantizer is built from the
  current (error-updated) ``W[:, g0:g0+span]`` with ``make_quantizer(fmt, slice)`` and kept fixed for the span;
* per-tensor formats get one quantizer from the whole ``W`` before the loop;
* the GPTQ block is rounded to a multiple of the span, so a span never straddles two lazy blocks (for MX formats the
  GPTQ block is a multiple of the MX block);
* non-uniform grids (nf4, cube-root, ...) need nothing special: the quantizer rounds to them.

Act-order permutes columns by ``diag(H)`` descending. With groups it uses *static groups*: the scales of every group
are computed from the original ``W`` before the loop (the format's groups stay contiguous in the original column
order, so the result is representable in the format; the dynamic-groups-with-permutation variant is not, and is
refused).

Dampening: ``H += damp * mean(diag(H)) * I`` with ``damp = 0.01`` by default. If the Cholesky factorisation fails
("not positive-definite"), it is retried with 10x the dampening (``0.01`` if it was 0) up to ``max_retries`` times;
the damping used and the retry count are recorded per layer. Dead inputs (``H[i, i] == 0``: a feature that is always
zero in the calibration data) get ``H[i, i] = 1`` and their weight column is set to 0 (it never contributes).

Sequential pipeline (:class:`GPTQ` method): the model is run block by block. The decoder blocks are found
generically (:func:`find_blocks`: the ``nn.ModuleList`` holding the most parameters), the inputs of the first block
are captured by a forward pre-hook (positional args and keyword args such as ``attention_mask`` and
``position_embeddings``) that raises to stop the forward pass, and each block's outputs on the *quantized* block
become the next block's inputs. Inside a block we use the "true sequential" variant: layers that read the very same
input tensor (q/k/v, or gate/up) form a group; groups are quantized in the order the block calls them, and before
each group after the first the block is re-run so that its Hessian sees the outputs of the already-quantized groups
(e.g. ``o_proj`` is calibrated on the attention output of quantized q/k/v). ``true_sequential=False`` gives the
simpler "all linear layers of the block at once" variant (one pass per block). Limitation: the keyword
arguments captured at the first block are reused for every block, so a model whose blocks get different masks
(alternating sliding-window / global attention layers) would calibrate its later blocks with block 0's mask. Linear layers outside the blocks
(rare: the head is excluded by default) are quantized with RTN and listed in ``info["rtn_fallback"]``.

Memory: only the current block's inputs (n_samples x seq_len x d_model) and the Hessians of the current block's
layers are held; works on CPU and CUDA (everything follows the model's device).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qscale.kernels import make_quantizer
from qscale.lm.layers import LinearRef
from qscale.quantize.registry import Method, MethodContext, MethodError, layer_format, register_method
from qscale.quantize.sqnr import db, layer_record, layer_sqnr

__all__ = [
    "GPTQ",
    "GPTQError",
    "GPTQResult",
    "HessianAccumulator",
    "capture_block_inputs",
    "find_blocks",
    "gptq_quantize_weight",
    "run_block",
]


class GPTQError(RuntimeError):
    """GPTQ could not factorise a layer's Hessian even with the largest dampening allowed."""


@dataclass
class GPTQResult:
    """The quantized weight of one layer and what it took."""

    q: torch.Tensor
    damp: float  # the relative dampening that succeeded (fraction of mean diag(H))
    retries: int  # how many times the Cholesky factorisation was retried with 10x dampening
    n_dead: int  # inputs that were always zero in the calibration data
    loss: float  # sum over columns of (w - q)^2 / [H^-1]_jj / 2: GPTQ's own proxy for the output error
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"damp": self.damp, "retries": self.retries, "n_dead": self.n_dead, "loss": self.loss}


class HessianAccumulator:
    """Accumulates ``H = 2 X X^T / N`` of a layer's inputs over batches in float64.

    ``add(x)`` takes the input tensor of any shape ``(..., in_features)``; every row of the flattened input is one
    sample. Worked example: inputs ``[[1, 0], [1, 2]]`` give ``X^T X = [[2, 2], [2, 4]]``, N = 2, ``H = [[2, 2], [2, 4]]``.
    """

    def __init__(self, n_features: int, device: torch.device | str = "cpu", dtype=torch.float64):
        self.sum = torch.zeros(n_features, n_features, dtype=dtype, device=device)
        self.n = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).to(device=self.sum.device, dtype=self.sum.dtype)
        self.sum.addmm_(x2.t(), x2)
        self.n += x2.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        if self.n == 0:
            raise GPTQError("no calibration inputs reached this layer (is it used in the forward pass?)")
        return self.sum * (2.0 / self.n)


def _inverse_cholesky_upper(
    h: torch.Tensor, damp: float, max_retries: int
) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor of ``(H + damp*mean(diag H)*I)^-1``, retrying with 10x damping on failure."""
    mean_diag = float(torch.diagonal(h).mean())
    scale = mean_diag if mean_diag > 0 else 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    tried = []
    for attempt in range(max_retries + 1):
        hd = h + (damp * scale) * eye
        chol, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0 and bool(torch.isfinite(chol).all()):
            # H^-1 from the factor by two triangular solves: torch.cholesky_inverse (LAPACK potri) is 7-15x
            # slower on the CPU build (4.9 s vs 0.32 s at 576 columns, 23.7 s vs 3.4 s at 1536, loaded 2-core CPU)
            hinv = torch.cholesky_solve(eye, chol)
            u, info2 = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info2) == 0 and bool(torch.isfinite(u).all()):
                return u, damp, attempt
        tried.append(damp)
        damp = damp * 10.0 if damp > 0 else 0.01
    raise GPTQError(
        f"Hessian not positive-definite even with dampening {tried} x mean(diag(H)) "
        f"(mean diag {mean_diag:.3g}); raise max_retries or percdamp"
    )


@torch.no_grad()
def gptq_quantize_weight(
    w: torch.Tensor,
    h: torch.Tensor,
    fmt: Any,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
    static_groups: bool | None = None,
    max_retries: int = 4,
    quantizer: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> GPTQResult:
    """GPTQ-quantize one ``(out, in)`` weight ``w`` given the input Hessian ``h`` (in, in); ``w`` is not modified.

    ``fmt`` needs ``scale_span(n)`` and ``per_tensor``. ``quantizer(w_slice)`` fixes the scales of a ``(rows, span)``
    slice and returns the function that quantizes its columns; by default :func:`qscale.kernels.make_quantizer`
    of ``fmt`` (see docs/interfaces.md; a test passes a grid of its own).
    ``static_groups=None`` means: static when ``act_order`` is on and the format has groups, else dynamic.
    Returns the quantized weight in ``w``'s dtype and device.
    """
    if w.ndim != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(
            f"weight {tuple(w.shape)} and Hessian {tuple(h.shape)} do not match: need (out, in), (in, in)"
        )
    if blocksize < 1:
        raise ValueError(f"blocksize must be >= 1, got {blocksize}")
    n_rows, n_cols = w.shape
    if quantizer is None:
        quantizer = functools.partial(make_quantizer, fmt)
    work = torch.float32
    W = w.detach().to(work).clone()
    H = h.detach().to(device=W.device, dtype=torch.float64).clone()

    dead = torch.diagonal(H) == 0
    n_dead = int(dead.sum())
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    per_tensor = bool(getattr(fmt, "per_tensor", False))
    span = n_cols if per_tensor else int(fmt.scale_span(n_cols))
    grouped = span < n_cols
    if static_groups is None:
        static_groups = act_order and grouped
    if act_order and grouped and not static_groups:
        raise ValueError(
            "act_order with groups needs static_groups=True: permuted dynamic groups would not be contiguous in "
            "the format's layout"
        )
    if grouped:
        blocksize = max(span, (blocksize // span) * span)

    # Quantizers fixed before the loop: per-tensor / per-channel (one span = the whole row), or static groups.
    fixed: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
    if per_tensor or not grouped:
        fixed[0] = quantizer(W)
    elif static_groups:
        for g0 in range(0, n_cols, span):
            fixed[g0 // span] = quantizer(W[:, g0 : g0 + span])

    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    col_group = (perm if perm is not None else torch.arange(n_cols, device=W.device)) // span
    col_group = col_group.tolist()

    U, damp_used, retries = _inverse_cholesky_upper(H, percdamp, max_retries)
    Hinv = U.to(work)
    del H, U

    Q = torch.zeros_like(W)
    loss = 0.0
    dynamic: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
    for i1 in range(0, n_cols, blocksize):
        i2 = min(i1 + blocksize, n_cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            col = i1 + i
            g = 0 if (per_tensor or not grouped) else col_group[col]
            if g in fixed:
                quant = fixed[g]
            else:  # dynamic groups (no act-order): scales from the error-updated span, at its first column
                if g not in dynamic:
                    dynamic.clear()
                    dynamic[g] = quantizer(W1[:, i : i + span])
                quant = dynamic[g]
            wcol = W1[:, i]
            d = Hinv1[i, i]
            q = quant(wcol.unsqueeze(1)).reshape(-1).to(work)
            Q1[:, i] = q
            err = (wcol - q) / d
            loss += float(((wcol - q).double().square() / d.double() ** 2).sum()) / 2.0
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    if not bool(torch.isfinite(Q).all()) and bool(torch.isfinite(w).all()):
        raise GPTQError("GPTQ produced non-finite weights (Hessian badly conditioned); increase percdamp")
    return GPTQResult(
        q=Q.to(dtype=w.dtype, device=w.device), damp=damp_used, retries=retries, n_dead=n_dead, loss=loss
    )


# --------------------------------------------------------------------------------------------- the block pipeline


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks: the ``nn.ModuleList`` (of 1+ modules) holding the most parameters.

    Works for GPT-2 (``transformer.h``), Llama/Qwen2/Mistral (``model.layers``), OPT (``model.decoder.layers``),
    GPT-NeoX (``gpt_neox.layers``) without naming any of them.
    """
    best, best_n = None, -1
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            n = sum(p.numel() for p in module.parameters())
            if n > best_n:
                best, best_n = module, n
    if best is None:
        raise MethodError(f"no nn.ModuleList of blocks found in {type(model).__name__}")
    return best


class _StopForward(Exception):
    pass


@dataclass
class BlockInput:
    """One calibration batch as the block sees it: positional args (first is the hidden states) and kwargs."""

    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> BlockInput:
        if self.args:
            return BlockInput((hidden, *self.args[1:]), self.kwargs)
        return BlockInput(self.args, {**self.kwargs, "hidden_states": hidden})


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, calib: torch.Tensor, batch_size: int = 8
) -> list[BlockInput]:
    """Run ``model`` on ``calib`` (n, L) token ids in batches, stopping at ``first_block``: its inputs per batch."""
    captured: list[BlockInput] = []

    def hook(_module, args, kwargs):
        captured.append(BlockInput(tuple(args), dict(kwargs)))
        raise _StopForward

    device = _model_device(model)
    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in calib.split(batch_size):
            with contextlib.suppress(_StopForward):
                model(input_ids=batch.to(device), use_cache=False)
    finally:
        handle.remove()
    if len(captured) != math.ceil(calib.shape[0] / batch_size):
        raise MethodError(
            "could not capture the inputs of the first decoder block (is it called by forward?)"
        )
    return captured


def run_block(block: nn.Module, inp: BlockInput) -> torch.Tensor:
    """The block's output hidden states for one captured input (tuple outputs: first element)."""
    out = block(*inp.args, **inp.kwargs)
    return out[0] if isinstance(out, tuple | list) else out


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _collect_hessians(
    block: nn.Module, inputs: Sequence[BlockInput], refs: Sequence[LinearRef], first_group_only: bool = False
) -> tuple[dict[str, HessianAccumulator], list[list[LinearRef]]]:
    """Run ``block`` on every input with pre-hooks on ``refs``: the layer groups and their Hessians.

    Groups: layers whose input in the first batch is the very same tensor, in the order the block first calls them.
    The layers of a group share one accumulator (one ``X^T X`` per distinct input, not one per layer).
    ``first_group_only``: accumulate only the first group's Hessian and stop each forward at the first call of a
    layer outside it (what true-sequential GPTQ uses of a pass: the later groups' inputs change once the first is
    quantized); the groups returned are then the first one (and at most the start of the next).
    """
    by_name = {r.name: r for r in refs}
    acc: dict[str, HessianAccumulator] = {}
    first_input: dict[str, torch.Tensor] = {}
    order: list[str] = []
    group_of: dict[str, int] = {}
    added: dict[int, torch.Tensor] = {}  # accumulator id -> the tensor it last took in this batch
    handles = []

    def make_hook(ref: LinearRef):
        def hook(_module, args):
            x = args[0]
            if ref.name not in group_of:  # first call of this layer (first batch): find or open its group
                for name in order:
                    if first_input[name] is x:
                        group_of[ref.name] = group_of[name]
                        acc[ref.name] = acc[name]
                        break
                else:
                    group_of[ref.name] = len(set(group_of.values()))
                    acc[ref.name] = HessianAccumulator(ref.in_features, device=ref.weight.device)
                first_input[ref.name] = x
                order.append(ref.name)
            if first_group_only and group_of[ref.name] != 0:
                raise _StopForward
            a = acc[ref.name]
            if added.get(id(a)) is not x:
                a.add(x)
                added[id(a)] = x

        return hook

    for ref in refs:
        handles.append(ref.module.register_forward_pre_hook(make_hook(ref)))
    try:
        for inp in inputs:
            added.clear()
            with contextlib.suppress(_StopForward):
                run_block(block, inp)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[LinearRef]] = []
    for name in order:
        g = group_of[name]
        if g == len(groups):
            groups.append([])
        groups[g].append(by_name[name])
    return acc, groups


def _gptq_options(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "blocksize": int(params["blocksize"]),
        "percdamp": float(params["percdamp"]),
        "act_order": bool(params["act_order"]),
        "static_groups": params["static_groups"],
        "max_retries": int(params["max_retries"]),
    }


@torch.no_grad()
def gptq_model(
    model: nn.Module,
    layers: Sequence[LinearRef],
    fmt: Any,
    calib: torch.Tensor,
    *,
    save: Callable[[torch.Tensor], None] | None = None,
    batch_size: int = 8,
    true_sequential: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Quantize ``layers`` of ``model`` with GPTQ, block by block (see the module docstring). Returns the info dict."""
    if calib.ndim != 2 or calib.dtype not in (torch.int64, torch.int32):
        raise MethodError(
            f"calibration must be a (n_samples, seq_len) LongTensor, got {calib.dtype} {tuple(calib.shape)}"
        )
    blocks = find_blocks(model)
    was_training = model.training
    model.eval()
    per_layer: dict[str, dict[str, Any]] = {}
    total_s = total_n = 0.0
    try:
        inputs = capture_block_inputs(model, blocks[0], calib, batch_size=batch_size)
        done: set[str] = set()
        for block in blocks:
            members = {id(m) for m in block.modules()}
            refs = [r for r in layers if id(r.module) in members]
            remaining = list(refs)
            while remaining:
                acc, groups = _collect_hessians(block, inputs, remaining, first_group_only=true_sequential)
                if not groups:  # none of them is called on the calibration data: left to the RTN fallback
                    break
                todo = groups[0] if true_sequential else [r for grp in groups for r in grp]
                for ref in todo:
                    w = ref.get_weight().clone()
                    res = gptq_quantize_weight(
                        w, acc[ref.name].hessian, layer_format(fmt, ref.name), **options
                    )
                    if save is not None:
                        save(ref.weight)
                    ref.set_weight(res.q)
                    signal, noise = layer_sqnr(w, res.q)
                    per_layer[ref.name] = {**res.record(), **layer_record(ref, signal, noise)}
                    total_s += signal
                    total_n += noise
                    done.add(ref.name)
                del acc
                # true sequential: the next pass finds the next group (a layer never called ends the loop with
                # no groups); all at once: the layers not called are left to the RTN fallback
                called = {r.name for grp in groups for r in grp}
                remaining = [
                    r for r in remaining if r.name not in done and (true_sequential or r.name in called)
                ]
            inputs = [inp.with_hidden(run_block(block, inp)) for inp in inputs]
        del inputs
    finally:
        model.train(was_training)
    return {"layers": per_layer, "signal": total_s, "noise": total_n, "done": done}


@register_method("gptq")
class GPTQ(Method):
    """GPTQ (Frantar et al. 2023) for any format; params: blocksize, percdamp, act_order, static_groups,
    max_retries, true_sequential, batch_size (calibration forward batch)."""

    description = "GPTQ: second-order error-compensated weight quantization (needs calibration)"
    needs_calibration = True
    per_layer_formats = True
    defaults: dict[str, Any] = {
        "blocksize": 128,
        "percdamp": 0.01,
        "act_order": False,
        "static_groups": None,
        "max_retries": 4,
        "true_sequential": True,
        "batch_size": 8,
    }

    def apply(self, ctx: MethodContext) -> dict[str, Any]:
        p = ctx.params
        saved_fn = ctx.save
        # the weights are saved before any write (we save the originals up front: GPTQ reads later layers' inputs
        # through already-quantized earlier layers, so restoring must undo all of them)
        for ref in ctx.layers:
            saved_fn(ref.weight)
        info = gptq_model(
            ctx.model,
            ctx.layers,
            ctx.fmt,
            ctx.calib,
            save=saved_fn,
            batch_size=int(p["batch_size"]),
            true_sequential=bool(p["true_sequential"]),
            **_gptq_options(p),
        )
        done = info.pop("done")
        rest = [r for r in ctx.layers if r.name not in done]
        if rest:  # linear layers outside the decoder blocks: RTN
            from qscale.quantize.rtn import quantize_layers

            rtn = quantize_layers(rest, ctx.fmt, write=True, ctx=ctx)
            for name, rec in rtn["layers"].items():
                info["layers"][name] = {**rec, "rtn_fallback": True}
            info["signal"] += rtn["signal"]
            info["noise"] += rtn["noise"]
        info["rtn_fallback"] = [r.name for r in rest]
        info["sqnr_db"] = db(info["signal"], info["noise"])
        info["n_samples"] = int(ctx.calib.shape[0])
        info["seq_len"] = int(ctx.calib.shape[1])
        info["damp"] = {name: rec["damp"] for name, rec in info["layers"].items() if "damp" in rec}
        return info
