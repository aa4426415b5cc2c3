"""Lexical path rules shared by parameter validation, decisions and risk scoring.

Nothing here touches the filesystem: paths are judged as strings, the way the policy
must judge them on the relay, which has no access to the device's disk. The agent
re-checks every path on the real filesystem (symlinks, junctions) before acting.

Two flavours of absolute path are understood, chosen by the path's own shape:

- POSIX: starts with ``/`` (but not exactly ``//``, which POSIX leaves
  implementation-defined and Windows reads as a UNC share). Normalised with ``posixpath.normpath``; compared
  case-sensitively.
- Windows: a drive (``C:\\`` or ``C:/``) or a UNC share (``\\\\server\\share``).
  Normalised with ``ntpath.normpath``; compared case-insensitively, ``/`` and ``\\``
  alike. Forms whose meaning Win32 rewrites behind our back (``\\\\?\\`` and
  ``\\\\.\\`` device paths, alternate data streams, components ending in a dot or a
  space, reserved characters) are refused rather than guessed at.

A path of one flavour is never inside a root of the other.
"""

from __future__ import annotations

import ntpath
import posixpath
import re
from typing import Literal

Flavor = Literal["posix", "windows"]

_DRIVE = re.compile(r"[A-Za-z]:[\\/]")
_WINDOWS_RESERVED = re.compile(r'[<>"|?*\x00-\x1f]')


def flavor(path: str) -> Flavor | None:
    """The flavour of an absolute ``path``, or ``None`` if it is not absolute."""
    if path.startswith("/"):
        return "posix"
    if _DRIVE.match(path) or path.startswith("\\\\"):
        return "windows"
    return None


def path_problem(path: str) -> str | None:
    """Why ``path`` is not an acceptable absolute path, or ``None`` if it is."""
    if "\x00" in path:
        return "contains a NUL byte"
    kind = flavor(path)
    if kind is None:
        return f"{path!r} is not an absolute path"
    if kind == "posix":
        if path.startswith("//") and not path.startswith("///"):
            # POSIX leaves a leading "//" implementation-defined; Windows reads a UNC share.
            return f"{path!r}: a leading '//' is ambiguous (write one '/', or a UNC path with '\\\\')"
        return None
    if path[:4].replace("/", "\\") in ("\\\\?\\", "\\\\.\\"):
        return f"{path!r}: device and \\\\?\\ paths are not supported"
    drive, rest = ntpath.splitdrive(path)
    if not _DRIVE.match(path) and drive.count("\\") + drive.count("/") < 3:
        return f"{path!r}: a UNC path needs a server and a share"
    if ":" in rest:
        return f"{path!r}: ':' is only allowed after the drive letter"
    if _WINDOWS_RESERVED.search(rest):
        return f"{path!r} contains a character that Windows does not allow"
    for part in re.split(r"[\\/]", rest):
        if part not in ("", ".", "..") and part[-1] in ". ":
            return f"{path!r}: a component ending in a dot or a space is ambiguous on Windows"
    return None


def whole_file_system(path: str) -> str | None:
    """Why ``path`` is refused as a root for being a whole file system (``/``, ``C:\\``,
    a bare UNC share), or ``None``. Such a root holds every secret on the device,
    the agent's own key among them, so it is never a sandbox.
    """
    parts = components(path)
    if parts is None:
        return None
    kind, names = parts
    if len(names) == (0 if kind == "posix" else 1):
        return f"{path!r} is a whole file system; give a directory that holds only what actions may touch"
    return None


def components(path: str) -> tuple[Flavor, tuple[str, ...]] | None:
    """The flavour and normalised components of ``path`` (``None`` if unacceptable).

    For Windows paths the first component is the drive or UNC share, and every
    component is case-folded so that equal paths have equal components.
    """
    if path_problem(path) is not None:
        return None
    if flavor(path) == "posix":
        return "posix", tuple(p for p in posixpath.normpath(path).split("/") if p)
    drive, rest = ntpath.splitdrive(ntpath.normpath(path))
    parts = (drive.replace("/", "\\"), *(p for p in rest.split("\\") if p))
    return "windows", tuple(p.casefold() for p in parts)


def is_within(path: str, root: str) -> bool:
    """True if ``path`` is ``root`` or lies beneath it, judged lexically.

    Components are compared, not string prefixes: ``/sandbox2`` is not inside
    ``/sandbox``. ``..`` is resolved lexically (``/sandbox/../etc`` is ``/etc``).
    Relative paths, NUL bytes and refused Windows forms are never inside anything.
    """
    p = components(path)
    r = components(root)
    if p is None or r is None or p[0] != r[0]:
        return False
    return p[1][: len(r[1])] == r[1]
