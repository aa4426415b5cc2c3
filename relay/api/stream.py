"""The user event stream: ``GET /api/v1/ws``, a WebSocket of the caller's org's live
events (task state changes, device presence), for dashboards and ``coact`` watchers.

Browsers cannot set headers on a WebSocket, so besides ``Authorization: Bearer`` the
token may come as the subprotocol pair ``Sec-WebSocket-Protocol: bearer, <token>``
(``coact.relay.services.bearer_token``). A browser attaches whatever it holds to a
cross-site upgrade, so the ``Origin`` header is checked against an allowlist *before*
the upgrade — the cross-site WebSocket hijacking of MeshCentral CVE-2024-26135.

The stream is one-way: a client data frame closes it (4400). It also ends when the
access token expires (4401: reconnect with a fresh one) or the account is disabled
(4403), which is re-checked every ``RECHECK_S``. One account has at most
``event_streams_per_user`` streams open (429 past that), each holding at most
``event_stream_buffer_bytes`` of unsent events (coact.relay.events).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from coact.relay.api.context import services
from coact.relay.errors import Forbidden, TooManyRequests
from coact.relay.routing import ANY_USER, Call, RouteTable
from coact.relay.services import BEARER_SUBPROTOCOL, bearer_token
from coact.relay.settings import Settings

routes = RouteTable("notifications")
STREAMS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("user_streams", set)
OPEN_BY_USER: web.AppKey[Counter[str]] = web.AppKey("user_streams_by_user", Counter)

CLOSE_PROTOCOL = 4400
CLOSE_EXPIRED = 4401
CLOSE_DISABLED = 4403
RECHECK_S = 15.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` lower-cased, default port dropped; None if not an origin."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    suffix = f":{port}" if port is not None and port != _DEFAULT_PORTS[parts.scheme] else ""
    return f"{parts.scheme}://{host}{suffix}"


def origin_allowed(origin: str | None, settings: Settings) -> bool:
    """No Origin (a non-browser client) or the relay's own or an allowlisted origin.

    ``null`` (sandboxed frames, file: pages) and anything unparsable are refused.
    """
    if origin is None:
        return True
    given = normalize_origin(origin)
    if given is None:
        return False
    allowed = {normalize_origin(settings.effective_public_url)}
    allowed.update(normalize_origin(o) for o in settings.allowed_origins)
    return given in allowed


@routes.route("GET", "/api/v1/ws", access=ANY_USER, content_type="websocket",
              summary="The user event stream: live task and presence events of the caller's org (WebSocket)",
              errors=(401, 403, 429))
async def user_stream(call: Call) -> web.StreamResponse:
    svc = services(call.request)
    request = call.request
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, svc.settings):
        raise Forbidden(f"origin {origin!r} may not open the event stream; see the allowed_origins setting",
                        code="origin_not_allowed")
    token = bearer_token(request)
    assert token is not None  # bind() authenticated this request with it
    claims = svc.issuer.verify(token, "user")
    user = call.user
    # Only echo the subprotocol (never the token) when the client chose that way in.
    protocols = (BEARER_SUBPROTOCOL,) if "Authorization" not in request.headers else ()
    ws = web.WebSocketResponse(protocols=protocols, compress=False, max_msg_size=4096, heartbeat=30)
    # Subscribe before the upgrade completes: an event published after the client sees
    # the 101 is never missed.
    open_by_user = request.app[OPEN_BY_USER]
    if open_by_user[user.subject] >= svc.settings.event_streams_per_user:
        raise TooManyRequests(f"this account already has {open_by_user[user.subject]} event streams open "
                              "(event_streams_per_user); close one first", retry_after=int(RECHECK_S))
    subscriber = svc.events.subscribe(user.org_id)
    open_by_user[user.subject] += 1
    streams = request.app[STREAMS]
    try:
        await ws.prepare(request)
        streams.add(ws)
        reader = asyncio.create_task(_refuse_client_frames(ws))
        try:
            while not ws.closed:
                remaining = (claims.expires_at - svc.clock.now()).total_seconds()
                if remaining <= 0:
                    await ws.close(code=CLOSE_EXPIRED, message=b"access token expired")
                    break
                waiting = asyncio.create_task(subscriber.ready())
                done, _ = await asyncio.wait(
                    {reader, waiting}, timeout=min(RECHECK_S, remaining), return_when=asyncio.FIRST_COMPLETED
                )
                if waiting in done:
                    # Everything waiting goes out on one wake-up: a fan-out publishes
                    # thousands of events in a burst, and woken once per event the
                    # stream fell behind its own queue (issue 21).
                    for text in subscriber.take():
                        await ws.send_str(text)
                    continue
                waiting.cancel()
                if reader in done:
                    break
                account = await svc.store.user_by_id(user.org_id, user.subject)
                if account is None or account["disabled"]:
                    await ws.close(code=CLOSE_DISABLED, message=b"account disabled")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    finally:
        svc.events.unsubscribe(user.org_id, subscriber)
        open_by_user[user.subject] -= 1
        if not open_by_user[user.subject]:
            del open_by_user[user.subject]
        streams.discard(ws)
    return ws


async def _refuse_client_frames(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            await ws.close(code=CLOSE_PROTOCOL, message=b"this stream accepts no messages")
            return


async def _close_streams(app: web.Application) -> None:
    streams = app[STREAMS]
    for ws in list(streams):
        await ws.close(code=1001, message=b"relay shutting down")


def setup(app: web.Application) -> None:
    """Keep track of open streams so that shutdown closes them rather than waiting."""
    app[STREAMS] = set()
    app[OPEN_BY_USER] = Counter()
    app.on_shutdown.append(_close_streams)
