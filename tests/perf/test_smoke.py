"""Smoke versions of the benchmarks: tiny N against a real relay, correctness only.

They keep the simulator and the benchmark harness from rotting; timings belong to the
benchmarks themselves (``tests/perf/bench_*.py``, figures in docs/performance.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Relay
from perf import (
    bench_audit,
    bench_connections,
    bench_dispatch,
    bench_footprint,
    bench_store,
    perfkit,
)

from coact.agent.sim import AdminClient, Fleet, FleetOptions, SimIdentity, enroll_fleet


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    server = perfkit.start_relay(tmp_path_factory.mktemp("perf"))
    yield server
    server.stop()


def _audit_seqs(api: object, device_id: str) -> list[int]:
    seqs: list[int] = []
    cursor = None
    while True:
        path = f"/api/v1/audit?device_id={device_id}&limit=500" + (f"&cursor={cursor}" if cursor else "")
        page = api.ok("GET", path)  # type: ignore[attr-defined]
        seqs += [r["seq"] for r in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            return seqs


def test_sim_fleet_tasks_and_audit_exactly_once(relay: Relay, tmp_path: Path) -> None:
    """5 simulated agents, 20 tasks, 200 backlog records: each task runs once, each record is stored once."""
    api, email = perfkit.login(relay)
    admin = AdminClient(relay.url, api.token)
    identities: list[SimIdentity] = enroll_fleet(admin, 5, directory=tmp_path / "ids")
    options = FleetOptions(connect_rate=50, audit_backlog=40, progress_s=0.2, drain_timeout_s=10)

    async def scenario() -> dict[str, object]:
        fleet = Fleet(identities, tmp_path / "sandboxes", options)
        stop = asyncio.Event()

        async def drive() -> None:
            while fleet.progress()["ever_connected"] < 5:  # noqa: ASYNC110 - polling the fleet's figures
                await asyncio.sleep(0.05)
            task_ids = []
            for i in range(20):
                device = identities[i % 5].device_id
                body = {"device_id": device, "action": "file.stat",
                        "params": {"path": str((tmp_path / "sandboxes" / device).resolve())}}
                task_ids.append((await asyncio.to_thread(api.ok, "POST", "/api/v1/tasks", body))["id"])
            for task_id in task_ids:
                for _ in range(200):
                    task = await asyncio.to_thread(api.ok, "GET", f"/api/v1/tasks/{task_id}")
                    if task["status"] == "succeeded":
                        break
                    await asyncio.sleep(0.05)
                assert task["status"] == "succeeded", task
            while fleet.pending() > 0:  # noqa: ASYNC110 - polling the fleet's figures
                await asyncio.sleep(0.05)
            stop.set()

        driver = asyncio.create_task(drive())
        try:
            final = await asyncio.wait_for(fleet.run(stop), 60)
            await driver
            assert sorted(fleet.counters.executed.values()) == [1] * 20
            return {"final": final, "heads": fleet.heads()}
        finally:
            fleet.close()

    outcome = asyncio.run(scenario())
    final = outcome["final"]
    assert final["executed"] == 20
    assert final["executed_twice"] == 0
    assert final["audit_nacks"] == 0  # type: ignore[index]
    for identity in identities:
        head = outcome["heads"][identity.device_id]  # type: ignore[index]
        seqs = _audit_seqs(api, identity.device_id)
        # Every record the agent made, up to its acked head, is stored exactly once.
        assert seqs == list(range(1, head.seq + 1))
        assert head.seq >= 40 + 1 + 4 * 4  # backlog, agent.start, 4 records per task


def test_sim_command_reuses_identities(relay: Relay, tmp_path: Path) -> None:
    """Two runs of `coact sim` (the second over 2 processes) continue each chain without a fork."""
    api, email = perfkit.login(relay)
    ids = tmp_path / "ids"
    for extra in ([], ["--processes", "2"]):
        sim = perfkit.SimProcess(relay, api, email, 4, "--identities-dir", str(ids), "--connect-rate", "100",
                                 "--duration", "2", "--heartbeat", "1", *extra, log=tmp_path / "sim.log")
        summary = sim.stop_when_done(60)
        assert summary["ever_connected"] == 4, summary
        assert summary["audit_nacks"] == 0, summary
        assert summary["reconnects"] == 0, summary
    assert len((ids / "identities.jsonl").read_text().splitlines()) == 4
    for line in (ids / "identities.jsonl").read_text().splitlines():
        device_id = SimIdentity(**json.loads(line)).device_id
        seqs = _audit_seqs(api, device_id)
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) >= 2


def test_dispatch_bench_smoke(tmp_path: Path) -> None:
    result = bench_dispatch.run("throughput", agents=3, tasks=12, concurrency=4, workdir=tmp_path, do_record=False)
    assert result["all_succeeded"]
    assert result["found"] == 12
    assert result["client"]["seen"] == result["client"]["expected"] == 12
    assert result["sim_executed_twice"] == 0


def test_dispatch_closed_loop_bench_smoke(tmp_path: Path) -> None:
    result = bench_dispatch.run("throughput", agents=3, tasks=12, concurrency=2, closed_loop=True,
                                workdir=tmp_path, do_record=False)
    assert result["all_succeeded"]
    # Each slot waited for a final state on the stream before its next POST: every one seen.
    assert result["client"]["seen"] == result["client"]["expected"] == 12
    assert result["client"]["completed_per_s"] > 0


def test_dispatch_latency_bench_smoke(tmp_path: Path) -> None:
    result = bench_dispatch.run("latency", agents=3, rate=20, seconds=1, workdir=tmp_path, do_record=False)
    assert result["all_succeeded"]
    assert result["found"] == 20
    assert result["sim_executed_twice"] == 0
    # A client following the event stream saw every task's final state, once each.
    assert result["client"]["seen"] == 20
    assert result["client"]["lagged"] == 0
    assert set(result["phases"]) == {"to_agent_and_back", "agent", "storing_result"}


def test_dispatch_fanout_bench_smoke(tmp_path: Path) -> None:
    # 600 devices: a fan-out past ~150 lost final states on the event stream (issue 21).
    result = bench_dispatch.run("fanout", agents=600, workdir=tmp_path, do_record=False)
    assert result["all_succeeded"]
    assert result["found"] == 600  # one task per device
    assert result["sim_executed_twice"] == 0
    # A client following the stream saw every final state: no lost sample in the figures.
    assert result["client"]["seen"] == result["client"]["expected"] == 600
    assert result["client"]["lagged"] == 0


def test_dispatch_one_agent_bench_smoke(tmp_path: Path) -> None:
    result = bench_dispatch.one_agent(5, workdir=tmp_path, do_record=False)
    assert result["all_succeeded"]
    assert result["found"] == 5
    assert set(result["phases"]) == {"to_agent_and_back", "agent", "storing_result"}


def test_audit_benches_smoke(tmp_path: Path) -> None:
    result = bench_audit.ingest(3, 50, workdir=tmp_path / "ingest", do_record=False)
    assert result["devices_with_all_records"] == 3
    assert result["nacks"] == 0
    drained = bench_audit.drain(2000, workdir=tmp_path / "drain", do_record=False)
    assert drained["relay_last_seq"] >= 2000


def test_connections_bench_smoke(tmp_path: Path) -> None:
    result = bench_connections.run(5, connect_rate=50, hold_s=1, workdir=tmp_path, do_record=False)
    assert result["held"] == 5
    assert result["reconnects"] == result["connect_failures"] == 0
    assert result["floor_kb_per_conn"] > 0


def test_connections_storm_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole fleet at once against a relay serving two connects at a time: every
    agent gets in, and the only reconnects are the relay's 503s, waited out."""
    monkeypatch.setenv("COACT_DEVICE_CONNECT_LIMIT", "2")  # inherited by the relay process
    result = bench_connections.run(8, storm=True, hold_s=1, workdir=tmp_path, do_record=False)
    assert result["held"] == 8
    causes = result["reconnect_causes"]
    assert sum(causes.values()) == result["reconnects"] == result["connect_failures"]
    assert all("503" in cause for cause in causes), causes
    assert result["floor_connect_s"] > 0


def test_footprint_bench_smoke(tmp_path: Path) -> None:
    result = bench_footprint.run(1, warmup=1, gui=False, workdir=tmp_path, do_record=False)
    assert result["plain"]["rss_mb"] > result["floor"]["rss_mb"] > 0


def test_store_bench_smoke() -> None:
    result = bench_store.run(40)
    assert result["stored"] == result["succeeded"] == 40
    assert result["relay_events"] == 3 + 2 * 40  # signup, code, enrollment; created + state per task
    assert bench_store.sqlite_floor(10) > 0


def test_store_connects_bench_smoke() -> None:
    result = bench_store.run(40, connects=True)
    assert result["nonces_spent"] == 40
    assert result["relay_events"] == 3 + 40  # signup, code, enrollment; device.online per connect


def test_floors_smoke() -> None:
    server = perfkit.FloorServer()
    try:
        floor = asyncio.run(perfkit.ws_echo_floor(server.url, round_trips=50, parallel=4))
    finally:
        server.stop()
    assert floor["round_trips_per_s"] > 0
    assert perfkit.ed25519_verify_floor(10) > 0
