"""CLI: ``qscale fit``, ``qscale laws list|show``, ``qscale predict``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

laws_app = typer.Typer(help="List and inspect fitted laws (models/<name>/).", no_args_is_help=True)


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def fit_cmd(
    runs: Path | None = typer.Option(
        None, "--runs", help="Run store (data/runs.sqlite) or a parquet/csv export."
    ),
    public: bool = typer.Option(False, "--public", help="Fit on the published results (data/public)."),
    target: str | None = typer.Option(
        None, "--target", help="Target column (zoo: dnll; public: log_ppl_ratio)."
    ),
    estimator: str = typer.Option("all", "--estimator", help="'all' or a comma list of estimator presets."),
    cv: str | None = typer.Option(
        None, "--cv", help="CV scheme: family | size | table (default: all applicable)."
    ),
    name: str | None = typer.Option(
        None, "--name", help="Artifact name under models/ (default: <kind>-<estimator>)."
    ),
    ship: str | None = typer.Option(None, "--ship", help="Preset to save (default: lowest CV MAE)."),
    no_save: bool = typer.Option(False, "--no-save", help="Compare only; save nothing."),
    alpha: float = typer.Option(
        0.1, "--alpha", min=0.01, max=0.5, help="Interval miscoverage (0.1 -> 90% intervals)."
    ),
    models_dir: Path | None = typer.Option(
        None,
        "--out",
        "--models-dir",
        help="Where the law is saved (required unless --no-save; '--out models' adds to the shipped laws).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace a law of the same name in --out."),
) -> None:
    """Compare estimators by grouped cross-validation (side by side) and save the chosen law."""
    from rich.console import Console
    from rich.table import Table

    from qscale.laws.estimators import LawError
    from qscale.laws.fitting import DEFAULT_SCHEMES, choose, compare_estimators, fit_law, load_fit_data
    from qscale.laws.registry import parse_estimators

    try:
        data = load_fit_data(runs=runs, public=public, target=target)
    except (LawError, FileNotFoundError) as err:
        _fail(str(err))
        return
    if not no_save and models_dir is None:  # the shipped laws change only when asked
        _fail(
            "give --out DIR to save the law ('--out models' adds to the shipped laws), or --no-save to compare only"
        )
        return
    try:
        names = parse_estimators(estimator, data.kind)
        schemes = (cv,) if cv else DEFAULT_SCHEMES[data.kind]
        from qscale.laws.cv import group_column

        for s in schemes:
            group_column(data.frame, s)
        scores = compare_estimators(data, names, schemes, alpha=alpha)
    except (LawError, FileNotFoundError) as err:
        _fail(str(err))
        return
    console = Console(width=160)
    cols = ["estimator", "scheme", "n", "mae", "rmse", "r2", "spearman", "coverage"]
    if "mae_delta_ppl" in scores.columns:
        cols.append("mae_delta_ppl")
    if "mae_largest" in scores.columns:
        cols.append("mae_largest")
    table = Table(
        title=f"{data.kind} data ({len(data.frame)} rows, {data.source}): grouped CV, {1 - alpha:.0%} intervals"
    )
    for c in cols:
        table.add_column(c, justify="left" if c in ("estimator", "scheme") else "right")
    for _, r in scores.iterrows():
        table.add_row(*[_fmt(r.get(c)) for c in cols])
    console.print(table)
    notes = scores[scores.get("note", "").astype(str) != ""] if "note" in scores else scores.iloc[:0]
    for _, r in notes.iterrows():
        console.print(f"[yellow]{r['estimator']} ({r['scheme']}): {r['note']}[/yellow]")
    if no_save:
        return
    try:
        preset = ship or (names[0] if len(names) == 1 else choose(scores, schemes[0]))
        law_name = name or f"{data.kind}-{preset}"
        if (Path(models_dir) / law_name / "manifest.json").exists() and not force:
            _fail(
                f"{Path(models_dir) / law_name} already holds a law; pass --force, or another --name / --out"
            )
            return
        law = fit_law(data, preset, law_name, schemes[0], scores=scores, models_dir=models_dir)
    except LawError as err:
        _fail(str(err))
        return
    console.print(f"saved law [bold]{law.name}[/bold] ({preset}, {law.n_rows} rows) -> {law.path}")


@laws_app.command("list")
def laws_list(models_dir: Path | None = typer.Option(None, "--models-dir")) -> None:
    """List the laws saved under models/."""
    from qscale.laws.artifacts import default_models_dir, list_laws

    base = models_dir or default_models_dir()
    names = list_laws(base)
    if not names:
        typer.echo(f"no laws in {base}")
        return
    for n in names:
        m = json.loads((Path(base) / n / "manifest.json").read_text())
        cv = m.get("cv", {})
        first = next(iter(cv.items()), (None, {}))
        mae = first[1].get("mae") if isinstance(first[1], dict) else None
        typer.echo(
            f"{n:32s} {m['estimator']:13s} kind={m['kind']:6s} target={m['target']['name']:14s} "
            f"rows={m['training']['rows']:<5d} cv[{first[0]}] mae={_fmt(mae)}"
        )


@laws_app.command("show")
def laws_show(
    name: str = typer.Argument(..., help="Law name (directory under models/) or path."),
    models_dir: Path | None = typer.Option(None, "--models-dir"),
) -> None:
    """Show a law's manifest and its coefficients with 95% confidence intervals."""
    from qscale.laws.artifacts import load_law, manifest_of
    from qscale.laws.estimators import LawError

    try:
        law = load_law(name, models_dir)
    except LawError as err:
        _fail(str(err))
        return
    m = manifest_of(law)
    m.pop("feature_ranges", None)
    typer.echo(json.dumps({k: v for k, v in m.items() if k != "params"}, indent=2))
    summ = law.estimator.summary()
    if len(summ):
        typer.echo("\ncoefficients (95% CI):")
        typer.echo(summ.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def _parse_kv(items: list[str]) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            _fail(f"--feature expects NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


def predict_cmd(
    law: str = typer.Option(..., "--law", help="Law name under models/ (see `qscale laws list`) or path."),
    breakdown: bool = typer.Option(False, "--breakdown", help="Profile law: every layer's predicted KL."),
    progress: bool | None = typer.Option(
        None,
        "--progress/--no-progress",
        help="Show progress on stderr (profile law; default: on a terminal).",
    ),
    model: str | None = typer.Option(None, "--model", help="Model: zoo:NAME, an HF directory or a .gguf."),
    format: str | None = typer.Option(None, "--format", "-f", help="Format spec, e.g. int4-g128."),
    formats: str | None = typer.Option(None, "--formats", help="A format set (all-4bit, ...) or comma list."),
    budget: float | None = typer.Option(
        None, "--budget", help="Recommend the cheapest format with hi <= budget."
    ),
    params_b: float | None = typer.Option(None, "--params-b", help="Public laws: model size in billions."),
    bits: float | None = typer.Option(None, "--bits", help="Public laws: weight bits."),
    group_size: float | None = typer.Option(None, "--group-size", help="Public laws: group size."),
    method: str | None = typer.Option(None, "--method", help="Public laws: rtn | gptq | awq | ..."),
    family: str | None = typer.Option(None, "--family", help="Public laws: e.g. Llama-2, for exact N and D."),
    train_tokens: float | None = typer.Option(
        None, "--train-tokens", help="Training tokens, where a law uses D."
    ),
    feature: list[str] = typer.Option(
        [], "--feature", help="Give a feature directly: NAME=VALUE (repeatable)."
    ),
    baseline_ppl: float | None = typer.Option(
        None, "--baseline-ppl", help="Public laws: the fp16 perplexity, to also print delta-ppl."
    ),
    alpha: float = typer.Option(
        0.1, "--alpha", min=0.01, max=0.5, help="Interval miscoverage (0.1 -> 90% intervals)."
    ),
    extrapolate: bool = typer.Option(
        False, "--extrapolate", help="Allow inputs far outside the training range."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    models_dir: Path | None = typer.Option(None, "--models-dir"),
) -> None:
    """Predict the quality loss of quantizing a model to a format (or rank formats / fit a budget)."""
    from qscale.laws.estimators import LawError
    from qscale.laws.predict import rank_formats

    given = _parse_kv(feature)
    for k, v in (
        ("params_b", params_b),
        ("bits", bits),
        ("group_size", group_size),
        ("method", method),
        ("family", family),
        ("train_tokens", train_tokens),
    ):
        if v is not None:
            given[k] = v
    if formats is not None:
        from qscale.formats import expand_formats

        try:
            specs = expand_formats(formats)
        except ValueError as err:
            _fail(str(err))
            return
    else:
        specs = [format]
    try:
        ranking = rank_formats(
            model, specs, law, alpha=alpha, extrapolate=extrapolate, budget=budget,
            baseline_ppl=baseline_ppl, inputs=given, models_dir=models_dir,
        )  # fmt: skip
    except (LawError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
        return
    for spec, why in ranking.skipped.items():
        typer.secho(f"skipped {spec}: {why}", fg="yellow", err=True)
    if as_json:
        typer.echo(json.dumps(ranking.to_dict(), indent=2, default=str))
        return
    preds, rec = ranking.predictions, ranking.recommended
    level = f"{1 - alpha:.0%}"
    p0 = preds[0]
    typer.echo(f"law {p0.law} predicts {p0.target} ({p0.unit}), {level} intervals")
    # features equal for every format (model-level) print once; the rest print on each format's line
    shared = {k for k, v in p0.features.items() if all(p.features.get(k) == v for p in preds)}
    for i, p in enumerate(preds):
        what = f"{p.format or ''}".strip() or "(given features)"
        bpe = f"{p.bits_per_element:.3g} b/elem" if p.bits_per_element is not None else ""
        own = ", ".join(f"{k}={_fmt(v)}" for k, v in p.features.items() if k not in shared)
        typer.echo(
            f"{what:22s} {bpe:14s} {p.target} = {p.value:.4g} [{level}: {p.lo:.4g}, {p.hi:.4g}] {p.unit}"
            + (f"   ({own})" if own else "")
        )
        if ranking.deltas is not None:
            dv, dlo, dhi = ranking.deltas[i]
            typer.echo(
                f"{'':37s} delta_ppl = {dv:+.4g} [{level}: {dlo:+.4g}, {dhi:+.4g}] vs {baseline_ppl:g}"
            )
    typer.echo(
        "features: "
        + ", ".join(
            f"{k}={_fmt(v)} ({p0.costs.get(k)})" if k in shared else f"{k} ({p0.costs.get(k)}, per format)"
            for k, v in p0.features.items()
        )
    )
    for w in dict.fromkeys(w for p in preds for w in p.warnings):
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    if budget is not None:
        if rec is None:
            typer.echo(f"no format's upper bound is within the budget {budget:g} {p0.unit}")
        else:
            typer.echo(
                f"recommended: {rec.format} ({rec.bits_per_element:.3g} bits/element, hi={rec.hi:.4g} <= {budget:g})"
            )


def register(app: typer.Typer) -> None:
    app.command("fit")(fit_cmd)
    app.add_typer(laws_app, name="laws")
    # `qscale predict` is registered by qscale.workflows.commands (the default law for a model is a workflow).
