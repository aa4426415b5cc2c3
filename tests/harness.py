"""Real processes for integration tests: a relay and agents on loopback, and a small
HTTP client. Nothing here fakes Coact: tests drive the same console script users run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEST_ENV = {
    # Tests make an org per test through signup, as a multi-tenant relay allows; the
    # default (off) has its own test (tests/cli/test_create_admin.py).
    "COACT_ALLOW_SIGNUP": "true",
    # Cheap argon2 for tests only; production defaults are OWASP's.
    "COACT_PASSWORD_TIME_COST": "1",
    "COACT_PASSWORD_MEMORY_KIB": "8192",
    "COACT_PASSWORD_PARALLELISM": "1",
    "COACT_LOG_LEVEL": "INFO",
    # Test modules sign up many orgs from 127.0.0.1; tests of the limits set their own.
    "COACT_SIGNUP_MAX_PER_ADDRESS": "1000000",
    "COACT_SIGNUP_MAX_PER_RELAY": "1000000",
    # Benchmarks create tasks from one user faster than the default quotas allow.
    "COACT_TASK_CREATE_RATE_PER_USER": "1000000",
    "COACT_TASK_CREATE_BURST_PER_USER": "1000000",
    "COACT_TASK_CREATE_RATE_PER_ORG": "1000000",
    "COACT_TASK_CREATE_BURST_PER_ORG": "1000000",
    # Simulated fleets connect thousands of agents from 127.0.0.1.
    "COACT_MAX_CONNECTIONS_PER_ADDRESS": "1000000",
}
PASSWORD = "correct horse battery staple"
PG_URL = os.environ.get("COACT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def coact_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from coact.cli.main import main; main()", *args]


def run_cli(*args: str, env: Mapping[str, str] | None = None, check: bool = True, timeout: float = 60,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        coact_command(*args), capture_output=True, text=True, timeout=timeout, input=input_text,
        env={**os.environ, **TEST_ENV, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"coact {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def wait_for(predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Response:
    status: int
    body: Any
    headers: Mapping[str, str]


class Api:
    """A tiny synchronous JSON client for the relay's HTTP API."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.token = token

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                raw: bytes | None = None, headers: Mapping[str, str] | None = None) -> Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        all_headers = {"Accept": "application/json", **(headers or {})}
        if data is not None and "Content-Type" not in all_headers:
            all_headers["Content-Type"] = "application/json"
        bearer = token if token is not None else self.token
        if bearer:
            all_headers["Authorization"] = f"Bearer {bearer}"
        request = urllib.request.Request(self.base_url + path, data=data, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                payload = answer.read()
                status, answer_headers = answer.status, dict(answer.headers)
        except urllib.error.HTTPError as exc:
            payload, status, answer_headers = exc.read(), exc.code, dict(exc.headers)
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return Response(status, parsed, answer_headers)

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def ok(self, method: str, path: str, body: Any = None, status: int | None = None) -> Any:
        answer = self.request(method, path, body)
        expected = status or (201 if method == "POST" and answer.status == 201 else 200)
        assert answer.status == expected, f"{method} {path} -> {answer.status}: {answer.body}"
        return answer.body


@dataclass
class Process:
    args: list[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            coact_command(*self.args), stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **TEST_ENV, **self.env},
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Relay(Process):
    def __init__(self, data_dir: Path, *, database_url: str | None = None, audit_url: str | None = None,
                 env: Mapping[str, str] | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url or f"sqlite:///{data_dir.resolve() / 'relay.db'}"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["relay", "serve", "--data-dir", str(data_dir), "--port", str(self.port)]
        if database_url:
            args += ["--database-url", database_url]
        if audit_url:
            args += ["--audit-url", audit_url]
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(args, data_dir.parent / f"{data_dir.name}-relay.log", dict(env or {}))

    def start(self) -> None:
        super().start()
        wait_for(self._ready, timeout=40, what=f"relay on {self.url}")

    def _ready(self) -> bool:
        if not self.running:
            raise AssertionError(f"relay exited:\n{self.log()[-4000:]}")
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def api(self, token: str | None = None) -> Api:
        return Api(self.url, token)

    def new_admin(self) -> tuple[Api, dict[str, Any]]:
        """Sign up a fresh org; return an API client logged in as its admin, and the user."""
        email = f"admin-{uuid.uuid4().hex[:12]}@example.com"
        api = self.api()
        api.ok("POST", "/api/v1/auth/signup", {"email": email, "password": PASSWORD, "org_name": email}, status=202)
        tokens = api.ok("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD})
        api.token = tokens["access_token"]
        user = api.ok("GET", "/api/v1/me")["user"]
        return api, {**user, "email": email, "refresh_token": tokens["refresh_token"]}


class Agent(Process):
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        super().__init__(["agent", "run", "--data-dir", str(data_dir)], data_dir.parent / f"{data_dir.name}-agent.log")

    @classmethod
    def enroll(cls, relay: Relay, admin: Api, data_dir: Path, sandbox: Path, tags: list[str] | None = None) -> tuple[Agent, str]:
        code = admin.ok("POST", "/api/v1/devices/enrollment-codes", {"tags": tags or []})["code"]
        answer = run_cli("agent", "enroll", "--relay", relay.url, "--code", code, "--data-dir", str(data_dir), "--output", "json")
        device_id = json.loads(answer.stdout)["device_id"]
        run_cli("policy", "init", "--sandbox", str(sandbox), "--data-dir", str(data_dir))
        return cls(data_dir), device_id


def wait_online(admin: Api, device_id: str, online: bool = True, timeout: float = 20) -> None:
    wait_for(lambda: admin.get(f"/api/v1/devices/{device_id}").body.get("online") is online,
             timeout=timeout, what=f"device {device_id} online={online}")


def wait_task(admin: Api, task_id: str, timeout: float = 20) -> dict[str, Any]:
    final = {"succeeded", "failed", "timed_out", "cancelled", "expired", "rejected"}

    def done() -> dict[str, Any] | None:
        task = admin.get(f"/api/v1/tasks/{task_id}").body
        return task if task.get("status") in final else None

    result: dict[str, Any] = wait_for(done, timeout=timeout, what=f"task {task_id} to finish")
    return result
