"""Connections held: the largest fleet one relay process holds with heartbeats flowing.

Enrolls N simulated devices (once; ``--identities-dir`` keeps them), measures the
relay's memory, connects the whole fleet with ``coact sim``, holds it for ``--hold``
seconds of heartbeats, and reports relay memory per connection and the time to
connect everyone. Floor, same run: a bare aiohttp WebSocket server holding the same
number of idle connections from the same client library. Memory per connection is
the growth of anonymous memory (see ``perfkit.anonymous_bytes``; RSS is printed too).

With ``--storm`` the whole fleet connects at once, as after a relay restart: no
pacing, and a thread per simulated agent for its token request (a real device has
its own). It reports the time until every agent was connected, the reconnects and
their causes (503s from the relay's connect admission, or timeouts), and as floor
the time the relay's CPU needs for that many connects (relay CPU per connect × N,
one core), so the ratio is how far the storm is from the relay's own capacity.

    .venv/bin/python tests/perf/bench_connections.py --agents 1000
    .venv/bin/python tests/perf/bench_connections.py --agents 19500 --processes 2 --connect-rate 400
    .venv/bin/python tests/perf/bench_connections.py --agents 6000 --processes 2 --storm --hold 5
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf import perfkit  # noqa: E402


def enroll(relay: Any, api: Any, email: str, agents: int, identities: Path) -> float:
    start = time.monotonic()
    perfkit.harness.run_cli(
        "sim", "--relay", relay.url, "--email", email, "--agents", str(agents), "--identities-dir", str(identities),
        "--enroll-only", "--enroll-concurrency", "8", "--output", "json",
        env=perfkit.sim_env(api), timeout=3600,
    )
    return time.monotonic() - start


def floor_per_connection(count: int) -> tuple[float, float]:
    """The bare server's (RSS, anonymous memory) per idle connection, in bytes."""
    server = perfkit.FloorServer()
    try:
        time.sleep(0.5)
        before = server.rss(), server.anonymous()

        async def hold() -> tuple[float, float]:
            sockets = await perfkit.hold_idle(server.url, count)
            await asyncio.sleep(2)
            after = server.rss(), server.anonymous()
            for ws in sockets:
                await ws.close()
            return (after[0] - before[0]) / count, (after[1] - before[1]) / count

        return asyncio.run(hold())
    finally:
        server.stop()


@perfkit.temporary_workdir("coact-bench-conn-")
def run(agents: int, *, processes: int = 1, connect_rate: float = 500.0, hold_s: float = 30.0,
        heartbeat_s: float = 20.0, workdir: Path, do_record: bool = False,
        profile: Path | None = None, storm: bool = False) -> dict[str, Any]:
    perfkit.raise_fd_limit()
    relay = perfkit.start_relay(workdir)
    result: dict[str, Any] = {"agents": agents}
    try:
        api, email = perfkit.login(relay)
        identities = workdir / "identities"
        result["enroll_s"] = round(enroll(relay, api, email, agents, identities), 1)
        proc = perfkit.relay_process(relay)
        gc.collect()
        time.sleep(2)
        rss_before, anon_before = proc.memory_info().rss, perfkit.anonymous_bytes(proc.pid)
        cpu_before_connect, connect_started = perfkit.cpu_seconds(proc.pid), time.monotonic()
        threads_before_connect = perfkit.thread_cpu(proc.pid)
        pacing = (["--connect-rate", "0", "--threads", str(-(-agents // processes))] if storm
                  else ["--connect-rate", str(connect_rate)])
        sim = perfkit.SimProcess(
            relay, api, email, agents, "--identities-dir", str(identities), "--processes", str(processes),
            *pacing, "--heartbeat", str(heartbeat_s), log=workdir / "sim.log",
        )
        # Expected connect time: the fleet at the requested rate, or at ~100 connects/s in a storm.
        expected_s = agents / (100.0 if storm else connect_rate)
        # py-spy on the relay for the connect storm
        spy = None if profile is None else perfkit.start_profile(proc.pid, max(5.0, expected_s), profile)
        try:
            budget = expected_s * 3 + 120
            reached = sim.wait(lambda p: p.get("ever_connected", 0) >= agents, budget, f"{agents} connected")
            result["all_connected_s"] = reached["all_connected_s"]
            result["connect_p50_s"] = reached["connect_p50_s"]
            result["connect_p99_s"] = reached["connect_p99_s"]
            # What a connect storm costs the relay: its CPU from the first handshake to
            # the last (token request, upgrade, key proofs, first heartbeat and audit batch).
            connect_cpu_s = perfkit.cpu_seconds(proc.pid) - cpu_before_connect
            result["relay_cpu_ms_per_connect"] = round(1000 * connect_cpu_s / agents, 2)
            result["relay_cpu_pct_connecting"] = round(100 * connect_cpu_s / (time.monotonic() - connect_started), 1)
            by_thread = perfkit.thread_cpu(proc.pid)
            by_thread.subtract(threads_before_connect)
            result["relay_cpu_ms_per_connect_by_thread"] = {
                name: round(1000 * seconds / agents, 2) for name, seconds in by_thread.most_common(6)}
            # Hold once the connect storm has settled: every agent's first audit batch
            # (written at start-up) stored and acked.
            settled = time.monotonic()
            sim.wait(lambda p: p.get("connected", 0) >= agents and p.get("audit_pending", 1) == 0,
                     budget, "first audit batches acked")
            result["settled_after_s"] = round(time.monotonic() - settled, 1)
            cpu_before, t0 = perfkit.cpu_seconds(proc.pid), time.monotonic()
            time.sleep(hold_s)
            cpu_holding = perfkit.cpu_seconds(proc.pid) - cpu_before
            held = sim.latest
            result["held"] = held["connected"]
            result["reconnects"] = held["reconnects"]
            result["reconnect_causes"] = held.get("reconnect_causes") or {}
            result["connect_failures"] = held["connect_failures"]
            result["relay_cpu_pct_holding"] = round(100 * cpu_holding / (time.monotonic() - t0), 1)
            rss_after, anon_after = proc.memory_info().rss, perfkit.anonymous_bytes(proc.pid)
            result["relay_rss_mb"] = round(rss_after / 2**20, 1)
            result["relay_rss_kb_per_conn"] = round((rss_after - rss_before) / agents / 1024, 1)
            result["relay_kb_per_conn"] = round((anon_after - anon_before) / agents / 1024, 1)
            result["sim_command"] = sim.command
        finally:
            result["sim_summary"] = sim.stop()
            if spy is not None:
                spy.wait(120)
    finally:
        relay.stop()
    floor_rss, floor_anon = floor_per_connection(agents)
    result["floor_rss_kb_per_conn"] = round(floor_rss / 1024, 1)
    result["floor_kb_per_conn"] = round(floor_anon / 1024, 1)
    result["ratio"] = round(result["relay_kb_per_conn"] / result["floor_kb_per_conn"], 2)
    if profile is not None:
        result["profile"] = perfkit.top_frames(profile)
    if storm:
        # The relay's CPU alone, one core, for this many connects: the storm's floor.
        result["floor_connect_s"] = round(result["relay_cpu_ms_per_connect"] * agents / 1000, 1)
        result["storm_ratio"] = round(result["all_connected_s"] / result["floor_connect_s"], 2)
    print({k: v for k, v in result.items() if k != "sim_summary"})
    if storm:
        perfkit.record(
            f"reconnect storm ({agents:,} agents)",
            f"{agents:,} agents connecting at once: all connected in {result['all_connected_s']} s "
            f"(p50 {result['connect_p50_s']:.1f} s, p99 {result['connect_p99_s']:.1f} s), "
            f"relay {result['relay_cpu_ms_per_connect']} ms CPU per connect, "
            f"{result['relay_cpu_pct_connecting']}% of a core while connecting, "
            f"{result['reconnects']} reconnects"
            + "".join(f"; {n}× {cause}" for cause, n in result.get("reconnect_causes", {}).items()),
            f"relay CPU per connect × N on one core: {result['floor_connect_s']} s",
            f"{result['storm_ratio']}x",
            "(every agent back soon after a relay restart; none set)",
            f"python tests/perf/bench_connections.py --agents {agents} --processes {processes} --storm "
            f"--hold {hold_s:g}",
            write=do_record,
        )
    else:
        perfkit.record(
            f"connections held ({agents:,} agents)",
            f"{result['held']:,} held {hold_s:.0f} s, {result['relay_kb_per_conn']} KB/conn relay anonymous memory "
            f"(RSS: {result['relay_rss_kb_per_conn']} KB/conn, {result['relay_rss_mb']} MB total), "
            f"all connected in {result['all_connected_s']} s at "
            f"{connect_rate:g}/s (relay {result['relay_cpu_ms_per_connect']} ms CPU per connect, "
            f"{result['relay_cpu_pct_connecting']}% of a core while connecting; "
            f"first audit batches all stored {result['settled_after_s']} s later), "
            f"relay CPU {result['relay_cpu_pct_holding']}% holding, "
            f"{result['reconnects']} reconnects"
            + "".join(f"; {n}× {cause}" for cause, n in result.get("reconnect_causes", {}).items()),
            f"{result['floor_kb_per_conn']} KB/conn anonymous, {result['floor_rss_kb_per_conn']} KB/conn RSS "
            "(bare aiohttp WS)",
            f"{result['ratio']}x memory",
            "≥ 20,000 agents at ≤ 2× floor memory",
            f"python tests/perf/bench_connections.py --agents {agents} --processes {processes} "
            f"--connect-rate {connect_rate:g}",
            write=do_record,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--connect-rate", type=float, default=500.0)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--heartbeat", type=float, default=20.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--storm", action="store_true",
                        help="connect the whole fleet at once (a relay restart), a thread per agent")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy the relay while the fleet connects; raw stacks to this file")
    perfkit.add_record_option(parser)
    args = parser.parse_args()
    run(args.agents, processes=args.processes, connect_rate=args.connect_rate, hold_s=args.hold,
        heartbeat_s=args.heartbeat, workdir=args.workdir, profile=args.profile, storm=args.storm,
        do_record=args.record)


if __name__ == "__main__":
    main()
