"""Task dispatch end to end: POST /api/v1/tasks -> agent runs it -> result stored.

Three modes against a fresh relay and a fleet of ``coact sim`` agents that run
``file.stat`` on their sandbox with the real executor and local policy:

* ``latency``: a steady rate (default 200 tasks/s for 20 s, 1,000 agents);
  p50/p95/p99 of (task ``updated_at`` when the result was stored) − ``created_at``,
  both stamped by the relay, and as a client sees it: from sending the POST to
  receiving the task's final state on the org's event stream (``GET /api/v1/ws``,
  published once the result is committed). Floor: a bare aiohttp WebSocket echo
  round trip.
* ``throughput``: ``--tasks`` created as fast as ``--concurrency`` clients can;
  tasks/s from the first ``created_at`` to the last result stored. Floor: parallel
  round trips/s of the bare echo server. ``--db postgres`` uses a fresh database on
  127.0.0.1:5432.
* ``fanout``: one task to each of 1,000 devices, created back to back; time until the
  last result is in.

and a fourth, ``agent``, through one real ``coact agent run`` instead: ``--tasks``
one at a time, each timed as a client sees it, with the agent's journal and outbox
in a database file whose commits wait for the disk (the simulator keeps them in
memory).

Every run checks correctness: every task succeeded, and the simulator executed each
exactly once.

    .venv/bin/python tests/perf/bench_dispatch.py latency --agents 1000 --rate 200 --seconds 20
    .venv/bin/python tests/perf/bench_dispatch.py throughput --agents 200 --tasks 5000 [--db postgres]
    .venv/bin/python tests/perf/bench_dispatch.py fanout --agents 1000
    .venv/bin/python tests/perf/bench_dispatch.py agent --tasks 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
from perf import perfkit  # noqa: E402
from perf.perfkit import harness  # noqa: E402

from coact.agent.sim import load_identities  # noqa: E402

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired", "rejected"}


class Fleet:
    """A relay (SQLite or PostgreSQL) and ``agents`` simulated devices, all connected."""

    def __init__(self, agents: int, workdir: Path, db: str = "sqlite", processes: int = 1) -> None:
        perfkit.raise_fd_limit()
        self.workdir = workdir
        self.drop_db = None
        database_url = None
        if db == "postgres":
            database_url, self.drop_db = perfkit.create_pg_database()
        self.relay = perfkit.start_relay(workdir, database_url=database_url)
        self.api, self.email = perfkit.login(self.relay)
        self.sandbox = workdir / "sandboxes"
        identities = workdir / "identities"
        self.sim = perfkit.SimProcess(
            self.relay, self.api, self.email, agents, "--identities-dir", str(identities),
            "--sandbox-dir", str(self.sandbox), "--connect-rate", "500", "--processes", str(processes),
            "--enroll-concurrency", "8", log=workdir / "sim.log",
        )
        self.sim.wait(lambda p: p.get("ever_connected", 0) >= agents and p.get("audit_pending", 1) == 0,
                      agents / 20 + 120, f"{agents} agents connected")
        self.devices = [i.device_id for i in load_identities(identities, self.relay.url)][:agents]

    def close(self) -> dict[str, Any]:
        try:
            return self.sim.stop()
        finally:
            self.relay.stop()
            if self.drop_db is not None:
                self.drop_db()

    def task_body(self, device_id: str) -> dict[str, Any]:
        return {"device_id": device_id, "action": "file.stat",
                "params": {"path": str((self.sandbox / device_id).resolve())}}


async def _session(relay: harness.Relay, api: harness.Api) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        relay.url, headers={"Authorization": f"Bearer {api.token}"},
        connector=aiohttp.TCPConnector(limit=256),
    )


async def _post(session: aiohttp.ClientSession, body: dict[str, Any]) -> str:
    async with session.post("/api/v1/tasks", json=body) as answer:
        payload = await answer.json()
        if answer.status != 201:
            raise AssertionError(f"POST /tasks -> {answer.status}: {payload}")
        return str(payload["id"])


async def _wait_done(session: aiohttp.ClientSession, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        busy = 0
        for status in ("queued", "dispatched", "running"):
            async with session.get("/api/v1/tasks", params={"status": status, "limit": "1"}) as answer:
                busy += len((await answer.json())["items"])
        if not busy:
            return
        await asyncio.sleep(0.25)
    raise AssertionError("tasks still active after the timeout")


async def _fetch(session: aiohttp.ClientSession, ids: set[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        async with session.get("/api/v1/tasks", params=params) as answer:
            page = await answer.json()
        found += [t for t in page["items"] if t["id"] in ids]
        cursor = page.get("next_cursor")
        if not cursor or len(found) == len(ids):
            return found


def _outcome(tasks: list[dict[str, Any]], ids: set[str]) -> dict[str, Any]:
    """How many of the created tasks were found, by status, and whether all succeeded."""
    statuses: dict[str, int] = {}
    for t in tasks:
        statuses[t["status"]] = statuses.get(t["status"], 0) + 1
    return {"tasks": len(ids), "found": len(tasks), "statuses": statuses,
            "all_succeeded": statuses.get("succeeded", 0) == len(ids)}


def _check(tasks: list[dict[str, Any]], ids: set[str], sim: dict[str, Any]) -> dict[str, Any]:
    return {**_outcome(tasks, ids), "sim_executed_twice": sim.get("executed_twice")}


class Watcher:
    """The org's event stream, as a dashboard follows it: when each task's final state
    arrived (``time.perf_counter``), and how many lag markers the relay sent (a lagging
    subscriber loses events, so a task may then have no arrival)."""

    def __init__(self) -> None:
        self.final_at: dict[str, float] = {}
        self.lagged = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def final(self, task_id: str, timeout_s: float) -> float:
        """When the task's final state arrived (which may be before its POST answered)."""
        if task_id not in self.final_at:
            waiter = self._waiting[task_id] = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(waiter, timeout_s)
        return self.final_at[task_id]

    async def settle(self, ids: set[str], grace_s: float) -> None:
        """Wait until every task in ``ids`` has its final state here, for at most
        ``grace_s``: the relay publishes a final state just after storing it, so the
        stream may trail the database by a moment. What is still missing then is lost."""
        deadline = time.monotonic() + grace_s
        for task_id in ids:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await self.final(task_id, remaining)

    async def start(self, session: aiohttp.ClientSession) -> None:
        self._ws = await session.ws_connect("/api/v1/ws")

    async def follow(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            event = message.json()
            if event["type"] == "lagged":
                self.lagged += 1
            elif event["type"] == "task" and event["status"] in FINAL:
                self.final_at.setdefault(event["task_id"], time.perf_counter())
                waiter = self._waiting.pop(event["task_id"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()


async def _load(fleet: Fleet, bodies: list[dict[str, Any]], *, rate: float | None, concurrency: int,
                watcher: Watcher | None = None, closed_loop: bool = False,
                ) -> tuple[set[str], list[float], dict[str, float]]:
    """POST every body (at ``rate``/s, or as fast as ``concurrency`` allows); return ids,
    POST times, and when each POST was sent (``time.perf_counter``, by task id)."""
    ids: set[str] = set()
    post_times: list[float] = []
    sent_at: dict[str, float] = {}
    session = await _session(fleet.relay, fleet.api)
    following = None
    if watcher is not None:
        await watcher.start(session)
        following = asyncio.create_task(watcher.follow())
    try:
        sem = asyncio.Semaphore(concurrency)

        async def one(body: dict[str, Any]) -> None:
            async with sem:
                start = time.perf_counter()
                task_id = await _post(session, body)
                post_times.append(time.perf_counter() - start)
                ids.add(task_id)
                sent_at[task_id] = start
                if closed_loop and watcher is not None:
                    await watcher.final(task_id, 60)  # its slot frees when its result is seen

        jobs = []
        begin = time.monotonic()
        for index, body in enumerate(bodies):
            if rate:
                delay = begin + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            jobs.append(asyncio.create_task(one(body)))
        await asyncio.gather(*jobs)
        await _wait_done(session, 300)
        if watcher is not None:
            await watcher.settle(ids, 5.0)
    finally:
        if watcher is not None:
            await watcher.close()
        if following is not None:
            await following
        await session.close()
    return ids, post_times, sent_at


async def _results(relay: harness.Relay, api: harness.Api, ids: set[str]) -> list[dict[str, Any]]:
    session = await _session(relay, api)
    try:
        return await _fetch(session, ids)
    finally:
        await session.close()


def phases(tasks: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Where the time went, from the task's own stamps (relay and agent share this
    machine's clock): relay until the agent's ``task_received`` is recorded, the agent
    from then until its action finished, and the relay storing the result; for each,
    its distribution over all tasks and its mean over the slowest 1 % (the tail)."""
    names = ("to_agent_and_back", "agent", "storing_result")
    ts = perfkit.parse_ts
    rows: list[tuple[float, ...]] = []
    for t in tasks:
        if not (t.get("started_at") and (t.get("result") or {}).get("finished_at")):
            continue
        created, received = ts(t["created_at"]), ts(t["started_at"])
        finished, stored = ts(t["result"]["finished_at"]), ts(t["updated_at"])
        rows.append((stored - created, received - created, finished - received, stored - finished))
    if not rows:
        return {}
    rows.sort()
    tail = rows[-max(1, len(rows) // 100):]
    return {
        name: {**perfkit.summary_ms([r[i + 1] for r in rows]),
               "slowest_1pct_mean_ms": round(1000 * sum(r[i + 1] for r in tail) / len(tail), 3)}
        for i, name in enumerate(names)
    }


def floor() -> dict[str, float]:
    server = perfkit.FloorServer()
    try:
        return asyncio.run(perfkit.ws_echo_floor(server.url))
    finally:
        server.stop()


@perfkit.temporary_workdir("coact-bench-dispatch-")
def run(mode: str, *, agents: int, rate: float = 200, seconds: float = 20, tasks: int = 5000,
        concurrency: int = 64, db: str = "sqlite", processes: int = 1, profile: Path | None = None,
        workdir: Path, do_record: bool = False, closed_loop: bool = False) -> dict[str, Any]:
    """One dispatch benchmark. ``closed_loop`` (throughput): ``concurrency`` tasks in
    flight, each POSTed only when the client has seen an earlier one's final state, so
    completed per second is the client's own figure, not the relay's stamps."""
    fleet = Fleet(agents, workdir, db, processes)
    spy = None
    try:
        if mode == "latency":
            count = int(rate * seconds)
        elif mode == "fanout":
            count = agents
        else:
            count = tasks
        bodies = [fleet.task_body(fleet.devices[i % len(fleet.devices)]) for i in range(count)]
        if profile is not None:
            spy = perfkit.start_profile(fleet.relay.proc.pid, max(5, seconds if mode == "latency" else 30), profile)
        wall = time.monotonic()
        cpu_before = perfkit.cpu_seconds(fleet.relay.proc.pid), perfkit.cpu_seconds(fleet.sim.proc.pid)
        threads_before = perfkit.thread_cpu(fleet.relay.proc.pid)
        # Every mode follows the event stream as a client would: what it saw is the
        # client's view, and a final state it never saw is a lost sample, reported.
        watcher = Watcher()
        ids, post_times, sent_at = asyncio.run(_load(fleet, bodies, rate=rate if mode == "latency" else None,
                                                     concurrency=concurrency if mode != "latency" else 1024,
                                                     watcher=watcher, closed_loop=closed_loop))
        cpu_after = perfkit.cpu_seconds(fleet.relay.proc.pid), perfkit.cpu_seconds(fleet.sim.proc.pid)
        by_thread = perfkit.thread_cpu(fleet.relay.proc.pid)
        by_thread.subtract(threads_before)
        wall = time.monotonic() - wall
        rows = asyncio.run(_results(fleet.relay, fleet.api, ids))
    finally:
        if spy is not None:
            spy.wait(120)
        sim = fleet.close()
    result: dict[str, Any] = {"mode": mode, "db": db, "agents": agents, **_check(rows, ids, sim)}
    done = [r for r in rows if r["status"] in FINAL]
    latencies = [perfkit.parse_ts(r["updated_at"]) - perfkit.parse_ts(r["created_at"]) for r in done]
    result["latency"] = perfkit.summary_ms(latencies)
    result["phases"] = phases(done)
    result["post"] = perfkit.summary_ms(post_times)
    seen = [watcher.final_at[i] - sent_at[i] for i in ids if i in watcher.final_at]
    result["client"] = {**perfkit.summary_ms(seen), "seen": len(seen), "expected": len(ids),
                        "lost": len(ids) - len(seen), "lagged": watcher.lagged}
    if watcher.final_at:
        # From the first POST sent to the last final state the client saw: the wall time
        # of the whole batch as its client lives it (relay stamps leave out both ends).
        result["client"]["wall_s"] = round(max(watcher.final_at.values()) - min(sent_at.values()), 3)
        result["client"]["completed_per_s"] = round(len(seen) / result["client"]["wall_s"], 1)
    first = min(perfkit.parse_ts(r["created_at"]) for r in done)
    last = max(perfkit.parse_ts(r["updated_at"]) for r in done)
    result["span_s"] = round(last - first, 3)
    result["tasks_per_s"] = round(len(done) / (last - first), 1)
    result["wall_s"] = round(wall, 2)
    # CPU per task, from creation to the last result (and the idle waits around it):
    # steadier than tasks/s on this shared machine, and what one relay core would sustain.
    result["relay_cpu_us_per_task"] = round(1e6 * (cpu_after[0] - cpu_before[0]) / max(len(done), 1))
    result["sim_cpu_us_per_task"] = round(1e6 * (cpu_after[1] - cpu_before[1]) / max(len(done), 1))
    result["relay_cpu_us_per_task_by_thread"] = {
        name: round(1e6 * seconds / max(len(done), 1)) for name, seconds in by_thread.most_common(6)}
    result["floor"] = floor()
    if profile is not None:
        result["profile"] = perfkit.top_frames(profile)
    print(result)
    lat, fl, client = result["latency"], result["floor"], result["client"]
    # Every row says how many of its samples the client saw: a figure over the tasks it
    # happened to see is not a figure over the run.
    samples = f"{client['seen']:,}/{client['expected']:,} final states seen on the event stream, {client['lagged']} lag markers"
    ok = "all succeeded, none run twice" if result["all_succeeded"] and not result["sim_executed_twice"] else f"CHECK FAILED {result['statuses']}"
    if mode == "latency":
        perfkit.record(
            f"dispatch latency ({db})",
            f"p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms (relay's stamps, created → result); "
            f"as a client sees it, POST sent → final state on the event stream: p50 {client['p50_ms']} ms, "
            f"p95 {client['p95_ms']} ms, p99 {client['p99_ms']} ms ({samples}); "
            f"at {rate:g} tasks/s for {seconds:g} s, {agents:,} agents; relay CPU {result['relay_cpu_us_per_task']:,} µs/task ({ok})",
            f"WS echo p50 {fl['p50_ms']} ms, p99 {fl['p99_ms']} ms",
            f"p50 {lat['p50_ms'] / fl['p50_ms']:.0f}x",
            "p50 ≤ 2 ms, p99 ≤ 10 ms at 200 tasks/s (relay's stamps)",
            f"python tests/perf/bench_dispatch.py latency --agents {agents} --rate {rate:g} --seconds {seconds:g}",
            write=do_record,
        )
    elif mode == "throughput":
        perfkit.record(
            f"dispatch throughput{', closed loop' if closed_loop else ''} ({db})",
            f"{result['tasks_per_s']} tasks/s by the relay's stamps (first created → last result); as the client "
            f"sees it, {client.get('completed_per_s', 0):,} tasks/s from its first POST to the last final state "
            f"({len(done):,} tasks, {agents:,} agents, {concurrency} {'tasks in flight, each POSTed when one finished' if closed_loop else 'POSTs at a time'}; "
            f"result latency p50 {lat['p50_ms']} ms; relay CPU {result['relay_cpu_us_per_task']:,} µs/task, "
            f"simulator {result['sim_cpu_us_per_task']:,} µs/task; {samples}; {ok})",
            f"{fl['round_trips_per_s']:,.0f} WS round trips/s",
            f"{result['tasks_per_s'] / fl['round_trips_per_s']:.3f}x",
            "≥ 5,000 tasks/s (SQLite, relay's stamps)",
            f"python tests/perf/bench_dispatch.py throughput --agents {agents} --tasks {tasks} --concurrency {concurrency} --db {db}"
            + (f" --processes {processes}" if processes != 1 else "") + (" --closed-loop" if closed_loop else ""),
            write=do_record,
        )
    else:
        perfkit.record(
            f"fan-out ({db})",
            f"{len(done):,} tasks to {agents:,} devices: last result {result['span_s']} s after the first create "
            f"by the relay's stamps; the client had every final state {client.get('wall_s', 'never')} s after its "
            f"first POST (p50 {lat['p50_ms']} ms; {samples}; {ok})",
            # N echo round trips bound only the network part of a fan-out (no task is
            # created, stored, run or reported), so they are shown, but not as its floor.
            f"none that bounds the same work ({agents:,} WS echo round trips take "
            f"{agents / fl['round_trips_per_s']:.3f} s: the network part only)",
            "—",
            "(none set)",
            f"python tests/perf/bench_dispatch.py fanout --agents {agents}",
            write=do_record,
        )
    return result


async def _one_at_a_time(relay: harness.Relay, api: harness.Api, body: dict[str, Any],
                         count: int) -> tuple[list[str], list[float]]:
    """POST ``body`` ``count`` times, each once the previous one's final state arrived;
    return the ids and each task's time from sending its POST to that arrival."""
    session = await _session(relay, api)
    watcher = Watcher()
    await watcher.start(session)
    following = asyncio.create_task(watcher.follow())
    ids: list[str] = []
    seen: list[float] = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            task_id = await _post(session, body)
            seen.append(await watcher.final(task_id, 30) - start)
            ids.append(task_id)
    finally:
        await watcher.close()
        await following
        await session.close()
    return ids, seen


@perfkit.temporary_workdir("coact-bench-agent-")
def one_agent(tasks: int, *, workdir: Path, do_record: bool = False) -> dict[str, Any]:
    """Tasks one at a time through one real ``coact agent run``: its journal and outbox
    are a database file whose commits wait for the disk, as on a device, where the
    simulator's are in memory. What the agent's own writes add to a task."""
    relay = perfkit.start_relay(workdir)
    agent = None
    try:
        api, _email = perfkit.login(relay)
        sandbox = workdir / "sandbox"
        sandbox.mkdir()
        agent, device_id = harness.Agent.enroll(relay, api, workdir / "agent", sandbox)
        agent.start()
        harness.wait_online(api, device_id)
        assert agent.proc is not None
        body = {"device_id": device_id, "action": "file.stat", "params": {"path": str(sandbox.resolve())}}
        asyncio.run(_one_at_a_time(relay, api, body, min(tasks, 20)))  # warm-up: first-use imports
        cpu_before = perfkit.cpu_seconds(agent.proc.pid)
        ids, seen = asyncio.run(_one_at_a_time(relay, api, body, tasks))
        agent_cpu_s = perfkit.cpu_seconds(agent.proc.pid) - cpu_before
        rows = asyncio.run(_results(relay, api, set(ids)))
    finally:
        if agent is not None:
            agent.stop()
        relay.stop()
    result: dict[str, Any] = {
        "mode": "agent", **_outcome(rows, set(ids)),
        "client": perfkit.summary_ms(seen),
        "phases": phases(rows),
        "agent_cpu_us_per_task": round(1e6 * agent_cpu_s / max(tasks, 1)),
        "floor_commit": perfkit.sqlite_commit_floor(workdir / "floor.db"),
    }
    print(result)
    client, agent_phase, commit = result["client"], result["phases"]["agent"], result["floor_commit"]
    ok = "all succeeded" if result["all_succeeded"] else f"CHECK FAILED {result['statuses']}"
    perfkit.record(
        "dispatch latency, one real agent",
        f"p50 {client['p50_ms']} ms, p99 {client['p99_ms']} ms from POST sent to the final state on the event "
        f"stream, {tasks:,} tasks one at a time; in the agent (received → finished) p50 {agent_phase['p50_ms']} ms, "
        f"p99 {agent_phase['p99_ms']} ms; agent CPU {result['agent_cpu_us_per_task']:,} µs/task ({ok})",
        f"sqlite3 commit waiting for the disk (WAL, synchronous=FULL): p50 {commit['p50_ms']} ms, p99 {commit['p99_ms']} ms",
        f"agent p50 {agent_phase['p50_ms'] / commit['p50_ms']:.1f}x one commit",
        "(what a device's own disk adds to the dispatch latency target)",
        f"python tests/perf/bench_dispatch.py agent --tasks {tasks}",
        write=do_record,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["latency", "throughput", "fanout", "agent"])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the relay, collapsed stacks here")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--closed-loop", action="store_true",
                        help="throughput: keep --concurrency tasks in flight, a new POST only when a final state is seen")
    perfkit.add_record_option(parser)
    args = parser.parse_args()
    if args.mode == "agent":
        one_agent(args.tasks, workdir=args.workdir, do_record=args.record)
        return
    run(args.mode, agents=args.agents, rate=args.rate, seconds=args.seconds, tasks=args.tasks,
        concurrency=args.concurrency, db=args.db, processes=args.processes, profile=args.profile,
        workdir=args.workdir, do_record=args.record, closed_loop=args.closed_loop)


if __name__ == "__main__":
    main()
