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

CPU model-shapes mode (the issue target: fake-quantizing every linear weight of a ~135M model for one
format costs at most 2x a plain copy of the same weights)::

    OMP_NUM_THREADS=1 python bench/fake_quant.py --cpu-model-shapes --iters 3 \
        --baseline tests.kernels._reference_v1 --label final

builds random weights N(0, 0.02) with SmolLM2-135M's linear shapes (30 layers of q/k/v/o/gate/up/down:
576x576, 192x576, 192x576, 576x576, 1536x576, 1536x576, 576x1536; 106M weights), times per format the
torch reference ``fake_quant(fmt, w, backend="torch")`` over all of them against ``w.clone()`` of all of
them (median of ``--iters`` runs; the copy re-timed next to every format because the machine is shared),
with the outputs kept (as when quantizing a model) and streamed (each dropped at once), optionally the
``--baseline`` module's reference too, and records seconds, ratios and SHA-256 digests of the quantized
bytes (so two versions of the kernels are checked bit-identical on all 106M weights) under ``--label`` in
``bench/results/fake_quant_cpu_model_shapes.json``. Results and discussion: ``bench/fake_quant.md``.

CPU panel-shapes mode (issue 11, "fake-quant <= 2x copy", per format family on the real panel's shapes)::

    python bench/fake_quant.py --cpu-panel-shapes --label after

times, for every distinct linear-weight shape of SmolLM2-135M, Qwen2.5-Coder-0.5B and Qwen2.5-Coder-1.5B
(widths 576, 896, 1536, 4864, 8960; fp32 N(0, 0.02)), one format per family (``PANEL_FAMILIES``) three ways,
interleaved in one process: ``x.clone()``, ``fake_quant(fmt, x, backend="torch")`` (the fused CPU path where
it is available) and ``reference.fake_quant_eager`` (the op-by-op torch reference, i.e. the code before the
fused path: "before"); ``--reps`` rounds, each round timing every (shape, format) once in a shuffled order with
its own copy timed right before it. Per shape and format it records the median of the per-round ratios to the
copy and the ratio of the fastest runs (the least disturbed on a shared machine), per model the same over one
decoder block's linears weighted by their count, the load average before and after, and whether the fused
output equals the eager one bit for bit (signed zeros included). Results: ``bench/results/fake_quant_cpu.json``
under ``--label``.
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
#: The formats of the CPU model-shapes mode: one or more per family, catalogue spec names.
MODEL_FORMATS = (
    "int4-g64",
    "int4-g128",
    "int8-pc",
    "int3-g64-asym",
    "int4-g64-mse",
    "int4-g128-mse",
    "fp8-e4m3-pc",
    "fp4-e2m1-g32",
    "mxfp4-e2m1-b32",
    "mxfp6-e3m2-b32",
    "mxint8-b32",
    "nf4-g64",
    "cbrt4-g128",
    "cbrt4-g64",
)
#: SmolLM2-135M's linear layers per decoder block, (out, in); 30 blocks.
SMOLLM2_135M_LINEARS = (
    ("q_proj", (576, 576)),
    ("k_proj", (192, 576)),
    ("v_proj", (192, 576)),
    ("o_proj", (576, 576)),
    ("gate_proj", (1536, 576)),
    ("up_proj", (1536, 576)),
    ("down_proj", (576, 1536)),
)
SMOLLM2_135M_LAYERS = 30
#: One format per family for the panel-shapes mode (issue 11's families).
PANEL_FAMILIES = {
    "int-pc": "int4-pc",
    "int-g128": "int4-g128",
    "int-g128-asym": "int4-g128-asym",
    "fp8-pc": "fp8-e4m3-pc",
    "fp4-g32": "fp4-e2m1-g32",
    "mxfp4-b32": "mxfp4-e2m1-b32",
    "nf4-g64": "nf4-g64",
    "cbrt4-g128": "cbrt4-g128",
}
#: The panel models' linear weights per decoder block: (out, in) -> count (q, k, v, o, gate, up, down).
PANEL_BLOCKS = {
    "smollm2-135m": {(576, 576): 2, (192, 576): 2, (1536, 576): 2, (576, 1536): 1},
    "qwen2.5-coder-0.5b": {(896, 896): 2, (128, 896): 2, (4864, 896): 2, (896, 4864): 1},
    "qwen2.5-coder-1.5b": {(1536, 1536): 2, (256, 1536): 2, (8960, 1536): 2, (1536, 8960): 1},
}
PANEL_LAYERS = {"smollm2-135m": 30, "qwen2.5-coder-0.5b": 24, "qwen2.5-coder-1.5b": 28}
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


def model_weights(layers: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Random N(0, 0.02) weights with SmolLM2-135M's linear shapes, ``layers`` decoder blocks."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(shape, generator=gen) * 0.02).to(dtype)
        for _ in range(layers)
        for _, shape in SMOLLM2_135M_LINEARS
    ]


def _digest(tensors: list[torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _time_kept(fn: Callable[[], object], iters: int) -> tuple[float, object]:
    """Median seconds of fn() over iters runs; each run's result is freed only after its clock stops.

    Returns (median, the last result) -- the last result is kept for the digest.
    """
    times, last = [], None
    for _ in range(iters):
        last = None  # free the previous outputs before the clock starts
        t0 = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), last


def _keep_freed_memory() -> bool:
    """glibc only: serve every block below 32 MiB from the heap and never trim it, so a run's outputs reuse
    the pages the previous run freed (no page faults after the first run; on this VM a fresh page costs
    ~0.6-1 ms per MiB, which otherwise lands, unevenly, on whichever measurement touches it first)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def run_model_shapes(args: argparse.Namespace) -> dict:
    """Time fake quant of all SmolLM2-135M-shaped weights vs copying them; merge into the results JSON.

    Two regimes, both timed per format next to a fresh copy measurement (the machine is shared):

    * kept: every output is kept until all weights are done (what quantizing a model does), for the copy
      too: 425 MB (fp32) written to memory that is not in cache. By default the allocator keeps freed pages
      (``--cold-malloc`` turns that off), so after the first run no page faults are timed;
    * streamed: each output is dropped at once, so the allocator hands the same warm buffer back --
      the kernels' arithmetic and memory traffic only, against a cache-friendly memcpy.

    With ``--baseline MODULE`` (e.g. ``tests.kernels._reference_v1``, the frozen pre-optimisation reference)
    its ``fake_quant_reference`` is timed too (kept regime, ``--baseline-iters`` runs) and the SHA-256 of its
    outputs is compared with the current kernels' (bit-identical on all weights or not).
    """
    import importlib
    import json

    from qscale.formats import get_format
    from qscale.kernels import fake_quant

    torch.set_num_threads(args.threads)
    if args.warm_malloc:
        _keep_freed_memory()
    dtype = getattr(torch, args.dtype)
    weights = model_weights(args.layers, dtype)
    n = sum(w.numel() for w in weights)
    print(f"{len(weights)} weights, {n / 1e6:.1f}M elements, {args.dtype}, {torch.get_num_threads()} threads")
    if args.baseline:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for tests.*
    baseline = importlib.import_module(args.baseline).fake_quant_reference if args.baseline else None

    def copy_kept() -> list[torch.Tensor]:
        return [w.clone() for w in weights]

    def copy_streamed() -> None:
        for w in weights:
            w.clone()

    def copy_times() -> tuple[float, float]:
        return _time_kept(copy_kept, args.iters)[0], _time_kept(copy_streamed, args.iters)[0]

    copy_kept()
    results: dict[str, dict] = {}
    for spec in args.formats:
        fmt = get_format(spec)

        def quant_kept(fmt=fmt) -> list[torch.Tensor]:
            return [fake_quant(fmt, w, backend="torch") for w in weights]

        def quant_streamed(fmt=fmt) -> None:
            for w in weights:
                fake_quant(fmt, w, backend="torch")

        ck0, cs0 = copy_times()
        quant_streamed()  # warm up (LUT tables, allocator)
        t_kept, outs = _time_kept(quant_kept, args.iters)
        digest = _digest(outs) if args.digest else None  # type: ignore[arg-type]
        del outs
        t_stream = _time_kept(quant_streamed, args.iters)[0]
        ck1, cs1 = copy_times()
        ck, cs = min(ck0, ck1), min(cs0, cs1)
        row: dict[str, object] = {
            "copy_kept_s": round(ck, 4),
            "quant_kept_s": round(t_kept, 4),
            "ratio_kept": round(t_kept / ck, 2),
            "copy_streamed_s": round(cs, 4),
            "quant_streamed_s": round(t_stream, 4),
            "ratio_streamed": round(t_stream / cs, 2),
            "sha256_16": digest,
        }
        line = (
            f"{str(fmt):16s} kept {t_kept:7.3f}s / copy {ck:6.3f}s = {t_kept / ck:6.1f}x   "
            f"streamed {t_stream:7.3f}s / copy {cs:6.3f}s = {t_stream / cs:6.1f}x"
        )
        if baseline is not None:
            t_base, bouts = _time_kept(
                lambda fmt=fmt: [baseline(fmt, w) for w in weights], args.baseline_iters
            )
            bdigest = _digest(bouts) if args.digest else None  # type: ignore[arg-type]
            del bouts
            row.update(
                {
                    "baseline_kept_s": round(t_base, 4),
                    "baseline_ratio_kept": round(t_base / ck, 2),
                    "speedup_kept": round(t_base / t_kept, 2),
                    "baseline_sha256_16": bdigest,
                    "bit_identical": None if digest is None else digest == bdigest,
                }
            )
            line += f"   baseline {t_base:7.3f}s ({t_base / t_kept:5.1f}x slower, same bits: {row['bit_identical']})"
        results[str(fmt)] = row
        print(line, flush=True)
    path = Path(args.out) if args.out else RESULTS / "fake_quant_cpu_model_shapes.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[args.label] = {
        "measured_utc": f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M}",
        "command": "python bench/fake_quant.py " + " ".join(sys.argv[1:]),
        "hardware": f"2-core CPU, shared ({_device_name(torch.device('cpu'))})",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "layers": args.layers,
        "n_weights": n,
        "iters": args.iters,
        "threads": torch.get_num_threads(),
        "baseline": args.baseline,
        "warm_malloc": args.warm_malloc,
        "formats": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path} [{args.label}]")
    return data


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (signed zeros included), NaN matched by position only."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ia, ib = a.view(torch.int32), b.view(torch.int32)
    return bool(((ia == ib) | (torch.isnan(a) & torch.isnan(b))).all())


def run_panel_shapes(args: argparse.Namespace) -> dict:
    """Per family and real panel shape: fused and eager fake quant vs ``x.clone()``; merge into the JSON."""
    import json
    import random

    from qscale.formats import get_format
    from qscale.kernels import cpu_fused, fake_quant, fake_quant_with_sqnr
    from qscale.kernels.reference import fake_quant_eager

    torch.set_num_threads(args.threads)
    if args.warm_malloc:
        _keep_freed_memory()
    load_before = os.getloadavg()
    fused = cpu_fused.available()
    families = {fam: get_format(spec) for fam, spec in PANEL_FAMILIES.items() if spec in args.formats}
    shapes = sorted({sh for block in PANEL_BLOCKS.values() for sh in block}, key=lambda t: (t[1], t[0]))
    gen = torch.Generator().manual_seed(0)
    xs = {sh: torch.randn(sh, generator=gen) * 0.02 for sh in shapes}
    ways = {"fused": lambda f, x: fake_quant(f, x, backend="torch")}
    if args.eager:
        ways["eager"] = fake_quant_eager
    if args.sqnr:  # fake_quant_with_sqnr (what RTN calls): q plus the float64 signal / noise sums

        def eager_sqnr(f, x):
            os.environ[cpu_fused.ENV_VAR] = "0"
            try:
                return fake_quant_with_sqnr(f, x, backend="torch")[0]
            finally:
                del os.environ[cpu_fused.ENV_VAR]

        ways["fused+sqnr"] = lambda f, x: fake_quant_with_sqnr(f, x, backend="torch")[0]
        ways["eager+sqnr"] = eager_sqnr
    same: dict[tuple, bool] = {}
    for sh, x in xs.items():  # warm up (library build, LUT tables, allocator) and check the bits
        for fam, f in families.items():
            q = ways["fused"](f, x)
            same[sh, fam] = _same_bits(q, fake_quant_eager(f, x)) if fused else True
    times: dict[tuple, list[tuple[float, float]]] = {}
    rng = random.Random(0)
    keys = [(sh, fam, way) for sh in shapes for fam in families for way in ways]
    for rep in range(args.reps):
        rng.shuffle(keys)
        for sh, fam, way in keys:
            x, f, fn = xs[sh], families[fam], ways[way]
            t0 = time.perf_counter()
            y = x.clone()
            tc = time.perf_counter() - t0
            del y
            t0 = time.perf_counter()
            y = fn(f, x)
            tq = time.perf_counter() - t0
            del y
            times.setdefault((sh, fam, way), []).append((tq, tc))
        print(f"round {rep + 1}/{args.reps} done, load {os.getloadavg()[0]:.1f}", flush=True)
    load_after = os.getloadavg()

    def summary(pairs: list[tuple[float, float]]) -> dict[str, float]:
        return {
            "median_ratio": round(statistics.median(q / c for q, c in pairs), 3),
            "min_ratio": round(min(q for q, _ in pairs) / min(c for _, c in pairs), 3),
            "median_s": round(statistics.median(q for q, _ in pairs), 6),
            "min_s": round(min(q for q, _ in pairs), 6),
            "copy_median_s": round(statistics.median(c for _, c in pairs), 6),
            "copy_min_s": round(min(c for _, c in pairs), 6),
        }

    per_shape: dict[str, dict] = {}
    for sh in shapes:
        row: dict[str, dict] = {}
        for fam in families:
            row[fam] = {way: summary(times[sh, fam, way]) for way in ways}
            row[fam]["bit_identical"] = same[sh, fam]
        per_shape[f"{sh[0]}x{sh[1]}"] = row
    per_model: dict[str, dict] = {}
    for model, block in PANEL_BLOCKS.items():
        row = {}
        for fam in families:
            cell: dict[str, object] = {}
            for way in ways:
                med = sum(n * statistics.median(q for q, _ in times[sh, fam, way]) for sh, n in block.items())
                cmed = sum(
                    n * statistics.median(c for _, c in times[sh, fam, way]) for sh, n in block.items()
                )
                fast = sum(n * min(q for q, _ in times[sh, fam, way]) for sh, n in block.items())
                cfast = sum(n * min(c for _, c in times[sh, fam, way]) for sh, n in block.items())
                cell[way] = {
                    "median_ratio": round(med / cmed, 3),
                    "min_ratio": round(fast / cfast, 3),
                    "model_s_median": round(med * PANEL_LAYERS[model], 4),
                    "model_s_min": round(fast * PANEL_LAYERS[model], 4),
                }
            row[fam] = cell
        per_model[model] = row
    print(f"\n{'family':14s} " + " ".join(f"{m:>24s}" for m in PANEL_BLOCKS))
    for fam in families:
        cells = []
        for m in PANEL_BLOCKS:
            c = per_model[m][fam]
            e = c.get("eager", {}).get("median_ratio", float("nan"))
            cells.append(f"{e:6.2f}x -> {c['fused']['median_ratio']:5.2f}x ({c['fused']['min_ratio']:4.2f})")
        print(f"{fam:14s} " + " ".join(f"{c:>24s}" for c in cells))
    print("(median of per-round ratios to x.clone(), eager -> fused; in brackets fastest / fastest copy)")
    if args.sqnr:
        for fam in families:
            cells = [
                f"{per_model[m][fam]['eager+sqnr']['median_ratio']:6.2f}x -> "
                f"{per_model[m][fam]['fused+sqnr']['median_ratio']:5.2f}x"
                for m in PANEL_BLOCKS
            ]
            print(f"{fam + ' +sqnr':14s} " + " ".join(f"{c:>24s}" for c in cells))
    path = Path(args.out) if args.out else RESULTS / "fake_quant_cpu.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[args.label] = {
        "measured_utc": f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M}",
        "command": "python bench/fake_quant.py " + " ".join(sys.argv[1:]),
        "hardware": f"{os.cpu_count()}-vCPU {platform.machine()} VM, shared ({_device_name(torch.device('cpu'))})",
        "cpu": _cpu_model(),
        "load_avg_1_5_15_before": [round(v, 2) for v in load_before],
        "load_avg_1_5_15_after": [round(v, 2) for v in load_after],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "reps": args.reps,
        "warm_malloc": args.warm_malloc,
        "fused_available": fused,
        "fused_unavailable_reason": cpu_fused.unavailable_reason(),
        "formats": {fam: str(f) for fam, f in families.items()},
        "ways": {
            "fused": "qscale.kernels.fake_quant(fmt, x, backend='torch') (fused C loops on CPU)",
            "eager": "qscale.kernels.reference.fake_quant_eager (op-by-op torch: the code before)",
            "fused+sqnr": "qscale.kernels.fake_quant_with_sqnr (q, float64 signal and noise sums)",
            "eager+sqnr": f"the same with {cpu_fused.ENV_VAR}=0 (op-by-op torch: the code before)",
        },
        "models": per_model,
        "shapes": per_shape,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path} [{args.label}]")
    return data


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    p.add_argument("--out", default=None, help="output path (Markdown; JSON with --cpu-model-shapes)")
    p.add_argument(
        "--cpu-model-shapes",
        action="store_true",
        help="CPU: fake quant of SmolLM2-135M-shaped weights vs a copy of them (see the module docstring)",
    )
    p.add_argument(
        "--cpu-panel-shapes",
        action="store_true",
        help="CPU: one format per family on every real panel weight shape, fused and eager vs x.clone()",
    )
    p.add_argument("--reps", type=int, default=15, help="panel-shapes mode: interleaved rounds")
    p.add_argument(
        "--no-eager", dest="eager", action="store_false", help="panel-shapes mode: skip the eager reference"
    )
    p.add_argument(
        "--sqnr",
        action="store_true",
        help="panel-shapes mode: also time fake_quant_with_sqnr, fused and eager",
    )
    p.add_argument(
        "--layers", type=int, default=SMOLLM2_135M_LAYERS, help="model-shapes mode: decoder blocks"
    )
    p.add_argument(
        "--label", default="run", help="model-shapes mode: key of this run in the JSON (before/after)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="model-shapes mode: torch threads (default 1: on the shared 2-vCPU machine a parallel op can "
        "wait ~8 ms for the second vCPU while another session holds it)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="model-shapes mode: module whose fake_quant_reference is timed as the baseline "
        "(e.g. tests.kernels._reference_v1)",
    )
    p.add_argument(
        "--cold-malloc",
        dest="warm_malloc",
        action="store_false",
        help="model-shapes mode: leave glibc's trimming on (kept outputs then pay page faults, unevenly)",
    )
    p.add_argument("--baseline-iters", type=int, default=1, help="model-shapes mode: baseline runs")
    p.add_argument(
        "--no-digest", dest="digest", action="store_false", help="model-shapes mode: skip the SHA-256"
    )
    args = p.parse_args(argv)
    if args.cpu_panel_shapes:
        if args.formats == list(DEFAULT_FORMATS):
            args.formats = list(PANEL_FAMILIES.values())
        run_panel_shapes(args)
        return
    if args.cpu_model_shapes:
        args.device = "cpu"
        if args.formats == list(DEFAULT_FORMATS):
            args.formats = list(MODEL_FORMATS)
        if "--dtype" not in " ".join(argv if argv is not None else sys.argv[1:]):
            args.dtype = "float32"
        args.warmup = args.warmup if args.warmup is not None else 1
        args.iters = args.iters if args.iters is not None else 3
        run_model_shapes(args)
        return
    on_cuda = args.device.startswith("cuda")
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 2)
    args.iters = args.iters if args.iters is not None else (20 if on_cuda else 10)
    run(args)


if __name__ == "__main__":
    main()
