"""The job loop for one model: load once, evaluate float once, then every (format, method, calibration).

:func:`collect_model` is what both backends run: the local backend in-process (rows go straight to the
store), the Ray backend inside one task per model (rows are returned to the driver, the single writer).

Per model::

    lm = load(ref)                                  # once
    for each eval setting:   windows, float reference outputs (for KLD), float metrics   # once
                             model-level features                                        # once
    for each format:         model-format features on the float weights                  # once
        for each method x calibration:
            with quantized(model, fmt, method, params, calib):   evaluate -> one row
            # weights restored bit-exactly on exit; nothing is reloaded

A failing run becomes an ``"error"`` row (with the error text) and the loop goes on; the model is
restored by the ``quantized`` context even then.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from qscale.collect.spec import CalibrationSpec, EvalSpec, PlannedRun


def model_signature(model_ref: str) -> str | None:
    """A cheap fingerprint of a model's files (names, sizes, mtimes), or None when it cannot be resolved.

    Used with the store's model cache to skip a finished model without loading it: a changed file
    changes the signature and forces a load (and the identity check that goes with it).
    """
    try:
        if model_ref.startswith("zoo:"):
            from qscale.lm.loading import resolve_zoo

            path = resolve_zoo(model_ref[4:])
        elif model_ref.startswith("panel:"):
            from qscale.lm.panel import resolve_panel

            path = resolve_panel(model_ref[6:])
        else:
            path = Path(model_ref).expanduser()
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    except Exception:
        return None
    parts = [f"{path.resolve()}"]
    for f in files:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def format_info(fmt: Any) -> dict[str, Any]:
    """The format facts stored with a run (bits per element incl. scale overhead, element bits, family)."""
    return {
        "bits_per_element": float(fmt.bits_per_element),
        "element_bits": int(fmt.element_bits),
        "family": str(fmt.family),
    }


def _deltas(float_m: dict[str, Any], q: dict[str, Any]) -> dict[str, Any]:
    out = {
        "float_nll": float(float_m["nll"]),
        "float_ppl": float(float_m["ppl"]),
        "float_bpb": float(float_m["bpb"]),
        "nll": float(q["nll"]),
        "ppl": float(q["ppl"]),
        "bpb": float(q["bpb"]),
        "kld": float(q["kld"]) if q.get("kld") is not None else math.nan,
        "top1": float(q["top1_agreement"]),
        "n_tokens": int(q.get("n_tokens", 0)),
        "n_bytes": int(q.get("n_bytes", 0)),
        "kld_top_k": q.get("kld_top_k"),
        "bos": bool(q["bos"]) if q.get("bos") is not None else None,  # did the windows start with BOS
    }
    out["dnll"] = out["nll"] - out["float_nll"]
    out["dppl"] = out["ppl"] - out["float_ppl"]
    out["dbpb"] = out["bpb"] - out["float_bpb"]
    return out


def _method_summary(info: dict[str, Any]) -> dict[str, Any]:
    """The small, JSON-able part of a method's info dict (per-layer tables are left out)."""
    out: dict[str, Any] = {}
    for k, v in info.items():
        if k == "layers":
            continue
        if (
            isinstance(v, bool | int | float | str)
            or v is None
            or isinstance(v, dict | list)
            and len(str(v)) < 2000
        ):
            out[k] = v
    return out


class _FloatState:
    """Per (model, eval setting): windows, float reference outputs, float metrics, model features."""

    def __init__(
        self, windows: Any, reference: Any, metrics: dict[str, Any], features: dict[str, float], t: float
    ):
        self.windows = windows
        self.reference = reference
        self.metrics = metrics
        self.features = features
        self.seconds = t


def collect_model(
    model_ref: str,
    runs: Sequence[PlannedRun],
    features: Sequence[str] = (),
    *,
    skip_keys: Collection[str] = frozenset(),
    on_row: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool] = lambda: False,
    device: str = "cpu",
    provenance: dict[str, Any] | None = None,
    feature_calibration: CalibrationSpec | None = None,
) -> dict[str, Any]:
    """Measure ``runs`` (all of model ``model_ref``), calling ``on_row(row)`` after each finished run.

    Runs whose key is in ``skip_keys`` are not measured. ``feature_calibration`` gives the calibration
    tokens (``ctx.calib``) of the features that depend on it (setting "calibration"). Returns a summary:
    ``model_ref``, ``identity``, ``facts``, ``signature``, ``n_done``, ``n_skipped``, ``n_error``,
    ``stopped`` and ``load_s``.
    """
    import torch

    from qscale.collect.provenance import provenance as _prov
    from qscale.corpora import get_windows
    from qscale.corpora.calibration import calibration_from_record
    from qscale.features import FORMAT_LEVELS, float_eval_key, get_feature
    from qscale.features import compute_features as _features
    from qscale.formats import get_format
    from qscale.lm.loading import load
    from qscale.measure import evaluate_windows, reference_outputs
    from qscale.measure.eval import reference_metrics
    from qscale.quantize import quantized

    prov = provenance or _prov(device)
    summary: dict[str, Any] = {
        "model_ref": model_ref,
        "identity": None,
        "facts": None,
        "signature": model_signature(model_ref),
        "n_done": 0,
        "n_skipped": 0,
        "n_error": 0,
        "stopped": False,
        "load_s": 0.0,
    }
    model_features = [n for n in features if get_feature(n).level == "model"]
    format_features = [n for n in features if get_feature(n).level in FORMAT_LEVELS]
    # Features that depend on the calibration setting get the sweep's first calibration batch as ctx.calib.
    needs_calib = feature_calibration is not None and any(
        "calibration" in get_feature(n).settings for n in features
    )

    # Eager attention only where double backward is needed (HVP features); SDPA is faster on CPU and GPU
    # and gives the same logits to fp32 rounding.
    attn = "eager" if any(get_feature(n).cost == "hvp" for n in features) else "sdpa"
    t0 = time.perf_counter()
    try:
        lm = load(model_ref, device=device, attn_implementation=attn)
    except Exception as err:
        # No identity without the weights: key the error rows on the reference, so they are visible
        # in `qscale runs list`; the model is tried again on the next invocation.
        text = f"load failed: {type(err).__name__}: {err}"
        for run in runs:
            if should_stop():
                summary["stopped"] = True
                break
            config = run.config(f"unloaded:{model_ref}")
            on_row(
                _row(
                    run,
                    run.key(f"unloaded:{model_ref}"),
                    config,
                    model_ref,
                    None,
                    {},
                    None,
                    {},
                    {},
                    {},
                    prov,
                    text,
                )
            )
            summary["n_error"] += 1
        return summary
    load_s = time.perf_counter() - t0
    summary["load_s"] = load_s
    facts = lm.facts.to_dict()
    summary["identity"] = lm.facts.identity
    summary["facts"] = facts
    identity = lm.facts.identity

    pending = []
    for run in runs:
        key = run.key(identity)
        if key in skip_keys:
            summary["n_skipped"] += 1
        else:
            pending.append((run, key))

    float_states: dict[EvalSpec, _FloatState] = {}
    calib_cache: dict[CalibrationSpec, Any] = {}
    fmt_cache: dict[str, tuple[Any, dict[str, float], float]] = {}
    feature_cache: dict[str, Any] = {}

    def float_state(ev: EvalSpec) -> _FloatState:
        if ev not in float_states:
            t = time.perf_counter()
            windows = get_windows(lm.tokenizer, **ev.window_kwargs())
            with torch.no_grad():
                reference = reference_outputs(lm.model, windows, batch_size=ev.batch_size, progress=False)
            metrics = reference_metrics(reference)  # the float NLL/bpb come from the same pass
            feature_cache[float_eval_key(ev.window_kwargs())] = metrics
            calib = calib_for(feature_calibration) if needs_calib else None
            feats = _features(
                lm, None, model_features, calib=calib, eval=ev.window_kwargs(), cache=feature_cache
            )
            float_states[ev] = _FloatState(windows, reference, metrics, feats, time.perf_counter() - t)
        return float_states[ev]

    def calib_for(spec: CalibrationSpec) -> Any:
        if spec not in calib_cache:
            calib_cache[spec] = calibration_from_record(lm.tokenizer, spec.to_dict())
        return calib_cache[spec]

    def fmt_state(spec: str, ev: EvalSpec) -> tuple[Any, dict[str, float], float]:
        if spec not in fmt_cache:
            t = time.perf_counter()
            fmt = get_format(spec)
            calib = calib_for(feature_calibration) if needs_calib else None
            feats = _features(
                lm, fmt, format_features, calib=calib, eval=ev.window_kwargs(), cache=feature_cache
            )
            fmt_cache[spec] = (fmt, feats, time.perf_counter() - t)
        return fmt_cache[spec]

    for run, key in pending:
        if should_stop():
            summary["stopped"] = True
            break
        config = run.config(identity)
        timings: dict[str, float] = {"load_s": load_s}
        t_run = time.perf_counter()
        finfo: dict[str, Any] | None = None
        feats: dict[str, float] = {}
        try:
            fs = float_state(run.eval)
            timings["float_s"] = fs.seconds
            fmt, ffeats, fmt_s = fmt_state(run.format, run.eval)
            timings["format_features_s"] = fmt_s
            finfo = format_info(fmt)
            feats = {**fs.features, **ffeats}
            calib = calib_for(run.calibration) if run.calibration is not None else None
            t = time.perf_counter()
            with quantized(lm.model, fmt, method=run.method, calib=calib) as info:
                timings["quantize_s"] = time.perf_counter() - t
                t = time.perf_counter()
                with torch.no_grad():
                    q = evaluate_windows(
                        lm.model,
                        fs.windows,
                        reference=fs.reference,
                        batch_size=run.eval.batch_size,
                        progress=False,
                    )
                timings["eval_s"] = time.perf_counter() - t
            metrics = _deltas(fs.metrics, q)
            if isinstance(info.get("sqnr_db"), int | float):
                metrics["method_sqnr_db"] = float(info["sqnr_db"])
            metrics["method_info"] = _method_summary(info)
            layer_sqnr = {
                name: round(float(v["sqnr_db"]), 4)
                for name, v in (info.get("layers") or {}).items()
                if isinstance(v, dict) and isinstance(v.get("sqnr_db"), int | float)
            }
            if layer_sqnr:
                metrics["layer_sqnr_db"] = layer_sqnr
            timings["run_s"] = time.perf_counter() - t_run
            on_row(
                _row(run, key, config, lm.name, identity, facts, finfo, metrics, feats, timings, prov, None)
            )
            summary["n_done"] += 1
        except KeyboardInterrupt:
            raise
        except Exception as err:
            timings["run_s"] = time.perf_counter() - t_run
            text = f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exc(limit=6))
            on_row(_row(run, key, config, lm.name, identity, facts, finfo, {}, feats, timings, prov, text))
            summary["n_error"] += 1
    return summary


def _row(
    run: PlannedRun,
    key: str,
    config: dict[str, Any],
    model_name: str,
    identity: str | None,
    facts: dict[str, Any],
    finfo: dict[str, Any] | None,
    metrics: dict[str, Any],
    features: dict[str, float],
    timings: dict[str, float],
    prov: dict[str, Any],
    error: str | None,
) -> dict[str, Any]:
    return {
        "run_key": key,
        "status": "ok" if error is None else "error",
        "model": model_name,
        "model_ref": run.model,
        "model_identity": identity,
        "format": run.format,
        "method": run.method.name,
        "config": config,
        "facts": facts,
        "format_info": finfo,
        "metrics": metrics,
        "features": features,
        "timings": timings,
        "provenance": prov,
        "error": error,
    }
