"""The relay's state tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

Times are stored as fixed-width RFC 3339 UTC text (``coact.shared.clock.to_rfc3339``):
portable across both databases and ordered lexicographically as they are in time.
JSON columns hold plain JSON values. Changes to this module need a migration in
``coact.relay.migrations``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

ID = String(40)
TIME = String(32)
CHAIN_ID = String(96)  # a device id, or relay:<relay id>:<org id>

orgs = Table(
    "orgs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", TIME, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id"), nullable=False, index=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", TIME, nullable=False),
    Column("password_changed_at", TIME, nullable=False),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("id", ID, primary_key=True),
    Column("family_id", ID, nullable=False, index=True),
    Column("user_id", ID, ForeignKey("users.id"), nullable=False, index=True),
    Column("org_id", ID, nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", TIME, nullable=False),
    Column("expires_at", TIME, nullable=False),
    Column("used_at", TIME),
    Column("revoked_at", TIME),
    # The client address that spent the token (migration 2): a reuse within the grace
    # window is forgiven only when it comes from the same address.
    Column("used_from", String(64)),
)

enrollment_codes = Table(
    "enrollment_codes",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id"), nullable=False, index=True),
    Column("code_hash", String(64), nullable=False, unique=True),
    Column("created_by", ID, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("expires_at", TIME, nullable=False),
    Column("used_at", TIME),
    Column("used_by_device", ID),
    Column("revoked_at", TIME),
)

devices = Table(
    "devices",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("platform", String(64), nullable=False),
    Column("public_key", String(64), nullable=False, unique=True),
    Column("tags", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # active | revoked
    Column("enrolled_at", TIME, nullable=False),
    Column("last_seen", TIME),
    Column("telemetry", JSON),
    Column("revoked_at", TIME),
)

# Nonces of accepted device token requests, kept until their timestamp can no longer
# pass the skew check, so a captured request cannot be replayed.
device_nonces = Table(
    "device_nonces",
    metadata,
    Column("device_id", ID, primary_key=True),
    Column("nonce", String(128), primary_key=True),
    Column("expires_at", TIME, nullable=False, index=True),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id"), nullable=False),
    Column("device_id", ID, ForeignKey("devices.id"), nullable=False),
    Column("action", String(64), nullable=False),
    Column("params", JSON, nullable=False),
    Column("status", String(24), nullable=False),
    Column("risk", JSON, nullable=False),
    Column("created_by", ID, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("updated_at", TIME, nullable=False),
    Column("timeout_s", Float, nullable=False),
    Column("expires_at", TIME, nullable=False),
    Column("dispatched_at", TIME),
    Column("started_at", TIME),
    Column("finished_at", TIME),
    # When a running task is settled as timed_out if no result came: started + timeout + grace.
    Column("deadline_at", TIME),
    Column("result", JSON),
    Column("attempts", Integer, nullable=False, default=0),
    Index("ix_tasks_org_status", "org_id", "status"),
    Index("ix_tasks_device_status", "device_id", "status"),
)

# Where each audit chain that reached ClickHouse ends: device chains and relay chains.
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("chain_id", CHAIN_ID, primary_key=True),
    Column("org_id", ID, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("updated_at", TIME, nullable=False),
)

# The relay's own audit events, chained when written (in the same transaction as the
# state change they record) and forwarded to ClickHouse afterwards.
relay_audit_outbox = Table(
    "relay_audit_outbox",
    metadata,
    Column("chain_id", CHAIN_ID, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("org_id", ID, nullable=False),
    Column("record", JSON, nullable=False),
)

# One chain per (relay process, org), so each org can verify its complete relay history
# without seeing another org's events.
relay_chains = Table(
    "relay_chains",
    metadata,
    Column("chain_id", CHAIN_ID, primary_key=True),
    Column("org_id", ID, nullable=False, index=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("public_key", String(64), nullable=False),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("applied_at", TIME, nullable=False),
)
