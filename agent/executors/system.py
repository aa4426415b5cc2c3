"""``system.info`` and the telemetry in heartbeats (psutil)."""

from __future__ import annotations

import platform
import socket
import time
from typing import Any

import psutil


def telemetry() -> dict[str, Any]:
    """Cheap, bounded figures for every heartbeat."""
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": memory.percent,
        "load_1m": psutil.getloadavg()[0],
        "uptime_s": int(time.time() - psutil.boot_time()),
    }


def system_info() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage("/")
    return {
        "hostname": socket.gethostname(),
        "os": platform.system(),
        "os_release": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": psutil.cpu_count(),
        "memory_total": memory.total,
        "memory_available": memory.available,
        "disk_total": disk.total,
        "disk_free": disk.free,
        "boot_time": int(psutil.boot_time()),
    }
