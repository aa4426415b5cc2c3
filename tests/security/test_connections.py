"""Idle, dripping and too many sockets cannot exhaust the relay (issue 14 item 5),
against a real relay process with real sockets from chosen loopback addresses.

Nothing here measures time: each test waits for the relay's reaction (a close, an
answer) to something that would otherwise go on far longer than the wait.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from harness import Relay, wait_for

ENV = {"COACT_MAX_CONNECTIONS_PER_ADDRESS": "5", "COACT_HTTP_IDLE_TIMEOUT_S": "5", "COACT_HTTP_BODY_TIMEOUT_S": "3"}
# Far longer than the relay's timeouts: a socket still open after it is a failure.
PATIENCE_S = 60


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    server = Relay(tmp_path_factory.mktemp("conns") / "data", env=ENV)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(relay: Relay, source: str) -> socket.socket:
    parts = urlsplit(relay.url)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=PATIENCE_S,
                                    source_address=(source, 0))
    return sock


def get_ready(relay: Relay, source: str) -> bytes:
    with connect(relay, source) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_connections_over_the_per_address_cap_are_closed_and_others_are_served(relay: Relay) -> None:
    idle = [connect(relay, "127.0.6.1") for _ in range(5)]
    try:
        wait_for(lambda: get_ready(relay, "127.0.6.1") == b"", what="the 6th socket from one address to be closed")
        assert get_ready(relay, "127.0.0.1").startswith(b"HTTP/1.1 200")
        assert get_ready(relay, "127.0.6.2").startswith(b"HTTP/1.1 200")
    finally:
        idle.pop().close()
    # A slot freed is usable again.
    wait_for(lambda: get_ready(relay, "127.0.6.1").startswith(b"HTTP/1.1 200"), what="a freed slot")
    for sock in idle:
        sock.close()


def test_an_idle_socket_is_closed(relay: Relay) -> None:
    with connect(relay, "127.0.7.1") as sock:
        assert read_all(sock) == b""  # closed by the relay, nothing sent


def test_a_socket_dripping_its_request_head_is_closed(relay: Relay) -> None:
    head = b"GET /readyz HTTP/1.1\r\nHost: relay\r\n" + b"".join(b"X-Drip-%d: x\r\n" % n for n in range(200))
    with connect(relay, "127.0.7.2") as sock:
        sock.settimeout(0.5)
        sent = 0
        closed = False
        for byte in head:  # 0.5 s a byte: about 20 minutes for the whole head
            try:
                sock.sendall(bytes([byte]))
                sent += 1
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed
        assert sent < len(head)


def test_a_dripped_body_gets_408_and_the_connection_closes(relay: Relay) -> None:
    body = b'{"email": "nobody@example.com", "password": "' + b"x" * 900 + b'"}'
    head = (b"POST /api/v1/auth/login HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with connect(relay, "127.0.7.3") as sock:
        sock.sendall(head + body[:10])
        sock.settimeout(0.5)
        answer = b""
        for byte in body[10:]:
            try:
                sock.sendall(bytes([byte]))
                answer += sock.recv(65536)
                if answer:
                    break
            except TimeoutError:
                continue
        sock.settimeout(PATIENCE_S)
        answer += read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"application/problem+json" in answer
