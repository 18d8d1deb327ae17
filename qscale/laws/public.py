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

import functools
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qscale.paths import PathError, repo_path

#: The repository's files read here (:mod:`qscale.paths`), with what to give instead; each name is a module
#: attribute resolved when asked for (``DEFAULT_PUBLIC_CSV``: the copied public results, ``DEFAULT_CAPACITY_CSV``:
#: the committed format-capacity table, ``DEFAULT_PANEL_STORE``: the real panel's run store), never at import.
_DEFAULTS = {
    "DEFAULT_PUBLIC_CSV": ("data/public/results.csv", "a path to results.csv"),
    "DEFAULT_CAPACITY_CSV": ("data/public/format_capacity.csv", "a path to format_capacity.csv"),
    "DEFAULT_PANEL_STORE": ("data/runs_panel.sqlite", "a panel run store"),
}


def default_path(name: str) -> Path:
    """``default_path("DEFAULT_PUBLIC_CSV")``: the repository's file (a one-line :class:`qscale.paths.PathError`
    in an installed package, naming what to give instead)."""
    return repo_path(*_DEFAULTS[name])


def __getattr__(name: str) -> Path:
    if name in _DEFAULTS:
        return default_path(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

#: Pre-training tokens D by (family, nominal size in B; None = every size of the family), with the source that
#: states it (data/public/SOURCES.md, "Training tokens"). A family or size without a published count is unknown
#: (NaN): no guesses. Fine-tunes (chat/instruct, BLOOMZ, R1 distills) carry their base model's pre-training.
TRAIN_TOKENS: dict[tuple[str, float | None], tuple[float, str]] = {
    ("LLaMA-1", 7.0): (1.0e12, "Touvron et al. 2023, LLaMA, Table 2 (7B/13B: 1.0T)"),
    ("LLaMA-1", 13.0): (1.0e12, "Touvron et al. 2023, LLaMA, Table 2 (7B/13B: 1.0T)"),
    ("LLaMA-1", 33.0): (1.4e12, "Touvron et al. 2023, LLaMA, Table 2 (33B/65B: 1.4T)"),
    ("LLaMA-1", 65.0): (1.4e12, "Touvron et al. 2023, LLaMA, Table 2 (33B/65B: 1.4T)"),
    ("Llama-2", None): (2.0e12, "Touvron et al. 2023, Llama 2, Table 1 (2.0T, all sizes)"),
    ("Llama-3", None): (15e12, "Meta Llama 3 model card ('over 15T tokens')"),
    ("Llama-3.1", None): (15e12, "Meta Llama 3.1 model card ('~15 trillion tokens')"),
    ("DeepSeek-R1-Distill (Llama)", 8.0): (
        15e12,
        "base Llama-3.1-8B (Llama 3.1 model card); distillation SFT not counted",
    ),
    ("Falcon", 7.0): (1.5e12, "Almazrouei et al. 2023, The Falcon Series, Table 1 (1,500B)"),
    ("Falcon", 40.0): (1.0e12, "Almazrouei et al. 2023, The Falcon Series, Table 1 (1,000B)"),
    ("Falcon", 180.0): (3.5e12, "Almazrouei et al. 2023, The Falcon Series, Table 1 (3,500B)"),
    ("OPT", None): (180e9, "Zhang et al. 2022, OPT, section 3 (~180B tokens, all sizes)"),
    ("BLOOM", 175.0): (366e9, "BigScience 2022, bigscience/bloom model card ('366B tokens')"),
    ("BLOOMZ", 175.0): (366e9, "base BLOOM-176B (bigscience/bloom model card); xP3 fine-tuning not counted"),
    ("Qwen (v1)", 1.8): (2.2e12, "Bai et al. 2023, Qwen Technical Report, Table 1 (2.2T)"),
    ("Qwen (v1)", 7.0): (2.4e12, "Bai et al. 2023, Qwen Technical Report, Table 1 (2.4T)"),
    ("Qwen (v1)", 14.0): (3.0e12, "Bai et al. 2023, Qwen Technical Report, Table 1 (3.0T)"),
    ("Qwen (v1)", 72.0): (3.0e12, "Qwen-72B model card ('3T tokens')"),
    ("Qwen2", 0.5): (12e12, "Yang et al. 2024, Qwen2 Technical Report, section 3.1 (0.5B: 12T)"),
    ("Qwen2", 1.5): (7e12, "Yang et al. 2024, Qwen2 Technical Report, section 3.1 (7T)"),
    ("Qwen2", 7.0): (7e12, "Yang et al. 2024, Qwen2 Technical Report, section 3.1 (7T)"),
    ("Qwen2", 72.0): (7e12, "Yang et al. 2024, Qwen2 Technical Report, section 3.1 (7T)"),
    ("DeepSeek-R1-Distill (Qwen)", 7.0): (
        18e12,
        "base Qwen2.5 (Qwen2.5 Technical Report: 18T); math continued pre-training not counted",
    ),
    ("Gemma-2", 9.0): (8e12, "Gemma Team 2024, Gemma 2 report, section 3.1 (9B: 8T)"),
    ("Gemma-2", 27.0): (13e12, "Gemma Team 2024, Gemma 2 report, section 3.1 (27B: 13T)"),
    ("Phi-2", None): (1.4e12, "microsoft/phi-2 model card ('1.4T tokens')"),
    ("Phi-3", 3.8): (3.3e12, "Abdin et al. 2024, Phi-3 Technical Report (mini: 3.3T)"),
    ("Phi-3", 14.0): (4.8e12, "Abdin et al. 2024, Phi-3 Technical Report (medium: 4.8T)"),
    ("Yi", None): (3.1e12, "Young et al. 2024, Yi: Open Foundation Models, section 2 (3.1T)"),
    ("MPT", 30.0): (1.0e12, "MosaicML MPT-30B model card ('1T tokens')"),
    ("SmolLM2", None): (2.0e12, "HuggingFaceTB/SmolLM2-135M model card (2T); qscale panel provenance"),
    ("Qwen2.5-Coder", None): (
        23.5e12,
        "Qwen2.5-Coder report: Qwen2.5 18T + 5.5T code; qscale panel provenance",
    ),
}


def train_tokens(family: str, params_b: float) -> tuple[float, str]:
    """(D, source) for a family and nominal size; (nan, "unknown") when no count is published.

    >>> train_tokens("Llama-2", 13.0)[0], train_tokens("Mistral", 7.0)[0]
    (2000000000000.0, nan)
    """
    for key in ((family, float(params_b)), (family, None)):
        if key in TRAIN_TOKENS:
            return TRAIN_TOKENS[key]
    return math.nan, "unknown"


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


@dataclass(frozen=True)
class PublicTarget:
    """A damage measure the public rows give: the column, the asinh scale laws fit it in; its unit is the one
    every law of that target reports (``qscale.laws.artifacts.TARGET_UNITS``)."""

    name: str
    scale: float
    description: str

    @property
    def unit(self) -> str:
        from qscale.laws.artifacts import TARGET_UNITS

        return TARGET_UNITS[self.name]


#: The targets public laws predict; each row feeds at most one (by its metric).
TARGETS: dict[str, PublicTarget] = {
    t.name: t
    for t in (
        PublicTarget("log_ppl_ratio", 1e-3, "log(ppl_q / ppl_fp16), same table"),
        PublicTarget("kld", 1e-3, "mean token KL of the quantized to the fp16 model"),
        PublicTarget("acc_drop", 0.1, "baseline accuracy - quantized accuracy, same task"),
    )
}

#: Reasons a row is not used for fitting, in the order they are checked.
DROP_REASONS = (
    "baseline row (bits >= 16)",
    "metric without a damage target (delta-p, top-p, ratios already given as ppl)",
    "accuracy variant with unclear semantics or duplicate column (qllm-eval mmlu first/calib values)",
    "average of other rows in the same table",
    "no baseline in table",
    "duplicate of another table (T07 = T06)",
    "activation/KV quantization (not weight-only)",
    "not pure PTQ (trained parameters)",
    "collapsed (value > 100x baseline)",
    "word-level perplexity (not comparable)",
    "degenerate re-quantization (reproduces the checkpoint's own grid)",
    "bad number",
)

#: Accuracy metrics that are averages over tasks given per task in the same table.
_AVERAGE_METRICS = frozenset({"acc_avg_11_tasks", "acc_average"})
_UNCLEAR_METRICS = ("acc_mmlu_firstvalue", "acc_mmlu-calib_")
#: Metrics that restate other rows (delta-p, top-p agreement, ppl ratios/deltas of rows given as ppl).
_NO_TARGET = ("mean_delta_p", "rms_delta_p", "same_top_p", "ppl_ratio_vs_fp16", "delta_ppl_vs_fp16")


def target_of(metric: str) -> str | None:
    """The public target a metric feeds: 'ppl' -> log_ppl_ratio, 'kld_mean_vs_fp16' -> kld, accuracies ->
    acc_drop; None for the rest (delta-p, top-p, duplicated ratios)."""
    m = metric.strip().lower()
    if m == "ppl":
        return "log_ppl_ratio"
    if m.startswith("kld_mean"):
        return "kld"
    if any(m.startswith(x) for x in _NO_TARGET):
        return None
    if "acc" in m:
        return "acc_drop"
    return None


# ----- datatype -> qscale format spec ---------------------------------------------------------------------------
#: llama.cpp types -> (qscale spec, how close). Legacy types are block-32 absmax (q4_0 uses the -8 end of the
#: grid, qscale's int4 is symmetric -7..7); k-quants nest 6/8-bit sub-block scales in 256-blocks, so their base
#: type maps to the nearest plain block format; _S/_M/_L mixes are their base type (bpw from the table).
_GGUF: dict[str, tuple[str, str]] = {
    "q8_0": ("int8-g32", "exact grid, fp16 scale per 32"),
    "q5_0": ("int5-g32", "approx: q5_0 uses the asymmetric end of the grid"),
    "q5_1": ("int5-g32-asym", "exact grid, fp16 scale and min per 32"),
    "q4_0": ("int4-g32", "approx: q4_0 uses the asymmetric end of the grid"),
    "q4_1": ("int4-g32-asym", "exact grid, fp16 scale and min per 32"),
    "q6_k": ("int6-g16", "approx: k-quant, 8-bit sub-block scales"),
    "q5_k": ("int5-g32-asym", "approx: k-quant, 6-bit sub-block scales and mins"),
    "q4_k": ("int4-g32-asym", "approx: k-quant, 6-bit sub-block scales and mins"),
    "q3_k": ("int3-g16", "approx: k-quant, 6-bit sub-block scales"),
    "q2_k": ("int2-g16-asym", "approx: k-quant, 4-bit sub-block scales and mins"),
    "iq4_nl": ("nf4-g32", "approx: non-linear 16-level grid per 32 (not NF4's levels)"),
    "iq4_xs": ("nf4-g32", "approx: non-linear 16-level grid per 32 (not NF4's levels)"),
}


def public_spec(datatype: str, bits: float, group: float, per_channel: bool) -> tuple[str | None, str]:
    """The qscale format a public datatype is (or is nearest to), and how close: ('int4-g128-asym', 'label').

    Lattice/vector codebooks (i-quants below 4 bits, AQLM, VPTQ, EXL2 mixes, learned LUTs) have no qscale
    format: (None, reason).

    >>> public_spec("gguf:q4_1", 4, float("nan"), False)
    ('int4-g32-asym', 'exact grid, fp16 scale and min per 32')
    >>> public_spec("int3 asym (zero-point)", 3, 128.0, False)
    ('int3-g128-asym', 'from the label')
    """
    dt = datatype.strip().lower()
    if bits >= 16 or math.isnan(bits):
        return None, "baseline"
    m = re.match(r"^(?:gguf|ggml):(\w+?)(?:_[sml])?$", dt)
    if m:
        base = m.group(1)
        if base in _GGUF:
            return _GGUF[base]
        return None, f"llama.cpp {base}: lattice codebook, no qscale format"
    if dt.startswith("w:"):
        w = dt.split()[0][2:]
        table = {
            "float8_rowwise": ("fp8-e4m3-pc", "exact: fp8 e4m3 per row"),
            "int8_rowwise": ("int8-pc", "exact: int8 per row"),
            "mxfp8": ("mxfp8-e4m3-b32", "exact: OCP MX"),
            "nvfp4": ("fp4-e2m1-g16", "approx: NVFP4 has an fp8 scale per 16"),
        }
        return table.get(w, (None, f"{w}: no qscale format"))
    if dt.startswith("fp8"):
        return "fp8-e4m3-pc", "from the label (per-channel scale assumed)"
    if dt.startswith("fp6_e3m2"):
        return "fp6-e3m2-pc", "from the label (per-channel scale assumed)"
    if dt == "nf4":
        return (
            "nf4-g64" if group == 64 or math.isnan(group) else f"nf4-g{int(group)}"
        ), "exact: bitsandbytes NF4"
    if dt == "fp4":
        return "fp4-e2m1-g64", "approx: bitsandbytes FP4 levels differ slightly from E2M1"
    m = re.match(r"^(u?int|w)(\d)(?:a16)?\b", dt) or re.match(r"^(u?int)(\d)", dt)
    if m and int(m.group(2)) == int(bits):
        asym = "asym" in dt or m.group(1) == "uint"
        how = (
            "from the label"
            if ("asym" in dt or " sym" in dt or m.group(1) == "uint")
            else "symmetric assumed"
        )
        block = "pc" if (per_channel or math.isnan(group)) else f"g{int(group)}"
        return f"int{int(bits)}-{block}" + ("-asym" if asym else ""), how
    return None, f"{datatype}: no qscale format"


def public_specs(path: str | Path | None = None) -> list[str]:
    """Every qscale spec that some public row maps to (for the capacity table)."""
    t = load_public(path).table
    return sorted(set(t["spec"].dropna()))


#: The columns of the committed format-capacity table (``python -m qscale.laws.public capacity`` writes it).
CAPACITY_COLUMNS = ("eff_bits_gauss", "eff_bits_t5")


@functools.lru_cache(maxsize=4)
def _capacity_table(path: str) -> dict[str, dict[str, float]]:
    p = Path(path)
    if not p.exists():
        return {}
    t = pd.read_csv(p)
    return {str(r["spec"]): {c: float(r[c]) for c in CAPACITY_COLUMNS} for _, r in t.iterrows()}


def format_capacity(spec: str, path: str | Path | None = None) -> dict[str, float]:
    """Effective bits of ``spec`` on Gaussian and t5 weights: from the committed table, else measured now
    (``qscale.measure.capacity``, needs torch). Example: int4-g128 -> eff_bits_gauss 3.09."""
    from qscale.formats import get_format

    key = str(get_format(spec))
    if not path:
        try:
            path = default_path("DEFAULT_CAPACITY_CSV")
        except PathError:  # an installed package: no committed table, measure the format now
            path = None
    table = _capacity_table(str(path)) if path else {}
    if key in table:
        return dict(table[key])
    from qscale.measure.capacity import capacity

    return {f"eff_bits_{d}": capacity(key, d)[1] for d in ("gauss", "t5")}


@dataclass(frozen=True)
class PublicData:
    """The tidy public table (all rows) and the counted reasons rows were set aside."""

    table: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def usable(self) -> pd.DataFrame:
        """Rows usable for fitting, every target (weight-only PTQ with a baseline); see ``rows(target)``."""
        return self.table[self.table["usable"]].reset_index(drop=True)

    def rows(self, target: str) -> pd.DataFrame:
        """The usable rows of one target (``TARGETS``)."""
        t = self.table
        return t[t["usable"] & (t["target"] == target)].reset_index(drop=True)


def known_model(family: str, params_b: float) -> dict[str, float] | None:
    """Exact counts for a (family, nominal size) in the lookup tables, e.g. ("Llama-2", 7) ->
    n_nonembed 6,476,271,616, n_params 6,738,415,616, train_tokens 2e12; None if not known."""
    arch = _ARCH.get((family, float(params_b)))
    if arch is None:
        return None
    return {
        "n_nonembed": float(arch.n_nonembed),
        "n_params": float(arch.n_params),
        "train_tokens": train_tokens(family, float(params_b))[0],
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


def _accuracy_points(table: pd.DataFrame) -> pd.Series:
    """Factor putting accuracies on 0-100: 100 for (table, metric) groups reported as fractions (max <= 1)."""
    acc = table["target"] == "acc_drop"
    top = table[acc].groupby(["table_id", "metric"])[["value", "baseline"]].max().max(axis=1)
    frac = top[top <= 1.0].index
    idx = pd.MultiIndex.from_frame(table[["table_id", "metric"]])
    return pd.Series(np.where(acc & idx.isin(frac), 100.0, 1.0), index=table.index)


def load_public(
    path: str | Path | None = None, collapse_ratio: float = 100.0, panel: str | Path | None = "default"
) -> PublicData:
    """Read ``results.csv`` (+ the real panel's measured runs, ``panel``; None to leave them out) into the
    tidy feature table, one row per published number.

    Columns: table_id, model, model_key, family, params_b (nominal), params_nominal (bool), n_params,
    n_nonembed (exact where the architecture is known, else nominal * 1e9), params_exact, train_tokens
    (NaN when unknown), train_tokens_source, bits, bpw, bpw_source, group_size, per_channel, group_assumed,
    method, method_raw, datatype, spec (qscale format or None), spec_how, eff_bits_gauss, eff_bits_t5,
    log2_group, weight_only, ptq, metric, target, eval_dataset, context_len, value, baseline, delta_ppl,
    log_ppl_ratio, kld, acc_drop (points), acc_retained, float_nll (log baseline ppl), baseline_acc (points),
    usable, drop_reason.
    """
    path = Path(path) if path is not None else default_path("DEFAULT_PUBLIC_CSV")
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
        arch = _ARCH.get((r.family, params_b))
        tokens, tokens_src = train_tokens(r.family, params_b)
        spec, how = public_spec(r.datatype, bits, group, per_channel)
        if spec is not None and bpw_src == "bits (group size unknown)":  # e.g. gguf:q5_1 -> 6.0, not 5
            from qscale.formats import get_format

            bpw, bpw_src = float(get_format(spec).bits_per_element), "qscale format of the datatype"
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
                "train_tokens": tokens,
                "train_tokens_source": tokens_src,
                "bits": bits,
                "bpw": bpw,
                "bpw_source": bpw_src,
                "group_size": group,
                "per_channel": per_channel,
                "group_assumed": assumed,
                "method": method,
                "method_raw": r.method,
                "datatype": r.datatype,
                "spec": spec,
                "spec_how": how,
                "weight_only": _weight_only(r.datatype, r.method, method),
                "ptq": method not in NOT_PTQ,
                "metric": r.metric,
                "target": target_of(r.metric),
                "eval_dataset": r.eval_dataset,
                "context_len": r.context_len,
                "value": _num(r.value),
                "baseline": _num(r.baseline_value),
                "notes": r.notes,
                "degenerate": False,
            }
        )
    table = pd.DataFrame(rows)
    if panel is not None:
        extra = panel_rows(None if panel == "default" else panel)
        if not extra.empty:
            table = pd.concat([table, extra], ignore_index=True)
    _derive_targets(table)
    reason = pd.Series("", index=table.index, dtype=object)

    def mark(mask: pd.Series, why: str) -> None:
        reason[mask & (reason == "")] = why

    metric = table["metric"].str.lower()
    acc = table["target"] == "acc_drop"
    per_task = table[acc & ~metric.isin(_AVERAGE_METRICS)].groupby("table_id").size()
    mark(table["bits"] >= 16, DROP_REASONS[0])
    mark(table["target"].isna(), DROP_REASONS[1])
    mark(acc & metric.str.startswith(_UNCLEAR_METRICS), DROP_REASONS[2])
    mark(acc & metric.isin(_AVERAGE_METRICS) & table["table_id"].isin(per_task.index), DROP_REASONS[3])
    mark(table["baseline"].isna() & (table["target"] != "kld"), DROP_REASONS[4])
    mark(table["notes"].str.contains("DUPLICATE", regex=False), DROP_REASONS[5])
    mark(~table["weight_only"].astype(bool), DROP_REASONS[6])
    mark(~table["ptq"].astype(bool), DROP_REASONS[7])
    ppl = table["target"] == "log_ppl_ratio"
    mark(ppl & (table["value"] > collapse_ratio * table["baseline"]), DROP_REASONS[8])
    mark(ppl & table["eval_dataset"].str.contains("word-level", regex=False), DROP_REASONS[9])
    mark(table["degenerate"].astype(bool), DROP_REASONS[10])
    tgt_val = pd.Series(np.nan, index=table.index)
    for name in TARGETS:
        sel = table["target"] == name
        tgt_val[sel] = table.loc[sel, name]
    mark(~np.isfinite(tgt_val) | table["bpw"].isna() | table["params_b"].isna(), DROP_REASONS[11])
    table["drop_reason"] = reason
    table["usable"] = reason == ""
    counts = Counter(reason[reason != ""])
    dropped = {why: int(counts.get(why, 0)) for why in DROP_REASONS}
    return PublicData(table=table, dropped=dropped)


def _derive_targets(table: pd.DataFrame) -> None:
    """Fill the target columns (in place) from value/baseline, plus format capacity and log2 group."""
    v, b = table["value"].astype(float), table["baseline"].astype(float)
    ppl = (table["target"] == "log_ppl_ratio") & (v > 0) & (b > 0)
    table["delta_ppl"] = np.where(ppl, v - b, np.nan)
    table["log_ppl_ratio"] = np.where(ppl, np.log(v.where(ppl, 1.0) / b.where(ppl, 1.0)), np.nan)
    table["float_nll"] = np.where(ppl, np.log(b.where(ppl, 1.0)), np.nan)
    if "kld" not in table.columns:
        table["kld"] = np.nan
    kl = table["target"] == "kld"
    table.loc[kl, "kld"] = v[kl]
    table["target"] = table["target"].astype(object)
    pts = _accuracy_points(table)
    acc = (table["target"] == "acc_drop") & (b > 0)
    table["acc_drop"] = np.where(acc, (b - v) * pts, np.nan)
    table["acc_retained"] = np.where(acc, v / b.where(acc, 1.0), np.nan)
    table["baseline_acc"] = np.where(acc, b * pts, np.nan)
    caps = {s: format_capacity(s) for s in table["spec"].dropna().unique()}
    for col in CAPACITY_COLUMNS:
        table[col] = [caps[s][col] if isinstance(s, str) else math.nan for s in table["spec"]]
    g = table["group_size"].astype(float)
    # Chen et al. 2025 use log2(G); per-channel rows count one group per 4096-wide row (a typical hidden size)
    table["log2_group"] = np.where(
        g > 0, np.log2(g.where(g > 0, 1.0)), np.where(table["per_channel"].astype(bool), 12.0, np.nan)
    )


def panel_rows(store: str | Path | None = None) -> pd.DataFrame:
    """The real panel's finished runs as public-style rows, two per run (log_ppl_ratio = dnll, and kld),
    table ``qscale-panel``. Formats that reproduce a checkpoint's own grid (the registry entry's
    ``degenerate``, measured by ``qscale panel grid``) are flagged ``degenerate``. The default ``store`` is the
    committed run store of the real panel (``DEFAULT_PANEL_STORE``; N, D and formats known exactly), absent
    (no rows) in an installed package."""
    if store is None:
        try:
            store = default_path("DEFAULT_PANEL_STORE")
        except PathError:
            return pd.DataFrame()
    p = Path(store)
    if not p.exists():
        return pd.DataFrame()
    from qscale.collect.store import RunStore  # the store has no torch dependency

    with RunStore(p, readonly=True) as st:
        f = st.to_frame()
    from qscale.lm.panel import PANEL  # the registry (torch-free): family and base-grid formats per model

    f = f[f["status"].astype(str) == "ok"]
    entries = {f"panel:{name}": e for name, e in PANEL.items()}
    rows = []
    for r in f.itertuples(index=False):
        entry = entries.get(r.model)
        fam = entry.family if entry is not None else str(r.family)
        base = {
            "table_id": "qscale-panel",
            "model": r.model,
            "model_key": r.model,
            "family": fam,
            "params_b": float(r.n_params) / 1e9,
            "params_nominal": False,
            "n_params": float(r.n_params),
            "n_nonembed": float(r.n_nonembed),
            "params_exact": True,
            "train_tokens": float(r.train_tokens),
            "train_tokens_source": train_tokens(fam, 0.0)[1],
            "bits": float(r.element_bits),
            "bpw": float(r.bits_per_element),
            "bpw_source": "qscale format",
            "group_size": math.nan,
            "per_channel": False,
            "group_assumed": False,
            "method": str(r.method),
            "method_raw": str(r.method),
            "datatype": str(r.format),
            "spec": str(r.format),
            "spec_how": "exact (measured here)",
            "weight_only": True,
            "ptq": True,
            "eval_dataset": f"qscale panel: {r.eval_corpus} test (exact KL)",
            "context_len": "",
            "notes": "measured by qscale (data/runs_panel.sqlite)",
            "degenerate": entry is not None and str(r.format) in entry.degenerate,
        }
        g = _spec_group(str(r.format))
        base["group_size"], base["per_channel"] = g
        rows.append(
            {
                **base,
                "metric": "ppl",
                "target": "log_ppl_ratio",
                "value": float(r.ppl),
                "baseline": float(r.float_ppl),
            }
        )
        rows.append(
            {
                **base,
                "metric": "kld_mean_vs_fp16",
                "target": "kld",
                "value": float(r.kld),
                "baseline": math.nan,
            }
        )
    return pd.DataFrame(rows)


def _spec_group(spec: str) -> tuple[float, bool]:
    """(group size, per_channel) of a qscale spec, from its Format: int4-g128 -> (128, False), int8-pc ->
    (nan, True), mxfp4-e2m1-b32 -> (32, False)."""
    from qscale.formats import get_format

    fmt = get_format(spec)
    if fmt.granularity == "group":
        return float(fmt.group_size), False
    return math.nan, fmt.granularity == "channel"


def public_fit_frame(path: str | Path | None = None, target: str = "log_ppl_ratio") -> pd.DataFrame:
    """The usable rows of one target, with ``log_params`` and ``group`` (= table_id) columns for fitting/CV."""
    if target not in TARGETS:
        raise ValueError(f"unknown public target {target!r}; choices: {', '.join(TARGETS)}")
    t = load_public(path).table
    data = t[t["usable"] & (t["target"] == target)].reset_index(drop=True)
    return data.assign(log_params=np.log(data["n_nonembed"]), group=data["table_id"])


def write_capacity_table(path: str | Path | None = None) -> int:
    """Rewrite the capacity table: every catalogue format plus every spec the public rows map to (needs torch)."""
    from qscale.formats import list_formats
    from qscale.measure.capacity import write_table

    specs = list(dict.fromkeys([*(str(f) for f in list_formats()), *public_specs()]))
    return write_table(Path(path) if path is not None else default_path("DEFAULT_CAPACITY_CSV"), specs)


if __name__ == "__main__":  # python -m qscale.laws.public capacity [PATH]
    import sys

    if sys.argv[1:2] != ["capacity"]:
        sys.exit("usage: python -m qscale.laws.public capacity [PATH]")
    out = sys.argv[2] if len(sys.argv) > 2 else default_path("DEFAULT_CAPACITY_CSV")
    print(f"wrote {write_capacity_table(out)} formats to {out}")
