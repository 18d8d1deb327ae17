"""``qscale serve``: run the HTTP prediction service."""

from __future__ import annotations

from pathlib import Path

import typer

from qscale.service.guard import WILDCARD_BINDS


def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    models_dir: Path | None = typer.Option(
        None, "--models", help="Directory of fitted laws (default: models/)."
    ),
    model_dir: list[Path] = typer.Option(
        [],
        "--model-dir",
        help="A directory whose checkpoints clients may name (relative to it); repeatable. The zoo root and "
        "the panel root are always allowed (zoo:NAME, panel:NAME); no other path is ever loaded.",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="A host name clients may use in the Host header besides loopback and --host (repeatable; "
        "'*' allows any). Needed when binding 0.0.0.0 behind a name.",
    ),
    max_body: int = typer.Option(64 * 1024, "--max-body", min=1024, help="Largest request body in bytes."),
    model_cache: int = typer.Option(2, "--model-cache", min=1, max=64, help="Loaded models kept in memory."),
    max_concurrent: int = typer.Option(
        2, "--max-concurrent", min=1, max=64, help="Model-backed predictions running at once."
    ),
    max_queue: int = typer.Option(
        8, "--max-queue", min=0, max=1024, help="Model-backed predictions waiting; beyond: 503 + Retry-After."
    ),
    time_limit: float = typer.Option(
        120.0, "--time-limit", min=0.1, max=86400.0, help="Seconds a model-backed prediction may take (503)."
    ),
) -> None:
    """Serve the fitted laws over HTTP: a JSON API (/api/predict, /api/laws, /api/formats, /api/models) and a
    web page (/). Threat model and limits: docs/security.md."""
    try:
        import uvicorn

        from qscale.service.app import create_app
    except ImportError as err:
        raise typer.BadParameter(
            f"the service needs the [serve] extra: pip install -e '.[serve]' ({err})"
        ) from err
    for d in model_dir:
        if not d.expanduser().is_dir():
            raise typer.BadParameter(f"--model-dir {d}: not a directory")
    if models_dir is not None and not models_dir.expanduser().is_dir():
        raise typer.BadParameter(
            f"--models {models_dir}: not a directory of fitted laws (see `qscale laws list`)"
        )
    import socket

    try:
        socket.getaddrinfo(host, port)
    except (socket.gaierror, UnicodeError) as err:
        raise typer.BadParameter(
            f"--host {host!r}: cannot bind it ({err}); give an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        ) from err
    if host in WILDCARD_BINDS and not allowed_host:
        typer.secho(
            f"binding {host!r}: only loopback Host headers are accepted; add --allowed-host NAME for the "
            "names clients use (the service has no authentication: see docs/security.md)",
            fg="yellow",
            err=True,
        )
    app = create_app(
        models_dir,
        model_dirs=model_dir,
        bind=host,
        allowed_hosts=allowed_host,
        max_body=max_body,
        model_cache=model_cache,
        max_workers=max_concurrent,
        max_queue=max_queue,
        time_limit=time_limit,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
