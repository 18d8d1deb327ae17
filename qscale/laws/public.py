"""Ingestion of the published post-training-quantization results (``data/public/results.csv``).

The CSV (provenance in ``data/public/SOURCES.md``) copies numbers verbatim from 22 public source tables.
Those tables use different evaluation protocols, so raw perplexities are never pooled across tables:
the targets here are *within-row* quantities against the baseline of the same table,

* ``delta_ppl = value - baseline``
* ``log_ppl_ratio = log(value / baseline)`` -- for perplexity this is exactly the increase of the mean
  token NLL in nats (ppl = exp(nll)), e.g. LLaMA-7B RTN int4 per-channel (T08): log(6.842 / 5.673) = 0.1873,

and ``table_id`` is kept as the grouping variable (leave-one-table-out CV, never a pooled scale).

:func:`load_public` returns a :class:`PublicData` with the tidy table (every row, with ``usable`` and
``drop_reason`` columns) and the counted reasons why rows were set aside.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

#: Default location of the copied public results (repository root / data / public).
DEFAULT_PUBLIC_CSV = Path(__file__).resolve().parents[2] / "data" / "public" / "results.csv"


@dataclass(frozen=True)
class ArchSpec:
    """Architecture numbers from a model card / HF ``config.json``, enough to count parameters exactly.

    Worked example (LLaMA-7B): per layer 4*4096^2 (attention) + 3*4096*11008 (SwiGLU MLP) + 2*4096 (norms)
    = 202,383,360; times 32 layers plus the final norm gives 6,476,271,616 non-embedding parameters;
    adding the untied embedding and lm_head (2 * 32000 * 4096) gives the card's 6,738,415,616.
    """

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab: int
    tied: bool = False

    @property
    def n_nonembed(self) -> int:
        kv = self.d_model * self.n_kv_heads // self.n_heads
        attn = 2 * self.d_model * self.d_model + 2 * self.d_model * kv
        mlp = 3 * self.d_model * self.d_ff
        return self.n_layers * (attn + mlp + 2 * self.d_model) + self.d_model

    @property
    def n_params(self) -> int:
        emb = self.vocab * self.d_model * (1 if self.tied else 2)
        return self.n_nonembed + emb


# (family, nominal params_b) -> exact architecture. Only models whose configs are well known; every other
# model keeps its nominal size (``params_exact`` False).  LLaMA-2 7B/13B share the LLaMA-1 shapes.
_ARCH: dict[tuple[str, float], ArchSpec] = {
    ("LLaMA-1", 7.0): ArchSpec(4096, 32, 32, 32, 11008, 32000),
    ("LLaMA-1", 13.0): ArchSpec(5120, 40, 40, 40, 13824, 32000),
    ("LLaMA-1", 33.0): ArchSpec(6656, 60, 52, 52, 17920, 32000),
    ("LLaMA-1", 65.0): ArchSpec(8192, 80, 64, 64, 22016, 32000),
    ("Llama-2", 7.0): ArchSpec(4096, 32, 32, 32, 11008, 32000),
    ("Llama-2", 13.0): ArchSpec(5120, 40, 40, 40, 13824, 32000),
    ("Llama-2", 70.0): ArchSpec(8192, 80, 64, 8, 28672, 32000),
    ("Llama-3", 8.0): ArchSpec(4096, 32, 32, 8, 14336, 128256),
    ("Llama-3", 70.0): ArchSpec(8192, 80, 64, 8, 28672, 128256),
    ("Llama-3.1", 8.0): ArchSpec(4096, 32, 32, 8, 14336, 128256),
    ("Llama-3.1", 70.0): ArchSpec(8192, 80, 64, 8, 28672, 128256),
    ("Mistral", 7.0): ArchSpec(4096, 32, 32, 8, 14336, 32000),
    ("Yi", 34.0): ArchSpec(7168, 60, 56, 8, 20480, 64000),
}

# Pre-training tokens as stated in the model papers/cards (LLaMA-1: 1.0T for 7B/13B, 1.4T for 33B/65B;
# Llama-2: 2T; Llama-3 / 3.1: "over 15T", recorded as 15T). Others are unknown (NaN).
_TRAIN_TOKENS: dict[tuple[str, float], float] = {
    ("LLaMA-1", 7.0): 1.0e12,
    ("LLaMA-1", 13.0): 1.0e12,
    ("LLaMA-1", 33.0): 1.4e12,
    ("LLaMA-1", 65.0): 1.4e12,
    ("Llama-2", 7.0): 2.0e12,
    ("Llama-2", 13.0): 2.0e12,
    ("Llama-2", 70.0): 2.0e12,
    ("Llama-3", 8.0): 15e12,
    ("Llama-3", 70.0): 15e12,
    ("Llama-3.1", 8.0): 15e12,
    ("Llama-3.1", 70.0): 15e12,
}

# Normalised method names: ordered (pattern, name); first match on the lower-cased raw method wins.
_METHOD_RULES: tuple[tuple[str, str], ...] = (
    (r"^none", "none"),
    (r"efficientqat", "efficientqat"),
    (r"llm-qat", "llm-qat"),
    (r"aqlm", "aqlm"),
    (r"vptq", "vptq"),
    (r"exl2", "exl2"),
    (r"learned normal float", "nfl"),
    (r"autoround", "autoround"),
    (r"omniquant", "omniquant"),
    (r"spinquant", "spinquant"),
    (r"quarot", "quarot"),
    (r"qoq", "qoq"),
    (r"atom", "atom"),
    (r"smoothquant", "smoothquant"),
    (r"awq", "awq"),
    (r"hqq", "hqq"),
    (r"gptq", "gptq"),
    (r"i-quant", "llamacpp-iquant"),
    (r"k-quant", "llamacpp-kquant"),
    (r"legacy block quant", "llamacpp-legacy"),
    (r"bitsandbytes", "bnb"),
    (r"codebook", "codebook"),
    (r"autoquant", "autoquant"),
    (r"rtn|round|weight-only|int8|fp6|float8|uintx|tinygemm", "rtn"),
    (r"fp8|ptq", "rtn"),
)

#: Methods that train parameters (not pure post-training quantization), per SOURCES.md.
NOT_PTQ = frozenset({"efficientqat", "llm-qat", "aqlm", "nfl"})

#: Methods that quantize activations by construction.
_ACT_METHODS = frozenset({"quarot", "spinquant", "qoq", "atom", "smoothquant"})

#: Reasons a row is not used for fitting, in the order they are checked.
DROP_REASONS = (
    "baseline row (bits >= 16)",
    "not a perplexity metric",
    "no baseline in table",
    "duplicate of another table (T07 = T06)",
    "activation/KV quantization (not weight-only)",
    "not pure PTQ (trained parameters)",
    "collapsed (value > 100x baseline)",
    "bad number",
)


@dataclass(frozen=True)
class PublicData:
    """The tidy public table (all rows) and the counted reasons rows were set aside."""

    table: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def usable(self) -> pd.DataFrame:
        """Rows usable for fitting a log-ppl-ratio law (weight-only PTQ perplexities with a baseline)."""
        return self.table[self.table["usable"]].reset_index(drop=True)


def known_model(family: str, params_b: float) -> dict[str, float] | None:
    """Exact counts for a (family, nominal size) in the lookup tables, e.g. ("Llama-2", 7) ->
    n_nonembed 6,476,271,616, n_params 6,738,415,616, train_tokens 2e12; None if not known."""
    arch = _ARCH.get((family, float(params_b)))
    if arch is None:
        return None
    return {
        "n_nonembed": float(arch.n_nonembed),
        "n_params": float(arch.n_params),
        "train_tokens": _TRAIN_TOKENS.get((family, float(params_b)), math.nan),
    }


def known_families() -> list[str]:
    return sorted({f for f, _ in _ARCH})


def normalise_method(raw: str) -> str:
    """Map a free-text method label to a short name: 'GPTQ (act-order, ...)' -> 'gptq'.

    >>> normalise_method("RTN symmetric (absmax)"), normalise_method("llama.cpp k-quant + imatrix")
    ('rtn', 'llamacpp-kquant')
    """
    low = raw.strip().lower()
    for pattern, name in _METHOD_RULES:
        if re.search(pattern, low):
            return name
    return "other"


def parse_group_size(text: str) -> tuple[float, bool, bool]:
    """Parse the ``group_size`` field -> (group size, per_channel, assumed).

    Group size is NaN for per-channel / per-tensor / unknown. ``assumed`` is True when the source says the
    value was not stated with the data, or the field is blank.

    >>> parse_group_size("128 (main.py default; not stated with data)")
    (128.0, False, True)
    >>> parse_group_size("per-channel (-1)")
    (nan, True, False)
    """
    t = text.strip().lower()
    if not t:
        return math.nan, False, True
    assumed = "not stated" in t or "assumed" in t or "default" in t or "implied" in t
    if t.startswith("per-") or t.startswith("-1"):
        return math.nan, "channel" in t or "row" in t or t.startswith("-1"), assumed
    m = re.match(r"^(\d+)", t)
    if m:
        return float(m.group(1)), False, assumed
    return math.nan, False, True


def _bpw(bits: float, notes: str, group: float, per_channel: bool) -> tuple[float, str]:
    """Bits per weight: from the notes (``bpw=`` / ``bpw_ref=``) when given, else bits + 16/group (an fp16
    scale per group; per-channel overhead taken as 0). Returns (bpw, source).

    >>> _bpw(4.0, "", 128.0, False)
    (4.125, 'bits+16/group (assumed fp16 scale)')
    """
    m = re.search(r"\bbpw(_ref)?=([0-9.]+)", notes)
    if m:
        return float(m.group(2)), "notes:bpw_ref" if m.group(1) else "notes:bpw"
    if bits >= 16:
        return bits, "baseline"
    if not math.isnan(group):
        return bits + 16.0 / group, "bits+16/group (assumed fp16 scale)"
    if per_channel:
        return bits, "bits (per-channel, overhead ~0)"
    return bits, "bits (group size unknown)"


def _weight_only(datatype: str, method_raw: str, method: str) -> bool:
    """False when activations (or the KV cache) are quantized: W4A4, W8A8-dyn, 'A:int8_rowwise', SmoothQuant."""
    wa = re.search(r"W\d+A(\d+)", datatype.upper())
    if wa and int(wa.group(1)) < 16:
        return False
    if "A:" in datatype and "A:bfloat16" not in datatype:
        return False
    low = method_raw.lower()
    if "dyn" in datatype.lower() or "weight+activation" in low or "dynamic act" in low or "w8a8" in low:
        return False
    return method not in _ACT_METHODS


def _model_key(family: str, params_b: float, model: str) -> str:
    low = model.lower()
    tag = "-instruct" if any(s in low for s in ("instruct", "chat")) else ""
    return f"{family}-{params_b:g}B{tag}"


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def load_public(path: str | Path | None = None, collapse_ratio: float = 100.0) -> PublicData:
    """Read ``results.csv`` into the tidy feature table.

    Columns: table_id, model, model_key, family, params_b (nominal), params_nominal (bool), n_params,
    n_nonembed (exact where the architecture is known, else nominal * 1e9), params_exact, train_tokens
    (NaN when unknown), bits, bpw, bpw_source, group_size, per_channel, group_assumed, method, method_raw,
    datatype, weight_only, ptq, metric, eval_dataset, context_len, value, baseline, delta_ppl,
    log_ppl_ratio, usable, drop_reason.
    """
    path = Path(path) if path is not None else DEFAULT_PUBLIC_CSV
    if not path.exists():
        raise FileNotFoundError(f"public results not found at {path} (expected data/public/results.csv)")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    required = {"table_id", "model", "family", "params_b", "method", "datatype", "bits", "group_size"}
    required |= {"metric", "eval_dataset", "context_len", "value", "baseline_value", "notes"}
    missing = sorted(required - set(raw.columns))
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected the data/public/results.csv schema")

    rows = []
    for r in raw.itertuples(index=False):
        params_b = _num(r.params_b)
        bits = _num(r.bits)
        group, per_channel, assumed = parse_group_size(r.group_size)
        bpw, bpw_src = _bpw(bits, r.notes, group, per_channel)
        method = normalise_method(r.method)
        key = (r.family, params_b)
        arch = _ARCH.get(key)
        value, base = _num(r.value), _num(r.baseline_value)
        weight_only = _weight_only(r.datatype, r.method, method)
        ptq = method not in NOT_PTQ
        ok = value > 0 and base > 0
        rows.append(
            {
                "table_id": r.table_id,
                "model": r.model,
                "model_key": _model_key(r.family, params_b, r.model),
                "family": r.family,
                "params_b": params_b,
                "params_nominal": arch is None,
                "n_params": float(arch.n_params) if arch else params_b * 1e9,
                "n_nonembed": float(arch.n_nonembed) if arch else params_b * 1e9,
                "params_exact": arch is not None,
                "train_tokens": _TRAIN_TOKENS.get(key, math.nan),
                "bits": bits,
                "bpw": bpw,
                "bpw_source": bpw_src,
                "group_size": group,
                "per_channel": per_channel,
                "group_assumed": assumed,
                "method": method,
                "method_raw": r.method,
                "datatype": r.datatype,
                "weight_only": weight_only,
                "ptq": ptq,
                "metric": r.metric,
                "eval_dataset": r.eval_dataset,
                "context_len": r.context_len,
                "value": value,
                "baseline": base,
                "delta_ppl": value - base if ok else math.nan,
                "log_ppl_ratio": math.log(value / base) if ok else math.nan,
                "notes": r.notes,
            }
        )
    table = pd.DataFrame(rows)

    reason = pd.Series("", index=table.index, dtype=object)

    def mark(mask: pd.Series, why: str) -> None:
        sel = mask & (reason == "")
        reason[sel] = why

    mark(table["bits"] >= 16, DROP_REASONS[0])
    mark(table["metric"] != "ppl", DROP_REASONS[1])
    mark(table["baseline"].isna(), DROP_REASONS[2])
    mark(table["notes"].str.contains("DUPLICATE", regex=False), DROP_REASONS[3])
    mark(~table["weight_only"], DROP_REASONS[4])
    mark(~table["ptq"], DROP_REASONS[5])
    mark(table["value"] > collapse_ratio * table["baseline"], DROP_REASONS[6])
    mark(table["log_ppl_ratio"].isna() | table["bpw"].isna() | table["params_b"].isna(), DROP_REASONS[7])
    table["drop_reason"] = reason
    table["usable"] = reason == ""
    counts = Counter(reason[reason != ""])
    dropped = {why: int(counts.get(why, 0)) for why in DROP_REASONS}
    return PublicData(table=table, dropped=dropped)


def public_fit_frame(path: str | Path | None = None) -> pd.DataFrame:
    """The usable rows, with ``log_params`` and ``group`` (= table_id) columns for fitting and CV."""
    data = load_public(path).usable
    data = data.assign(log_params=np.log(data["n_nonembed"]), group=data["table_id"])
    return data
