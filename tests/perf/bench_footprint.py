"""Agent footprint: idle RSS and CPU of a real ``coact agent run`` over ``--seconds``.

The agent is enrolled with a relay on loopback and left idle (heartbeats only), once
as is and once with ``import pyautogui, pynput`` done first (the GUI libraries; they
need an X display, so that run uses Xvfb when ``DISPLAY`` is unset). Floor, same run:
an idle bare Python interpreter (``python -c 'import time; time.sleep(...)'``).

    .venv/bin/python tests/perf/bench_footprint.py --seconds 30
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
from perf import perfkit  # noqa: E402

GUI_PRELUDE = "import pyautogui, pynput; "


def measure(proc: psutil.Process, seconds: float) -> dict[str, float]:
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    info = proc.memory_full_info()
    cpu = (after.user + after.system) - (before.user + before.system)
    return {"rss_mb": round(info.rss / 2**20, 1), "uss_mb": round(info.uss / 2**20, 1),
            "cpu_pct": round(100 * cpu / seconds, 3), "cpu_ms": round(cpu * 1000, 1)}


def start_xvfb() -> tuple[subprocess.Popen[bytes] | None, dict[str, str]]:
    if os.environ.get("DISPLAY"):
        return None, {}
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return None, {}
    display = ":97"
    proc = subprocess.Popen([xvfb, display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    return proc, {"DISPLAY": display}


def run_agent(relay: Any, api: Any, workdir: Path, name: str, seconds: float, warmup: float,
              prelude: str = "", env: dict[str, str] | None = None) -> dict[str, Any]:
    agent, device_id = perfkit.harness.Agent.enroll(relay, api, workdir / name, workdir / f"{name}-sandbox")
    argv = [sys.executable, "-c", prelude + "from coact.cli.main import main; main()",
            "agent", "run", "--data-dir", str(agent.data_dir)]
    log = (workdir / f"{name}.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **perfkit.harness.TEST_ENV, **(env or {})})
    try:
        perfkit.harness.wait_online(api, device_id, timeout=30)
        time.sleep(warmup)
        return measure(psutil.Process(proc.pid), seconds)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def floor(seconds: float) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds + 10})"])
    try:
        time.sleep(1)
        return measure(psutil.Process(proc.pid), seconds)
    finally:
        proc.kill()
        proc.wait()


@perfkit.temporary_workdir("coact-bench-footprint-")
def run(seconds: float = 30, warmup: float = 5, *, gui: bool = True, workdir: Path,
        do_record: bool = False) -> dict[str, Any]:
    relay = perfkit.start_relay(workdir)
    result: dict[str, Any] = {}
    xvfb = None
    try:
        api, _email = perfkit.login(relay)
        result["plain"] = run_agent(relay, api, workdir, "plain", seconds, warmup)
        if gui:
            probe = subprocess.run([sys.executable, "-c", "import pyautogui, pynput"], capture_output=True, text=True)
            xvfb, display = start_xvfb()
            probe = subprocess.run([sys.executable, "-c", "import pyautogui, pynput"], capture_output=True,
                                   text=True, env={**os.environ, **display})
            if probe.returncode == 0:
                result["gui"] = run_agent(relay, api, workdir, "gui", seconds, warmup, GUI_PRELUDE, display)
            else:
                result["gui_missing"] = probe.stderr.strip().splitlines()[-1]
    finally:
        relay.stop()
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
    result["floor"] = floor(seconds)
    print(result)
    plain, fl = result["plain"], result["floor"]
    gui_text = (f"; with pyautogui + pynput: RSS {result['gui']['rss_mb']} MB, CPU {result['gui']['cpu_pct']}%"
                if "gui" in result else f"; GUI libraries not measured: {result.get('gui_missing', 'skipped')}")
    perfkit.record(
        "agent footprint",
        f"idle RSS {plain['rss_mb']} MB (USS {plain['uss_mb']} MB), CPU {plain['cpu_pct']}% "
        f"({plain['cpu_ms']} ms in {seconds:g} s){gui_text}",
        f"bare `python -c sleep`: RSS {fl['rss_mb']} MB",
        f"{plain['rss_mb'] / fl['rss_mb']:.1f}x RSS",
        "≤ 40 MB RSS without GUI, near-zero idle CPU",
        f"python tests/perf/bench_footprint.py --seconds {seconds:g}",
        write=do_record,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--no-gui", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    perfkit.add_record_option(parser)
    args = parser.parse_args()
    run(args.seconds, gui=not args.no_gui, workdir=args.workdir, do_record=args.record)


if __name__ == "__main__":
    main()
