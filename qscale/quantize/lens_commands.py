"""``qscale lens``: the perturbation-lens study (dnll vs noise strength and shape, uniform vs cube-root) on one model."""

from __future__ import annotations

import json
from pathlib import Path

import typer


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
    from qscale.quantize.lens import LensConfig, format_lens, run_lens

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
    result["hardware"] = _hardware()
    text = format_lens(result, lm.name)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "lens.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        (out / "lens.md").write_text(text)
    typer.echo(json.dumps(result, indent=2, sort_keys=True) if as_json else text)


def _hardware() -> str:
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()}-core CPU ({platform.machine()})"


def register(app: typer.Typer) -> None:
    app.command(
        "lens", help="Perturbation lens: dnll vs noise strength/shape, uniform vs cube-root (one model)."
    )(lens_cmd)
