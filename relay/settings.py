"""The relay's configuration: one frozen registry of settings with defaults and help.

Settings are plain validated data. The CLI reads ``COACT_*`` environment variables
and flags at the edge (:func:`settings_from_env`) and hands a :class:`Settings` to
``create_app``; nothing deeper reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _setting(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret})


@dataclass(frozen=True)
class Settings:
    data_dir: Path = _setting(Path("./coact-data"), "Directory for the relay's keys, SQLite database and embedded audit engine.")
    host: str = _setting("127.0.0.1", "Address to listen on.")
    port: int = _setting(8600, "TCP port to listen on.")
    public_url: str = _setting("", "URL agents and users reach the relay at; also the JWT issuer. Default: http://HOST:PORT.")
    database_url: str = _setting("", "SQLAlchemy URL of the state database. Default: SQLite in DATA_DIR/relay.db. PostgreSQL: postgresql://user@host/db (psycopg).", secret=True)
    audit_url: str = _setting("", "ClickHouse for audit records: chdb:///path (embedded) or http://user:pass@host:8123/db. Default: chdb:///DATA_DIR/audit.", secret=True)
    relay_id: str = _setting("relay-1", "Name of this relay process; its own audit events form one chain per org, 'relay:RELAY_ID:ORG_ID'.")
    allow_signup: bool = _setting(False, "Whether POST /auth/signup may create new organisations: on for a multi-tenant relay, off (the default) for a self-hosted one, whose first admin `coact relay create-admin` makes.")
    access_token_ttl_s: int = _setting(300, "Lifetime of user access tokens, in seconds.")
    device_token_ttl_s: int = _setting(600, "Lifetime of device access tokens, in seconds.")
    refresh_token_ttl_s: int = _setting(30 * 86400, "Lifetime of a refresh token family, in seconds.")
    refresh_reuse_grace_s: float = _setting(10.0, "A spent refresh token presented again within this many seconds, from the same address, and with its successor still unused, is refused (401) without revoking its session; any other reuse revokes the session. 0 turns the grace off.")
    login_max_failures: int = _setting(5, "Failed logins per account (email, known or not) within login_window_s before further attempts answer 429.")
    login_max_per_address: int = _setting(20, "Failed logins per client address within login_window_s before further attempts answer 429.")
    login_window_s: int = _setting(900, "The sliding window of the login failure limits, in seconds.")
    signup_max_per_address: int = _setting(10, "Signups (accepted or not) per client address within signup_window_s before further ones answer 429.")
    signup_max_per_relay: int = _setting(200, "Signups (accepted or not) to this relay process, from all addresses, within signup_window_s before further ones answer 429.")
    signup_window_s: int = _setting(3600, "The sliding window of the signup limits and of user_create_refusals_per_org, in seconds.")
    user_create_refusals_per_org: int = _setting(10, "POST /admin/users answers refused because the email already has an account (in any org) per org within signup_window_s before further creations answer 429.")
    password_workers: int = _setting(2, "Password hashes (argon2id, password_memory_kib each) computed at once, in a thread pool of their own so that they never delay database reads.")
    password_queue: int = _setting(16, "Password hashes that may wait for a free worker; beyond that, signups, logins and password changes answer 503 with Retry-After at once.")
    enrollment_code_ttl_s: int = _setting(900, "Default lifetime of an enrollment code, in seconds.")
    enrollment_code_max_ttl_s: int = _setting(7 * 86400, "Longest lifetime an admin may give an enrollment code.")
    token_request_skew_s: int = _setting(120, "How far a device's signed token request timestamp may be from the relay clock.")
    password_time_cost: int = _setting(3, "argon2id iterations (OWASP: 3 with 64 MiB, or 2 with 19 MiB).")
    password_memory_kib: int = _setting(65536, "argon2id memory in KiB.")
    password_parallelism: int = _setting(4, "argon2id lanes.")
    max_body_bytes: int = _setting(1024 * 1024, "Largest accepted HTTP request body.")
    page_max_bytes: int = _setting(8 * 1024 * 1024, "A page of GET /tasks stops once its tasks' params and results pass this many bytes of JSON (it always holds at least one task); next_cursor continues after it.")
    max_connections: int = _setting(60000, "Open TCP connections (HTTP and WebSocket) the relay keeps at once; more are closed as they are accepted. Keep it below the process's file-descriptor limit (the systemd unit sets LimitNOFILE=65536).")
    max_connections_per_address: int = _setting(4096, "Open TCP connections from one client address; more are closed as they are accepted. Devices behind one NAT address share it: raise it for a larger fleet behind one address.")
    http_idle_timeout_s: float = _setting(15.0, "Seconds a connection may take to send a complete request head, from its opening or from its previous response; then it is closed (bounds idle and header-dripping sockets).")
    http_body_timeout_s: float = _setting(30.0, "Seconds a request body may take to arrive in full; slower ones answer 408 and the connection closes.")
    device_connect_limit: int = _setting(256, "Device connects served at once (a token request, then the agent socket until its welcome). More answer 503 with Retry-After, so a fleet reconnecting all at once is served in turn instead of every connect timing out together.")
    presence_timeout_s: float = _setting(60.0, "A device with no frame for this long is closed and shown offline.")
    task_create_rate_per_user: float = _setting(1000.0, "Tasks one user may create per second, sustained; beyond the burst, POST /tasks answers 429 with Retry-After.")
    task_create_burst_per_user: int = _setting(10_000, "Tasks one user may create at once before task_create_rate_per_user applies.")
    task_create_rate_per_org: float = _setting(5000.0, "Tasks one org's users together may create per second, sustained.")
    task_create_burst_per_org: int = _setting(50_000, "Tasks one org may create at once before task_create_rate_per_org applies.")
    task_default_timeout_s: int = _setting(60, "Execution timeout of a task that names none.")
    task_default_ttl_s: int = _setting(86400, "How long a queued task waits for an offline device before it expires, if it names no expires_at.")
    sweep_interval_s: float = _setting(1.0, "How often expired and timed-out tasks are settled.")
    audit_flush_interval_s: float = _setting(0.5, "How often the relay's own audit events are forwarded to ClickHouse.")
    audit_insert_interval_s: float = _setting(0.2, "At most one ClickHouse insert of fewer records than a full batch (1,000) starts per this many seconds; verified records arriving sooner wait for it, and their acks with them. The first batch after a quiet spell goes in at once. Every insert makes a part, and a small one costs the embedded engine about 20 ms of CPU.")
    log_level: str = _setting("INFO", "Logging level.")
    event_stream_buffer_bytes: int = _setting(4 * 1024 * 1024, "Live events one user event stream (GET /api/v1/ws) may hold unsent, in bytes of JSON (about 150 each): a client reading as fast as it can gets every event of a fan-out to thousands of devices; one that falls further behind loses the oldest and gets a lagged marker.")
    event_streams_per_user: int = _setting(8, "Event streams one user may have open at once; one more answers 429. With event_stream_buffer_bytes it bounds what a user's streams can hold.")
    allowed_origins: tuple[str, ...] = _setting((), "Browser origins (scheme://host[:port], comma-separated) allowed to open the user event stream GET /api/v1/ws besides the relay's own public URL. Requests without an Origin header (non-browser clients) are allowed.")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not a TCP port")
        for name in ("access_token_ttl_s", "device_token_ttl_s", "refresh_token_ttl_s", "enrollment_code_ttl_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("login_max_failures", "login_max_per_address", "login_window_s", "device_connect_limit",
                     "signup_max_per_address", "signup_max_per_relay", "signup_window_s", "password_workers",
                     "user_create_refusals_per_org", "max_connections", "max_connections_per_address",
                     "page_max_bytes", "task_create_burst_per_user", "task_create_burst_per_org",
                     "event_streams_per_user"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.http_idle_timeout_s <= 0 or self.http_body_timeout_s <= 0:
            raise ValueError("http_idle_timeout_s and http_body_timeout_s must be positive")
        if self.task_create_rate_per_user <= 0 or self.task_create_rate_per_org <= 0:
            raise ValueError("task_create_rate_per_user and task_create_rate_per_org must be positive")
        if self.password_queue < 0:
            raise ValueError("password_queue must not be negative")
        if not 0 <= self.refresh_reuse_grace_s <= 60:
            raise ValueError("refresh_reuse_grace_s must be between 0 and 60 seconds")
        if self.access_token_ttl_s > 3600 or self.device_token_ttl_s > 3600:
            raise ValueError("access tokens are short-lived: at most 3600 s")
        if self.event_stream_buffer_bytes < 4096:
            raise ValueError("event_stream_buffer_bytes must be at least 4096")
        for origin in self.allowed_origins:
            if origin != origin.rstrip("/") or "://" not in origin or origin.count("/") != 2:
                raise ValueError(f"allowed_origins: {origin!r} is not an origin like https://app.example.com")

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'relay.db'}"

    @property
    def effective_audit_url(self) -> str:
        return self.audit_url or f"chdb:///{self.data_dir.resolve() / 'audit'}"

    def redacted(self) -> dict[str, Any]:
        """Every setting, with secrets (and credentials inside URLs) replaced: for /debug/config."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.metadata.get("secret") and value:
                value = "***"
            out[item.name] = str(value) if isinstance(value, Path) else value
        return out


def setting_help() -> dict[str, str]:
    return {item.name: item.metadata["help"] for item in dataclasses.fields(Settings)}


def settings_from_env(overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``COACT_<NAME>`` variables, then explicit ``overrides`` (CLI flags)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for item in dataclasses.fields(Settings):
        raw = env.get(f"COACT_{item.name.upper()}")
        if raw is not None:
            values[item.name] = _coerce(item.name, item.type, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def _coerce(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    try:
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "tuple[str, ...]":
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"COACT_{name.upper()}={raw!r} is not a valid {kind}") from exc
    return raw
