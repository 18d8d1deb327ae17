"""Predict a model's damage in any format from its sensitivity profile; validate and ship the calibration.

``predict_model(model, formats)`` is the default law for a model (``qscale predict --model M --formats ...``
without ``--law``): load the model (any local HF checkpoint, ``zoo:`` or ``panel:`` name, or a .gguf), get its
sensitivity profile (computed once, cached by weights identity), compute every format's per-layer weight error
and predicted KL contribution (no quantized evaluation), sum them, and pass the sum through the shipped
calibration (``models/profile-kld.json``; dnll alongside from ``models/profile-dnll.json``) for a value and a
90% interval.

``validate(stores, ...)`` builds the calibration data (every measured RTN run of the given run stores, with the
raw profile prediction recomputed from the model's weights), scores leave-one-model-out, fits the shipped
calibration on all models and writes the validation report.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qscale.laws.artifacts import default_models_dir
from qscale.laws.estimators import LawError
from qscale.laws.profile import ProfileCalibration, lomo_scores

UNITS = {"kld": "nats/token", "dnll": "nats/token"}
#: The name the profile law answers to (CLI, service, JSON): the default law for a model.
PROFILE_LAW = "profile"


def calibration_path(target: str = "kld", models_dir: str | Path | None = None) -> Path:
    return Path(models_dir or default_models_dir()) / f"profile-{target}.json"


def load_calibration(target: str = "kld", models_dir: str | Path | None = None) -> ProfileCalibration:
    path = calibration_path(target, models_dir)
    if not path.is_file():
        raise LawError(
            f"no profile calibration for {target!r} at {path}; fit one with `qscale profile validate` "
            "(needs measured runs of at least two models)"
        )
    return ProfileCalibration.load(path)


def calibrations(
    pop: str, models_dir: str | Path | None = None, alpha: float = 0.1
) -> tuple[ProfileCalibration, ProfileCalibration | None]:
    """The population's KL calibration with its interval at level ``1 - alpha`` (the conformal quantile redone
    from its stored leave-one-model-out residuals when ``alpha`` differs), and its dnll calibration if shipped."""
    cal = load_calibration(calibration_name("kld", pop), models_dir)
    if not math.isclose(cal.alpha, alpha):
        import numpy as np

        from qscale.laws.estimators import _conformal_q

        cal.alpha = alpha
        cal.q_ = _conformal_q(np.asarray(cal.lomo_abs_resid_), alpha)
    try:
        cal_dnll = load_calibration(calibration_name("dnll", pop), models_dir)
    except LawError:  # dnll is a bonus
        cal_dnll = None
    return cal, cal_dnll


def bits_per_weight(lm: Any, fmt: Any, exclude: Sequence[str] | None = None) -> float:
    """Average bits per quantized weight over the model's linear layers, partial trailing groups counted."""
    from qscale.lm.layers import linear_layers

    bits = n = 0.0
    for ref in linear_layers(lm.model, exclude=exclude):
        bits += fmt.bits_per_element_for(ref.in_features) * ref.out_features * ref.in_features
        n += ref.out_features * ref.in_features
    return bits / n if n else float("nan")


def format_terms(
    lm: Any,
    profile: Any,
    specs: Sequence[str],
    *,
    skipped: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    cache: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Per format: ``{"format", "raw", "layers": {name: {...}}, "bits_per_weight", "seconds"}`` (RTN errors).

    ``cache``: a JSON file (next to the profile, whose name carries the weights identity) keeping each format's
    per-layer terms, so a second plan or prediction of the same model skips the fake-quantization; entries are
    keyed by qscale version and the profile's settings, and a damaged file is recomputed.
    """
    from qscale import __version__
    from qscale.formats import FormatError, get_format

    stash: dict[str, Any] = {}
    key = json.dumps(
        [__version__, profile.identity, profile.n_tokens, profile.settings], sort_keys=True, default=str
    )
    if cache is not None and Path(cache).is_file():
        try:
            got = json.loads(Path(cache).read_text())
            stash = got.get("formats", {}) if got.get("key") == key else {}
        except (OSError, ValueError, AttributeError):
            stash = {}
    added = False
    out = []
    for spec in specs:
        t = time.perf_counter()
        try:
            fmt = get_format(spec)
            layers = stash.get(str(fmt))
            if layers is None or set(layers) != set(profile.layers):
                layers = profile.layer_terms(lm.model, fmt)
                stash[str(fmt)] = layers
                added = True
        except (FormatError, ValueError) as err:
            if skipped is None:
                raise
            skipped[str(spec)] = str(err)
            continue
        out.append(
            {
                "format": str(fmt),
                "raw": sum(v["kld"] for v in layers.values()),
                "layers": layers,
                "bits_per_weight": bits_per_weight(lm, fmt, profile.settings.get("exclude")),
                "seconds": time.perf_counter() - t,
            }
        )
        if progress is not None:
            progress(str(fmt))
    if cache is not None and added:
        tmp = Path(cache).with_name(Path(cache).name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"key": key, "formats": stash}, default=float))
            tmp.replace(cache)
        except OSError:  # a read-only cache directory: the terms are simply recomputed next time
            tmp.unlink(missing_ok=True)
    return out


#: The calibration a weight method gets when none is given: the real panel's GPTQ sweep
#: (data/sweeps/panel_gptq_smollm2.yaml), capped at the model's context.
METHOD_CALIBRATION = {"corpus": "enwiki_gensim", "n_samples": 32, "seq_len": 512, "seed": 0}


def profile_correlations(lm: Any, profile: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Input correlation matrices of the profiled layers, from forward passes over the profile's own
    calibration tokens (:mod:`qscale.measure.kron`)."""
    from qscale.corpora.calibration import calibration_from_record
    from qscale.measure.kron import input_correlations
    from qscale.measure.sensitivity import default_calibration

    cal = profile.settings.get("calibration") or default_calibration(lm)
    calib = calibration_from_record(lm.tokenizer, cal)
    return input_correlations(lm.model, calib, exclude=profile.settings.get("exclude"))


def method_terms(
    lm: Any,
    profile: Any,
    specs: Sequence[str],
    *,
    method: str = "rtn",
    params: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    correlations: dict[str, Any] | None = None,
    skipped: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Per format, the weights ``method`` produces scored by the profile: ``raw`` (the diagonal Fisher) and,
    with ``correlations`` (:func:`profile_correlations`), ``raw_corr`` (plus the input correlations within each
    row, :mod:`qscale.measure.kron`), both in nats/token, with the per-layer terms and the seconds spent.

    ``method="rtn"`` needs nothing else; a calibrated method (``gptq``) is run for real on ``lm`` (restored
    afterwards) on ``calibration`` tokens (default :data:`METHOD_CALIBRATION`), so its cost is the method's
    quantization time, without any quantized evaluation.
    """
    from qscale.formats import FormatError, get_format
    from qscale.kernels import fake_quant
    from qscale.lm.layers import linear_layers
    from qscale.measure.kron import correlated_sq_error, sqrt_fisher
    from qscale.quantize import quantized
    from qscale.quantize.registry import get_method

    exclude = profile.settings.get("exclude")
    refs = {r.name: r for r in linear_layers(lm.model, exclude=exclude)}
    floats = {n: refs[n].get_weight().float().clone() for n in profile.layers}
    calib = None
    m = get_method(method)
    if m.calibration_needed(params or {}):
        from qscale.corpora.calibration import calibration_from_record

        cal = dict(calibration or METHOD_CALIBRATION)
        ctx = getattr(lm.model.config, "max_position_embeddings", None) or cal["seq_len"]
        cal["seq_len"] = int(min(cal["seq_len"], ctx))
        calib = calibration_from_record(lm.tokenizer, cal)
    out = []
    for spec in specs:
        t = time.perf_counter()
        try:
            fmt = get_format(spec)
            if method == "rtn":
                quant = {n: fake_quant(fmt, w) for n, w in floats.items()}
            else:
                with quantized(lm.model, fmt, method, params=params, calib=calib, exclude=exclude):
                    quant = {n: refs[n].get_weight().float().clone() for n in profile.layers}
        except (FormatError, ValueError) as err:
            if skipped is None:
                raise
            skipped[str(spec)] = str(err)
            continue
        t_quant = time.perf_counter() - t
        layers = profile.layer_terms(lm.model, fmt, weights=lambda ref, q=quant: q[ref.name])
        if correlations is not None:
            for name, lp in profile.layers.items():
                dw = quant[name] - floats[name]
                layers[name]["kld_corr"] = (
                    0.5 * correlated_sq_error(sqrt_fisher(lp), dw, correlations[name]) / profile.n_tokens
                )
        item = {
            "format": str(fmt),
            "method": method,
            "raw": sum(v["kld"] for v in layers.values()),
            "layers": layers,
            "bits_per_weight": bits_per_weight(lm, fmt, exclude),
            "quantize_s": round(t_quant, 3),
            "seconds": round(time.perf_counter() - t, 3),
        }
        if correlations is not None:
            item["raw_corr"] = sum(v["kld_corr"] for v in layers.values())
        out.append(item)
    return out


def _interval(cal: ProfileCalibration, raw: float, probe_factor: float | None = None) -> dict[str, float]:
    v, lo, hi = (float(x) for x in cal.interval(raw, probe_factor))
    return {"value": v, "lo": lo, "hi": hi}


def predict_model(
    model: Any,
    formats: Sequence[str],
    *,
    alpha: float = 0.1,
    models_dir: str | Path | None = None,
    profile_dir: str | Path | None = None,
    top_layers: int = 5,
    breakdown: bool = False,
    skipped: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Predicted KL (and dnll) of ``model`` in each format, with intervals and the layers that carry the damage.

    ``model``: a reference for :func:`qscale.lm.load` or a loaded model. Returns ``{"model", "identity",
    "profile": {...}, "predictions": [{"format", "value", "lo", "hi", "target": "kld", "unit", "alpha",
    "raw", "bits_per_weight", "dnll": {...}, "top_layers": [...]}, ...]}``; ``breakdown=True`` adds every
    layer's predicted KL under ``"layers"``.
    """
    from qscale.lm import load
    from qscale.measure.sensitivity import cached_profile

    lm = load(model) if isinstance(model, str) else model
    pop = population(lm.name)
    cal, cal_dnll = calibrations(pop, models_dir, alpha)
    t = time.perf_counter()
    prof, path, computed = cached_profile(lm, cache_dir=profile_dir)
    t_profile = time.perf_counter() - t
    terms = format_terms(lm, prof, formats, skipped=skipped, progress=progress)
    preds = []
    warnings = []
    lo_raw, hi_raw = cal.raw_range_
    pf = prof.probe_factor
    for item in terms:
        x = float(cal.predictor(item["raw"], pf))
        p = {
            "format": item["format"],
            **_interval(cal, item["raw"], pf),
            "target": "kld",
            "unit": UNITS["kld"],
            "alpha": alpha,
            "law": PROFILE_LAW,
            "raw": item["raw"],
            "bits_per_weight": item["bits_per_weight"],
            "seconds": round(item["seconds"], 3),
        }
        if cal_dnll is not None:
            p["dnll"] = _interval(cal_dnll, item["raw"], pf)
        ranked = sorted(item["layers"].items(), key=lambda kv: -kv[1]["kld"])
        total = item["raw"] or 1.0
        p["top_layers"] = [
            {"layer": n, "share": v["kld"] / total, "kld": v["kld"], "sqnr_db": v["sqnr_db"]}
            for n, v in ranked[:top_layers]
        ]
        if breakdown:
            p["layers"] = {n: v["kld"] for n, v in item["layers"].items()}
        w = []
        if x < lo_raw / 10 or x > hi_raw * 10:
            w.append(
                f"raw prediction{' x probe factor' if cal.probe else ''} {x:.3g} is outside the calibration's range "
                f"[{lo_raw:.3g}, {hi_raw:.3g}] by more than 10x: the interval is an extrapolation"
            )
        p["warnings"] = w
        warnings.extend(w)
        preds.append(p)
    return {
        "model": lm.name,
        "identity": lm.facts.identity,
        "law": PROFILE_LAW,
        "calibration": {
            "population": pop,
            "form": cal.form,
            "probe": cal.probe,
            "models": cal.models_,
            "n_runs": cal.n_runs_,
            "a": cal.a_,
            "b": cal.b_,
            "q": cal.q_,
        },
        "profile": {
            "path": str(path),
            "computed": computed,
            "seconds": prof.seconds if computed else round(t_profile, 2),
            "profile_seconds_when_computed": prof.seconds,
            "passes": prof.passes,
            "n_tokens": prof.n_tokens,
            "estimator": prof.estimator,
            "probe": None
            if prof.probe is None
            else {
                k: prof.probe[k]
                for k in ("factor", "measured", "raw", "rel_err", "tokens", "seconds", "passes")
            },
        },
        "predictions": preds,
    }


def rank_profile(
    out: dict[str, Any], budget: float | None = None, skipped: dict[str, str] | None = None
) -> dict[str, Any]:
    """Order :func:`predict_model`'s predictions by the one ranking rule of qscale's laws
    (:func:`qscale.laws.predict.rank_key`: least predicted KL first, then fewest bits per weight) and, with a
    ``budget``, add the recommendation of :func:`qscale.laws.predict.recommend`: the fewest bits per weight whose
    upper interval bound is within the budget (ties: the smaller bound). Formats that could not be predicted
    go under ``"skipped"`` as ``[{"format", "reason"}]``, the laws' shape. Returns ``out``, updated."""
    out["predictions"] = sorted(out["predictions"], key=lambda p: (p["value"], p["bits_per_weight"]))
    if budget is not None:
        ok = [p for p in out["predictions"] if p["hi"] <= budget]
        rec = min(ok, key=lambda p: (p["bits_per_weight"], p["hi"])) if ok else None
        out["budget"] = budget
        out["recommended"] = rec["format"] if rec else None
    if skipped:
        out["skipped"] = [{"format": f, "reason": r} for f, r in skipped.items()]
    return out


# ------------------------------------------------------------------------------------------------------
# Validation: the calibration data, leave-one-model-out scores, the shipped calibration
# ------------------------------------------------------------------------------------------------------
def measured_runs(stores: Sequence[str | Path], method: str = "rtn", corpus: str | None = None) -> Any:
    """Every ok run of ``method`` in the stores: model, format, kld, dnll, timings (one row per model x format).

    Of a model's eval corpora, ``corpus`` is used where the model has runs on it (default: the profile's own
    calibration corpus, whose test split the law is calibrated on), else the model's first. Runs whose sweep
    forced the BOS layout (``eval.add_bos`` set, e.g. data/runs_panel.sqlite) are left out: a profile is
    computed in the model's own convention, so it is compared with runs measured in it."""
    import pandas as pd

    from qscale.collect.store import RunStore
    from qscale.measure.sensitivity import CALIBRATION_CORPUS

    corpus = CALIBRATION_CORPUS if corpus is None else corpus

    frames = []
    for s in stores:
        st = RunStore(s, readonly=True)
        df = st.to_frame(status="ok", detail=True)
        df["store"] = str(s)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df = df[df["method"] == method]
    if "eval_add_bos" in df:
        df = df[df["eval_add_bos"].isna()]
    chosen = df.groupby("model")["eval_corpus"].transform(
        lambda c: corpus if (c == corpus).any() else c.iloc[0]
    )
    df = df[df["eval_corpus"] == chosen]
    return df.drop_duplicates(["model", "format"], keep="first")


def raw_predictions(
    df: Any, *, cache: str | Path, profile_dir: str | Path | None = None, log: Callable[[str], None] = print
) -> Any:
    """Add ``raw`` (the profile's uncalibrated KL) to every run of ``df``, computing profiles as needed;
    results are cached in the JSON file ``cache`` keyed by model identity and format."""
    import pandas as pd

    from qscale.lm import load
    from qscale.measure.sensitivity import cached_profile, profile_path

    cache = Path(cache)
    store: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() else {}
    rows = []
    for model, g in df.groupby("model", sort=False):
        lm = key = None
        if model in store:  # an entry of other weights or other profile settings is recomputed whole
            lm = load(model)
            _, _, key = profile_path(lm, cache_dir=profile_dir)
            if store[model].get("profile_key") != key:
                log(f"{model}: cached raw predictions are of another profile; recomputing")
                del store[model]
        need = [f for f in g["format"] if f not in store.get(model, {}).get("raw", {})]
        if model in store and not need:  # the raws are current; the probe may not be (absent, other settings)
            from qscale.measure.probe import default_probe_settings

            lm = lm or load(model)
            if (store[model].get("probe") or {}).get("settings") != default_probe_settings(lm):
                prof, _, _ = cached_profile(lm, cache_dir=profile_dir)
                store[model]["probe"] = prof.probe
                log(f"{model}: noise probe factor {prof.probe_factor:.3f} ({prof.probe['seconds']:.1f} s)")
                cache.write_text(json.dumps(store, indent=1, sort_keys=True))
        if need:
            lm = lm or load(model)
            key = key or profile_path(lm, cache_dir=profile_dir)[2]
            prof, _, computed = cached_profile(lm, cache_dir=profile_dir)
            entry = store.setdefault(model, {"raw": {}, "seconds": {}})
            entry.update(
                identity=lm.facts.identity,
                profile_key=key,
                calibration=prof.settings.get("calibration"),
                profile_seconds=prof.seconds,
                profile_passes=prof.passes,
                profile_tokens=prof.n_tokens,
                n_params=lm.facts.n_params,
                probe=prof.probe,
            )
            log(
                f"{model}: profile {'computed' if computed else 'cached'} ({prof.seconds:.1f} s when computed)"
            )
            for item in format_terms(lm, prof, need):
                entry["raw"][item["format"]] = item["raw"]
                entry["seconds"][item["format"]] = item["seconds"]
                entry.setdefault("top_layer", {})[item["format"]] = max(
                    item["layers"].items(), key=lambda kv: kv[1]["kld"]
                )[0]
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(store, indent=1, sort_keys=True))
            del lm
        entry = store[model]
        probe = entry.get("probe") or {}
        for _, r in g.iterrows():
            rows.append(
                {
                    **r.to_dict(),
                    "raw": entry["raw"].get(r["format"], float("nan")),
                    "probe_factor": probe.get("factor", float("nan")),
                    "probe_s": probe.get("seconds", float("nan")),
                    "predict_s": entry["seconds"].get(r["format"], float("nan")),
                    "profile_s": entry.get("profile_seconds", float("nan")),
                }
            )
    return pd.DataFrame(rows)


def population(model: str) -> str:
    """Which calibration a model gets: ``"zoo"`` for qscale's own tiny models, ``"real"`` for everything else."""
    return "zoo" if str(model).startswith("zoo:") else "real"


def calibration_name(target: str, pop: str) -> str:
    return target if pop == "real" else f"{target}-zoo"


def validate(
    stores: Sequence[str | Path],
    *,
    out_dir: str | Path = "reports",
    models_dir: str | Path | None = None,
    cache: str | Path | None = None,
    ship: bool = False,
    alpha: float = 0.1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Leave-one-model-out validation of the profile law on the stores' RTN runs, per population (real models,
    the tiny zoo) and target (kld, dnll), for each calibration form; the form with the lowest median held-out
    error is chosen. With ``ship`` the chosen forms are fitted on all models of their population and saved to
    ``models/profile-<target>[-zoo].json``. Writes ``<out_dir>/profile_validation.md`` (+ csv, figure). ``cache``
    (default: the repository's ``data/profile_raw.json``) keeps the raw predictions."""
    import numpy as np
    import pandas as pd

    from qscale.laws.profile import FORMS

    if cache is None:
        from qscale.paths import repo_path

        cache = repo_path("data/profile_raw.json", option="--cache")
    df = raw_predictions(measured_runs(stores), cache=cache, log=log)
    df["population"] = [population(m) for m in df["model"]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    chosen: dict[tuple[str, str], tuple[str, bool]] = {}
    for pop, g in df.groupby("population"):
        factors = g.groupby("model")["probe_factor"].first()
        probes = (False, True) if bool(np.isfinite(factors.to_numpy(float)).all()) else (False,)
        for target in ("kld", "dnll"):
            best = None
            for probe in probes:
                for form in FORMS:
                    sc = lomo_scores(g, target=target, alpha=alpha, form=form, probe=probe)
                    if sc.empty or "median_abs_ln_ratio" not in sc:
                        continue
                    sc["population"], sc["target"] = pop, target
                    tables.append(sc)
                    err = float(sc["median_abs_ln_ratio"].median())
                    if best is None or err < best[1]:
                        best = ((form, probe), err)
            if best is None:
                continue
            chosen[(pop, target)] = best[0]
            if ship:
                form, probe = best[0]
                try:
                    cal = ProfileCalibration(target=target, alpha=alpha, form=form, probe=probe).fit(g)
                except LawError as err:
                    log(f"not shipped ({pop}, {target}): {err}")
                    continue
                path = cal.save(calibration_path(calibration_name(target, pop), models_dir))
                log(f"shipped {path} ({pop}, {target}, form {form}{', noise probe' if probe else ''})")
    scores = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    df.to_csv(out / "profile_validation_runs.csv", index=False)
    scores.to_csv(out / "profile_validation_scores.csv", index=False)
    _write_report(df, scores, chosen, out, alpha)
    return {"runs": df, "scores": scores, "chosen": chosen}


def _write_report(df: Any, scores: Any, chosen: dict, out: Path, alpha: float) -> None:
    import numpy as np

    lines = [
        "# The profile law: predicted vs measured KL on models the calibration did not see",
        "",
        "Regenerate: `qscale profile validate --store data/runs_panel_native.sqlite --store data/runs.sqlite --ship`.",
        "`raw` is the profile's uncalibrated second-order prediction 1/(2N) sum F_ij dW_ij^2 (diagonal Fisher from",
        "2,048 calibration tokens of the enwiki train split with labels sampled from the model, RTN weight errors;",
        "no quantized evaluation). `probe` yes: the line reads raw x the model's noise-probe factor instead of raw",
        "(measured / raw KL of Gaussian noise of a known size injected into every profiled weight, measured on",
        "4,096 tokens of the train split: the model's own level; `qscale.measure.probe`). Each model is held out in",
        "turn: the calibration (form `identity`: the predictor itself; `offset`: ln(meas) = a + ln(x); `line`:",
        "ln(meas) = a + b ln(x)) is fitted on the other models of its population (real models / the tiny zoo), and",
        f"the held-out model's runs with measured KL in [1e-3, 3] are scored. Intervals: {1 - alpha:.0%},",
        "split-conformal on the other models' leave-one-out residuals. The form with the lowest median held-out",
        "error is the one shipped.",
        "",
    ]
    if scores is not None and not scores.empty:
        for (pop, target), g in scores.groupby(["population", "target"], sort=False):
            form, probe = chosen.get((pop, target), (None, False))
            lines += [
                f"## {pop} models, target `{target}` (chosen: form `{form}`, probe {'yes' if probe else 'no'})",
                "",
                "| held-out model | form | probe | runs | Spearman | median abs ln(pred/meas) | coverage | "
                "median hi/lo |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for _, r in g.sort_values(["probe", "form", "model"]).iterrows():
                pr = "yes" if r.get("probe") is True else "no"
                if isinstance(r.get("error"), str):
                    lines.append(f"| {r['model']} | {r['form']} | {pr} | | | ({r['error']}) | | |")
                    continue
                sp = "n/a (<3 runs)" if not np.isfinite(r["spearman"]) else f"{r['spearman']:.3f}"
                lines.append(
                    f"| {r['model']} | {r['form']} | {pr} | {int(r['n'])} | {sp} | "
                    f"{r['median_abs_ln_ratio']:.3f} | {r['coverage']:.2f} | {r['median_hi_lo']:.2f} |"
                )
            lines.append("")
    lines += [
        "## Cost (seconds on the 2-core CPU, shared with the collection that measured the runs)",
        "",
        "| model | profile s | noise probe s | probe factor | prediction s / format | "
        "RTN quantize + exact-KL eval s / format | (profile + probe + 30 predictions) / (30 quantize + eval) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, g in df.groupby("model"):
        q = (g["time_quantize_s"] + g["time_eval_s"]).mean() if "time_eval_s" in g else float("nan")
        p = g["predict_s"].mean()
        prof_s = g["profile_s"].iloc[0]
        probe_s = float(g["probe_s"].iloc[0]) if "probe_s" in g else float("nan")
        factor = float(g["probe_factor"].iloc[0]) if "probe_factor" in g else float("nan")
        spent = prof_s + (probe_s if np.isfinite(probe_s) else 0.0) + 30 * p
        ratio = spent / (30 * q) if q and np.isfinite(q) else float("nan")
        lines.append(
            f"| {model} | {prof_s:.1f} | {probe_s:.1f} | {factor:.3f} | {p:.2f} | {q:.1f} | {ratio:.3f} |"
        )
    lines += ["", "![predicted vs measured](profile_validation.png)", ""]
    (out / "profile_validation.md").write_text("\n".join(lines))
    try:
        _plot(df[df["population"] == "real"], out, *chosen.get(("real", "kld"), ("line", False)))
    except Exception as err:  # a missing matplotlib backend must not lose the tables
        (out / "profile_validation.md").write_text("\n".join(lines) + f"\n(figure not drawn: {err})\n")


def _plot(df: Any, out: Path, form: str = "line", probe: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(df["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        others = df[df["model"] != m]
        g = df[(df["model"] == m) & (df["kld"] > 0) & (df["raw"] > 0)]
        try:
            cal = ProfileCalibration(target="kld", form=form, probe=probe).fit(others)
        except LawError:
            ax.set_title(f"{m}\n(no calibration without it)")
            continue
        v, lo, hi = cal.interval(
            g["raw"].to_numpy(float), g["probe_factor"].to_numpy(float) if probe else None
        )
        ax.errorbar(
            g["kld"], v, yerr=[v - lo, hi - v], fmt="o", ms=4, alpha=0.8, label="predicted (90% interval)"
        )
        span = [min(g["kld"].min(), v.min()) / 2, max(g["kld"].max(), v.max()) * 2]
        ax.plot(span, span, "k--", lw=1, label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured KL (nats/token)")
        ax.set_ylabel("predicted KL (nats/token)")
        ax.set_title(f"{m} (held out)", fontsize=9)
        ax.legend(fontsize=7)
        n_bad = int(((df["model"] == m) & ~((df["kld"] > 0) & (df["raw"] > 0))).sum())
        if n_bad:
            ax.text(0.02, 0.02, f"{n_bad} runs with KL <= 0 not drawn", transform=ax.transAxes, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "profile_validation.png", dpi=110)
    plt.close(fig)


__all__ = [
    "PROFILE_LAW",
    "bits_per_weight",
    "calibration_path",
    "format_terms",
    "load_calibration",
    "measured_runs",
    "predict_model",
    "method_terms",
    "profile_correlations",
    "rank_profile",
    "raw_predictions",
    "validate",
]
