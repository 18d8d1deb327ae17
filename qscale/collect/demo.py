"""``qscale demo``: the whole job on the embedded tiny zoo, end to end, on a laptop CPU.

1. train the tiny zoo if it is missing (``qscale.lm.zoo.train_zoo("tiny")``; reused when present);
2. collect ``data/sweeps/demo.yaml`` (15 tiny models x 8 formats, RTN) into the run store;
3. fit laws on every family but one (grouped CV by family, ``qscale.laws``), keeping one family out;
4. predict the held-out family's damage with the shipped law and compare with the measured damage;
5. write the report (``qscale.report``) and say where everything went.

Steps 3-5 use the laws and report layers; a layer that is not available is reported as skipped, so the
collection part of the demo works on its own. Every step is resumable: the zoo and the finished runs are
reused by the next invocation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The family kept out of the demo fit and predicted at the end.
HELD_OUT_FAMILY = "qwen2"


class DemoError(RuntimeError):
    """A demo step that cannot run (with what to do about it)."""


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def ensure_zoo(echo: Callable[[str], None], preset: str = "tiny") -> float:
    """Train the zoo preset's missing models; returns the seconds spent."""
    from qscale.lm.zoo import list_zoo, train_zoo

    missing = [e.name for e in list_zoo(preset=preset) if e.status != "trained"]
    if not missing:
        echo(f"[1/5] zoo: all {preset} models present")
        return 0.0
    echo(f"[1/5] zoo: training {len(missing)} {preset} model(s): {', '.join(missing)}")
    t0 = time.perf_counter()

    def progress(spec: Any, path: Path, seconds: float) -> None:
        echo(f"      {spec.name}: {_fmt_s(seconds)} -> {path}")

    train_zoo(preset, progress=progress)
    return time.perf_counter() - t0


def fit_and_predict(
    store: Path,
    out: Path,
    echo: Callable[[str], None],
    held_out: str = HELD_OUT_FAMILY,
    estimators: str = "all",
) -> dict[str, Any] | None:
    """Fit laws on every family except ``held_out``; predict the held-out family's runs.

    Returns a summary (chosen law, its CV scores, held-out MAE / Spearman / interval coverage) or None
    when the laws layer is not available.
    """
    try:
        import pandas as pd

        from qscale.laws.fitting import FitData, choose, compare_estimators, fit_law, load_fit_data
        from qscale.laws.registry import parse_estimators
    except ImportError as err:
        echo(f"[3/5] laws: skipped, qscale.laws is not available ({err})")
        return None
    data = load_fit_data(runs=store)
    frame = data.frame
    families = sorted(frame["family"].astype(str).unique())
    if held_out not in families:
        held_out = families[-1]
    train = FitData(data.kind, frame[frame["family"] != held_out].reset_index(drop=True), data.source)
    test = frame[frame["family"] == held_out].reset_index(drop=True)
    names = parse_estimators(estimators, data.kind)
    echo(f"[3/5] laws: {len(names)} estimators, leave-one-family-out CV on {len(train.frame)} runs "
         f"({len(families) - 1} families; {held_out} held out)")  # fmt: skip
    scores = compare_estimators(train, names, ("family",))
    preset = choose(scores, "family")
    models_dir = out / "models"
    law = fit_law(train, preset, f"demo-{preset}", "family", scores=scores, models_dir=models_dir)
    best = scores[(scores["estimator"] == preset) & (scores["scheme"] == "family")].iloc[0]
    echo(f"      chosen: {preset} (CV MAE {best['mae']:.4g} nats/token) -> {models_dir / law.name}")

    est = law.estimator
    pred = pd.Series(est.predict(test), index=test.index, dtype=float)
    summary: dict[str, Any] = {
        "law": law.name,
        "preset": preset,
        "cv": {k: float(best[k]) for k in ("mae", "rmse", "spearman") if k in best and pd.notna(best[k])},
        "held_out": held_out,
        "n_held_out": int(len(test)),
    }
    err = (pred - test["dnll"]).abs()
    summary["held_out_mae"] = float(err.mean())
    summary["held_out_spearman"] = float(pred.corr(test["dnll"], method="spearman"))
    try:
        iv = est.predict_interval(test)
        lo, hi = iv.iloc[:, -2].to_numpy(), iv.iloc[:, -1].to_numpy()
        summary["held_out_coverage"] = float(((test["dnll"] >= lo) & (test["dnll"] <= hi)).mean())
    except Exception:  # an estimator without intervals
        pass
    table = test[["model", "format", "bits_per_element", "dnll"]].assign(predicted=pred.to_numpy())
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "held_out_predictions.csv", index=False)
    summary["predictions"] = str(out / "held_out_predictions.csv")
    echo(f"[4/5] predict {held_out} (never seen in fitting): MAE {summary['held_out_mae']:.4g} nats/token, "
         f"Spearman {summary['held_out_spearman']:.3f} over {len(test)} runs -> {summary['predictions']}")  # fmt: skip
    if "held_out_coverage" in summary and not math.isnan(summary["held_out_coverage"]):
        echo(f"      interval coverage on {held_out}: {summary['held_out_coverage']:.0%}")
    return summary


def write_report(store: Path, out: Path, echo: Callable[[str], None], estimators: str = "all") -> Path | None:
    """The report from ``qscale.report.write_report`` (runs table, laws under CV, figures), or None."""
    try:
        from qscale.report import write_report as _write_report
    except ImportError as err:
        echo(f"[5/5] report: skipped, qscale.report is not available ({err})")
        return None
    path = _write_report(runs=store, out=out / "report", models_dir=out / "models", estimators=estimators)
    echo(f"[5/5] report -> {path}")
    return Path(path) if path is not None else None


def run_demo(
    store: Path,
    spec_path: Path,
    out: Path,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    estimators: str = "all",
) -> dict[str, Any]:
    """Run the five demo steps; returns a summary with the measured timings.

    ``estimators``: law presets compared ("all" or a comma list, see ``qscale fit --help``).
    """
    from qscale.collect.runner import collect
    from qscale.collect.spec import SpecError, load_spec
    from qscale.collect.store import RunStore

    t0 = time.perf_counter()
    summary: dict[str, Any] = {"store": str(store), "out": str(out)}
    summary["zoo_s"] = ensure_zoo(echo)
    try:
        spec = load_spec(spec_path)
    except SpecError as err:
        raise DemoError(str(err)) from None
    with RunStore(store) as st:
        echo(f"[2/5] collect {spec_path} into {store}")
        res = collect(spec, st, progress=progress)
        counts = st.counts()
    summary["collect"] = {
        "planned": res.n_planned, "ok": res.n_ok, "error": res.n_error, "skipped": res.n_skipped,
        "seconds": res.seconds, "runs_per_min": res.runs_per_min,
    }  # fmt: skip
    echo(f"      {res.n_ok} runs measured, {res.n_skipped} already there, {res.n_error} failed, "
         f"in {_fmt_s(res.seconds)}; store: {counts.get('ok', 0)} ok runs")  # fmt: skip
    if res.stopped:
        raise DemoError("collection interrupted; run `qscale demo` again to continue")
    if counts.get("ok", 0) == 0:
        raise DemoError(f"no finished runs in {store}; see `qscale runs list --store {store}`")
    summary["failed"] = []
    try:
        summary["laws"] = fit_and_predict(store, out, echo, estimators=estimators)
    except Exception as err:  # the collected data stays; say what broke
        summary["failed"].append(f"laws: {type(err).__name__}: {err}")
        echo(f"[3/5] laws: FAILED ({type(err).__name__}: {err})")
    try:
        summary["report"] = str(write_report(store, out, echo, estimators=estimators))
    except Exception as err:
        summary["failed"].append(f"report: {type(err).__name__}: {err}")
        echo(f"[5/5] report: FAILED ({type(err).__name__}: {err})")
    summary["total_s"] = time.perf_counter() - t0
    echo(f"done in {_fmt_s(summary['total_s'])}: runs in {store}, laws and predictions in {out}")
    return summary
