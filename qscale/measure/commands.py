"""``qscale quantize``: fake-quantize a checkpoint with a method and print SQNR and weight statistics per layer
(here, above :mod:`qscale.quantize`, because the statistics are :func:`qscale.measure.weights.weight_stats`).

``qscale eval``: NLL / perplexity / bits-per-byte of a model, and with ``--format`` the loss from RTN.

Example (2-core CPU)::

    qscale eval --model zoo:tiny-llama-m --corpus enwiki_gensim --protocol stride --seq-len 64 --max-tokens 4096
    qscale eval --model zoo:tiny-llama-m --format int4-g32 --json

With ``--format`` the float model runs once (its log-probs cached for KL, see
:func:`qscale.measure.eval.reference_outputs`), then the RTN-quantized model runs on the same windows;
the float baseline, the quantized result and their deltas are printed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from qscale.progress import PROGRESS_HELP

DEFAULT_SEQ_LEN = 256


def _float_from_reference(ref: Any, windows: Any) -> dict[str, Any]:
    """The float model's metrics, from the reference cache (no second float pass)."""
    nll = ref.nll
    return {
        "nll": nll,
        "ppl": math.exp(nll),
        "bpb": nll * windows.n_scored / math.log(2) / windows.n_bytes if windows.n_bytes else float("nan"),
        **windows.describe(),
    }


def eval_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="HF checkpoint dir, zoo name (zoo:tiny-llama-m), panel:NAME or .gguf file."
    ),
    format: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="Also evaluate this format with RTN (e.g. int4-g128; see `qscale formats`).",
    ),
    plan: Path | None = typer.Option(
        None,
        "--plan",
        help="Evaluate a plan file from `qscale plan` (one format per layer, RTN) instead of -f.",
    ),
    corpus: str = typer.Option("enwiki_gensim", "--corpus", "-c", help="Corpus name or a .txt file."),
    split: str = typer.Option("test", "--split", help="train | validation | test."),
    protocol: str = typer.Option("stride", "--protocol", "-p", help="stride (GPTQ) | rolling (lm-eval)."),
    seq_len: int | None = typer.Option(
        None,
        "--seq-len",
        "-L",
        min=2,
        help=f"Window length in tokens, BOS included (default {DEFAULT_SEQ_LEN}, or the model's context if shorter).",
    ),
    stride: int | None = typer.Option(None, "--stride", min=1, help="Rolling stride (default seq_len/2)."),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=1, help="Use only the first N stream tokens."
    ),
    bos: bool | None = typer.Option(
        None,
        "--bos/--no-bos",
        help="Start every window with BOS, or not (default: the model's convention, its tokenizer's add_bos_token).",
    ),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | bf16 | fp16 (log-softmax is always fp32)."),
    autocast: str | None = typer.Option(
        None,
        "--autocast",
        help="bf16 | fp16: run the model's forward under torch.autocast (fp32 weights; with --format the "
        "float reference stays fp32, so the KL includes what bf16 arithmetic adds).",
    ),
    top_k: str = typer.Option(
        "auto",
        "--top-k",
        help="Float log-probs kept for KL: auto | exact | an integer (see qscale.measure.eval).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Evaluate MODEL on a corpus split (nll, ppl, bits/byte); with --format also the RTN-quantized model."""
    from contextlib import ExitStack

    from qscale.corpora.text import CorpusError, read_split
    from qscale.corpora.windows import WindowError, check_protocol, get_windows
    from qscale.measure.eval import _autocast_dtype, _parse_dtype, evaluate_windows, reference_outputs
    from qscale.progress import Progress, wanted

    try:  # every mistake in the options before the model is loaded
        torch_dtype = _parse_dtype(dtype)
        _autocast_dtype(autocast)
        k: Any = {"auto": "auto", "exact": None}.get(top_k)
        if k is None and top_k != "exact":
            if not top_k.isdigit() or int(top_k) < 1:
                raise ValueError(f"--top-k must be auto, exact or a positive integer, got {top_k!r}.")
            k = int(top_k)
        check_protocol(protocol)
        read_split(corpus, split)  # names the valid corpora and splits (cached: read once)
        fmt = None
        plan_doc = None
        if format is not None and plan is not None:
            raise ValueError("give --format or --plan, not both")
        if format is not None:
            from qscale.formats import get_format

            fmt = get_format(format)
        if plan is not None:
            from qscale.quantize.plans import load_plan

            plan_doc = load_plan(plan)
            fmt = plan_doc["layers"]
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err

    from qscale.lm import load

    show = wanted(progress)
    with Progress(show) as bar:
        with bar.step(f"load {model}"):
            lm = load(model, dtype=torch_dtype, device=device, attn_implementation="sdpa")
        if plan_doc is not None:
            from qscale.quantize.plans import check_plan_model

            for warning in check_plan_model(plan_doc, lm):
                typer.secho(f"warning: {warning}", fg="yellow", err=True)
        ctx = getattr(lm.model.config, "max_position_embeddings", None) or getattr(
            lm.model.config, "n_positions", None
        )
        if seq_len is None:
            seq_len = int(min(DEFAULT_SEQ_LEN, ctx)) if ctx else DEFAULT_SEQ_LEN
        elif ctx and seq_len > ctx:
            typer.secho(
                f"--seq-len {seq_len} is longer than the model's context ({ctx}); using {ctx}",
                fg="yellow",
                err=True,
            )
            seq_len = int(ctx)
        try:
            with bar.step(f"tokenize {corpus}/{split}"):
                windows = get_windows(
                    lm.tokenizer,
                    corpus=corpus,
                    split=split,
                    protocol=protocol,
                    seq_len=seq_len,
                    stride=stride,
                    max_tokens=max_tokens,
                    add_bos=bos,
                )
        except (WindowError, CorpusError) as err:  # e.g. --stride with protocol stride
            raise typer.BadParameter(str(err)) from err

        if fmt is None:
            result = {
                "model": model,
                **evaluate_windows(
                    lm.model, windows, batch_size=batch_size, progress=show, autocast=autocast
                ),
            }
        else:
            from qscale.formats import FormatError
            from qscale.quantize import MethodError, quantized

            ref = reference_outputs(lm.model, windows, top_k=k, batch_size=batch_size, progress=show)
            base = _float_from_reference(ref, windows)
            what = f"--plan {plan}" if plan_doc is not None else f"--format {fmt}"
            try:
                with ExitStack() as stack:
                    with bar.step(f"quantize {'plan' if plan_doc is not None else fmt} (rtn)"):
                        info = stack.enter_context(quantized(lm.model, fmt, method="rtn"))
                    q = evaluate_windows(
                        lm.model,
                        windows,
                        reference=ref,
                        batch_size=batch_size,
                        progress=show,
                        autocast=autocast,
                    )
            except FormatError as err:  # a spec that cannot be applied to this model
                raise typer.BadParameter(f"{what}: {err}") from err
            except MethodError as err:  # a plan naming layers this model does not have
                raise typer.BadParameter(str(err)) from err
    if fmt is None:
        _print(result, None, None, as_json)
        return
    out = {
        "model": model,
        "format": f"plan:{plan}" if plan_doc is not None else str(fmt),
        "method": "rtn",
        "bits_per_element": plan_doc.get("bpw") if plan_doc is not None else fmt.bits_per_element,
        "sqnr_db": info.get("sqnr_db"),
        "float": base,
        "quantized": q,
        "delta": {key: q[key] - base[key] for key in ("nll", "ppl", "bpb")},
        "kld": q["kld"],
        "top1_agreement": q["top1_agreement"],
        "kld_top_k": q["kld_top_k"],
    }
    if plan_doc is not None:
        out["plan"] = {"path": str(plan), "bpw": plan_doc.get("bpw"), "predicted": plan_doc.get("predicted")}
    _print(out, base, q, as_json)


def _print(result: dict, base: dict | None, q: dict | None, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rec = q if q is not None else result
    title = (
        f"{result['model']}  {rec['corpus']}/{rec['split']}  protocol={rec['protocol']}  "
        f"seq_len={rec['seq_len']}  bos={'yes' if rec.get('bos') else 'no'}  {rec['n_tokens']} tokens  "
        f"{rec['n_bytes']} bytes"
    )
    table = Table(title=title)
    if base is None:
        for col in ("nll (nats/token)", "ppl", "bits/byte"):
            table.add_column(col, justify="right")
        table.add_row(f"{result['nll']:.4f}", f"{result['ppl']:.3f}", f"{result['bpb']:.4f}")
        console.print(table)
        return
    table.add_column("")
    for col in ("nll (nats/token)", "ppl", "bits/byte"):
        table.add_column(col, justify="right")
    table.add_row("float", f"{base['nll']:.4f}", f"{base['ppl']:.3f}", f"{base['bpb']:.4f}")
    table.add_row(result["format"], f"{q['nll']:.4f}", f"{q['ppl']:.3f}", f"{q['bpb']:.4f}")
    d = result["delta"]
    table.add_row("delta", f"{d['nll']:+.4f}", f"{d['ppl']:+.3f}", f"{d['bpb']:+.4f}")
    console.print(table)
    exact = "exact" if result["kld_top_k"] is None else f"top-{result['kld_top_k']} + rest"
    console.print(
        f"KL(float || {result['format']}) = [bold]{result['kld']:.5f}[/bold] nats/token ({exact}),  "
        f"top-1 agreement = [bold]{result['top1_agreement']:.4f}[/bold]"
        + (f",  weight SQNR = {result['sqnr_db']:.2f} dB" if result.get("sqnr_db") is not None else "")
    )


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
    app.command("eval")(eval_cmd)
