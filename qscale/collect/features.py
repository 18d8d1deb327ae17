"""The feature registry: numbers about a model (or a model x format pair) that laws are fitted on.

A feature is a function of a :class:`FeatureContext` registered under a name::

    @register_feature("n_layers", level="model", unit="count", cost="free")
    def _n_layers(ctx: FeatureContext) -> float:
        return float(ctx.facts.n_layers)

``level`` says what the value depends on: ``"model"`` (the float model only; computed once per model in a
sweep) or ``"model_format"`` (the float model and a format; computed once per (model, format)).
Model-format features are always computed on the *float* weights, before any quantization, so the same
numbers are available at prediction time (``qscale predict`` calls :func:`compute_features` on a freshly
loaded model, without quantizing it).

``cost`` is one of ``"free"`` (from facts / config), ``"weights"`` (a pass over the weights),
``"eval"`` (a forward pass over evaluation text) and ``"hvp"`` (Hessian-vector products).

A feature function returns a float, or a ``dict[str, float]`` of several named values; a dict result is
stored as ``f"{name}_{key}"`` columns (``weight_stats`` -> ``weight_stats_kurtosis_max``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qscale.registry import unknown_name_message

LEVELS = ("model", "model_format")
COSTS = ("free", "weights", "eval", "hvp")


class FeatureError(ValueError):
    """An unknown feature name, or a feature used at the wrong level."""


@dataclass(frozen=True)
class FeatureInfo:
    """A registered feature: its name, level, unit, cost class and the function computing it."""

    name: str
    level: str
    unit: str
    cost: str
    fn: Callable[[FeatureContext], Any]
    description: str = ""


@dataclass
class FeatureContext:
    """What a feature function may look at.

    ``lm`` is a loaded model (``qscale.lm.load``: ``.model``, ``.tokenizer``, ``.facts``); ``fmt`` is a
    ``qscale.formats.Format`` for model-format features and ``None`` for model features; ``calib`` a
    ``LongTensor (n, L)`` of calibration tokens or ``None``; ``eval`` a mapping of evaluation settings
    (corpus, split, protocol, seq_len, max_tokens) for ``cost="eval"`` features, or ``None`` for the
    defaults; ``cache`` is a dict shared by all features of one model (e.g. the float evaluation), so
    expensive intermediate results are computed once per model.
    """

    lm: Any
    fmt: Any = None
    calib: Any = None
    eval: Mapping[str, Any] | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        return self.lm.model

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    @property
    def facts(self) -> Any:
        return self.lm.facts


# The registry proper: filled by the decorator at import time (built-ins below, landscape features from
# qscale.collect.features_landscape, any plug-in calling register_feature).
_REGISTRY: dict[str, FeatureInfo] = {}


def register_feature(
    name: str,
    level: str = "model",
    unit: str = "",
    cost: str = "free",
    description: str | None = None,
) -> Callable[[Callable[[FeatureContext], Any]], Callable[[FeatureContext], Any]]:
    """Register ``fn(ctx) -> float | dict[str, float]`` as feature ``name`` (decorator)."""
    if level not in LEVELS:
        raise FeatureError(f"feature {name!r}: level must be one of {LEVELS}, got {level!r}")
    if cost not in COSTS:
        raise FeatureError(f"feature {name!r}: cost must be one of {COSTS}, got {cost!r}")

    def deco(fn: Callable[[FeatureContext], Any]) -> Callable[[FeatureContext], Any]:
        old = _REGISTRY.get(name)
        if old is not None and old.fn is not fn and old.fn.__qualname__ != fn.__qualname__:
            raise FeatureError(f"feature {name!r} is already registered by {old.fn.__module__}")
        doc = description if description is not None else (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = FeatureInfo(name=name, level=level, unit=unit, cost=cost, fn=fn, description=doc)
        return fn

    return deco


def _load_plugins() -> None:
    """Register the features defined in other modules (the loss-landscape and outlier features)."""
    import qscale.collect.features_landscape  # noqa: F401


def list_features(level: str | None = None) -> list[FeatureInfo]:
    """All registered features (optionally of one level), sorted by name."""
    _load_plugins()
    return sorted((f for f in _REGISTRY.values() if level is None or f.level == level), key=lambda f: f.name)


def get_feature(name: str) -> FeatureInfo:
    """The feature called ``name``; an unknown name raises :class:`FeatureError` with suggestions."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FeatureError(_unknown_message(name)) from None


def _unknown_message(name: str) -> str:
    return unknown_name_message(name, sorted(_REGISTRY), "feature", n=3)


def _flatten(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(f"{name}_{k}", v))
        return out
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool):
        return {name: float(value)}
    if isinstance(value, int | float):
        return {name: float(value)}
    if value is None:
        return {name: math.nan}
    raise FeatureError(f"feature {name!r} returned {type(value).__name__}; expected a number or a dict")


def compute_features(
    lm: Any,
    fmt: Any = None,
    names: Iterable[str] | None = None,
    calib: Any = None,
    eval: Mapping[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    level: str | None = None,
) -> dict[str, float]:
    """Compute features of a loaded model (and a format) into a flat ``{column: float}`` dict.

    ``names=None`` means every registered feature that applies: model features, plus model-format
    features when ``fmt`` is given (a format spec string or a Format). ``level`` restricts to one level
    (the sweep computes ``"model"`` once per model and ``"model_format"`` once per format). Asking for a
    model-format feature without a format is an error. The model must be in its float state.

    >>> compute_features(lm, "int4-g128", ["n_layers", "sqnr_db"])  # doctest: +SKIP
    {'n_layers': 2.0, 'sqnr_db': 19.7}
    """
    if isinstance(fmt, str):
        from qscale.formats import get_format

        fmt = get_format(fmt)
    if names is None:
        infos = [f for f in list_features(level) if f.level == "model" or fmt is not None]
    else:
        infos = [get_feature(n) for n in names]
        if level is not None:
            infos = [f for f in infos if f.level == level]
    ctx = FeatureContext(lm=lm, fmt=fmt, calib=calib, eval=eval, cache=cache if cache is not None else {})
    out: dict[str, float] = {}
    for info in infos:
        if info.level == "model_format" and fmt is None:
            raise FeatureError(f"feature {info.name!r} is a model_format feature and needs a format")
        out.update(_flatten(info.name, info.fn(ctx)))
    return out


# ---------------------------------------------------------------------------------------------------------
# Built-in features
# ---------------------------------------------------------------------------------------------------------


def _facts_feature(attr: str, unit: str, doc: str) -> None:
    def fn(ctx: FeatureContext) -> float:
        value = getattr(ctx.facts, attr)
        return math.nan if value is None else float(value)

    fn.__doc__ = doc
    fn.__qualname__ = f"facts_{attr}"
    register_feature(attr, level="model", unit=unit, cost="free")(fn)


for _attr, _unit, _doc in (
    ("n_params", "params", "Total parameter count (embeddings included)."),
    ("n_nonembed", "params", "Non-embedding parameter count (the N of scaling laws)."),
    ("n_layers", "count", "Number of transformer blocks."),
    ("d_model", "count", "Hidden size."),
    ("vocab_size", "count", "Vocabulary size."),
    ("train_tokens", "tokens", "Training tokens (zoo models; NaN when unknown)."),
):
    _facts_feature(_attr, _unit, _doc)


@register_feature("log10_n_nonembed", level="model", unit="log10(params)", cost="free")
def _log_n(ctx: FeatureContext) -> float:
    """log10 of the non-embedding parameter count (N = 1e6 -> 6.0)."""
    return math.log10(max(float(ctx.facts.n_nonembed), 1.0))


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


@register_feature("float_nll", level="model", unit="nats/token", cost="eval")
def _float_nll(ctx: FeatureContext) -> float:
    """Mean next-token NLL of the float model on the evaluation text."""
    return float(float_eval(ctx)["nll"])


@register_feature("float_bpb", level="model", unit="bits/byte", cost="eval")
def _float_bpb(ctx: FeatureContext) -> float:
    """Bits per byte of the float model on the evaluation text."""
    return float(float_eval(ctx)["bpb"])


@register_feature("sqnr_db", level="model_format", unit="dB", cost="weights")
def _sqnr_db(ctx: FeatureContext) -> float:
    """Weight SQNR of the format over all quantized linear layers: 10 log10(sum w^2 / sum (w - q(w))^2)."""
    from qscale.measure.weights import model_sqnr

    return float(model_sqnr(ctx.model, ctx.fmt)["sqnr_db"])


@register_feature("weight_stats", level="model", unit="mixed", cost="weights")
def _weight_stats(ctx: FeatureContext) -> dict[str, float]:
    """Model-wide weight statistics (kurtosis, max/std, share beyond 6 std: mean and max over layers)."""
    from qscale.measure.weights import model_weight_stats

    stats = model_weight_stats(ctx.model)
    return {k: v for k, v in stats.items() if isinstance(v, int | float)}
