"""``qscale landscape`` (Hessian trace, top eigenvalues, quantization-direction terms, radial profile) and
``qscale outliers`` (weight and activation outlier statistics) for one model on a small calibration batch."""

from __future__ import annotations

import json
import math
from typing import Any

import typer

from qscale.progress import PROGRESS_HELP


def _batch(lm: Any, corpus: str, n_seqs: int, seq_len: int, seed: int) -> Any:
    from qscale.corpora import calibration_batch

    cfg = getattr(lm.model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        limit = getattr(cfg, key, None)
        if isinstance(limit, int) and limit > 1:
            seq_len = min(seq_len, limit)
            break
    return calibration_batch(lm.tokenizer, corpus, n_samples=n_seqs, seq_len=seq_len, seed=seed)


def _console() -> Any:
    """A rich console; piped output gets 160 columns so layer names are not cut."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become strings ("inf", "nan")."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def landscape_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="HF checkpoint dir, zoo name (zoo:tiny-llama-m), panel:NAME or .gguf."
    ),
    format: list[str] = typer.Option(
        None, "--format", "-f", help="Format spec(s) for the quantization-direction terms (repeatable)."
    ),
    samples: int = typer.Option(8, "--samples", min=2, help="Hutchinson Rademacher samples (>= 2)."),
    k: int = typer.Option(1, "--k", min=1, help="Number of top eigenvalues."),
    iters: int = typer.Option(20, "--iters", min=1, help="Lanczos steps (HVPs) for the eigenvalues."),
    group_by: str = typer.Option("block", "--group-by", help="Trace groups: tensor, layer, block, all."),
    radial: bool = typer.Option(False, "--radial", help="Also print a radial loss profile (4 directions)."),
    corpus: str = typer.Option("enwiki_gensim", "--corpus", help="Calibration corpus (or random_tokens)."),
    n_seqs: int = typer.Option(2, "--n-seqs", min=1, help="Calibration sequences."),
    seq_len: int = typer.Option(
        128, "--seq-len", min=2, help="Tokens per sequence (capped at the model's limit)."
    ),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Curvature of MODEL's loss on a calibration batch: Hessian trace (per block), top eigenvalues, and for each
    --format the second-order prediction g.D + 1/2 D^T H D of the loss change vs the measured change."""
    from qscale.formats import get_format
    from qscale.lm import load
    from qscale.measure.landscape import (
        CurvatureError,
        group_name,
        hessian_top_eigenvalues,
        hessian_trace,
        quant_direction_terms,
        radial_profile,
    )

    try:
        fmts = [get_format(f) for f in (format or [])]
        group_name("a.0.w", group_by)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    from qscale.progress import Progress, wanted

    try:
        with Progress(wanted(progress)) as bar:
            with bar.step(f"load {model}"):
                lm = load(model)
                ids = _batch(lm, corpus, n_seqs, seq_len, seed)
            with bar.step(f"Hessian trace ({samples} HVP samples)"):
                trace = hessian_trace(lm.model, ids, samples=samples, seed=seed, group_by=group_by)
            with bar.step(f"top-{k} eigenvalues (<= {iters} HVPs)"):
                eig = hessian_top_eigenvalues(lm.model, ids, k=k, iters=iters, tol=1e-3, seed=seed)
            qdirs = []
            row = bar.task("quantization directions", total=len(fmts)) if fmts else None
            for f in fmts:
                qdirs.append(quant_direction_terms(lm.model, ids, f, measure=True))
                row.advance(note=str(f))
            prof = None
            if radial:
                with bar.step("radial profile (4 directions)"):
                    prof = radial_profile(lm.model, ids, seed=seed)
    except CurvatureError as err:  # LoadError, FormatError, CorpusError: one line from qscale.cli.main
        raise typer.BadParameter(str(err)) from err
    result: dict[str, Any] = {
        "model": lm.name,
        "batch": {"n_seqs": int(ids.shape[0]), "seq_len": int(ids.shape[1]), "corpus": corpus, "seed": seed},
        "trace": trace.to_dict(),
        "top_eigenvalues": eig.to_dict(),
        "quant_directions": [q.to_dict() for q in qdirs],
    }
    if prof is not None:
        result["radial"] = prof.to_dict()
    if as_json:
        typer.echo(json.dumps(_clean(result), indent=2))
        return
    from rich.table import Table

    console = _console()
    console.print(
        f"[bold]{lm.name}[/bold]  batch {ids.shape[0]} x {ids.shape[1]} tokens ({corpus}), loss {trace.loss:.4f}"
    )
    console.print(
        f"trace H = {trace.value:.5g} +- {trace.stderr:.2g} ({samples} samples), "
        f"per param {trace.per_param:.4g};  top eigenvalue(s) {', '.join(f'{v:.5g}' for v in eig.values)}"
        f" ({eig.hvps} HVPs{'' if eig.converged else ', not converged'})"
    )
    t = Table(title=f"Hessian trace by {group_by}")
    for col in ("group", "params", "trace", "stderr", "trace/param"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for g, v in trace.groups().items():
        t.add_row(g, str(v.n_params), f"{v.value:.5g}", f"{v.stderr:.2g}", f"{v.per_param:.4g}")
    console.print(t)
    if qdirs:
        q = Table(title="Quantization directions D = Q(W) - W")
        for col in ("format", "g.D", "1/2 DHD", "predicted dloss", "measured dloss", "|D|/|W|"):
            q.add_column(col, justify="right")
        for r in qdirs:
            q.add_row(
                r.format,
                f"{r.linear:.4g}",
                f"{r.quadratic:.4g}",
                f"{r.predicted_dloss:.4g}",
                f"{r.measured_dloss:.4g}",
                f"{r.d_norm / r.w_norm:.3g}",
            )
        console.print(q)
    if prof is not None:
        console.print(
            "radial profile (mean dloss over 4 directions): "
            + ", ".join(f"r={r:g}: {d:.4g}" for r, d in zip(prof.radii, prof.mean_dloss, strict=True))
        )


def outliers_cmd(
    model: str = typer.Option(..., "--model", "-m", help="HF checkpoint dir, zoo name or .gguf file."),
    corpus: str = typer.Option("enwiki_gensim", "--corpus", help="Calibration corpus (or random_tokens)."),
    n_seqs: int = typer.Option(8, "--n-seqs", min=1, help="Calibration sequences."),
    seq_len: int = typer.Option(
        128, "--seq-len", min=2, help="Tokens per sequence (capped at the model's limit)."
    ),
    threshold: float = typer.Option(6.0, "--threshold", help="Outlier feature threshold |x| (LLM.int8: 6)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Outlier statistics of MODEL: per linear layer, weight kurtosis / max-over-std / share beyond 6 std and
    input-activation channel max/median, kurtosis and LLM.int8 outlier features on calibration text."""
    from qscale.lm import load
    from qscale.measure.outliers import activation_stats
    from qscale.measure.weights import model_weight_stats

    if not threshold > 0:
        raise typer.BadParameter(f"--threshold must be positive, got {threshold}")
    # LoadError, CorpusError: one line from qscale.cli.main (a plain ValueError is a bug and keeps its traceback)
    lm = load(model)
    ids = _batch(lm, corpus, n_seqs, seq_len, seed)
    w = model_weight_stats(lm.model)
    a = activation_stats(lm.model, ids, threshold=threshold)
    if as_json:
        out = {
            "model": lm.name,
            "batch": {"n_seqs": int(ids.shape[0]), "seq_len": int(ids.shape[1]), "corpus": corpus},
            "weights": w,
            "activations": a.to_dict(),
        }
        typer.echo(json.dumps(_clean(out), indent=2))
        return
    from rich.table import Table

    console = _console()
    t = Table(title=f"{lm.name}: outliers ({ids.shape[0]} x {ids.shape[1]} tokens of {corpus})")
    for col in (
        "layer",
        "w kurt",
        "w max/std",
        "w >6std",
        "x absmax",
        "x max/med",
        "x kurt",
        f"x >{threshold:g}",
    ):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for name, s in a.layers.items():
        ws = w["layers"].get(name, {})
        t.add_row(
            name,
            f"{ws.get('kurtosis', math.nan):.3g}",
            f"{ws.get('max_over_std', math.nan):.3g}",
            f"{ws.get('frac_beyond_6std', math.nan):.2e}",
            f"{s.absmax:.3g}",
            f"{s.max_over_median:.3g}",
            f"{s.kurtosis:.3g}",
            str(s.n_outlier_features),
        )
    console.print(t)
    summary = a.summary()
    console.print(
        "model: "
        + ", ".join(f"{k} {v:.4g}" for k, v in summary.items())
        + f"; weight kurtosis mean {w['kurtosis_mean']:.4g}, max {w['kurtosis_max']:.4g}"
    )


def register(app: typer.Typer) -> None:
    app.command("landscape")(landscape_cmd)
    app.command("outliers")(outliers_cmd)
