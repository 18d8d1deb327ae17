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

    from qscale.lm.zoo import ZooError, train_zoo, zoo_dir

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


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
