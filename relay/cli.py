"""``coact relay ...``: run and look after a relay process."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from coact.relay.settings import Settings, settings_from_env


def load_settings(**overrides: Any) -> Settings:
    try:
        return settings_from_env(overrides)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from exc


@click.group("relay")
def relay_group() -> None:
    """Run the relay: API, agent hub, scheduler and audit pipeline."""


@relay_group.command("serve")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Keys, SQLite state and embedded audit engine. [COACT_DATA_DIR]")
@click.option("--host", help="Address to listen on. [COACT_HOST]")
@click.option("--port", type=int, help="Port to listen on. [COACT_PORT]")
@click.option("--database-url", help="State database URL (SQLite or PostgreSQL). [COACT_DATABASE_URL]")
@click.option("--audit-url", help="ClickHouse URL for audit (chdb:///path or http://...). [COACT_AUDIT_URL]")
def serve(data_dir: Path | None, host: str | None, port: int | None, database_url: str | None, audit_url: str | None) -> None:
    """Serve the relay until interrupted."""
    from coact.relay.app import create_app
    from coact.relay.server import run

    settings = load_settings(data_dir=data_dir, host=host, port=port, database_url=database_url, audit_url=audit_url)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    click.echo(f"coact relay listening on {settings.effective_public_url} (data in {settings.data_dir})", err=True)
    run(create_app(settings), settings)


@relay_group.group("keys")
def keys_group() -> None:
    """Manage the relay's token-signing keys."""


@keys_group.command("rotate")
@click.option("--data-dir", type=click.Path(path_type=Path), help="The relay's data directory. [COACT_DATA_DIR]")
@click.option("--overlap", type=int, default=3600, show_default=True,
              help="Seconds the previous key keeps verifying tokens; at least the longest token lifetime.")
def rotate(data_dir: Path | None, overlap: int) -> None:
    """Make a new token-signing key active; the old one verifies during the overlap.

    Restart (or roll) the relays afterwards so every process signs with the new key.
    """
    from coact.relay.keyring import KeyRing
    from coact.shared.clock import SystemClock

    settings = load_settings(data_dir=data_dir)
    ring = KeyRing.load_or_create(settings.data_dir / "keys" / "tokens", SystemClock())
    key = ring.rotate(timedelta(seconds=overlap))
    click.echo(f"new active key {key.kid}; previous keys verify for {overlap} s more")
