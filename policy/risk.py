"""Risk assessment: how much harm could this action do, and why.

``assess`` gives every task a score from 0 to 100 and a level derived from it. The
relay uses the level to decide what a task needs before it runs (low risk is
queued, high risk waits for approvals); approvers see the reasons. Scores are plain
arithmetic over the action and its params, so the same task always gets the same
score on every relay and agent.

Each action starts at the base score of its ``ActionSpec.base_risk`` level; facts
about the params add to it (an overwrite, a system directory, an executable, a
recursive delete). The level is read back from the final score:

    low < 30 <= medium < 60 <= high < 85 <= critical

An unknown action or invalid params is rated critical (such a task is also denied).
"""

from __future__ import annotations

import ntpath
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coact.policy.actions import ACTIONS, ActionSpec, RiskLevel
from coact.policy.errors import ParamsError
from coact.policy.paths import components, is_within

__all__ = ["BASE_SCORES", "Risk", "RiskLevel", "assess", "level_for"]

BASE_SCORES: Mapping[RiskLevel, int] = {"low": 10, "medium": 40, "high": 70, "critical": 90}

# Where a write, move or delete can break or take over the machine.
_SYSTEM_ROOTS = (
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/boot", "/dev", "/proc",
    "/sys", "/var/lib", "/var/spool/cron", "/opt", "/System", "/Library", "/private/etc",
    "/Applications",
)
# The same on Windows, on whichever drive they live.
_WINDOWS_SYSTEM_DIRS = ("Windows", "Program Files", "Program Files (x86)", "ProgramData")
# Directories that hold credentials; a component with one of these names, anywhere.
_SECRET_DIRS = frozenset({".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker", ".password-store"})
# Files that are credentials or run on their own (shell start-up, autostart, cron).
_SECRET_NAMES = frozenset({
    ".env", ".netrc", ".pgpass", ".git-credentials", "id_rsa", "id_ed25519", "id_ecdsa",
    "authorized_keys", "known_hosts", "shadow", "sudoers",
})
_EXECUTABLE_SUFFIXES = frozenset({
    ".sh", ".bash", ".zsh", ".fish", ".command", ".run", ".py", ".pl", ".rb", ".exe",
    ".com", ".bat", ".cmd", ".ps1", ".psm1", ".vbs", ".vbe", ".js", ".jse", ".wsf",
    ".msi", ".scr", ".dll", ".so", ".dylib", ".jar", ".app", ".desktop", ".service",
    ".plist", ".lnk",
})
# Programs that turn their arguments into arbitrary code.
_INTERPRETERS = frozenset({
    "sh", "bash", "zsh", "dash", "ksh", "fish", "csh", "tcsh", "cmd", "powershell",
    "pwsh", "python", "python3", "perl", "ruby", "node", "osascript", "wscript",
    "cscript", "mshta", "rundll32", "regsvr32", "sudo", "su", "doas", "env", "xargs",
})


@dataclass(frozen=True)
class Risk:
    """A risk level, the score it came from (0..100) and human-readable reasons."""

    level: RiskLevel
    score: int
    reasons: tuple[str, ...]


def level_for(score: int) -> RiskLevel:
    """The level of a score: low < 30 <= medium < 60 <= high < 85 <= critical."""
    if score >= 85:
        return "critical"
    if score >= 60:
        return "high"
    if score >= 30:
        return "medium"
    return "low"


def assess(action: str, params: Mapping[str, Any]) -> Risk:
    """Score ``action`` with ``params``. Never raises: bad input is critical."""
    spec = ACTIONS.get(action) if isinstance(action, str) else None
    if spec is None:
        return Risk("critical", 100, (f"unknown action {action!r}",))
    try:
        p = spec.validate(params)
    except ParamsError as exc:
        return Risk("critical", 100, (f"invalid params: {exc}",))

    score = BASE_SCORES[spec.base_risk]
    reasons = [_BASE_REASONS[action]]
    for points, reason in _factors(spec, p):
        score += points
        reasons.append(reason)
    score = max(0, min(100, score))
    return Risk(level_for(score), score, tuple(reasons))


_BASE_REASONS: Mapping[str, str] = {
    "file.list": "lists a directory (read only)",
    "file.stat": "reads file metadata (read only)",
    "file.read": "reads a file's content",
    "file.hash": "hashes a file (read only)",
    "file.write": "writes a file",
    "file.copy": "copies a file",
    "file.move": "moves a file (it disappears from its old place)",
    "file.delete": "deletes data, which cannot be undone",
    "app.launch": "starts a program, which can do anything the user can",
    "app.close": "closes a program; unsaved work may be lost",
    "app.list": "lists running programs (read only)",
    "input.move": "controls the mouse of the user's session",
    "input.click": "clicks in the user's session, acting as the user",
    "input.type": "types into the user's session, acting as the user",
    "input.hotkey": "presses keys in the user's session, acting as the user",
    "screen.capture": "captures the screen, which may show private information",
    "serial.list": "lists serial ports (read only)",
    "serial.write": "sends data to a physical device",
    "serial.query": "sends data to a physical device and reads the reply",
    "watch.add": "watches a path for changes (read only)",
    "watch.remove": "stops a watch",
    "system.info": "reads system information (read only)",
}


def _factors(spec: ActionSpec, p: Mapping[str, Any]) -> list[tuple[int, str]]:
    """The (points, reason) pairs that raise the base score for these params."""
    found: list[tuple[int, str]] = []
    for name in spec.paths_read:
        if name not in spec.paths_written and _is_secret(p[name]):
            found.append((20, f"reads {p[name]}, which looks like a credential"))
    for name in spec.paths_written:
        found += _write_factors(p[name])
    if p.get("overwrite") is True:
        found.append((10, "may overwrite an existing file"))
    if spec.name == "file.write":
        mode = p["mode"]
        if mode & 0o111:
            found.append((15, f"makes the file executable (mode {mode:#o})"))
    if spec.name == "file.delete" and p["recursive"]:
        found.append((20, "deletes a whole directory tree"))
    if spec.name == "app.launch":
        program = _basename(p["argv"][0]).casefold().removesuffix(".exe")
        if program in _INTERPRETERS:
            found.append((10, f"{program} runs arbitrary code from its arguments"))
    if spec.name == "watch.add" and p["recursive"]:
        found.append((5, "watches a whole directory tree"))
    return found


def _write_factors(path: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    system = _system_location(path)
    if system is not None:
        found.append((30, f"changes {path}, inside system location {system}"))
    if _is_secret(path):
        found.append((30, f"changes {path}, which looks like a credential"))
    elif _has_dot_component(path):
        found.append((20, f"changes {path}, a hidden file or directory (often configuration)"))
    suffix = posixpath.splitext(_basename(path))[1].casefold()
    if suffix in _EXECUTABLE_SUFFIXES:
        found.append((20, f"changes {path}, which looks executable ({suffix})"))
    return found


def _system_location(path: str) -> str | None:
    parsed = components(path)
    if parsed is not None and parsed[0] == "windows":
        drive = parsed[1][0].upper() if parsed[1][0].endswith(":") else parsed[1][0]
        roots: tuple[str, ...] = tuple(f"{drive}\\{name}" for name in _WINDOWS_SYSTEM_DIRS)
    else:
        roots = _SYSTEM_ROOTS
    return next((root for root in roots if is_within(path, root)), None)


def _parts(path: str) -> tuple[str, ...]:
    parsed = components(path)
    return parsed[1] if parsed is not None else ()


def _basename(path: str) -> str:
    return ntpath.basename(path) if "\\" in path else posixpath.basename(path)


def _is_secret(path: str) -> bool:
    parts = [part.casefold() for part in _parts(path)]
    return bool(parts) and (parts[-1] in _SECRET_NAMES or any(p in _SECRET_DIRS for p in parts))


def _has_dot_component(path: str) -> bool:
    return any(part.startswith(".") for part in _parts(path))
