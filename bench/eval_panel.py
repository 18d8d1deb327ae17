"""Evaluation speed on a real panel model: a plain HF forward vs qscale's evaluation with exact KL.

On the same windows (stride protocol, 512-token windows, batch 4, fp32) it times, after one untimed warm-up batch:

* ``plain``: ``model(input_ids=...)`` on every window, logits discarded (what any tool must at least pay);
* ``reference``: ``reference_outputs`` (float pass + the exact full-vocabulary log-prob table, memory-mapped
  past 512 MiB);
* ``eval``: ``evaluate_windows(model, windows, reference=ref)`` (NLL, bpb, exact KL, top-1);
* ``format``: one format's whole per-format cost in a sweep: RTN fake quantization of every linear weight
  (``quantized(model, fmt)``) plus ``eval`` of the quantized model, and its KL;
* with ``--bf16``: ``eval`` under ``evaluate_windows(..., autocast="bf16")`` against the fp32 reference, and the
  KL that bf16 alone adds (the model is not quantized).

Peak memory is the process's max RSS (``resource.getrusage``), so run one model per process. Writes
``bench/results/eval_panel_<model>.json``; ``--table`` writes ``bench/results/eval_panel.md`` from all of them.

    python bench/eval_panel.py panel:smollm2-135m --max-tokens 4352 --bf16
    python bench/eval_panel.py --table
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--max-tokens", type=int, default=4352)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--format", default="int4-g128", help="the format timed as one sweep step")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--table", action="store_true", help="write eval_panel.md from the results and exit")
    args = ap.parse_args()
    if args.table:
        write_table()
        return
    if args.model is None:
        ap.error("give a model (e.g. panel:smollm2-135m) or --table")

    from qscale.corpora import get_windows
    from qscale.lm import load
    from qscale.measure import evaluate_windows, reference_outputs
    from qscale.quantize import quantized

    lm = load(args.model, attn_implementation="sdpa")
    w = get_windows(
        lm.tokenizer,
        corpus="enwiki_gensim",
        split="test",
        protocol="stride",
        seq_len=args.seq_len,
        max_tokens=args.max_tokens,
    )
    m = lm.model
    with torch.inference_mode():
        m(input_ids=w.input_ids[: args.batch_size], use_cache=False)  # warm-up
        t = time.perf_counter()
        for i in range(0, w.input_ids.shape[0], args.batch_size):
            m(input_ids=w.input_ids[i : i + args.batch_size], use_cache=False)
        plain = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference_outputs(m, w, batch_size=args.batch_size, progress=False)
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    r = evaluate_windows(m, w, reference=ref, batch_size=args.batch_size, progress=False)
    t_eval = time.perf_counter() - t
    out = {
        "model": lm.name,
        "n_params": lm.facts.n_params,
        "vocab": lm.facts.vocab_size,
        "n_scored": w.n_scored,
        "windows": list(w.input_ids.shape),
        "plain_tok_s": w.n_scored / plain,
        "reference_tok_s": w.n_scored / t_ref,
        "eval_tok_s": w.n_scored / t_eval,
        "eval_vs_plain": plain / t_eval,
        "reference_vs_plain": plain / t_ref,
        "kld_self": r["kld"],
        "exact": ref.exact,
        "reference_table_bytes": ref.nbytes,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
    }
    t = time.perf_counter()
    with quantized(m, args.format):
        t_q = time.perf_counter() - t
        rq = evaluate_windows(m, w, reference=ref, batch_size=args.batch_size, progress=False)
    t_f = time.perf_counter() - t
    out.update(
        {
            "format": args.format,
            "format_quantize_s": t_q,
            "format_eval_s": t_f - t_q,
            "format_s": t_f,
            "format_kld": rq["kld"],
        }
    )
    if args.bf16:
        t = time.perf_counter()
        rb = evaluate_windows(
            m, w, reference=ref, batch_size=args.batch_size, progress=False, autocast="bf16"
        )
        out["bf16_eval_tok_s"] = w.n_scored / (time.perf_counter() - t)
        out["bf16_kld_vs_fp32"] = rb["kld"]
        out["bf16_dnll_vs_fp32"] = rb["dnll"]
        out["bf16_top1_vs_fp32"] = rb["top1_agreement"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["torch"] = torch.__version__
    name = lm.name.replace(":", "_").replace("/", "_")
    path = Path(__file__).parent / "results" / f"eval_panel_{name}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def write_table() -> None:
    """bench/results/eval_panel.md: one row per model from the eval_panel_*.json results."""
    rows = []
    for path in sorted((Path(__file__).parent / "results").glob("eval_panel_*.json")):
        r = json.loads(path.read_text())
        bf = (
            f"{r['bf16_eval_tok_s']:.0f} | {r['bf16_kld_vs_fp32']:.2e}"
            if "bf16_eval_tok_s" in r
            else "not measured | not measured"
        )
        fmt = f"{r['format']}: {r['format_quantize_s']:.1f} + {r['format_eval_s']:.1f} s (KL {r['format_kld']:.3f})"
        rows.append(
            f"| {r['model']} | {r['vocab']:,} | {r['n_scored']:,} | {r['plain_tok_s']:.0f} | "
            f"{r['reference_tok_s']:.0f} | {r['eval_tok_s']:.0f} | **{r['eval_vs_plain']:.2f}x** | {bf} | "
            f"{fmt} | {r['peak_rss_mb'] / 1024:.1f} |"
        )
    head = (
        "# Evaluation speed and memory per panel model (`bench/eval_panel.py`)\n\n"
        "Each row: `python bench/eval_panel.py MODEL --max-tokens N --bf16`, one model per process, fp32 weights,\n"
        "SDPA attention, stride windows of 512, batch 4, exact KL over the full vocabulary. tok/s are scored tokens\n"
        "per second; eval/plain is the exact-KL evaluation against a plain HF forward on the same tokens (target\n"
        ">= 0.9x); bf16 is the same evaluation under `torch.autocast(bfloat16)` and the KL that bf16 alone adds to\n"
        "the float model; the format column is one sweep step (RTN fake quantization + evaluation); peak RSS is\n"
        "the process's. Hardware: see each JSON's `machine`.\n\n"
        "| model | vocab | scored tokens | plain tok/s | reference tok/s | eval tok/s | eval/plain | "
        "bf16 eval tok/s | bf16 KL vs fp32 | one format (quantize + eval) | peak RSS GB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    out = Path(__file__).parent / "results" / "eval_panel.md"
    out.write_text(head + "\n".join(rows) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
