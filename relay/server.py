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

Starting and stopping, as an admin sees them (issue 15): the data directory is locked
to this process and the port is bound *before* anything else opens, so a relay still
running or still stopping on the same directory, or a port in use, is one line that
says what to do (:class:`RelayStartError`) and "listening" is never printed before the
socket is bound. On SIGINT/SIGTERM the listening socket closes, every agent and user
socket gets 1001 "going away" at once (``on_shutdown``, before aiohttp waits for
handlers), in-flight requests get :data:`SHUTDOWN_GRACE_S` to finish, then the
resources close: the audit records already verified are stored, and a batch not yet
acknowledged stays in its agent's outbox and is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from coact.relay.settings import Settings

log = logging.getLogger("coact.relay.server")

# How long in-flight requests may take to finish once the relay is stopping; the
# long-lived sockets are closed before this wait starts, so it is rarely used up.
SHUTDOWN_GRACE_S = 5.0
LOCK_NAME = "relay.lock"


class RelayStartError(Exception):
    """The relay cannot start; the message says why and what to do, in one line."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``DATA_DIR/relay.lock`` for this process's lifetime (the kernel lets go when
    it exits, however it exits). The embedded audit engine serves one process per
    directory, and two relays on one SQLite file would fight over its write lock."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = (data_dir / LOCK_NAME).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RelayStartError(
            f"the data directory {data_dir} is in use by relay process {holder}, still running or still "
            "stopping; stop it (or wait for it to exit), or give this relay another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the relay opens anything else."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise RelayStartError(
                f"port {port} on {host} is already in use (another relay, or another program); stop it, "
                "or choose another --port (COACT_PORT)"
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise RelayStartError(f"not allowed to listen on {host}:{port}; choose a port above 1023") from None
        raise RelayStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


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

    __slots__ = ("_sock", "_limits")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, limits: ConnectionLimits,
                 *, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._sock = sock
        self._limits = limits

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limits = self._limits
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _AdmittedProtocol(server(), limits), sock=self._sock, backlog=self._backlog,
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


async def _serve(app: web.Application, settings: Settings, sock: socket.socket,
                 on_listening: Callable[[], None]) -> None:
    runner = web.AppRunner(app, handle_signals=True, shutdown_timeout=SHUTDOWN_GRACE_S, **runner_options(settings))
    try:
        await runner.setup()  # opens the state database, keys and audit store
    except Exception as exc:
        log.debug("start-up failed", exc_info=True)
        raise RelayStartError(f"the relay could not start: {exc}") from None
    try:
        limits = ConnectionLimits(settings.max_connections_per_address, settings.max_connections)
        await LimitedTCPSite(runner, sock, limits, backlog=1024).start()
        on_listening()
        await asyncio.Event().wait()  # until SIGINT/SIGTERM (GracefulExit)
    finally:
        await runner.cleanup()


def run(app: web.Application, settings: Settings, on_listening: Callable[[], None] = lambda: None) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down gracefully (module docs).
    Raises :class:`RelayStartError` if it cannot start; ``on_listening`` is called once
    the socket accepts connections."""
    lock = lock_data_dir(settings.data_dir)
    sock = bind(settings.host, settings.port)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, settings, sock, on_listening))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError, RelayStartError):
                loop.run_until_complete(main)
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        sock.close()
        lock.close()
