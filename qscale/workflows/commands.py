"""CLI adapters of the workflows: ``qscale predict`` (profile law by default for a model), ``qscale profile``,
``qscale plan`` (mixed-precision plans), ``qscale export`` (a plan for llama.cpp or llm-compressor), ``qscale demo``
and ``qscale lens`` (the perturbation-lens study)."""

from __future__ import annotations

import inspect
import json
import time
import typing
from pathlib import Path

import typer

from qscale.laws import commands as law_commands
from qscale.progress import PROGRESS_HELP

profile_app = typer.Typer(
    help="Sensitivity profiles: one calibration pass per model, KL predictions for every format.",
    no_args_is_help=True,
)


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def _load_and_profile(model: str, bar, *, models_dir: Path | None, alpha: float):
    """Load MODEL and compute (or read the cached) sensitivity profile, each a row of ``bar``; the workflow then
    finds the profile in its cache. A missing calibration fails before the profile pass, as in the workflow."""
    from qscale.lm import load
    from qscale.measure.sensitivity import cached_profile
    from qscale.workflows.profile import calibrations, population

    with bar.step(f"load {model}"):
        lm = load(model)
    calibrations(population(lm.name), models_dir, alpha)
    row = bar.task("sensitivity profile")
    _, _, computed = cached_profile(lm, progress=row.callback())
    row.done(note="computed" if computed else "cached")
    return lm, computed


def profile_predict(
    model: str,
    specs: list[str],
    *,
    alpha: float,
    budget: float | None,
    as_json: bool,
    breakdown: bool,
    progress: bool | None,
    models_dir: Path | None,
) -> None:
    """`qscale predict --model M --formats ...` without --law: the profile workflow."""
    from qscale.laws.estimators import LawError
    from qscale.lm.loading import LoadError
    from qscale.progress import Progress, wanted
    from qscale.workflows.profile import predict_model, rank_profile

    skipped: dict[str, str] = {}
    try:
        with Progress(wanted(progress)) as bar:
            lm, computed = _load_and_profile(model, bar, models_dir=models_dir, alpha=alpha)
            row = bar.task("predict formats", total=len(specs))
            out = predict_model(
                lm,
                specs,
                alpha=alpha,
                models_dir=models_dir,
                breakdown=breakdown,
                skipped=skipped,
                progress=lambda fmt: row.advance(note=fmt),
            )
            row.done()
        if computed:  # the profile pass ran above; the workflow then read it from the cache
            out["profile"]["computed"] = True
            out["profile"]["seconds"] = out["profile"]["profile_seconds_when_computed"]
    except (LawError, LoadError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
        return
    for spec, why in skipped.items():
        typer.secho(f"skipped {spec}: {why}", fg="yellow", err=True)
    if not out["predictions"]:
        _fail("no format could be predicted for this model")
    rank_profile(out, budget, skipped)
    preds = out["predictions"]
    rec = next((p for p in preds if p["format"] == out.get("recommended")), None)
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    prof = out["profile"]
    typer.echo(
        f"{out['model']}  ({out['identity']}); profile: {prof['n_tokens']} tokens, "
        f"{prof['passes']['forward']} fwd + {prof['passes']['backward']} bwd passes, "
        f"{prof['profile_seconds_when_computed']:.1f} s ({'computed now' if prof['computed'] else 'cached'})"
        + (
            f"; noise probe: measured / raw {prof['probe']['factor']:.3f} ({prof['probe']['seconds']:.1f} s)"
            if prof.get("probe")
            else ""
        )
    )
    level = f"{1 - alpha:.0%}"
    typer.echo(
        f"{'format':22s} {'bits/w':>7s}  {'KL (nats/token)':>16s}  {level} interval        top layer (share)"
    )
    for p in preds:
        top = p["top_layers"][0] if p["top_layers"] else None
        t = f"{top['layer']} ({top['share']:.0%})" if top else ""
        typer.echo(
            f"{p['format']:22s} {p['bits_per_weight']:7.3f}  {p['value']:16.4g}  "
            f"[{p['lo']:.3g}, {p['hi']:.3g}]  {t}"
        )
    for w in dict.fromkeys(w for p in preds for w in p["warnings"]):
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    if budget is not None:
        if rec is None:
            typer.echo(f"no format's upper bound is within the budget {budget:g} nats/token")
        else:
            typer.echo(
                f"recommended: {rec['format']} ({rec['bits_per_weight']:.3f} bits/weight, "
                f"hi={rec['hi']:.4g} <= {budget:g})"
            )


def predict_cmd(**kwargs) -> None:
    """Predict the quality loss of quantizing a model to formats: with --model and no --law, from the model's
    own sensitivity profile (KL with a 90% interval and the layers that carry it); with --law, a named law."""
    law = kwargs.get("law")
    if law is None:
        if not kwargs.get("model"):
            _fail(
                "give --model (the profile law predicts from the model's weights) or --law NAME "
                "(see `qscale laws list`)"
            )
        law_only = [
            opt
            for opt, key in (
                ("--params-b", "params_b"),
                ("--bits", "bits"),
                ("--group-size", "group_size"),
                ("--method", "method"),
                ("--family", "family"),
                ("--train-tokens", "train_tokens"),
                ("--feature", "feature"),
                ("--baseline-ppl", "baseline_ppl"),
                ("--extrapolate", "extrapolate"),
            )
            if kwargs.get(key) not in (None, False, [], ())
        ]
        if law_only:
            _fail(
                f"{', '.join(law_only)} apply to a named law (--law NAME, see `qscale laws list`); the profile law "
                "predicts from the model's own weights and RTN"
            )
        from qscale.formats import expand_formats

        spec = kwargs.get("formats") or kwargs.get("format")
        if not spec:
            _fail("give --format or --formats (a set like all-4bit or a comma list)")
        try:
            specs = expand_formats(spec)
        except ValueError as err:
            _fail(str(err))
            return
        profile_predict(
            kwargs["model"],
            specs,
            alpha=kwargs["alpha"],
            budget=kwargs.get("budget"),
            as_json=kwargs["as_json"],
            breakdown=kwargs["breakdown"],
            progress=kwargs["progress"],
            models_dir=kwargs.get("models_dir"),
        )
        return
    kwargs.pop("breakdown", None)
    kwargs.pop("progress", None)
    law_commands.predict_cmd(**kwargs)


# The same options as the named-law command, with --law optional.
_sig = inspect.signature(law_commands.predict_cmd)
_hints = typing.get_type_hints(law_commands.predict_cmd)
_params = []
for _p in _sig.parameters.values():
    _p = _p.replace(annotation=_hints[_p.name])
    if _p.name == "law":
        _p = _p.replace(
            annotation=str | None,
            default=typer.Option(
                None, "--law", help="A named law (see `qscale laws list`); default: the model's profile law."
            ),
        )
    _params.append(_p)
predict_cmd.__signature__ = _sig.replace(parameters=_params)  # type: ignore[attr-defined]
predict_cmd.__annotations__ = {p.name: p.annotation for p in _params} | {"return": None}


@profile_app.command("validate")
def validate_cmd(
    store: list[Path] = typer.Option(..., "--store", help="Run stores with measured RTN runs (repeatable)."),
    out: Path = typer.Option(Path("reports"), "--out", help="Where the validation report goes."),
    ship: bool = typer.Option(
        False, "--ship", help="Also fit on every model and save models/profile-*.json."
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="Raw predictions cache (JSON; default: the repository's data/profile_raw.json)."
    ),
    models_dir: Path | None = typer.Option(None, "--models-dir"),
) -> None:
    """Leave-one-model-out validation of the profile law (and, with --ship, the calibration it ships)."""
    from qscale.laws.estimators import LawError
    from qscale.workflows.profile import validate

    for s in store:
        if not s.is_file():
            _fail(f"no run store at {s}")
    try:
        validate(store, out_dir=out, models_dir=models_dir, cache=cache, ship=ship, log=typer.echo)
    except LawError as err:
        _fail(str(err))
        return
    typer.echo((out / "profile_validation.md").read_text())


@profile_app.command("compute")
def compute_cmd(
    model: str = typer.Argument(..., help="zoo:NAME, panel:NAME, an HF directory or a .gguf file."),
    estimator: str = typer.Option(
        "rank1", "--estimator", help="rank1 (small artifact) | full (fp16 diagonal)."
    ),
    label_draws: int = typer.Option(
        1, "--label-draws", min=1, help="Sampled label sets per calibration row."
    ),
    recompute: bool = typer.Option(False, "--recompute", help="Ignore a cached profile."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Compute (or show the cached) sensitivity profile of a model: cost and the most sensitive layers."""
    from qscale.lm import load
    from qscale.lm.loading import LoadError
    from qscale.measure.sensitivity import cached_profile
    from qscale.progress import Progress, wanted

    try:
        with Progress(wanted(progress)) as bar:
            with bar.step(f"load {model}"):
                lm = load(model)
            row = bar.task("sensitivity profile")
            prof, path, computed = cached_profile(
                lm,
                estimator=estimator,
                label_draws=label_draws,
                recompute=recompute,
                progress=row.callback(),
            )
            row.done(note="computed" if computed else "cached")
    except (LoadError, ValueError) as err:
        _fail(str(err))
        return
    typer.echo(
        f"{lm.name}: {len(prof.layers)} layers, {prof.n_tokens} calibration tokens, "
        f"{prof.passes['forward']} fwd + {prof.passes['backward']} bwd passes, {prof.seconds:.1f} s "
        f"({'computed' if computed else 'cached'}) -> {path}"
    )
    if prof.probe is not None:
        pr = prof.probe
        typer.echo(
            f"noise probe: measured / raw KL {pr['factor']:.3f} (Gaussian noise of relative size "
            f"{pr['rel_err']:.3f}, raw {pr['raw']:g}, measured {pr['measured']:.4g} nats/token on {pr['tokens']} "
            f"tokens, {pr['passes']['forward']} fwd rows, {pr['seconds']:.1f} s)"
        )
    top = sorted(prof.layers.values(), key=lambda lp: -lp.total / (lp.shape[0] * lp.shape[1]))[:8]
    typer.echo("most sensitive layers (mean Fisher diagonal per weight):")
    for lp in top:
        typer.echo(
            f"  {lp.name:48s} {lp.total / (lp.shape[0] * lp.shape[1]):.3e}  rank-1 fit {lp.rank1_fit:.2f}"
        )


def _bits_per_weight(value: float | None) -> float | None:
    """--target-bpw checked before the model is loaded (the plan workflow checks it again)."""
    if value is not None and not (0 < value <= 32):
        raise typer.BadParameter(f"must be in (0, 32] bits per weight, got {value:g}")
    return value


def _positive_kl(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be a positive KL in nats/token, got {value:g}")
    return value


def plan_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="zoo:NAME, panel:NAME, an HF directory or a .gguf file."
    ),
    candidates: str = typer.Option(
        "int3-g128,int4-g128,nf4-g64,int5-pc,fp6-e2m3-pc,int8-pc",
        "--candidates",
        help="Formats a layer may take (comma list or a set; see `qscale formats`).",
    ),
    target_bpw: float | None = typer.Option(
        None,
        "--target-bpw",
        callback=_bits_per_weight,
        help="Average bits per weight to stay at or under, in (0, 32] (scales counted).",
    ),
    max_kld: float | None = typer.Option(
        None,
        "--max-kld",
        callback=_positive_kl,
        help="The dual: the fewest bits whose predicted KL (nats/token, > 0) is at most this.",
    ),
    keep: list[str] = typer.Option(
        None, "--keep", help="Layer name patterns kept in 16-bit (counted at 16 bits per weight); repeatable."
    ),
    anchor: list[Path] = typer.Option(
        None,
        "--anchor",
        help="Run stores with measured uniform RTN runs of this model: each candidate's predicted level is "
        "scaled to its measured KL (repeatable).",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the plan file (JSON) here."),
    alpha: float = typer.Option(0.1, "--alpha", min=0.01, max=0.5, help="Interval miscoverage (0.1: 90%)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Where the profile calibration lives."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Choose one format per linear layer for a bits budget (or a KL ceiling) from the model's predicted damage."""
    from qscale.formats import expand_formats
    from qscale.laws.estimators import LawError
    from qscale.lm.loading import LoadError
    from qscale.workflows.plan import PlanError, anchors_from_stores, plan_model, save_plan

    for s in anchor or []:
        if not s.is_file():
            _fail(f"--anchor {s}: no run store there")
    from qscale.progress import Progress, wanted

    t0 = time.perf_counter()
    try:
        specs = expand_formats(candidates)
        if (target_bpw is None) == (max_kld is None):  # before the model is loaded (plan_model checks it too)
            raise PlanError("give exactly one of --target-bpw and --max-kld")
        with Progress(wanted(progress)) as bar:
            lm, _ = _load_and_profile(model, bar, models_dir=models_dir, alpha=alpha)
            anchors = None
            if anchor:
                anchors = anchors_from_stores(anchor, lm)
                if not anchors:
                    raise PlanError(
                        f"the stores {[str(a) for a in anchor]} hold no measured RTN run of {model}"
                    )
            with bar.step(f"plan ({len(specs)} candidates)"):
                plan = plan_model(
                    lm,
                    specs,
                    anchors=anchors,
                    target_bpw=target_bpw,
                    max_kld=max_kld,
                    keep=keep or (),
                    alpha=alpha,
                    models_dir=models_dir,
                )
        plan["seconds"]["total"] = round(time.perf_counter() - t0, 2)  # the model load and profile included
    except (PlanError, LawError, LoadError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
        return
    if out is not None:
        save_plan(plan, out)
    if as_json:
        typer.echo(json.dumps(plan, indent=1, default=str))
        return
    p = plan["predicted"]
    tgt = plan["target"]
    goal = f"target {tgt['bpw']} bits/weight" if "bpw" in tgt else f"predicted KL <= {tgt['max_kld']}"
    typer.echo(f"{plan['model']['name']}: plan for {goal} -> {plan['bpw']:.4f} bits/weight")
    typer.echo(
        f"  predicted KL {p['value']:.4g} nats/token, {int(round(100 * (1 - alpha)))}% interval "
        f"[{p['lo']:.4g}, {p['hi']:.4g}]; solver {plan['solver']['method']} "
        f"(within {plan['solver']['gap']:.2g} of the Lagrangian bound), {plan['seconds']['planning']:.1f} s"
    )
    typer.echo(
        "  layers per format: " + ", ".join(f"{k} {v}" for k, v in sorted(plan["formats_used"].items()))
    )
    if plan["kept"]:
        typer.echo(f"  kept in 16-bit: {len(plan['kept'])} layer(s)")
    typer.echo("  uniform candidates (predicted KL):")
    for u in sorted(plan["uniform"], key=lambda u: u["bpw"]):
        typer.echo(
            f"    {u['format']:16s} {u['bpw']:7.4f} bits/weight  {u['value']:.4g} [{u['lo']:.3g}, {u['hi']:.3g}]"
        )
    if out is not None:
        typer.echo(
            f"plan written to {out}; apply with `qscale quantize --plan {out}` or measure with `qscale eval --plan {out}`"
        )


def export_cmd(
    plan_file: Path = typer.Argument(..., help="A plan file from `qscale plan --out`."),
    to: str = typer.Option(..., "--to", help="llama.cpp | llm-compressor"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the export here (default: print it)."),
    method: str = typer.Option(
        "rtn", "--method", help="llm-compressor modifier: rtn (QuantizationModifier) | gptq."
    ),
) -> None:
    """Export a plan: llama.cpp `--tensor-type-file` lines, or an llm-compressor recipe."""
    from qscale.registry import unknown_name_message
    from qscale.workflows.export import EXPORTERS, ExportError, to_llama_cpp, to_llm_compressor
    from qscale.workflows.plan import PlanError, load_plan

    if to not in EXPORTERS:
        _fail(unknown_name_message(to, EXPORTERS, "export target"))
    if method not in ("rtn", "gptq"):
        _fail(f"--method must be rtn or gptq, got {method!r}")
    try:
        plan = load_plan(plan_file)
        if to == "llama.cpp":
            res = to_llama_cpp(plan)
            text = res["tensor_types"]
            notes = [f"run: {res['command']}", *res["notes"]]
        else:
            text = to_llm_compressor(plan, method=method)
            notes = []
    except (PlanError, ExportError) as err:
        _fail(f"cannot export {plan_file} to {to}: {err}")
        return
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}")
    for n in notes:
        typer.secho(n, err=True, dim=True)


def demo_cmd(
    out: Path = typer.Option(
        Path("qscale-demo"),
        "--out",
        help="The demo's own folder (run stores, laws, report, plan); resumed when it exists.",
    ),
    real: bool | None = typer.Option(
        None,
        "--real/--no-real",
        help="The real-model step: default when the panel model is built; --real also builds it.",
    ),
    plan_bpw: float = typer.Option(
        4.5, "--plan-bpw", help="Bits budget of the real model's plan (bits per weight)."
    ),
    measure_plan: bool = typer.Option(
        True, "--measure-plan/--no-measure-plan", help="Also measure the plan's KL."
    ),
    estimators: str = typer.Option(
        "all", "--estimators", help="Law presets to compare: 'all' or a comma list."
    ),
    spec_path: Path | None = typer.Option(
        None, "--spec", help="The tiny-zoo sweep (default data/sweeps/demo_zoo.yaml)."
    ),
    real_spec: Path | None = typer.Option(
        None, "--real-spec", help="The real-model sweep (default data/sweeps/demo_real.yaml)."
    ),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """The whole job, measured, in its own folder: train the tiny zoo if missing, collect, fit laws, predict a
    held-out family beside the baselines, and predict / measure / plan a real model."""
    from qscale.progress import quiet_third_party
    from qscale.workflows.demo import DemoError, run_demo

    try:
        with quiet_third_party():
            summary = run_demo(
                out,
                zoo_spec=spec_path,
                real_spec=real_spec,
                real=real,
                plan_bpw=plan_bpw,
                measure_plan=measure_plan,
                estimators=estimators,
                progress=progress,
                echo=typer.echo,
            )
    except DemoError as err:
        _fail(str(err))
    if summary["failed"]:
        raise typer.Exit(1)


def lens_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="HF checkpoint dir, zoo name (zoo:tiny-llama-m), panel:NAME or .gguf file."
    ),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="Evaluation tokens (test split)."),
    corpus: str = typer.Option("enwiki_gensim", "--corpus", help="Evaluation corpus (see `qscale corpora`)."),
    seq_len: int = typer.Option(128, "--seq-len", help="Evaluation window length."),
    strengths: str = typer.Option(
        "0.02,0.05,0.1,0.2,0.4", "--strengths", help="Comma-separated relative noise strengths ||e||/||w||."
    ),
    seed: int = typer.Option(0, "--seed", help="First noise seed (recorded)."),
    n_seeds: int = typer.Option(1, "--seeds", min=1, help="Average every noise entry over this many seeds."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of tables."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Also write lens.json and lens.md into this folder."
    ),
) -> None:
    """dnll of MODEL under weight/activation perturbations of each type and strength, and uniform vs cube-root."""
    from qscale.lm import load
    from qscale.workflows.lens import LensConfig, format_lens, run_lens

    try:
        rels = tuple(float(s) for s in strengths.split(",") if s.strip())
    except ValueError as err:
        raise typer.BadParameter(
            f"--strengths must be comma-separated numbers, e.g. 0.05,0.1: {err}"
        ) from err
    if not rels or any(not (r >= 0) for r in rels):
        raise typer.BadParameter("--strengths needs at least one non-negative number, e.g. 0.05,0.1")
    if max_tokens < seq_len:
        raise typer.BadParameter(f"--max-tokens ({max_tokens}) must be at least --seq-len ({seq_len})")
    cfg = LensConfig(
        corpus=corpus, seq_len=seq_len, max_tokens=max_tokens, strengths=rels, seed=seed, n_seeds=n_seeds
    )
    lm = load(model)
    say = None if as_json else (lambda msg: typer.echo(msg, err=True))
    result = run_lens(lm.model, lm.tokenizer, cfg, progress=say)
    result["model"] = lm.name
    result["hardware"] = _lens_hardware()
    text = format_lens(result, lm.name)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "lens.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        (out / "lens.md").write_text(text)
    typer.echo(json.dumps(result, indent=2, sort_keys=True) if as_json else text)


def _lens_hardware() -> str:
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()}-core CPU ({platform.machine()})"


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_cmd)
    app.add_typer(profile_app, name="profile")
    app.command("plan")(plan_cmd)
    app.command("export")(export_cmd)
    app.command("demo")(demo_cmd)
    app.command(
        "lens", help="Perturbation lens: dnll vs noise strength/shape, uniform vs cube-root (one model)."
    )(lens_cmd)
