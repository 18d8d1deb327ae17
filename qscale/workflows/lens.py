"""The perturbation-lens study on one model (after Gong et al. 2024, "What makes quantization for LLMs hard?").

Three tables, every entry a measured ``dnll = nll(perturbed) - nll(float)`` (nats per token) on the same evaluation
windows:

1. **strength**: dnll vs relative noise strength ``rel = ||e_row|| / ||w_row||`` on all selected weights, one column
   per perturbation kind: gaussian / uniform / rademacher magnitude-independent noise, gaussian magnitude-aware
   noise (``power=+1``: large weights get large noise, ``power=-1``: the reverse) and clipping;
2. **property**: at *matched norm* (every row's noise norm equal to the error RTN with a reference format would make
   on that row: ``int4-g128`` (or :func:`weight_group`) for weights, ``int8`` per token for activations), which shape of the error matters:
   the real quantizer, independent noise, magnitude-aware noise, reverse-aware noise, clipping. The paper's finding
   is that a magnitude-aware error (relative precision) is much cheaper than an independent one of the same norm,
   and clipping much dearer;
3. **uniform vs cube-root**: W4 (``int4-g128`` vs ``cbrt4-g128``; smaller groups when 128 does not divide the
   layer widths, see :func:`weight_group`) and W8A8 (``int8`` weights + per-token ``int8``
   activations vs the ``cbrt`` method's ``cbrt8`` weights + per-token activations).

``run_lens(model, tokenizer, LensConfig(...))`` returns a JSON-able dict; ``format_lens`` renders Markdown tables.
A workflow: it quantizes (:mod:`qscale.quantize`) and evaluates (:mod:`qscale.measure`); ``qscale lens`` is its CLI
adapter in :mod:`qscale.workflows.commands`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LensConfig", "format_lens", "run_lens", "weight_group"]


@dataclass(frozen=True)
class LensConfig:
    """What the study measures. Defaults: 4096 test tokens of enwiki_gensim in windows of 128."""

    corpus: str = "enwiki_gensim"
    split: str = "test"
    seq_len: int = 128
    max_tokens: int | None = 4096
    strengths: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4)
    w_reference: str = "int4-g{group}"  # matched-norm reference for weights; {group}: see weight_group
    a_reference: str = "int8"  # matched-norm reference for activations (dynamic per token)
    seed: int = 0
    n_seeds: int = 1  # noise entries are means over seeds seed, seed+1, ..., seed+n_seeds-1
    batch_size: int = 8


# (column label, perturb params) of the strength table
STRENGTH_KINDS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("gaussian", {"noise": "gaussian", "mode": "independent"}),
    ("uniform", {"noise": "uniform", "mode": "independent"}),
    ("rademacher", {"noise": "rademacher", "mode": "independent"}),
    ("aware p=+1", {"noise": "gaussian", "mode": "aware", "power": 1.0}),
    ("aware p=-1", {"noise": "gaussian", "mode": "aware", "power": -1.0}),
    ("clip", {"noise": "gaussian", "mode": "clip"}),
)

PROPERTY_KINDS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("independent", {"noise": "gaussian", "mode": "independent"}),
    ("aware p=+1", {"noise": "gaussian", "mode": "aware", "power": 1.0}),
    ("aware p=-1", {"noise": "gaussian", "mode": "aware", "power": -1.0}),
    ("clip", {"noise": "gaussian", "mode": "clip"}),
)


def run_lens(
    model: Any, tokenizer: Any, config: LensConfig | None = None, progress: Any = None
) -> dict[str, Any]:
    """Run the three tables on ``model`` (float, restored after every entry). ``progress(msg)`` is called per row."""
    import torch

    from qscale.corpora.windows import get_windows
    from qscale.measure import evaluate_windows
    from qscale.quantize import quantized

    cfg = config or LensConfig()
    group = weight_group(model)
    w4, cbrt_group = f"int4-g{group}", group
    if cfg.n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {cfg.n_seeds}")
    if any(not (s >= 0) for s in cfg.strengths):
        raise ValueError(f"strengths must be non-negative numbers, got {cfg.strengths}")
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    windows = get_windows(
        tokenizer, cfg.corpus, cfg.split, protocol="stride", seq_len=cfg.seq_len, max_tokens=cfg.max_tokens
    )

    def nll() -> float:
        with torch.no_grad():
            return float(evaluate_windows(model, windows, batch_size=cfg.batch_size)["nll"])

    base = nll()
    say(f"float nll {base:.4f} on {windows.n_scored} tokens")

    def dnll(method: str, fmt: Any = None, params: dict | None = None) -> dict[str, Any]:
        seeds = [None] if method != "perturb" else [cfg.seed + k for k in range(cfg.n_seeds)]
        values, rels = [], []
        for seed in seeds:
            p = dict(params or {}) if seed is None else {**(params or {}), "seed": seed}
            with quantized(model, fmt, method=method, params=p) as info:
                values.append(nll() - base)
            if "w_rel_err_mean" in info:
                rels.append(info["w_rel_err_mean"])
        rec: dict[str, Any] = {"dnll": sum(values) / len(values)}
        if len(values) > 1:
            rec["dnll_seeds"] = values
        if rels:
            rec["w_rel_err"] = sum(rels) / len(rels)
        return rec

    strength_rows = []
    for rel in cfg.strengths:
        row: dict[str, Any] = {"rel": rel}
        for label, kind in STRENGTH_KINDS:
            row[label] = dnll("perturb", params={**kind, "rel": rel})["dnll"]
        strength_rows.append(row)
        say(f"strength {rel}: " + ", ".join(f"{k}={v:+.4f}" for k, v in row.items() if k != "rel"))

    property_rows = []
    for target, ref in (("w", cfg.w_reference.format(group=group)), ("a", cfg.a_reference)):
        if target == "w":
            real = dnll("rtn", ref)
            real_label = f"RTN {ref}"
        else:
            real = dnll("act-quant", None, {"w": None, "a": ref})
            real_label = f"act {ref} per token"
        property_rows.append({"target": target, "kind": real_label, **real})
        for label, kind in PROPERTY_KINDS:
            rec = dnll("perturb", params={**kind, "target": target, "match": ref})
            property_rows.append({"target": target, "kind": f"{label} (norm of {ref})", **rec})
        say(f"property {target} done")

    uniform_cbrt = [
        {
            "config": f"W4 (g{group})",
            "uniform": dnll("rtn", w4)["dnll"],
            "cube-root": dnll("cbrt", params={"config": "w4", "group": cbrt_group})["dnll"],
        },
        {
            "config": "W8A8",
            "uniform": dnll("act-quant", "int8", {"a": "int8"})["dnll"],
            "cube-root": dnll("cbrt", params={"config": "w8a8"})["dnll"],
        },
    ]
    say("uniform vs cube-root done")
    return {
        "config": asdict(cfg),
        "group": group,
        "float_nll": base,
        "n_tokens": int(windows.n_scored),
        "strength": strength_rows,
        "property": property_rows,
        "uniform_vs_cbrt": uniform_cbrt,
        "wall_s": time.perf_counter() - t0,
    }


def weight_group(model: Any, choices: tuple[int, ...] = (128, 64, 32, 16)) -> int:
    """The largest group size in ``choices`` dividing every selected layer's input width (128 for real LLMs;
    the tiny zoo's d_model = 32/64/96 gets 32). Raises if none does."""
    from qscale.lm.layers import linear_layers

    widths = {ref.in_features for ref in linear_layers(model)}
    for g in choices:
        if all(w % g == 0 for w in widths):
            return g
    raise ValueError(f"no group size in {choices} divides every layer input width {sorted(widths)}")


def _md_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def cell(col: str, v: Any) -> str:
        if col == "rel":
            return f"{v:g}"
        return f"{v:+.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(c, r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def format_lens(result: dict[str, Any], model_name: str = "") -> str:
    """The study as Markdown: three tables of dnll (nats/token)."""
    s = result["strength"]
    head = f"# Perturbation lens{': ' + model_name if model_name else ''}\n\n"
    head += (
        f"float nll {result['float_nll']:.4f} nats/token on {result['n_tokens']} tokens of "
        f"{result['config']['corpus']}/{result['config']['split']} (stride windows of {result['config']['seq_len']}).\n\n"
    )
    out = head + "## dnll vs relative weight-noise strength ||e||/||w|| (per row)\n\n"
    out += _md_table(s, ["rel", *[k for k, _ in STRENGTH_KINDS]]) + "\n\n"
    out += "## Which property matters: errors of matched norm\n\n"
    out += _md_table(result["property"], ["target", "kind", "dnll"]) + "\n\n"
    out += "## Uniform vs cube-root companding\n\n"
    out += _md_table(result["uniform_vs_cbrt"], ["config", "uniform", "cube-root"]) + "\n"
    return out
