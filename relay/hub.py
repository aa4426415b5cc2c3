"""The agent WebSocket hub: authenticated sessions, presence, task delivery, results
and audit ingest for the devices connected to this relay process.

A session is established in two steps: the HTTP upgrade must carry a valid device
access token, and the first frame must sign a fresh relay nonce with the device key
(``coact.shared.protocol.auth_message``). A token alone, stolen or replayed, does not
open a session. Close codes: 4400 protocol error, 4401 authentication failed,
4403 device revoked, 4408 presence timeout, 4409 replaced by a newer session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from coact.relay.admission import Admission, ConnectGate
from coact.relay.audit import AuditPipeline
from coact.relay.errors import ConnectsBusy, Unauthorized
from coact.relay.events import EventBus
from coact.relay.routing import Principal
from coact.relay.settings import Settings
from coact.relay.storage import Row, Store
from coact.shared import keys
from coact.shared.chain import GENESIS, ChainHead
from coact.shared.errors import ProtocolError, SignatureError
from coact.shared.protocol import (
    MAX_FRAME_BYTES,
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
    TaskSpec,
    Welcome,
    auth_message,
    encode,
    parse_agent_message,
    relay_challenge_message,
)

log = logging.getLogger("coact.relay.hub")

CLOSE_PROTOCOL = 4400
CLOSE_AUTH = 4401
CLOSE_REVOKED = 4403
CLOSE_TIMEOUT = 4408
CLOSE_REPLACED = 4409
AUTH_TIMEOUT_S = 10.0
# A token request's connect slot is kept this long for its socket (the agent's own
# time limit for the request); a device that never connects gives it back then.
CONNECT_HOLD_S = 15.0
TURNED_AWAY_LOG_S = 10.0  # at most one log line per this long about connects turned away
MAX_PROTOCOL_ERRORS = 5
MAX_TELEMETRY_BYTES = 16 * 1024
# How often the relay-wide watch looks for revocations and tasks that other relay
# processes made, and writes the heartbeats it collected.
WATCH_INTERVAL_S = 5.0
# Tasks read and marked per delivery round (one read, one write).
DELIVERY_ROUND = 200
# A device reports each task received at once, then its result. The `running` state
# is written this much later, for all tasks received meanwhile: a task whose result
# comes first (most take milliseconds) is written once, with its receipt time as its
# start, instead of twice.
RUNNING_WRITE_DELAY_S = 0.05

# The authorization rule of every agent -> relay message type: who may send it, and
# what it may touch. tests/security/test_route_access.py fails if a type has none.
MESSAGE_RULES: dict[str, str] = {
    "auth": "handshake only: the first frame, a signature by the enrolled device key over a fresh relay nonce",
    "heartbeat": "authenticated session: updates only the session's own device (telemetry, last_seen)",
    "task_received": "authenticated session: only tasks of the session's device (store filters by device id)",
    "task_result": "authenticated session: only tasks of the session's device; others are refused and audited",
    "audit_batch": "authenticated session: only records of the session's device chain, signed by its key",
    "error": "authenticated session: logged, changes nothing",
}


@dataclass
class Session:
    device: Row
    ws: web.WebSocketResponse
    # Audit ingest and queue delivery run beside the receive loop, in this group, and
    # only while they have work: an idle session is one task (its receive loop), which
    # is most of what a connection costs in memory. Audit batches never hold up results
    # or heartbeats; the protocol allows one batch in flight.
    group: asyncio.TaskGroup | None = None
    ingesting: asyncio.Task[None] | None = None
    delivering: asyncio.Task[None] | None = None
    more_tasks: bool = False  # nudged while a delivery was running
    audit_head: ChainHead | None = None  # after the last batch acknowledged (see AuditPipeline)
    protocol_errors: int = 0

    @property
    def device_id(self) -> str:
        return str(self.device["id"])

    async def send(self, message: Any) -> None:
        await self.ws.send_str(encode(message))


class Hub:
    def __init__(self, store: Store, audit: AuditPipeline, events: EventBus, settings: Settings) -> None:
        self.store = store
        self.audit = audit
        self.events = events
        self.settings = settings
        self.sessions: dict[str, Session] = {}
        self.connects = ConnectGate(settings.device_connect_limit, CONNECT_HOLD_S, store.clock.monotonic)
        self._turned_away, self._turned_away_logged = 0, float("-inf")
        # Heartbeats are recorded in one write per watch interval, not one each.
        self._seen: dict[str, tuple[str, dict[str, Any] | None]] = {}
        # (device id, task id) -> (received at, org id): receipts not written yet.
        self._received: dict[tuple[str, str], tuple[str, str]] = {}
        self._have_received = asyncio.Event()

    def is_online(self, device_id: str) -> bool:
        return device_id in self.sessions

    def nudge(self, device_id: str) -> None:
        """Tell the device's session, if it is here, that it has queued tasks to fetch."""
        session = self.sessions.get(device_id)
        if session is not None:
            self._deliver(session)

    async def send_task(self, task: Row) -> None:
        """Send a task already stored as ``dispatched`` to its device's session here.
        A send that is lost (no session, or it just closed) is not an error: the
        device's next session gets every task sent but not yet reported."""
        session = self.sessions.get(task["device_id"])
        if session is not None:
            with contextlib.suppress(ConnectionResetError):
                await session.send(_task_message(task))

    async def disconnect(self, device_id: str, code: int, reason: str) -> None:
        session = self.sessions.get(device_id)
        if session is not None:
            with contextlib.suppress(Exception):
                await session.send(Error(code="revoked" if code == CLOSE_REVOKED else "closed", detail=reason))
            await session.ws.close(code=code, message=reason.encode()[:120])

    async def close_all(self) -> None:
        """Close every agent socket with 1001 "going away", all at once: each close waits
        for its agent's reply, and a fleet's one after another would take minutes."""
        await asyncio.gather(
            *(session.ws.close(code=1001, message=b"relay shutting down") for session in list(self.sessions.values())),
            return_exceptions=True,
        )

    # -- session ------------------------------------------------------------------------

    def admit(self, device_id: str) -> Admission:
        """A connect slot for the device, or 503 with Retry-After (coact.relay.admission)."""
        renewal = self.connects.holds(device_id)
        if self.connects.admit(device_id):
            return Admission(self.connects, device_id, renewal=renewal)
        retry_after = self.connects.retry_after(device_id)
        self._turned_away += 1
        now = self.store.clock.monotonic()
        if now - self._turned_away_logged >= TURNED_AWAY_LOG_S:
            log.warning("turned away %d device connects since the last report: %d in progress (the limit), "
                        "%d waiting, %.0f completing a second, the latest told to retry after %d s",
                        self._turned_away, self.connects.limit, self.connects.waiting, self.connects.rate(),
                        retry_after)
            self._turned_away, self._turned_away_logged = 0, now
        raise ConnectsBusy(retry_after)

    async def handle(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        """Serve the socket of the device ``principal`` (its token already checked by routing)."""
        device = self._session_device(principal)
        admission = self.admit(device["id"])
        try:
            return await self._serve(request, device, admission)
        finally:
            admission.abandon()  # the session ended before its welcome

    async def _serve(self, request: web.Request, device: Row, admission: Admission) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            compress=False,  # permessage-deflate costs ~8x memory per connection
            max_msg_size=MAX_FRAME_BYTES,
            autoping=True,
            heartbeat=None,
        )
        await ws.prepare(request)
        if not await self._prove_key(ws, device):
            return ws
        session = Session(device, ws)
        previous = self.sessions.get(session.device_id)
        if previous is not None:
            await previous.ws.close(code=CLOSE_REPLACED, message=b"replaced by a newer session")
        self.sessions[session.device_id] = session
        await self.store.record_presence(device, online=True)
        self.events.publish(device["org_id"], "presence", {"device_id": session.device_id, "online": True})
        try:
            head = await self.store.audit_head(session.device_id) or GENESIS
            await session.send(Welcome(device_id=session.device_id, audit_seq=head.seq, audit_hash=head.hash))
            admission.welcomed()
            async with asyncio.TaskGroup() as group:
                session.group = group
                self._deliver(session, redeliver=True)
                try:
                    await self._receive_loop(session)
                finally:
                    session.group = None  # nothing new starts; an audit batch being stored finishes
                    if session.delivering is not None:
                        session.delivering.cancel()
        except* (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if self.sessions.get(session.device_id) is session:
                del self.sessions[session.device_id]
                last_heartbeat = self._seen.pop(session.device_id, None)
                if last_heartbeat is not None:
                    await self.store.touch_devices({session.device_id: last_heartbeat})
                await self.store.record_presence(device, online=False, reason=str(ws.close_code))
                self.events.publish(device["org_id"], "presence", {"device_id": session.device_id, "online": False})
            if not ws.closed:
                await ws.close()
        return ws

    @staticmethod
    def _session_device(principal: Principal) -> Row:
        """What a session keeps of its device: a whole row (last telemetry, tags)
        would be held for as long as the device stays connected. Routing has just
        read the row to check the token (an active device of this org), so it is not
        read again; a revocation from here on is caught by the relay-wide watch."""
        if principal.kind != "device" or principal.public_key is None:
            raise Unauthorized("a device session needs a device token")
        return {"id": principal.subject, "org_id": principal.org_id, "public_key": principal.public_key}

    async def _prove_key(self, ws: web.WebSocketResponse, device: Row) -> bool:
        nonce = secrets.token_urlsafe(32)
        relay_signature = keys.sign(self.audit.relay_key, relay_challenge_message(device["id"], nonce))
        await ws.send_str(encode(Challenge(nonce=nonce, relay_signature=relay_signature)))
        try:
            msg = await ws.receive(timeout=AUTH_TIMEOUT_S)
            if msg.type != WSMsgType.TEXT:
                raise ProtocolError("expected an auth frame")
            auth = parse_agent_message(msg.data)
            if not isinstance(auth, Auth):
                raise ProtocolError(f"expected auth, got {auth.type}")
            keys.verify(device["public_key"], auth_message(device["id"], nonce), auth.signature)
        except (TimeoutError, ProtocolError, SignatureError) as exc:
            log.warning("device %s failed the key proof: %s", device["id"], exc)
            with contextlib.suppress(Exception):
                await ws.send_str(encode(Error(code="auth_failed", detail=f"key proof failed: {exc}")))
            await ws.close(code=CLOSE_AUTH, message=b"key proof failed")
            return False
        return True

    async def _receive_loop(self, session: Session) -> None:
        ws = session.ws
        timeout = self.settings.presence_timeout_s
        while True:
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                await ws.close(code=CLOSE_TIMEOUT, message=b"no heartbeat")
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type == WSMsgType.ERROR:
                log.info("socket of %s failed: %s", session.device_id, ws.exception())
                return
            if msg.type != WSMsgType.TEXT:
                await self._protocol_error(session, "only text frames are accepted")
                continue
            try:
                await self._dispatch(session, parse_agent_message(msg.data))
            except ProtocolError as exc:
                await self._protocol_error(session, str(exc))
            if ws.closed:
                return

    async def _protocol_error(self, session: Session, detail: str) -> None:
        session.protocol_errors += 1
        log.warning("protocol error from %s: %s", session.device_id, detail)
        await session.send(Error(code="protocol_error", detail=detail))
        if session.protocol_errors >= MAX_PROTOCOL_ERRORS:
            await session.ws.close(code=CLOSE_PROTOCOL, message=b"too many protocol errors")

    async def _dispatch(self, session: Session, message: Any) -> None:
        store = self.store
        device_id = session.device_id
        match message:
            case Heartbeat(telemetry=telemetry):
                if len(json.dumps(telemetry)) > MAX_TELEMETRY_BYTES:
                    raise ProtocolError(f"telemetry exceeds {MAX_TELEMETRY_BYTES} bytes")
                self._seen[device_id] = (store.now(), telemetry)
            case TaskReceived(task_id=task_id):
                self._received[(device_id, task_id)] = (store.now(), session.device["org_id"])
                self._have_received.set()
            case TaskResult():
                await self._store_result(session, message)
            case AuditBatch(records=records, signature=signature):
                if session.ingesting is not None and not session.ingesting.done():
                    await session.send(AuditNack(code="busy", detail="wait for the ack of the previous batch"))
                    return
                assert session.group is not None
                session.ingesting = session.group.create_task(
                    self._ingest(session, records, signature)
                )
            case Error(code=code, detail=detail):
                log.info("device %s reports %s: %s", device_id, code, detail)
            case _:
                raise ProtocolError(f"{message.type} is not expected after the handshake")

    async def _ingest(self, session: Session, records: Sequence[Mapping[str, Any]], signature: str) -> None:
        reply: AuditAck | AuditNack
        try:
            reply, session.audit_head = await self.audit.ingest_device_batch(
                session.device, records, signature, session.audit_head
            )
        except Exception as exc:  # the agent keeps its records and resends; the session lives on
            session.audit_head = None
            log.exception("audit batch from %s could not be ingested", session.device_id)
            reply = AuditNack(code="unavailable", detail=f"audit ingest failed ({type(exc).__name__}); resend later")
        if not session.ws.closed:
            await session.send(reply)
        session.ingesting = None  # a finished task is not kept for the session's life

    async def _store_result(self, session: Session, message: TaskResult) -> None:
        status = "failed" if message.status == "denied" else message.status
        result = {
            "ok": message.ok,
            "output": message.output,
            "error": message.error,
            "artifacts": [],
            "started_at": message.started_at,
            "finished_at": message.finished_at,
            "denied": message.status == "denied",
        }
        receipt = self._received.pop((session.device_id, message.task_id), None)
        outcome = await self.store.store_result(
            session.device_id, message.task_id, status, result, received_at=receipt[0] if receipt else None
        )
        if outcome == "unknown":
            await self.store.record_event(
                session.device["org_id"], "security.foreign_result",
                {"device_id": session.device_id, "task_id": message.task_id},
            )
            raise ProtocolError(f"task {message.task_id} is not a task of this device")
        await session.send(ResultAck(task_id=message.task_id))
        if outcome == "stored":
            self._publish_task(session, message.task_id, status)

    def _publish_task(self, session: Session, task_id: str, status: str) -> None:
        self.events.publish(
            session.device["org_id"], "task", {"task_id": task_id, "device_id": session.device_id, "status": status}
        )

    async def run_running_writer(self, delay_s: float = RUNNING_WRITE_DELAY_S) -> None:
        """Write the `running` state of the tasks reported received and not finished
        within ``delay_s``, in one write per round (see RUNNING_WRITE_DELAY_S)."""
        while True:
            await self._have_received.wait()
            self._have_received.clear()
            await asyncio.sleep(delay_s)
            received, self._received = self._received, {}
            if not received:
                continue
            try:
                moved = await self.store.mark_running_many(
                    [(device_id, task_id, at) for (device_id, task_id), (at, _org) in received.items()]
                )
            except Exception:  # the tasks stay dispatched; their results still settle them
                log.exception("recording %d running tasks failed", len(received))
                continue
            for device_id, task_id in moved:
                org_id = received[(device_id, task_id)][1]
                self.events.publish(org_id, "task", {"task_id": task_id, "device_id": device_id, "status": "running"})

    async def _close_revoked(self, session: Session) -> None:
        log.warning("device %s was revoked; closing its session", session.device_id)
        with contextlib.suppress(Exception):
            await session.send(Error(code="revoked", detail="device revoked by an admin"))
        await session.ws.close(code=CLOSE_REVOKED, message=b"device revoked")

    async def run_watch(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        """One loop per relay process, whatever the fleet size: every interval, one
        query finds devices revoked (by any relay) and closes their sessions here, one
        finds tasks queued by other relays and nudges their sessions, and one write
        records the heartbeats collected since the last round."""
        since = self.store.now()
        while True:
            await asyncio.sleep(interval_s)
            # Overlap the windows a little: a row committed just before `now` but
            # stamped earlier must not fall between two rounds.
            now, window_start = self.store.now(), self.store.earlier(since, interval_s)
            try:
                for device_id in await self.store.revoked_since(window_start):
                    session = self.sessions.get(device_id)
                    if session is not None:
                        await self._close_revoked(session)
                for device_id in await self.store.devices_with_new_tasks(window_start):
                    self.nudge(device_id)
                seen, self._seen = self._seen, {}
                await self.store.touch_devices(seen)
            except Exception:
                log.exception("relay watch round failed; will retry")
            since = now

    def _deliver(self, session: Session, *, redeliver: bool = False) -> None:
        """Send the session its queued tasks, in a task of its own while there are any."""
        if session.group is None:
            return  # the session is closing; the device's next one gets its tasks
        if session.delivering is not None and not session.delivering.done():
            session.more_tasks = True
            return
        session.delivering = session.group.create_task(self._deliver_rounds(session, redeliver))

    async def _deliver_rounds(self, session: Session, redeliver: bool) -> None:
        """Rounds of one read and one write, until no queued task is left. The first
        round of a session (``redeliver``) also resends what an earlier session sent
        and was never answered."""
        store = self.store
        while True:
            session.more_tasks = False
            found = await store.deliverable_tasks(session.device_id, redeliver=redeliver, limit=DELIVERY_ROUND)
            redeliver = False
            tasks = {t["id"]: t for t in found}
            sendable = await store.mark_dispatched_many(session.device_id, list(tasks)) if tasks else []
            for task_id in sendable:
                await session.send(_task_message(tasks[task_id]))
            if len(found) < DELIVERY_ROUND and not session.more_tasks:
                session.delivering = None  # a finished task is not kept for the session's life
                return


def _task_message(task: Row) -> TaskMessage:
    return TaskMessage(task=TaskSpec(
        id=task["id"], action=task["action"], params=task["params"],
        timeout_s=task["timeout_s"], expires_at=task["expires_at"],
    ))


