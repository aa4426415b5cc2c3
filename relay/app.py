"""The relay application factory: ``create_app(settings) -> web.Application``.

Resources (state database, audit store, keys) are opened in ``cleanup_ctx`` and the
background loops (audit forwarder, task sweeper) are owned by it: they start with the
app and are cancelled and awaited when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from coact.relay.api import admin as admin_api
from coact.relay.api import audit as audit_api
from coact.relay.api import auth as auth_api
from coact.relay.api import devices as devices_api
from coact.relay.api import meta as meta_api
from coact.relay.api import stream as stream_api
from coact.relay.api import tasks as tasks_api
from coact.relay.api.context import SERVICES
from coact.relay.audit import AuditPipeline
from coact.relay.audit_store import AuditStore
from coact.relay.events import EventBus
from coact.relay.headers import setup as setup_security_headers
from coact.relay.hub import Hub
from coact.relay.keyring import KeyRing
from coact.relay.openapi import build_openapi
from coact.relay.problems import problem_middleware
from coact.relay.routing import BODY_TIMEOUT, Access, Principal, Route, RouteTable, install
from coact.relay.services import (
    Services,
    email_refusals,
    login_limits,
    password_pool,
    signup_limits,
    task_quotas,
    token_issuer,
)
from coact.relay.settings import Settings
from coact.relay.storage import Store
from coact.shared.canonical import use_orjson
from coact.shared.clock import Clock, SystemClock
from coact.shared.gcpolicy import settle_long_lived_objects
from coact.shared.keys import public_key_b64

log = logging.getLogger("coact.relay")

VERSION = "0.1.0"
ROUTE_TABLES: list[RouteTable] = [
    meta_api.routes, auth_api.routes, devices_api.routes, tasks_api.routes, audit_api.routes,
    stream_api.routes, admin_api.routes,
]
ROUTES: web.AppKey[list[Route]] = web.AppKey("routes", list)


async def _sweeper(svc: Services) -> None:
    while True:
        try:
            for task in await svc.store.sweep_tasks():
                svc.events.publish(task["org_id"], "task", {"task_id": task["id"], "device_id": task["device_id"], "status": task["status"]})
        except Exception:
            log.exception("task sweep failed; will retry")
        await asyncio.sleep(svc.settings.sweep_interval_s)


def create_app(settings: Settings, clock: Clock | None = None) -> web.Application:
    clock = clock or SystemClock()
    app = web.Application(middlewares=[problem_middleware], client_max_size=settings.max_body_bytes)
    routes = install(app, ROUTE_TABLES, _authenticate)
    app[ROUTES] = routes
    app[BODY_TIMEOUT] = settings.http_body_timeout_s
    setup_security_headers(app)
    stream_api.setup(app)
    app[meta_api.OPENAPI] = build_openapi(routes, VERSION, settings.effective_public_url)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keyring = await asyncio.to_thread(KeyRing.load_or_create, settings.data_dir / "keys" / "tokens", clock)
        # A separate, never-rotated key: the relay identity agents pin and the signer of
        # the relay's own audit chains.
        identity = await asyncio.to_thread(KeyRing.load_or_create, settings.data_dir / "keys" / "identity", clock)
        identity_key = identity.active().private_key
        store = await Store.open(settings.effective_database_url, clock, settings.relay_id, public_key_b64(identity_key))
        sink = await asyncio.to_thread(AuditStore.open, settings.effective_audit_url)
        await asyncio.to_thread(sink.ensure_schema)
        audit = AuditPipeline(store, sink, identity_key, interval_s=settings.audit_insert_interval_s)
        events = EventBus(settings.event_stream_buffer_bytes)
        passwords = await asyncio.to_thread(password_pool, settings, clock)  # hashes its dummy once
        svc = Services(
            settings=settings, clock=clock, store=store, keyring=keyring,
            issuer=token_issuer(settings, keyring, clock), passwords=passwords,
            events=events, audit=audit, hub=Hub(store, audit, events, settings),
            login_limits=login_limits(settings, clock), signup_limits=signup_limits(settings, clock),
            email_refusals=email_refusals(settings, clock), task_quotas=task_quotas(settings, clock),
        )
        app[SERVICES] = svc
        inserter = asyncio.create_task(audit.run_inserter(), name="audit-inserter")
        loops = [
            asyncio.create_task(audit.run_forwarder(settings.audit_flush_interval_s), name="audit-forwarder"),
            asyncio.create_task(_sweeper(svc), name="task-sweeper"),
            asyncio.create_task(svc.hub.run_watch(), name="relay-watch"),
            asyncio.create_task(svc.hub.run_running_writer(), name="running-writer"),
        ]
        settle_long_lived_objects()  # see coact.shared.gcpolicy
        use_orjson()  # audit records are hashed by the million here (decision 41)
        try:
            yield
        finally:
            await svc.hub.close_all()
            await _stop(loops)
            # Last events (logouts, offline devices) go to ClickHouse before the inserter stops.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(audit.forward_relay_events(), 10)
            await _stop([inserter])
            await store.close()
            await asyncio.to_thread(sink.close)
            passwords.close()

    app.cleanup_ctx.append(resources)
    # Agents' sockets are closed when shutdown starts, not at cleanup: aiohttp waits for
    # every handler to return before it cleans up, and an agent's lasts as long as its
    # connection (a connected agent once held a stopping relay 70 s, issue 15).
    app.on_shutdown.append(_close_agent_sockets)
    return app


async def _close_agent_sockets(app: web.Application) -> None:
    if SERVICES in app:
        await app[SERVICES].hub.close_all()


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _authenticate(request: web.Request, access: Access) -> Principal | None:
    return await request.app[SERVICES].authenticate(request, access)
