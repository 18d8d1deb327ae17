"""Triton kernels for bulk fake quantization, bit-identical to the torch reference.

Entry points (the ``"triton"`` backend of :func:`qscale.kernels.fake_quant`):

* :func:`fake_quant_triton` ``(fmt, x) -> y``: same shape and dtype (fp32/fp16/bf16), scales along the
  last axis exactly as ``fmt.fake_quant`` with the torch backend.
* :func:`fake_quant_triton_with_sqnr` ``(fmt, x) -> (y, signal, noise)``: the same ``y`` plus
  ``sum(x**2)`` and ``sum((x - y)**2)`` over finite ``x``.  Each program sums its tile in fp32, the
  host adds the partials in fp64.  The elements ``y`` are bit-identical to the reference, so the
  sums differ from the reference's fp64 sums only by reduction order and fp32 partials: relative
  difference below ``n_tile * 2**-24`` (tile <= 8192 elements -> < 5e-4, typically ~1e-7).
* :func:`act_quant_triton` ``(fmt, x) -> y``: per-token dynamic activation quantization (W8A8-style):
  one scale per row of the last axis for per-tensor and per-channel formats (group and block
  formats keep their groups), computed and applied in one kernel.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` must be set before
``triton`` is first imported) on CPU tensors; that is how the tests check them bit for bit.

How a format becomes a kernel launch: :func:`plan_for` turns the format dataclass into a
:class:`KernelPlan` (element kind, scale rule, constants, grids), and :func:`run_plan` launches it on
a contiguous ``(rows, n_cols)`` view, one program per (row tile, scale span).  A group that does not
divide ``n_cols`` gives ``ceil(n_cols / group)`` spans per row, the last one masked to the
``n_cols % group`` columns of the partial trailing group (its own scale, as the reference).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import torch

ELEM_INT, ELEM_FP, ELEM_LUT = 0, 1, 2
SCALE_ABSMAX, SCALE_MINMAX, SCALE_E8M0, SCALE_NONE = 0, 1, 2, 3
_ELEM_NAMES = {"int": ELEM_INT, "fp": ELEM_FP, "lut": ELEM_LUT}
_SCALE_NAMES = {"absmax": SCALE_ABSMAX, "minmax": SCALE_MINMAX, "e8m0": SCALE_E8M0, "none": SCALE_NONE}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class TritonUnavailable(RuntimeError):
    """Triton cannot run here (not installed, or a CPU tensor without TRITON_INTERPRET=1)."""


class TritonUnsupported(NotImplementedError, TypeError):
    """An input the kernels do not take (e.g. float64): ``backend="auto"`` falls back to torch on it."""


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """Everything a kernel launch needs to know about a format, as plain numbers.

    elem: "int" | "fp" | "lut";  scale: "absmax" | "minmax" | "e8m0" | "none".
    granularity: "tensor" | "channel" | "group";  group: the group / block size for "group".
    qmin, qmax: the integer grid (int);  mbits, emin, max_normal: the minifloat element (fp);
    lut: the sorted grid (lut, in units of the scale);  thresholds: its len(lut)-1 decision boundaries
    (default: midpoints in fp32); a value on a boundary goes to the upper point.
    divisor: absmax scales are ``absmax / divisor`` (qmax for int, max_normal for fp, max|grid| for lut).
    emax_elem, eshift: E8M0 scales are ``2**(clamp(floor(log2(absmax)) - emax_elem, -127, 127) - eshift)``
    (eshift = b - 2 folds MXINT's implicit element scale into the scale, leaving an integer grid).
    clip: MSE clipping ratios tried in order (first best wins), () for none.

    E.g. int4 symmetric per group of 128: elem="int", scale="absmax", granularity="group", group=128,
    qmin=-8, qmax=7, divisor=7.0.  MXFP4: elem="fp", scale="e8m0", group=32, mbits=1, emin=0,
    max_normal=6.0, emax_elem=2.
    """

    elem: str
    scale: str
    granularity: str
    group: int = 0
    qmin: int = 0
    qmax: int = 0
    mbits: int = 0
    emin: int = 0
    max_normal: float = 0.0
    lut: tuple[float, ...] = ()
    thresholds: tuple[float, ...] = ()
    divisor: float = 1.0
    emax_elem: int = 0
    eshift: int = 0
    clip: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.elem not in _ELEM_NAMES:
            raise ValueError(f"unknown element kind {self.elem!r}; valid: {sorted(_ELEM_NAMES)}")
        if self.scale not in _SCALE_NAMES:
            raise ValueError(f"unknown scale rule {self.scale!r}; valid: {sorted(_SCALE_NAMES)}")
        if self.granularity not in ("tensor", "channel", "group"):
            raise ValueError(f"unknown granularity {self.granularity!r}; valid: tensor, channel, group")
        if self.granularity == "group" and self.group <= 0:
            raise ValueError(f"group granularity needs a positive group size, got {self.group}")
        if self.elem == "lut" and (len(self.lut) < 2 or list(self.lut) != sorted(self.lut)):
            raise ValueError("a LUT plan needs a sorted grid of at least two points")
        if self.thresholds and len(self.thresholds) != len(self.lut) - 1:
            raise ValueError(
                f"{len(self.lut)} LUT points need {len(self.lut) - 1} thresholds, got {len(self.thresholds)}"
            )

    def span(self, n_cols: int) -> int:
        """Columns sharing one scale in a row of n_cols (n_cols for per-channel and per-tensor)."""
        return min(self.group, n_cols) if self.granularity == "group" else n_cols


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _jit() -> Any:
    try:
        from qscale.kernels import triton_jit
    except ImportError as err:  # pragma: no cover - triton is a dev dependency
        raise TritonUnavailable(f"triton is not importable ({err}); use backend='torch'") from err
    return triton_jit


def triton_available(device: torch.device | str = "cuda") -> bool:
    """True when Triton can run on tensors of this device (CUDA, or CPU under TRITON_INTERPRET=1)."""
    try:
        _jit()
    except TritonUnavailable:
        return False
    dev = torch.device(device)
    return (dev.type == "cuda" and torch.cuda.is_available()) or (dev.type == "cpu" and _interpreting())


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TritonUnsupported(f"triton fake quant takes float32/float16/bfloat16 tensors, got {x.dtype}")
    if x.device.type == "cpu" and not _interpreting():
        raise TritonUnavailable(
            "triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 set before triton is imported "
            "for CPU tensors; use backend='torch' on CPU"
        )
    if x.device.type not in ("cpu", "cuda"):
        raise TritonUnavailable(f"no triton kernels for device {x.device}; valid: cuda (or cpu interpreted)")


def _tile(span: int, rows: int, tile_elems: int, max_block: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK_K, NCHUNK) for a span: a power-of-two column chunk and as many rows as fit."""
    block_k = min(triton_next_pow2(span), max_block)
    nchunk = math.ceil(span / block_k)
    rows_tile = max(1, min(triton_next_pow2(rows), tile_elems // block_k))
    return rows_tile, block_k, nchunk


def triton_next_pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1): 1 -> 1, 100 -> 128, 128 -> 128."""
    return 1 << max(0, int(n) - 1).bit_length()


@functools.cache
def _aux_tensors(plan: KernelPlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(midpoints, grid values, clip ratios) as fp32 device tensors (dummies of one element when unused)."""
    if plan.elem == "lut":
        vals = torch.tensor(plan.lut, dtype=torch.float32)
        if plan.thresholds:
            mids = torch.tensor(plan.thresholds, dtype=torch.float32)
        else:
            mids = (vals[:-1] + vals[1:]) * 0.5
    else:
        vals = mids = torch.zeros(1, dtype=torch.float32)
    clip = torch.tensor(plan.clip or (1.0,), dtype=torch.float32)
    return mids.to(device), vals.to(device), clip.to(device)


def _constexprs(plan: KernelPlan) -> dict[str, Any]:
    return {
        "ELEM": _ELEM_NAMES[plan.elem],
        "SCALE": _SCALE_NAMES[plan.scale],
        "QMIN": int(plan.qmin),
        "QMAX": int(plan.qmax),
        "MBITS": int(plan.mbits),
        "EMIN": int(plan.emin),
        "MAXN": float(plan.max_normal),
        "N_LUT": max(len(plan.lut), 1),
        "DIVISOR": float(plan.divisor),
        "EMAX_ELEM": int(plan.emax_elem),
        "ESHIFT": int(plan.eshift),
        "MSE": bool(plan.clip),
    }


def run_plan(
    plan: KernelPlan,
    x: torch.Tensor,
    *,
    with_sqnr: bool = False,
    tile_elems: int | None = None,
    max_block: int = 1024,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the kernels of ``plan`` on x; returns (y, signal, noise).

    signal and noise are 0-d float64 tensors on x's device (None unless with_sqnr).
    """
    _check_input(x)
    jit = _jit()
    shape = x.shape
    dev = x.device
    if x.numel() == 0:
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        return x.clone(), (zero if with_sqnr else None), (zero.clone() if with_sqnr else None)
    x2 = x.reshape(-1, shape[-1] if x.dim() else 1).contiguous()
    n_cols = x2.shape[1]
    y = torch.empty_like(x2)
    n_rows = x2.shape[0]
    if tile_elems is None:
        tile_elems = 8192 if _interpreting() else 4096
    if plan.granularity == "tensor":
        span = min(n_cols, max_block)  # programs over column chunks; one scale for all of them
    else:
        span = plan.span(n_cols)
        if span < n_cols and n_cols % span == 0:
            # Groups that tile the row: view each group as a row of its own, so a program's
            # (ROWS, span) tile is ROWS * span contiguous elements (coalesced even for 32-blocks).
            x2 = x2.view(-1, span)
            n_rows, n_cols = x2.shape
    rows_tile, block_k, nchunk = _tile(span, n_rows, tile_elems, max_block)
    n_spans = math.ceil(n_cols / span)
    grid = (math.ceil(n_rows / rows_tile), n_spans)
    n_prog = grid[0] * grid[1]
    opts: dict[str, Any] = {"enable_fp_fusion": False}
    if num_warps is not None:
        opts["num_warps"] = num_warps
    stats = torch.zeros(3, dtype=torch.float32, device=dev)
    if plan.granularity == "tensor" and plan.scale != "none":
        part = torch.empty((n_prog, 3), dtype=torch.float32, device=dev)
        jit._stats_kernel[grid](
            x2, part, n_rows, n_cols, span, n_spans, ROWS=rows_tile, BLOCK_K=block_k, NCHUNK=nchunk, **opts
        )
        # max/min are exact in any order: the global statistics equal the reference's.
        stats = torch.stack([part[:, 0].max(), part[:, 1].min(), part[:, 2].max()])
    mids, vals, clip = _aux_tensors(plan, dev)
    consts = _constexprs(plan)
    if plan.granularity == "tensor" and plan.clip:
        # Per-tensor MSE clipping: every program's float64 error per ratio, summed here (float64), first
        # minimum wins (torch.argmin returns the first); the kept ratio rescales the global statistics.
        errs = torch.empty((n_prog, len(plan.clip)), dtype=torch.float64, device=dev)
        del consts["MSE"]
        jit._clip_err_kernel[grid](
            x2,
            stats,
            mids,
            vals,
            clip,
            errs,
            n_rows,
            n_cols,
            span,
            n_spans,
            len(plan.clip),
            ROWS=rows_tile,
            BLOCK_K=block_k,
            NCHUNK=nchunk,
            **consts,
            **opts,
        )
        best = torch.argmin(errs.sum(dim=0))
        stats = stats * clip[best]
        consts["MSE"] = False
    sq = torch.empty((n_prog, 2) if with_sqnr else (1, 2), dtype=torch.float32, device=dev)
    jit._fake_quant_kernel[grid](
        x2,
        y,
        stats,
        mids,
        vals,
        clip,
        sq,
        n_rows,
        n_cols,
        span,
        n_spans,
        len(plan.clip) or 1,
        GLOBAL_STATS=plan.granularity == "tensor",
        WITH_SQNR=with_sqnr,
        ROWS=rows_tile,
        BLOCK_K=block_k,
        NCHUNK=nchunk,
        **consts,
        **opts,
    )
    y = y.reshape(shape)
    if not with_sqnr:
        return y, None, None
    sums = sq.to(torch.float64).sum(dim=0)
    return y, sums[0], sums[1]


#: (tile elements per program, num_warps) tried by :func:`autotune`; the first is the untuned default.
TUNE_CANDIDATES: tuple[tuple[int, int], ...] = ((4096, 4), (2048, 4), (4096, 8), (8192, 8), (16384, 16))


@dataclasses.dataclass
class _TuneTable:
    """Chosen (tile_elems, num_warps) per (plan, dtype, row length, size bucket, with_sqnr, device)."""

    best: dict[tuple[Any, ...], tuple[int, int]] = dataclasses.field(default_factory=dict)


_TUNED = _TuneTable()


def _tune_key(plan: KernelPlan, x: torch.Tensor, with_sqnr: bool) -> tuple[Any, ...]:
    return (
        plan,
        x.dtype,
        x.shape[-1] if x.dim() else 1,
        max(x.numel(), 1).bit_length(),
        with_sqnr,
        str(x.device),
    )


def _time_once(fn: Any, device: torch.device, reps: int) -> float:
    import statistics
    import time

    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def autotune(
    plan: KernelPlan,
    x: torch.Tensor,
    *,
    with_sqnr: bool = False,
    candidates: tuple[tuple[int, int], ...] = TUNE_CANDIDATES,
    reps: int = 5,
) -> tuple[int, int]:
    """Time each (tile_elems, num_warps) candidate on x (after one compile/warmup run), remember and
    return the fastest. Every candidate computes the same bits; only the speed differs."""
    timings = []
    for tile, warps in candidates:
        run = functools.partial(run_plan, plan, x, with_sqnr=with_sqnr, tile_elems=tile, num_warps=warps)
        run()
        timings.append((_time_once(run, x.device, reps), (tile, warps)))
    best = min(timings, key=lambda t: t[0])[1]
    _TUNED.best[_tune_key(plan, x, with_sqnr)] = best
    return best


def _launch(plan: KernelPlan, x: torch.Tensor, with_sqnr: bool) -> tuple[Any, Any, Any]:
    """run_plan with the tuned config on CUDA (tuned on first use of a key; QSCALE_TRITON_AUTOTUNE=0 off)."""
    if isinstance(x, torch.Tensor) and x.is_cuda and os.environ.get("QSCALE_TRITON_AUTOTUNE", "1") != "0":
        _check_input(x)
        cfg = _TUNED.best.get(_tune_key(plan, x, with_sqnr)) or autotune(plan, x, with_sqnr=with_sqnr)
        return run_plan(plan, x, with_sqnr=with_sqnr, tile_elems=cfg[0], num_warps=cfg[1])
    return run_plan(plan, x, with_sqnr=with_sqnr)


@functools.lru_cache(maxsize=256)
def _plan_cached(fmt: Any) -> KernelPlan:
    from qscale.kernels import triton_plan

    return triton_plan.plan_for_format(fmt)


def plan_for(fmt: Any) -> KernelPlan:
    """Translate a qscale format into a KernelPlan (raises NotImplementedError naming what is missing)."""
    if isinstance(fmt, KernelPlan):
        return fmt
    return _plan_cached(fmt)


def _validated_plan(fmt: Any, x: torch.Tensor) -> KernelPlan:
    # Any row length is valid: a group that does not divide it leaves a partial trailing group, which
    # run_plan's masked spans (ceil(n_cols / span) programs per row tile) quantize with its own scale.
    return plan_for(fmt)


def fake_quant_triton(fmt: Any, x: torch.Tensor) -> torch.Tensor:
    """Fake-quantize x with fmt on the GPU (or the interpreter); bit-identical to the torch reference."""
    y, _, _ = _launch(_validated_plan(fmt, x), x, False)
    return y


def fake_quant_triton_with_sqnr(fmt: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, signal, noise): y as fake_quant_triton; sums of x**2 and (x - y)**2 over finite x.

    signal and noise are 0-d float64 tensors on x's device (fp32 per-program partials, float64 total),
    like :func:`qscale.kernels.reference.fake_quant_with_sqnr_reference` up to summation order.
    """
    y, sig, noi = _launch(_validated_plan(fmt, x), x, True)
    assert sig is not None and noi is not None
    return y, sig, noi


#: The name :func:`qscale.kernels.fake_quant_with_sqnr` looks up for the fused path.
fake_quant_with_sqnr_triton = fake_quant_triton_with_sqnr


def act_quant_triton(fmt: Any, x: torch.Tensor) -> torch.Tensor:
    """Per-token dynamic quantization of activations x (..., hidden): one scale per row, one kernel.

    Per-tensor and per-channel formats get one dynamic scale per token (row of the last axis);
    group and block formats (e.g. MXFP8) keep their groups along the hidden axis.
    """
    plan = _validated_plan(fmt, x)
    if plan.granularity == "tensor":
        plan = dataclasses.replace(plan, granularity="channel")
    y, _, _ = _launch(plan, x, False)
    return y
