"""Admin commands: ``coact login|logout``, ``coact devices …``, ``coact tasks …``,
``coact audit …`` (reference: docs/cli.md).

Every command takes ``--relay URL`` (or ``COACT_RELAY``), ``--profile NAME`` (or
``COACT_PROFILE``) and ``--output text|json``. Credentials come from ``COACT_TOKEN``
when set, else from the profile ``coact login`` saved. Failures print one line on
stderr and exit 1; usage mistakes exit 2.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from coact.cli.client import (
    API,
    CliError,
    Http,
    ProfileStore,
    RelayRefused,
    Session,
    config_dir,
    normalize_url,
    refused,
    token_profile,
)
from coact.cli.output import OUTPUT_OPTION, print_json, print_table, progress, table

F = TypeVar("F", bound=Callable[..., Any])

ID_PATTERN = re.compile(r"^[a-z]{2,4}_[0-9a-z]{26}$")
FINAL_STATUSES = frozenset({"rejected", "succeeded", "failed", "timed_out", "cancelled", "expired"})
# The statuses a task can have today. The lifecycle also names created, rejected,
# awaiting_approval and approved, reserved for the approval workflow, which no task
# reaches yet: offering them as filters would promise lists that are always empty.
TASK_STATUSES = (
    "queued", "dispatched", "running", "succeeded", "failed", "timed_out", "cancelled", "expired",
)


# -- shared plumbing -------------------------------------------------------------------


def relay_options(func: F) -> F:
    """``--relay``, ``--profile`` and ``--output``: the options every admin command takes."""
    func = OUTPUT_OPTION(func)
    func = click.option(
        "--profile", envvar="COACT_PROFILE", default="default", show_default=True, metavar="NAME",
        help="Saved login to use (env COACT_PROFILE).",
    )(func)
    func = click.option(
        "--relay", "relay_url", envvar="COACT_RELAY", metavar="URL",
        help="Relay base URL, e.g. http://127.0.0.1:8080 (env COACT_RELAY; default: the profile's).",
    )(func)
    return func


def profile_store() -> ProfileStore:
    return ProfileStore(config_dir(os.environ) / "profiles.json")


def connect(relay_url: str | None, profile_name: str) -> Session:
    """An authenticated session from COACT_TOKEN or the named profile."""
    store = profile_store()
    profile = store.get(profile_name)
    relay = relay_url or (profile.relay if profile else None)
    if not relay:
        raise CliError("no relay given: pass --relay URL, set COACT_RELAY, or run `coact login` first")
    http = Http(relay)
    token = os.environ.get("COACT_TOKEN")
    if token:
        return Session(http, token=token)
    if profile is None or not profile.logged_in:
        raise CliError(
            f"not logged in (profile {profile_name!r}): run `coact login --relay {http.base_url} "
            "--email EMAIL`, or set COACT_TOKEN"
        )
    if normalize_url(profile.relay) != http.base_url:
        # Tokens of one relay are worthless at another, and must not leak to it.
        raise CliError(
            f"profile {profile_name!r} is logged in to {profile.relay}, not {http.base_url}: "
            f"run `coact login --relay {http.base_url} --profile NAME`, or set COACT_TOKEN"
        )
    return Session(http, store=store, profile_name=profile_name, profile=profile)


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: keep such values as strings.
    raise ValueError(name)


def parse_params(pairs: Iterable[str], params_json: str | None) -> dict[str, Any]:
    """``--params-json`` first, then each ``--param k=v`` on top (values JSON if they parse)."""
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            decoded = json.loads(params_json)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--params-json") from exc
        if not isinstance(decoded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--params-json")
        params.update(decoded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        try:
            value: Any = json.loads(raw, parse_constant=_no_constant)
        except ValueError:
            value = raw
        params[key.strip()] = value
    return params


def resolve_device(session: Session, ref: str) -> dict[str, Any]:
    """A device by id or by unique name."""
    if ID_PATTERN.match(ref):
        status, answer = session.request("GET", f"{API}/devices/{ref}")
        if status == 200:
            return dict(answer)
        if status != 404:
            raise refused(status, answer)
    named = [d for d in session.pages("/devices") if d["name"] == ref]
    if not named:
        raise CliError(f"no device with id or name {ref!r}: see `coact devices ls`")
    if len(named) > 1:
        ids = ", ".join(d["id"] for d in named)
        raise CliError(f"{len(named)} devices are named {ref!r} ({ids}): give the device id")
    return named[0]


def summary(data: Any, width: int = 80) -> str:
    """A record's data as ``key=value`` pairs on one line, cut to ``width``."""
    if not isinstance(data, Mapping):
        text = json.dumps(data, ensure_ascii=False)
    else:
        parts = []
        for key, value in data.items():
            shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            parts.append(f"{key}={shown}")
        text = " ".join(parts)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_fields(rows: Iterable[tuple[str, Any]]) -> None:
    pairs = [(k, v) for k, v in rows]
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        click.echo(f"{key.ljust(width)}  {'-' if value is None or value == '' else value}")


# -- login / logout --------------------------------------------------------------------


@click.command()
@relay_options
@click.option("--email", help="Account email (prompted if not given).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of prompting.")
def login(relay_url: str | None, profile: str, output: str, email: str | None, password_stdin: bool) -> None:
    """Log in to a relay and save the session in a profile."""
    store = profile_store()
    existing = store.get(profile)
    relay = relay_url or (existing.relay if existing else None)
    if not relay:
        raise click.UsageError("pass --relay URL (or set COACT_RELAY)")
    http = Http(relay)
    if email is None:
        email = existing.email if existing and existing.email else click.prompt("Email", err=True)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, err=True)
    if not password:
        raise click.UsageError("the password is empty")
    status, answer = http.request("POST", f"{API}/auth/login", {"email": email, "password": password})
    if status == 401:
        raise CliError(f"login failed: {refused(status, answer).detail or 'email or password is wrong'}")
    if status != 200 or not isinstance(answer, dict):
        raise refused(status, answer)
    saved = token_profile(answer, http.base_url, email)
    store.save(profile, saved)
    status, me = http.request("GET", f"{API}/me", token=saved.access_token)
    user = me.get("user", {}) if status == 200 and isinstance(me, dict) else {}
    if output == "json":
        print_json({"profile": profile, "relay": http.base_url, "email": email, "role": user.get("role"),
                    "org_id": user.get("org_id"), "expires_at": saved.expires_at})
        return
    role = f" ({user['role']})" if user.get("role") else ""
    click.echo(f"Logged in to {http.base_url} as {email}{role}; saved as profile {profile!r}.")


@click.command()
@relay_options
def logout(relay_url: str | None, profile: str, output: str) -> None:
    """End the profile's session at the relay and delete its saved tokens."""
    store = profile_store()
    saved = store.get(profile)
    if saved is None or not saved.logged_in:
        if output == "json":
            print_json({"profile": profile, "logged_out": False})
        else:
            click.echo(f"Profile {profile!r} is not logged in.", err=True)
        return
    try:
        session = Session(Http(relay_url or saved.relay), store=store, profile_name=profile, profile=saved)
        session.ensure_fresh()
        current = session.profile
        assert current is not None
        session.call("POST", "/auth/logout", {"refresh_token": current.refresh_token})
    except CliError as exc:
        store.forget_tokens(profile)
        raise CliError(f"{exc.message} (the saved tokens were deleted anyway)") from exc
    store.forget_tokens(profile)
    if output == "json":
        print_json({"profile": profile, "logged_out": True})
    else:
        click.echo(f"Logged out of {saved.relay} (profile {profile!r}).")


# -- devices ---------------------------------------------------------------------------


@click.group("devices")
def devices_group() -> None:
    """List, inspect and revoke devices; create enrollment codes."""


@devices_group.command("ls")
@relay_options
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many devices.")
def devices_ls(relay_url: str | None, profile: str, output: str, limit: int | None) -> None:
    """List the org's devices."""
    session = connect(relay_url, profile)
    devices = list(session.pages("/devices", limit=limit))
    if output == "json":
        print_json(devices)
        return
    rows = [[d["id"], d["name"], d["platform"], d["status"], d["online"], d["last_seen"], d["tags"]]
            for d in devices]
    print_table(["ID", "NAME", "PLATFORM", "STATUS", "ONLINE", "LAST_SEEN", "TAGS"], rows,
                "No devices yet: create a code with `coact devices enroll-code`.")


@devices_group.command("show")
@relay_options
@click.argument("device")
def devices_show(relay_url: str | None, profile: str, output: str, device: str) -> None:
    """Show one device (by id or name), with its telemetry."""
    session = connect(relay_url, profile)
    found = resolve_device(session, device)
    if output == "json":
        print_json(found)
        return
    print_fields([
        ("id", found["id"]), ("name", found["name"]), ("platform", found["platform"]),
        ("status", found["status"]), ("online", "yes" if found["online"] else "no"),
        ("last_seen", found["last_seen"]), ("enrolled_at", found["enrolled_at"]),
        ("tags", ",".join(found["tags"])), ("public_key", found["public_key"]),
        ("telemetry", found["telemetry"]),
    ])


@devices_group.command("revoke")
@relay_options
@click.argument("device")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def devices_revoke(relay_url: str | None, profile: str, output: str, device: str, yes: bool) -> None:
    """Revoke a device: its connection ends and its tokens stop working."""
    session = connect(relay_url, profile)
    found = resolve_device(session, device)
    if not yes:
        click.confirm(f"Revoke device {found['id']} ({found['name']})? This cannot be undone",
                      abort=True, err=True)
    revoked = session.post(f"/devices/{found['id']}/revoke")
    if output == "json":
        print_json(revoked)
    else:
        click.echo(f"Revoked device {revoked['id']} ({revoked['name']}).")


@devices_group.command("enroll-code")
@relay_options
@click.option("--ttl", type=click.IntRange(min=60), metavar="SECONDS",
              help="How long the code stays valid (default: the relay's, 900 s).")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag for the device enrolled with it (repeatable).")
def devices_enroll_code(relay_url: str | None, profile: str, output: str, ttl: int | None,
                        tags: tuple[str, ...]) -> None:
    """Create a one-time enrollment code for a new device."""
    session = connect(relay_url, profile)
    body: dict[str, Any] = {"tags": list(tags)}
    if ttl is not None:
        body["ttl_s"] = ttl
    code = session.post("/devices/enrollment-codes", body)
    if output == "json":
        print_json(code)
        return
    click.echo(f"Enrollment code: {code['code']}")
    click.echo(f"Expires at:      {code['expires_at']} (one use)")
    if code.get("tags"):
        click.echo(f"Tags:            {','.join(code['tags'])}")
    click.echo(f"On the device:   coact agent enroll --relay {session.relay} --code {code['code']}")


# -- tasks -----------------------------------------------------------------------------


@click.group("tasks")
def tasks_group() -> None:
    """Run tasks on devices; list, show and cancel them."""


def device_label(names: Mapping[str, str], device_id: str) -> str:
    """A device as a table shows it: its name, for reading, and its id, for typing."""
    name = names.get(device_id)
    return f"{name} ({device_id})" if name else device_id


def task_line(task: Mapping[str, Any]) -> str:
    return f"task {task['id']} {task['status']} ({task['action']} on {task['device_id']}, risk {task['risk']['level']})"


def show_task(task: Mapping[str, Any]) -> None:
    risk = task["risk"]
    reasons = "; ".join(risk.get("reasons") or [])
    rows: list[tuple[str, Any]] = [
        ("id", task["id"]), ("device", task["device_id"]), ("action", task["action"]),
        ("params", task["params"]), ("status", task["status"]),
        ("risk", f"{risk['level']} (score {risk['score']})" + (f": {reasons}" if reasons else "")),
        ("created_at", task["created_at"]), ("created_by", task["created_by"]),
        ("started_at", task.get("started_at")), ("finished_at", task.get("finished_at")),
    ]
    result = task.get("result")
    if result:
        if result.get("error"):
            rows.append(("error", result["error"]))
        if result.get("artifacts"):
            rows.append(("artifacts", ",".join(result["artifacts"])))
    print_fields(rows)
    if result and result.get("output") is not None:
        click.echo("output:")
        click.echo(json.dumps(result["output"], indent=2, ensure_ascii=False, sort_keys=True))


def wait_final(session: Session, task: dict[str, Any]) -> dict[str, Any]:
    start = time.monotonic()
    delay = 0.1
    with progress() as line:
        while task["status"] not in FINAL_STATUSES:
            line.update(f"task {task['id']} {task['status'].replace('_', ' ')} ({time.monotonic() - start:.1f} s)")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
            task = session.get(f"/tasks/{task['id']}")
    return task


def task_failure(task: Mapping[str, Any]) -> CliError:
    result = task.get("result") or {}
    why = result.get("error") or {
        "timed_out": "the device did not finish in time",
        "expired": "the device did not pick it up before it expired",
        "cancelled": "cancelled",
        "rejected": "rejected",
    }.get(task["status"], "no reason given")
    return CliError(f"task {task['id']} {task['status']}: {why}")


@tasks_group.command("run")
@relay_options
@click.argument("device")
@click.argument("action")
@click.option("--param", "-p", "pairs", multiple=True, metavar="KEY=VALUE",
              help="An action parameter; VALUE is JSON if it parses (10, true, [..]) else a string. Repeatable.")
@click.option("--params-json", metavar="JSON", help="All parameters as one JSON object (--param wins on overlap).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="How long the device may run the action (default: the relay's).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the result (exit 1 unless it succeeded) or return once queued.")
def tasks_run(relay_url: str | None, profile: str, output: str, device: str, action: str,
              pairs: tuple[str, ...], params_json: str | None, timeout: float | None, wait: bool) -> None:
    """Run ACTION on DEVICE (an id or a unique name)."""
    params = parse_params(pairs, params_json)
    session = connect(relay_url, profile)
    target = resolve_device(session, device)
    body: dict[str, Any] = {"device_id": target["id"], "action": action, "params": params}
    if timeout is not None:
        body["timeout_s"] = timeout
    task = session.post("/tasks", body)
    if wait and not target.get("online") and task["status"] not in FINAL_STATUSES:
        seen = f"last seen {target['last_seen']}" if target.get("last_seen") else "never connected"
        click.echo(
            f"device {target['name']!r} ({target['id']}) is offline ({seen}): task {task['id']} waits in the "
            f"queue until the device connects, or until it expires at {task.get('expires_at') or '-'}. "
            "Waiting for it; Ctrl-C stops waiting and leaves the task queued (--no-wait returns at once).",
            err=True,
        )
    if not wait:
        if output == "json":
            print_json(task)
        else:
            click.echo(task_line(task))
        return
    try:
        task = wait_final(session, task)
    except KeyboardInterrupt:
        raise CliError(f"stopped waiting; task {task['id']} goes on: see `coact tasks show {task['id']}`") from None
    if output == "json":
        print_json(task)
    elif task["status"] == "succeeded":
        click.echo(task_line(task))
        output_value = (task.get("result") or {}).get("output")
        if output_value is not None:
            click.echo(json.dumps(output_value, indent=2, ensure_ascii=False, sort_keys=True))
    if task["status"] != "succeeded":
        raise task_failure(task)


@tasks_group.command("ls")
@relay_options
@click.option("--device", help="Only this device (id or name).")
@click.option("--status", type=click.Choice(TASK_STATUSES), help="Only tasks in this status.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Show at most this many.")
def tasks_ls(relay_url: str | None, profile: str, output: str, device: str | None, status: str | None,
             limit: int) -> None:
    """List tasks, newest first."""
    session = connect(relay_url, profile)
    device_id = resolve_device(session, device)["id"] if device else None
    tasks = list(session.pages("/tasks", limit=limit, device_id=device_id, status=status))
    if output == "json":
        print_json(tasks)
        return
    names = {d["id"]: d["name"] for d in session.pages("/devices")} if tasks else {}
    rows = [[t["id"], device_label(names, t["device_id"]), t["action"], t["status"], t["risk"]["level"],
             t["created_at"]] for t in tasks]
    print_table(["ID", "DEVICE", "ACTION", "STATUS", "RISK", "CREATED"], rows, "No tasks.")


@tasks_group.command("show")
@relay_options
@click.argument("task_id")
def tasks_show(relay_url: str | None, profile: str, output: str, task_id: str) -> None:
    """Show one task with its result."""
    task = connect(relay_url, profile).get(f"/tasks/{task_id}")
    if output == "json":
        print_json(task)
    else:
        show_task(task)


@tasks_group.command("cancel")
@relay_options
@click.argument("task_id")
def tasks_cancel(relay_url: str | None, profile: str, output: str, task_id: str) -> None:
    """Cancel a task that has not finished."""
    task = connect(relay_url, profile).post(f"/tasks/{task_id}/cancel")
    if output == "json":
        print_json(task)
    else:
        click.echo(task_line(task))


# -- audit -----------------------------------------------------------------------------


@click.group("audit")
def audit_group() -> None:
    """Read and verify the tamper-evident audit trail."""


def audit_row(record: Mapping[str, Any]) -> list[Any]:
    return [record["ts"], record["kind"], record["device_id"], record["seq"], record.get("task_id"),
            summary(record.get("data"))]


AUDIT_HEADERS = ["TS", "KIND", "CHAIN", "SEQ", "TASK", "SUMMARY"]


def fetch_audit(session: Session, query: Mapping[str, Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with progress() as line:
        for record in session.pages("/audit", page_size=5000, **query):
            records.append(record)
            if len(records) % 1000 == 0:
                line.update(f"fetched {len(records)} audit records")
    return records


@audit_group.command("tail")
@relay_options
@click.option("--device", "device_id", metavar="ID", help="Only this device's chain.")
@click.option("--task", "task_id", metavar="ID", help="Only records of this task.")
@click.option("--since", metavar="TS", help="Only records at or after this RFC 3339 time.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Show the newest N records.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records until Ctrl-C.")
def audit_tail(relay_url: str | None, profile: str, output: str, device_id: str | None, task_id: str | None,
               since: str | None, limit: int, follow: bool) -> None:
    """Print the newest audit records (ts, kind, chain, seq, task, summary)."""
    session = connect(relay_url, profile)
    query = {"device_id": device_id, "task_id": task_id, "since": since}
    records = sorted(fetch_audit(session, query), key=lambda r: (r["ts"], r["device_id"], r["seq"]))[-limit:]
    if not follow:
        if output == "json":
            print_json(records)
        else:
            print_table(AUDIT_HEADERS, [audit_row(r) for r in records], "No audit records.")
        return
    # Following: one line (or JSON object) per record, as they arrive. Records are
    # ordered by chain, not time, so poll by time and drop what was already shown.
    header = output == "text"

    def emit(batch: list[dict[str, Any]]) -> None:
        nonlocal header
        for record in batch:
            if output == "json":
                click.echo(json.dumps(record, sort_keys=True, ensure_ascii=False))
                continue
            lines = table(AUDIT_HEADERS, [audit_row(record)]).splitlines()
            click.echo("\n".join(lines if header else lines[1:]))
            header = False
        sys.stdout.flush()

    def key(record: Mapping[str, Any]) -> tuple[str, int]:
        return (record["device_id"], record["seq"])

    emit(records)
    seen = {key(r): r["ts"] for r in records}
    last_ts = records[-1]["ts"] if records else since
    try:
        while True:
            time.sleep(1.0)
            fresh = [r for r in fetch_audit(session, {**query, "since": last_ts}) if key(r) not in seen]
            fresh.sort(key=lambda r: (r["ts"], r["device_id"], r["seq"]))
            emit(fresh)
            if fresh:
                last_ts = max(last_ts or "", fresh[-1]["ts"])
                seen.update({key(r): r["ts"] for r in fresh})
                # Only records at or after last_ts come back: forget older ones.
                seen = {k: ts for k, ts in seen.items() if ts >= last_ts}
    except KeyboardInterrupt:
        return


def load_keys(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read keys from {path}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("keys"), dict):
        data = data["keys"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise CliError(f"{path} must hold a JSON object {{chain_id: base64 public key}}")
    return dict(data)


def read_store(url: str, org_id: str, device_id: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every record and batch of one org straight from ClickHouse (or chDB)."""
    from coact.relay.audit_store import MAX_PAGE, AuditStore  # heavy: only when asked for

    try:
        store = AuditStore.open(url)
    except Exception as exc:  # the URL may carry a password: never echo it
        raise CliError(f"cannot open the audit store: {exc}") from exc
    records: list[dict[str, Any]] = []
    try:
        with progress() as line:
            after: tuple[str, int] | None = None
            while True:
                page = store.records(org_id, device_id=device_id, after=after, limit=MAX_PAGE)
                records += page
                line.update(f"read {len(records)} audit records")
                if len(page) < MAX_PAGE:
                    break
                after = (page[-1]["device_id"], page[-1]["seq"])
            batches = store.batches(org_id, device_id)
    except Exception as exc:
        raise CliError(f"cannot read the audit store: {exc}") from exc
    finally:
        store.close()
    return records, batches


@audit_group.command("verify")
@relay_options
@click.option("--clickhouse", "clickhouse_url", metavar="URL",
              help="Read records straight from ClickHouse (http://user:pass@host:8123/db) or chdb:///path "
                   "instead of through the relay.")
@click.option("--device", "device_id", metavar="ID", help="Verify only this chain.")
@click.option("--keys", "keys_file", type=click.Path(path_type=Path, dir_okay=False),
              help="JSON {chain_id: public key} to trust (e.g. saved from `coact audit keys -o json`); "
                   "default: ask the relay.")
@click.option("--org", "org_id", metavar="ORG_ID", help="With --clickhouse: the org to verify (default: yours).")
def audit_verify(relay_url: str | None, profile: str, output: str, clickhouse_url: str | None,
                 device_id: str | None, keys_file: Path | None, org_id: str | None) -> None:
    """Re-verify hash chains and batch signatures of your org's audit trail."""
    from coact.shared.auditcheck import verify_audit
    from coact.shared.canonical import use_orjson

    use_orjson()  # every record is re-hashed (decision 41)
    session: Session | None = None
    if keys_file is None or (clickhouse_url is None) or org_id is None:
        session = connect(relay_url, profile)
    keys = load_keys(keys_file) if keys_file else _relay_keys(session, clickhouse_url is not None)
    if clickhouse_url is None:
        assert session is not None
        records = fetch_audit(session, {"device_id": device_id})
        by_device: dict[str, Any] = {"device_id": device_id} if device_id else {}
        batches = list(session.pages("/audit/batches", page_size=5000, **by_device))
    else:
        if org_id is None:
            assert session is not None
            org_id = str(session.get("/me")["user"]["org_id"])
        records, batches = read_store(clickhouse_url, org_id, device_id)
    report = verify_audit(records, batches, keys)
    if output == "json":
        print_json({
            "ok": report.ok, "chains": report.chains, "records": report.records,
            "findings": [{"chain": f.device_id, "seq": f.seq, "problem": f.problem} for f in report.findings],
        })
    elif report.ok:
        click.echo(f"OK: {report.chains} chains, {report.records} records verified")
    else:
        for finding in report.findings:
            where = f"record {finding.seq}: " if finding.seq is not None else ""
            click.echo(f"chain {finding.device_id}: {where}{finding.problem}")
    if not report.ok:
        raise CliError(f"audit verification failed: {len(report.findings)} finding(s) "
                       f"in {report.chains} chains, {report.records} records")


def _relay_keys(session: Session | None, direct: bool) -> dict[str, str]:
    assert session is not None
    try:
        return dict(session.get("/audit/keys")["keys"])
    except RelayRefused:
        raise
    except CliError as exc:
        if direct:
            raise CliError(f"{exc.message}; without the relay, pass the trusted keys with --keys FILE") from exc
        raise


@audit_group.command("keys")
@relay_options
def audit_keys(relay_url: str | None, profile: str, output: str) -> None:
    """List the public key of every audit chain of your org (to keep for --keys)."""
    keys = connect(relay_url, profile).get("/audit/keys")["keys"]
    if output == "json":
        print_json(keys)
    else:
        print_table(["CHAIN", "PUBLIC_KEY"], sorted(keys.items()), "No audit chains yet.")
