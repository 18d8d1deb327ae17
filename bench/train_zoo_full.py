"""Train the ``full`` zoo preset (5 families x 5 sizes + llama token-budget variants) and print its table.

Designed for one CUDA GPU (bf16 autocast): seq 256, batch 128, 610 steps (about 20M tokens) per model.

    python bench/train_zoo_full.py --dry-run                 # the plan: N, non-embedding N, D, 6*N*D
    python bench/train_zoo_full.py --device cuda --root /data/zoo --out bench/zoo_full_results.md

Models already trained with the same recipe are skipped, so an interrupted run resumes. The table (Markdown)
lists N, non-embedding N, D, final train loss, validation loss and wall time per model, measured, with the
hardware string recorded in each checkpoint's ``qscale_zoo.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _plan_rows(specs: list) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM

    from qscale.lm.facts import count_params

    rows = [
        "| model | family | d x L | N | N non-emb | D tokens | 6 N D (PFLOP) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in specs:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(s.hf_config(8192, 0))
        n, ne, _ = count_params(model)
        rows.append(
            f"| {s.name} | {s.family} | {s.d_model} x {s.n_layers} | {n:,} | {ne:,} | {s.train_tokens:,} | "
            f"{6 * n * s.train_tokens / 1e15:.2f} |"
        )
    return rows


def _result_rows(entries: list) -> list[str]:
    rows = [
        "| model | N | N non-emb | D tokens | train loss | val loss | unigram | time s | hardware |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        m = e.meta or {}
        if e.status != "trained":
            rows.append(f"| {e.name} | {e.status} | | | | | | | |")
            continue
        rows.append(
            f"| {e.name} | {m['n_params']:,} | {m['n_nonembed']:,} | {m['train_tokens']:,} | "
            f"{m['final_train_loss']:.3f} | {m['val_loss']:.3f} | {m['unigram_val_loss']:.3f} | "
            f"{m['wall_time_s']:.1f} | {m['hardware']} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument(
        "--root", default=None, help="zoo directory (default $QSCALE_ZOO_DIR or ~/.cache/qscale/zoo)"
    )
    ap.add_argument("--families", default=None, help="comma-separated subset, e.g. gpt2,llama")
    ap.add_argument("--preset", default="full", help="full (default) or tiny")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--out", default=None, help="also write the results table to this Markdown file")
    args = ap.parse_args(argv)

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    from qscale.lm.zoo import list_zoo, select
    from qscale.lm.zoo_train import train_zoo

    families = args.families.split(",") if args.families else None
    specs = select(args.preset, families)
    if args.dry_run:
        print("\n".join(_plan_rows(specs)))
        return 0
    t0 = time.perf_counter()

    def progress(spec, path, seconds):
        print(f"{spec.name:<16} {seconds:8.1f} s  {path}", flush=True)

    train_zoo(args.preset, families, root=args.root, device=args.device, progress=progress)
    total = time.perf_counter() - t0
    names = {s.name for s in specs}
    entries = [e for e in list_zoo(root=args.root, preset=args.preset) if e.name in names]
    table = "\n".join(_result_rows(entries))
    summary = f"\n{len(entries)} models, {total:.1f} s wall in total (this run; skipped models count ~0 s)\n"
    print(table + summary)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
