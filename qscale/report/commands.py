"""CLI: ``qscale report``.

With no options it rebuilds the committed reports/laws.md from the committed inputs it was built from
(data/runs.sqlite, data/runs_panel_native.sqlite with data/profile_raw.json, the public results, models/); the inputs
are only read.
"""

from __future__ import annotations

from pathlib import Path

import typer

from qscale.progress import PROGRESS_HELP


def report_cmd(
    runs: Path | None = typer.Option(
        None,
        "--runs",
        help="Zoo run store (or a parquet/csv export) for the zoo sections (default: data/runs.sqlite).",
    ),
    zoo: bool = typer.Option(True, "--zoo/--no-zoo", help="Include the zoo sections (from --runs)."),
    panel_runs: Path | None = typer.Option(
        None,
        "--panel-runs",
        help="Real-panel run store for the profile-law section (default: data/runs_panel_native.sqlite).",
    ),
    panel: bool = typer.Option(
        True, "--panel/--no-panel", help="Include the real-panel profile-law section."
    ),
    profile_cache: Path | None = typer.Option(
        None,
        "--profile-cache",
        help="Cached raw profile predictions, read only (default: data/profile_raw.json).",
    ),
    out: Path = typer.Option(Path("reports"), "--out", help="Output directory."),
    public: bool = typer.Option(True, "--public/--no-public", help="Include the public-results section."),
    estimator: str = typer.Option("all", "--estimator", help="'all' or a comma list of estimator presets."),
    alpha: float = typer.Option(0.1, "--alpha", help="Interval miscoverage (0.1 -> 90% intervals)."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Shipped laws (default models/)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Regenerate reports/ (runs table, laws comparison, figures) from the run stores and the laws.

    With no options: the committed report's inputs, every section.
    """
    from qscale.progress import wanted
    from qscale.report.build import default_input, write_report

    if not (zoo or panel or public):
        typer.secho(
            "error: nothing to report: --no-zoo, --no-panel and --no-public leave no section",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    if not 0 < alpha < 1:
        typer.secho(f"error: --alpha must be in (0, 1), got {alpha}", fg="red", err=True)
        raise typer.Exit(2)
    # No except here: a bad input is one of qscale's own errors (LawError, PathError, ...) or the machine's
    # (OSError, StoreError), and qscale.cli.main, the CLI's one error path, prints it in one line (exit 2); any
    # other exception, a plain ValueError included, is a bug and keeps its traceback.
    path = write_report(
        runs=(runs or default_input("DEFAULT_RUNS")) if zoo else None,
        out=out,
        public=public,
        estimators=estimator,
        alpha=alpha,
        models_dir=models_dir,
        panel=(panel_runs or default_input("DEFAULT_PANEL")) if panel else None,
        profile_cache=profile_cache,
        progress=wanted(progress),
    )
    typer.echo(f"wrote {path} (and tables/figures in {out})")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
