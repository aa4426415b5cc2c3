"""Serving the relay app over TCP with bounds on connections, not only on requests.

``web.run_app`` keeps an idle socket 75 s and accepts as many as the process has file
descriptors: a few thousand idle or header-dripping sockets from one address ran the
relay out of them (``EMFILE``) and nobody else could connect (issue 14). Here:

* :class:`ConnectionLimits` (pure) admits at most ``per_address`` open connections
  from one client address and ``total`` overall; a connection over either is closed
  the moment it is accepted, before aiohttp sees it.
* ``http_idle_timeout_s`` is aiohttp's keep-alive timeout, which also bounds how long
  a connection may take to send a complete request head: aiohttp arms it when the
  connection is made and re-arms it only after a response, so bytes dripped into a
  header do not extend it (slowloris).
* The request head is bounded (line, field and header count); the body's read time
  is bounded in :mod:`coact.relay.routing`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

from aiohttp import web

from coact.relay.settings import Settings


class ConnectionLimits:
    """Open connections per client address and in all, counted at accept and close."""

    def __init__(self, per_address: int, total: int) -> None:
        if per_address < 1 or total < 1:
            raise ValueError("per_address and total must be at least 1")
        self.per_address = per_address
        self.total = total
        self._open: Counter[str] = Counter()
        self._count = 0

    def admit(self, address: str) -> bool:
        if self._count >= self.total or self._open[address] >= self.per_address:
            return False
        self._open[address] += 1
        self._count += 1
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]
        self._count -= 1

    def open_from(self, address: str) -> int:
        return self._open[address]

    def __len__(self) -> int:
        return self._count


class _AdmittedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the admission check."""

    def __init__(self, inner: asyncio.Protocol, limits: ConnectionLimits) -> None:
        self._inner = inner
        self._limits = limits
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._limits.admit(address):
            transport.close()  # no response: an answer would cost what the cap saves
            return
        self._address = address
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return
        self._limits.release(self._address)
        self._address = None
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._address is not None else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LimitedTCPSite(web.BaseSite):
    """A TCP site whose connections pass :class:`ConnectionLimits` first."""

    __slots__ = ("_host", "_port", "_limits")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits,
                 *, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limits = limits

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limits = self._limits
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _AdmittedProtocol(server(), limits), self._host, self._port,
            backlog=self._backlog, reuse_address=True,
        )


def runner_options(settings: Settings) -> dict[str, Any]:
    """aiohttp's per-connection options from the settings."""
    return {
        "keepalive_timeout": settings.http_idle_timeout_s,
        "max_line_size": 8190,
        "max_field_size": 8190,
        "max_headers": 100,
        "access_log": None,
    }


async def _serve(app: web.Application, settings: Settings) -> None:
    runner = web.AppRunner(app, handle_signals=True, **runner_options(settings))
    await runner.setup()
    try:
        limits = ConnectionLimits(settings.max_connections_per_address, settings.max_connections)
        await LimitedTCPSite(runner, settings.host, settings.port, limits, backlog=1024).start()
        await asyncio.Event().wait()  # until SIGINT/SIGTERM (GracefulExit)
    finally:
        await runner.cleanup()


def run(app: web.Application, settings: Settings) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down gracefully (as run_app does)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, settings))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
