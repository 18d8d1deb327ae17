"""The built-in features: model facts, the float evaluation, weight SQNR and statistics, what a format's spec
says (bits, group, capacity), and the inputs qscale does not measure (public-table columns, the method).

Units and transforms are the ones the laws have always used (the shipped laws' manifests record them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from qscale.features.core import FeatureContext, register_feature

# ---------------------------------------------------------------------------------------------------------
# Model facts (free)
# ---------------------------------------------------------------------------------------------------------


def _facts_feature(attr: str, unit: str, transform: str, doc: str) -> None:
    def fn(ctx: FeatureContext) -> float:
        value = getattr(ctx.facts, attr)
        return math.nan if value is None else float(value)

    fn.__doc__ = doc
    fn.__qualname__ = f"facts_{attr}"
    register_feature(attr, level="model", unit=unit, cost="free", transform=transform, settings=())(fn)


for _attr, _unit, _transform, _doc in (
    ("n_params", "parameters", "log", "Total parameter count (embeddings included)."),
    ("n_nonembed", "parameters", "log", "Non-embedding parameter count (the N of scaling laws)."),
    ("n_layers", "count", "none", "Number of transformer blocks."),
    ("d_model", "count", "none", "Hidden size."),
    ("vocab_size", "count", "none", "Vocabulary size."),
    ("train_tokens", "tokens", "log", "Pre-training tokens D (zoo models; NaN when unknown)."),
):
    _facts_feature(_attr, _unit, _transform, _doc)


@register_feature(
    "log10_n_nonembed", level="model", unit="log10(parameters)", cost="free", transform="none", settings=()
)
def _log_n(ctx: FeatureContext) -> float:
    """log10 of the non-embedding parameter count (N = 1e6 -> 6.0)."""
    return math.log10(max(float(ctx.facts.n_nonembed), 1.0))


# ---------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------


@register_feature(
    "weight_stats",
    level="model",
    unit="1",
    cost="weights",
    transform="none",
    settings=(),
    columns={
        "kurtosis_mean": {"description": "mean over layers of the weight excess kurtosis"},
        "kurtosis_max": {
            "transform": "log",
            "flex": 4,
            "description": "max over layers of the weight kurtosis",
        },
        "max_over_std_mean": {"description": "mean over layers of max|w - mu| / std(w)"},
        "max_over_std_max": {
            "transform": "log",
            "flex": 5,
            "description": "max over layers of max|w| / std(w)",
        },
        "frac_beyond_6std_mean": {"unit": "fraction", "description": "mean share of weights beyond 6 std"},
        "frac_beyond_6std_max": {"unit": "fraction", "description": "max over layers of that share"},
    },
)
def _weight_stats(ctx: FeatureContext) -> dict[str, float]:
    """Model-wide weight statistics (kurtosis, max/std, share beyond 6 std: mean and max over layers)."""
    from qscale.measure.weights import model_weight_stats

    stats = model_weight_stats(ctx.model)
    return {k: v for k, v in stats.items() if isinstance(v, int | float)}


@register_feature("sqnr_db", level="model_format", unit="dB", cost="weights", transform="none", settings=())
def _sqnr_db(ctx: FeatureContext) -> float:
    """Weight SQNR of the format over all quantized linear layers: 10 log10(sum w^2 / sum (w - q(w))^2)."""
    from qscale.measure.weights import model_sqnr

    return float(model_sqnr(ctx.model, ctx.fmt)["sqnr_db"])


# ---------------------------------------------------------------------------------------------------------
# The float evaluation (cost "eval", setting "eval")
# ---------------------------------------------------------------------------------------------------------


def float_eval_key(settings: Mapping[str, Any] | None) -> str:
    """The ``ctx.cache`` key under which the float evaluation for ``settings`` is kept."""
    return "float_eval:" + repr(sorted(dict(settings or {}).items()))


def float_eval(ctx: FeatureContext) -> dict[str, Any]:
    """The float model's evaluation under ``ctx.eval`` (cached in ``ctx.cache``)."""
    settings = dict(ctx.eval or {})
    key = float_eval_key(settings)
    if key not in ctx.cache:
        from qscale.measure import evaluate

        ctx.cache[key] = evaluate(ctx.model, ctx.tokenizer, **settings, progress=False)
    return ctx.cache[key]


@register_feature(
    "float_nll", level="model", unit="nats/token", cost="eval", transform="none", settings=("eval",), flex=6
)
def _float_nll(ctx: FeatureContext) -> float:
    """Mean next-token NLL of the float model on the evaluation text."""
    return float(float_eval(ctx)["nll"])


@register_feature(
    "float_bpb", level="model", unit="bits/byte", cost="eval", transform="none", settings=("eval",)
)
def _float_bpb(ctx: FeatureContext) -> float:
    """Bits per byte of the float model on the evaluation text."""
    return float(float_eval(ctx)["bpb"])


# ---------------------------------------------------------------------------------------------------------
# What a format's spec says (level "format")
# ---------------------------------------------------------------------------------------------------------


@register_feature("bits_per_element", level="format", unit="bits", cost="free", transform="none", settings=())
def _bits_per_element(ctx: FeatureContext) -> float:
    """Storage bits per weight incl. scale overhead (int4-g128 -> 4.125)."""
    return float(ctx.fmt.bits_per_element)


@register_feature("element_bits", level="format", unit="bits", cost="free", transform="none", settings=())
def _element_bits(ctx: FeatureContext) -> float:
    """Bits of one element, no scale overhead."""
    return float(ctx.fmt.element_bits)


@register_feature("fmt_family", level="format", unit="category", cost="free", transform="cat", settings=())
def _fmt_family(ctx: FeatureContext) -> str:
    """The format's family: int | fp | mx | lut."""
    return str(ctx.fmt.family)


@register_feature("bpw", level="format", unit="bits", cost="free", transform="none", settings=())
def _bpw(ctx: FeatureContext) -> float:
    """Bits per weight incl. scale overhead (the public tables' name for bits_per_element)."""
    return float(ctx.fmt.bits_per_element)


@register_feature("bits", level="format", unit="bits", cost="free", transform="none", settings=())
def _bits(ctx: FeatureContext) -> float:
    """Nominal weight bit width (public tables): the bits of one element."""
    return float(ctx.fmt.element_bits)


def _group(fmt: Any) -> float:
    return float(fmt.group_size) if fmt.granularity == "group" else math.nan


@register_feature("group_size", level="format", unit="elements", cost="free", transform="log", settings=())
def _group_size(ctx: FeatureContext) -> float:
    """Quantization group size (NaN without groups: per channel, per tensor)."""
    return _group(ctx.fmt)


@register_feature("log2_group", level="format", unit="bits", cost="free", transform="log", settings=())
def _log2_group(ctx: FeatureContext) -> float:
    """log2 of the group size (Chen et al. 2025; per-channel = 12)."""
    g = _group(ctx.fmt)
    if g > 0:
        return math.log2(g)
    return 12.0 if ctx.fmt.granularity == "channel" else math.nan


def _capacity_feature(dist: str, doc: str) -> None:
    def fn(ctx: FeatureContext) -> float:
        from qscale.measure.capacity import capacity

        return float(capacity(str(ctx.fmt), dist)[1])

    fn.__doc__ = doc
    fn.__qualname__ = f"eff_bits_{dist}"
    register_feature(
        f"eff_bits_{dist}", level="format", unit="bits", cost="weights", transform="none", settings=()
    )(fn)


_capacity_feature("gauss", "Format capacity: SQNR/6.02 on Gaussian weights (qscale.measure.capacity).")
_capacity_feature("t5", "Format capacity: SQNR/6.02 on Student-t5 weights (qscale.measure.capacity).")


# ---------------------------------------------------------------------------------------------------------
# Given: not measured by qscale (public-table columns, the run's own record)
# ---------------------------------------------------------------------------------------------------------

register_feature(
    "params_b",
    level="model",
    unit="billions of parameters (nominal)",
    cost="given",
    transform="log",
    settings=(),
    description="nominal size from the model name (public tables)",
)(None)
register_feature(
    "baseline_acc",
    level="model",
    unit="accuracy points",
    cost="given",
    transform="none",
    settings=(),
    description="accuracy of the unquantized model (public tables)",
)(None)
register_feature(
    "method",
    level="run",
    unit="category",
    cost="given",
    transform="cat",
    settings=(),
    description="quantization algorithm (rtn, gptq, ...)",
)(None)
