"""The feature registry: one entry per feature, read by the collection (what a sweep measures, run keys, the
run table) and by the laws (units, transforms, which columns the flexible laws take).

A feature is registered once, with everything any layer needs to know about it::

    @register_feature(
        "sqnr_db", level="model_format", unit="dB", cost="weights", transform="none", settings=()
    )
    def _sqnr_db(ctx: FeatureContext) -> float:
        ...

``level`` says what the value depends on: ``"model"`` (the float model only), ``"format"`` (the format only),
``"model_format"`` (the float model and a format) or ``"run"`` (how a run quantized: its method). Model-format
features are computed on the *float* weights, before any quantization, so that ``qscale predict`` gets the same
numbers from a freshly loaded model.

``cost`` is one of ``"free"`` (facts, config, the format spec), ``"weights"`` (a pass over weights), ``"eval"`` (a
forward pass over text), ``"hvp"`` (Hessian-vector products) or ``"given"``: not measured by qscale (a column of a
run record or a public table, or a value the caller gives); a given feature has no function.

``transform`` is how a law takes the value: ``"log"`` (scale-like: parameters, tokens, curvature), ``"none"``
(already logarithmic or small-ranged: bits, dB, nats) or ``"cat"`` (a category, one-hot).

``settings`` names what else the value depends on, from :data:`SETTINGS`: ``"eval"`` (the evaluation windows,
``ctx.eval``), ``"calibration"`` (the calibration batch, ``ctx.calib``), ``"landscape"`` (batch and sample sizes of
the curvature features, ``ctx.cache["landscape_settings"]``). The collection puts the settings of a run's features
in its run key (:mod:`qscale.collect.spec`).

A feature function returns a float (a string for a ``"cat"`` feature), or a ``dict`` of several named values,
stored as ``f"{name}_{key}"`` columns (``weight_stats`` -> ``weight_stats_kurtosis_max``, ...). A dict feature
declares its columns (``columns={"kurtosis_max": {"transform": "log"}, ...}``; unit and transform default to the
feature's); returning an undeclared one is an error. ``flex=n`` (n > 0) marks a column the flexible zoo laws
(forest, boosting, GP) take when the runs have it, in increasing ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qscale.registry import unknown_name_message

LEVELS = ("model", "format", "model_format", "run")
#: Levels computed once per format (a model-format feature also looks at the float model).
FORMAT_LEVELS = ("format", "model_format")
COSTS = ("free", "weights", "eval", "hvp", "given")
TRANSFORMS = ("log", "none", "cat")
#: What a feature's value may depend on besides the model and the format (``Feature.settings``).
SETTINGS: dict[str, str] = {
    "eval": "the evaluation windows: corpus, split, protocol, seq_len, max_tokens, add_bos (ctx.eval)",
    "calibration": "the calibration batch: corpus, n_samples, seq_len, seed, add_bos (ctx.calib)",
    "landscape": "batch and sample sizes of the curvature features (LandscapeSettings, ctx.cache)",
}


class FeatureError(ValueError):
    """An unknown feature name, a feature used at the wrong level, or a bad registration."""


@dataclass(frozen=True)
class Column:
    """One column of a run table and how a law takes it. ``feature`` is the registered feature producing it
    (``""`` for a column that is no qscale feature, see :func:`qscale.laws.features.feature_info`)."""

    name: str
    feature: str
    unit: str
    transform: str
    description: str = ""
    #: > 0: the flexible zoo laws take this column when the runs have it (in increasing order); 0: not
    flex: int = 0


@dataclass(frozen=True)
class Feature:
    """A registered feature: name, level, unit, cost, law transform, settings, function, and its columns."""

    name: str
    level: str
    unit: str
    cost: str
    transform: str
    settings: tuple[str, ...]
    fn: Callable[[FeatureContext], Any] | None
    description: str = ""
    #: every column it leaves in a run table (one, named like the feature, unless it returns a dict)
    columns: tuple[Column, ...] = ()

    @property
    def computed(self) -> bool:
        """Whether qscale measures it (``cost != "given"``)."""
        return self.fn is not None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass
class FeatureContext:
    """What a feature function may look at.

    ``lm`` is a loaded model (``qscale.lm.load``: ``.model``, ``.tokenizer``, ``.facts``; ``None`` is fine for
    format features); ``fmt`` is a ``qscale.formats.Format`` for format and model-format features and ``None``
    for model features; ``calib`` a ``LongTensor (n, L)`` of calibration tokens or ``None``; ``eval`` a mapping of
    evaluation settings (corpus, split, protocol, seq_len, max_tokens) for ``cost="eval"`` features, or ``None``
    for the defaults; ``cache`` is a dict shared by all features of one model (e.g. the float evaluation), so
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


# The registry proper, filled by the decorator when qscale.features is imported (its modules register in
# qscale/features/__init__.py; a plug-in calls register_feature too). Columns are indexed by name.
_REGISTRY: dict[str, Feature] = {}
_COLUMNS: dict[str, Column] = {}


def _check(name: str, what: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise FeatureError(f"feature {name!r}: {what} must be one of {allowed}, got {value!r}")


def _column(name: str, col: str, spec: Mapping[str, Any], unit: str, transform: str) -> Column:
    bad = sorted(set(spec) - {"unit", "transform", "description", "flex"})
    if bad:
        raise FeatureError(f"feature {name!r}, column {col!r}: unknown key(s) {bad}")
    c = Column(
        name=col,
        feature=name,
        unit=str(spec.get("unit", unit)),
        transform=str(spec.get("transform", transform)),
        description=str(spec.get("description", "")),
        flex=int(spec.get("flex", 0)),
    )
    _check(name, f"the transform of column {col!r}", c.transform, TRANSFORMS)
    if not c.unit or c.unit == "?":
        raise FeatureError(f"feature {name!r}, column {col!r}: a unit is required")
    return c


def register_feature(
    name: str,
    *,
    level: str,
    unit: str,
    cost: str,
    transform: str,
    settings: Iterable[str],
    description: str | None = None,
    columns: Mapping[str, Mapping[str, Any]] | None = None,
    flex: int = 0,
) -> Callable[[Callable[[FeatureContext], Any] | None], Callable[[FeatureContext], Any] | None]:
    """Register ``fn(ctx) -> float | str | dict`` as feature ``name`` (decorator; every property is required).

    ``columns`` (dict features only) maps each key the function returns to overrides of ``unit``,
    ``transform``, ``description`` and ``flex``; ``flex`` of a single-valued feature is given directly. A
    ``cost="given"`` feature is registered with ``register_feature(...)(None)``: it has no function.
    """
    settings = tuple(settings)
    _check(name, "level", level, LEVELS)
    _check(name, "cost", cost, COSTS)
    _check(name, "transform", transform, TRANSFORMS)
    for s in settings:
        _check(name, "a setting", s, SETTINGS)
    if not unit or unit == "?":
        raise FeatureError(f"feature {name!r}: a unit is required")
    if level == "run" and cost != "given":
        raise FeatureError(f"feature {name!r}: a run-level feature is a record of the run (cost 'given')")

    def deco(fn: Callable[[FeatureContext], Any] | None) -> Callable[[FeatureContext], Any] | None:
        if (fn is None) != (cost == "given"):
            raise FeatureError(
                f"feature {name!r}: a function is needed unless cost is 'given' (and only then)"
            )
        old = _REGISTRY.get(name)
        same = old is not None and (
            old.fn is fn or (fn is not None and old.fn is not None and old.fn.__qualname__ == fn.__qualname__)
        )
        if old is not None and not same:  # a reloaded module registers its features again: allowed
            raise FeatureError(
                f"feature {name!r} is already registered by {getattr(old.fn, '__module__', 'a given entry')}"
            )
        doc = description if description is not None else (getattr(fn, "__doc__", None) or "").strip()
        doc = doc.split("\n")[0]
        if columns is None:
            cols = (_column(name, name, {"description": doc, "flex": flex}, unit, transform),)
        else:
            if flex:
                raise FeatureError(f"feature {name!r}: give flex per column of a dict feature")
            cols = tuple(_column(name, f"{name}_{k}", spec, unit, transform) for k, spec in columns.items())
        for c in cols:
            if c.name in _COLUMNS and _COLUMNS[c.name].feature != name:
                raise FeatureError(
                    f"feature {name!r}: column {c.name!r} is feature {_COLUMNS[c.name].feature!r}'s"
                )
        if old is not None:
            for c in old.columns:
                _COLUMNS.pop(c.name, None)
        _REGISTRY[name] = Feature(name, level, unit, cost, transform, settings, fn, doc, cols)
        _COLUMNS.update((c.name, c) for c in cols)
        return fn

    return deco


def list_features(level: str | None = None) -> list[Feature]:
    """All registered features (optionally of one level), sorted by name."""
    return sorted((f for f in _REGISTRY.values() if level is None or f.level == level), key=lambda f: f.name)


def measured_features() -> list[Feature]:
    """The features qscale measures (a sweep may ask for them): every one but the given ones, sorted by name."""
    return [f for f in list_features() if f.computed]


def get_feature(name: str) -> Feature:
    """The feature called ``name``; an unknown name raises :class:`FeatureError` with suggestions."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FeatureError(unknown_name_message(name, sorted(_REGISTRY), "feature", n=3)) from None


def column_info(column: str) -> Column | None:
    """The :class:`Column` called ``column`` (``weight_stats_kurtosis_max``, ``sqnr_db``), or None when no
    registered feature leaves such a column."""
    return _COLUMNS.get(column)


def feature_of_column(column: str) -> Feature | None:
    """The registered feature that leaves column ``column``, or None."""
    c = _COLUMNS.get(column)
    return None if c is None else _REGISTRY[c.feature]


def flex_columns() -> tuple[str, ...]:
    """The columns the flexible zoo laws take when the runs have them (``flex > 0``), in their ``flex`` order."""
    cols = sorted((c for c in _COLUMNS.values() if c.flex > 0), key=lambda c: c.flex)
    return tuple(c.name for c in cols)


def data_features(names: Iterable[str]) -> list[str]:
    """The names among ``names`` whose value depends on text (settings ``eval`` or ``calibration``):
    ``float_nll``, ``top_eig``, ``qdir_*``, ... (their measurement settings are stored with runs and laws)."""
    return [n for n in names if {"eval", "calibration"} & set(get_feature(n).settings)]


def _flatten(info: Feature, name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(info, f"{name}_{k}", v))
        return out
    if name not in info.column_names:
        raise FeatureError(
            f"feature {info.name!r} returned column {name!r}, which it does not declare "
            f"(declared: {', '.join(info.column_names)})"
        )
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool | int | float):
        return {name: float(value)}
    if value is None:
        return {name: math.nan}
    if isinstance(value, str) and info.transform == "cat":
        return {name: value}
    raise FeatureError(f"feature {name!r} returned {type(value).__name__}; expected a number or a dict")


def compute_features(
    lm: Any,
    fmt: Any = None,
    names: Iterable[str] | None = None,
    calib: Any = None,
    eval: Mapping[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    level: str | None = None,
) -> dict[str, Any]:
    """Compute features of a loaded model (and a format) into a flat ``{column: value}`` dict.

    ``names=None`` means every measured feature that applies: model features, plus format and model-format
    features when ``fmt`` is given (a format spec string or a Format). ``level`` restricts to one level (the
    sweep computes ``"model"`` once per model and the rest once per format). Asking for a format-level feature
    without a format, or for a given feature (no function), is an error. The model must be in its float state.

    >>> compute_features(lm, "int4-g128", ["n_layers", "sqnr_db"])  # doctest: +SKIP
    {'n_layers': 2.0, 'sqnr_db': 19.7}
    """
    if isinstance(fmt, str):
        from qscale.formats import get_format

        fmt = get_format(fmt)
    if names is None:
        infos = [
            f
            for f in measured_features()
            if (level is None or f.level == level) and (f.level == "model" or fmt is not None)
        ]
    else:
        infos = [get_feature(n) for n in names]
        if level is not None:
            infos = [f for f in infos if f.level == level]
    ctx = FeatureContext(lm=lm, fmt=fmt, calib=calib, eval=eval, cache=cache if cache is not None else {})
    out: dict[str, Any] = {}
    for info in infos:
        if info.fn is None:
            raise FeatureError(
                f"feature {info.name!r} is not measured by qscale (cost 'given': a column of the run or "
                "public table, or a value to give)"
            )
        if info.level in FORMAT_LEVELS and fmt is None:
            raise FeatureError(f"feature {info.name!r} is a {info.level} feature and needs a format")
        out.update(_flatten(info, info.name, info.fn(ctx)))
    return out
