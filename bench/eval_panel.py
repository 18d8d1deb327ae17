"""Evaluation speed on a real panel model: a plain HF forward vs qscale's evaluation with exact KL.

On the same windows (stride protocol, 512-token windows, batch 4, fp32) it times, after one untimed warm-up batch:

* ``plain``: ``model(input_ids=...)`` on every window, logits discarded (what any tool must at least pay);
* ``reference``: ``reference_outputs`` (float pass + the exact full-vocabulary log-prob table, memory-mapped
  past 512 MiB);
* ``eval``: ``evaluate_windows(model, windows, reference=ref)`` (NLL, bpb, exact KL, top-1);
* with ``--bf16``: ``eval`` under ``torch.autocast("cpu", torch.bfloat16)`` against the fp32 reference, and the
  KL that bf16 alone adds (the model is not quantized).

Peak memory is the process's max RSS (``resource.getrusage``). Writes ``bench/results/eval_panel_<model>.json``.

    python bench/eval_panel.py panel:smollm2-135m --max-tokens 4352
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
    ap.add_argument("model")
    ap.add_argument("--max-tokens", type=int, default=4352)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()

    from qscale.corpora import get_windows
    from qscale.lm import load
    from qscale.measure import evaluate_windows, reference_outputs

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
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
    }
    if args.bf16:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rb = evaluate_windows(m, w, reference=ref, batch_size=args.batch_size, progress=False)
        out["bf16_eval_tok_s"] = w.n_scored / (time.perf_counter() - t)
        out["bf16_kld_vs_fp32"] = rb["kld"]
    name = lm.name.replace(":", "_").replace("/", "_")
    path = Path(__file__).parent / "results" / f"eval_panel_{name}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
