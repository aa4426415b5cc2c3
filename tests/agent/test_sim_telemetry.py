"""A simulated device's heartbeat must not queue behind the simulator's thread pool,
which a connecting fleet fills with token requests (``coact.agent.sim``)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from coact.agent import sim
from coact.agent.runtime import AgentOptions
from coact.agent.sim import Counters, SimAgent, SimIdentity
from coact.shared import keys


def _identity() -> SimIdentity:
    relay_key = keys.generate_private_key()
    return SimIdentity(
        device_id="dev-telemetry", org_id="org-telemetry", relay_url="http://127.0.0.1:9",
        relay_public_key=keys.public_key_b64(relay_key), name="sim-telemetry",
        key_pem=keys.private_key_to_pem(keys.generate_private_key()).decode(),
        enrolled_at="2026-11-27T00:00:00Z",
    )


async def test_telemetry_is_read_while_every_pool_thread_is_busy(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(pool)
    release = threading.Event()
    blocker = loop.run_in_executor(None, release.wait)  # the pool's only thread, held
    sim._shared_telemetry.figures = None
    agent = SimAgent(_identity(), tmp_path, Counters(), options=AgentOptions())
    try:
        figures = await asyncio.wait_for(agent._telemetry(), 5)
    finally:
        release.set()
        await blocker
    assert {"cpu_percent", "memory_percent", "load_1m", "uptime_s"} <= set(figures)
    assert figures["uptime_s"] > 0
