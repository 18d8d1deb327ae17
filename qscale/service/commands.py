"""``qscale serve``: run the HTTP prediction service."""

from __future__ import annotations

from pathlib import Path

import typer


def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port"),
    models_dir: Path | None = typer.Option(
        None, "--models", help="Directory of fitted laws (default: models/)."
    ),
) -> None:
    """Serve the fitted laws over HTTP: a JSON API (/api/predict, /api/laws, /api/formats) and a web page (/)."""
    try:
        import uvicorn

        from qscale.service.app import create_app
    except ImportError as err:
        raise typer.BadParameter(
            f"the service needs the [serve] extra: pip install -e '.[serve]' ({err})"
        ) from err
    uvicorn.run(create_app(models_dir), host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
