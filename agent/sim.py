"""The fleet simulator: many real agents in one (or a few) processes, for load tests.

``coact sim --relay URL --token ADMIN_TOKEN --agents N`` enrolls N devices (or reuses
identities saved by an earlier run) and runs one :class:`SimAgent` per device. A
SimAgent *is* the resident agent (:class:`coact.agent.runtime.Agent`): the same
token request, WebSocket handshake (relay signature checked against the pinned key,
key proof), heartbeat loop, task runner (journal, local policy, real executors) and
audit loop (hash chain from :func:`coact.shared.chain.make_record`, one signature per
batch) — only four things differ, so that twenty thousand of them fit in a process:

* the outbox and task journal are an :class:`~coact.agent.store.AgentStore` in
  memory (``":memory:"``, called in place rather than through a worker thread),
  not a SQLite file per device; it is lost when the
  simulator exits, so on the way out the simulator drains it and saves each chain
  head, and the next run continues the chains (:meth:`AgentStore.restore_head`);
* identity, key and policy come from memory, not a data directory; the policy is
  the one ``coact policy init --sandbox`` writes, for a per-device sandbox directory
  under ``--sandbox-dir``, plus a rule allowing ``system.info``;
* no ``state.json`` is written (``coact agent status`` has nothing to read);
* the machine's telemetry is read at most once a second per process and shared by
  every simulated device's heartbeat (they all run on the same machine).

So a task sent to a simulated device runs for real: ``file.*`` inside its sandbox
and ``system.info`` succeed, anything else is denied by the local policy (and
reported as denied, as a real agent would). See ``docs/sim.md``.

With ``--processes K`` the fleet is split over K worker processes (to use more than
one core); the parent adds up their progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import queue
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coact.agent import relay_client
from coact.agent.config import DataDir, Identity
from coact.agent.errors import AgentError, RevokedError
from coact.agent.executors.system import telemetry
from coact.agent.frames import TaskSpec
from coact.agent.runtime import Agent, AgentOptions
from coact.agent.store import AgentStore
from coact.agent.tasks import TaskRunner
from coact.policy.decision import Decision
from coact.policy.document import Policy, parse_policy, render_sandbox_policy
from coact.shared import keys
from coact.shared.canonical import use_orjson
from coact.shared.chain import GENESIS, ChainHead
from coact.shared.clock import Clock, SystemClock, to_rfc3339, utc_now
from coact.shared.gcpolicy import settle_long_lived_objects

log = logging.getLogger("coact.agent.sim")

IDENTITIES_FILE = "identities.jsonl"
HEADS_FILE = "heads.json"
DRAIN_CHECK_S = 0.02  # how often --stop-when-drained looks at the outboxes
MAX_CAUSES = 5  # reconnect causes reported, the most frequent first
SIM_POLICY_RULE = """
[[rules]]
name = "sim-system-info"
actions = ["system.info"]
effect = "allow"
reason = "the fleet simulator answers system.info with the real executor"
"""


# -- identities ---------------------------------------------------------------------


@dataclass(frozen=True)
class SimIdentity:
    """What ``coact agent enroll`` keeps in a data directory, as one JSON line."""

    device_id: str
    org_id: str
    relay_url: str
    relay_public_key: str
    name: str
    key_pem: str
    enrolled_at: str

    def identity(self) -> Identity:
        return Identity(
            device_id=self.device_id, org_id=self.org_id, relay_url=self.relay_url,
            relay_public_key=self.relay_public_key,
            relay_fingerprint=keys.fingerprint(self.relay_public_key),
            name=self.name, enrolled_at=self.enrolled_at,
        )

    def key(self) -> Ed25519PrivateKey:
        return keys.private_key_from_pem(self.key_pem.encode())


def load_identities(directory: Path, relay_url: str) -> list[SimIdentity]:
    """Identities saved for ``relay_url`` in ``directory`` (none if there is no file)."""
    path = directory / IDENTITIES_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            identity = SimIdentity(**json.loads(line))
            if identity.relay_url == relay_url.rstrip("/"):
                out.append(identity)
    return out


def _append_identities(directory: Path, identities: Iterable[SimIdentity]) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / IDENTITIES_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as out:
        for identity in identities:
            out.write(json.dumps(asdict(identity)) + "\n")


def load_heads(directory: Path | None) -> dict[str, ChainHead]:
    if directory is None or not (directory / HEADS_FILE).exists():
        return {}
    raw = json.loads((directory / HEADS_FILE).read_text())
    return {device: ChainHead(int(seq), str(hash_)) for device, (seq, hash_) in raw.items()}


def save_heads(directory: Path, heads: Mapping[str, ChainHead]) -> None:
    merged = load_heads(directory)
    merged.update(heads)
    tmp = directory / f".{HEADS_FILE}.tmp"
    tmp.write_text(json.dumps({device: [h.seq, h.hash] for device, h in merged.items()}))
    os.replace(tmp, directory / HEADS_FILE)


class AdminClient:
    """The two admin calls enrollment needs, with a fresh login when the token expires."""

    def __init__(self, relay_url: str, token: str | None, email: str | None = None,
                 password: str | None = None) -> None:
        self.relay_url = relay_url.rstrip("/")
        self.token = token
        self.email = email
        self.password = password

    def _post(self, path: str, body: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.relay_url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - the relay URL given
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                problem = json.loads(exc.read() or b"{}")
            except ValueError:
                problem = {}
            return exc.code, problem if isinstance(problem, dict) else {}

    def login(self) -> None:
        if not (self.email and self.password):
            raise AgentError("the admin token was refused and no --email/--password were given to renew it")
        status, body = self._post("/api/v1/auth/login", {"email": self.email, "password": self.password}, None)
        if status != 200:
            raise AgentError(f"admin login refused ({status}): {body.get('detail', body)}")
        self.token = str(body["access_token"])

    def enrollment_code(self) -> str:
        if self.token is None:
            self.login()
        for _attempt in range(2):
            status, body = self._post("/api/v1/devices/enrollment-codes", {"tags": ["sim"]}, self.token)
            if status == 201:
                return str(body["code"])
            if status == 401 and self.email:
                self.login()
                continue
            raise AgentError(f"creating an enrollment code failed ({status}): {body.get('detail', body)}")
        raise AgentError("creating an enrollment code failed: the admin token keeps being refused")


def enroll_one(admin: AdminClient, name: str) -> SimIdentity:
    """Enroll one device exactly as ``coact agent enroll`` does (same relay_client call)."""
    key = keys.generate_private_key()
    answer = relay_client.enroll(admin.relay_url, admin.enrollment_code(), keys.public_key_b64(key), name, "sim")
    if keys.fingerprint(answer["relay_public_key"]) != answer.get("root_key_fingerprint"):
        raise AgentError("the relay's fingerprint does not match its key; refusing to pin it")
    return SimIdentity(
        device_id=answer["device_id"], org_id=answer["org_id"], relay_url=admin.relay_url,
        relay_public_key=answer["relay_public_key"], name=name,
        key_pem=keys.private_key_to_pem(key).decode(), enrolled_at=to_rfc3339(utc_now()),
    )


def enroll_fleet(admin: AdminClient, count: int, *, directory: Path | None, concurrency: int = 8,
                 progress: bool = False) -> list[SimIdentity]:
    """Enroll ``count`` new devices; each is appended to ``directory`` as soon as it exists."""
    done: list[SimIdentity] = []
    prefix = f"sim-{os.getpid()}-{int(time.time())}"
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for start in range(0, count, 500):
            chunk = list(pool.map(lambda i: enroll_one(admin, f"{prefix}-{i}"), range(start, min(count, start + 500))))
            if directory is not None:
                _append_identities(directory, chunk)
            done.extend(chunk)
            if progress:
                click.echo(f"enrolled {len(done)}/{count}", err=True)
    return done


# -- one simulated agent -------------------------------------------------------------


class MemoryDataDir(DataDir):
    """A data directory whose identity, key and policy live in memory."""

    def __init__(self, sandbox: Path, identity: Identity, key: Ed25519PrivateKey, policy: Policy) -> None:
        super().__init__(sandbox)
        self._identity = identity
        self._key = key
        self._policy = policy

    def identity(self) -> Identity:
        return self._identity

    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def policy(self) -> Policy:
        return self._policy


def sim_policy(sandbox: Path) -> Policy:
    """``coact policy init --sandbox`` for ``sandbox``, plus ``system.info``."""
    return parse_policy(render_sandbox_policy(str(sandbox)) + SIM_POLICY_RULE)


@dataclass
class Counters:
    """What one process's simulated agents did (summed over processes by the parent)."""

    deliveries: int = 0
    executed: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    revoked: int = 0
    audit_nacks: int = 0
    audit_timeouts: int = 0
    connect_failures: int = 0
    last_errors: list[str] = field(default_factory=list)
    # Why sessions ended before each reconnect (the agent's last error), by count.
    reconnect_causes: Counter[str] = field(default_factory=Counter)


class _CountingRunner(TaskRunner):
    """The agent's task runner, counting each execution (to prove exactly-once)."""

    def __init__(self, store: AgentStore, policy: Policy, clock: Clock, counters: Counters) -> None:
        super().__init__(store, policy, clock)
        self.counters = counters

    async def _run(self, spec: TaskSpec, decision: Decision | None) -> dict[str, Any]:
        self.counters.executed[spec.id] += 1
        return await super()._run(spec, decision)


@dataclass
class _SharedTelemetry:
    figures: dict[str, Any] | None = None
    taken_at: float = 0.0


_shared_telemetry = _SharedTelemetry()


class SimAgent(Agent):
    """A real :class:`Agent` with an in-memory store and no state file (module docs)."""

    def __init__(self, identity: SimIdentity, sandbox: Path, counters: Counters, *,
                 options: AgentOptions, head: ChainHead | None = None) -> None:
        policy = sim_policy(sandbox)
        clock = SystemClock()
        store = AgentStore(Path(":memory:"), identity.device_id, clock)
        if head is not None and head != GENESIS:
            store.restore_head(head)
        super().__init__(MemoryDataDir(sandbox, identity.identity(), identity.key(), policy),
                         clock=clock, options=options, store=store)
        self.runner = _CountingRunner(self.store, self.policy, self.clock, counters)
        self.counters = counters
        self.started_at: float | None = None
        self.connected_at: float | None = None

    async def _telemetry(self) -> dict[str, Any]:
        # Every simulated device runs on this one machine: read it once a second for
        # all of them, not once per heartbeat each (thousands of /proc reads a second).
        # Read on the loop (~0.2 ms), not in the thread pool: while a fleet connects,
        # the pool is queued tens of seconds deep with token requests, and a heartbeat
        # waiting behind them missed the relay's presence timeout (docs/performance.md).
        now = time.monotonic()
        if _shared_telemetry.figures is None or now - _shared_telemetry.taken_at >= 1.0:
            _shared_telemetry.taken_at = now
            _shared_telemetry.figures = telemetry()
        return dict(_shared_telemetry.figures)

    def _write_state(self) -> None:
        # Called by Agent right after each handshake: the moment this device is online.
        if self.connected and self.connected_at is None:
            self.connected_at = time.monotonic()

    async def audit(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "agent.reconnect":
            self.counters.reconnects += 1
            self.counters.reconnect_causes[str(data.get("error"))[:120]] += 1
        await super().audit(kind, data)

    async def _run_task(self, link: Any, spec: Any, workers: asyncio.Semaphore) -> None:
        self.counters.deliveries += 1
        await super()._run_task(link, spec, workers)

    def acked_head(self) -> ChainHead:
        """The last record the relay holds, as far as this agent knows."""
        pending = self.store.pending_audit(1)
        if pending:
            return ChainHead(pending[0]["seq"] - 1, pending[0]["prev_hash"])
        return self.store.audit_head()


class _AgentLogCounter(logging.Handler):
    """Counts the agent's own warnings (failed connects, nacks) instead of printing 20k lines."""

    def __init__(self, counters: Counters) -> None:
        super().__init__(logging.WARNING)
        self.counters = counters

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("connection to relay failed"):
            self.counters.connect_failures += 1
        elif message.startswith("relay refused audit batch"):
            self.counters.audit_nacks += 1
        elif message.startswith("no audit ack"):
            self.counters.audit_timeouts += 1
        if len(self.counters.last_errors) < 5 or record.levelno >= logging.ERROR:
            self.counters.last_errors = [*self.counters.last_errors[-4:], message[:300]]


# -- a fleet in one process ------------------------------------------------------------


@dataclass(frozen=True)
class FleetOptions:
    connect_rate: float = 200.0
    duration_s: float = 0.0  # 0: until stopped
    heartbeat_s: float = 20.0
    audit_backlog: int = 0  # records appended to each outbox before it connects
    stop_when_drained: bool = False
    drain_timeout_s: float = 15.0
    progress_s: float = 2.0
    max_parallel_tasks: int = 4
    threads: int = 64


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Fleet:
    """Simulated agents of one process: start them at a rate, report, stop them cleanly."""

    def __init__(self, identities: Sequence[SimIdentity], sandbox_root: Path, options: FleetOptions,
                 heads: Mapping[str, ChainHead] | None = None) -> None:
        self.options = options
        self.counters = Counters()
        agent_options = AgentOptions(heartbeat_s=options.heartbeat_s, max_parallel_tasks=options.max_parallel_tasks,
                                     policy_poll_s=None)
        heads = heads or {}
        self.agents: list[SimAgent] = []
        for identity in identities:
            sandbox = sandbox_root / identity.device_id
            sandbox.mkdir(parents=True, exist_ok=True)
            self.agents.append(SimAgent(identity, sandbox, self.counters, options=agent_options,
                                        head=heads.get(identity.device_id)))
        self.started = time.monotonic()
        self.drained_at: float | None = None
        self.all_connected_at: float | None = None

    def _fill_backlog(self) -> None:
        if self.options.audit_backlog <= 0:
            return
        for agent in self.agents:
            for start in range(0, self.options.audit_backlog, 10_000):
                count = min(10_000, self.options.audit_backlog - start)
                agent.store.append_audit_many(
                    ("sim.backlog", {"i": start + i}, None) for i in range(count)
                )

    def pending(self) -> int:
        return sum(agent.store.pending_count() for agent in self.agents)

    def check_drained(self, pending: int | None = None) -> bool:
        """Note the moment every agent has connected and every outbox is empty
        (``pending``: the records still buffered, if the caller has just counted them)."""
        if (self.drained_at is None and all(a.connected_at is not None for a in self.agents)
                and (self.pending() if pending is None else pending) == 0):
            self.drained_at = time.monotonic()
        return self.drained_at is not None

    def progress(self) -> dict[str, Any]:
        now = time.monotonic()
        connected = sum(1 for a in self.agents if a.connected)
        ever = [a for a in self.agents if a.connected_at is not None]
        pending = self.pending()
        if self.all_connected_at is None and len(ever) == len(self.agents):
            self.all_connected_at = max(a.connected_at or now for a in ever)
        self.check_drained(pending)  # at the progress interval; --stop-when-drained checks more often
        connect_times = [a.connected_at - a.started_at for a in ever if a.started_at is not None and a.connected_at]
        c = self.counters
        return {
            "elapsed_s": round(now - self.started, 3),
            "agents": len(self.agents),
            "connected": connected,
            "ever_connected": len(ever),
            "all_connected_s": None if self.all_connected_at is None else round(self.all_connected_at - self.started, 3),
            "connect_p50_s": _percentile(connect_times, 0.5),
            "connect_p99_s": _percentile(connect_times, 0.99),
            "audit_pending": pending,
            "audit_backlog": self.options.audit_backlog * len(self.agents),
            "drained_s": None if self.drained_at is None else round(self.drained_at - self.started, 3),
            "deliveries": c.deliveries,
            "executed": sum(c.executed.values()),
            "executed_twice": sum(1 for n in c.executed.values() if n > 1),
            "reconnects": c.reconnects,
            "revoked": c.revoked,
            "connect_failures": c.connect_failures,
            "audit_nacks": c.audit_nacks,
            "audit_timeouts": c.audit_timeouts,
            "last_errors": list(c.last_errors),
            "reconnect_causes": dict(c.reconnect_causes.most_common(MAX_CAUSES)),
        }

    async def _run_agent(self, agent: SimAgent, stop: asyncio.Event) -> None:
        agent.started_at = time.monotonic()
        try:
            await agent.run(stop)
        except RevokedError:
            self.counters.revoked += 1
        except Exception as exc:  # one broken agent must not stop the fleet
            self.counters.last_errors = [*self.counters.last_errors[-4:], f"{type(exc).__name__}: {exc}"]
            log.exception("simulated agent %s failed", agent.identity.device_id)

    async def run(self, stop: asyncio.Event, report: Any = None) -> dict[str, Any]:
        """Run until ``stop`` (or the duration, or the drain); return the final progress."""
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=self.options.threads))
        handler = _AgentLogCounter(self.counters)
        agent_log = logging.getLogger("coact.agent")
        agent_log.addHandler(handler)
        agent_log.propagate = False
        agent_log.setLevel(logging.WARNING)
        use_orjson()  # a load generator, not the resident agent's footprint (decision 41)
        await asyncio.to_thread(self._fill_backlog)
        # The simulated devices live for the whole run, and a collector pause stops
        # every one of them at once (coact.shared.gcpolicy).
        settle_long_lived_objects()
        self.started = time.monotonic()
        agents_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._launch(group, agents_stop))
                deadline = self.started + self.options.duration_s if self.options.duration_s > 0 else None
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._drained_or(stop), self.options.progress_s)
                    snapshot = await asyncio.to_thread(self.progress)
                    if report is not None:
                        report(snapshot)
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    if self.options.stop_when_drained and self.drained_at is not None:
                        break
                await self._drain(self.options.drain_timeout_s)
                agents_stop.set()
        finally:
            agent_log.removeHandler(handler)
        return self.progress()

    async def _drained_or(self, stop: asyncio.Event) -> None:
        """Wait for ``stop`` or, with ``stop_when_drained``, for the fleet to drain:
        checked every 20 ms, so the drain time (the audit benchmark's figure) is not
        rounded up to the progress interval."""
        while not stop.is_set():
            if self.options.stop_when_drained and self.check_drained():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DRAIN_CHECK_S)

    async def _launch(self, group: asyncio.TaskGroup, stop: asyncio.Event) -> None:
        interval = 1.0 / self.options.connect_rate if self.options.connect_rate > 0 else 0.0
        begin = time.monotonic()
        for index, agent in enumerate(self.agents):
            if stop.is_set():
                return
            delay = begin + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            group.create_task(self._run_agent(agent, stop))

    async def _drain(self, timeout_s: float) -> None:
        """Give connected agents a moment to upload what their outboxes hold before exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self.pending) == 0:
                return
            await asyncio.sleep(0.2)

    def heads(self) -> dict[str, ChainHead]:
        return {agent.identity.device_id: agent.acked_head() for agent in self.agents}

    def close(self) -> None:
        for agent in self.agents:
            agent.close()


# -- processes -------------------------------------------------------------------------


def _child(identities: list[SimIdentity], sandbox_root: str, options: FleetOptions,
           heads: dict[str, tuple[int, str]], out: Any, stop_event: Any) -> None:
    """Worker process: run a fleet slice, send progress dicts and the final heads to ``out``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop

    async def main() -> None:
        fleet = Fleet(identities, Path(sandbox_root), options,
                      {d: ChainHead(s, h) for d, (s, h) in heads.items()})
        stop = asyncio.Event()

        async def watch_parent() -> None:
            while not stop_event.is_set():  # noqa: ASYNC110 - a multiprocessing Event cannot be awaited
                await asyncio.sleep(0.2)
            stop.set()

        watcher = asyncio.create_task(watch_parent())
        try:
            final = await fleet.run(stop, report=lambda p: out.put(("progress", os.getpid(), p)))
            out.put(("final", os.getpid(), final,
                     {d: (h.seq, h.hash) for d, h in fleet.heads().items()}))
        finally:
            watcher.cancel()
            fleet.close()

    asyncio.run(main())


def merge_progress(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Add up the progress of several processes (times: the slowest; errors: a few)."""
    if len(parts) == 1:
        return dict(parts[0])
    out: dict[str, Any] = {}
    for key in parts[0]:
        values = [p.get(key) for p in parts]
        if key == "last_errors":
            out[key] = [e for v in values for e in (v or [])][-5:]
        elif key == "reconnect_causes":
            causes: Counter[str] = Counter()
            for v in values:
                causes.update(v or {})
            out[key] = dict(causes.most_common(MAX_CAUSES))
        elif key in ("elapsed_s", "all_connected_s", "drained_s", "connect_p50_s", "connect_p99_s"):
            out[key] = None if any(v is None for v in values) else max(values)  # type: ignore[type-var]
        else:
            out[key] = sum(v or 0 for v in values)
    return out


def run_fleet(identities: Sequence[SimIdentity], sandbox_root: Path, options: FleetOptions, *,
              processes: int = 1, heads: Mapping[str, ChainHead] | None = None,
              report: Any = None) -> tuple[dict[str, Any], dict[str, ChainHead]]:
    """Run the fleet (in this process, or split over ``processes``) until done or SIGINT/SIGTERM."""
    heads = dict(heads or {})
    if processes <= 1:
        async def main() -> tuple[dict[str, Any], dict[str, ChainHead]]:
            fleet = Fleet(identities, sandbox_root, options, heads)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            try:
                final = await fleet.run(stop, report)
                return final, fleet.heads()
            finally:
                fleet.close()

        return asyncio.run(main())

    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    stop_event = context.Event()
    slices = [list(identities[i::processes]) for i in range(processes)]
    children = [
        context.Process(
            target=_child,
            args=(part, str(sandbox_root), options,
                  {i.device_id: (heads[i.device_id].seq, heads[i.device_id].hash) for i in part if i.device_id in heads},
                  out, stop_event),
            daemon=True,
        )
        for part in slices if part
    ]
    previous = {sig: signal.signal(sig, lambda *_: stop_event.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    latest: dict[int, dict[str, Any]] = {}
    finals: dict[int, dict[str, Any]] = {}
    new_heads: dict[str, ChainHead] = {}
    try:
        for child in children:
            child.start()
        while len(finals) < len(children):
            try:
                item = out.get(timeout=1.0)
            except queue.Empty:
                if all(not c.is_alive() for c in children):
                    break
                continue
            if item[0] == "progress":
                latest[item[1]] = item[2]
                if report is not None and len(latest) == len(children):
                    report(merge_progress(list(latest.values())))
            else:
                finals[item[1]] = item[2]
                new_heads.update({d: ChainHead(s, h) for d, (s, h) in item[3].items()})
    finally:
        stop_event.set()
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    parts = list(finals.values()) or list(latest.values())
    return (merge_progress(parts) if parts else {}), new_heads


# -- the command ----------------------------------------------------------------------


def _raise_fd_limit(needed: int) -> None:
    """One socket per agent: lift the soft limit to the hard one if it is too low."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        if needed > soft:
            click.echo(f"warning: {needed} sockets wanted in one process but `ulimit -n` is {soft}; "
                       "use --processes to split the fleet", err=True)
    except (ImportError, ValueError, OSError):
        pass


@click.command("sim")
@click.option("--relay", "relay_url", required=True, help="Relay URL, e.g. http://127.0.0.1:8600")
@click.option("--token", envvar="COACT_SIM_TOKEN", default=None,
              help="Admin access token, for enrollment codes (only needed to enroll new devices). [COACT_SIM_TOKEN]")
@click.option("--email", envvar="COACT_SIM_EMAIL", default=None,
              help="Admin email, to log in (again) when the token is missing or expires. [COACT_SIM_EMAIL]")
@click.option("--password", envvar="COACT_SIM_PASSWORD", default=None,
              help="Admin password for --email. [COACT_SIM_PASSWORD]")
@click.option("--agents", type=click.IntRange(min=1), required=True, help="How many devices to simulate.")
@click.option("--connect-rate", type=float, default=200.0, show_default=True,
              help="New connections per second (over all processes).")
@click.option("--duration", type=float, default=0.0, show_default=True,
              help="Seconds to run once started; 0 runs until SIGINT/SIGTERM.")
@click.option("--identities-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep enrolled identities (and chain heads) here and reuse them on the next run.")
@click.option("--sandbox-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Parent of the per-device sandboxes file actions may touch. Default: a temporary directory.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes to spread the fleet over.")
@click.option("--heartbeat", type=float, default=20.0, show_default=True, help="Heartbeat interval, seconds.")
@click.option("--audit-backlog", type=click.IntRange(min=0), default=0, show_default=True,
              help="Audit records put in each outbox before it connects (to measure ingest).")
@click.option("--stop-when-drained", is_flag=True,
              help="Stop once every agent has connected and every outbox is empty.")
@click.option("--threads", type=click.IntRange(min=1), default=64, show_default=True,
              help="Threads per process for the agents' blocking token requests. A real device has its "
                   "own; raise it (with --connect-rate 0) to have the whole fleet connect at once.")
@click.option("--enroll-concurrency", type=click.IntRange(min=1), default=8, show_default=True,
              help="Enrollments in flight at once.")
@click.option("--enroll-only", is_flag=True, help="Enroll the missing devices into --identities-dir and exit.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per progress line on stdout, the summary last.")
def sim_command(relay_url: str, token: str | None, email: str | None, password: str | None, agents: int,
                connect_rate: float, duration: float, identities_dir: Path | None, sandbox_dir: Path | None,
                processes: int, heartbeat: float, audit_backlog: int, stop_when_drained: bool, threads: int,
                enroll_concurrency: int, enroll_only: bool, output: str) -> None:
    """Simulate a fleet of agents against a relay (load tests; see docs/sim.md)."""
    relay_url = relay_url.rstrip("/")
    identities = load_identities(identities_dir, relay_url)[:agents] if identities_dir else []
    missing = agents - len(identities)
    if missing > 0:
        if not (token or (email and password)):
            raise click.UsageError(f"{missing} devices need enrolling: give --token (or --email and --password)")
        admin = AdminClient(relay_url, token, email, password)
        try:
            identities += enroll_fleet(admin, missing, directory=identities_dir,
                                       concurrency=enroll_concurrency, progress=output == "text")
        except AgentError as exc:
            raise click.ClickException(str(exc)) from exc
    if enroll_only:
        if identities_dir is None:
            raise click.UsageError("--enroll-only needs --identities-dir")
        click.echo(json.dumps({"type": "summary", "enrolled": max(missing, 0), "identities": len(identities)}))
        return
    _raise_fd_limit(agents // processes + 64)
    heads = load_heads(identities_dir)
    own_sandbox = sandbox_dir is None
    root = Path(tempfile.mkdtemp(prefix="coact-sim-")) if sandbox_dir is None else sandbox_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    options = FleetOptions(connect_rate=connect_rate / processes, duration_s=duration, heartbeat_s=heartbeat,
                           audit_backlog=audit_backlog, stop_when_drained=stop_when_drained, threads=threads)

    def report(progress: Mapping[str, Any]) -> None:
        if output == "json":
            click.echo(json.dumps({"type": "progress", **progress}))
            sys.stdout.flush()
        else:
            click.echo(
                f"[{progress['elapsed_s']:7.1f}s] connected {progress['connected']}/{progress['agents']}"
                f"  tasks {progress['executed']}  audit pending {progress['audit_pending']}"
                f"  reconnects {progress['reconnects']}", err=True,
            )

    try:
        final, new_heads = run_fleet(identities, root, replace(options), processes=processes, heads=heads,
                                     report=report)
    finally:
        if own_sandbox:
            shutil.rmtree(root, ignore_errors=True)
    if identities_dir is not None and new_heads:
        save_heads(identities_dir, new_heads)
    summary = {"type": "summary", "relay": relay_url, "processes": processes, "python": platform.python_version(),
               **final}
    click.echo(json.dumps(summary) if output == "json" else json.dumps(summary, indent=2))


def main() -> None:
    sim_command(prog_name="coact sim")


if __name__ == "__main__":
    main()
