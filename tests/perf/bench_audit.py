"""Audit ingest and outbox drain.

* ``ingest``: ``--agents`` simulated devices each start with ``--backlog`` records in
  their outbox; they connect and upload signed batches of up to 1,000 records, which
  the relay verifies (chain, hashes, signature) and inserts into chDB before it acks.
  Figure: records/s from the fleet's start until every outbox is empty. Floor, same
  run: raw clickhouse-connect inserts of rows of the same shape into chDB (1,000-row
  batches, as the agent sends; and 10,000-row batches), plus the cost of a raw
  Ed25519 verify.
* ``drain``: one real agent (``coact agent run``) whose SQLite outbox holds
  ``--records`` records (default 1,000,000, written with ``append_audit_many``, as
  after a long offline period); records/s until the outbox is empty.

Both check correctness: every record stored once (the relay's chain heads match the
agents' last seq; the smoke test reads the records back).

    .venv/bin/python tests/perf/bench_audit.py ingest --agents 100 --backlog 2000
    .venv/bin/python tests/perf/bench_audit.py drain --records 1000000
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf import perfkit  # noqa: E402

from coact.agent.store import AgentStore  # noqa: E402
from coact.shared.chain import GENESIS, ChainHead, make_record  # noqa: E402
from coact.shared.clock import SystemClock  # noqa: E402


def all_batches(api: Any, device_id: str | None = None) -> list[dict[str, Any]]:
    """Every signed batch of the org (the route pages them, decision 69)."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = "limit=5000" + (f"&device_id={device_id}" if device_id else "") + (f"&cursor={cursor}" if cursor else "")
        page = api.get(f"/api/v1/audit/batches?{query}").body
        out.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            return out



def sample_rows(count: int, devices: int = 100) -> list[list[Any]]:
    """Rows shaped like the relay's audit_records inserts (real chained records)."""
    rows: list[list[Any]] = []
    per = max(1, count // devices)
    for d in range(devices):
        head = GENESIS
        device = f"dev_floor{d:05d}"
        for i in range(per):
            rec = make_record(head, device_id=device, kind="sim.backlog", ts="2026-01-01T00:00:00.000000Z", data={"i": i})
            head = ChainHead(rec["seq"], rec["hash"])
            rows.append(["org_floor", device, rec["seq"], rec["ts"], rec["kind"], None, f'{{"i":{i}}}',
                         rec["prev_hash"], rec["hash"]])
    return rows[:count]


@perfkit.temporary_workdir("coact-bench-ingest-")
def ingest(agents: int, backlog: int, *, workdir: Path, profile: Path | None = None,
           do_record: bool = False) -> dict[str, Any]:
    perfkit.raise_fd_limit()
    relay = perfkit.start_relay(workdir)
    spy = None
    try:
        api, email = perfkit.login(relay)
        identities = workdir / "identities"
        perfkit.harness.run_cli(
            "sim", "--relay", relay.url, "--email", email, "--agents", str(agents), "--identities-dir",
            str(identities), "--enroll-only", "--output", "json", env=perfkit.sim_env(api), timeout=600,
        )
        if profile is not None:
            spy = perfkit.start_profile(relay.proc.pid, 30, profile)
        relay_cpu = perfkit.cpu_seconds(relay.proc.pid)
        sim = perfkit.SimProcess(
            relay, api, email, agents, "--identities-dir", str(identities), "--audit-backlog", str(backlog),
            "--connect-rate", "1000", "--stop-when-drained", log=workdir / "sim.log",
        )
        summary = sim.stop_when_done(600)
        # All of the relay's threads, the embedded ClickHouse engine's included, from
        # the fleet's start to its drain (connecting 50 agents is a small part of it).
        relay_cpu = perfkit.cpu_seconds(relay.proc.pid) - relay_cpu
        total = agents * (backlog + 1)  # + each agent's agent.start record
        heads = {r["device_id"]: r["last_seq"] for r in all_batches(api)}
    finally:
        if spy is not None:
            spy.wait(120)
        relay.stop()
    result: dict[str, Any] = {"agents": agents, "records": total, "drained_s": summary.get("drained_s"),
                              "nacks": summary.get("audit_nacks"), "pending": summary.get("audit_pending")}
    result["records_per_s"] = round(total / summary["drained_s"], 1)
    result["relay_cpu_us_per_record"] = round(1e6 * relay_cpu / total, 2)
    result["devices_with_all_records"] = sum(1 for seq in heads.values() if seq >= backlog + 1)
    rows = sample_rows(min(total, 200_000))
    result["floor_chdb_1k"] = round(perfkit.chdb_insert_floor(rows, 1000, workdir / "floor1"), 1)
    result["floor_chdb_10k"] = round(perfkit.chdb_insert_floor(rows, 10_000, workdir / "floor2"), 1)
    result["floor_verify_us"] = round(perfkit.ed25519_verify_floor() * 1e6, 1)
    if profile is not None:
        result["profile"] = perfkit.top_frames(profile)
    print(result)
    perfkit.record(
        "audit ingest",
        f"{result['records_per_s']:,.0f} records/s verified + stored ({total:,} records from {agents} agents, "
        f"batches of ≤ 1,000; {result['devices_with_all_records']}/{agents} chains complete, {result['nacks']} nacks; "
        f"relay CPU {result['relay_cpu_us_per_record']} µs/record, all threads)",
        f"raw chDB insert {result['floor_chdb_1k']:,.0f} rows/s (1k batches), {result['floor_chdb_10k']:,.0f} rows/s "
        f"(10k batches); Ed25519 verify {result['floor_verify_us']} µs",
        f"{result['records_per_s'] / result['floor_chdb_1k']:.2f}x of 1k-batch floor",
        "≥ 200,000 records/s",
        f"python tests/perf/bench_audit.py ingest --agents {agents} --backlog {backlog}",
        write=do_record,
    )
    return result


@perfkit.temporary_workdir("coact-bench-drain-")
def drain(records: int, *, workdir: Path, profile: Path | None = None,
          do_record: bool = False) -> dict[str, Any]:
    relay = perfkit.start_relay(workdir)
    agent = None
    spy = None
    try:
        api, _email = perfkit.login(relay)
        agent, device_id = perfkit.harness.Agent.enroll(relay, api, workdir / "agent", workdir / "sandbox")
        fill = time.monotonic()
        with AgentStore(agent.data_dir / "agent.db", device_id, SystemClock()) as store:
            for start in range(0, records, 10_000):
                store.append_audit_many(("sim.backlog", {"i": i}, None) for i in range(start, min(records, start + 10_000)))
        fill = time.monotonic() - fill
        db = agent.data_dir / "agent.db"

        def pending() -> int:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                return int(conn.execute("SELECT count(*) FROM audit_outbox").fetchone()[0])
            finally:
                conn.close()

        if profile is not None:
            spy = perfkit.start_profile(relay.proc.pid, 30, profile)
        start = time.monotonic()
        agent.start()
        while pending() > 1:  # agent.stop is appended after the socket closes, never before
            time.sleep(0.5)
            if time.monotonic() - start > 900:
                raise AssertionError(f"outbox not drained after 900 s: {pending()} left")
        elapsed = time.monotonic() - start
        head = all_batches(api, device_id)
        last_seq = max((b["last_seq"] for b in head if b["device_id"] == device_id), default=0)
    finally:
        if spy is not None:
            spy.wait(120)
        if agent is not None:
            agent.stop()
        relay.stop()
    result = {"records": records, "fill_s": round(fill, 1), "drain_s": round(elapsed, 1),
              "records_per_s": round(records / elapsed, 1), "relay_last_seq": last_seq}
    # The floor: one device's records inserted raw, 1,000 at a time, one insert after
    # the other, as the relay stores one agent's batches.
    rows = sample_rows(min(records, 200_000), devices=1)
    result["floor_chdb_1k"] = round(perfkit.chdb_insert_floor(rows, 1000, workdir / "floor"), 1)
    if profile is not None:
        result["profile"] = perfkit.top_frames(profile)
    print(result)
    perfkit.record(
        "agent outbox drain",
        f"{result['records_per_s']:,.0f} records/s: {records:,} buffered records uploaded in {result['drain_s']} s "
        f"by one `coact agent run` (relay holds seq {last_seq:,}); filling took {result['fill_s']} s",
        f"raw chDB insert of one device's records, 1k batches one at a time: {result['floor_chdb_1k']:,.0f} rows/s",
        f"{result['records_per_s'] / result['floor_chdb_1k']:.2f}x",
        "(part of ≥ 200,000 records/s)",
        f"python tests/perf/bench_audit.py drain --records {records}",
        write=do_record,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["ingest", "drain"])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    perfkit.add_record_option(parser)
    args = parser.parse_args()
    if args.mode == "ingest":
        ingest(args.agents, args.backlog, workdir=args.workdir, profile=args.profile, do_record=args.record)
    else:
        drain(args.records, workdir=args.workdir, profile=args.profile, do_record=args.record)


if __name__ == "__main__":
    main()
