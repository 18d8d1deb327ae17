"""Evaluation throughput of the sweep's inner loop: float eval, the cached float reference, per-format eval + KLD.

For each model of a zoo preset that has weights on disk (``qscale.lm.zoo.list_zoo``: trained, or stale =
trained with an older recipe, noted; missing models are skipped with a note) it builds stride-protocol windows of a fixed token budget and times, median of ``--repeats``
runs after one untimed warm-up pass (``time.perf_counter``, the device synchronised around each call):

* ``float tok/s``: scored tokens per second of ``qscale.measure.evaluate_windows`` on the float model;
* ``ref build s``: building the float reference once (``qscale.measure.reference_outputs``: float pass +
  the log-prob table KL needs);
* ``per-format s`` / ``fmt tok/s``: one format's evaluation with KLD and top-1 against that cached
  reference (``evaluate_windows(q_model, windows, reference=cache)`` inside ``quantized(model, fmt)``; the
  quantize step itself is excluded here and timed by ``bench/quantize_step.py``), mean over ``--formats``;
* ``ref / per-format``: how many per-format evaluations one reference build costs.

Precision: float32 always; on CUDA also bf16 autocast (``torch.autocast("cuda", torch.bfloat16)``) around
all three. The sequence length is 128 on CPU and 256 on CUDA, capped at the model's context
(``max_position_embeddings`` / ``n_positions``; the tiny zoo has 64), and is written in the table.
Writes ``bench/results/eval_throughput_<device>.md``.

GPU (the real measurement; the full preset, the sweep's token budget)::

    python bench/eval_throughput.py --device cuda --preset full --max-tokens 16384

CPU (the tiny preset; a shared 2-core machine, so the numbers show the script works and the relative cost of
reference vs per-format evaluation, not a speed claim)::

    OMP_NUM_THREADS=1 python bench/eval_throughput.py --device cpu --preset tiny
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_FORMATS = ("int8-pc", "int4-pc", "fp8-e4m3-pc")  # per-channel: divides every width


# ----------------------------------------------------------------------------------------- shared helpers
def pick_device(name: str | None) -> torch.device:
    """``cuda`` when available and not told otherwise; a clear exit when cuda is asked for but absent."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for but torch.cuda.is_available() is False; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        sys.exit(f"--device {name!r} is not supported; choose cpu or cuda")
    return dev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median wall seconds over ``repeats`` calls, last result); the device is synchronised around each."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return (
        f"{os.cpu_count()}-core CPU {platform.machine()}, shared with other engineers' jobs "
        f"({torch.get_num_threads()} torch threads, torch {torch.__version__})"
    )


def git_hash() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def trained_models(preset: str, root: str | None, names: list[str] | None) -> tuple[list[Any], list[str]]:
    """(zoo entries of the preset with weights on disk, notes on the others); ``names`` restricts to those."""
    from qscale.lm.zoo import list_zoo

    entries = list_zoo(root=root, preset=preset)
    if names:
        known = {e.name for e in entries}
        bad = [n for n in names if n not in known]
        if bad:
            import difflib

            hints = [difflib.get_close_matches(n, known, n=1) for n in bad]
            hint = "; ".join(
                f"{n!r} (did you mean {h[0]!r}?)" if h else repr(n) for n, h in zip(bad, hints, strict=True)
            )
            sys.exit(f"unknown model(s) for preset {preset!r}: {hint}. Valid: {', '.join(sorted(known))}")
        entries = [e for e in entries if e.name in names]
    usable = ("trained", "stale")  # a stale model (older recipe) has the same shapes: fine for timing
    notes = [f"{e.name}: {e.status}, skipped" for e in entries if e.status not in usable]
    notes += [
        f"{e.name}: stale (older training recipe), timed anyway" for e in entries if e.status == "stale"
    ]
    return [e for e in entries if e.status in usable], notes


def context_length(model: Any) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@contextmanager
def precision(device: torch.device, name: str) -> Iterator[None]:
    """``fp32``: nothing; ``bf16-autocast``: torch.autocast on CUDA."""
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if name == "bf16-autocast" else nullcontext()
    with ctx:
        yield


def write_table(path: Path, title: str, preamble: list[str], header: list[str], rows: list[list[str]]) -> str:
    lines = [f"# {title}", "", *preamble, ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


# -------------------------------------------------------------------------------------------------- bench
def bench_model(
    entry: Any, args: argparse.Namespace, device: torch.device, precisions: list[str]
) -> list[list[str]]:
    from qscale.corpora import get_windows
    from qscale.lm import load
    from qscale.measure import evaluate_windows, reference_outputs
    from qscale.quantize import quantized

    lm = load(f"zoo:{entry.name}", device=str(device), zoo_root=args.root)
    model = lm.model
    ctx = context_length(model)
    seq = args.seq_len or (256 if device.type == "cuda" else 128)
    if ctx is not None and seq > ctx:
        seq = ctx
    windows = get_windows(
        lm.tokenizer,
        corpus=args.corpus,
        split="test",
        protocol="stride",
        seq_len=seq,
        max_tokens=args.max_tokens,
    )
    bs = args.batch_size
    n = windows.n_scored
    rows = []
    for prec in precisions:
        with precision(device, prec):
            evaluate_windows(
                model, windows, batch_size=bs, progress=False
            )  # warm-up: kernels, allocator, plan
            t_float, _ = timed(
                device, lambda: evaluate_windows(model, windows, batch_size=bs, progress=False), args.repeats
            )
            t_ref, ref = timed(
                device,
                lambda: reference_outputs(model, windows, batch_size=bs, progress=False),
                args.repeats,
            )
            t_fmt = []
            for spec in args.formats:
                with quantized(model, spec):
                    t, res = timed(
                        device,
                        lambda ref=ref: evaluate_windows(
                            model, windows, reference=ref, batch_size=bs, progress=False
                        ),
                        args.repeats,
                    )
                    t_fmt.append(t)
                    print(f"  {entry.name} {prec} {spec}: {t:.3f} s, kld {res['kld']:.4g}", file=sys.stderr)
        mean_fmt = statistics.fmean(t_fmt)
        exact = "exact" if ref.exact else f"top-{ref.top_k}"
        rows.append(
            [
                entry.name,
                f"{lm.facts.n_nonembed:,}",
                prec,
                str(seq),
                f"{n:,}",
                f"{n / t_float:,.0f}",
                f"{t_ref:.3f} ({exact})",
                f"{mean_fmt:.3f}",
                f"{n / mean_fmt:,.0f}",
                f"{t_ref / mean_fmt:.2f}",
                device.type,
            ]
        )
        print("  " + " | ".join(rows[-1]), file=sys.stderr)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--preset", default="tiny", help="zoo preset: tiny or full")
    p.add_argument("--root", default=None, help="zoo root (default $QSCALE_ZOO_DIR or ~/.cache/qscale/zoo)")
    p.add_argument("--models", nargs="*", default=None, help="only these zoo models")
    p.add_argument("--formats", nargs="*", default=list(DEFAULT_FORMATS), help="formats for per-format eval")
    p.add_argument("--corpus", default="enwiki_gensim")
    p.add_argument(
        "--seq-len", type=int, default=None, help="default 128 on CPU, 256 on CUDA (capped at context)"
    )
    p.add_argument("--max-tokens", type=int, default=None, help="token budget (default 4096 CPU, 16384 CUDA)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--out", default=None, help="output Markdown (default bench/results/eval_throughput_<device>.md)"
    )
    args = p.parse_args(argv)
    from qscale.formats import get_format
    from qscale.lm.zoo import ZOO_PRESETS

    if args.preset not in ZOO_PRESETS:
        sys.exit(f"unknown preset {args.preset!r}; choose one of {', '.join(ZOO_PRESETS)}")
    args.formats = [str(get_format(f)) for f in args.formats]  # FormatError names the valid grammar
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.max_tokens is None:
        args.max_tokens = 16384 if device.type == "cuda" else 4096
    precisions = ["fp32", "bf16-autocast"] if device.type == "cuda" else ["fp32"]
    entries, notes = trained_models(args.preset, args.root, args.models)
    rows: list[list[str]] = []
    for e in entries:
        print(f"{e.name} ...", file=sys.stderr)
        rows += bench_model(e, args, device, precisions)
    cmd = "python " + " ".join([os.path.relpath(__file__, Path.cwd()), *(argv or sys.argv[1:])])
    pre = [
        f"Command: `{cmd}`",
        f"Hardware: {hardware(device)}. Date {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC, git {git_hash()}.",
        f"Protocol: stride windows of {args.corpus} test, token budget {args.max_tokens}, batch {args.batch_size}, "
        f"median of {args.repeats} after a warm-up pass; per-format formats: {', '.join(args.formats)} (RTN).",
    ]
    if device.type == "cpu":
        pre.append(
            "**2-core CPU, shared with other engineers' jobs: not a speed claim.** The GPU figures are still to be "
            "measured: `python bench/eval_throughput.py --device cuda --preset full --max-tokens 16384`."
        )
    if notes:
        pre.append("Models: " + "; ".join(notes) + ".")
    if not entries:
        pre.append(f"No trained model of preset {args.preset!r} found: train with `qscale zoo train`.")
    header = [
        "model",
        "N (non-emb)",
        "precision",
        "seq",
        "scored tokens",
        "float tok/s",
        "ref build s",
        "per-format s",
        "fmt tok/s",
        "ref / per-format",
        "device",
    ]
    out = Path(args.out) if args.out else RESULTS / f"eval_throughput_{device.type}.md"
    text = write_table(out, "Evaluation throughput (`bench/eval_throughput.py`)", pre, header, rows)
    print(text)
    return text


if __name__ == "__main__":
    main()
