"""CLI: ``qscale report``."""

from __future__ import annotations

from pathlib import Path

import typer


def report_cmd(
    runs: Path | None = typer.Option(
        None, "--runs", help="Run store (data/runs.sqlite) or a parquet/csv export."
    ),
    out: Path = typer.Option(Path("reports"), "--out", help="Output directory."),
    public: bool = typer.Option(True, "--public/--no-public", help="Include the public-results section."),
    estimator: str = typer.Option("all", "--estimator", help="'all' or a comma list of estimator presets."),
    alpha: float = typer.Option(0.1, "--alpha", help="Interval miscoverage (0.1 -> 90% intervals)."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Shipped laws (default models/)."),
) -> None:
    """Regenerate reports/ (runs table, laws comparison, figures) from the run store and the laws."""
    from qscale.laws.estimators import LawError
    from qscale.report.build import write_report

    if runs is None and not public:
        typer.secho("error: nothing to report: give --runs STORE and/or --public", fg="red", err=True)
        raise typer.Exit(2)
    try:
        path = write_report(
            runs=runs, out=out, public=public, estimators=estimator, alpha=alpha, models_dir=models_dir
        )
    except (LawError, FileNotFoundError, ValueError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from err
    typer.echo(f"wrote {path} (and tables/figures in {out})")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
