"""The admin CLI against a real relay and real agents, run as users run it: a subprocess."""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    PASSWORD,
    TEST_ENV,
    Agent,
    Api,
    Relay,
    coact_command,
    free_port,
    wait_for,
    wait_online,
)


class Cli:
    """``coact`` with its own config dir (XDG_CONFIG_HOME) and relay."""

    def __init__(self, url: str, config: Path, **env: str) -> None:
        self.url = url
        self.config = config
        self.env = {"XDG_CONFIG_HOME": str(config), **env}

    @property
    def profiles_path(self) -> Path:
        return self.config / "coact" / "profiles.json"

    def profiles(self) -> dict[str, Any]:
        return dict(json.loads(self.profiles_path.read_text())["profiles"])

    def __call__(self, *args: str, input: str | None = None, relay: bool = True,
                 check: bool = False) -> subprocess.CompletedProcess[str]:
        argv = [*args, "--relay", self.url] if relay else list(args)
        env = {k: v for k, v in os.environ.items() if not k.startswith("COACT_")}
        result = subprocess.run(
            coact_command(*argv), capture_output=True, text=True, timeout=90, input=input or "",
            env={**env, **TEST_ENV, **self.env},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"coact {' '.join(argv)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--output", "json", check=True).stdout)

    def login(self, email: str, password: str = PASSWORD, *extra: str) -> subprocess.CompletedProcess[str]:
        return self("login", "--email", email, "--password-stdin", *extra, input=password + "\n")


@pytest.fixture
def org(relay: Relay) -> tuple[Api, dict[str, Any]]:
    return relay.new_admin()


@pytest.fixture
def cli(relay: Relay, org: tuple[Api, dict[str, Any]], tmp_path: Path) -> Cli:
    runner = Cli(relay.url, tmp_path / "config")
    runner.login(org[1]["email"])
    return runner


def online_agent(agent_factory: Any, org: tuple[Api, dict[str, Any]], name: str) -> tuple[str, Path]:
    agent, device_id, sandbox = agent_factory(name, org[0])
    agent.start()
    wait_online(org[0], device_id)
    return device_id, sandbox


# -- login and profiles ----------------------------------------------------------------


def test_login_saves_an_owner_only_profile(relay: Relay, org: tuple[Api, dict[str, Any]], tmp_path: Path) -> None:
    cli = Cli(relay.url, tmp_path / "config")
    result = cli.login(org[1]["email"])
    assert result.returncode == 0, result.stderr
    assert f"Logged in to {relay.url} as {org[1]['email']} (admin)" in result.stdout
    assert stat.S_IMODE(cli.profiles_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.profiles_path.parent.stat().st_mode) == 0o700
    saved = cli.profiles()["default"]
    assert saved["relay"] == relay.url
    assert saved["access_token"]
    assert saved["refresh_token"]
    assert saved["expires_at"] > time.time()

    # A second profile sits beside the first; commands pick it with --profile.
    again = cli.login(org[1]["email"], PASSWORD, "--profile", "work", "--output", "json")
    assert json.loads(again.stdout)["profile"] == "work"
    assert set(cli.profiles()) == {"default", "work"}
    assert cli("devices", "ls", "--profile", "work").returncode == 0


def test_wrong_password_is_refused_clearly(relay: Relay, org: tuple[Api, dict[str, Any]], tmp_path: Path) -> None:
    cli = Cli(relay.url, tmp_path / "config")
    result = cli.login(org[1]["email"], "not the password")
    assert result.returncode == 1
    assert "login failed: email or password is wrong" in result.stderr
    assert "Traceback" not in result.stderr
    assert not cli.profiles_path.exists()


def test_unreachable_relay_and_missing_login_say_what_to_do(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    cli = Cli(nowhere, tmp_path / "config")
    result = cli("devices", "ls")
    assert result.returncode == 1
    assert "not logged in" in result.stderr
    assert "coact login" in result.stderr

    cli.env["COACT_TOKEN"] = "anything"
    result = cli("devices", "ls")
    assert result.returncode == 1
    assert f"cannot reach the relay at {nowhere}: is `coact relay serve` running?" in result.stderr
    assert "Traceback" not in result.stderr

    login = cli.login("someone@example.com")
    assert login.returncode == 1
    assert "cannot reach the relay" in login.stderr


def test_coact_token_environment_variable_overrides_the_profile(
    relay: Relay, org: tuple[Api, dict[str, Any]], tmp_path: Path
) -> None:
    cli = Cli(relay.url, tmp_path / "config", COACT_TOKEN=str(org[0].token))
    assert cli.json("devices", "ls") == []
    cli.env["COACT_TOKEN"] = "not-a-token"
    result = cli("devices", "ls")
    assert result.returncode == 1
    assert "the relay refused COACT_TOKEN" in result.stderr


def test_profile_for_another_relay_is_not_sent_elsewhere(cli: Cli, tmp_path: Path) -> None:
    other = f"http://127.0.0.1:{free_port()}"
    result = cli("devices", "ls", "--relay", other, relay=False)
    assert result.returncode == 1
    assert f"is logged in to {cli.url}, not {other}" in result.stderr


def test_logout_revokes_the_session_at_the_relay(relay: Relay, cli: Cli) -> None:
    refresh_token = cli.profiles()["default"]["refresh_token"]
    result = cli("logout")
    assert result.returncode == 0, result.stderr
    assert cli.profiles()["default"]["refresh_token"] is None
    answer = relay.api().post("/api/v1/auth/refresh", {"refresh_token": refresh_token})
    assert answer.status == 401
    result = cli("devices", "ls")
    assert result.returncode == 1
    assert "not logged in" in result.stderr


def test_expired_access_token_is_refreshed_and_rotated(tmp_path: Path) -> None:
    server = Relay(tmp_path / "short", env={"COACT_ACCESS_TOKEN_TTL_S": "2"})
    server.start()
    try:
        _api, user = server.new_admin()
        cli = Cli(server.url, tmp_path / "config")
        assert cli.login(user["email"]).returncode == 0
        before = cli.profiles()["default"]
        time.sleep(3)
        assert cli.json("devices", "ls") == []
        after = cli.profiles()["default"]
        assert after["refresh_token"] != before["refresh_token"]
        assert after["access_token"] != before["access_token"]

        # Several commands finding the token expired at once: the refresh is
        # serialised, so none of them replays a spent refresh token (which would make
        # the relay revoke the session and log every one of them out).
        time.sleep(3)
        argv = coact_command("devices", "ls", "--relay", server.url, "-o", "json")
        env = {**os.environ, **TEST_ENV, **cli.env}
        runs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(4)]
        outcomes = [(run.wait(60), run.communicate()) for run in runs]
        assert [code for code, _ in outcomes] == [0, 0, 0, 0], outcomes
        after = cli.profiles()["default"]

        # A 401 from the relay also triggers a refresh, even when the saved expiry
        # looks fine (the relay allows 30 s of clock leeway, so use a dead token).
        profiles = json.loads(cli.profiles_path.read_text())
        profiles["profiles"]["default"]["expires_at"] = time.time() + 3600
        profiles["profiles"]["default"]["access_token"] = "revoked-or-expired"
        cli.profiles_path.write_text(json.dumps(profiles))
        assert cli("devices", "ls", check=True).returncode == 0
        assert cli.profiles()["default"]["refresh_token"] != after["refresh_token"]
        # The spent refresh token is dead at the relay (rotation, not reuse).
        assert server.api().post("/api/v1/auth/refresh", {"refresh_token": before["refresh_token"]}).status == 401
    finally:
        server.stop()


# -- devices ---------------------------------------------------------------------------


def test_enroll_code_and_device_listing(cli: Cli, org: tuple[Api, dict[str, Any]], agent_factory: Any) -> None:
    text = cli("devices", "enroll-code", "--ttl", "600", "--tag", "lab", check=True).stdout
    assert "Enrollment code:" in text
    assert f"coact agent enroll --relay {cli.url} --code " in text
    code = cli.json("devices", "enroll-code", "--tag", "lab", "--tag", "floor-2")
    assert code["code"]
    assert code["expires_at"]
    assert code["tags"] == ["lab", "floor-2"]
    bad = cli("devices", "enroll-code", "--tag", "no spaces")
    assert bad.returncode == 1
    assert "relay refused: 400" in bad.stderr

    empty = cli("devices", "ls", check=True)
    assert "No devices yet" in empty.stderr

    device_id, _ = online_agent(agent_factory, org, "inventory")
    table = cli("devices", "ls", check=True).stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "PLATFORM", "STATUS", "ONLINE", "LAST_SEEN", "TAGS"]
    assert len(table) == 2
    assert table[1].split()[0] == device_id
    assert "active" in table[1]
    assert " yes " in table[1]

    devices = cli.json("devices", "ls")
    assert [d["id"] for d in devices] == [device_id]
    assert devices[0]["online"] is True
    shown = cli.json("devices", "show", devices[0]["name"])
    assert shown["id"] == device_id
    assert f"id           {device_id}" in cli("devices", "show", device_id, check=True).stdout

    missing = cli("devices", "show", "no-such-device")
    assert missing.returncode == 1
    assert "no device with id or name 'no-such-device'" in missing.stderr

    revoked = cli("devices", "revoke", device_id, "--yes", check=True)
    assert f"Revoked device {device_id}" in revoked.stdout
    assert cli.json("devices", "show", device_id)["status"] == "revoked"


# -- tasks -----------------------------------------------------------------------------


def test_tasks_run_waits_for_the_agent(cli: Cli, org: tuple[Api, dict[str, Any]], agent_factory: Any) -> None:
    device_id, sandbox = online_agent(agent_factory, org, "runner")
    target = sandbox / "note.txt"
    written = cli("tasks", "run", device_id, "file.write", "--param", f"path={target}",
                  "--param", "content=hello from the cli")
    assert written.returncode == 0, written.stderr
    assert "succeeded (file.write on" in written.stdout
    assert target.read_text() == "hello from the cli"

    name = cli.json("devices", "show", device_id)["name"]
    read = cli("tasks", "run", name, "file.read", "-p", f"path={target}", "--timeout", "30")
    assert read.returncode == 0, read.stderr
    assert '"content": "hello from the cli"' in read.stdout

    # Typed values: max_bytes=5 arrives as a number, not the string "5".
    task = cli.json("tasks", "run", device_id, "file.read", "--params-json", json.dumps({"path": str(target)}),
                    "--param", "max_bytes=5")
    assert task["params"]["max_bytes"] == 5
    assert task["status"] == "succeeded"

    listed = cli.json("tasks", "ls", "--device", device_id, "--limit", "2")
    assert [t["id"] for t in listed][0] == task["id"]
    assert len(listed) == 2
    table = cli("tasks", "ls", "--status", "succeeded", check=True).stdout.splitlines()
    assert table[0].split() == ["ID", "DEVICE", "ACTION", "STATUS", "RISK", "CREATED"]
    assert len(table) == 4
    shown = cli("tasks", "show", task["id"], check=True).stdout
    assert "status" in shown
    assert "succeeded" in shown
    assert '"content": "hello"' in shown


def test_denied_task_exits_1_with_the_policy_reason(
    cli: Cli, org: tuple[Api, dict[str, Any]], agent_factory: Any
) -> None:
    device_id, _ = online_agent(agent_factory, org, "denier")
    result = cli("tasks", "run", device_id, "file.read", "--param", "path=/etc/passwd")
    assert result.returncode == 1
    assert "failed:" in result.stderr
    assert "outside every read root" in result.stderr
    as_json = cli("tasks", "run", device_id, "file.read", "--param", "path=/etc/passwd", "-o", "json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["status"] == "failed"


def test_bad_input_gives_clear_errors(cli: Cli, org: tuple[Api, dict[str, Any]], agent_factory: Any) -> None:
    _agent, device_id, sandbox = agent_factory("offline", org[0])  # never started
    no_equals = cli("tasks", "run", device_id, "file.read", "--param", "path")
    assert no_equals.returncode == 2
    assert "--param" in no_equals.stderr
    assert "KEY=VALUE" in no_equals.stderr
    bad_json = cli("tasks", "run", device_id, "file.read", "--params-json", "{nope")
    assert bad_json.returncode == 2
    assert "not valid JSON" in bad_json.stderr

    unknown = cli("tasks", "run", device_id, "file.teleport", "--param", "path=/tmp")
    assert unknown.returncode == 1
    assert "relay refused: 400 Bad request" in unknown.stderr
    assert "file.teleport" in unknown.stderr
    unknown_param = cli("tasks", "run", device_id, "file.read", "--param", f"path={sandbox}", "--param", "colour=1")
    assert unknown_param.returncode == 1
    assert "params.colour: unknown parameter" in unknown_param.stderr
    assert "Traceback" not in unknown.stderr + unknown_param.stderr

    no_device = cli("tasks", "run", "ghost", "file.read", "--param", "path=/tmp")
    assert no_device.returncode == 1
    assert "no device with id or name 'ghost'" in no_device.stderr
    missing_task = cli("tasks", "show", "tsk_00000000000000000000000000")
    assert missing_task.returncode == 1
    assert "relay refused: 404 Not found" in missing_task.stderr
    assert "no such task" in missing_task.stderr
    bogus_task = cli("tasks", "show", "tsk_bogus")
    assert bogus_task.returncode == 1
    assert "no such task" in bogus_task.stderr


def test_running_a_task_on_an_offline_device_says_so_before_waiting(
    cli: Cli, org: tuple[Api, dict[str, Any]], agent_factory: Any
) -> None:
    _agent, device_id, sandbox = agent_factory("napping", org[0])  # enrolled, never started
    name = cli.json("devices", "show", device_id)["name"]
    argv = [*coact_command("tasks", "run", device_id, "file.stat", "--param", f"path={sandbox}",
                           "--relay", cli.url)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COACT_")}
    with subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          env={**env, **TEST_ENV, **cli.env}) as waiting:
        assert waiting.stderr is not None
        # The first thing it says, before any wait (a silent wait would block here).
        readable, _, _ = select.select([waiting.stderr], [], [], 30)
        said = waiting.stderr.readline() if readable else ""
        waiting.send_signal(signal.SIGINT)
        _out, rest = waiting.communicate(timeout=30)
    assert f"device {name!r} ({device_id}) is offline (never connected)" in said
    assert "waits in the queue until the device connects" in said
    assert "--no-wait" in said
    assert waiting.returncode == 1
    assert "stopped waiting" in rest
    queued = cli.json("tasks", "ls", "--device", device_id)
    assert [t["status"] for t in queued] == ["queued"]


def test_tasks_ls_names_devices_and_filters_only_statuses_that_occur(
    cli: Cli, org: tuple[Api, dict[str, Any]], agent_factory: Any
) -> None:
    _agent, device_id, sandbox = agent_factory("shelf", org[0])
    name = cli.json("devices", "show", device_id)["name"]
    cli.json("tasks", "run", device_id, "file.stat", "--no-wait", "--param", f"path={sandbox}")
    rows = cli("tasks", "ls", check=True).stdout.splitlines()
    assert f"{name} ({device_id})" in rows[1]
    reserved = cli("tasks", "ls", "--status", "awaiting_approval")
    assert reserved.returncode == 2  # not offered: no task reaches it yet
    help_text = cli("tasks", "ls", "--help", relay=False, check=True).stdout
    assert "timed_out" in help_text
    assert "approved" not in help_text


def test_no_wait_then_cancel(cli: Cli, org: tuple[Api, dict[str, Any]], agent_factory: Any) -> None:
    _agent, device_id, sandbox = agent_factory("sleeper", org[0])  # offline: the task stays queued
    queued = cli.json("tasks", "run", device_id, "file.write", "--no-wait",
                      "--param", f"path={sandbox / 'x'}", "--param", "content=x")
    assert queued["status"] == "queued"
    text = cli("tasks", "cancel", queued["id"], check=True).stdout
    assert f"task {queued['id']} cancelled" in text
    again = cli("tasks", "cancel", queued["id"])
    assert again.returncode == 1
    assert "relay refused: 409" in again.stderr


# -- audit -----------------------------------------------------------------------------


def test_audit_tail_and_verify(cli: Cli, org: tuple[Api, dict[str, Any]], agent_factory: Any) -> None:
    device_id, sandbox = online_agent(agent_factory, org, "audited")
    task = cli.json("tasks", "run", device_id, "file.write", "--param", f"path={sandbox / 'a'}",
                    "--param", "content=a")
    wait_for(lambda: any(r["kind"] == "task.finished" or r["kind"] == "action.finished"
                         for r in cli.json("audit", "tail", "--task", task["id"], "--limit", "50")),
             timeout=30, what="the task's audit records")
    records = cli.json("audit", "tail", "--task", task["id"], "--limit", "50")
    assert {r["task_id"] for r in records} == {task["id"]}
    table = cli("audit", "tail", "--device", device_id, "--limit", "3", check=True).stdout.splitlines()
    assert table[0].split() == ["TS", "KIND", "CHAIN", "SEQ", "TASK", "SUMMARY"]
    assert len(table) == 4

    # --follow prints records as they arrive, one JSON object per line, until Ctrl-C.
    argv = coact_command("audit", "tail", "--follow", "--device", device_id, "--limit", "1",
                         "--relay", cli.url, "-o", "json")
    follower = subprocess.Popen(argv, env={**os.environ, **TEST_ENV, **cli.env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert first["device_id"] == device_id
        later = cli.json("tasks", "run", device_id, "file.stat", "--param", f"path={sandbox / 'a'}")
        seen: list[dict[str, Any]] = []
        while not any(r["task_id"] == later["id"] for r in seen):
            seen.append(json.loads(follower.stdout.readline()))
        assert len({(r["device_id"], r["seq"]) for r in seen}) == len(seen)
        follower.send_signal(signal.SIGINT)
        assert follower.wait(15) == 0
    finally:
        follower.kill()
        follower.communicate()

    verified = cli("audit", "verify", check=True)
    assert verified.stdout.startswith("OK: ")
    assert "chains" in verified.stdout
    report = cli.json("audit", "verify", "--device", device_id)
    assert report["ok"] is True
    assert report["chains"] == 1
    assert report["records"] >= 3
    keys = cli.json("audit", "keys")
    assert device_id in keys


TAMPER = textwrap.dedent("""
    import sys
    from coact.relay.audit_store import AuditStore
    store = AuditStore.open(sys.argv[1])
    store._client.command(
        "ALTER TABLE `default`.audit_records UPDATE data = '{\\"forged\\":true}' "
        "WHERE device_id = {device:String} AND seq = {seq:UInt64} SETTINGS mutations_sync = 2",
        parameters={"device": sys.argv[2], "seq": int(sys.argv[3])},
    )
    store.close()
""")


def test_audit_verify_names_a_tampered_record(tmp_path: Path) -> None:
    server = Relay(tmp_path / "tamper")
    server.start()
    agent: Agent | None = None
    try:
        admin, user = server.new_admin()
        agent, device_id = Agent.enroll(server, admin, tmp_path / "agent", tmp_path / "sandbox")
        agent.start()
        wait_online(admin, device_id)
        cli = Cli(server.url, tmp_path / "config")
        assert cli.login(user["email"]).returncode == 0
        cli("tasks", "run", device_id, "file.write", "--param", f"path={tmp_path / 'sandbox' / 'f'}",
            "--param", "content=f", check=True)
        wait_for(lambda: len(cli.json("audit", "tail", "--device", device_id, "--limit", "100")) >= 3,
                 timeout=30, what="the device's audit records")
        assert cli("audit", "verify", check=True).stdout.startswith("OK: ")
        keys_file = tmp_path / "keys.json"
        keys_file.write_text(cli("audit", "keys", "--output", "json", check=True).stdout)

        agent.stop()
        server.stop()
        audit_url = "chdb:///" + str(server.data_dir / "audit")
        subprocess.run([sys.executable, "-c", TAMPER, audit_url, device_id, "2"], check=True, timeout=60,
                       capture_output=True)

        # Straight from chDB while the relay is down: trusted keys from the file.
        direct = cli("audit", "verify", "--clickhouse", audit_url, "--keys", str(keys_file),
                     "--org", user["org_id"], relay=False)
        assert direct.returncode == 1, direct.stdout + direct.stderr
        assert f"chain {device_id}: record 2:" in direct.stdout
        no_keys = cli("audit", "verify", "--clickhouse", audit_url, "--org", user["org_id"])
        assert no_keys.returncode == 1
        assert "--keys FILE" in no_keys.stderr

        server.start()
        result = cli("audit", "verify")
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"chain {device_id}: record 2:" in result.stdout
        assert "audit verification failed" in result.stderr
        report = json.loads(cli("audit", "verify", "--output", "json").stdout)
        assert report["ok"] is False
        assert {"chain": device_id, "seq": 2} in [{k: f[k] for k in ("chain", "seq")} for f in report["findings"]]
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
