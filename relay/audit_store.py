"""The relay's audit store: device audit chains and their signed batches in ClickHouse.

One class, one code path, two deployments chosen by URL (see ``docs/audit.md``):

* ``chdb:///abs/path`` — the embedded engine chDB, in this process. chDB runs **one
  engine path per process at a time**: several clients on the same path share it,
  but opening a different path raises until every client of the first is closed.
  So a relay process opens one AuditStore; tests share one per module.
* ``http(s)://user:pass@host:8123/db`` — a ClickHouse server.

An optional database name (the URL path for a server, ``?database=`` for chDB;
``default`` otherwise) is created if missing, and every table name is qualified
with it.

Idempotence: a redelivered batch carries the same ``insert_deduplication_token``
(``org_id:device_id:first_seq:last_seq:head_hash``) and ClickHouse drops the repeated
block (``non_replicated_deduplication_window``; chDB honours it). Behind that, the
tables are ReplacingMergeTree keyed by ``(org_id, device_id, seq)`` and every read
uses ``FINAL``, so a repeat that falls outside the window is still read once.

The methods are synchronous and serialised by a lock; the relay calls them through
``asyncio.to_thread``. Every value reaches SQL through server-side parameter
binding; only the validated database identifier is formatted into statements.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from coact.relay.errors import ServiceUnavailable
from coact.shared.canonical import canonical_json, sha256_hex
from coact.shared.chain import GENESIS, ChainHead
from coact.shared.clock import from_rfc3339, to_rfc3339

# How many recent insert blocks each table remembers for deduplication.
DEDUP_WINDOW = 10_000
# An insert is on disk when it returns: the relay acks a batch after its insert, and
# the agent then deletes its copy (decision 43). MergeTree does not fsync by default.
_DURABILITY = "fsync_after_insert = 1, fsync_part_directory = 1"
MAX_PAGE = 10_000
HEADS_PER_QUERY = 1_000
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# The columns an insert writes, with their types as the DDL below declares them:
# inserts name the types so that clickhouse-connect does not ask the table for them
# (one DESCRIBE per insert, ~3 ms on chDB). A test compares them with the tables.
_RECORD_TYPES = {
    "org_id": "LowCardinality(String)",
    "device_id": "String",
    "seq": "UInt64",
    "ts": "String",
    "kind": "LowCardinality(String)",
    "task_id": "Nullable(String)",
    "data": "String",
    "prev_hash": "String",
    "hash": "String",
}
_BATCH_TYPES = {
    "org_id": "LowCardinality(String)",
    "device_id": "String",
    "last_seq": "UInt64",
    "head_hash": "String",
    "signature": "String",
    "public_key": "String",
}
_RECORD_COLUMNS = tuple(_RECORD_TYPES)
_BATCH_COLUMNS = tuple(_BATCH_TYPES)

_RECORDS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.audit_records (
    org_id LowCardinality(String),
    device_id String,
    seq UInt64,
    ts String,
    kind LowCardinality(String),
    task_id Nullable(String),
    data String COMMENT 'canonical JSON (RFC 8785), exactly as hashed',
    prev_hash String,
    hash String,
    received_at DateTime64(6, 'UTC') DEFAULT now64(6)
) ENGINE = ReplacingMergeTree
ORDER BY (org_id, device_id, seq)
SETTINGS non_replicated_deduplication_window = {window}, {durability}
"""

_BATCHES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.audit_batches (
    org_id LowCardinality(String),
    device_id String,
    last_seq UInt64,
    head_hash String,
    signature String,
    public_key String,
    received_at DateTime64(6, 'UTC') DEFAULT now64(6)
) ENGINE = ReplacingMergeTree
ORDER BY (org_id, device_id, last_seq)
SETTINGS non_replicated_deduplication_window = {window}, {durability}
"""


def parse_url(url: str) -> tuple[str, str]:
    """Split an audit store URL into ``(dsn for clickhouse-connect, database)``.

    The database is taken out of the DSN because clickhouse-connect refuses to
    connect to a database that does not exist yet; :meth:`AuditStore.ensure_schema`
    creates it.
    """
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"chDB audit store URL must be chdb:///absolute/path, got {url!r}")
        query = parse_qsl(parts.query)
        database = next((value for key, value in query if key == "database"), "") or "default"
        rest = urlencode([(key, value) for key, value in query if key != "database"])
        dsn = f"chdb://{parts.path}" + (f"?{rest}" if rest else "")
    elif parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"ClickHouse URL has no host: {url!r}")
        database = unquote(parts.path.strip("/")) or "default"
        dsn = urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))
    else:
        raise ValueError(
            f"audit store URL must start with chdb:/// or http(s)://, got {parts.scheme or url!r}"
        )
    if not _IDENTIFIER.match(database):
        raise ValueError(f"ClickHouse database name {database!r} is not a plain identifier")
    return dsn, database


def _parse_data(text: str) -> Any:
    # A row altered in storage may no longer hold JSON; hand the raw text on so
    # that verification names the record instead of the reader crashing.
    try:
        return json.loads(text)
    except ValueError:
        return text


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class SignedBatch:
    """Consecutive verified records of one chain and the signature over their head."""

    org_id: str
    records: Sequence[Mapping[str, Any]]
    signature: str
    public_key: str
    # The canonical JSON of each record's data, when verification already made it.
    data_json: Sequence[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError("an audit batch has at least one record")
        if self.data_json is not None and len(self.data_json) != len(self.records):
            raise ValueError("an audit batch has one data text per record")
        device_id, first_seq = self.records[0]["device_id"], int(self.records[0]["seq"])
        for offset, record in enumerate(self.records):
            if record["device_id"] != device_id or record["seq"] != first_seq + offset:
                raise ValueError("an audit batch holds consecutive records of one device")

    @property
    def token(self) -> str:
        # The org is part of the token: the dedup window is per table, not per org,
        # and two orgs' devices must never suppress each other's blocks.
        first, last = self.records[0], self.records[-1]
        return f"{self.org_id}:{first['device_id']}:{first['seq']}:{last['seq']}:{last['hash']}"

    def columns(self) -> list[list[Any]]:
        """The records as ClickHouse columns, in the order of ``_RECORD_COLUMNS``:
        handing clickhouse-connect columns spares it pivoting rows, which cost it
        ~3.7 µs a record."""
        records = self.records
        return [
            [self.org_id] * len(records),
            [str(record["device_id"]) for record in records],
            [int(record["seq"]) for record in records],
            [record["ts"] for record in records],
            [record["kind"] for record in records],
            [record["task_id"] for record in records],
            list(self.data_json or [canonical_json(record["data"]) for record in records]),
            [record["prev_hash"] for record in records],
            [record["hash"] for record in records],
        ]


class AuditStore:
    """Audit records and batches of every device of every org (see module docs)."""

    def __init__(self, client: Client, database: str) -> None:
        if not _IDENTIFIER.match(database):
            raise ValueError(f"ClickHouse database name {database!r} is not a plain identifier")
        self._client = client
        self._db = f"`{database}`"
        self.database = database
        self._lock = threading.Lock()

    @classmethod
    def open(cls, url: str) -> AuditStore:
        """Connect to ``chdb:///abs/path[?database=db]`` or ``http(s)://user:pass@host:port/db``."""
        dsn, database = parse_url(url)
        try:
            client = clickhouse_connect.get_client(dsn=dsn)
        except ClickHouseError as exc:
            # Don't echo the URL: it may carry a password.
            raise ServiceUnavailable(f"cannot open the audit store: {exc}") from exc
        return cls(client, database)

    @contextmanager
    def _guard(self) -> Iterator[Client]:
        with self._lock:
            try:
                yield self._client
            except OperationalError as exc:
                raise ServiceUnavailable(f"audit store unavailable: {exc}") from exc

    def ensure_schema(self) -> None:
        """Create the database and tables if missing (idempotent)."""
        with self._guard() as client:
            exists = client.query(
                "SELECT count() FROM system.databases WHERE name = {name:String}",
                parameters={"name": self.database},
            ).result_rows[0][0]
            if not exists:
                client.command(f"CREATE DATABASE IF NOT EXISTS {self._db}")
            for ddl in (_RECORDS_DDL, _BATCHES_DDL):
                client.command(ddl.format(db=self._db, window=DEDUP_WINDOW, durability=_DURABILITY))
            # Tables made before decision 43 get the settings; only those, so that a
            # fresh install needs no ALTER privilege on a ClickHouse server.
            engines = client.query(
                "SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
                parameters={"db": self.database},
            ).result_rows
            for table, engine in engines:
                if table in ("audit_records", "audit_batches") and "fsync_after_insert = 1" not in engine:
                    client.command(f"ALTER TABLE {self._db}.{table} MODIFY SETTING {_DURABILITY}")

    def insert_batch(
        self,
        org_id: str,
        records: Sequence[Mapping[str, Any]],
        signature: str,
        public_key: str,
    ) -> None:
        """Store one verified batch; inserting the same batch again adds no rows."""
        self.insert_batches([SignedBatch(org_id, records, signature, public_key)])

    def insert_batches(self, batches: Sequence[SignedBatch]) -> None:
        """Store verified batches (of any devices) in one insert per table.

        One large insert instead of one per batch: ClickHouse makes a part per insert,
        so many small ones cost far more (and more merging) than a few big ones.
        Inserting the same list again adds no rows. The caller has verified
        continuity, hashes and signatures; this checks only the shape it relies on.
        """
        if not batches:
            return
        columns: list[list[Any]] = [[] for _ in _RECORD_COLUMNS]
        heads: list[list[Any]] = []
        for batch in batches:
            for column, values in zip(columns, batch.columns(), strict=True):
                column.extend(values)
            last = batch.records[-1]
            heads.append([batch.org_id, str(last["device_id"]), int(last["seq"]), last["hash"],
                          batch.signature, batch.public_key])
        tokens = [batch.token for batch in batches]
        token = tokens[0] if len(tokens) == 1 else sha256_hex("|".join(tokens).encode())
        settings = {"insert_deduplicate": 1, "insert_deduplication_token": token}
        with self._guard() as client:
            # Records first: a batch row always points at stored records. A crash
            # between the two is healed by the redelivery, each insert being idempotent.
            client.insert(f"{self._db}.audit_records", columns, column_names=_RECORD_COLUMNS,
                          column_type_names=list(_RECORD_TYPES.values()), column_oriented=True,
                          settings=settings)
            client.insert(f"{self._db}.audit_batches", heads, column_names=_BATCH_COLUMNS,
                          column_type_names=list(_BATCH_TYPES.values()), settings=settings)

    def stored_hashes(self, org_id: str, device_id: str, seqs: Sequence[int]) -> dict[int, str]:
        """``{seq: hash}`` of those ``seqs`` that are stored (for fork detection)."""
        if not seqs:
            return {}
        with self._guard() as client:
            result = client.query(
                f"SELECT seq, hash FROM {self._db}.audit_records FINAL "
                "WHERE org_id = {org:String} AND device_id = {device:String} "
                "AND seq IN {seqs:Array(UInt64)}",
                parameters={"org": org_id, "device": device_id, "seqs": [int(s) for s in seqs]},
            )
        return {int(seq): str(hash_) for seq, hash_ in result.result_rows}

    def heads(self, chains: Mapping[str, Collection[str]]) -> dict[tuple[str, str], ChainHead]:
        """Each chain's stored head (GENESIS if it has no records), by ``(org_id,
        device_id)``, for device ids grouped by org: one query per org and
        ``HEADS_PER_QUERY`` chains, where one query per chain costs ~2 ms of chDB CPU
        (a fleet reconnecting after a relay restart asks for thousands at once).

        No ``FINAL``: a repeated row has the same seq and, being verified, the same
        hash, so the highest seq and its hash are the same with or without it.
        """
        found: dict[tuple[str, str], ChainHead] = {}
        with self._guard() as client:
            for org_id, device_ids in chains.items():
                wanted = sorted(set(device_ids))
                for start in range(0, len(wanted), HEADS_PER_QUERY):
                    part = wanted[start:start + HEADS_PER_QUERY]
                    rows = client.query(
                        f"SELECT device_id, max(seq), argMax(hash, seq) FROM {self._db}.audit_records "
                        "WHERE org_id = {org:String} AND device_id IN {devices:Array(String)} GROUP BY device_id",
                        parameters={"org": org_id, "devices": part},
                    ).result_rows
                    found.update({(org_id, device): GENESIS for device in part})
                    found.update({(org_id, str(device)): ChainHead(int(seq), str(hash_)) for device, seq, hash_ in rows})
        return found

    def records(
        self,
        org_id: str,
        *,
        device_id: str | None = None,
        task_id: str | None = None,
        since: str | None = None,
        after: tuple[str, int] | None = None,
        limit: int = 500,
        actor: str | None = None,
    ) -> list[dict[str, Any]]:
        """One org's records ordered by ``(device_id, seq)``.

        ``since`` is an RFC 3339 time (records with ``ts >= since``); ``after`` is
        the ``(device_id, seq)`` of the last record of the previous page. ``actor``
        keeps only relay-chain records whose data names that user as ``user_id`` or
        ``by`` (what the user did, and what was done to their account).
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
        where = ["org_id = {org:String}"]
        params: dict[str, Any] = {"org": org_id, "limit": limit}
        if device_id is not None:
            where.append("device_id = {device:String}")
            params["device"] = device_id
        if task_id is not None:
            where.append("task_id = {task:String}")
            params["task"] = task_id
        if since is not None:
            # Agents write ts in exactly this form, so text order is time order.
            where.append("ts >= {since:String}")
            params["since"] = to_rfc3339(from_rfc3339(since))
        if actor is not None:
            where.append("startsWith(device_id, 'relay:')")
            where.append(
                "(JSONExtractString(data, 'user_id') = {actor:String} "
                "OR JSONExtractString(data, 'by') = {actor:String})"
            )
            params["actor"] = actor
        if after is not None:
            where.append("(device_id, seq) > ({after_device:String}, {after_seq:UInt64})")
            params["after_device"], params["after_seq"] = after[0], int(after[1])
        sql = (
            f"SELECT {', '.join(_RECORD_COLUMNS)} FROM {self._db}.audit_records FINAL "
            f"WHERE {' AND '.join(where)} ORDER BY device_id, seq LIMIT {{limit:UInt32}}"
        )
        with self._guard() as client:
            rows = client.query(sql, parameters=params).result_rows
        out = []
        for row in rows:
            record = dict(zip(_RECORD_COLUMNS, row, strict=True))
            record["seq"] = int(record["seq"])
            record["data"] = _parse_data(record["data"])
            out.append(record)
        return out

    def batches(self, org_id: str, device_id: str | None = None, *, after: tuple[str, int] | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        """One org's signed batches ordered by ``(device_id, last_seq)``: those after
        ``after`` (a ``(device_id, last_seq)`` cursor), at most ``limit`` (None: all,
        for the operator's own `coact audit verify --clickhouse-url`)."""
        where = "org_id = {org:String}"
        params: dict[str, Any] = {"org": org_id}
        if device_id is not None:
            where += " AND device_id = {device:String}"
            params["device"] = device_id
        if after is not None:
            where += " AND (device_id, last_seq) > ({after_device:String}, {after_seq:UInt64})"
            params["after_device"], params["after_seq"] = after
        tail = ""
        if limit is not None:
            tail = " LIMIT {limit:UInt64}"
            params["limit"] = limit
        columns = (*_BATCH_COLUMNS, "received_at")
        with self._guard() as client:
            rows = client.query(
                f"SELECT {', '.join(columns)} FROM {self._db}.audit_batches FINAL "
                f"WHERE {where} ORDER BY device_id, last_seq{tail}",
                parameters=params,
            ).result_rows
        out = []
        for row in rows:
            batch = dict(zip(columns, row, strict=True))
            batch["last_seq"] = int(batch["last_seq"])
            batch["received_at"] = to_rfc3339(_utc(batch["received_at"]))
            out.append(batch)
        return out

    def count(self, org_id: str | None = None) -> int:
        """Stored records after deduplication, for one org or all."""
        sql = f"SELECT count() FROM {self._db}.audit_records FINAL"
        params: dict[str, Any] = {}
        if org_id is not None:
            sql += " WHERE org_id = {org:String}"
            params["org"] = org_id
        with self._guard() as client:
            return int(client.query(sql, parameters=params).result_rows[0][0])

    def close(self) -> None:
        with self._lock:
            self._client.close()
