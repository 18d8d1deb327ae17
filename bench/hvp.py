"""Cost of one Hessian-vector product relative to one forward+backward, on the largest tiny-zoo shapes.

For each zoo family it builds a randomly initialised model with the ``tiny-<family>-l`` config (d_model 96,
2 layers, the zoo tokenizer's vocabulary 8192; the weights' values do not change the cost), float32, eager
attention, and on one (batch, seq_len) batch of random tokens times (median of ``--repeats`` runs after one
warm-up, ``time.perf_counter``):

- ``fwd+bwd``: the loss and its gradient (``torch.autograd.grad``), the cost of one training step's backprop;
- ``HVP (shared graph)``: one more ``Hv`` given the gradient graph, i.e. what each Hutchinson sample or
  Lanczos step costs inside ``hessian_trace`` / ``hessian_top_eigenvalues``;
- ``HVP (from scratch)``: forward + gradient with ``create_graph=True`` + one ``Hv``, the cost of an isolated
  HVP (``qscale.measure.landscape.hvp``).

Writes a Markdown table to ``bench/results/hvp.md`` (or ``--out``)::

    OMP_NUM_THREADS=1 python bench/hvp.py --threads 1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import statistics
import time
from pathlib import Path

import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_family(family: str, batch: int, seq_len: int, repeats: int, vocab: int) -> dict:
    from transformers import AutoModelForCausalLM

    from qscale.lm.zoo import get_spec
    from qscale.measure.landscape import _HVP, _rademacher, lm_loss

    spec = get_spec(f"tiny-{family}-l")
    cfg = spec.hf_config(vocab, 0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.randint(
        0, vocab, (batch, min(seq_len, spec.seq_len)), generator=torch.Generator().manual_seed(0)
    )
    gen = torch.Generator().manual_seed(0)
    v = [_rademacher(p, gen) for p in params]

    def fwd_bwd():
        torch.autograd.grad(lm_loss(model, ids), params)

    op = _HVP(model, ids, params)

    def hvp_shared():
        op(v)

    def hvp_fresh():
        _HVP(model, ids, params)(v)

    t_fb = _time(fwd_bwd, repeats)
    t_shared = _time(hvp_shared, repeats)
    t_fresh = _time(hvp_fresh, repeats)
    return {
        "family": family,
        "model": f"tiny-{family}-l (random init)",
        "params": sum(p.numel() for p in params),
        "tokens": int(ids.numel()),
        "fb": t_fb,
        "shared": t_shared,
        "fresh": t_fresh,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="gpt2,llama,opt,neox,qwen2")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hvp.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for fam in args.families.split(","):
        r = bench_family(fam.strip(), args.batch, args.seq_len, args.repeats, args.vocab)
        rows.append(r)
        print(
            f"{r['model']}: {r['params']:,} params, {r['tokens']} tokens: fwd+bwd {r['fb'] * 1e3:.1f} ms, "
            f"HVP shared {r['shared'] * 1e3:.1f} ms ({r['shared'] / r['fb']:.2f}x), "
            f"from scratch {r['fresh'] * 1e3:.1f} ms ({r['fresh'] / r['fb']:.2f}x)",
            flush=True,
        )
    lines = [
        "# Hessian-vector product cost (bench/hvp.py)",
        "",
        f"Measured {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC on a 2-core CPU shared with 7 other engineers' "
        f"jobs ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{args.threads} thread(s), float32, eager attention, median of {args.repeats} runs after a warm-up.",
        "",
        "Command: `OMP_NUM_THREADS=1 python bench/hvp.py "
        f"--threads {args.threads} --batch {args.batch} --seq-len {args.seq_len} --repeats {args.repeats}`",
        "",
        "| model | params | tokens | fwd+bwd (ms) | HVP, shared graph (ms) | ratio | HVP from scratch (ms) | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['tokens']} | {r['fb'] * 1e3:.1f} | {r['shared'] * 1e3:.1f} | "
            f"{r['shared'] / r['fb']:.2f}x | {r['fresh'] * 1e3:.1f} | {r['fresh'] / r['fb']:.2f}x |"
        )
    worst = max(r["fresh"] / r["fb"] for r in rows)
    worst_shared = max(r["shared"] / r["fb"] for r in rows)
    lines += [
        "",
        f"Budget: an HVP should cost at most about 4x one forward+backward. Worst case here: {worst_shared:.2f}x "
        f"per HVP inside the trace / eigenvalue loops (shared gradient graph) and {worst:.2f}x for an isolated "
        "HVP from scratch. Timings on this shared machine vary by tens of percent between runs.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
