"""CLI: ``qscale collect`` and ``qscale runs list|show|export``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import typer

from qscale.progress import PROGRESS_HELP, wanted

STORE_HELP = "Run store (SQLite file; default: the repository's data/runs.sqlite)."


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _store_path(store: Path | None) -> Path:
    """``--store`` or the default store. A run store is a SQLite file; an export (.csv / .parquet) is not one (and
    must not become one)."""
    from qscale.collect.store import default_store

    store = store if store is not None else default_store()
    if store.suffix.lower() in (".csv", ".parquet"):
        _fail(
            f"--store {store}: a run store is a SQLite file (e.g. data/runs.sqlite); {store.suffix} files are "
            "exports (`qscale runs export`), read by `qscale fit --runs` and `qscale report --runs`"
        )
    return store


def _quiet_transformers() -> None:
    """No per-model 'Loading weights' bars inside the sweep's own progress display."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def collect_cmd(
    spec_path: Path = typer.Argument(..., help="Sweep spec (YAML or TOML), e.g. data/sweeps/demo.yaml."),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    backend: str = typer.Option("local", "--backend", help="local | ray"),
    address: str = typer.Option(None, "--address", help="Ray cluster address (default: start a local one)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N planned runs."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the planned runs and exit."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Measure runs recorded as failed again."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Collect a sweep into the run store (finished runs are skipped; Ctrl-C stops after the current run)."""
    from qscale.collect.runner import BACKENDS, collect
    from qscale.collect.spec import SpecError, load_spec, plan

    if backend not in BACKENDS:
        from qscale.registry import unknown_name_message

        _fail(unknown_name_message(backend, BACKENDS, "backend"))
    store = _store_path(store)
    try:
        spec = load_spec(spec_path)
    except SpecError as err:  # every problem, on one line
        _fail(f"invalid sweep spec {spec_path}: " + "; ".join(err.errors))
    runs = plan(spec, limit=limit)
    if dry_run:
        from qscale.collect.store import StoreError

        try:
            _print_plan(spec, runs, store)
        except StoreError as err:
            _fail(str(err))
        return
    _quiet_transformers()
    from qscale.collect.store import RunStore, StoreError

    try:
        with RunStore(store) as st:
            result = collect(
                spec, st, backend=backend, address=address, retry_failed=retry_failed, limit=limit,
                device=device, progress=wanted(progress),
            )  # fmt: skip
            counts = st.counts()
    except StoreError as err:
        _fail(str(err))
    except (sqlite3.Error, OSError) as err:  # disk full, read-only file system, ...: one line, no traceback
        _fail(f"run store {store}: {type(err).__name__}: {err} (finished runs are kept; rerun to continue)")
    typer.echo(
        f"{spec.name}: {result.n_planned} planned, {result.n_ok} measured ok, {result.n_error} failed, "
        f"{result.n_skipped} already in store; {result.seconds:.1f} s ({result.runs_per_min:.1f} runs/min)"
    )
    if result.n_leased:
        typer.echo(
            f"{result.n_leased} run(s) skipped: another qscale collect on {store} is measuring them (leased)"
        )
    if result.n_refilled:
        typer.echo(
            f"{result.n_refilled} finished run(s) lacked requested features "
            f"({', '.join(spec.features)}) and were measured again with them"
        )
    if getattr(result, "n_resettled", 0):
        typer.echo(
            f"{result.n_resettled} finished run(s) had their data-dependent features measured with another "
            "calibration record and were measured again"
        )
    typer.echo(f"store {store}: {counts.get('ok', 0)} ok, {counts.get('error', 0)} error runs")
    for failure in result.failures:
        typer.secho(f"model task failed: {failure}", fg=typer.colors.RED, err=True)
    if result.stopped:
        typer.echo("stopped early: run the same command again to continue")
        raise typer.Exit(130)
    if result.n_error or result.failures:
        parts = []
        if result.n_error:
            parts.append(f"{result.n_error} run(s) failed")
        if result.failures:
            parts.append(f"{len(result.failures)} model task(s) failed")
        typer.secho(
            f"{' and '.join(parts)}: see `qscale runs list --status error --store {store}`; "
            "rerun with --retry-failed to measure them again",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)


def _print_plan(spec, runs, store: Path) -> None:
    from qscale.collect.runner import _cached_pending, skip_keys
    from qscale.collect.spec import feature_calibration, group_by_model
    from qscale.collect.store import RunStore

    known_done = 0
    if store.exists():
        with RunStore(store) as st:
            skip = skip_keys(
                st, retry_failed=False, features=spec.features, feature_calibration=feature_calibration(spec)
            )
            for ref, model_runs in group_by_model(runs).items():
                pending = _cached_pending(st, ref, model_runs, skip)
                if pending is not None:
                    known_done += len(model_runs) - len(pending)
    typer.echo(
        f"{spec.name}: {len(runs)} runs = {len(spec.models)} models x {len(spec.formats)} formats x "
        f"{len(spec.methods)} methods x {len(spec.evals)} eval settings (x calibrations for methods that need them)"
    )
    if known_done:
        typer.echo(f"{known_done} of them are already finished in {store}")
    for i, run in enumerate(runs):
        typer.echo(f"{i + 1:5d}  {run.describe()}")


runs_app = typer.Typer(help="Inspect and export the run store.", no_args_is_help=True)


@runs_app.command("list")
def runs_list(
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    status: str = typer.Option(None, "--status", help="ok | error"),
    limit: int = typer.Option(50, "--limit", min=1, help="Show at most N runs (newest)."),
) -> None:
    """List runs: key prefix, model, format, method, status, nll, dnll."""
    from rich.console import Console
    from rich.table import Table

    from qscale.collect.store import RunStore, StoreError

    store = _store_path(store)
    try:
        with RunStore(store, readonly=True) as st:
            frame = st.to_frame(status)
            counts = st.counts()
    except StoreError as err:
        _fail(str(err))
    except (sqlite3.Error, OSError) as err:  # disk full, read-only file system, ...: one line, no traceback
        _fail(f"run store {store}: {type(err).__name__}: {err} (finished runs are kept; rerun to continue)")
    table = Table(title=f"{store}: {counts.get('ok', 0)} ok, {counts.get('error', 0)} error")
    for col in ("key", "model", "format", "method", "status", "nll", "dnll", "kld"):
        table.add_column(col, justify="right" if col in ("nll", "dnll", "kld") else "left")
    for _, r in frame.tail(limit).iterrows():
        num = lambda v: "" if v != v else f"{v:.4g}"  # noqa: E731 - NaN -> blank
        table.add_row(
            r.run_key[:12], str(r.model), r.format, r.method, r.status, num(r.nll), num(r.dnll), num(r.kld)
        )
    Console().print(table)


@runs_app.command("show")
def runs_show(
    key: str = typer.Argument(..., help="A run key or a unique prefix of it (>= 4 characters)."),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Print one run as JSON (config, facts, metrics, features, timings, provenance, error)."""
    from qscale.collect.store import RunStore, StoreError

    store = _store_path(store)
    try:
        with RunStore(store, readonly=True) as st:
            row = st.get(key)
    except StoreError as err:
        _fail(str(err))
    typer.echo(json.dumps(row, indent=2, sort_keys=False, default=str))


@runs_app.command("export")
def runs_export(
    out: Path = typer.Option(..., "--out", help="Output file."),
    fmt: str = typer.Option(None, "--format", help="parquet | csv (default: from the --out suffix)."),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    status: str = typer.Option(None, "--status", help="Only runs with this status (ok | error)."),
    detail: bool = typer.Option(
        False, "--detail", help="Add bookkeeping columns (timings, settings, errors)."
    ),
) -> None:
    """Export the flattened runs table (RunStore.to_frame) as parquet or csv."""
    from qscale.collect.store import RunStore, StoreError

    store = _store_path(store)
    try:
        with RunStore(store, readonly=True) as st:
            path = st.export(out, fmt, status, detail=detail)
            n = len(st.to_frame(status))
    except StoreError as err:
        _fail(str(err))
    typer.echo(f"wrote {n} runs to {path}")


def register(app: typer.Typer) -> None:
    app.command("collect")(collect_cmd)
    app.add_typer(runs_app, name="runs")
