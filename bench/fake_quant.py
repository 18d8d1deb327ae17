"""Bandwidth benchmark of bulk fake quantization: copy vs torch eager vs torch.compile vs Triton.

For each format and shape it times, on one device, ``y.copy_(x)`` (the bandwidth ceiling), the torch
reference (``qscale.kernels.fake_quant(fmt, x, backend="torch")``), ``torch.compile`` of that
reference, and the Triton kernel (``fake_quant_triton``), and reports GB/s counted as bytes read plus
bytes written (``2 * numel * itemsize``; scale reads/writes are not counted), median of N timed runs
after warmup (CUDA events on GPU, ``time.perf_counter`` on CPU).  Writes a Markdown table to
``bench/results/fake_quant_<device>.md``.

GPU (the real measurement; bf16 in and out)::

    python bench/fake_quant.py --device cuda

CPU smoke run (tiny shapes, torch backends only; exercises the script, not a performance claim)::

    OMP_NUM_THREADS=2 python bench/fake_quant.py --device cpu --small

With ``TRITON_INTERPRET=1`` the CPU run also times (slowly) and checks the interpreted Triton kernels.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

DEFAULT_FORMATS = (
    "int4-g128",
    "int4-pc",
    "int8-pc",
    "int4-g128-asym",
    "int4-g128-mse",
    "fp8-e4m3-pt",
    "fp8-e5m2-pc",
    "fp4-e2m1-g32",
    "mxfp4-e2m1-b32",
    "mxfp6-e3m2-b32",
    "mxfp8-e4m3-b32",
    "mxint8-b32",
    "nf4-g64",
    "cbrt4-g128",
)
GPU_SHAPES = ((4096, 4096), (4096, 14336), (8192, 28672))
SMALL_SHAPES = ((256, 512), (512, 1024))
RESULTS = Path(__file__).resolve().parent / "results"


def _timer(device: torch.device, fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median seconds of fn() over iters runs after warmup runs."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def run(args: argparse.Namespace) -> str:
    from qscale.formats import get_format
    from qscale.kernels import fake_quant

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for but torch.cuda.is_available() is False; use --device cpu --small")
    # On CPU the Triton kernels only run under the interpreter (TRITON_INTERPRET=1): a correctness
    # check of the script's Triton path, not a speed figure.
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    use_triton = (device.type == "cuda" or interpreted) and not args.no_triton
    if use_triton:
        from qscale.kernels.triton_kernels import fake_quant_triton
    dtype = getattr(torch, args.dtype)
    shapes = SMALL_SHAPES if args.small else GPU_SHAPES
    formats = [get_format(f) for f in args.formats]
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows: list[str] = []
    header = (
        "| format | shape | copy GB/s | torch eager GB/s | torch.compile GB/s | triton GB/s "
        "| triton / copy | triton / compile | triton bits == torch |"
    )
    rows.append(header)
    rows.append("|" + "---|" * 9)
    for shape in shapes:
        x = (torch.randn(shape, generator=gen) * 0.02).to(dtype=dtype, device=device)
        nbytes = 2 * x.numel() * x.element_size()
        out = torch.empty_like(x)
        t_copy = _timer(device, lambda x=x, out=out: out.copy_(x), args.warmup, args.iters)
        for fmt in formats:
            gbs: dict[str, float | None] = {"copy": nbytes / t_copy / 1e9}
            t = _timer(
                device, lambda fmt=fmt, x=x: fake_quant(fmt, x, backend="torch"), args.warmup, args.iters
            )
            gbs["eager"] = nbytes / t / 1e9
            gbs["compile"] = None
            if args.compile:
                compiled = torch.compile(
                    lambda v, fmt=fmt: fake_quant(fmt, v, backend="torch"), dynamic=False
                )
                t = _timer(device, lambda c=compiled, x=x: c(x), args.warmup, args.iters)
                gbs["compile"] = nbytes / t / 1e9
            gbs["triton"] = None
            same = "n/a"
            if use_triton:
                t = _timer(device, lambda fmt=fmt, x=x: fake_quant_triton(fmt, x), args.warmup, args.iters)
                gbs["triton"] = nbytes / t / 1e9
                ref = fake_quant(fmt, x, backend="torch")
                got = fake_quant_triton(fmt, x)
                same = "yes" if torch.equal(ref, got) else "**NO**"  # values (+0 == -0); no NaN in x

            def cell(v: float | None) -> str:
                return "n/a" if v is None else f"{v:.3g}"

            tri, comp = gbs["triton"], gbs["compile"]
            ratio_copy = f"{tri / gbs['copy']:.0%}" if tri else "n/a"
            ratio_comp = f"{tri / comp:.1f}x" if tri and comp else "n/a"
            line = (
                f"| {fmt} | {shape[0]}x{shape[1]} | {cell(gbs['copy'])} | {cell(gbs['eager'])} "
                f"| {cell(comp)} | {cell(tri)} | {ratio_copy} | {ratio_comp} | {same} |"
            )
            rows.append(line)
            print(line, flush=True)
    name = _device_name(device)
    cmd = "python bench/fake_quant.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            f"# Fake-quant bandwidth on {name}",
            "",
            f"Measured {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC with `{cmd}`; "
            f"torch {torch.__version__}, dtype {args.dtype} in and out, median of {args.iters} runs after "
            f"{args.warmup} warmup. GB/s = (bytes read + bytes written) / time, scales not counted.",
            "",
            *rows,
            "",
        ]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_small" if args.small else ""
    path = (
        Path(args.out)
        if args.out
        else RESULTS / f"fake_quant_{_slug(name if device.type == 'cuda' else 'cpu')}{suffix}.md"
    )
    path.write_text(text)
    print(f"wrote {path}")
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    p.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run)")
    p.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS), help="format spec strings")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--warmup", type=int, default=None, help="warmup runs (default 5 on cuda, 2 on cpu)")
    p.add_argument("--iters", type=int, default=None, help="timed runs (default 20 on cuda, 10 on cpu)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    p.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    p.add_argument("--out", default=None, help="output Markdown path")
    args = p.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 2)
    args.iters = args.iters if args.iters is not None else (20 if on_cuda else 10)
    run(args)


if __name__ == "__main__":
    main()
