"""The relay's state writes per task, in one process: no network, no simulator.

Every task costs the relay two writes through the group-commit writer: the create
(device check, task row, ``task.created`` event) and the result (state check,
compare-and-set, ``task.state`` event). This runs ``--tasks`` of them, 64 at a time,
against a real SQLite (or PostgreSQL) store and prints:

* time and process CPU per task (they move with this shared machine's speed);
* with ``--callgrind``, CPU instructions per task counted by valgrind: the same
  figure on every run of the same code, so it shows a change of a few per cent that
  the timings hide. It runs the workload twice under valgrind (N and 2N tasks) and
  divides the difference, so start-up and imports cancel out (about a minute).

Floor, same run: the same rows written with the standard library's ``sqlite3``, two
transactions per task, no SQLAlchemy, no events.

With ``--connects``, ``--tasks`` device connects instead: the state calls the relay
makes for one (token nonce, device lookup, presence, audit head, deliverable tasks),
printed as CPU and, with ``--callgrind``, instructions per connect (not recorded in
the table; docs/performance.md quotes it).

    .venv/bin/python tests/perf/bench_store.py --tasks 3000
    .venv/bin/python tests/perf/bench_store.py --tasks 200 --callgrind
    .venv/bin/python tests/perf/bench_store.py --connects --tasks 200 --callgrind
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from perf import perfkit  # noqa: E402

from coact.relay.storage import Store  # noqa: E402
from coact.shared import keys  # noqa: E402
from coact.shared.canonical import use_orjson  # noqa: E402
from coact.shared.clock import SystemClock  # noqa: E402

CONCURRENCY = 64
RESULT = {"ok": True, "output": {"bytes": 2}, "error": None, "artifacts": [], "denied": False}


async def _store_with_device(url: str) -> tuple[Store, dict[str, Any], dict[str, Any]]:
    """A fresh store (codecs as the relay sets them at start) with an org, its admin
    and one enrolled device (the three writes count as three relay events)."""
    use_orjson()
    store = await Store.open(url, SystemClock(), f"rly_{secrets.token_hex(6)}",
                             keys.public_key_b64(Ed25519PrivateKey.generate()))
    try:
        user = await store.create_org_with_admin(f"bench-{secrets.token_hex(4)}@example.com", "hash", "bench")
        code = secrets.token_hex(32)
        await store.create_enrollment_code(user["org_id"], user["id"], code, [], ttl_s=600)
        device = await store.enroll_device(code, "bench", "linux", secrets.token_hex(16))
    except BaseException:
        await store.close()
        raise
    return store, user, device


async def _workload(url: str, tasks: int, check: bool) -> dict[str, Any]:
    """Create ``tasks`` dispatched tasks and store a result for each; return timings
    and, with ``check``, what the store holds afterwards."""
    store, user, device = await _store_with_device(url)
    try:
        gate = asyncio.Semaphore(CONCURRENCY)
        outcomes: list[str] = []

        async def one() -> None:
            async with gate:
                task = await store.create_task(
                    org_id=user["org_id"], device_id=device["id"], action="file.write",
                    params={"path": "/tmp/x", "content": "hi"}, risk={"level": "low", "score": 1},
                    status="dispatched", created_by=user["id"], timeout_s=60.0, expires_at=store.later(3600),
                )
                now = store.now()
                outcomes.append(await store.store_result(
                    device["id"], task["id"], "succeeded", {**RESULT, "started_at": now, "finished_at": now},
                    received_at=now,
                ))

        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one() for _ in range(tasks)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        result = {"tasks": tasks, "stored": outcomes.count("stored"),
                  "us_per_task": round(wall / tasks * 1e6, 1), "cpu_us_per_task": round(cpu / tasks * 1e6, 1)}
        if check:
            result["succeeded"] = len(await store.list_tasks(
                user["org_id"], device_id=None, status="succeeded", limit=tasks + 1, cursor=None))
            chain_id = store.relay_chain_id(user["org_id"])
            result["relay_events"] = sum(1 for row in await store.pending_relay_events(10 * tasks + 10)
                                         if row["chain_id"] == chain_id)
    finally:
        await store.close()
    return result


async def _connect_workload(url: str, connects: int, check: bool) -> dict[str, Any]:
    """The state-database work of ``connects`` device connects, as the relay does it
    for one (``--connects``): the token request (device lookup, nonce spent), the
    WebSocket upgrade (the device lookup that checks its token), presence, the
    session's audit head and its deliverable tasks."""
    store, user, device = await _store_with_device(url)
    try:
        org_id, device_id = user["org_id"], device["id"]
        gate = asyncio.Semaphore(CONCURRENCY)
        spent: list[bool] = []

        async def one() -> None:
            async with gate:
                await store.device_unscoped(device_id)
                spent.append(await store.spend_device_nonce(device_id, secrets.token_hex(16), 600))
                await store.device_unscoped(device_id)
                await store.record_presence(device, online=True)
                await store.audit_head(device_id)
                await store.deliverable_tasks(device_id, redeliver=True)

        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one() for _ in range(connects)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        result = {"connects": connects, "nonces_spent": spent.count(True),
                  "us_per_connect": round(wall / connects * 1e6, 1), "cpu_us_per_connect": round(cpu / connects * 1e6, 1)}
        if check:
            chain_id = store.relay_chain_id(org_id)
            result["relay_events"] = sum(1 for row in await store.pending_relay_events(10 * connects + 10)
                                         if row["chain_id"] == chain_id)
    finally:
        await store.close()
    return result


def run(tasks: int, url: str | None = None, *, check: bool = True, connects: bool = False) -> dict[str, Any]:
    """The workload in this process, on a fresh SQLite file unless ``url`` is given;
    ``tasks`` device connects instead of tasks with ``connects``."""
    workdir = Path(tempfile.mkdtemp(prefix="coact-bench-store-"))
    workload = _connect_workload if connects else _workload
    try:
        return asyncio.run(workload(url or f"sqlite:///{workdir / 'relay.db'}", tasks, check))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def sqlite_floor(tasks: int) -> float:
    """µs per task for the same two row writes with plain sqlite3, WAL, a commit each."""
    workdir = Path(tempfile.mkdtemp(prefix="coact-bench-store-floor-"))
    try:
        db = sqlite3.connect(workdir / "floor.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE tasks (id TEXT PRIMARY KEY, status TEXT, params TEXT, result TEXT, updated_at TEXT)")
        start = time.perf_counter()
        for i in range(tasks):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO tasks VALUES (?, 'dispatched', ?, NULL, ?)",
                       (f"t{i}", json.dumps({"path": "/tmp/x", "content": "hi"}), "2026-01-01T00:00:00.000000Z"))
            db.execute("COMMIT")
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE tasks SET status = 'succeeded', result = ?, updated_at = ? WHERE id = ? AND status = 'dispatched'",
                       (json.dumps(RESULT), "2026-01-01T00:00:01.000000Z", f"t{i}"))
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        db.close()
        return elapsed / tasks * 1e6
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def instructions_per_task(tasks: int, *extra: str) -> int:
    """CPU instructions per task (or per connect, with ``--connects`` in ``extra``),
    counted by valgrind's callgrind (runs N and 2N)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    counts = []
    for n in (tasks, 2 * tasks):
        done = subprocess.run(
            [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
             "--tasks", str(n), "--workload-only", *extra],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        found = re.search(r"Collected : (\d+)", done.stderr)
        if found is None:
            raise RuntimeError(f"callgrind printed no count:\n{done.stderr[-2000:]}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) // tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--callgrind", action="store_true", help="also count instructions per task (valgrind)")
    parser.add_argument("--connects", action="store_true",
                        help="measure the state work of --tasks device connects instead of tasks")
    parser.add_argument("--workload-only", action="store_true", help=argparse.SUPPRESS)
    perfkit.add_record_option(parser)
    args = parser.parse_args()
    if args.workload_only:
        run(args.tasks, check=False, connects=args.connects)
        return
    if args.connects:
        connects_main(args.tasks, args.callgrind)
        return
    result = run(args.tasks)
    # signup, enrollment code, enrollment, then a created and a state event per task
    if not result["stored"] == result["succeeded"] == args.tasks or result["relay_events"] != 3 + 2 * args.tasks:
        raise SystemExit(f"not every task and event was stored once: {result}")
    result["floor_us_per_task"] = round(sqlite_floor(args.tasks), 1)
    if args.callgrind:
        result["instructions_per_task"] = instructions_per_task(args.tasks)
    print(result)
    figure = f"{result['us_per_task']:,} µs per task (CPU {result['cpu_us_per_task']:,} µs)"
    command = f"python tests/perf/bench_store.py --tasks {args.tasks}"
    if args.callgrind:
        figure += f", {result['instructions_per_task']:,} instructions per task (callgrind)"
        command += " --callgrind"
    perfkit.record(
        "relay state writes per task (create + result, in process)",
        f"{figure}; {args.tasks:,} tasks, {CONCURRENCY} at a time, SQLite",
        f"plain sqlite3, same two row writes, a commit each: {result['floor_us_per_task']:,} µs per task",
        f"{result['us_per_task'] / result['floor_us_per_task']:.1f}x",
        "(part of ≥ 5,000 tasks/s end to end)",
        command,
        write=args.record,
    )


def connects_main(connects: int, callgrind: bool) -> None:
    result = run(connects, connects=True)
    # signup, enrollment code, enrollment, then a device.online event per connect
    if result["nonces_spent"] != connects or result["relay_events"] != 3 + connects:
        raise SystemExit(f"not every nonce and presence event was stored once: {result}")
    if callgrind:
        result["instructions_per_connect"] = instructions_per_task(connects, "--connects")
    print(result)


if __name__ == "__main__":
    main()
