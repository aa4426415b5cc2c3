"""Shared plumbing of the benchmarks in ``tests/perf``: a real relay, the fleet
simulator as a subprocess, the floors each benchmark is compared with, and the
results table of ``docs/performance.md``.

Every benchmark measures its floor in the same run and reports a ratio, because the
absolute speed of a shared 2-core machine varies from minute to minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import psutil

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import harness  # noqa: E402 - needs the path above when run as a script

PERF_DOC = ROOT / "docs" / "performance.md"
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"
PY = sys.executable
QUIET_ENV = {"COACT_LOG_LEVEL": "WARNING"}


# -- numbers -------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max of durations in seconds, as milliseconds."""
    return {f"p{int(q * 100)}_ms": round(pct(values, q) * 1000, 3) for q in (0.5, 0.95, 0.99)} | {
        "max_ms": round(max(values) * 1000, 3) if values else float("nan"),
        "mean_ms": round(statistics.fmean(values) * 1000, 3) if values else float("nan"),
    }


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def machine() -> str:
    ram = psutil.virtual_memory().total / 2**30
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f"{os.cpu_count()} cores (`nproc`), {ram:.0f} GB RAM, `ulimit -n` {soft}, Python {platform.python_version()}"


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def record(bench: str, figure: str, floor: str, ratio: str, target: str, command: str, *, write: bool) -> None:
    """Print the row of ``bench`` for the results table of docs/performance.md and, with
    ``write`` (a benchmark's ``--record``), put it there in place of the old one. A run
    that was not asked to rewrite the docs never does."""
    row = f"| {bench} | {figure} | {floor} | {ratio} | {target} | `{command}` | {machine()} | {today()} |"
    print(row)
    if not write:
        return
    text = PERF_DOC.read_text() if PERF_DOC.exists() else f"{RESULTS_START}\n{RESULTS_END}\n"
    head, _, rest = text.partition(RESULTS_START)
    table, _, tail = rest.partition(RESULTS_END)
    lines = [line for line in table.strip("\n").splitlines() if line.strip()]
    header = [
        "| benchmark | Coact | floor (same run) | ratio | target | command | machine | date |",
        "|---|---|---|---|---|---|---|---|",
    ]
    body = [line for line in lines if line not in header and not line.startswith(f"| {bench} |")]
    body.append(row)
    body.sort()
    PERF_DOC.write_text(head + RESULTS_START + "\n" + "\n".join(header + body) + "\n" + RESULTS_END + tail)


def add_record_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", action="store_true",
                        help="write this run's row into docs/performance.md (without it the row is only printed)")


Bench = TypeVar("Bench", bound=Callable[..., Any])


def temporary_workdir(prefix: str) -> Callable[[Bench], Bench]:
    """Run the benchmark in a fresh temporary ``workdir`` removed when it ends, unless the
    caller names one (``--workdir``, or a test's tmp_path), which is left for them."""

    def decorate(bench: Bench) -> Bench:
        @functools.wraps(bench)
        def wrapper(*args: Any, workdir: Path | None = None, **kwargs: Any) -> Any:
            if workdir is not None:
                return bench(*args, workdir=workdir, **kwargs)
            with tempfile.TemporaryDirectory(prefix=prefix) as made:
                return bench(*args, workdir=Path(made), **kwargs)

        return cast(Bench, wrapper)

    return decorate


# -- processes -------------------------------------------------------------------------


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def start_relay(workdir: Path, *, database_url: str | None = None, env: Mapping[str, str] | None = None) -> harness.Relay:
    relay = harness.Relay(workdir / "relay", database_url=database_url, env={**QUIET_ENV, **(env or {})})
    relay.start()
    return relay


def relay_process(relay: harness.Relay) -> psutil.Process:
    """The relay's Python process (the harness starts it directly, no wrapper)."""
    assert relay.proc is not None
    return psutil.Process(relay.proc.pid)


def anonymous_bytes(pid: int) -> int:
    """A process's anonymous memory (heap, arenas, stacks: ``Anonymous`` in
    /proc/PID/smaps_rollup). Unlike RSS it leaves out pages of mapped files, which
    come and go with this machine's page cache: the relay maps the embedded
    ClickHouse engine's ~500 MB library, and how much of it counts as resident
    varied by 100 MB between otherwise identical runs."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Anonymous line in /proc/{pid}/smaps_rollup")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (simulator workers)."""
    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def thread_cpu(pid: int) -> Counter[str]:
    """CPU seconds (user + system) per kind of thread of a live process, by thread
    name without its number (``BgSchPool3`` -> ``BgSchPool``), the main thread as
    ``main``. It shows what py-spy cannot: the embedded ClickHouse engine's own native
    threads (Python's worker threads all carry the interpreter's name, ``python``). A
    thread that ends between two readings takes its time with it, so compare readings
    of one phase."""
    tick = os.sysconf("SC_CLK_TCK")
    out: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, ... utime is the 12th
        kind = "main" if task.name == str(pid) else name.rstrip("0123456789_-") or name
        out[kind] += (int(fields[11]) + int(fields[12])) / tick
    return out


def login(relay: harness.Relay) -> tuple[harness.Api, str]:
    """A fresh org's admin: the API client and the email (the password is harness.PASSWORD)."""
    api, user = relay.new_admin()
    return api, user["email"]


def sim_env(api: harness.Api) -> dict[str, str]:
    """Credentials for ``coact sim``: the admin's token, and the password to renew it."""
    return {"COACT_SIM_TOKEN": api.token or "", "COACT_SIM_PASSWORD": harness.PASSWORD}


class SimProcess:
    """``coact sim --output json`` in a subprocess; its progress lines are collected."""

    def __init__(self, relay: harness.Relay, api: harness.Api, email: str, agents: int, *args: str,
                 log: Path | None = None) -> None:
        self.argv = harness.coact_command(
            "sim", "--relay", relay.url, "--email", email, "--agents", str(agents), "--output", "json", *args,
        )
        self.progress: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        self._log = (log or Path(os.devnull)).open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **harness.TEST_ENV, **sim_env(api)},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def command(self) -> str:
        return "coact " + " ".join(self.argv[3:])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if item.get("type") == "summary":
                self.summary = item
            else:
                self.progress.append(item)

    @property
    def latest(self) -> dict[str, Any]:
        return self.progress[-1] if self.progress else {}

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.progress and predicate(self.latest):
                return self.latest
            if self.proc.poll() is not None:
                self._reader.join(5)
                if self.progress and predicate(self.latest):
                    return self.latest
                raise AssertionError(f"sim exited ({self.proc.returncode}) before {what}: {self.latest}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}: {self.latest}")

    def stop_when_done(self, timeout: float) -> dict[str, Any]:
        """Wait for a sim that stops by itself (``--duration``, ``--stop-when-drained``)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        return self.stop()

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.summary or self.latest


# -- floors ---------------------------------------------------------------------------

FLOOR_SERVER = Path(__file__).with_name("floor_server.py")


class FloorServer:
    """A bare aiohttp WebSocket echo server in its own process (see floor_server.py)."""

    def __init__(self) -> None:
        self.port = harness.free_port()
        self.proc = subprocess.Popen([PY, str(FLOOR_SERVER), str(self.port)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.process = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def anonymous(self) -> int:
        return anonymous_bytes(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def ws_echo_floor(url: str, round_trips: int = 2000, parallel: int = 64) -> dict[str, float]:
    """Sequential round-trip latency and parallel round trips/s against a bare echo server."""
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, ping_interval=None) as ws:
        samples = []
        for _ in range(round_trips):
            start = time.perf_counter()
            await ws.send("x" * 64)
            await ws.recv()
            samples.append(time.perf_counter() - start)
    per_conn = max(1, round_trips // parallel)

    async def worker() -> None:
        async with connect(url, compression=None, ping_interval=None) as ws:
            for _ in range(per_conn):
                await ws.send("x" * 64)
                await ws.recv()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    elapsed = time.perf_counter() - start
    return {**summary_ms(samples), "round_trips_per_s": round(per_conn * parallel / elapsed, 1)}


async def hold_idle(url: str, count: int, rate: float = 2000.0) -> list[Any]:
    """Open ``count`` idle WebSocket connections (the same client library the agent uses)."""
    from websockets.asyncio.client import connect

    sockets: list[Any] = []
    sem = asyncio.Semaphore(200)

    async def one() -> None:
        async with sem:
            sockets.append(await connect(url, compression=None, ping_interval=None, open_timeout=60))

    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)
    return sockets


def ed25519_verify_floor(n: int = 5000) -> float:
    """Seconds per raw Ed25519 verify (cryptography), no Coact code in between."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = b"x" * 120
    signature = key.sign(message)
    start = time.perf_counter()
    for _ in range(n):
        public.verify(signature, message)
    return (time.perf_counter() - start) / n


def sqlite_commit_floor(path: Path, commits: int = 500) -> dict[str, float]:
    """Raw sqlite3 commits of one small row, WAL and ``synchronous=FULL`` as the
    agent's database: what one write that waits for this machine's disk costs."""
    import sqlite3

    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, body TEXT)")
        times: list[float] = []
        for _ in range(commits):
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO floor (body) VALUES (?)", ("x" * 300,))
            conn.execute("COMMIT")
            times.append(time.perf_counter() - start)
        return summary_ms(times)
    finally:
        conn.close()


def chdb_insert_floor(rows: Sequence[Sequence[Any]], batch: int, path: Path) -> float:
    """Rows/s of raw clickhouse-connect inserts into chDB, same table shape as the relay's."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    try:
        client.command("CREATE DATABASE IF NOT EXISTS floor")
        client.command(
            "CREATE TABLE IF NOT EXISTS floor.audit_records (org_id LowCardinality(String), device_id String, "
            "seq UInt64, ts String, kind LowCardinality(String), task_id Nullable(String), data String, "
            "prev_hash String, hash String, received_at DateTime64(6, 'UTC') DEFAULT now64(6)) "
            "ENGINE = ReplacingMergeTree ORDER BY (org_id, device_id, seq)"
        )
        columns = ["org_id", "device_id", "seq", "ts", "kind", "task_id", "data", "prev_hash", "hash"]
        data = [list(column) for column in zip(*rows, strict=True)]  # columns, as the relay hands them over
        start = time.perf_counter()
        for offset in range(0, len(rows), batch):
            client.insert("floor.audit_records", [column[offset:offset + batch] for column in data],
                          column_names=columns, column_oriented=True)
        return len(rows) / (time.perf_counter() - start)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- profiles and PostgreSQL ------------------------------------------------------------


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the relay for ``seconds``: collapsed stacks in ``out`` (see top_frames)."""
    spy = Path(PY).with_name("py-spy")
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
         "--format", "raw", "--threads", "--nonblocking", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _frame_name(frame: str) -> str:
    """``func (/long/path/file.py:12)`` -> ``func (file.py)``."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1].rstrip(')')})" if where else func


def top_frames(raw: Path, n: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Event-loop thread only: self time (leaf frames) and inclusive time of Coact frames, in % of its samples."""
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not frames[0].endswith("MainThread"):
            continue  # the event loop is what saturates; worker threads mostly wait
        if frames and "idle" in frames[-1].lower():
            continue
        names = [_frame_name(f) for f in frames]
        total += count
        leaf = names[-1]
        self_time[leaf] = self_time.get(leaf, 0) + count
        for name in set(names):
            if "coact" in name or any(m in name for m in ("hub.py", "storage.py", "audit", "tasks.py", "routing.py")):
                inclusive[name] = inclusive.get(name, 0) + count
    def top(table: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 1)) for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:n]]
    return {"self": top(self_time), "inclusive": top(inclusive), "samples": [("total", float(total))]}


def create_pg_database() -> tuple[str, Callable[[], None]]:
    """A fresh database on the test PostgreSQL server; returns its URL and a dropper."""
    import secrets

    import psycopg

    name = f"coact_bench_{secrets.token_hex(4)}"

    def run(sql: str) -> None:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
            conn.execute(sql)

    run(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop
