"""Export a plan to the tools that take per-tensor formats: llama.cpp and llm-compressor.

**llama.cpp** (``llama-quantize --tensor-type-file FILE`` / ``--tensor-type REGEX=TYPE``): one line per planned tensor,
``blk\\.3\\.attn_v\\.weight=q8_0``, with the HF layer name mapped to its GGUF tensor name (Llama/Qwen2/Mistral
layout: ``model.layers.N.self_attn.{q,k,v,o}_proj`` -> ``blk.N.attn_{q,k,v,output}``, ``mlp.{gate,up,down}_proj``
-> ``blk.N.ffn_{gate,up,down}``, ``lm_head`` -> ``output``). Only formats with a ggml type of the same block
layout map (:data:`GGUF_TYPES`); the rounding rules differ where noted, so the GGUF file's error is close to, not
equal to, what qscale measured. k-quants and i-quants (256-weight super-blocks with quantized sub-block scales) have
no qscale format, and qscale's nf4, per-channel, g64/g128, fp6/fp8 and most MX formats have no ggml type: a plan
using them cannot be exported to llama.cpp, and the error names the layers and the formats that would work.

**llm-compressor** (a ``QuantizationModifier`` or ``GPTQModifier`` recipe, compressed-tensors quantization args):
one config group per format, its ``targets`` the exact layer names as ``re:`` patterns. Integer formats map with
their symmetry and strategy (tensor / channel / group + group_size; ``-mse`` -> the ``mse`` observer); FP8 E4M3 per
tensor or channel maps to ``type: float``; everything else (NF/LUT grids, MX blocks, FP4/FP6) does not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# qscale spec -> (ggml type, how it differs)
GGUF_TYPES: dict[str, tuple[str, str]] = {
    "int8-g32": ("q8_0", "same rule (absmax/127 per 32 weights); GGUF keeps the scale in fp16"),
    "int4-g32": (
        "q4_0",
        "same 32-weight block, 4.5 bpw; llama.cpp maps the signed absmax to -8 (codes -8..7)",
    ),
    "int5-g32": (
        "q5_0",
        "same 32-weight block, 5.5 bpw; llama.cpp maps the signed absmax to -16 (codes -16..15)",
    ),
    "int4-g32-asym": (
        "q4_1",
        "same 32-weight block, 5.0 bpw; fp16 scale and min instead of an integer zero point",
    ),
    "int5-g32-asym": (
        "q5_1",
        "same 32-weight block, 6.0 bpw; fp16 scale and min instead of an integer zero point",
    ),
    "mxfp4-e2m1-b32": ("mxfp4", "the OCP MX block: E8M0 scale per 32 weights, E2M1 elements"),
}
KEPT_GGUF = "bf16"

_HF_TO_GGUF = [
    (r"^model\.layers\.(\d+)\.self_attn\.q_proj$", r"blk.\1.attn_q"),
    (r"^model\.layers\.(\d+)\.self_attn\.k_proj$", r"blk.\1.attn_k"),
    (r"^model\.layers\.(\d+)\.self_attn\.v_proj$", r"blk.\1.attn_v"),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj$", r"blk.\1.attn_output"),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj$", r"blk.\1.ffn_gate"),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj$", r"blk.\1.ffn_up"),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj$", r"blk.\1.ffn_down"),
    (r"^lm_head$", "output"),
]


class ExportError(ValueError):
    """A plan that cannot be expressed in the target tool; the message says which layers and why."""


def gguf_name(layer: str) -> str | None:
    """The GGUF tensor name (without ``.weight``) of an HF Llama-layout linear layer, or None."""
    for pat, rep in _HF_TO_GGUF:
        if re.match(pat, layer):
            return re.sub(pat, rep, layer)
    return None


def to_llama_cpp(plan: Mapping[str, Any]) -> dict[str, Any]:
    """``{"tensor_types": "name=type\\n...", "base_type", "command", "notes"}`` or :class:`ExportError`."""
    layers: Mapping[str, str] = plan["layers"]
    bad_fmt = sorted({s for s in layers.values() if s not in GGUF_TYPES})
    if bad_fmt:
        n = sum(1 for s in layers.values() if s in bad_fmt)
        raise ExportError(
            f"{n} layer(s) use formats with no ggml type of the same layout: {', '.join(bad_fmt)}; "
            f"plan with llama.cpp-compatible candidates ({', '.join(GGUF_TYPES)})"
        )
    types = {
        **{n: GGUF_TYPES[s][0] for n, s in layers.items()},
        **dict.fromkeys(plan.get("kept", []), KEPT_GGUF),
    }
    names = {n: gguf_name(n) for n in types}
    unnamed = [n for n, g in names.items() if g is None]
    if unnamed:
        raise ExportError(
            f"{len(unnamed)} layer(s) have no GGUF tensor name (only the Llama/Qwen2 layout maps), e.g. {unnamed[:3]}"
        )
    lines = [f"{re.escape(names[n] + '.weight')}={t}" for n, t in types.items()]
    counts: dict[str, int] = {}
    for s in layers.values():
        counts[GGUF_TYPES[s][0]] = counts.get(GGUF_TYPES[s][0], 0) + 1
    base = max(counts, key=lambda k: counts[k]).upper()
    used = sorted(set(layers.values()))
    return {
        "tensor_types": "\n".join(lines) + "\n",
        "base_type": base,
        "command": f"llama-quantize --tensor-type-file tensor_types.txt model-f16.gguf model-plan.gguf {base}",
        "notes": [f"{s} -> {GGUF_TYPES[s][0]}: {GGUF_TYPES[s][1]}" for s in used]
        + [
            "tensors the plan does not name (token embedding, output head when excluded) keep llama-quantize's rules"
        ],
    }


def _ct_args(spec: str) -> dict[str, Any] | None:
    """compressed-tensors weight quantization args for a qscale format, or None."""
    from qscale.formats import get_format

    f = get_format(spec)
    strategy = {"tensor": "tensor", "channel": "channel", "group": "group"}.get(getattr(f, "granularity", ""))
    if strategy is None:
        return None
    out: dict[str, Any]
    if f.family == "int":
        out = {"num_bits": f.bits, "type": "int", "symmetric": bool(f.symmetric), "strategy": strategy}
        out["observer"] = "mse" if f.clip == "mse" else "minmax"
    elif f.family == "fp" and getattr(f, "element", "") == "e4m3" and strategy in ("tensor", "channel"):
        out = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": strategy, "observer": "minmax"}
    else:
        return None
    if strategy == "group":
        out["group_size"] = int(f.group_size)
    return out


def to_llm_compressor(plan: Mapping[str, Any], method: str = "rtn") -> str:
    """An llm-compressor recipe (YAML text) applying the plan; :class:`ExportError` if a format does not map."""
    import yaml

    layers: Mapping[str, str] = plan["layers"]
    args = {s: _ct_args(s) for s in sorted(set(layers.values()))}
    bad = sorted(s for s, a in args.items() if a is None)
    if bad:
        raise ExportError(
            f"formats with no compressed-tensors equivalent: {', '.join(bad)} (maps: int formats per tensor, "
            "channel or group, fp8-e4m3 per tensor or channel)"
        )
    groups = {}
    for i, spec in enumerate(sorted(args)):
        targets = [f"re:^{re.escape(n)}$" for n, s in layers.items() if s == spec]
        groups[f"group_{i}"] = {"targets": targets, "weights": args[spec]}
    modifier = {
        "GPTQModifier" if method == "gptq" else "QuantizationModifier": {
            "ignore": ["lm_head", *plan.get("kept", [])],
            "config_groups": groups,
        }
    }
    header = (
        f"# llm-compressor recipe for the qscale plan of {plan.get('model', {}).get('name')} "
        f"({plan.get('bpw', float('nan')):.4f} bits/weight, formats {', '.join(sorted(args))})\n"
    )
    return header + yaml.safe_dump({"quant_stage": {"quant_modifiers": modifier}}, sort_keys=False, width=200)


EXPORTERS = ("llama.cpp", "llm-compressor")
