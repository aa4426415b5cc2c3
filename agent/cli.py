"""``coact agent ...`` (enroll, run, status) and ``coact policy init``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import signal
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from coact.agent.config import DataDir, Identity, root_conflicts, root_problems, write_atomic
from coact.agent.errors import AgentError, RevokedError
from coact.shared import keys
from coact.shared.clock import to_rfc3339, utc_now

DATA_DIR_OPTION = click.option(
    "--data-dir", type=click.Path(path_type=Path), envvar="COACT_AGENT_DATA_DIR", required=True,
    help="The agent's data directory (key, identity, policy, database). [COACT_AGENT_DATA_DIR]",
)
OUTPUT_OPTION = click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)


EXIT_REVOKED = 3


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


@click.group("agent")
def agent_group() -> None:
    """The resident device agent: enroll this device, run it, check on it."""


@agent_group.command("enroll")
@click.option("--relay", "relay_url", required=True, help="Relay URL, e.g. https://relay.example.com")
@click.option("--code", required=True, help="One-time enrollment code from an admin.")
@click.option("--name", default=None, help="Device name shown to admins. Default: the hostname.")
@DATA_DIR_OPTION
@OUTPUT_OPTION
def enroll(relay_url: str, code: str, name: str | None, data_dir: Path, output: str) -> None:
    """Create this device's key pair and enroll it with the relay.

    The private key is generated here and never leaves the device. The relay's identity
    key is pinned: later connections to a relay that cannot prove it are refused.
    """
    from coact.agent import relay_client

    directory = DataDir(data_dir)
    if directory.identity_path.exists():
        fail(f"{data_dir} is already enrolled; use another --data-dir or remove it to re-enroll")
    directory.ensure()
    key = keys.generate_private_key()
    name = name or socket.gethostname()
    try:
        answer = relay_client.enroll(relay_url, code, keys.public_key_b64(key), name, platform.system().lower())
    except AgentError as exc:
        fail(str(exc))
    directory.write_private_key(key)
    identity = Identity(
        device_id=answer["device_id"], org_id=answer["org_id"], relay_url=relay_url.rstrip("/"),
        relay_public_key=answer["relay_public_key"],
        relay_fingerprint=keys.fingerprint(answer["relay_public_key"]),
        name=name, enrolled_at=to_rfc3339(utc_now()),
    )
    if identity.relay_fingerprint != answer.get("root_key_fingerprint"):
        fail("the relay's fingerprint does not match its key; refusing to pin it")
    directory.write_identity(identity)
    if output == "json":
        click.echo(json.dumps({"device_id": identity.device_id, "org_id": identity.org_id,
                               "relay_fingerprint": identity.relay_fingerprint}))
        return
    click.echo(f"Enrolled as {identity.device_id} in org {identity.org_id}.")
    click.echo(f"Relay key fingerprint (pinned): {identity.relay_fingerprint}")
    if not directory.policy_path.exists():
        click.echo("No local policy yet: every action is denied until you run `coact policy init`.")


def keep_unused_libraries_out() -> None:
    """sqlite-utils imports pandas and numpy whenever they are installed (the relay's
    ClickHouse client brings them into a full install). The agent never uses them,
    and they would cost it ~90 MB of resident memory; in this process only, mark
    them absent before anything imports them."""
    for optional in ("pandas", "numpy"):
        sys.modules.setdefault(optional, None)  # type: ignore[arg-type]


@agent_group.command("run")
@DATA_DIR_OPTION
@click.option("--log-level", default="INFO", show_default=True)
def run(data_dir: Path, log_level: str) -> None:
    """Run the agent in the foreground until interrupted (SIGINT/SIGTERM)."""
    keep_unused_libraries_out()
    from coact.agent.runtime import Agent

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> None:
        agent = Agent(DataDir(data_dir))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, agent.reload_requested.set)  # `coact agent reload`
        try:
            await agent.run(stop)
        finally:
            agent.close()

    try:
        asyncio.run(main())
    except RevokedError as exc:
        # A distinct status, so service managers can tell "revoked: do not restart"
        # from a crash (see installers/systemd/coact-agent.service).
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_REVOKED)
    except AgentError as exc:
        fail(str(exc))


@agent_group.command("reload")
@DATA_DIR_OPTION
@OUTPUT_OPTION
@click.option("--timeout", type=click.FloatRange(min=1), default=10, show_default=True, metavar="SECONDS",
              help="How long to wait for the agent to say how the reload went.")
def reload(data_dir: Path, output: str, timeout: float) -> None:
    """Make the running agent read its policy file again (it also does so by itself
    within seconds of a change). A policy that does not load is refused and the
    previous one stays in force; this exits 1 and says why."""
    import time

    directory = DataDir(data_dir)

    def state() -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(directory.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return loaded

    pid = state().get("pid")
    if not isinstance(pid, int) or pid <= 0:
        fail(f"no running agent found for {data_dir} (no state file); start it with `coact agent run`")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        fail(f"the agent of {data_dir} (pid {pid}) is not running; start it with `coact agent run`")
    except PermissionError:
        fail(f"not allowed to signal the agent (pid {pid}): run this as the agent's user")
    before = state().get("policy_checked_at")
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while (now := state()).get("policy_checked_at") == before:
        if time.monotonic() > deadline:
            fail(f"the agent (pid {pid}) did not answer within {timeout:g} s; see its log")
        time.sleep(0.05)
    result = {"pid": pid, "policy_sha256": now.get("policy_sha256"), "policy_error": now.get("policy_error")}
    if output == "json":
        click.echo(json.dumps(result))
    elif result["policy_error"] is None:
        click.echo(f"The agent (pid {pid}) runs the policy with SHA-256 {result['policy_sha256']}.")
    if result["policy_error"] is not None:
        fail(f"the new policy was refused and the previous one stays in force: {result['policy_error']}")


@agent_group.command("status")
@DATA_DIR_OPTION
@OUTPUT_OPTION
def status(data_dir: Path, output: str) -> None:
    """Show enrollment, connection state and the audit backlog of a local agent."""
    directory = DataDir(data_dir)
    try:
        identity = directory.identity()
    except AgentError as exc:
        fail(str(exc))
    info: dict[str, Any] = {
        "device_id": identity.device_id, "org_id": identity.org_id, "relay_url": identity.relay_url,
        "relay_fingerprint": identity.relay_fingerprint, "policy": str(directory.policy_path),
        "policy_present": directory.policy_path.exists(),
    }
    try:
        info.update(json.loads(directory.state_path.read_text()))
    except (OSError, ValueError):
        info["connected"] = False
    if directory.db_path.exists():
        import sqlite3

        db = sqlite3.connect(f"file:{directory.db_path}?mode=ro", uri=True)
        try:
            info["pending_audit"] = db.execute("SELECT count(*) FROM audit_outbox").fetchone()[0]
        except sqlite3.Error:
            info["pending_audit"] = None
        finally:
            db.close()
    if output == "json":
        click.echo(json.dumps(info))
        return
    for key, value in info.items():
        click.echo(f"{key:18} {value}")


@click.group("policy")
def policy_group() -> None:
    """The agent's local policy (default deny)."""


@policy_group.command("init")
@click.option("--sandbox", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory that file actions may read and write; everything else is denied.")
@DATA_DIR_OPTION
@click.option("--force", is_flag=True, help="Replace an existing policy.")
def policy_init(sandbox: Path, data_dir: Path, force: bool) -> None:
    """Write a policy that allows file actions under SANDBOX only."""
    from coact.policy.document import parse_policy, render_sandbox_policy
    from coact.policy.errors import PolicyError

    directory = DataDir(data_dir)
    if directory.policy_path.exists() and not force:
        fail(f"{directory.policy_path} exists; pass --force to replace it")
    try:
        text = render_sandbox_policy(str(sandbox.resolve()))
        policy = parse_policy(text)
    except PolicyError as exc:
        fail(str(exc))
    # Checked before mkdir, so a refused sandbox inside the data directory is not created.
    if problems := root_conflicts(policy, directory):
        fail(f"refusing --sandbox {sandbox}: {'; '.join(problems)}. The sandbox must be a directory that "
             "neither contains the agent's data directory nor lies inside it, and is not /")
    # Never group- or other-writable, whatever the umask: the agent refuses such a root.
    sandbox.mkdir(parents=True, exist_ok=True, mode=0o755)
    if problems := root_problems(policy, directory):
        fail(f"refusing --sandbox {sandbox}: {'; '.join(problems)}. Fix the ownership or permissions (chown/chmod), "
             "or choose another directory")
    directory.ensure()
    write_atomic(directory.policy_path, text.encode(), mode=0o600)
    click.echo(f"Wrote {directory.policy_path}: file actions allowed under {sandbox.resolve()} only.")
