"""Whole-model quantize step vs evaluation: is quantizing a small part of a sweep run?

For the largest trained model of a zoo preset (or ``--model``), it times ``with quantized(model, fmt): pass``
(enter = RTN fake-quant of every linear weight through ``qscale.kernels``, exit = bit-exact restore), the
device synchronised around each call, median of ``--repeats`` after one untimed first call (whose time is
reported too: on CUDA it includes Triton's compile and autotune). Formats: ``int4-g<G>`` with G the largest of
128/64/32/16 dividing every linear layer's input width, ``mxfp4`` (block 32; skipped with a note when 32 does
not divide), ``nf4-g<G>`` (G the largest of 64/32/16 dividing), ``fp8-e4m3-pc``.

It compares that with the model's per-format evaluation on the sweep's default eval settings
(``qscale.collect.spec.EvalSpec()``: stride, seq 256 capped at the model's context, 16384 tokens, batch 8):
``evaluate_windows(model, windows, reference=cache)`` inside ``quantized(model, fmt)``, i.e. what each sweep
run pays after the float reference is cached. The ratio quantize / eval has a target of < 10% on the GPU.
Writes ``bench/results/quantize_step_<device>.md``.

GPU (the real measurement; the largest full-preset model)::

    python bench/quantize_step.py --device cuda --preset full

CPU (a shared 2-core machine: shows the script works, not a speed claim)::

    OMP_NUM_THREADS=1 python bench/quantize_step.py --device cpu --preset tiny
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_throughput import (  # noqa: E402
    RESULTS,
    context_length,
    git_hash,
    hardware,
    pick_device,
    sync,
    timed,
    trained_models,
    write_table,
)

TARGET = 0.10


def default_formats(widths: set[int]) -> tuple[list[str], list[str]]:
    """(format specs whose groups divide every width, notes on the ones left out).

    >>> default_formats({64, 256})
    (['int4-g64', 'mxfp4-e2m1-b32', 'nf4-g64', 'fp8-e4m3-pc'], [])
    >>> default_formats({96, 176})
    (['int4-g16', 'nf4-g16', 'fp8-e4m3-pc'], ['mxfp4: block 32 does not divide widths [176]'])
    """
    from qscale.formats import get_format

    def largest(cands: tuple[int, ...]) -> int | None:
        return next((g for g in cands if all(w % g == 0 for w in widths)), None)

    specs, notes = [], []
    g = largest((128, 64, 32, 16))
    if g is None:
        notes.append(f"int4-g*: no group of 128/64/32/16 divides widths {sorted(widths)}")
    else:
        specs.append(f"int4-g{g}")
    bad = sorted(w for w in widths if w % 32)
    if bad:
        notes.append(f"mxfp4: block 32 does not divide widths {bad}")
    else:
        specs.append("mxfp4")
    g = largest((64, 32, 16))
    if g is None:
        notes.append(f"nf4-g*: no group of 64/32/16 divides widths {sorted(widths)}")
    else:
        specs.append(f"nf4-g{g}")
    specs.append("fp8-e4m3-pc")
    return [str(get_format(s)) for s in specs], notes


def pick_model(args: argparse.Namespace) -> tuple[Any | None, list[str]]:
    entries, notes = trained_models(args.preset, args.root, [args.model] if args.model else None)
    if not entries:
        return None, notes
    return max(entries, key=lambda e: int((e.meta or {}).get("n_params", 0))), notes


def run(args: argparse.Namespace, device: torch.device) -> tuple[list[list[str]], list[str]]:
    from qscale.collect.spec import EvalSpec
    from qscale.corpora import get_windows
    from qscale.kernels import resolve_backend
    from qscale.lm import linear_layers, load
    from qscale.measure import evaluate_windows, reference_outputs
    from qscale.quantize import quantized

    entry, notes = pick_model(args)
    if entry is None:
        return [], notes + [f"no trained model of preset {args.preset!r}: train with `qscale zoo train`"]
    lm = load(f"zoo:{entry.name}", device=str(device), zoo_root=args.root)
    model = lm.model
    refs = linear_layers(model)
    widths = {int(r.get_weight().shape[1]) for r in refs}
    if args.formats:
        from qscale.formats import get_format

        specs, fnotes = [str(get_format(f)) for f in args.formats], []
    else:
        specs, fnotes = default_formats(widths)
    notes += fnotes
    backend = resolve_backend(refs[0].get_weight(), "auto")

    ev = EvalSpec()
    ctx = context_length(model)
    seq = min(ev.seq_len, ctx) if ctx else ev.seq_len
    windows = get_windows(
        lm.tokenizer,
        corpus=ev.corpus,
        split=ev.split,
        protocol=ev.protocol,
        seq_len=seq,
        max_tokens=ev.max_tokens,
    )
    bs = ev.batch_size
    evaluate_windows(model, windows, batch_size=bs, progress=False)  # warm-up pass
    t_ref, ref = timed(device, lambda: reference_outputs(model, windows, batch_size=bs, progress=False), 1)

    def enter_exit(spec: str) -> None:
        with quantized(model, spec):
            pass

    rows = []
    for spec in specs:
        sync(device)
        t_first, _ = timed(device, lambda spec=spec: enter_exit(spec), 1)
        t_q, _ = timed(device, lambda spec=spec: enter_exit(spec), args.repeats)
        with quantized(model, spec):
            t_eval, res = timed(
                device,
                lambda: evaluate_windows(model, windows, reference=ref, batch_size=bs, progress=False),
                args.eval_repeats,
            )
        ratio = t_q / t_eval
        verdict = ("yes" if ratio < TARGET else "**no**") if device.type == "cuda" else "n/a (CPU)"
        rows.append(
            [
                entry.name,
                f"{lm.facts.n_params:,}",
                spec,
                backend,
                f"{t_first * 1e3:.1f}",
                f"{t_q * 1e3:.1f}",
                f"{t_eval:.3f}",
                f"{ratio:.2%}",
                verdict,
                f"{res['kld']:.3g}",
            ]
        )
        print("  " + " | ".join(rows[-1]), file=sys.stderr)
    notes.append(
        f"model {entry.name}: {len(refs)} linear layers, input widths {sorted(widths)}; eval: {ev.protocol} "
        f"{ev.corpus}/{ev.split}, seq {seq} (sweep default {ev.seq_len}, model context {ctx}), "
        f"{windows.n_scored:,} scored tokens (budget {ev.max_tokens}), batch {bs}; float reference built once "
        f"in {t_ref:.3f} s ({'exact' if ref.exact else f'top-{ref.top_k}'})"
    )
    return rows, notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--preset", default="tiny", help="zoo preset: tiny or full")
    p.add_argument("--root", default=None, help="zoo root (default $QSCALE_ZOO_DIR or ~/.cache/qscale/zoo)")
    p.add_argument("--model", default=None, help="this zoo model instead of the largest trained one")
    p.add_argument("--formats", nargs="*", default=None, help="override the default format list")
    p.add_argument("--repeats", type=int, default=5, help="timed quantize enter+exit calls (median)")
    p.add_argument("--eval-repeats", type=int, default=3, help="timed evaluation passes (median)")
    p.add_argument(
        "--out", default=None, help="output Markdown (default bench/results/quantize_step_<device>.md)"
    )
    args = p.parse_args(argv)
    from qscale.lm.zoo import ZOO_PRESETS

    if args.preset not in ZOO_PRESETS:
        sys.exit(f"unknown preset {args.preset!r}; choose one of {', '.join(ZOO_PRESETS)}")
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    device = pick_device(args.device)
    rows, notes = run(args, device)
    cmd = "python " + " ".join([os.path.relpath(__file__, Path.cwd()), *(argv or sys.argv[1:])])
    pre = [
        f"Command: `{cmd}`",
        f"Hardware: {hardware(device)}. Date {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC, git {git_hash()}.",
        f"Quantize = `with quantized(model, fmt): pass` (RTN enter + restore), median of {args.repeats} after "
        f"one first call; eval = per-format evaluation with KLD against the cached float reference, median of "
        f"{args.eval_repeats}. Target: quantize / eval < {TARGET:.0%} on the GPU.",
    ]
    if device.type == "cpu":
        pre.append(
            "**2-core CPU, shared with other engineers' jobs: not a speed claim.** The GPU figures are still to be "
            "measured: `python bench/quantize_step.py --device cuda --preset full`."
        )
    pre += [f"- {n}" for n in notes]
    header = [
        "model",
        "N (params)",
        "format",
        "kernel backend",
        "first quantize ms",
        "quantize ms",
        "eval s",
        "quantize / eval",
        "< 10%",
        "kld",
    ]
    out = Path(args.out) if args.out else RESULTS / f"quantize_step_{device.type}.md"
    text = write_table(out, "Quantize step vs evaluation (`bench/quantize_step.py`)", pre, header, rows)
    print(text)
    return text


if __name__ == "__main__":
    main()
