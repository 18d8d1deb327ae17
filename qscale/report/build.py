"""``write_report``: regenerate reports/ from the run store, the public results and the shipped laws.

``qscale report`` with no options rebuilds the committed reports/laws.md from the inputs it was built from
(:data:`DEFAULT_RUNS`, :data:`DEFAULT_PANEL` with :data:`DEFAULT_PROFILE_CACHE`, the public results, models/); it
only reads them (run stores are opened read-only, the profile cache is never written).

Writes (under ``out``):

* ``runs.md`` / ``runs.csv`` / ``runs.tex`` / ``runs.html`` -- model x format dnll table (with --runs);
* ``laws.md`` -- estimators side by side under each grouped-CV scheme (MAE, RMSE, R^2, within-model
  Spearman, 90% interval coverage; public data also delta-ppl MAE beside the Ouyang / Kumar forms),
  the stated targets with the measured values, coefficient tables with 95% CIs, the shipped laws;
* ``cv_<kind>.csv`` -- every held-out prediction behind those scores;
* ``panel_profile.csv`` -- the real panel's measured KL per format beside the profile law's prediction;
* ``dnll_vs_bits.png``, ``public_ratio_vs_bpw.png``, ``pred_vs_measured_<kind>.png``, ``pred_vs_measured_panel.png``.

Score tables show a fit whose CV MAE is absurd (:func:`qscale.report.tables.is_diverged`) as ``diverged``.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qscale.laws.artifacts import default_models_dir, list_laws
from qscale.laws.cv import SCHEMES, CVResult, cross_validate, spearman_within
from qscale.laws.estimators import LawError
from qscale.laws.fitting import DEFAULT_SCHEMES, FitData, choose, compare_estimators, load_fit_data
from qscale.laws.registry import make_estimator, parse_estimators
from qscale.paths import project_root, repo_path
from qscale.progress import Progress
from qscale.report.plots import Figure, plot_damage_vs_bits, plot_pred_vs_measured, plot_pred_vs_measured_by
from qscale.report.tables import diverged_mask, diverged_rule, is_diverged, to_markdown, write_table

SCORE_COLS = ("estimator", "scheme", "n", "mae", "rmse", "r2", "spearman", "coverage")

#: The inputs of the committed reports/laws.md, in the repository (:mod:`qscale.paths`), with the option that
#: replaces each: ``qscale report`` with no options reads exactly these. The profile cache holds raw profile-law
#: predictions per (model identity, format), written by ``qscale profile validate``; read here.
_DEFAULTS = {
    "DEFAULT_RUNS": ("data/runs.sqlite", "--runs"),
    "DEFAULT_PANEL": ("data/runs_panel_native.sqlite", "--panel-runs"),
    "DEFAULT_PROFILE_CACHE": ("data/profile_raw.json", "--profile-cache"),
}


def default_input(name: str) -> Path:
    """``default_input("DEFAULT_RUNS")``: the repository's file (a :class:`qscale.paths.PathError` in an installed
    package, naming the option to give instead)."""
    return repo_path(*_DEFAULTS[name])


def __getattr__(name: str) -> Path:
    if name in _DEFAULTS:  # DEFAULT_RUNS, DEFAULT_PANEL, DEFAULT_PROFILE_CACHE, resolved when asked for
        return default_input(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def shown(path: str | Path) -> str:
    """A path as the report prints it: relative to the repository when inside it (no machine paths in reports)."""
    p = Path(path)
    root = project_root()
    try:
        return p.resolve().relative_to(root.resolve()).as_posix() if root is not None else str(path)
    except ValueError:
        return str(path)


_QUIET = Progress(False)  # no display: every row is a no-op


def evaluate(
    data: FitData,
    names: list[str],
    schemes: tuple[str, ...],
    alpha: float = 0.1,
    tick: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, dict[tuple[str, str], CVResult]]:
    """Grouped CV of every preset under every applicable scheme: (scores table, results by (name, scheme)),
    from :func:`qscale.laws.fitting.compare_estimators` (a preset that does not apply to the data is a note).
    ``tick(note)`` is called before each (preset, scheme)."""
    results: dict[tuple[str, str], CVResult] = {}
    scores = compare_estimators(data, names, schemes, alpha, results=results, tick=tick, unusable="note")
    return scores, results


def _best(scores: pd.DataFrame, scheme: str) -> str | None:
    """The preset :func:`qscale.laws.fitting.choose` ships under ``scheme``; None when none was scored."""
    try:
        return choose(scores, scheme)
    except LawError:
        return None


def _score_table(
    scores: pd.DataFrame, extra: tuple[str, ...] = (), spread: float | dict | None = None
) -> str:
    """The scores as Markdown; with ``spread`` (the measured target's, or one per MAE column) diverged fits
    print as ``diverged``."""
    cols = [c for c in (*SCORE_COLS, *extra) if c in scores.columns]
    table = scores[cols].reset_index(drop=True)
    return to_markdown(table, mask=diverged_mask(table, spread) if spread is not None else None)


def _diverged_note(scores: pd.DataFrame, judged: dict[str, tuple[float | None, str]]) -> list[str]:
    """The rule under a score table, once per measure it marked: ``judged`` maps an MAE column to
    (spread, the measured quantity's name)."""
    out = []
    for col, (spread, what) in judged.items():
        if col not in scores.columns or spread is None:
            continue
        if any(is_diverged(float(v), spread) for v in pd.to_numeric(scores[col], errors="coerce")):
            rule = diverged_rule(spread, what)
            if rule not in out:
                out.append(rule)
    return [*out, ""] if out else []


def _coefficients(data: FitData, names: list[str], tick: Callable[[str], None] | None = None) -> list[str]:
    out = []
    for name in names:
        if tick is not None:
            tick(f"fit {name}")
        try:
            est = make_estimator(name, data.kind, data.frame, data.target)
            est.fit(data.frame)
        except LawError:
            continue
        summ = est.summary()
        if len(summ) == 0:
            continue
        out += [
            f"**{name}** ({est.n_train_} rows; features {', '.join(est.features_)}):",
            "",
            to_markdown(summ),
            "",
        ]
    return out


def _zoo_targets(scores: pd.DataFrame, results: dict, alpha: float, target: str = "dnll") -> list[str]:
    lines = [f"### Targets (zoo, {target}, measured)", ""]
    best = _best(scores, "family")
    if best is None:
        return [*lines, "No estimator could be scored under leave-one-family-out CV.", ""]
    res = results[(best, "family")]
    p = res.predictions
    fam_col = "family" if "family" in p.columns else "fold"
    per_fam = {f: spearman_within(sub, "pred", target, "model") for f, sub in p.groupby(fam_col)}
    bits = results.get(("bits-only", "family"))
    mae, cov = res.scores["mae"], res.scores["coverage"]
    lines += [
        f"Chosen by leave-one-family-out MAE: **{best}**.",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    for f, rho in per_fam.items():
        lines.append(f"| Spearman within {f} models >= 0.9 | {rho:.3f} | {'yes' if rho >= 0.9 else 'NO'} |")
    if bits is not None:
        b = bits.scores["mae"]
        lines.append(
            f"| MAE <= half of bits-only ({b:.4g}/2 = {b / 2:.4g}) | {mae:.4g} | {'yes' if mae <= b / 2 else 'NO'} |"
        )
    lines.append(
        f"| {1 - alpha:.0%} interval coverage in 85-95% | {cov:.3f} | {'yes' if 0.85 <= cov <= 0.95 else 'NO'} |"
    )
    return [*lines, ""]


def _laws_section(models_dir: Path) -> list[str]:
    names = list_laws(models_dir)
    lines = ["## Shipped laws (models/)", ""]
    if not names:
        return [*lines, "None yet.", ""]
    lines += [
        "| law | estimator | kind | target | rows | training hash | CV |",
        "| --- | --- | --- | --- | ---: | --- | --- |",
    ]
    for n in names:
        m = json.loads((models_dir / n / "manifest.json").read_text())
        cv = "; ".join(
            f"{k}: MAE {v.get('mae', float('nan')):.4g}, cov {v.get('coverage', float('nan')):.2f}"
            for k, v in m.get("cv", {}).items()
            if isinstance(v, dict)
        )
        lines.append(
            f"| {n} | {m['estimator']} | {m['kind']} | {m['target']['name']} | {m['training']['rows']} | "
            f"{m['training']['hash'][:12]} | {cv} |"
        )
    return [*lines, ""]


#: Zoo damage measures the report fits and scores, each in its own section (the first is the default target).
ZOO_TARGETS = ("dnll", "kld")
_TARGET_TEXT = {
    "dnll": "dnll = quantized NLL - float NLL (nats/token)",
    "kld": "kld = mean token KL(float || quantized) (nats/token), always >= 0",
}


def _figure_lines(fig: Figure, alt: str) -> list[str]:
    return [f"![{alt}]({fig.path.name})", "", f"*{fig.caption}*", ""]


def _zoo_section(
    data: FitData,
    target: str,
    out: Path,
    estimators: str,
    alpha: float,
    schemes,
    first: bool,
    source: str,
    progress: Progress = _QUIET,
) -> list[str]:
    zoo = data.frame
    suffix = "" if first else f"_{target}"
    bits_fig = None
    if first:
        write_table(_runs_pivot(zoo), out / "runs", title=f"dnll (nats/token) by model x format ({source})")
        bits_fig = plot_damage_vs_bits(
            zoo, out / "dnll_vs_bits.png", title="measured ΔNLL vs bits per element"
        )
    names = parse_estimators(estimators, "zoo")
    schemes = schemes or DEFAULT_SCHEMES["zoo"]
    coef_names = [n for n in names if n not in ("forest", "boosting", "gp")]
    row = progress.task(f"zoo {target}: CV + fits", total=len(names) * len(schemes) + len(coef_names))
    scores, results = evaluate(data, names, schemes, alpha, tick=lambda note: row.advance(note=note))
    _dump_predictions(results, out / f"cv_zoo{suffix}.csv")
    spread = float(pd.to_numeric(zoo[target], errors="coerce").std())
    lines = [
        f"## Zoo runs, target {target} ({len(zoo)} runs, {zoo['model'].nunique()} models, "
        f"{zoo['family'].nunique()} families; `{source}`)",
        "",
        f"Target: {_TARGET_TEXT.get(target, target)}. `mae_largest`: the fold holding out each",
        "family's largest model (size = rank of N within the family).",
        "",
        _score_table(scores, ("mae_largest", "spearman_largest"), spread),
        "",
        *_diverged_note(scores, {"mae": (spread, target), "mae_largest": (spread, target)}),
        *_notes(scores),
        *_zoo_targets(scores, results, alpha, target),
        "### Coefficients (fitted on all zoo runs, 95% CI)",
        "",
        *_coefficients(data, coef_names, tick=lambda note: row.advance(note=note)),
    ]
    row.done()
    best = _best(scores, "family")
    if best is not None:
        png = f"pred_vs_measured_zoo{suffix}.png"
        fig = plot_pred_vs_measured(
            results[(best, "family")].predictions,
            target,
            out / png,
            color="family" if "family" in results[(best, "family")].predictions else None,
            title=f"zoo {target}, leave-one-family-out: {best}",
        )
        lines += _figure_lines(fig, "predicted vs measured")
    if bits_fig is not None:
        lines += _figure_lines(bits_fig, "dnll vs bits")
    return lines


def panel_predictions(
    store: str | Path, cache: str | Path, models_dir: Path, alpha: float = 0.1
) -> tuple[pd.DataFrame, list[str]]:
    """Measured KL of every RTN run in the panel ``store`` beside the profile law's prediction (the shipped
    real-model calibration applied to the cached raw prediction of the same weights). Read-only: runs whose raw
    prediction is not cached are left out and said so. Returns (rows, notes); raises LawError with the reason
    when nothing can be predicted."""
    from qscale.workflows.profile import (
        calibration_name,
        calibration_path,
        calibrations,
        measured_runs,
        population,
    )

    store, cache = Path(store), Path(cache)
    if not store.is_file():
        raise LawError(f"no panel run store at {shown(store)}")
    runs = measured_runs([store])
    runs = runs[runs["kld"].notna()] if "kld" in runs else runs.iloc[:0]
    if runs.empty:
        raise LawError(f"{shown(store)} has no finished RTN runs with a measured KL")
    if not cache.is_file():
        raise LawError(
            f"no cached raw profile predictions at {shown(cache)} "
            f"(`qscale profile validate --store {shown(store)}` computes them)"
        )
    raw_cache = json.loads(cache.read_text())
    rows, notes = [], []
    cals: dict[str, Any] = {}
    for model, g in runs.groupby("model", sort=False):
        pop = population(str(model))
        if pop not in cals:
            cals[pop] = calibrations(pop, models_dir, alpha)[0]  # LawError: no shipped calibration
        cal = cals[pop]
        entry = raw_cache.get(str(model), {})
        ident = str(g["identity"].iloc[0]) if "identity" in g else None
        if entry and ident is not None and entry.get("identity") != ident:
            notes.append(
                f"{model}: left out ({len(g)} runs): the cached raw predictions are for other weights "
                f"(identity {str(entry.get('identity'))[:12]}..., the runs' {ident[:12]}...)"
            )
            continue
        missing = [f for f in g["format"] if f not in entry.get("raw", {})]
        if missing:
            notes.append(
                f"{model}: {len(missing)} of {len(g)} runs left out, no cached raw prediction "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
            )
        for _, r in g[~g["format"].isin(missing)].iterrows():
            raw = float(entry["raw"][r["format"]])
            factor = (entry.get("probe") or {}).get("factor")
            if cal.probe and factor is None:
                notes.append(f"{model}: left out, its cached raw predictions carry no noise probe")
                break
            v, lo, hi = (float(x) for x in cal.interval(raw, factor))
            rows.append(
                {
                    "model": model,
                    "format": r["format"],
                    "fmt_family": r.get("fmt_family", ""),
                    "bits_per_element": r.get("bits_per_element", float("nan")),
                    "kld": float(r["kld"]),
                    "raw": raw,
                    "pred": v,
                    "lo": lo,
                    "hi": hi,
                    "calibration": f"`{shown(calibration_path(calibration_name('kld', pop), models_dir))}`: "
                    f"form {cal.form}{' on raw x noise-probe factor' if cal.probe else ''}, "
                    f"fitted on {', '.join(cal.models_)}",
                }
            )
    if not rows:
        raise LawError("; ".join(notes) or "no panel run could be predicted")
    return pd.DataFrame(rows), notes


def _panel_summary(df: pd.DataFrame) -> pd.DataFrame:
    from scipy.stats import spearmanr

    out = []
    for model, g in df.groupby("model", sort=False):
        meas, pred = g["kld"].to_numpy(float), g["pred"].to_numpy(float)
        ok = (meas > 0) & (pred > 0)
        ratio = np.abs(np.log(pred[ok] / meas[ok]))
        out.append(
            {
                "model": model,
                "runs": len(g),
                "Spearman": float(spearmanr(pred, meas).statistic) if len(g) > 2 else float("nan"),
                "median abs ln(pred/meas)": float(np.median(ratio)) if ok.any() else float("nan"),
                "within 2x": float(np.mean(ratio <= np.log(2))) if ok.any() else float("nan"),
                "coverage": float(np.mean((g["lo"] <= g["kld"]) & (g["kld"] <= g["hi"]))),
            }
        )
    return pd.DataFrame(out)


def _panel_section(
    store: Path, cache: Path, models_dir: Path, out: Path, alpha: float, progress: Progress = _QUIET
) -> list[str]:
    row = progress.task("panel: profile law", total=1)
    head = "## Real panel: profile-law prediction vs measured KL"
    try:
        df, notes = panel_predictions(store, cache, models_dir, alpha)
    except LawError as err:
        row.done(note="skipped")
        return [f"{head} (`{shown(store)}`)", "", f"Skipped: {err}.", ""]
    df.to_csv(out / "panel_profile.csv", index=False)
    fig = plot_pred_vs_measured_by(
        df,
        "kld",
        out / "pred_vs_measured_panel.png",
        panel="model",
        color="fmt_family",
        title="real panel, RTN: profile-law prediction vs measured KL\n"
        "colour: format family (int; fp = minifloat; mx = MX block-scaled; lut = lookup grid, e.g. nf4)",
    )
    row.done()
    table = df.assign(**{"pred/meas": df["pred"] / df["kld"]}).sort_values(
        ["model", "bits_per_element", "format"], ascending=[True, False, True]
    )
    table = table.rename(
        columns={
            "bits_per_element": "bits/elem",
            "kld": "measured KL",
            "pred": "predicted KL",
            "lo": f"{1 - alpha:.0%} lo",
            "hi": f"{1 - alpha:.0%} hi",
        }
    )
    cols = [
        "model",
        "format",
        "bits/elem",
        "measured KL",
        "predicted KL",
        f"{1 - alpha:.0%} lo",
        f"{1 - alpha:.0%} hi",
        "pred/meas",
    ]
    return [
        f"{head} ({len(df)} runs, {df['model'].nunique()} models; `{shown(store)}`)",
        "",
        "Measured: mean token KL(float || RTN-quantized) (nats/token, exact over the vocabulary) per format. "
        "Predicted: the profile law as `qscale predict --model M` gives it, the shipped calibration "
        f"({'; '.join(df['calibration'].unique())}) applied to the raw second-order prediction "
        f"from the model's sensitivity profile and weights, read from `{shown(cache)}` (no quantized "
        f"evaluation). The {1 - alpha:.0%} interval is split-conformal on leave-one-model-out residuals of the "
        "same models, so its coverage here is not a held-out figure (`reports/profile_validation.md` holds "
        "each model out).",
        "",
        *([f"- {n}" for n in notes] + ([""] if notes else [])),
        to_markdown(_panel_summary(df)),
        "",
        to_markdown(table[cols].reset_index(drop=True)),
        "",
        *_figure_lines(fig, "profile law vs measured KL, per panel model"),
    ]


def write_report(
    runs: str | Path | None = None,
    out: str | Path = "reports",
    public: bool | None = None,
    estimators: str = "all",
    alpha: float = 0.1,
    models_dir: str | Path | None = None,
    schemes: tuple[str, ...] | None = None,
    panel: str | Path | None = None,
    profile_cache: str | Path | None = None,
    progress: bool = False,
) -> Path:
    """Regenerate the report; returns the path of ``laws.md``.

    Sections, in order: the zoo run store ``runs`` (one per target in :data:`ZOO_TARGETS` it has), the real
    panel store ``panel`` (profile law vs measured KL, raw predictions from ``profile_cache``, default
    :data:`DEFAULT_PROFILE_CACHE`), the public results, the shipped laws of ``models_dir``. ``public=None``
    includes the public-results section only when no run store is given (it is the slow part: every estimator
    under three CV schemes); ``qscale report`` passes the committed report's inputs. ``progress``: rich bars on
    stderr. Inputs are only read.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    if public is None:
        public = runs is None
    with Progress(progress) as prog:
        lines = _report_lines(
            runs, out, public, estimators, alpha, models_dir, schemes, panel, profile_cache, prog
        )
    path = out / "laws.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _report_lines(
    runs,
    out: Path,
    public: bool,
    estimators: str,
    alpha: float,
    models_dir: Path,
    schemes,
    panel,
    profile_cache,
    prog,
) -> list[str]:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# qscale laws report",
        "",
        f"Generated {stamp} by `qscale report`; every number below is recomputed from the data named here.",
        f"Intervals are nominal {1 - alpha:.0%}. CV = leave-one-group-out; metrics on the raw target scale.",
        "Spearman = rank correlation of predicted vs measured damage across formats within each held-out model,",
        "averaged over models. Coverage = share of held-out measurements inside the predicted interval.",
        "",
    ]
    if runs is not None:
        for i, target in enumerate(ZOO_TARGETS):
            try:
                data = load_fit_data(runs=runs, target=target) if i else load_fit_data(runs=runs)
            except LawError:  # the runs lack this damage measure (e.g. collected without a reference)
                if i == 0:
                    raise
                continue
            lines += _zoo_section(
                data,
                target,
                out,
                estimators,
                alpha,
                schemes,
                first=(i == 0),
                source=shown(runs),
                progress=prog,
            )
    if panel is not None:
        cache = Path(profile_cache) if profile_cache is not None else default_input("DEFAULT_PROFILE_CACHE")
        lines += _panel_section(Path(panel), cache, models_dir, out, alpha, prog)
    if public:
        lines += _public_section(out, models_dir, prog)
    lines += _laws_section(models_dir)
    return lines


def _public_section(out: Path, models_dir: Path, prog: Any) -> list[str]:
    """The public laws' summary; the per-estimator detail goes to reports/public_laws.md
    (``qscale.report.public``; its CV table is reports/public_cv.csv, recomputed only when missing)."""
    from qscale.report import public as pub

    row = prog.task("public: CV table, findings", total=2)
    cache = out / "public_cv.csv"
    if (
        not cache.exists() and pub.DEFAULT_CV_CACHE.exists()
    ):  # another out dir: start from the committed table
        cache.write_bytes(pub.DEFAULT_CV_CACHE.read_bytes())
    cv = pub.cv_frame(cache, log=lambda note: row.advance(0, note=note))
    row.advance(note="findings")
    pub.build(out / "public_laws.md", cv)
    row.advance(note="figures")
    data = load_fit_data(public=True)
    frame = data.frame
    ratio_fig = plot_damage_vs_bits(
        frame.assign(series=frame["model_key"]),
        out / "public_ratio_vs_bpw.png",
        x="bpw",
        y="log_ppl_ratio",
        panel="method",
        series="series",
        title="published: log(ppl / baseline ppl) vs bits per weight (one panel per method)",
        unit="published rows",
    )
    best = pub.choose(cv, "log_ppl_ratio")
    res = cross_validate(make_estimator(best, "public", frame, "log_ppl_ratio"), frame, "family")
    fig = plot_pred_vs_measured(
        res.predictions,
        "log_ppl_ratio",
        out / "pred_vs_measured_public.png",
        color="method",
        title=f"public, leave-one-family-out: {best}",
    )
    row.done()
    return [
        f"## Public results (`{shown(data.source)}` + the real panel's runs)",
        "",
        "Three targets, each with its unit; every estimator is cross-validated leaving one model family out and "
        "leaving one source table out, beside bits-only refitted on the same rows. The full tables, the seed "
        "findings (GPTQ vs RTN, training tokens, calibration set), training tokens with sources and the format "
        "capacity table are in [public_laws.md](public_laws.md).",
        "",
        *pub.summary_lines(cv),
        "",
        *_figure_lines(fig, "predicted vs measured"),
        *_figure_lines(ratio_fig, "ratio vs bpw"),
    ]


def _notes(scores: pd.DataFrame) -> list[str]:
    if "note" not in scores:
        return []
    bad = scores[scores["note"].astype(str) != ""]
    return [f"- {r['estimator']} ({r['scheme']}): not scored: {r['note']}" for _, r in bad.iterrows()] + (
        [""] if len(bad) else []
    )


def _runs_pivot(frame: pd.DataFrame) -> pd.DataFrame:
    from qscale.report.tables import runs_table

    return runs_table(frame, "dnll")


def _dump_predictions(results: dict, path: Path) -> None:
    parts = [r.predictions.assign(estimator=n, scheme=s) for (n, s), r in results.items()]
    if parts:
        pd.concat(parts, ignore_index=True).to_csv(path, index=False)


__all__ = [
    "SCHEMES",
    "default_input",
    "evaluate",
    "panel_predictions",
    "shown",
    "write_report",
]
