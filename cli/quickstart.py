"""``coact quickstart``: the whole product on one machine, shown working.

Starts a relay on the embedded default (SQLite + chDB) and a local agent enrolled with
a sandbox policy, runs an allowed and a denied task, verifies the audit chains, then
keeps both running until interrupted. It drives the same commands and API a real
deployment uses; nothing here is a demo-only code path.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

ADMIN_EMAIL = "admin@coact.local"


def _coact(*args: str) -> list[str]:
    return [sys.executable, "-c", "from coact.cli.main import main; main()", *args]


def _call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("detail", "")
        raise click.ClickException(f"{method} {path} failed: {exc.code} {detail}") from exc


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, click.ClickException):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise click.ClickException(f"timed out waiting for {what}")


def _step(message: str) -> None:
    click.secho(f"==> {message}", fg="cyan", err=True)


@click.command("quickstart")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("demo-data"), show_default=True,
              help="Where the relay, the agent and the sandbox keep their files.")
@click.option("--port", type=int, default=8600, show_default=True, help="Relay port on 127.0.0.1.")
@click.option("--exit-after-demo", is_flag=True, help="Stop everything after the demo instead of running on.")
def quickstart(data_dir: Path, port: int, exit_after_demo: bool) -> None:
    """Run a relay and a local agent on the embedded default and show a task end to end."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = f"http://127.0.0.1:{port}"
    relay_dir, agent_dir, sandbox = data_dir / "relay", data_dir / "agent", data_dir / "sandbox"
    creds_path = data_dir / "admin.json"
    children: list[subprocess.Popen[bytes]] = []

    def stop_children(*_: Any) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()

    try:
        _step(f"starting the relay on {base} (data in {relay_dir})")
        relay_log = (data_dir / "relay.log").open("ab")
        children.append(subprocess.Popen(
            _coact("relay", "serve", "--data-dir", str(relay_dir), "--port", str(port)),
            stdout=relay_log, stderr=subprocess.STDOUT,
        ))
        _wait(lambda: _call(base, "GET", "/readyz")["status"] == "ok" if children[0].poll() is None
              else _fail(f"the relay exited; see {data_dir / 'relay.log'}"), 60, "the relay to be ready")

        if creds_path.exists():
            creds = json.loads(creds_path.read_text())
        else:
            creds = {"email": ADMIN_EMAIL, "password": secrets.token_urlsafe(18)}
            _step(f"creating the first organisation and its admin {ADMIN_EMAIL} (coact relay create-admin)")
            # Signup is off on a self-hosted relay: its first admin is made on its own machine.
            subprocess.run(_coact("relay", "create-admin", "--data-dir", str(relay_dir), "--email", creds["email"],
                                  "--org-name", "Quickstart", "--password-stdin"),
                           input=(creds["password"] + "\n").encode(), check=True, stdout=subprocess.DEVNULL)
            fd = os.open(creds_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(creds, handle)
        token = _call(base, "POST", "/api/v1/auth/login", creds)["access_token"]

        if not (agent_dir / "identity.json").exists():
            _step("enrolling a local agent with a one-time code")
            code = _call(base, "POST", "/api/v1/devices/enrollment-codes", {"tags": ["quickstart"]}, token)["code"]
            subprocess.run(_coact("agent", "enroll", "--relay", base, "--code", code, "--data-dir", str(agent_dir),
                                  "--name", "quickstart-agent"), check=True)
            subprocess.run(_coact("policy", "init", "--sandbox", str(sandbox), "--data-dir", str(agent_dir), "--force"),
                           check=True)
        device_id = json.loads((agent_dir / "identity.json").read_text())["device_id"]

        _step("starting the agent (policy: file actions inside the sandbox only)")
        agent_log = (data_dir / "agent.log").open("ab")
        children.append(subprocess.Popen(_coact("agent", "run", "--data-dir", str(agent_dir)),
                                         stdout=agent_log, stderr=subprocess.STDOUT))
        _wait(lambda: _call(base, "GET", f"/api/v1/devices/{device_id}", token=token)["online"], 30,
              "the agent to come online")

        target = sandbox / "hello.txt"
        for label, action, params in (
            ("allowed", "file.write", {"path": str(target), "content": "Hello from Coact\n", "overwrite": True}),
            ("denied", "file.read", {"path": "/etc/passwd"}),
        ):
            task = _call(base, "POST", "/api/v1/tasks", {"device_id": device_id, "action": action, "params": params}, token)
            _step(f"task {task['id']}: {action} {params['path']} (risk {task['risk']['level']}, expected {label})")
            done = _wait(lambda tid=task["id"]: (t := _call(base, "GET", f"/api/v1/tasks/{tid}", token=token))["status"]
                         in ("succeeded", "failed", "timed_out", "expired") and t, 30, "the task result")
            result = done["result"] or {}
            summary = json.dumps(result.get("output")) if result.get("ok") else result.get("error")
            click.echo(f"    {done['status']}: {summary}")

        _step("verifying every audit chain of the organisation (coact audit verify)")
        time.sleep(1.5)  # let the agent upload its latest records
        verify = subprocess.run(_coact("audit", "verify", "--relay", base), env={**os.environ, "COACT_TOKEN": token})
        if verify.returncode != 0:
            raise click.ClickException("audit verification failed")

        click.echo()
        click.secho("Coact is running.", fg="green", bold=True)
        click.echo(f"  API docs:   {base}/docs")
        click.echo(f"  Log in:     coact login --relay {base} --email {creds['email']}   (password in {creds_path})")
        click.echo(f"  Try:        coact tasks run quickstart-agent file.list --param path={sandbox}")
        click.echo(f"  Logs:       {data_dir / 'relay.log'}, {data_dir / 'agent.log'}")
        if exit_after_demo:
            return
        click.echo("Press Ctrl-C to stop the relay and the agent.")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        raise click.ClickException("a child process exited; see the logs above")
    except KeyboardInterrupt:
        click.echo("\nstopping…", err=True)
    finally:
        stop_children()


def _fail(message: str) -> None:
    raise click.ClickException(message)
