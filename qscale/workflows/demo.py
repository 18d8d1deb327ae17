"""``qscale demo``: the whole job, measured for real, in its own folder, every figure beside its baseline.

The demo is a thin adapter over the existing steps; it owns no fitting, prediction or planning code:

1. train the tiny zoo if it is missing (:func:`qscale.collect.demo.ensure_zoo`);
2. collect ``data/sweeps/demo_zoo.yaml`` (tiny zoo x 8 formats, RTN; a lean cut of ``demo.yaml``) into the demo's own run store
   (``OUT/runs.sqlite``; :func:`qscale.collect.demo.collect_into`, finished runs reused);
3. compare the law presets by leave-one-family-out CV on every family but one and fit the chosen law
   (:mod:`qscale.laws.fitting`), saving it under ``OUT/models``;
4. predict the held-out family and score it with :func:`qscale.laws.cv.metrics`, beside two baselines fitted
   on the same training rows: the ``bits-only`` law and the training mean;
5. print the ``qscale report`` command that writes the laws report of these runs and laws into ``OUT/report``
   (the report layer sits above the workflows, so the demo names the command instead of calling it);
6. the user's question on a real model (when the panel is built, or with ``--real``): the profile law's
   predicted KL (:func:`qscale.workflows.profile.predict_model`) against the measured exact KL of the formats in
   ``data/sweeps/demo_real.yaml`` (collected like ``qscale collect``, into ``OUT/runs-real.sqlite``), and a
   mixed-precision plan at a bits budget (:func:`qscale.workflows.plan.plan_model`) with its predicted KL, then
   measured like ``qscale eval --plan`` beside the best measured uniform format within the budget.

Nothing is written outside ``OUT`` except the zoo (``$QSCALE_ZOO_DIR``) and, with ``--real``, the panel
(``$QSCALE_PANEL_DIR``); the repository's tracked ``data/``, ``models/`` and ``reports/`` are only read. A second
invocation on the same ``OUT`` reuses every finished run, the sensitivity profile and the measured plan.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qscale.collect.demo import DemoError, collect_into, ensure_zoo, fmt_s
from qscale.paths import project_root, repo_path

__all__ = ["DEFAULT_OUT", "DemoError", "run_demo"]

#: The repository's tracked folders: the demo reads them and never writes into them.
TRACKED = ("data", "models", "reports")
DEFAULT_OUT = Path("qscale-demo")


def zoo_spec_path() -> Path:
    """The demo's zoo sweep, ``data/sweeps/demo_zoo.yaml`` of the project root (:mod:`qscale.paths`)."""
    return repo_path("data/sweeps/demo_zoo.yaml", option="--spec")


def real_spec_path() -> Path:
    """The demo's real-model sweep, ``data/sweeps/demo_real.yaml`` of the project root."""
    return repo_path("data/sweeps/demo_real.yaml", option="--real-spec")


#: The family kept out of the demo fit and predicted at the end.
HELD_OUT_FAMILY = "qwen2"
#: The damage the demo's laws predict: KL to the float model, what the real-model step predicts too (the tiny
#: zoo's dnll carries a first-order term that is noise on these under-trained models).
TARGET = "kld"
#: The baseline law always scored beside the chosen one.
BASELINE = "bits-only"
#: Plan candidates (those of reports/plans.md) and the default budget in bits per weight.
PLAN_CANDIDATES = ("int3-g128", "int4-g128", "nf4-g64", "int5-pc", "fp6-e2m3-pc", "int8-pc")
PLAN_BPW = 4.5
MARKER = "qscale-demo.json"
STEPS = 6


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the zoo trainer's workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _step(i: int) -> str:
    return f"[{i}/{STEPS}]"


def _g(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"


# ------------------------------------------------------------------------------------------------------
# The output folder
# ------------------------------------------------------------------------------------------------------
def check_out(out: Path) -> Path:
    """``out`` resolved; refuses the repository's tracked folders and a non-empty folder that is not a demo's."""
    res = out.expanduser().resolve()
    repo = project_root()
    for name in TRACKED if repo is not None else ():
        top = repo.resolve() / name
        if res == top or top in res.parents:
            raise DemoError(
                f"--out {out} is inside the repository's tracked {name}/; give a folder of its own"
            )
    if repo is not None and res == repo.resolve():
        raise DemoError(
            f"--out {out} is the repository itself; give a folder of its own (default {DEFAULT_OUT})"
        )
    if res.exists() and not res.is_dir():
        raise DemoError(f"--out {out} is a file; give a folder")
    if res.is_dir() and any(res.iterdir()) and not (res / MARKER).is_file():
        raise DemoError(f"--out {out} is a non-empty folder that `qscale demo` did not make; give a new one")
    return res


def check_inputs(zoo_spec: Path, real_spec: Path | None, plan_bpw: float | None, estimators: str) -> None:
    """The user's inputs, checked before minutes of work: both sweeps, the bits budget, the law presets."""
    from qscale.collect.spec import SpecError, load_spec
    from qscale.laws.estimators import LawError
    from qscale.laws.registry import parse_estimators

    for path in (zoo_spec, real_spec):
        if path is None:
            continue
        try:
            load_spec(path)
        except SpecError as err:
            raise DemoError(_one_line(str(err))) from None
    if plan_bpw is not None and not (0 < plan_bpw <= 32):
        raise DemoError(f"--plan-bpw must be in (0, 32] bits per weight, got {plan_bpw:g}")
    try:
        parse_estimators(estimators, "zoo")
    except LawError as err:
        raise DemoError(f"--estimators: {err}") from None


def _one_line(msg: str) -> str:
    return "; ".join(part.strip() for part in msg.splitlines() if part.strip()).replace(":;", ":")


# ------------------------------------------------------------------------------------------------------
# Steps 3-4: fit on every family but one, score the held-out family beside the baselines
# ------------------------------------------------------------------------------------------------------
def _scored(test: Any, target: str, mcol: str, pred: Any, lo: Any, hi: Any) -> dict[str, float]:
    from qscale.laws.cv import metrics

    part = test[[mcol, target]].assign(pred=pred, lo=lo, hi=hi)
    return metrics(part, target, by=mcol)


def _law_rows(law: Any, frame: Any, alpha: float) -> tuple[Any, Any]:
    """The rows of ``frame`` the law can predict (its features present) and its prediction frame on them."""
    est = law.estimator
    ok = frame[list(est.features_)].notna().all(axis=1)
    rows = frame.loc[ok]
    return rows, est.predict_interval(rows, alpha=alpha)


def _mean_cv_mae(train: Any, target: str, gcol: str) -> float:
    """Leave-one-group-out MAE of predicting the mean of the other groups (the CV score of the mean)."""
    import numpy as np

    errs = []
    for g, sub in train.groupby(gcol):
        rest = train.loc[train[gcol] != g, target]
        errs.append(np.abs(sub[target].to_numpy(float) - float(rest.mean())))
    return float(np.mean(np.concatenate(errs))) if errs else float("nan")


def fit_and_score(
    store: Path,
    out: Path,
    echo: Callable[[str], None],
    held_out: str = HELD_OUT_FAMILY,
    estimators: str = "all",
    target: str | None = TARGET,
    alpha: float = 0.1,
) -> dict[str, Any]:
    """Fit laws on every family except ``held_out`` and score the held-out family beside the baselines."""
    import numpy as np

    from qscale.laws.cv import group_column, model_column
    from qscale.laws.estimators import LawError
    from qscale.laws.fitting import FitData, choose, compare_estimators, fit_law, load_fit_data
    from qscale.laws.registry import parse_estimators

    try:
        data = load_fit_data(runs=store, target=target)
        names = parse_estimators(estimators, data.kind)
    except LawError as err:
        raise DemoError(str(err)) from None
    frame = data.frame
    families = sorted(frame["family"].astype(str).unique())
    if held_out not in families:
        raise DemoError(
            f"held-out family {held_out!r} has no finished runs in {store}; families: {', '.join(families)}"
        )
    if len(families) < 3:
        raise DemoError(
            f"{store}: {len(families)} families; the demo needs at least 3 (2 to fit, 1 held out)"
        )
    train = FitData(
        data.kind, frame[frame["family"] != held_out].reset_index(drop=True), data.source, data.target
    )
    test = frame[frame["family"] == held_out].reset_index(drop=True)
    if BASELINE not in names:
        names = [*names, BASELINE]
    gcol, mcol = group_column(train.frame, "family"), model_column(frame)
    t0 = time.perf_counter()
    echo(f"{_step(3)} laws: {len(names)} presets, leave-one-family-out CV on {len(train.frame)} runs "
         f"({len(families) - 1} families; {held_out} held out)")  # fmt: skip
    scores = compare_estimators(train, names, ("family",), alpha=alpha)
    preset = choose(scores, "family")
    models_dir = out / "models"
    law = fit_law(train, preset, f"demo-{preset}", "family", scores=scores, models_dir=models_dir)
    base = law if preset == BASELINE else fit_law(train, BASELINE, f"demo-{BASELINE}", "family", scores=scores,
                                                  models_dir=models_dir)  # fmt: skip
    tgt = law.estimator.target
    fit_s = time.perf_counter() - t0

    def cv_of(p: str) -> dict[str, float]:
        row = scores[(scores["estimator"] == p) & (scores["scheme"] == "family")].iloc[0]
        return {
            k: float(row[k]) for k in ("n", "mae", "spearman", "coverage") if k in row and row[k] == row[k]
        }

    rows, pi = _law_rows(law, test, alpha)
    brows, bpi = _law_rows(base, rows, alpha)
    if len(brows) != len(rows):
        raise DemoError(f"the {BASELINE} baseline cannot predict every held-out run the chosen law predicts")
    mean = float(train.frame[tgt].mean())
    qlo, qhi = (float(v) for v in np.quantile(train.frame[tgt].to_numpy(float), [alpha / 2, 1 - alpha / 2]))
    n = len(rows)
    table = {
        f"{preset} (chosen)": {"cv": cv_of(preset), "held_out": _scored(rows, tgt, mcol, pi["pred"].to_numpy(),
                                                                      pi["lo"].to_numpy(), pi["hi"].to_numpy())},
        f"{BASELINE} baseline": {"cv": cv_of(BASELINE), "held_out": _scored(rows, tgt, mcol, bpi["pred"].to_numpy(),
                                                                          bpi["lo"].to_numpy(), bpi["hi"].to_numpy())},
        "training mean": {"cv": {"mae": _mean_cv_mae(train.frame, tgt, gcol)},
                          "held_out": _scored(rows, tgt, mcol, np.full(n, mean), np.full(n, qlo), np.full(n, qhi))},
    }  # fmt: skip
    if preset == BASELINE:
        del table[f"{BASELINE} baseline"]
    n_models = rows[mcol].nunique()
    also = (
        "it is the baseline too" if preset == BASELINE else f"baseline {BASELINE} -> {models_dir / base.name}"
    )
    echo(f"      chosen by CV MAE: {preset} -> {models_dir / law.name} ({also})")
    models_txt = f"{n_models} model{'s' if n_models != 1 else ''}"
    echo(f"{_step(4)} predict the held-out family {held_out} ({models_txt}, {n} runs, never seen in fitting); "
         f"target {tgt}, nats/token")  # fmt: skip
    echo(
        f"      {'':26s} {'CV MAE':>10s} {'held-out MAE':>13s} {'Spearman in model':>18s} {f'{1 - alpha:.0%} cover':>10s}"
    )
    for label, r in table.items():
        h = r["held_out"]
        rho = "n/a (const)" if label == "training mean" else _g(h["spearman"])
        echo(f"      {label:26s} {_g(r['cv'].get('mae'), 4):>10s} {_g(h['mae'], 4):>13s} {rho:>18s} "
             f"{h['coverage']:>10.0%}")  # fmt: skip
    chosen = table[f"{preset} (chosen)"]["held_out"]["mae"]
    ratios = [f"{chosen / r['held_out']['mae']:.2f}x the {label.split(' (')[0]}'s" for label, r in table.items()
              if "(chosen)" not in label and r["held_out"]["mae"] > 0]  # fmt: skip
    if ratios:
        echo(f"      held-out MAE of {preset}: {' and '.join(ratios)}")
    csv = out / "held_out_predictions.csv"
    keep = [c for c in (mcol, "format", "bits_per_element", tgt) if c in rows.columns]
    rows[keep].assign(
        predicted=pi["pred"].to_numpy(), lo=pi["lo"].to_numpy(), hi=pi["hi"].to_numpy(),
        bits_only=bpi["pred"].to_numpy(), training_mean=mean,
    ).to_csv(csv, index=False)  # fmt: skip
    echo(f"      per run: {csv}")
    return {
        "target": tgt,
        "unit": "nats/token",
        "held_out": held_out,
        "n_held_out": n,
        "n_train": int(len(train.frame)),
        "train_families": [f for f in families if f != held_out],
        "chosen": preset,
        "law": str(models_dir / law.name),
        "table": table,
        "predictions": str(csv),
        "seconds": fit_s,
    }


def report_command(store: Path, out: Path, estimators: str = "all") -> str:
    """The ``qscale report`` command line that writes the laws report of the demo's runs and laws into ``OUT``."""
    import shlex

    args = ["qscale", "report", "--runs", str(store), "--models-dir", str(out / "models"), "--out",
            str(out / "report"), "--no-panel", "--no-public"]  # fmt: skip
    if estimators != "all":
        args += ["--estimator", estimators]
    return shlex.join(args)


# ------------------------------------------------------------------------------------------------------
# Step 6: the user's question on a real model
# ------------------------------------------------------------------------------------------------------
def _real_model_ready(model: str, build: bool | None, echo: Callable[[str], None]) -> bool:
    """Whether ``model`` can be loaded; with ``build`` a missing panel model is built (or a clear error)."""
    if not model.startswith("panel:"):
        return True
    from qscale.lm.loading import LoadError
    from qscale.lm.panel import get_entry, resolve_panel

    name = model.split(":", 1)[1]
    try:
        resolve_panel(name)
        return True
    except LoadError as err:
        if not build:
            how = (
                ""
                if build is False
                else f" or run `qscale demo --real` (builds {get_entry(name).packages_str})"
            )
            echo(f"{_step(6)} real model: skipped, {model} is not built: `qscale panel build {name}` "
                 f"(about 3 min){how}")  # fmt: skip
            return False
        first_error = str(err)
    from qscale.lm.panel import build_panel

    echo(f"{_step(6)} real model: building {model} (`qscale panel build {name}`)")
    try:
        build_panel([name], log=lambda m: echo(f"      {m}"))
    except Exception as err:  # no registry reachable, a digest mismatch, ...: say what to run
        raise DemoError(f"could not build {model} ({type(err).__name__}: {err}); run `qscale panel build {name}` "
                        f"and then `qscale demo` again ({first_error.split('.')[0]})") from None  # fmt: skip
    return True


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman of ``a`` against ``b`` by :func:`qscale.laws.cv.spearman_within` (NaN under 3 points or constant)."""
    import pandas as pd

    from qscale.laws.cv import spearman_within

    return spearman_within(pd.DataFrame({"a": a, "b": b, "g": 0}), "a", "b", "g")


def _measure_plan(lm: Any, plan: dict[str, Any], ev: Any, cache: Path) -> dict[str, Any]:
    """The plan's measured KL on the demo's windows, exactly as ``qscale eval --plan`` does (cached by content)."""
    from qscale.corpora import get_windows
    from qscale.corpora.windows import model_adds_bos
    from qscale.measure import evaluate_windows, reference_outputs
    from qscale.quantize import quantized

    bos = ev.add_bos if ev.add_bos is not None else model_adds_bos(lm.tokenizer)
    key = hashlib.sha256(
        json.dumps([lm.facts.identity, plan["layers"], ev.window_kwargs(), bos], sort_keys=True).encode()
    ).hexdigest()
    if cache.is_file():
        try:
            got = json.loads(cache.read_text())
            if got.get("key") == key:
                return {**got["measured"], "reused": True}
        except (OSError, ValueError, KeyError):
            pass
    t0 = time.perf_counter()
    windows = get_windows(lm.tokenizer, **ev.window_kwargs())
    ref = reference_outputs(lm.model, windows, batch_size=ev.batch_size, progress=False)
    with quantized(lm.model, plan["layers"], method="rtn"):
        q = evaluate_windows(lm.model, windows, reference=ref, batch_size=ev.batch_size, progress=False)
    measured = {
        "kld": float(q["kld"]),
        "dnll": float(q["dnll"]),
        "kld_top_k": q.get("kld_top_k"),
        "n_tokens": int(q["n_tokens"]),
        "seconds": time.perf_counter() - t0,
    }
    cache.write_text(json.dumps({"key": key, "measured": measured}, indent=1) + "\n")
    return {**measured, "reused": False}


def real_model(
    out: Path,
    spec_path: Path,
    echo: Callable[[str], None],
    *,
    build: bool | None = None,
    plan_bpw: float | None = PLAN_BPW,
    measure_plan: bool = True,
    progress: bool = False,
    alpha: float = 0.1,
) -> dict[str, Any] | None:
    """Predicted (profile law) vs measured KL of the spec's formats on its model, and a plan at ``plan_bpw``."""
    from qscale.collect.spec import SpecError, load_spec
    from qscale.collect.store import RunStore

    try:
        spec = load_spec(spec_path)
    except SpecError as err:
        raise DemoError(_one_line(str(err))) from None
    if len(spec.models) != 1 or len(spec.evals) != 1:
        raise DemoError(f"{spec_path}: the real-model sweep needs exactly one model and one eval, "
                        f"got {len(spec.models)} and {len(spec.evals)}")  # fmt: skip
    model, ev = spec.models[0], spec.evals[0]
    if not _real_model_ready(model, build, echo):
        return None
    t0 = time.perf_counter()
    echo(f"{_step(6)} real model {model}: the profile law's prediction vs measurement "
         f"({ev.corpus} {ev.split}, {ev.protocol} {ev.seq_len}-token windows, {ev.max_tokens} tokens, exact KL)")  # fmt: skip
    store = out / "runs-real.sqlite"
    col = collect_into(spec_path, store, echo, "     ", progress=progress)
    with RunStore(store, readonly=True) as st:
        frame = st.to_frame()
    frame = frame[(frame["status"] == "ok") & (frame["model"] == model)]
    measured = {str(r.format): float(r.kld) for r in frame.itertuples()}

    from qscale.lm import load
    from qscale.workflows.plan import plan_model, save_plan
    from qscale.workflows.profile import predict_model

    lm = load(model)
    profiles = out / "profiles"
    pred = predict_model(lm, list(spec.formats), alpha=alpha, profile_dir=profiles)
    prof = pred["profile"]
    echo(f"      sensitivity profile: {'computed' if prof['computed'] else 'reused'} "
         f"({prof['n_tokens']} tokens, {prof['seconds']:.0f} s) -> {prof['path']}")  # fmt: skip
    cal = pred["calibration"]
    form = "identity: prediction = the raw second-order sum, no fitted constant" if cal["form"] == "identity" else (
        f"{cal['form']}, fitted")  # fmt: skip
    among = "this model among them" if lm.name in cal["models"] else "this model not among them"
    echo(f"      calibration {form}; {1 - alpha:.0%} interval from the leave-one-model-out residuals of "
         f"{len(cal['models'])} models ({among}); no quantized evaluation in the prediction")  # fmt: skip
    echo(f"      {'format':16s} {'bpw':>6s} {'predicted KL':>13s} {f'{1 - alpha:.0%} interval':>20s} "
         f"{'measured KL':>12s} {'pred/meas':>9s}")  # fmt: skip
    rows = []
    for p in pred["predictions"]:
        m = measured.get(p["format"], float("nan"))
        inside = p["lo"] <= m <= p["hi"]
        iv = f"[{p['lo']:.3g}, {p['hi']:.3g}]"
        rows.append({"format": p["format"], "bits_per_weight": p["bits_per_weight"], "predicted": p["value"],
                     "lo": p["lo"], "hi": p["hi"], "measured": m, "inside": bool(inside)})  # fmt: skip
        echo(f"      {p['format']:16s} {p['bits_per_weight']:6.3f} {p['value']:13.4g} "
             f"{iv:>20s} {m:12.4g} {p['value'] / m if m > 0 else float('nan'):9.2f}")  # fmt: skip
    ok = [r for r in rows if r["measured"] > 0]
    summary: dict[str, Any] = {"model": model, "eval": ev.to_dict(), "collect": col, "formats": rows,
                               "calibration": cal, "profile": prof}  # fmt: skip
    if ok:
        lnr = sorted(abs(math.log(r["predicted"] / r["measured"])) for r in ok)
        loo = []  # baseline: each format predicted at the geometric mean of the other formats' measured KL
        for r in ok:
            rest = [math.log(o["measured"]) for o in ok if o is not r]
            if rest:
                loo.append(abs(math.log(r["measured"]) - sum(rest) / len(rest)))
        rho_law = _spearman([r["predicted"] for r in ok], [r["measured"] for r in ok])
        rho_bits = _spearman([-r["bits_per_weight"] for r in ok], [r["measured"] for r in ok])
        cover = sum(r["inside"] for r in ok) / len(ok)
        summary.update(median_abs_ln_ratio=_median(lnr), baseline_median_abs_ln_ratio=_median(sorted(loo)),
                       spearman=rho_law, spearman_bits=rho_bits, coverage=cover)  # fmt: skip
        n_in = sum(r["inside"] for r in ok)
        echo(f"      median |ln(pred/meas)| {_g(summary['median_abs_ln_ratio'])} vs "
             f"{_g(summary['baseline_median_abs_ln_ratio'])} for the other formats' measured geometric mean "
             f"(baseline); inside the {1 - alpha:.0%} interval: {n_in}/{len(ok)}")  # fmt: skip
        echo(f"      Spearman over {len(ok)} formats {_g(rho_law)} vs {_g(rho_bits)} for fewer bits = more damage "
             f"(baseline)")  # fmt: skip
    if plan_bpw is not None:
        summary["plan"] = _plan_step(lm, plan_model, save_plan, out, ev, rows, plan_bpw, measure_plan,
                                     profiles, alpha, echo)  # fmt: skip
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _median(xs: Sequence[float]) -> float:
    if not xs:
        return float("nan")
    m = len(xs) // 2
    return float(xs[m]) if len(xs) % 2 else float((xs[m - 1] + xs[m]) / 2)


def _plan_step(lm: Any, plan_model: Callable[..., dict[str, Any]], save_plan: Callable[..., Path], out: Path,
               ev: Any, rows: list[dict[str, Any]], plan_bpw: float, measure_plan: bool, profiles: Path,
               alpha: float, echo: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    from qscale.quantize.plans import PlanError

    try:
        plan = plan_model(lm, PLAN_CANDIDATES, target_bpw=plan_bpw, alpha=alpha, profile_dir=profiles)
    except PlanError as err:
        raise DemoError(str(err)) from None
    tag = lm.name.split(":", 1)[-1].replace("/", "_")
    path = save_plan(plan, out / f"plan-{tag}-{plan_bpw:g}bpw.json")
    pp = plan["predicted"]
    used = ", ".join(f"{k}: {v}" for k, v in sorted(plan["formats_used"].items(), key=lambda kv: -kv[1]))
    echo(f"      plan at {plan_bpw:g} bpw ({plan['bpw']:.4f} bpw; {used}) -> {path}")
    out_plan: dict[str, Any] = {"path": str(path), "target_bpw": plan_bpw, "bpw": plan["bpw"],
                                "formats_used": plan["formats_used"], "predicted": pp}  # fmt: skip
    uni = [u for u in plan["uniform"] if u["bpw"] <= plan_bpw + 1e-9]
    best_pred = min(uni, key=lambda u: u["value"]) if uni else None
    line = f"      plan predicted KL {pp['value']:.4g} [{pp['lo']:.3g}, {pp['hi']:.3g}]"
    if best_pred is not None:
        out_plan["best_uniform_predicted"] = best_pred
        line += (f" (baseline, best uniform candidate within the budget: {best_pred['format']} at "
                 f"{best_pred['bpw']:.3f} bpw, predicted {best_pred['value']:.4g})")  # fmt: skip
    echo(line)
    if not measure_plan:
        return out_plan
    m = _measure_plan(lm, plan, ev, out / f"plan-{tag}-{plan_bpw:g}bpw.measured.json")
    out_plan["measured"] = m
    meas_uni = [r for r in rows if r["bits_per_weight"] <= plan_bpw + 1e-9 and r["measured"] > 0]
    best = min(meas_uni, key=lambda r: r["measured"]) if meas_uni else None
    took = "reused" if m["reused"] else f"{m['seconds']:.0f} s"
    line = (f"      plan measured KL {m['kld']:.4g} ({took}; "
            f"predicted/measured {pp['value'] / m['kld']:.2f})")  # fmt: skip
    if best is not None:
        out_plan["best_uniform_measured"] = {"format": best["format"], "bpw": best["bits_per_weight"],
                                             "kld": best["measured"]}  # fmt: skip
        line += (f"; baseline, best measured uniform format within the budget: {best['format']} at "
                 f"{best['bits_per_weight']:.3f} bpw, KL {best['measured']:.4g} (plan/uniform "
                 f"{m['kld'] / best['measured']:.2f})")  # fmt: skip
    echo(line)
    return out_plan


# ------------------------------------------------------------------------------------------------------
# The whole demo
# ------------------------------------------------------------------------------------------------------
def run_demo(
    out: Path = DEFAULT_OUT,
    *,
    zoo_spec: Path | None = None,
    real_spec: Path | None = None,
    real: bool | None = None,
    plan_bpw: float | None = PLAN_BPW,
    measure_plan: bool = True,
    estimators: str = "all",
    held_out: str = HELD_OUT_FAMILY,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo steps in ``out``; returns the summary also written to ``out/qscale-demo.json``.

    ``real``: None runs step 6 when its model is available, True also builds a missing panel model, False skips
    it. Raises :class:`DemoError` for what the user can fix; a failing fit step is recorded under
    ``"failed"`` (the collected runs stay).
    """
    out = check_out(Path(out))
    zoo_spec = Path(zoo_spec) if zoo_spec is not None else zoo_spec_path()
    if real is not False:
        real_spec = Path(real_spec) if real_spec is not None else real_spec_path()
    check_inputs(zoo_spec, None if real is False else real_spec, plan_bpw, estimators)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    resumed = marker.is_file()
    t0, cpu0 = time.perf_counter(), _cpu_s()
    load0 = os.getloadavg()[0]
    summary: dict[str, Any] = {"out": str(out), "resumed": resumed, "failed": []}
    if not marker.is_file():
        marker.write_text(json.dumps({"qscale_demo": 1, "status": "started"}) + "\n")
    echo(f"qscale demo in {out}" + (" (resuming: finished runs are reused)" if resumed else ""))
    summary["zoo_s"] = ensure_zoo(echo, _step(1))
    store = out / "runs.sqlite"
    summary["collect"] = collect_into(Path(zoo_spec), store, echo, _step(2), progress=progress)
    try:
        summary["laws"] = fit_and_score(store, out, echo, held_out=held_out, estimators=estimators)
    except DemoError:
        raise
    except Exception as err:  # the collected data stays; say what broke
        summary["failed"].append(f"laws: {type(err).__name__}: {err}")
        echo(f"{_step(3)} laws: FAILED ({type(err).__name__}: {err})")
    summary["report_command"] = report_command(store, out, estimators)
    echo(f"{_step(5)} laws report (every preset, both targets, about 30 s): {summary['report_command']}")
    if real is False:
        echo(f"{_step(6)} real model: skipped (--no-real)")
    else:
        summary["real"] = real_model(out, Path(real_spec), echo, build=real, plan_bpw=plan_bpw,
                                     measure_plan=measure_plan, progress=progress)  # fmt: skip
    summary["total_s"] = time.perf_counter() - t0
    summary["cpu_s"] = _cpu_s() - cpu0
    summary["load_average"] = [load0, os.getloadavg()[0]]
    summary["cpus"] = os.cpu_count()
    parts = {"zoo": summary["zoo_s"], "collect": summary["collect"]["seconds"],
             "laws": (summary.get("laws") or {}).get("seconds"),
             "real model": (summary.get("real") or {}).get("seconds")}  # fmt: skip
    summary["steps_s"] = {k: v for k, v in parts.items() if v is not None}
    doc = {"qscale_demo": 1, "status": "done", **summary}
    marker.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    steps = ", ".join(f"{k} {fmt_s(v)}" for k, v in summary["steps_s"].items())
    echo(f"done in {fmt_s(summary['total_s'])} ({steps}; CPU time {fmt_s(summary['cpu_s'])}; load average "
         f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} CPUs); everything is in "
         f"{out} (summary: {marker})")  # fmt: skip
    return summary
