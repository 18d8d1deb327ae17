"""The prediction API: ``qscale.predict(model=..., format=..., law=...) -> Prediction``.

Only the features the law needs are computed: format facts (bits per element, element bits, family) come
from the format spec for free; model features come from
``qscale.collect.features.compute_features(lm, fmt, names)`` (imported lazily, so ``qscale.laws`` never
imports torch), each reported with its cost class ("free", "weights", "eval", "hvp").

Public-data laws need no model: ``predict(law="public-...", params_b=7, bits=4, method="gptq")``
(``group_size`` adds the 16/g bits of an fp16 scale per group; ``bpw`` overrides).

Inputs outside the training domain give warnings on the Prediction; inputs more than 100x beyond the range
of a scale feature (e.g. N) raise :class:`LawError` unless ``extrapolate=True`` (then a warning).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qscale.laws.artifacts import TARGET_UNITS, Law, load_law
from qscale.laws.estimators import LawError

FORMAT_FEATURES = ("bits_per_element", "element_bits", "fmt_family")
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
    """The collect-registry FeatureInfo producing store column ``column`` (dict features are flattened
    to ``<name>_<key>`` columns, so the longest matching prefix wins); None if none."""
    from qscale.collect.features import list_features

    matches = [i for i in list_features() if column == i.name or column.startswith(i.name + "_")]
    return max(matches, key=lambda i: len(i.name)) if matches else None


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
    if "n_nonembed" in needed and "n_nonembed" not in vals and "params_b" in vals:
        vals["n_nonembed"] = float(vals["params_b"]) * 1e9
        warns.append("n_nonembed taken as params_b * 1e9 (nominal size; give family= for exact counts)")
    if "bpw" in needed and "bpw" not in vals and "bits" in vals:
        g = vals.get("group_size")
        extra = 16.0 / float(g) if g not in (None, "", 0) else 0.0
        vals["bpw"] = float(vals["bits"]) + extra
    if "method" in vals:
        raw = str(vals["method"])
        vals["method"] = normalise_method(raw) if normalise_method(raw) != "other" else raw.lower()
    return vals


def _format_facts(fmt_spec: str) -> tuple[Any, dict[str, Any]]:
    from qscale.formats import get_format

    fmt = get_format(fmt_spec)
    return fmt, {
        "bits_per_element": float(fmt.bits_per_element),
        "element_bits": float(fmt.element_bits),
        "fmt_family": str(fmt.family),
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
    return Prediction(
        value=float(pi["pred"]),
        lo=lo,
        hi=float(pi["hi"]),
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
        base = _public_inputs(base, needed, warns)
    lm = None
    cache: dict[str, Any] = {}
    out = []
    for spec in formats:
        values = dict(base)
        costs = {k: "given" for k in values}
        fmt = None
        bits = values.get("bpw")
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
            if lm is None:
                lm = _load_model(model)
            from qscale.collect.features import compute_features

            try:
                computed = compute_features(lm, fmt, list(dict.fromkeys(names)), cache=cache)
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
        out.append(_finish(lw, values, costs, list(warns), alpha, extrapolate, name, spec, bits))
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
