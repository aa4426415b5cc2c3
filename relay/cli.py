"""``coact relay ...``: run and look after a relay process."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
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
    from coact.relay.server import RelayStartError

    def listening() -> None:
        click.echo(f"coact relay listening on {settings.effective_public_url} (data in {settings.data_dir})", err=True)

    try:
        run(create_app(settings), settings, on_listening=listening)
    except RelayStartError as exc:
        raise click.ClickException(str(exc)) from None


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


@relay_group.command("create-admin")
@click.option("--data-dir", type=click.Path(path_type=Path), help="The relay's data directory. [COACT_DATA_DIR]")
@click.option("--database-url", help="State database URL, if not the data directory's SQLite. [COACT_DATABASE_URL]")
@click.option("--email", required=True, help="The admin's email, which they log in with.")
@click.option("--org-name", help="The new organisation's name (default: the email).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of prompting.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a sentence for people; json: the created user, on stdout only.")
def create_admin(data_dir: Path | None, database_url: str | None, email: str, org_name: str | None,
                 password_stdin: bool, output: str) -> None:
    """Create an organisation and its first admin, on this machine.

    How a relay gets its first admin while signup is off (the default): run on the
    relay's machine, against its state database, with no HTTP involved. The relay may be
    running or not.
    """
    from coact.relay.errors import EmailTaken
    from coact.relay.passwords import check_password_strength

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    address = email.strip().lower()
    if "@" not in address or any(ch.isspace() for ch in address) or len(address) > 254:
        raise click.UsageError(f"--email {email!r} is not an email address")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password for the new admin", hide_input=True, confirmation_prompt=True)
    problem = check_password_strength(password)
    if problem:
        raise click.UsageError(f"password: {problem}")
    try:
        user = asyncio.run(_create_admin(settings, address, password, org_name or address))
    except EmailTaken as exc:
        raise click.ClickException(f"{exc}; log in with it, or choose another --email") from None
    if output == "json":
        click.echo(json.dumps({k: user[k] for k in ("id", "org_id", "email", "role", "created_at")}))
    else:
        click.echo(f"Created org {user['org_id']} with admin {user['email']} ({user['id']}). "
                   f"Log in: coact login --relay {settings.effective_public_url} --email {user['email']}")


async def _create_admin(settings: Settings, email: str, password: str, org_name: str) -> dict[str, Any]:
    from coact.relay.keyring import KeyRing
    from coact.relay.passwords import PasswordHasher, PasswordParams
    from coact.relay.storage import Store
    from coact.shared.clock import SystemClock
    from coact.shared.keys import public_key_b64

    clock = SystemClock()
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    hasher = PasswordHasher(
        PasswordParams(settings.password_time_cost, settings.password_memory_kib, settings.password_parallelism))
    password_hash = await asyncio.to_thread(hasher.hash, password)
    # The identity key names the relay's audit chain the org's creation is recorded in;
    # made here if the relay never ran, exactly as the relay itself would make it.
    identity = await asyncio.to_thread(KeyRing.load_or_create, settings.data_dir / "keys" / "identity", clock)
    store = await Store.open(settings.effective_database_url, clock, settings.relay_id,
                             public_key_b64(identity.active().private_key))
    try:
        return await store.create_org_with_admin(email, password_hash, org_name)
    finally:
        await store.close()
