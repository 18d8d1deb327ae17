"""The prediction API: ``qscale.predict(model=..., format=..., law=...) -> Prediction``.

Only the features the law needs are computed: format facts (bits per element, element bits, family) come
from the format spec for free; model features come from
``qscale.features.compute_features(lm, fmt, names)`` (imported lazily, so ``qscale.laws`` never
imports torch), each reported with its cost class ("free", "weights", "eval", "hvp"). Model-level features
are computed once per model, however many formats are asked for.

Data-dependent features (cost "eval" / "hvp": ``float_nll``, ``top_eig``, ``qdir_*``, ...) are measured
exactly as they were for the law's training data: on the evaluation windows and with the calibration batch
stored in the law's ``feature_settings`` (:mod:`qscale.laws.artifacts`). A law without stored settings gets
the collection defaults (:class:`qscale.collect.spec.EvalSpec` / ``CalibrationSpec``), and its predictions
say so in a warning. A model with fewer positions than the law's evaluation windows is refused with a
:class:`LawError` (its feature could not be measured the way the law was trained).

Public-data laws need no model: ``predict(law="public-...", params_b=7, bits=4, method="gptq")``
(``group_size`` adds the 16/g bits of an fp16 scale per group; ``bpw`` overrides).

A public law given a format reads the law's inputs off it (bits per weight, capacity, group size): the
format's ``bits_per_element`` is the prediction's, its canonical spec the prediction's ``format``, and a format
that also gets ``bits`` / ``bpw`` / ``group_size`` is refused (the format sets them). A non-integer format on a
law fitted without capacity features (``eff_bits_*``) enters only through its bits per weight: a warning says so.

Inputs outside the training domain give warnings on the Prediction; inputs more than 100x beyond the range
of a scale feature (e.g. N) raise :class:`LawError` unless ``extrapolate=True`` (then a warning).

:func:`rank_formats` is the one predict -> rank -> recommend workflow behind ``qscale predict --law`` and
``POST /api/predict``: the inputs checked against the law (:func:`check_inputs`), every format predicted
(formats that cannot be built or measured are skipped with their reason), ranked by predicted damage then bits
per element, the cheapest format within a budget recommended, delta-ppl added for a baseline perplexity. It
answers a :class:`Ranking`, whose ``to_dict()`` is the JSON both adapters print or serve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from qscale.laws.artifacts import TARGET_UNITS, Law, load_law
from qscale.laws.estimators import LawError

FORMAT_FEATURES = ("bits_per_element", "element_bits", "fmt_family")
#: What public laws take as inputs besides their own feature columns.
PUBLIC_INPUTS = ("params_b", "bits", "group_size", "method", "family", "train_tokens", "n_nonembed", "bpw")
#: Keyword arguments of the prediction API: never law inputs (so never settable as one).
RESERVED = frozenset({"alpha", "extrapolate", "features", "models_dir", "skipped", "model", "formats", "law"})
#: The inputs a format sets for a public law: given beside a format they contradict it.
FORMAT_SET_INPUTS = ("bits", "bpw", "group_size")
#: Damage measures that cannot be negative: interval lower bounds are clipped at 0.
NONNEGATIVE_TARGETS = frozenset({"kld"})


@dataclass(frozen=True)
class Prediction:
    """A predicted damage with its (1 - alpha) interval and the features that went in.

    ``value``/``lo``/``hi`` are in ``unit`` (nats/token for dnll and for log ppl ratio). For public laws
    ``delta_ppl`` (with ``baseline_ppl`` given) converts to perplexity points.
    """

    value: float
    lo: float
    hi: float
    unit: str
    law: str
    target: str
    alpha: float
    features: dict[str, Any] = field(default_factory=dict)
    costs: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    model: str | None = None
    format: str | None = None
    bits_per_element: float | None = None

    def delta_ppl(self, baseline_ppl: float) -> tuple[float, float, float]:
        """For log-ppl-ratio laws: (value, lo, hi) as perplexity points above ``baseline_ppl``.

        ppl_q = baseline * exp(ratio), e.g. baseline 5.47 and ratio 0.0555 -> +0.312 ppl.
        """
        if self.target != "log_ppl_ratio":
            raise LawError(f"delta_ppl needs a log_ppl_ratio law; this law predicts {self.target}")
        return tuple(baseline_ppl * math.expm1(v) for v in (self.value, self.lo, self.hi))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d


def _law(law: str | Path | Law, models_dir: str | Path | None) -> Law:
    if isinstance(law, Law):
        return law
    return load_law(law, models_dir)


def _registered(column: str):
    """The registered feature (``qscale.features.Feature``) producing store column ``column`` (a dict feature
    leaves ``<name>_<key>`` columns); None if none."""
    from qscale.features import feature_of_column

    return feature_of_column(column)


def _cost_of(column: str) -> str:
    """Cost label ("free", "weights", "eval", "hvp") of a store column."""
    info = _registered(column)
    return info.cost if info is not None else "unknown"


def _registered_name(column: str) -> str | None:
    info = _registered(column)
    return info.name if info is not None else None


def _public_inputs(given: dict[str, Any], needed: list[str], warns: list[str]) -> dict[str, Any]:
    """Derive public-law features (n_nonembed, bpw, method) from params_b / bits / group_size / method."""
    from qscale.laws.public import known_families, known_model, normalise_method

    vals = dict(given)
    fam = vals.pop("family", None)
    facts = known_model(str(fam), float(vals["params_b"])) if fam is not None and "params_b" in vals else None
    if fam is not None and facts is None:
        warns.append(
            f"no exact counts for family={fam!r} at {vals.get('params_b')}B (known: {known_families()})"
        )
    for k in ("n_nonembed", "train_tokens"):
        if k in needed and k not in vals and facts is not None and not math.isnan(facts[k]):
            vals[k] = facts[k]
    if "train_tokens" in needed and "train_tokens" not in vals and fam is not None and "params_b" in vals:
        from qscale.laws.public import train_tokens

        d, _ = train_tokens(str(fam), float(vals["params_b"]))
        if not math.isnan(d):
            vals["train_tokens"] = d
    if "n_nonembed" in needed and "n_nonembed" not in vals and "params_b" in vals:
        vals["n_nonembed"] = float(vals["params_b"]) * 1e9
        warns.append("n_nonembed taken as params_b * 1e9 (nominal size; give family= for exact counts)")
    if "bpw" in needed and "bpw" not in vals and "bits" in vals:
        g = vals.get("group_size")
        extra = 16.0 / float(g) if g not in (None, "", 0) else 0.0
        vals["bpw"] = float(vals["bits"]) + extra
    cap = [c for c in ("eff_bits_gauss", "eff_bits_t5", "log2_group") if c in needed and c not in vals]
    if cap and "bits" in vals:  # no format given: the integer format of these bits and group (symmetric)
        g = vals.get("group_size")
        spec = f"int{int(float(vals['bits']))}-" + (f"g{int(float(g))}" if g not in (None, "", 0) else "pc")
        for k, v in _public_format_facts(spec)[1].items():
            if k in cap:
                vals[k] = v
        warns.append(f"format capacity taken from {spec} (give format= for another datatype)")
    if "method" in vals:
        raw = str(vals["method"])
        vals["method"] = normalise_method(raw) if normalise_method(raw) != "other" else raw.lower()
    return vals


def _public_format_facts(spec: str) -> tuple[Any, dict[str, Any]]:
    """The format of ``spec`` and what a public law reads off it: bits per weight, capacity (effective bits on
    Gaussian and t5 weights, qscale's kernels) and log2 of the group size. int4-g128 -> bpw 4.125, eff_bits_gauss
    3.09."""
    from qscale.formats import get_format
    from qscale.laws.public import _spec_group, format_capacity

    fmt = get_format(spec)
    facts = fmt.facts()
    group, per_channel = _spec_group(facts["spec"])
    log2g = math.log2(group) if group > 0 else (12.0 if per_channel else math.nan)
    return fmt, {
        "bpw": float(facts["bits_per_element"]),
        **format_capacity(facts["spec"]),
        "log2_group": log2g,
    }


def _public_format_warnings(law: Law, fmt: Any) -> list[str]:
    """A non-integer format on a law fitted on integer formats without capacity features: it enters only through
    its bits per weight."""
    if fmt.family == "int" or any(f.startswith("eff_bits") for f in law.estimator.features_):
        return []
    return [
        f"law '{law.name}' was fitted on integer weight formats; {fmt} ({fmt.family}) enters only "
        f"through its {float(fmt.bits_per_element):g} bits per weight"
    ]


def _format_facts(fmt_spec: str) -> tuple[Any, dict[str, Any]]:
    """The format of ``fmt_spec`` and its facts under the names of the zoo laws' feature columns."""
    from qscale.formats import get_format

    fmt = get_format(fmt_spec)
    facts = fmt.facts()
    return fmt, {
        "bits_per_element": float(facts["bits_per_element"]),
        "element_bits": float(facts["element_bits"]),
        "fmt_family": str(facts["family"]),
    }


def _finish(
    law: Law,
    values: dict[str, Any],
    costs: dict[str, str],
    warns: list[str],
    alpha: float,
    extrapolate: bool,
    model: str | None,
    fmt: str | None,
    bits: float | None = None,
) -> Prediction:
    est = law.estimator
    missing = [f for f in est.features_ if f not in values or values[f] is None]
    if missing:
        hint = ""
        if law.kind == "public":
            hint = " (public laws take params_b=, bits=, group_size=, method=, train_tokens=, or the columns)"
        raise LawError(f"law '{law.name}' needs feature(s) {missing}, which were not given or computed{hint}")
    nan = [f for f in est.features_ if isinstance(values[f], float) and math.isnan(values[f])]
    if nan:
        raise LawError(f"law '{law.name}': feature(s) {nan} are unknown (NaN) for this model")
    X = pd.DataFrame([{f: values[f] for f in est.features_}])
    dom = est.domain_warnings(X)
    far = [w for w in dom if "beyond it" in w]
    if far and not extrapolate:
        raise LawError(
            f"law '{law.name}' refuses to extrapolate: "
            + "; ".join(far)
            + " (pass extrapolate=True to force)"
        )
    warns = warns + dom
    pi = est.predict_interval(X, alpha=alpha).iloc[0]
    lo = float(pi["lo"])
    if est.target in NONNEGATIVE_TARGETS:  # a symmetric (conformal) band must not promise a negative KL
        lo = max(lo, 0.0)
    hi, value = float(pi["hi"]), float(pi["pred"])
    if est.target == "acc_drop" and "baseline_acc" in values:  # cannot lose more than the whole accuracy
        top = float(values["baseline_acc"])
        hi, value = min(hi, top), min(value, top)
    return Prediction(
        value=value,
        lo=lo,
        hi=hi,
        unit=TARGET_UNITS.get(est.target, "?"),
        law=law.name,
        target=est.target,
        alpha=alpha,
        features={f: values[f] for f in est.features_},
        costs={f: costs.get(f, "given") for f in est.features_},
        warnings=tuple(warns),
        model=model,
        format=fmt,
        bits_per_element=None if bits is None else float(bits),
    )


def predict(
    model: Any = None,
    format: str | None = None,
    law: str | Path | Law = "zoo",
    alpha: float = 0.1,
    features: dict[str, Any] | None = None,
    extrapolate: bool = False,
    models_dir: str | Path | None = None,
    **given: Any,
) -> Prediction:
    """Predict the damage of quantizing ``model`` to ``format`` with a fitted ``law``.

    ``model``: a model spec for ``qscale.lm.load`` ("zoo:llama-s", an HF directory, a .gguf) or an
    already loaded model; not needed when every feature is given (``features=`` or keyword arguments).
    """
    return predict_formats(
        model,
        [format] if format is not None else [None],
        law,
        alpha,
        features,
        extrapolate,
        models_dir,
        **given,
    )[0]


def predict_formats(
    model: Any,
    formats: list[str | None],
    law: str | Path | Law,
    alpha: float = 0.1,
    features: dict[str, Any] | None = None,
    extrapolate: bool = False,
    models_dir: str | Path | None = None,
    skipped: dict[str, str] | None = None,
    **given: Any,
) -> list[Prediction]:
    """:func:`predict` for several formats of one model; model-level features are computed once.

    With ``skipped`` (a dict to fill), a format whose features cannot be computed for this model (e.g. a
    spec that cannot be built or applied to this model) is recorded there as ``{spec: reason}`` and left out
    instead of failing the whole call.
    """
    lw = _law(law, models_dir)
    needed = list(lw.estimator.features_)
    base = {**(features or {}), **given}
    warns: list[str] = []
    if lw.kind == "public":
        clash = sorted(k for k in FORMAT_SET_INPUTS if k in base)
        if clash and any(spec is not None for spec in formats):
            raise LawError(f"give either a format or {clash}, not both: the format sets the bits per weight")
        base = _public_inputs(base, needed, warns)
    lm = None
    settings: _Measurement | None = None
    cache: dict[str, Any] = {}
    out = []
    for spec in formats:
        values = dict(base)
        costs = {k: "given" for k in values}
        fmt = None
        bits = values.get("bpw")
        shown = spec  # the prediction's format: as given (zoo), canonical (public, read off the format)
        own: list[str] = []  # this format's warnings
        if spec is not None and lw.kind == "zoo":
            try:
                fmt, facts = _format_facts(spec)
            except ValueError as err:  # FormatError: a spec that cannot be built
                if skipped is None:
                    raise
                skipped[str(spec)] = str(err)
                continue
            bits = facts["bits_per_element"]
            for k, v in facts.items():
                if k in needed and k not in values:
                    values[k] = v
                    costs[k] = "free"
        elif spec is not None and lw.kind == "public":
            try:
                fmt, facts = _public_format_facts(spec)
            except ValueError as err:  # FormatError
                if skipped is None:
                    raise
                skipped[str(spec)] = str(err)
                continue
            bits, shown = facts["bpw"], str(fmt)
            own = _public_format_warnings(lw, fmt)
            for k, v in facts.items():
                if k not in values:
                    values[k] = v
                    costs[k] = "free"
        todo = [f for f in needed if f not in values]
        if todo and lw.kind != "public":  # public laws have no model to compute from: _finish names them
            if model is None:
                raise LawError(
                    f"law '{lw.name}' needs {todo}; give model= (to compute them) or pass them as features"
                )
            names = []
            for col in todo:
                reg = _registered_name(col)
                if reg is None:
                    raise LawError(f"feature '{col}' of law '{lw.name}' is not a registered qscale feature")
                names.append(reg)
            names = list(dict.fromkeys(names))
            if lm is None:
                lm = _load_model(model)
                settings = _measurement(lw, names, lm, warns)
            try:
                computed = _compute(lm, fmt, names, settings, cache)
            except ValueError as err:  # FormatError / FeatureError are ValueErrors
                if skipped is None:
                    raise
                skipped[str(spec)] = str(err)
                continue
            for col in todo:
                if col in computed:
                    values[col] = computed[col]
                    costs[col] = _cost_of(col)
        name = model if isinstance(model, str) else getattr(model, "name", None)
        out.append(_finish(lw, values, costs, [*warns, *own], alpha, extrapolate, name, shown, bits))
    return out


@dataclass(frozen=True)
class _Measurement:
    """How data-dependent features are measured for a law: eval windows and the calibration record."""

    eval: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None


def _context_length(lm: Any) -> int | None:
    cfg = getattr(getattr(lm, "model", None), "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 1:
            return v
    return None


def _measurement(law: Law, names: list[str], lm: Any, warns: list[str]) -> _Measurement:
    """The law's feature settings for the data-dependent features among ``names`` (module docstring)."""
    from qscale.collect.spec import CalibrationSpec, EvalSpec
    from qscale.features import data_features

    data = data_features(names)
    if not data:
        return _Measurement()
    stored = law.feature_settings or {}
    ev, calib = stored.get("eval"), stored.get("calibration")
    origin = "as for its training data"
    if ev is None:
        origin = "the collection defaults: the law does not store its feature settings"
        ev = EvalSpec().window_kwargs()
        calib = CalibrationSpec().to_dict()
        warns.append(
            f"law '{law.name}' does not store how its features were measured: {', '.join(data)} computed "
            f"with the collection defaults ({_describe(ev, calib)})"
        )
    try:  # the same records the collection used: unknown keys or bad values are the artifact's fault
        ev = EvalSpec(**ev).window_kwargs()
        calib = None if calib is None else CalibrationSpec(**calib).to_dict()
    except TypeError as err:
        raise LawError(f"law '{law.name}': unusable feature_settings ({err})") from None
    ctx = _context_length(lm)
    if ctx is not None and ev["seq_len"] > ctx:
        raise LawError(
            f"law '{law.name}' measures {', '.join(data)} on {ev['seq_len']}-token windows ({origin}), but "
            f"this model has {ctx} positions; use a law fitted on models with at least {ev['seq_len']} positions"
        )
    return _Measurement(eval=ev, calibration=calib)


def _describe(ev: dict[str, Any], calib: dict[str, Any] | None) -> str:
    tokens = "all" if ev.get("max_tokens") is None else f"{ev['max_tokens']}"
    text = (
        f"eval {ev['corpus']} {ev['split']}, {ev['protocol']} {ev['seq_len']}-token windows, {tokens} tokens"
    )
    if calib is not None:
        text += (
            f"; calibration {calib['corpus']} {calib['n_samples']} x {calib['seq_len']}, seed {calib['seed']}"
        )
    return text


def _compute(
    lm: Any, fmt: Any, names: list[str], settings: _Measurement | None, cache: dict[str, Any]
) -> dict[str, float]:
    """``names`` of ``lm`` (and ``fmt``) measured with ``settings``. Model-level features are computed once
    per model (kept in ``cache``), model-format ones once per format."""
    from qscale.features import compute_features, get_feature

    settings = settings or _Measurement()
    done: dict[str, dict[str, float]] = cache.setdefault("predict:model_features", {})
    model_todo = [n for n in names if get_feature(n).level == "model" and n not in done]
    format_todo = [n for n in names if get_feature(n).level != "model"]
    calib = None
    if settings.calibration is not None and (model_todo or format_todo):
        key = "predict:calibration"
        if key not in cache:
            from qscale.corpora.calibration import calibration_from_record

            cache[key] = calibration_from_record(lm.tokenizer, settings.calibration)
        calib = cache[key]

    def measure(fmt_: Any, todo: list[str]) -> dict[str, float]:
        return compute_features(lm, fmt_, todo, calib=calib, eval=settings.eval, cache=cache)

    for n in model_todo:
        done[n] = measure(None, [n])
    out: dict[str, float] = {}
    for n in names:
        out.update(done.get(n, {}))
    if format_todo:
        out.update(measure(fmt, format_todo))
    return out


def _load_model(model: Any):
    if not isinstance(model, (str, Path)):
        return model
    from qscale.lm import load

    return load(str(model))


def recommend(predictions: list[Prediction], budget: float) -> Prediction | None:
    """The cheapest format (fewest bits per element; ties -> smaller upper bound) whose upper interval
    bound is within ``budget``; None when none qualifies."""
    ok = [p for p in predictions if p.hi <= budget and p.bits_per_element is not None]
    if not ok:
        return None
    return min(ok, key=lambda p: (p.bits_per_element, p.hi))


def check_inputs(
    law: str | Path | Law, given: dict[str, Any], models_dir: str | Path | None = None
) -> dict[str, Any]:
    """``given`` when every name is an input of ``law`` (its feature columns; for public laws also
    :data:`PUBLIC_INPUTS`), else a :class:`LawError` naming the ones it takes. Keyword arguments of this API
    (:data:`RESERVED`: ``alpha``, ``extrapolate``, ...) are never inputs."""
    lw = _law(law, models_dir)
    allowed = set(lw.estimator.features_) - RESERVED
    if lw.kind == "public":
        allowed |= set(PUBLIC_INPUTS)
    bad = sorted(k for k in given if k not in allowed or k in RESERVED)
    if bad:
        raise LawError(
            f"unknown input(s) {bad} for law '{lw.name}'; it takes: {', '.join(sorted(allowed)) or '(none)'}"
        )
    return given


def rank_key(pred: Prediction) -> tuple[float, float]:
    """The one ranking order: least predicted damage first, then fewest bits per element (unknown: last)."""
    bits = pred.bits_per_element
    return (pred.value, math.inf if bits is None else float(bits))


@dataclass(frozen=True)
class Ranking:
    """The answer of :func:`rank_formats`: predictions best first, the formats left out and why, the
    recommendation for a budget and, with a baseline perplexity, each prediction's delta-ppl."""

    predictions: tuple[Prediction, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    budget: float | None = None
    recommended: Prediction | None = None
    baseline_ppl: float | None = None
    deltas: tuple[tuple[float, float, float], ...] | None = None  # (value, lo, hi) per prediction

    def rows(self) -> list[dict[str, Any]]:
        """One dict per prediction (:meth:`Prediction.to_dict`), with ``delta_ppl: {value, lo, hi}`` when a
        baseline perplexity was given."""
        rows = [p.to_dict() for p in self.predictions]
        for row, d in zip(rows, self.deltas or (), strict=False):
            row["delta_ppl"] = dict(zip(("value", "lo", "hi"), d, strict=True))
        return rows

    def to_dict(self) -> dict[str, Any]:
        """``{"predictions": [...], "skipped": [{"format", "reason"}] (when any), "budget", "recommended"
        (the format's spec or None; with a budget)}``: what ``qscale predict --json`` prints and
        ``POST /api/predict`` answers for a ranking."""
        out: dict[str, Any] = {"predictions": self.rows()}
        if self.skipped:
            out["skipped"] = [{"format": s, "reason": r} for s, r in self.skipped.items()]
        if self.budget is not None:
            out["budget"] = self.budget
            out["recommended"] = None if self.recommended is None else self.recommended.format
        return out


def rank_formats(
    model: Any,
    formats: Sequence[str | None],
    law: str | Path | Law,
    *,
    alpha: float = 0.1,
    extrapolate: bool = False,
    budget: float | None = None,
    baseline_ppl: float | None = None,
    inputs: dict[str, Any] | None = None,
    models_dir: str | Path | None = None,
    model_name: str | None = None,
) -> Ranking:
    """Predict -> rank -> recommend: the one implementation behind ``qscale predict --law`` and
    ``POST /api/predict``.

    ``model``: what :func:`predict_formats` takes (a spec or a loaded model; None when the inputs are enough; a
    public law refuses one). ``formats``: the specs to rank (``[None]``: the inputs alone). ``inputs``: feature
    values or public-law inputs, checked by :func:`check_inputs`. With more than one format, one that cannot
    be built or measured is skipped with its reason; when none is left, a :class:`LawError` names them all.
    ``model_name`` replaces the model name on every prediction (the service: the client's name, never a path).
    """
    lw = _law(law, models_dir)
    given = check_inputs(lw, dict(inputs or {}))
    if lw.kind == "public" and model is not None:
        raise LawError(
            f"law '{lw.name}' is a public-data law: it takes inputs (params_b, bits, method, ...), "
            "not a model; pick a zoo law to predict for a model"
        )
    specs = list(formats) or [None]
    skipped: dict[str, str] = {}
    preds = predict_formats(
        model, specs, lw, alpha=alpha, extrapolate=extrapolate,
        skipped=skipped if len(specs) > 1 else None, **given,
    )  # fmt: skip
    if not preds:
        why = "; ".join(f"{s}: {r}" for s, r in skipped.items())
        raise LawError("no format could be predicted for this model" + (f" ({why})" if why else ""))
    if model_name is not None:
        preds = [replace(p, model=model_name) for p in preds]
    preds = sorted(preds, key=rank_key)
    deltas = None if baseline_ppl is None else tuple(p.delta_ppl(baseline_ppl) for p in preds)
    return Ranking(
        predictions=tuple(preds),
        skipped=skipped,
        budget=budget,
        recommended=None if budget is None else recommend(preds, budget),
        baseline_ppl=baseline_ppl,
        deltas=deltas,
    )
