"""``write_report``: regenerate reports/ from the run store, the public results and the shipped laws.

Writes (under ``out``):

* ``runs.md`` / ``runs.csv`` / ``runs.tex`` / ``runs.html`` -- model x format dnll table (with --runs);
* ``laws.md`` -- estimators side by side under each grouped-CV scheme (MAE, RMSE, R^2, within-model
  Spearman, 90% interval coverage; public data also delta-ppl MAE beside the Ouyang / Kumar forms),
  the stated targets with the measured values, coefficient tables with 95% CIs, the shipped laws;
* ``cv_<kind>.csv`` -- every held-out prediction behind those scores;
* ``dnll_vs_bits.png``, ``public_ratio_vs_bpw.png``, ``pred_vs_measured_<kind>.png``.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

from qscale.laws.artifacts import MODELS_DIR, list_laws
from qscale.laws.cv import SCHEMES, CVResult, cross_validate, group_column, spearman_within
from qscale.laws.estimators import LawError
from qscale.laws.fitting import DEFAULT_SCHEMES, FitData, load_fit_data
from qscale.laws.registry import make_estimator, parse_estimators
from qscale.report.plots import plot_damage_vs_bits, plot_pred_vs_measured
from qscale.report.tables import to_markdown, write_table

SCORE_COLS = ("estimator", "scheme", "n", "mae", "rmse", "r2", "spearman", "coverage")


def evaluate(
    data: FitData, names: list[str], schemes: tuple[str, ...], alpha: float = 0.1
) -> tuple[pd.DataFrame, dict[tuple[str, str], CVResult]]:
    """Grouped CV of every preset under every applicable scheme: (scores table, results by (name, scheme))."""
    rows, results = [], {}
    for scheme in schemes:
        try:
            group_column(data.frame, scheme)
        except LawError:
            continue
        for name in names:
            try:
                est = make_estimator(name, data.kind, data.frame, data.target)
                res = cross_validate(est, data.frame, scheme, alpha=alpha, name=name)
            except LawError as err:
                rows.append({"estimator": name, "scheme": scheme, "note": str(err)})
                continue
            results[(name, scheme)] = res
            row = {"estimator": name, "scheme": scheme, **res.scores, "note": ""}
            if res.largest is not None:
                row["mae_largest"] = res.largest["mae"]
                row["spearman_largest"] = res.largest["spearman"]
            rows.append(row)
    return pd.DataFrame(rows), results


def _best(scores: pd.DataFrame, scheme: str) -> str | None:
    sub = scores[(scores["scheme"] == scheme)]
    if "mae" not in sub or sub["mae"].notna().sum() == 0:
        return None
    sub = sub[sub["mae"].notna()]
    sub = sub[sub["n"] == sub["n"].max()]
    return str(sub.sort_values("mae").iloc[0]["estimator"])


def _score_table(scores: pd.DataFrame, extra: tuple[str, ...] = ()) -> str:
    cols = [c for c in (*SCORE_COLS, *extra) if c in scores.columns]
    return to_markdown(scores[cols].reset_index(drop=True))


def _coefficients(data: FitData, names: list[str]) -> list[str]:
    out = []
    for name in names:
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


def _public_targets(scores: pd.DataFrame, results: dict) -> list[str]:
    lines = ["### Targets (public, measured)", ""]
    best = _best(scores, "table")
    if best is None:
        return [*lines, "No estimator could be scored under leave-one-table-out CV.", ""]
    lines += [
        f"Leave-one-table-out, chosen (lowest MAE on all rows): **{best}**. Ouyang/Kumar need training tokens D, "
        "known only for LLaMA-1/2/3 rows, so they are compared on that subset as well:",
        "",
        "| estimator | rows | MAE log-ppl-ratio | MAE delta-ppl | median abs. delta-ppl err | coverage |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    kumar = results.get(("kumar", "table"))
    subset = set(kumar.predictions["row_id"]) if kumar is not None else None
    for name in (best, "bits-only", "ouyang-published", "ouyang", "kumar"):
        res = results.get((name, "table"))
        if res is None:
            continue
        variants = [("all", res.predictions)]
        if subset is not None and name == best:
            variants.append(("D known", res.predictions[res.predictions["row_id"].isin(subset)]))
        for label, p in variants:
            b = p["baseline"].to_numpy(float)
            err = b * np.expm1(p["pred"].to_numpy(float)) - b * np.expm1(p["log_ppl_ratio"].to_numpy(float))
            cov = float(np.mean((p["lo"] <= p["log_ppl_ratio"]) & (p["log_ppl_ratio"] <= p["hi"])))
            tag = f"{name} ({label})" if len(variants) > 1 else name
            mae_r = float(np.mean(np.abs(p["pred"] - p["log_ppl_ratio"])))
            lines.append(
                f"| {tag} | {len(p)} | {mae_r:.4g} | {np.mean(np.abs(err)):.4g} | {np.median(np.abs(err)):.4g} | {cov:.3f} |"
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


def _zoo_section(
    data: FitData, target: str, out: Path, estimators: str, alpha: float, schemes, first: bool
) -> list[str]:
    zoo = data.frame
    suffix = "" if first else f"_{target}"
    if first:
        write_table(
            _runs_pivot(zoo), out / "runs", title=f"dnll (nats/token) by model x format ({data.source})"
        )
        plot_damage_vs_bits(zoo, out / "dnll_vs_bits.png", title="measured dnll vs bits per element")
    names = parse_estimators(estimators, "zoo")
    scores, results = evaluate(data, names, schemes or DEFAULT_SCHEMES["zoo"], alpha)
    _dump_predictions(results, out / f"cv_zoo{suffix}.csv")
    lines = [
        f"## Zoo runs, target {target} ({len(zoo)} runs, {zoo['model'].nunique()} models, "
        f"{zoo['family'].nunique()} families; `{data.source}`)",
        "",
        f"Target: {_TARGET_TEXT.get(target, target)}. `mae_largest`: the fold holding out each",
        "family's largest model (size = rank of N within the family).",
        "",
        _score_table(scores, ("mae_largest", "spearman_largest")),
        "",
        *_notes(scores),
        *_zoo_targets(scores, results, alpha, target),
        "### Coefficients (fitted on all zoo runs, 95% CI)",
        "",
        *_coefficients(data, [n for n in names if n not in ("forest", "boosting", "gp")]),
    ]
    best = _best(scores, "family")
    if best is not None:
        png = f"pred_vs_measured_zoo{suffix}.png"
        plot_pred_vs_measured(
            results[(best, "family")].predictions,
            target,
            out / png,
            color="family" if "family" in results[(best, "family")].predictions else None,
            title=f"zoo {target}, leave-one-family-out: {best}",
        )
        lines += [f"![predicted vs measured]({png})", ""]
        if first:
            lines += ["![dnll vs bits](dnll_vs_bits.png)", ""]
    return lines


def write_report(
    runs: str | Path | None = None,
    out: str | Path = "reports",
    public: bool | None = None,
    estimators: str = "all",
    alpha: float = 0.1,
    models_dir: str | Path | None = None,
    schemes: tuple[str, ...] | None = None,
) -> Path:
    """Regenerate the report; returns the path of ``laws.md``.

    ``public=None`` includes the public-results section only when no run store is given (it is the slow
    part: every estimator under three CV schemes); ``qscale report`` includes it by default.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models_dir = Path(models_dir) if models_dir is not None else MODELS_DIR
    if public is None:
        public = runs is None
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
            lines += _zoo_section(data, target, out, estimators, alpha, schemes, first=(i == 0))
    if public:
        data = load_fit_data(public=True)
        names = parse_estimators(estimators, "public")
        scores, results = evaluate(data, names, schemes or DEFAULT_SCHEMES["public"], alpha)
        _dump_predictions(results, out / "cv_public.csv")
        pub = data.frame
        plot_damage_vs_bits(
            pub.assign(series=pub["model_key"]),
            out / "public_ratio_vs_bpw.png",
            x="bpw",
            y="log_ppl_ratio",
            panel="method",
            series="series",
            title="published: log(ppl / baseline ppl) vs bits per weight",
        )
        from qscale.laws.public import load_public

        dropped = load_public().dropped
        lines += [
            f"## Public results ({len(pub)} usable rows from {pub['table_id'].nunique()} tables; `{data.source}`)",
            "",
            "Target: log_ppl_ratio = log(ppl / same-table fp16 ppl) = delta NLL in nats. Rows set aside: "
            + ", ".join(f"{k}: {v}" for k, v in dropped.items())
            + ".",
            "",
            _score_table(scores, ("mae_delta_ppl",)),
            "",
            *_notes(scores),
            *_public_targets(scores, results),
            "### Coefficients (fitted on all usable public rows, 95% CI)",
            "",
            *_coefficients(data, [n for n in names if n not in ("forest", "boosting", "gp")]),
        ]
        best = _best(scores, "table")
        if best is not None:
            plot_pred_vs_measured(
                results[(best, "table")].predictions,
                "log_ppl_ratio",
                out / "pred_vs_measured_public.png",
                color="method",
                title=f"public, leave-one-table-out: {best}",
            )
            lines += [
                "![predicted vs measured](pred_vs_measured_public.png)",
                "",
                "![ratio vs bpw](public_ratio_vs_bpw.png)",
                "",
            ]
    lines += _laws_section(models_dir)
    path = out / "laws.md"
    path.write_text("\n".join(lines) + "\n")
    return path


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


__all__ = ["SCHEMES", "evaluate", "write_report"]
