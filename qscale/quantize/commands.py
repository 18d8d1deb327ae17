"""``qscale quantize``: fake-quantize a checkpoint with a method and print SQNR per layer."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def quantize_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="HF checkpoint dir, zoo name (zoo:tiny-llama-m), panel:NAME or .gguf file."
    ),
    format: str | None = typer.Option(
        None, "--format", "-f", help="Format spec, e.g. int4-g128, mxfp4, nf4 (see `qscale formats`)."
    ),
    plan: Path | None = typer.Option(
        None, "--plan", help="A plan file from `qscale plan`: one format per layer (instead of --format)."
    ),
    method: str = typer.Option("rtn", "--method", help="Quantization method (rtn, gptq, ...)."),
    params: str = typer.Option("{}", "--params", help="Method parameters as JSON, e.g. '{\"damp\": 0.01}'."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the fake-quantized checkpoint here."),
    include: list[str] = typer.Option(None, "--include", help="Only layers matching these name patterns."),
    exclude: list[str] = typer.Option(
        None, "--exclude", help="Skip these layers (default: the output head)."
    ),
    calib_corpus: str = typer.Option(
        "enwiki_gensim", "--calib-corpus", help="Calibration corpus for methods that need one."
    ),
    calib_samples: int = typer.Option(32, "--calib-samples", min=1),
    calib_seq_len: int = typer.Option(256, "--calib-seq-len", min=2),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    force: bool = typer.Option(False, "--force", help="Write --out even if the directory is not empty."),
) -> None:
    """Fake-quantize MODEL's linear weights in FORMAT and print SQNR per layer (and write a checkpoint with --out)."""
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        what = "is a file" if not out.is_dir() else "is not empty"
        raise typer.BadParameter(f"--out {out} {what}; choose a new directory or pass --force to overwrite")
    from rich.console import Console
    from rich.table import Table

    from qscale.formats import get_format
    from qscale.lm import load
    from qscale.measure.weights import weight_stats
    from qscale.quantize import get_method, quantized
    from qscale.quantize.plans import PlanError, check_plan_model, load_plan

    if (format is None) == (plan is None):
        raise typer.BadParameter("give exactly one of --format and --plan")
    if plan is not None and (include or exclude):
        raise typer.BadParameter("--plan names its layers; drop --include/--exclude")
    plan_doc = None
    try:
        if plan is not None:
            plan_doc = load_plan(plan)
            fmt = plan_doc["layers"]
        else:
            fmt = get_format(format)
        m = get_method(method)
        try:
            given = json.loads(params)
        except json.JSONDecodeError as err:
            raise typer.BadParameter(
                f"--params {params!r} is not JSON ({err}); e.g. --params '{{\"damp\": 0.01}}'"
            ) from err
        if not isinstance(given, dict):
            raise typer.BadParameter(
                f"--params must be a JSON object, e.g. '{{\"damp\": 0.01}}', got {params!r}"
            )
        method_params = m.resolve_params(given)
    except (PlanError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    lm = load(model)
    if plan_doc is not None:
        for warning in check_plan_model(plan_doc, lm):
            typer.secho(f"warning: {warning}", fg="yellow", err=True)
    bits = plan_doc.get("bpw") if plan_doc is not None else fmt.bits_per_element
    fmt_name = f"plan {plan}" if plan_doc is not None else str(fmt)
    calib = None
    if m.calibration_needed(method_params):
        from qscale.corpora import calibration_batch

        calib = calibration_batch(
            lm.tokenizer, calib_corpus, n_samples=calib_samples, seq_len=calib_seq_len, seed=0
        )
    stats = {}
    from qscale.lm.layers import linear_layers

    for ref in linear_layers(lm.model, include or None, exclude or None):
        if plan_doc is None or ref.name in plan_doc["layers"]:
            stats[ref.name] = weight_stats(ref.get_weight())
    from qscale.quantize import MethodError

    try:
        with quantized(
            lm.model,
            fmt,
            method=m.name,
            params=method_params,
            calib=calib,
            include=include or None,
            exclude=exclude or None,
        ) as info:
            if out is not None:
                from qscale.progress import quiet_third_party

                out.mkdir(parents=True, exist_ok=True)
                with quiet_third_party():  # no "Writing model shards" bar
                    lm.model.save_pretrained(out)
                if lm.tokenizer is not None:
                    lm.tokenizer.save_pretrained(out)
                (out / "qscale_quantized.json").write_text(
                    json.dumps(
                        {
                            "source": model,
                            "format": fmt_name,
                            "layer_formats": plan_doc["layers"] if plan_doc is not None else None,
                            "method": info.get("method"),
                            "sqnr_db": info.get("sqnr_db"),
                            "note": "fake-quantized: weights lie on the format's grid, stored in the source dtype",
                        },
                        indent=2,
                    )
                )
    except (
        MethodError
    ) as err:  # e.g. a plan naming layers the model lacks, or a method without per-layer formats
        raise typer.BadParameter(str(err)) from err
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model": model,
                    "format": fmt_name,
                    "bits_per_element": bits,
                    "sqnr_db": info.get("sqnr_db"),
                    "layers": info.get("layers"),
                    "weight_stats": stats,
                    "method": info.get("method"),
                },
                indent=2,
                default=str,
            )
        )
        return
    per = f"{bits:g} bits/element, " if isinstance(bits, int | float) else ""
    table = Table(title=f"{model}  {fmt_name}  ({per}method {m.name})")
    cols = (
        "layer",
        "shape",
        *(("format",) if plan_doc is not None else ()),
        "SQNR dB",
        "kurtosis",
        "max/std",
    )
    for col in cols:
        table.add_column(col, justify="right" if col != "layer" else "left")
    for name, rec in (info.get("layers") or {}).items():
        s = stats.get(name, {})
        table.add_row(
            name,
            "x".join(map(str, rec["shape"])),
            *((plan_doc["layers"][name],) if plan_doc is not None else ()),
            f"{rec['sqnr_db']:.2f}",
            f"{s.get('kurtosis', float('nan')):.2f}",
            f"{s.get('max_over_std', float('nan')):.1f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"model SQNR (sum of signal / sum of noise): [bold]{info.get('sqnr_db', float('nan')):.2f} dB[/bold]"
    )
    if out is not None:
        console.print(f"fake-quantized checkpoint written to {out}")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)
