"""Laws across models from the published results: ``python -m qscale.report.public`` -> reports/public_laws.md.

For each public target (log ppl ratio, mean KL, accuracy drop) every applicable estimator preset is
cross-validated leaving one model family out and leaving one source table out; each row of the table sets the
estimator's MAE beside the bits-only baseline refitted on *the same rows*, the 90% interval's coverage and its
median hi/lo. Then the seed findings are checked on paired public rows (GPTQ vs RTN at equal bits, training
tokens at equal size, how much the calibration set matters), and the formats' capacity table is listed.
The chosen estimator per target is fitted on all rows and saved to ``models/public-<target>`` (``--save``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from qscale.laws.cv import cross_validate
from qscale.laws.estimators import LawError
from qscale.laws.public import TARGETS, TRAIN_TOKENS, default_path, load_public, public_fit_frame
from qscale.laws.registry import estimator_names, make_estimator
from qscale.paths import PathError, repo_path

SCHEMES = ("family", "table")
#: Estimators left out per target, and why (printed in the report).
_SKIP = {"ouyang-published": "published Pythia constants are for nats of loss, not refitted"}
#: Above this many rows the exact GP is left out of the CV (its cost, not its accuracy).
GP_MAX_ROWS = 1000
#: Shipped law name per target.
LAW_NAMES = {"log_ppl_ratio": "public-ppl", "kld": "public-kld", "acc_drop": "public-acc"}
#: A CV MAE above this many target spreads (std) is a diverged fit, printed as "diverged".
DIVERGED_SPREADS = 100.0


def _fmt(x: float, spread: float, digits: int = 4) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    if x > DIVERGED_SPREADS * spread:
        return "diverged"
    return f"{x:.{digits}g}"


def _floor(pred: pd.DataFrame, target: str) -> float:
    """exp(2 q90 |ln(pred / measured)|) over rows where both are > 0: the narrowest hi/lo a 90% interval
    of constant log width could have with these held-out errors (the data's own limit)."""
    y, p = pred[target].to_numpy(float), pred["pred"].to_numpy(float)
    ok = (y > 0) & (p > 0)
    return float(np.exp(2 * np.quantile(np.abs(np.log(p[ok] / y[ok])), 0.9))) if ok.sum() >= 5 else math.nan


def _hilo(pred: pd.DataFrame) -> float:
    lo, hi = pred["lo"].to_numpy(float), pred["hi"].to_numpy(float)
    ok = lo > 0
    return float(np.median(hi[ok] / lo[ok])) if ok.any() else math.nan


def cv_table(target: str, schemes=SCHEMES, names: list[str] | None = None, log=print) -> pd.DataFrame:
    """Rows: estimator x scheme with n, mae, bits-only mae on the same rows, ratio, coverage, hi/lo, rho."""
    frame = public_fit_frame(target=target)
    names = names or [n for n in estimator_names("public") if n not in _SKIP]
    if len(frame) > GP_MAX_ROWS:  # exact GP is O(n^3) per fit, x (folds x calibration folds) fits
        names = [n for n in names if n != "gp"]
    rows = []
    for scheme in schemes:
        base_cache: dict[tuple[int, ...], float] = {}
        for name in names:
            t0 = time.perf_counter()
            est = make_estimator(name, "public", frame, target)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = cross_validate(est, frame, scheme)
            except LawError as err:
                rows.append({"target": target, "scheme": scheme, "estimator": name, "note": str(err)[:120]})
                continue
            ids = tuple(sorted(res.predictions["row_id"]))
            if ids not in base_cache:
                sub = frame.loc[list(ids)]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    b = cross_validate(make_estimator("bits-only", "public", sub, target), sub, scheme)
                base_cache[ids] = b.scores["mae"]
            mae_b = base_cache[ids]
            rows.append(
                {
                    "target": target,
                    "scheme": scheme,
                    "estimator": name,
                    "n": res.scores["n"],
                    "mae": res.scores["mae"],
                    "mae_bits_only": mae_b,
                    "ratio": res.scores["mae"] / mae_b if mae_b > 0 else math.nan,
                    "coverage": res.scores["coverage"],
                    "hi_lo": _hilo(res.predictions),
                    "hi_lo_floor": _floor(res.predictions, target),
                    "width": float((res.predictions["hi"] - res.predictions["lo"]).median()),
                    "spearman": res.scores["spearman"],
                    "seconds": time.perf_counter() - t0,
                    "note": "",
                }
            )
            log(
                f"  {target} {scheme:6s} {name:18s} n={res.scores['n']} mae={res.scores['mae']:.4g} "
                f"bits-only={mae_b:.4g} ({time.perf_counter() - t0:.0f} s)"
            )
    return pd.DataFrame(rows)


def choose(cv: pd.DataFrame, target: str, scheme: str = "family") -> str:
    """The estimator to ship: the lowest MAE ratio to bits-only under ``scheme`` among those whose 90% intervals
    cover at least 85% of held-out rows (an interval that covers less is not a 90% interval), that did not
    diverge and were scored on at least 80% of the rows; bits-only when none qualifies."""
    sub = cv[(cv["target"] == target) & (cv["scheme"] == scheme) & cv["mae"].notna()]
    sub = sub[(sub["n"] >= 0.8 * sub["n"].max()) & (sub["ratio"] < 10) & (sub["coverage"] >= 0.85)]
    if sub.empty:
        return "bits-only"
    return str(sub.sort_values(["ratio", "mae"]).iloc[0]["estimator"])


# ----- seed findings on paired public rows -------------------------------------------------------------------
def _pairs(t: pd.DataFrame, col: str, a: str, b: str, keys: list[str], target: str) -> pd.DataFrame:
    x = t[t["usable"] & (t["target"] == target) & t[col].isin([a, b])]
    g = x.groupby([*keys, col])[target].median().unstack(col)
    return g.dropna(subset=[a, b]) if a in g and b in g else g.iloc[:0]


def finding_gptq_vs_rtn(t: pd.DataFrame) -> list[str]:
    out = []
    keys = ["table_id", "model", "bits", "group_size", "metric", "eval_dataset"]
    for target in ("log_ppl_ratio", "acc_drop"):
        p = _pairs(t.assign(group_size=t["group_size"].fillna(-1)), "method", "gptq", "rtn", keys, target)
        if p.empty:
            continue
        better = (p["gptq"] < p["rtn"]).mean()
        for bits in sorted(p.index.get_level_values("bits").unique()):
            q = p.xs(bits, level="bits")
            d = (q["rtn"] - q["gptq"]).median()
            out.append(
                f"| {target} | {bits:g} | {len(q)} | {(q['gptq'] < q['rtn']).mean():.0%} | "
                f"{q['rtn'].median():.4g} | {q['gptq'].median():.4g} | {d:.4g} |"
            )
        out.append(f"| {target} | all | {len(p)} | {better:.0%} | | | |")
    return out


def finding_tokens(t: pd.DataFrame) -> list[str]:
    """Pairs of models of (nearly) equal size and different D, same table / method / bits / metric."""
    pairs = [
        ("LLaMA-1", "Llama-2", 7.0, 7.0),
        ("LLaMA-1", "Llama-2", 13.0, 13.0),
        ("Llama-2", "Llama-3", 7.0, 8.0),
        ("Llama-2", "Llama-3", 70.0, 70.0),
    ]
    out = []
    keys = ["table_id", "method", "bits", "group_size", "metric", "eval_dataset", "datatype"]
    for target in ("log_ppl_ratio", "acc_drop", "kld"):
        for fa, fb, na, nb in pairs:
            x = t[t["usable"] & (t["target"] == target)].assign(group_size=t["group_size"].fillna(-1))
            a = x[(x["family"] == fa) & (x["params_b"] == na)]
            b = x[(x["family"] == fb) & (x["params_b"] == nb)]
            ga = a.groupby(keys)[target].median()
            gb = b.groupby(keys)[target].median()
            j = pd.concat([ga.rename("a"), gb.rename("b")], axis=1).dropna()
            j = j[(j["a"] > 0) & (j["b"] > 0)] if target != "acc_drop" else j
            if len(j) < 3:
                continue
            da = a["train_tokens"].iloc[0] / 1e12
            db = b["train_tokens"].iloc[0] / 1e12
            more = (j["b"] > j["a"]).mean()
            ratio = float(np.exp(np.median(np.log(j["b"] / j["a"])))) if (j > 0).all().all() else math.nan
            out.append(
                f"| {target} | {fa}-{na:g}B ({da:g}T) | {fb}-{nb:g}B ({db:g}T) | {len(j)} | {more:.0%} | "
                f"{j['a'].median():.4g} | {j['b'].median():.4g} | {ratio:.3g} |"
            )
    return out


def finding_calibration(t: pd.DataFrame) -> list[str]:
    """llama.cpp's T01 scoreboard: the same type with no importance matrix and with imatrices from 1k to 10m
    calibration tokens (WikiText)."""
    x = t[t["table_id"].str.startswith("T01") & (t["target"] == "kld") & t["usable"]].copy()
    x["imatrix"] = x["notes"].str.extract(r"imatrix=([^;]+)")[0].str.strip()
    g = x.groupby(["datatype", "imatrix"])["kld"].median().unstack("imatrix")
    out = []
    for dt, r in g.iterrows():
        vals = r.dropna()
        if len(vals) < 2:
            continue
        sized = vals.drop(labels=["None"], errors="ignore")
        spread = (sized.max() / sized.min() - 1) if len(sized) >= 2 else math.nan
        none = vals.get("None", math.nan)
        gain = (1 - sized.median() / none) if np.isfinite(none) and len(sized) else math.nan
        out.append(
            f"| {dt} | {none:.4g} | {sized.median():.4g} | {len(sized)} | "
            + (f"{gain:.0%}" if np.isfinite(gain) else "n/a")
            + " | "
            + (f"{spread:.1%}" if np.isfinite(spread) else "n/a")
            + " |"
        )
    return out


def fitted_exponents(target: str = "log_ppl_ratio") -> list[str]:
    """Constants of the D/N forms fitted on all rows with D (with standard errors)."""
    frame = public_fit_frame(target=target)
    out = []
    for name in ("ouyang", "kumar", "rate-distortion-d", "chen"):
        est = make_estimator(name, "public", frame, target)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(frame, groups=frame["family"].to_numpy())
        except (LawError, np.linalg.LinAlgError) as err:
            out.append(f"| {name} | fit failed: {str(err)[:80]} | |")
            continue
        s = est.summary()
        for _, r in s.iterrows():
            if str(r["param"]).startswith(("method[", "intercept")):
                continue
            out.append(f"| {name} | {r['param']} | {r['estimate']:.4g} +- {r['stderr']:.2g} |")
    return out


# ----- the report ---------------------------------------------------------------------------------------------
def build(out: Path, cv: pd.DataFrame, save_laws: bool = False, models_dir: Path | None = None) -> str:
    data = load_public()
    t = data.table
    lines = [
        "# Laws across models from published results",
        "",
        "Regenerate: `python -m qscale.report.public` (CV of every preset on every public target; "
        "`--save` refits and saves the chosen law per target to models/). Data: data/public/results.csv "
        "(4,497 published rows, provenance in data/public/SOURCES.md) plus the real panel's measured runs "
        "(data/runs_panel.sqlite, table `qscale-panel`).",
        "",
        "## Rows per target",
        "",
        "| target | unit | rows | families | tables | with D | with a qscale format |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, tg in TARGETS.items():
        r = data.rows(name)
        lines.append(
            f"| {name} | {tg.unit} | {len(r)} | {r['family'].nunique()} | {r['table_id'].nunique()} | "
            f"{int(r['train_tokens'].notna().sum())} | {int(r['spec'].notna().sum())} |"
        )
    lines += [
        "",
        "Rows set aside (each row counted once, first reason that applies):",
        "",
        "| reason | rows |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v} |" for k, v in data.dropped.items() if v]
    lines += [
        "",
        "## CV: each estimator against bits-only on the same rows",
        "",
        "`ratio` = MAE / bits-only MAE (target <= 0.5); coverage of the 90% interval (target 0.85-0.95); "
        "hi/lo = median upper/lower interval bound over rows with lo > 0 (target <= 4); width = median hi - lo "
        "in the target's unit (the measure that means something for accuracy drops, which cross zero). MAE in "
        "the target's unit; 'diverged' = MAE above 100x the target's spread.",
        "",
    ]
    for name in TARGETS:
        frame = public_fit_frame(target=name)
        spread = float(frame[name].std())
        sub = cv[cv["target"] == name]
        if sub.empty:
            continue
        lines += [
            f"### {name} ({TARGETS[name].unit})",
            "",
            "| scheme | estimator | n | MAE | bits-only MAE | ratio | coverage | hi/lo | width | rho within model |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for _, r in sub.iterrows():
            if r.get("note"):
                lines.append(f"| {r['scheme']} | {r['estimator']} | | | | | | | | {r['note']} |")
                continue
            ratio = "diverged" if r["mae"] > DIVERGED_SPREADS * spread else f"{r['ratio']:.2f}"
            lines.append(
                f"| {r['scheme']} | {r['estimator']} | {int(r['n'])} | {_fmt(r['mae'], spread)} | "
                f"{_fmt(r['mae_bits_only'], spread)} | {ratio} | {r['coverage']:.2f} | "
                f"{_fmt(r['hi_lo'], math.inf, 3)} | {_fmt(r.get('width', math.nan), math.inf, 3)} | "
                f"{r['spearman']:.2f} |"
            )
        best = choose(cv, name)
        b = sub[(sub["scheme"] == "family") & (sub["estimator"] == best)].iloc[0]
        met = "met" if b["ratio"] <= 0.5 else "not met"
        floor = float(b.get("hi_lo_floor", math.nan))
        if not np.isfinite(floor):  # a CV table from before the column existed: one CV of the chosen law
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = cross_validate(make_estimator(best, "public", frame, name), frame, "family")
            floor = _floor(res.predictions, name)
        lines += [
            "",
            f"Chosen for `{LAW_NAMES[name]}` (leave-one-family-out; lowest ratio with coverage >= 0.85): **{best}**: "
            f"MAE {b['mae']:.4g} vs bits-only {b['mae_bits_only']:.4g} on the same {int(b['n'])} rows "
            f"(ratio {b['ratio']:.2f}, target <= 0.5: {met}); coverage {b['coverage']:.2f} (target 0.85-0.95: "
            f"{'met' if 0.85 <= b['coverage'] <= 0.95 else 'not met'}); median hi/lo "
            f"{_fmt(b['hi_lo'], math.inf, 3)} (target <= 4: {'met' if b['hi_lo'] <= 4 else 'not met'}"
            f"{'' if np.isfinite(b['hi_lo']) else ': every lower bound is 0'}). The held-out errors themselves "
            f"limit it: 90% of rows have |ln(pred/measured)| <= "
            f"{math.log(floor) / 2:.2f}, so a 90% interval of constant log width cannot have hi/lo below {floor:.3g}.",
            "",
        ]
        if save_laws:
            from qscale.laws.fitting import FitData, fit_law

            law = fit_law(
                FitData("public", frame, "data/public/results.csv + data/runs_panel.sqlite", name),
                best,
                LAW_NAMES[name],
                scheme="family",
                scores=cv[cv["target"] == name].rename(columns={}),
                models_dir=models_dir,
            )
            lines += [f"Saved `{law.name}` ({law.n_rows} rows).", ""]
    lines += [
        "## Seed findings on the public rows",
        "",
        "### GPTQ vs RTN at equal bits (same table, model, bits, group, metric)",
        "",
        "| target | bits | pairs | GPTQ better | RTN median | GPTQ median | median RTN - GPTQ |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *finding_gptq_vs_rtn(t),
        "",
        "### Training tokens at equal size (same table, method, datatype, metric)",
        "",
        "| target | fewer tokens | more tokens | pairs | more-token model loses more | median (fewer) | "
        "median (more) | geometric mean ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *finding_tokens(t),
        "",
        "Fitted D and N exponents (all rows with D, log ppl ratio; +- one standard error):",
        "",
        "| law | constant | estimate |",
        "|---|---|---|",
        *fitted_exponents(),
        "",
        "### How much the calibration set matters (llama.cpp T01, Llama-3-8B, mean KL)",
        "",
        "| type | no imatrix | with imatrix (median) | imatrix sizes | KL saved by an imatrix | "
        "spread across 1k-10m calibration tokens |",
        "|---|---:|---:|---:|---:|---:|",
        *finding_calibration(t),
        "",
        "## Training tokens D (data/public/SOURCES.md)",
        "",
        "| family | size (B) | D (tokens) | source |",
        "|---|---:|---:|---|",
    ]
    for (fam, size), (d, src) in TRAIN_TOKENS.items():
        lines.append(f"| {fam} | {'all' if size is None else f'{size:g}'} | {d:.3g} | {src} |")
    known = set(t.loc[t["train_tokens"].notna(), "family"])
    unknown = sorted(set(t["family"]) - known)
    lines += [
        "",
        f"Unknown (no published count): {', '.join(unknown)}.",
        "",
        "## Format capacity (data/public/format_capacity.csv)",
        "",
        "Effective bits = SQNR / 6.02 dB of the format on 256 x 4096 synthetic weights, qscale's own kernels "
        "(`python -m qscale.laws.public capacity`).",
        "",
        "| spec | bits/weight | eff. bits (Gaussian) | eff. bits (t5) | in the public rows |",
        "|---|---:|---:|---:|---:|",
    ]
    cap = pd.read_csv(default_path("DEFAULT_CAPACITY_CSV"))
    used = t[t["usable"]]["spec"].value_counts()
    for _, r in cap.iterrows():
        lines.append(
            f"| {r['spec']} | {r['bits_per_element']:g} | {r['eff_bits_gauss']:.2f} | "
            f"{r['eff_bits_t5']:.2f} | {int(used.get(r['spec'], 0))} |"
        )
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


#: The report's files in the repository (:mod:`qscale.paths`), with the option that replaces each; module
#: attributes resolved when asked for (``DEFAULT_CV_CACHE``: the committed CV table), never at import.
_DEFAULTS = {
    "DEFAULT_CV_CACHE": ("reports/public_cv.csv", "--cv-cache"),
    "DEFAULT_OUT": ("reports/public_laws.md", "--out"),
}


def _default(name: str) -> Path:
    return repo_path(*_DEFAULTS[name])


def __getattr__(name: str) -> Path:
    if name in _DEFAULTS:
        return _default(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cv_frame(
    cache: Path | None = None, refresh: bool = False, targets: list[str] | None = None, log=print
) -> pd.DataFrame:
    """The CV table of every target: read from ``cache`` (default the committed reports/public_cv.csv) unless
    ``refresh`` or a target is missing there; what is computed is written back."""
    cache = Path(cache) if cache is not None else _default("DEFAULT_CV_CACHE")
    targets = targets or list(TARGETS)
    if cache.exists() and not refresh:
        cv = pd.read_csv(cache, keep_default_na=False, na_values=[""])
        missing = [x for x in targets if x not in set(cv["target"])]
    else:
        cv, missing = pd.DataFrame(), targets
    for x in missing:
        t0 = time.perf_counter()
        cv = pd.concat([cv, cv_table(x, log=log)], ignore_index=True)
        log(f"{x}: CV in {time.perf_counter() - t0:.0f} s")
    if missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cv.to_csv(cache, index=False)
    cv["note"] = cv["note"].fillna("") if "note" in cv else ""
    return cv


def summary_lines(cv: pd.DataFrame) -> list[str]:
    """The public section of reports/laws.md: per target the chosen law against bits-only (details in
    reports/public_laws.md)."""
    lines = [
        "| target | rows | chosen (leave-one-family-out) | MAE | bits-only MAE | ratio (target <= 0.5) | "
        "coverage (0.85-0.95) | median hi/lo (<= 4) | leave-one-table-out ratio |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in TARGETS:
        sub = cv[cv["target"] == name]
        if sub.empty:
            continue
        best = choose(cv, name)
        f = sub[(sub["scheme"] == "family") & (sub["estimator"] == best)].iloc[0]
        t = sub[(sub["scheme"] == "table") & (sub["estimator"] == best)]
        t_ratio = f"{t.iloc[0]['ratio']:.2f}" if len(t) and np.isfinite(t.iloc[0]["ratio"]) else "n/a"
        lines.append(
            f"| {name} ({TARGETS[name].unit}) | {int(f['n'])} | {best} | {f['mae']:.4g} | "
            f"{f['mae_bits_only']:.4g} | {f['ratio']:.2f} | {f['coverage']:.2f} | {_fmt(f['hi_lo'], math.inf, 3)} | "
            f"{t_ratio} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qscale.report.public", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="the report (default reports/public_laws.md)")
    ap.add_argument(
        "--cv-cache",
        type=Path,
        default=None,
        help="CV results, reused unless --refresh (default reports/public_cv.csv)",
    )
    ap.add_argument("--refresh", action="store_true", help="recompute the CV even if the cache exists")
    ap.add_argument("--save", action="store_true", help="refit and save the chosen law per target to models/")
    ap.add_argument("--targets", default=",".join(TARGETS))
    args = ap.parse_args(argv)
    targets = [x.strip() for x in args.targets.split(",") if x.strip()]
    bad = [x for x in targets if x not in TARGETS]
    if bad:
        print(f"error: unknown target(s) {bad}; choices: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    try:
        out = args.out if args.out is not None else _default("DEFAULT_OUT")
        cache = args.cv_cache if args.cv_cache is not None else _default("DEFAULT_CV_CACHE")
    except PathError as err:  # an installed package: no reports/ to default to
        print(f"error: {err}", file=sys.stderr)
        return 2
    cv = cv_frame(cache, args.refresh, targets, log=lambda m: print(m, file=sys.stderr))
    build(out, cv, save_laws=args.save)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
