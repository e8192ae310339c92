"""The `bridge` command: a thin shell over the library (SPEC §10)."""

from __future__ import annotations

import sys

import click

from bridge.errors import ConfigError
from bridge.logs import configure_logging
from bridge.settings import Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def main() -> None:
    """CRM Bridge: platform webhooks into your CRMs, exactly once."""


@main.command()
@click.option("--host", default=None, help="Listen address (default: HOST or 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Listen port (default: PORT or 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Run the bridge (what systemd starts)."""
    import uvicorn

    from bridge.app import create_app

    settings = _settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        lifespan="on",
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
