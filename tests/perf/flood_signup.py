"""Other clients' latency while unauthenticated clients flood ``POST /auth/signup``.

Runs a real relay with the PRODUCTION argon2id parameters (64 MiB, t=3, p=4; not the
test harness's cheap ones), floods signups from ``--clients`` concurrent clients, each
from its own loopback address (so per-address limits do not hide the flood), and
meanwhile measures a logged-in user's ``GET /api/v1/me`` and a device's
``POST /api/v1/devices/token``. Prints one JSON object: the probes' p50/p99/max before
and during the flood, and the flood's answers by status.

    .venv/bin/python tests/perf/flood_signup.py                  # this branch, its defaults
    .venv/bin/python tests/perf/flood_signup.py --set SIGNUP_MAX_PER_ADDRESS=1000000 \\
        --set SIGNUP_MAX_PER_RELAY=1000000                       # the hashing pool alone
    .venv/bin/python tests/perf/flood_signup.py --code /tmp/base # older code: a dir whose
        # coact/ holds agent, cli, policy, relay, shared (see docs/performance.md)

The probes pause 20 ms between requests; each request opens its own connection, as
independent clients would.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from harness import PASSWORD, Relay  # noqa: E402 - needs the path above
from perfkit import summary_ms  # noqa: E402
from principals import RawDevice  # noqa: E402

PRODUCTION_ARGON2 = {"COACT_PASSWORD_TIME_COST": "3", "COACT_PASSWORD_MEMORY_KIB": "65536",
                     "COACT_PASSWORD_PARALLELISM": "4"}


def request(url: str, method: str, path: str, body: Any = None, token: str | None = None,
            source: str = "127.0.0.1") -> tuple[int, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120, source_address=(source, 0))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        answer = conn.getresponse()
        payload = answer.read()
        return answer.status, json.loads(payload) if payload else None
    finally:
        conn.close()


class Probe(threading.Thread):
    """One client doing one request over and over, timing each."""

    def __init__(self, name: str, call: Any) -> None:
        super().__init__(name=name, daemon=True)
        self.call = call
        self.samples: list[tuple[float, float, int]] = []  # (start, seconds, status)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            status = self.call()
            self.samples.append((started, time.monotonic() - started, status))
            self.stop.wait(0.02)

    def between(self, start: float, end: float) -> dict[str, Any]:
        picked = [s for s in self.samples if start <= s[0] < end]
        return {"n": len(picked), **summary_ms([s[1] for s in picked]),
                "statuses": dict(Counter(s[2] for s in picked))}


def flood(url: str, source: str, stop: threading.Event, statuses: Counter[int], lock: threading.Lock) -> None:
    while not stop.is_set():
        body = {"email": f"flood-{uuid.uuid4().hex}@example.com", "password": PASSWORD}
        try:
            status, _ = request(url, "POST", "/api/v1/auth/signup", body, source=source)
        except OSError:
            status = 0  # refused or reset
        with lock:
            statuses[status] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent flooding clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="flood duration")
    parser.add_argument("--quiet-seconds", type=float, default=4.0, help="probing before the flood")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a relay setting, e.g. SIGNUP_MAX_PER_RELAY=1000000 (becomes COACT_NAME)")
    parser.add_argument("--code", type=Path, help="run the relay from this code root instead (PYTHONPATH)")
    args = parser.parse_args()

    env = dict(PRODUCTION_ARGON2) | {"COACT_LOG_LEVEL": "WARNING"}
    for item in args.set:
        name, _, value = item.partition("=")
        env[f"COACT_{name.upper()}"] = value
    if args.code:
        env["PYTHONPATH"] = str(args.code.resolve())
    with tempfile.TemporaryDirectory(prefix="flood-") as work:
        relay = Relay(Path(work) / "data", env=env)
        relay.start()
        try:
            print(json.dumps(run(relay, args), indent=2))
        finally:
            relay.stop()


def run(relay: Relay, args: argparse.Namespace) -> dict[str, Any]:
    url = relay.url
    email = f"probe-{uuid.uuid4().hex[:10]}@example.com"
    status, _ = request(url, "POST", "/api/v1/auth/signup", {"email": email, "password": PASSWORD}, source="127.0.9.1")
    assert status in (201, 202), status
    status, tokens = request(url, "POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD},
                             source="127.0.9.1")
    assert status == 200, tokens
    token = tokens["access_token"]
    device = RawDevice(url, relay.api(token))

    probes = [
        Probe("me", lambda: request(url, "GET", "/api/v1/me", token=token, source="127.0.9.2")[0]),
        Probe("device_token", lambda: request(url, "POST", "/api/v1/devices/token", device.token_request(),
                                              source="127.0.9.3")[0]),
    ]
    for probe in probes:
        probe.start()
    quiet_start = time.monotonic()
    time.sleep(args.quiet_seconds)
    flood_start = time.monotonic()
    stop, lock, statuses = threading.Event(), threading.Lock(), Counter[int]()
    flooders = [threading.Thread(target=flood, args=(url, f"127.1.{n // 250}.{n % 250 + 1}", stop, statuses, lock),
                                 daemon=True) for n in range(args.clients)]
    for thread in flooders:
        thread.start()
    time.sleep(args.seconds)
    flood_end = time.monotonic()
    stop.set()
    for probe in probes:
        probe.stop.set()
    for thread in [*flooders, *probes]:
        thread.join(120)
    return {
        "clients": args.clients, "seconds": args.seconds, "settings": args.set, "code": str(args.code or "this tree"),
        "signup_answers": dict(sorted(statuses.items())),
        "quiet": {p.name: p.between(quiet_start, flood_start) for p in probes},
        "flood": {p.name: p.between(flood_start, flood_end) for p in probes},
    }


if __name__ == "__main__":
    main()
