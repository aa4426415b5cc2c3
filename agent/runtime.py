"""The resident agent: keeps one outbound WebSocket to its relay and serves it.

Per connection: get a short-lived device token (signed request), open the socket,
check the relay's signature against the pinned relay key, prove our own key, then
run three loops until the socket closes — receive (tasks, acks), heartbeat
(telemetry), and audit upload (one signed batch in flight at a time). Between
connections: exponential backoff with full jitter, each reconnect audited. A
revocation stops the agent for good; nothing else does (decision 49): a failing task
becomes that task's failed result (coact.agent.tasks), a frame that cannot be handled
is logged and skipped, a session that fails for any reason is reconnected, and a full
disk refuses new work (reported in heartbeats and ``coact agent status``) until a
write succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from coact.agent import relay_client
from coact.agent.config import DataDir, write_atomic
from coact.agent.errors import AgentError, DiskFullError, RevokedError
from coact.agent.executors.system import telemetry
from coact.agent.frames import (
    AuditAck,
    AuditBatch,
    AuditNack,
    Auth,
    Challenge,
    Error,
    Heartbeat,
    ResultAck,
    TaskMessage,
    TaskReceived,
    TaskResult,
    Welcome,
    encode,
    parse_relay_frame,
)
from coact.agent.policy_file import PolicyFile
from coact.agent.store import AgentStore, AuditItem
from coact.agent.tasks import TaskRunner
from coact.shared import keys
from coact.shared.chain import ChainHead, sign_batch
from coact.shared.clock import Clock, SystemClock, to_rfc3339
from coact.shared.errors import ProtocolError, SignatureError
from coact.shared.wire import (
    MAX_AUDIT_BATCH,
    MAX_FRAME_BYTES,
    auth_message,
    relay_challenge_message,
)

log = logging.getLogger("coact.agent")

AGENT_VERSION = "0.1.0"
CLOSE_REVOKED = 4403
# Records per audit frame are also bounded by size: a thousand large records would
# exceed the relay's frame limit and be refused on every retry. The rest of the frame
# (type, signature) is under 200 bytes.
AUDIT_BATCH_BYTES = MAX_FRAME_BYTES - 4096
# Lifecycle records (reconnects, mostly) held in memory while the disk is full.
MAX_UNWRITTEN_AUDIT = 1000


@dataclass(frozen=True)
class AgentOptions:
    heartbeat_s: float = 20.0
    audit_batch: int = MAX_AUDIT_BATCH
    audit_ack_timeout_s: float = 30.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_parallel_tasks: int = 4
    # How often the policy file is checked for a change (None: only on SIGHUP); the
    # fleet simulator, whose policies live in memory, checks none.
    policy_poll_s: float | None = 2.0


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] — spreads a fleet's reconnects."""
    return rng.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


def reconnect_delay(attempt: int, options: AgentOptions, rng: random.Random, retry_after: float | None) -> float:
    """The back-off, and never sooner than a busy relay asked. Its Retry-After is an
    appointment (each device turned away gets its own, by its place in line: see
    coact.relay.admission), so the agent keeps it, late by up to a second and a
    quarter of it: devices given the same whole second do not arrive together."""
    delay = backoff_delay(attempt, options.backoff_base_s, options.backoff_max_s, rng)
    if retry_after is not None:
        delay = max(delay, retry_after + rng.uniform(0, 1 + retry_after / 4))
    return delay


def retry_after_of(exc: BaseException) -> float | None:
    """The Retry-After of a refused token request or WebSocket upgrade, if it had one."""
    if isinstance(exc, relay_client.RelayHTTPError):
        return exc.retry_after
    if isinstance(exc, InvalidStatus):
        return relay_client.parse_retry_after(exc.response.headers.get("Retry-After"))
    return None


def websocket_url(relay_url: str) -> str:
    if relay_url.startswith("https://"):
        return "wss://" + relay_url.removeprefix("https://").rstrip("/") + "/api/v1/agent/ws"
    if relay_url.startswith("http://"):
        return "ws://" + relay_url.removeprefix("http://").rstrip("/") + "/api/v1/agent/ws"
    raise AgentError(f"relay URL {relay_url!r} must start with http:// or https://")


def _most_telling(failures: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error of a failed session to act on: a revocation beats a closed socket."""
    flat: list[BaseException] = []

    def walk(group: BaseExceptionGroup[BaseException]) -> None:
        for error in group.exceptions:
            if isinstance(error, BaseExceptionGroup):
                walk(error)
            else:
                flat.append(error)

    walk(failures)
    for error in flat:
        if isinstance(error, RevokedError):
            return error
    return flat[0]


@dataclass
class _Link:
    ws: ClientConnection
    audit_reply: asyncio.Queue[AuditAck | AuditNack] = field(default_factory=lambda: asyncio.Queue(1))


async def await_audit_reply(
    replies: asyncio.Queue[AuditAck | AuditNack], head: ChainHead, timeout_s: float
) -> AuditAck | AuditNack:
    """The relay's answer to the batch ending at ``head`` (:class:`TimeoutError` if none
    comes within ``timeout_s``). A batch resent after a timeout is answered twice, and
    the late answer must not pass for the next batch's: an ack of fewer records is
    skipped (this batch's ack covers them), and ``busy`` (the relay is still storing
    the earlier send) means an answer is still to come. Taken in arrival order, a late
    ack had kept a duplicate batch in flight for every batch after it (15,000 simulated
    agents kept the relay busy answering them, docs/performance.md)."""
    async with asyncio.timeout(timeout_s):
        while True:
            reply = await replies.get()
            if isinstance(reply, AuditAck) and reply.last_seq < head.seq:
                continue
            if isinstance(reply, AuditNack) and reply.code == "busy":
                continue
            return reply


class Agent:
    def __init__(
        self, data_dir: DataDir, *, clock: Clock | None = None, options: AgentOptions | None = None,
        store: AgentStore | None = None,
    ) -> None:
        # ``store`` lets the fleet simulator (coact.agent.sim) give each agent an
        # in-memory outbox; a real agent always uses the one in its data directory.
        self.data_dir = data_dir
        self.clock = clock or SystemClock()
        self.options = options or AgentOptions()
        self.identity = data_dir.identity()
        self.key = data_dir.private_key()
        self.policy_file = PolicyFile(data_dir)
        self.policy = self.policy_file.policy
        self.policy_checked_at: str | None = None
        self.reload_requested = asyncio.Event()  # SIGHUP, from `coact agent reload`
        self.store = store or AgentStore(data_dir.db_path, self.identity.device_id, self.clock)
        self.runner = TaskRunner(self.store, self.policy, self.clock)
        self.audit_wakeup = asyncio.Event()
        self.heartbeat_wakeup = asyncio.Event()  # the disk-full state changed: say so now
        self.rng = random.Random()
        self.connected = False
        self.last_error: str | None = None
        self.revoked_at: str | None = None
        # Lifecycle records a full disk kept from the outbox, written first once it has room.
        self.unwritten: list[tuple[str, dict[str, Any], str]] = []
        self.reported_full: str | None = None  # the disk-full state the last heartbeat carried

    async def audit(self, kind: str, data: dict[str, Any]) -> None:
        """Append a lifecycle record. A full disk holds it in memory (up to
        MAX_UNWRITTEN_AUDIT, oldest lost first, each loss logged) until a record fits
        again, and then writes it first, with ``held_since``: the time it happened.
        The agent goes on either way."""
        self.unwritten.append((kind, data, to_rfc3339(self.clock.now())))
        last = len(self.unwritten) - 1
        items: list[AuditItem] = [
            (k, d if i == last else {**d, "held_since": at}, None) for i, (k, d, at) in enumerate(self.unwritten)
        ]
        try:
            await self.store.call(self.store.append_audit_many, items)
        except DiskFullError as exc:
            if len(self.unwritten) > MAX_UNWRITTEN_AUDIT:
                log.error("audit record %s lost: %s", self.unwritten.pop(0)[0], exc)
            log.error("audit record %s held in memory: %s", kind, exc)
            return
        self.unwritten.clear()
        self.audit_wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raise :class:`RevokedError` if the device is revoked."""
        await self.audit("agent.start", {"version": AGENT_VERSION, "pid": os.getpid()})
        try:
            await self.runner.settle_interrupted()
        except Exception:  # a full disk, say: they stay journaled as running and are settled next start
            log.exception("tasks interrupted by the last stop could not be settled yet")
        attempt = 0
        watcher = asyncio.create_task(self._watch_policy(), name="policy-watch")
        try:
            while not stop.is_set():
                retry_after = None
                try:
                    established = await self._connect_once(stop)
                    if established:
                        attempt = 0
                    if stop.is_set():
                        break
                except RevokedError as exc:
                    # Said in the state file, so `coact agent status` tells why it stopped.
                    self.revoked_at = to_rfc3339(self.clock.now())
                    self.last_error = f"revoked by the relay at {self.revoked_at}: {exc}"
                    await self.audit("agent.revoked", {})
                    raise
                except (OSError, TimeoutError, ConnectionClosed, InvalidStatus, AgentError,
                        ProtocolError, websockets.exceptions.InvalidHandshake) as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    retry_after = retry_after_of(exc)
                    log.warning("connection to relay failed: %s", self.last_error)
                except Exception as exc:  # a bug in a session: reconnect, never exit (decision 49)
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("session with the relay failed")
                delay = reconnect_delay(attempt, self.options, self.rng, retry_after)
                attempt += 1
                await self.audit("agent.reconnect", {"attempt": attempt, "delay_s": round(delay, 3), "error": self.last_error})
                self._write_state()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self.connected = False
            await self.audit("agent.stop", {})
            self._write_state()

    async def _watch_policy(self) -> None:
        """Reload the policy on request (SIGHUP) or when its file changes (module
        coact.agent.policy_file). A failure here never ends the agent."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reload_requested.wait(), self.options.policy_poll_s)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                reason = "requested"
            elif await asyncio.to_thread(self.policy_file.changed_on_disk):
                reason = "file changed"
            else:
                continue
            try:
                await self.reload_policy(reason)
            except Exception:  # an audit write on a full disk, say: the policy in force stays
                log.exception("policy reload failed")

    async def reload_policy(self, reason: str) -> None:
        outcome = await asyncio.to_thread(self.policy_file.reload)
        self.policy_checked_at = to_rfc3339(self.clock.now())
        if outcome.kind == "policy.reloaded":
            self.policy = self.runner.policy = self.policy_file.policy
            log.info("policy reloaded (%s): sha256 %s", reason, outcome.data["sha256"])
        elif outcome.kind == "policy.reload_failed":
            log.error("new policy refused, the previous one stays in force: %s", outcome.data["error"])
        if outcome.kind is not None:
            await self.audit(outcome.kind, {**outcome.data, "reason": reason})
        self._write_state()

    async def _connect_once(self, stop: asyncio.Event) -> bool:
        token = await asyncio.to_thread(
            relay_client.device_token, self.identity.relay_url, self.identity.device_id, self.key
        )
        async with connect(
            websocket_url(self.identity.relay_url),
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=None,
            max_size=MAX_FRAME_BYTES,
            open_timeout=15,
            ping_interval=None,  # our heartbeats keep the link alive and carry telemetry
        ) as ws:
            try:
                await self._handshake(ws)
            except ConnectionClosed as exc:
                self._raise_if_revoked(exc)
                raise
            self.connected = True
            self.last_error = None
            self._write_state()
            log.info("connected to %s as %s", self.identity.relay_url, self.identity.device_id)
            try:
                await self._serve(_Link(ws), stop)
                # A clean close (1000, or 1001 from a relay going away) ends the frame
                # loop without an exception: say who closed it and why.
                if not stop.is_set():
                    self.last_error = f"connection closed by the relay: {ws.close_code} {ws.close_reason or ''}".rstrip()
            except ConnectionClosed as exc:
                self._raise_if_revoked(exc)
                self.last_error = f"connection closed: {exc}"
            finally:
                self.connected = False
        return True

    @staticmethod
    def _raise_if_revoked(exc: ConnectionClosed) -> None:
        if exc.rcvd is not None and exc.rcvd.code == CLOSE_REVOKED:
            raise RevokedError("the relay revoked this device; ask an admin to re-enroll it") from exc

    async def _handshake(self, ws: ClientConnection) -> None:
        challenge = parse_relay_frame(await asyncio.wait_for(ws.recv(), 15))
        if not isinstance(challenge, Challenge):
            raise ProtocolError(f"expected a challenge, got {challenge.type}")
        device_id = self.identity.device_id
        try:
            keys.verify(self.identity.relay_public_key, relay_challenge_message(device_id, challenge.nonce),
                        challenge.relay_signature)
        except SignatureError as exc:
            # Not the relay we enrolled with: say nothing, prove nothing.
            raise AgentError(
                f"the relay at {self.identity.relay_url} did not prove the identity pinned at enrollment "
                f"({self.identity.relay_fingerprint}); refusing to talk to it"
            ) from exc
        signature = keys.sign(self.key, auth_message(device_id, challenge.nonce))
        await ws.send(encode(Auth(signature=signature, agent_version=AGENT_VERSION)))
        welcome = parse_relay_frame(await asyncio.wait_for(ws.recv(), 15))
        if isinstance(welcome, Error):
            raise AgentError(f"relay refused the session: {welcome.detail}")
        if not isinstance(welcome, Welcome) or welcome.device_id != device_id:
            raise ProtocolError("expected a welcome for this device")

    async def _serve(self, link: _Link, stop: asyncio.Event) -> None:
        for result in await self.store.call(self.store.unacked_results):
            await link.ws.send(encode(TaskResult(**result)))
        try:
            await self._serve_group(link, stop)
        except BaseExceptionGroup as failures:
            raise _most_telling(failures) from None

    async def _serve_group(self, link: _Link, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            workers = asyncio.Semaphore(self.options.max_parallel_tasks)
            loops = [
                group.create_task(self._heartbeat_loop(link)),
                group.create_task(self._audit_loop(link)),
                group.create_task(self._close_on_stop(link, stop)),
            ]
            try:
                async for frame in link.ws:
                    try:
                        message = parse_relay_frame(frame)
                    except ProtocolError as exc:
                        log.warning("bad frame from relay: %s", exc)
                        continue
                    try:
                        await self._on_message(link, message, group, workers)
                    except (RevokedError, ConnectionClosed):
                        raise
                    except Exception:  # one frame that cannot be handled never ends the session
                        log.exception("could not handle %s from relay", message.type)
            finally:
                for loop in loops:
                    loop.cancel()

    async def _close_on_stop(self, link: _Link, stop: asyncio.Event) -> None:
        await stop.wait()
        await link.ws.close(1001, "agent stopping")

    async def _on_message(
        self, link: _Link, message: Any, group: asyncio.TaskGroup, workers: asyncio.Semaphore
    ) -> None:
        match message:
            case TaskMessage(task=spec):
                group.create_task(self._run_task(link, spec, workers))
            case ResultAck(task_id=task_id):
                await self.store.call(self.store.ack_result, task_id)
            case AuditAck() | AuditNack():
                if link.audit_reply.full():
                    link.audit_reply.get_nowait()
                link.audit_reply.put_nowait(message)
            case Error(code="revoked", detail=detail):
                raise RevokedError(f"the relay revoked this device ({detail}); not reconnecting: ask an admin to re-enroll it")
            case Error(code=code, detail=detail):
                log.warning("relay reports %s: %s", code, detail)
            case _:
                log.warning("unexpected %s from relay", message.type)

    async def _run_task(self, link: _Link, spec: Any, workers: asyncio.Semaphore) -> None:
        """One task, in the session's task group: it never raises, so a failing task
        cannot cancel the session's loops or the other tasks."""
        try:
            await link.ws.send(encode(TaskReceived(task_id=spec.id)))
            async with workers:
                result = await self.runner.handle(spec)  # contained: never raises
            self.audit_wakeup.set()
            if result is not None:
                await link.ws.send(encode(TaskResult(**result)))
            if self.store.full != self.reported_full:
                self.heartbeat_wakeup.set()
        except ConnectionClosed:
            pass  # a journaled result is sent again by the next session (_serve)
        except Exception:
            log.exception("task %s: its result could not be sent", spec.id)

    async def _telemetry(self) -> dict[str, Any]:
        return await asyncio.to_thread(telemetry)

    async def _heartbeat_loop(self, link: _Link) -> None:
        while True:
            figures = await self._telemetry()
            figures["pending_audit"] = await self.store.call(self.store.pending_count)
            self.reported_full = self.store.full
            if self.reported_full is not None:
                figures["disk_full"] = self.reported_full  # tasks are refused until it clears
            await link.ws.send(encode(Heartbeat(telemetry=figures)))
            self._write_state()
            self.heartbeat_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.heartbeat_wakeup.wait(), self.options.heartbeat_s)

    async def _audit_loop(self, link: _Link) -> None:
        device_id = self.identity.device_id
        while True:
            batch = await self.store.call(self.store.pending_batch, self.options.audit_batch, AUDIT_BATCH_BYTES)
            if batch is None:
                self.audit_wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.audit_wakeup.wait(), 5)
                continue
            signature = sign_batch(self.key, device_id, batch.head)
            # The relay validates the records as AuditRecords; they are the outbox rows as written.
            await link.ws.send(encode(AuditBatch(records=batch.records, signature=signature)))
            try:
                reply = await await_audit_reply(link.audit_reply, batch.head, self.options.audit_ack_timeout_s)
            except TimeoutError:
                log.warning("no audit ack within %s s; resending", self.options.audit_ack_timeout_s)
                continue
            if isinstance(reply, AuditAck):
                try:
                    await self.store.call(self.store.ack_audit, reply.last_seq, reply.head_hash)
                except (ValueError, DiskFullError) as exc:
                    # An ack for records we do not hold deletes nothing; they are sent again.
                    log.error("audit ack not applied: %s", exc)
                    await asyncio.sleep(5)
            else:
                # Never drop records on a nack: keep them, say why, retry later.
                log.error("relay refused audit batch (%s): %s", reply.code, reply.detail)
                await asyncio.sleep(5)

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "connected": self.connected,
            "updated_at": to_rfc3339(self.clock.now()),
            "last_error": self.last_error,
            "revoked_at": self.revoked_at,
            "disk_full": self.store.full,
            "policy_sha256": self.policy_file.sha256,
            "policy_error": self.policy_file.error,
            "policy_checked_at": self.policy_checked_at,
        }
        with contextlib.suppress(OSError):
            write_atomic(self.data_dir.state_path, json.dumps(state).encode(), mode=0o600)

    def close(self) -> None:
        self.store.close()
