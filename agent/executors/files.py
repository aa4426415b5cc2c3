"""The ``file.*`` executors: file actions confined to allowed roots.

Safety model (see ``docs/actions/files.md`` for the user-facing version):

* A requested path must be absolute, without NUL bytes and without any ``..``
  component. It is normalised lexically (``//`` and ``.`` dropped) and must then
  start with the components of an allowed root: the read roots for actions that
  only read, the write roots for actions that change anything.
* Each root is resolved once per action with ``os.path.realpath``: the root itself
  may legitimately sit behind a symlink (``/tmp`` on macOS). The root is trusted
  configuration; everything *below* it is not.
* Every component below the root is opened relative to its parent directory's fd
  with ``O_NOFOLLOW``. A symlink anywhere below the root is therefore refused by the
  kernel at open time, so swapping a directory for a symlink after any check we made
  (a TOCTOU race) cannot lead us outside the root. We never resolve a path and then
  open it by name.
* Writes go to a temporary file in the destination directory (created through the
  directory fd with ``O_EXCL | O_NOFOLLOW``), are fsynced and renamed into place;
  the temporary file is removed on every error path.
* The agent's own files (``FileRoots.protected``: its data directory, with the key,
  the journal and outbox database and the policy) are out of reach whatever the
  roots say. A target whose real path (root realpath plus components, which cannot
  hide a symlink) lies in a protected directory is refused before any I/O, and every
  object an action opens, stats, lists, replaces or removes is compared by
  ``(st_dev, st_ino)`` with the protected directories and the entries directly in
  them, which catches what a path comparison cannot: case variants on case-blind
  file systems, bind mounts and hard links to the key. A directory action whose
  tree contains a protected directory (recursive delete, move) is refused whole.
* Each root, when opened, must be owned by the agent's user or root and not be
  writable by group or others: a root someone else controls is not confinement.

Only POSIX systems with ``openat``-style ``dir_fd`` support (Linux, macOS, the BSDs)
are supported. Elsewhere (Windows) every action fails with code ``unsupported``.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import errno
import hashlib
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from coact.agent.executors.errors import ActionError, Stopped
from coact.shared.clock import to_rfc3339

__all__ = ["FileRoots", "run_file_action", "ActionError"]

# Read and hash in chunks so a large file never sits in memory whole.
_CHUNK = 1024 * 1024
# Recursive list/delete keep one fd open per level; bound that (and the recursion).
MAX_DEPTH = 128

# getattr: these constants do not exist on Windows, where the module must still import
# so that callers get a clean "unsupported" error instead of an ImportError.
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
# O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer appears.
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK
_READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
# Errors the kernel gives when O_NOFOLLOW / O_DIRECTORY meets a symlink: Linux says
# ELOOP (ENOTDIR with O_DIRECTORY), FreeBSD says EMLINK.
_SYMLINK_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR})


def _platform_supported() -> bool:
    return (
        os.name == "posix"
        and _O_NOFOLLOW != 0
        and _O_DIRECTORY != 0
        and os.open in os.supports_dir_fd
        and os.rename in os.supports_dir_fd
        and os.stat in os.supports_dir_fd
    )


@dataclass(frozen=True)
class FileRoots:
    """Where file actions may read and write, and how much one write may carry.

    ``read`` and ``write`` are absolute directory paths. They are independent:
    a directory that should be both readable and writable is listed in both.
    """

    read: tuple[str, ...]
    write: tuple[str, ...]
    max_write_bytes: int = 10 * 1024 * 1024
    # Absolute paths no action may reach, nor anything below them (module docs).
    protected: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Roots are configuration: fail loudly at construction, not on first use.
        for name in ("read", "write", "protected"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ValueError(f"FileRoots.{name} must be a tuple of paths, not {value!r}")
            value = tuple(value)
            object.__setattr__(self, name, value)
            for root in value:
                if not isinstance(root, str) or not root.startswith("/") or "\x00" in root:
                    raise ValueError(f"file root {root!r} must be an absolute path")
        if (
            not isinstance(self.max_write_bytes, int)
            or isinstance(self.max_write_bytes, bool)
            or self.max_write_bytes < 0
        ):
            raise ValueError("FileRoots.max_write_bytes must be a non-negative integer")


# --------------------------------------------------------------------------- paths


# Protected directories may hold a few dozen entries; bound the scan anyway.
_MAX_PROTECTED_ENTRIES = 4096


@dataclass(frozen=True)
class _Guard:
    """The agent's own files, as one action sees them: real paths and identities."""

    real: tuple[tuple[str, ...], ...] = ()  # realpath components of each protected path
    identities: frozenset[tuple[int, int]] = frozenset()  # (st_dev, st_ino)

    def covers(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) in self.identities

    def check(self, st: os.stat_result | None, shown: str) -> None:
        if st is not None and self.covers(st):
            raise _protected(shown)

    def check_at(self, parent_fd: int, name: str, shown: str) -> None:
        self.check(_lstat_at(parent_fd, name), shown)

    def check_real(self, real: tuple[str, ...], shown: str) -> None:
        """Refuse a path lying in (or equal to) a protected path, judged on real components."""
        if any(real[: len(guarded)] == guarded for guarded in self.real):
            raise _protected(shown)

    def check_tree(self, real: tuple[str, ...], shown: str) -> None:
        """Refuse a directory action on ``real`` whose tree would contain a protected path."""
        if any(guarded[: len(real)] == real for guarded in self.real):
            raise ActionError(
                "protected", f"{shown} contains the agent's own files; it is refused whatever the policy says"
            )


def _protected(shown: str) -> ActionError:
    return ActionError(
        "protected", f"{shown} is one of the agent's own files; no action may reach it, whatever the policy says"
    )


def _resolve_guard(paths: tuple[str, ...]) -> _Guard:
    """Resolve the protected paths now, once per action: their real paths, and the
    identities of each and of the entries directly in it (for hard links to the key)."""
    real: list[tuple[str, ...]] = []
    identities: set[tuple[int, int]] = set()
    for path in paths:
        resolved = os.path.realpath(path)
        real.append(_split(resolved))
        try:
            st = os.stat(resolved, follow_symlinks=False)
        except OSError:
            continue  # not there (yet): the real-path comparison still holds
        identities.add((st.st_dev, st.st_ino))
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            with os.scandir(resolved) as entries:
                for count, entry in enumerate(entries):
                    if count >= _MAX_PROTECTED_ENTRIES:
                        break
                    # A real lstat, not readdir's d_ino: overlay file systems may report
                    # a different number there than stat does.
                    inner = entry.stat(follow_symlinks=False)
                    identities.add((inner.st_dev, inner.st_ino))
        except OSError:
            pass  # unreadable now: the real-path comparison still holds
    return _Guard(tuple(real), frozenset(identities))


@dataclass(frozen=True)
class _Root:
    configured: str  # as the admin wrote it, for messages
    real: str  # realpath, what we open
    spellings: tuple[tuple[str, ...], ...]  # components a request may start with
    guard: _Guard = _Guard()  # the agent's own files, which no path below this root may reach

    def real_parts(self, rel: tuple[str, ...]) -> tuple[str, ...]:
        """Real components of ``rel`` below this root: below the root no symlink is
        ever followed, so the root's realpath plus the components is the object."""
        return _split(self.real) + rel


@dataclass(frozen=True)
class _Target:
    path: str  # normalised path as the user gave it, for outputs and messages
    parts: tuple[str, ...]
    root: _Root
    rel: tuple[str, ...]  # components below the root; empty for the root itself

    def shown(self, depth: int) -> str:
        """Display path of the ``depth``-th component below the root (0-based)."""
        return _display(self.parts[: len(self.parts) - len(self.rel) + depth + 1])

    @property
    def parent_shown(self) -> str:
        return _display(self.parts[:-1])

    @property
    def real(self) -> tuple[str, ...]:
        return self.root.real_parts(self.rel)


@dataclass(frozen=True)
class _Roots:
    """Everything one call works within: its roots, its write limit, its cancel flag."""

    read: tuple[_Root, ...]
    write: tuple[_Root, ...]
    max_write_bytes: int
    # Set by the agent when the task timed out: long loops stop instead of running on
    # in a worker thread that nobody waits for any more.
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def all(self) -> tuple[_Root, ...]:
        return self.read + self.write


def _display(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def _split(value: str) -> tuple[str, ...]:
    """Lexically normalise an absolute path into components (no I/O)."""
    return tuple(part for part in value.split("/") if part not in ("", "."))


def _parse_path(value: object, label: str = "path") -> tuple[str, ...]:
    """Check a requested path and return its components.

    ``..`` is refused outright rather than normalised away: with symlinks in play a
    lexical ``..`` and the kernel's ``..`` can disagree, and no legitimate caller
    needs it since every path is absolute.
    """
    if not isinstance(value, str) or not value:
        raise ActionError("invalid_params", f"{label} must be a non-empty absolute path")
    if "\x00" in value:
        raise ActionError("invalid_params", f"{label} {value!r} contains a NUL byte")
    if not value.startswith("/"):
        raise ActionError("invalid_params", f"{label} {value!r} is not an absolute path")
    parts = _split(value)
    if ".." in parts:
        raise ActionError(
            "invalid_params", f"{label} {value!r} contains a '..' component, which is not allowed"
        )
    return parts


def _resolve_roots(paths: tuple[str, ...], guard: _Guard) -> tuple[_Root, ...]:
    resolved = []
    for configured in paths:
        real = os.path.realpath(configured)
        spellings = {_split(real)}
        # A request may also use the root as configured (/tmp/x on macOS, where the
        # real path is /private/tmp/x), unless it has '..', whose lexical meaning may
        # differ from the kernel's; such a root is matched by its real path only.
        if ".." not in _split(configured):
            spellings.add(_split(configured))
        ordered = tuple(sorted(spellings, key=len, reverse=True))
        resolved.append(_Root(configured=configured, real=real, spellings=ordered, guard=guard))
    return tuple(resolved)


def _match_root(parts: tuple[str, ...], roots: tuple[_Root, ...]) -> tuple[_Root, int] | None:
    """The root with the longest spelling that ``parts`` starts with, and that length.

    Longest wins so that a nested root that is itself a symlink (allowed: roots are
    trusted) is entered through its resolved path instead of refused as a symlink
    below the outer root.
    """
    best: tuple[_Root, int] | None = None
    for root in roots:
        for spelling in root.spellings:
            if parts[: len(spelling)] == spelling and (best is None or len(spelling) > best[1]):
                best = (root, len(spelling))
    return best


def _locate(value: object, label: str, roots: tuple[_Root, ...], kind: str) -> _Target:
    parts = _parse_path(value, label)
    found = _match_root(parts, roots)
    path = _display(parts)
    if found is None:
        if not roots:
            raise ActionError(
                "outside_roots", f"{path} is not allowed: no {kind} roots are configured"
            )
        listed = ", ".join(root.configured for root in roots)
        raise ActionError("outside_roots", f"{path} is outside the allowed {kind} roots ({listed})")
    root, depth = found
    target = _Target(path=path, parts=parts, root=root, rel=parts[depth:])
    # Before any I/O: also refuses a file not yet there (a write into the data dir).
    root.guard.check_real(target.real, path)
    return target


def _is_root(parts: tuple[str, ...], roots: tuple[_Root, ...]) -> bool:
    return any(parts == spelling for root in roots for spelling in root.spellings)


def _root_below(parts: tuple[str, ...], roots: tuple[_Root, ...]) -> str | None:
    """An allowed root strictly inside ``parts``, which a recursive change would destroy."""
    for root in roots:
        for spelling in root.spellings:
            if len(spelling) > len(parts) and spelling[: len(parts)] == parts:
                return root.configured
    return None


# ---------------------------------------------------------------------- OS errors


def _os_error(exc: OSError, shown: str) -> ActionError:
    """Translate an OS error on ``shown`` into an ActionError an end user can read."""
    code = exc.errno
    if code == errno.ENOENT:
        return ActionError("not_found", f"{shown} does not exist")
    if code == errno.EEXIST:
        return ActionError("exists", f"{shown} already exists")
    if code in (errno.ELOOP, errno.EMLINK):
        return ActionError("symlink_refused", f"{shown} is a symbolic link, which is refused")
    if code == errno.EISDIR:
        return ActionError("is_directory", f"{shown} is a directory")
    if code == errno.ENOTDIR:
        return ActionError("not_directory", f"{shown} is not a directory")
    if code == errno.ENOTEMPTY:
        return ActionError("not_empty", f"{shown} is not empty")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ActionError("permission_denied", f"permission denied for {shown}: {exc.strerror}")
    if code == errno.EFBIG:
        return ActionError("too_large", f"{shown} would exceed the file size limit")
    if code == errno.ENAMETOOLONG:
        return ActionError("invalid_params", f"{shown} is too long for the file system")
    if code == errno.EINVAL:
        return ActionError("invalid_params", f"{shown}: {exc.strerror}")
    return ActionError("io_error", f"{shown}: {exc.strerror or exc}")


def _explain(exc: OSError, parent_fd: int, name: str, shown: str) -> ActionError:
    """Explain a failed open of ``name``: the errno alone cannot tell a symlink apart.

    The lstat here only picks the message; the refusal itself already happened
    in the kernel, so a race with it cannot weaken anything.
    """
    if exc.errno in _SYMLINK_ERRNOS:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError:
            return _os_error(exc, shown)
        if stat.S_ISLNK(st.st_mode):
            return _symlink_refused(shown)
        if not stat.S_ISDIR(st.st_mode):
            return ActionError("not_directory", f"{shown} is not a directory")
    return _os_error(exc, shown)


def _symlink_refused(shown: str) -> ActionError:
    return ActionError(
        "symlink_refused",
        f"{shown} is a symbolic link; symbolic links below an allowed root are not followed",
    )


# ----------------------------------------------------------------- fd walking


def _close(fd: int) -> None:
    with suppress(OSError):
        os.close(fd)


def _open_root(root: _Root) -> int:
    # The root is trusted and was resolved with realpath; O_NOFOLLOW still catches a
    # final component swapped for a symlink since then.
    try:
        fd = os.open(root.real, _DIR_FLAGS)
    except FileNotFoundError as exc:
        raise ActionError(
            "not_found", f"the allowed root {root.configured} does not exist"
        ) from exc
    except OSError as exc:
        if exc.errno in _SYMLINK_ERRNOS:
            raise ActionError(
                "not_directory", f"the allowed root {root.configured} is not a directory"
            ) from exc
        raise _os_error(exc, root.configured) from exc
    try:
        st = os.fstat(fd)
        root.guard.check(st, root.configured)
        if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
            raise ActionError(
                "root_unsafe",
                f"the allowed root {root.configured} must be owned by the agent's user or root and "
                "not be writable by group or others",
            )
    except BaseException:
        _close(fd)
        raise
    return fd


def _open_dir_at(parent_fd: int, name: str, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        raise _explain(exc, parent_fd, name, shown) from exc


def _walk(target: _Target, depth: int) -> int:
    """Open the directory ``depth`` components below the root, with no symlink on the way."""
    fd = _open_root(target.root)
    try:
        for index, name in enumerate(target.rel[:depth]):
            child = _open_dir_at(fd, name, target.shown(index))
            os.close(fd)
            fd = child
            # The directory we now hold, not its name: catches case variants and mounts.
            target.root.guard.check(os.fstat(fd), target.shown(index))
    except BaseException:
        _close(fd)
        raise
    return fd


@contextmanager
def _parent_dir(target: _Target) -> Iterator[int]:
    """The fd of the directory holding ``target``'s final component (target below root)."""
    assert target.rel, "callers handle the root itself"
    fd = _walk(target, len(target.rel) - 1)
    try:
        yield fd
    finally:
        _close(fd)


@contextmanager
def _directory(target: _Target) -> Iterator[int]:
    """The fd of ``target`` itself, which must be a directory (the root included)."""
    fd = _walk(target, len(target.rel))
    try:
        yield fd
    finally:
        _close(fd)


def _lstat_at(parent_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_regular(target: _Target) -> tuple[int, os.stat_result]:
    """Open ``target`` for reading; it must be a regular file reached without symlinks."""
    if not target.rel:
        raise ActionError("is_directory", f"{target.path} is a directory")
    with _parent_dir(target) as parent:
        try:
            fd = os.open(target.rel[-1], _READ_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise _explain(exc, parent, target.rel[-1], target.path) from exc
    # fstat the fd we hold, not the name: this is the object we will actually read.
    st = os.fstat(fd)
    if target.root.guard.covers(st):  # a hard link to the key, say
        _close(fd)
        raise _protected(target.path)
    if stat.S_ISREG(st.st_mode):
        return fd, st
    _close(fd)
    if stat.S_ISDIR(st.st_mode):
        raise ActionError("is_directory", f"{target.path} is a directory, not a file")
    raise ActionError(
        "not_regular", f"{target.path} is not a regular file (device, FIFO or socket)"
    )


def _read_chunks(fd: int) -> Iterator[bytes]:
    while chunk := os.read(fd, _CHUNK):
        yield chunk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(fd: int) -> None:
    # Makes the rename durable. Best effort: some file systems refuse fsync on a
    # directory, and the file is already in place, so failing the action would lie.
    with suppress(OSError):
        os.fsync(fd)


# -------------------------------------------------------------- atomic placement


def _check_destination(parent_fd: int, name: str, shown: str, overwrite: bool) -> None:
    st = _lstat_at(parent_fd, name)
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _symlink_refused(shown)
    if stat.S_ISDIR(st.st_mode):
        raise ActionError(
            "is_directory", f"{shown} is a directory; it cannot be replaced by a file"
        )
    if not overwrite:
        raise ActionError("exists", f"{shown} already exists; pass overwrite=true to replace it")


def _link_no_replace(parent_fd: int, src: str, dst_fd: int, dst: str, shown: str) -> bool:
    """Hard-link ``src`` to ``dst`` unless ``dst`` exists: an atomic "rename, no replace".

    Returns False when the file system has no hard links, so the caller can fall back.
    """
    try:
        os.link(src, dst, src_dir_fd=parent_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    except FileExistsError as exc:
        raise ActionError(
            "exists", f"{shown} already exists; pass overwrite=true to replace it"
        ) from exc
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            return False
        raise
    return True


def _rename_into_place(
    src_fd: int, src: str, dst_fd: int, dst: str, shown: str, overwrite: bool
) -> None:
    if overwrite:
        # rename(2) replaces atomically and never follows a symlink at dst: a link
        # swapped in there is replaced, its target is untouched.
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    if _link_no_replace(src_fd, src, dst_fd, dst, shown):
        os.unlink(src, dir_fd=src_fd)
        return
    # No hard links (e.g. FAT): check, then rename. A file created at dst in between
    # would be replaced; documented as a limitation of such file systems.
    if _lstat_at(dst_fd, dst) is not None:
        raise ActionError("exists", f"{shown} already exists; pass overwrite=true to replace it")
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _place_at(
    parent_fd: int,
    name: str,
    shown: str,
    chunks: Iterable[bytes],
    *,
    mode: int,
    overwrite: bool,
    limit: int,
    cancel: threading.Event,
) -> tuple[int, str]:
    """Write ``chunks`` to ``name`` in ``parent_fd`` atomically; return (size, sha256).
    Stopped by ``cancel`` between chunks, it places nothing (the temporary file goes)."""
    try:
        _check_destination(parent_fd, name, shown, overwrite)
    except OSError as exc:
        raise _os_error(exc, shown) from exc
    temp = f".coact-tmp-{secrets.token_hex(8)}"
    try:
        fd = os.open(temp, _TEMP_FLAGS, 0o600, dir_fd=parent_fd)
    except OSError as exc:
        raise _os_error(exc, f"a temporary file next to {shown}") from exc
    placed = False
    try:
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in chunks:
                if cancel.is_set():
                    raise Stopped(
                        f"writing {shown} was stopped after {size} bytes; nothing was placed there",
                        {"path": shown, "bytes_written": size, "placed": False},
                    )
                size += len(chunk)
                # Re-checked while streaming: a copied source may grow after its fstat.
                if size > limit:
                    raise ActionError(
                        "too_large", f"content for {shown} exceeds the write limit of {limit} bytes"
                    )
                digest.update(chunk)
                _write_all(fd, chunk)
            # Explicit fchmod so the requested mode is exact, whatever the umask.
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        _rename_into_place(parent_fd, temp, parent_fd, name, shown, overwrite)
        placed = True
        _fsync_dir(parent_fd)
        return size, digest.hexdigest()
    except OSError as exc:
        raise _os_error(exc, shown) from exc
    finally:
        if not placed:
            with suppress(OSError):
                os.unlink(temp, dir_fd=parent_fd)


def _place(
    target: _Target, chunks: Iterable[bytes], *, mode: int, overwrite: bool, limit: int,
    cancel: threading.Event,
) -> tuple[int, str]:
    if not target.rel:
        raise ActionError(
            "root_refused", f"{target.path} is an allowed root directory; give a file path below it"
        )
    try:
        with _parent_dir(target) as parent:
            target.root.guard.check_at(parent, target.rel[-1], target.path)
            return _place_at(
                parent,
                target.rel[-1],
                target.path,
                chunks,
                mode=mode,
                overwrite=overwrite,
                limit=limit,
                cancel=cancel,
            )
    except ActionError as err:
        if err.code == "not_found":
            # Only the walk to the parent can say not_found here: say what to do about it.
            raise ActionError(
                "not_found", f"{err.message}; the parent directory must exist (it is not created)"
            ) from err
        raise


# ---------------------------------------------------------------------- params


def _bool(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise ActionError("invalid_params", f"{name} must be true or false")
    return value


def _int(
    params: Mapping[str, Any], name: str, default: int, *, low: int, high: int | None = None
) -> int:
    value = params.get(name, default)
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ActionError("invalid_params", f"{name} must be an integer {bounds}")
    return value


def _choice(params: Mapping[str, Any], name: str, default: str, options: tuple[str, ...]) -> str:
    value = params.get(name, default)
    if value not in options:
        raise ActionError("invalid_params", f"{name} must be one of {', '.join(options)}")
    return str(value)


def _content(params: Mapping[str, Any], encoding: str) -> bytes:
    content = params.get("content")
    if not isinstance(content, str):
        raise ActionError("invalid_params", "content must be a string")
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ActionError("invalid_params", "content is not valid base64") from exc
    try:
        return content.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise ActionError("invalid_params", "content is not encodable as UTF-8") from exc


# ------------------------------------------------------------------- outputs


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _mtime(st: os.stat_result) -> str:
    return to_rfc3339(datetime.fromtimestamp(st.st_mtime, UTC))


def _join(shown: str, name: str) -> str:
    return shown.rstrip("/") + "/" + name


# ------------------------------------------------------------------- actions


def _file_list(params: Mapping[str, Any], roots: _Roots) -> dict[str, Any]:
    target = _locate(params.get("path"), "path", roots.read, "read")
    recursive = _bool(params, "recursive", False)
    max_entries = _int(params, "max_entries", 1000, low=0)
    entries: list[dict[str, Any]] = []
    truncated = False

    def walk(dir_fd: int, shown: str, depth: int) -> None:
        nonlocal truncated
        # listdir on the fd: names come from the directory we hold open, not a path.
        for name in sorted(os.listdir(dir_fd)):
            if roots.cancel.is_set():
                raise Stopped(
                    f"listing {target.path} was stopped after {len(entries)} entries",
                    {"path": target.path, "listed": len(entries)},
                )
            if len(entries) >= max_entries:
                truncated = True
                return
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we were listing
            if target.root.guard.covers(st):
                continue  # the agent's own files are not revealed, not even by name
            path = _join(shown, name)
            entries.append(
                {
                    "name": name,
                    "path": path,
                    "type": _kind(st.st_mode),
                    "size": st.st_size,
                    "mtime": _mtime(st),
                }
            )
            if recursive and stat.S_ISDIR(st.st_mode):
                if depth >= MAX_DEPTH:
                    truncated = True
                    continue
                try:
                    # O_NOFOLLOW again: the entry may have become a symlink since the stat.
                    child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue  # listed, but not descended into (gone, swapped or unreadable)
                try:
                    if not target.root.guard.covers(os.fstat(child)):  # swapped since the stat
                        walk(child, path, depth + 1)
                finally:
                    os.close(child)
                if truncated:
                    return

    with _directory(target) as fd:
        walk(fd, target.path, 1)
    return {"entries": entries, "truncated": truncated}


def _file_stat(params: Mapping[str, Any], roots: _Roots) -> dict[str, Any]:
    target = _locate(params.get("path"), "path", roots.read, "read")
    if not target.rel:
        with _directory(target) as fd:
            st = os.fstat(fd)  # the root: _open_root already checked it against the guard
    else:
        with _parent_dir(target) as parent:
            # lstat semantics: a final symlink is reported as such, never followed.
            st_or_none = _lstat_at(parent, target.rel[-1])
        target.root.guard.check(st_or_none, target.path)
        if st_or_none is None:
            raise ActionError("not_found", f"{target.path} does not exist")
        st = st_or_none
    return {
        "path": target.path,
        "type": _kind(st.st_mode),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": _mtime(st),
    }


def _file_read(params: Mapping[str, Any], roots: _Roots) -> dict[str, Any]:
    target = _locate(params.get("path"), "path", roots.read, "read")
    max_bytes = _int(params, "max_bytes", 1024 * 1024, low=0)
    encoding = _choice(params, "encoding", "utf-8", ("utf-8", "base64"))
    fd, st = _open_regular(target)
    try:
        buffer = bytearray()
        # One byte past the limit tells "exactly max_bytes" from "truncated".
        while len(buffer) <= max_bytes:
            if roots.cancel.is_set():
                raise Stopped(
                    f"reading {target.path} was stopped after {len(buffer)} bytes; nothing is returned",
                    {"path": target.path, "bytes_read": len(buffer)},
                )
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - len(buffer)))
            if not chunk:
                break
            buffer += chunk
    finally:
        os.close(fd)
    truncated = len(buffer) > max_bytes
    data = bytes(buffer[:max_bytes])
    if encoding == "base64":
        content = base64.b64encode(data).decode("ascii")
    else:
        # Incremental decoder: when truncated, a multi-byte character cut at the
        # limit is dropped instead of being reported as invalid UTF-8.
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            content = decoder.decode(data, final=not truncated)
        except UnicodeDecodeError as exc:
            raise ActionError(
                "not_text", f"{target.path} is not UTF-8 text; read it with encoding=base64"
            ) from exc
    return {
        "path": target.path,
        "size": st.st_size,
        "content": content,
        "encoding": encoding,
        "truncated": truncated,
    }


def _file_write(params: Mapping[str, Any], roots: _Roots) -> dict[str, Any]:
    target = _locate(params.get("path"), "path", roots.write, "write")
    encoding = _choice(params, "encoding", "utf-8", ("utf-8", "base64"))
    overwrite = _bool(params, "overwrite", False)
    # Permission bits only: setuid/setgid/sticky have no business in an RPA write.
    mode = _int(params, "mode", 0o644, low=0, high=0o777)
    data = _content(params, encoding)
    limit = roots.max_write_bytes
    if len(data) > limit:
        raise ActionError(
            "too_large", f"content is {len(data)} bytes; the write limit is {limit} bytes"
        )
    size, digest = _place(target, [data], mode=mode, overwrite=overwrite, limit=limit, cancel=roots.cancel)
    return {"path": target.path, "size": size, "sha256": digest}


def _file_copy(params: Mapping[str, Any], roots: _Roots) -> dict[str, Any]:
    src = _locate(params.get("src"), "src", roots.read, "read")
    dst = _locate(params.get("dst"), "dst", roots.write, "write")
    overwrite = _bool(params, "overwrite", False)
    limit = roots.max_write_bytes
    fd, st = _open_regular(src)
    try:
        if st.st_size > limit:
            raise ActionError(
                "too_large", f"{src.path} is {st.st_size} bytes; the write limit is {limit} bytes"
            )
        mode = stat.S_IMODE(st.st_mode) & 0o777
        size, digest = _place(
            dst, _read_chunks(fd), mode=mode, overwrite=overwrite, limit=limit, cancel=roots.cancel
        )
    finally:
        os.close(fd)
    return {"src": src.path, "dst": dst.path, "size": size, "sha256": digest}


def _file_move(params: Mapping[str, Any], roots: _Roots) -> dict[str, Any]:
    src = _locate(params.get("src"), "src", roots.write, "write")
    dst = _locate(params.get("dst"), "dst", roots.write, "write")
    overwrite = _bool(params, "overwrite", False)
    if not src.rel or _is_root(src.parts, roots.all):
        raise ActionError("root_refused", f"{src.path} is an allowed root and cannot be moved")
    if (inner := _root_below(src.parts, roots.all)) is not None:
        raise ActionError(
            "root_refused", f"{src.path} contains the allowed root {inner}; it cannot be moved"
        )
    if not dst.rel or _is_root(dst.parts, roots.all):
        raise ActionError("root_refused", f"{dst.path} is an allowed root and cannot be replaced")
    src.root.guard.check_tree(src.real, src.path)
    with _parent_dir(src) as src_fd, _parent_dir(dst) as dst_fd:
        sname, dname = src.rel[-1], dst.rel[-1]
        st = _lstat_at(src_fd, sname)
        src.root.guard.check(st, src.path)
        if st is None:
            raise ActionError("not_found", f"{src.path} does not exist")
        if stat.S_ISLNK(st.st_mode):
            raise _symlink_refused(src.path)
        is_dir = stat.S_ISDIR(st.st_mode)
        if not is_dir and not stat.S_ISREG(st.st_mode):
            raise ActionError("not_regular", f"{src.path} is not a regular file or directory")
        dst_st = _lstat_at(dst_fd, dname)
        dst.root.guard.check(dst_st, dst.path)
        if dst_st is not None:
            if stat.S_ISLNK(dst_st.st_mode):
                raise _symlink_refused(dst.path)
            if not overwrite:
                raise ActionError(
                    "exists", f"{dst.path} already exists; pass overwrite=true to replace it"
                )
        try:
            if is_dir:
                # Directories cannot be hard-linked; rename(2) itself refuses to replace a
                # file or a non-empty directory, so only an empty one could be replaced.
                os.rename(sname, dname, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            else:
                _rename_into_place(src_fd, sname, dst_fd, dname, dst.path, overwrite)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise _os_error(exc, f"moving {src.path} to {dst.path}") from exc
            if is_dir:
                raise ActionError(
                    "unsupported",
                    f"{src.path} and {dst.path} are on different file systems; "
                    "moving a directory across file systems is not supported",
                ) from exc
            _move_across_devices(src, src_fd, dst, dst_fd, overwrite, roots.max_write_bytes, roots.cancel)
    return {"src": src.path, "dst": dst.path}


def _move_across_devices(
    src: _Target, src_fd: int, dst: _Target, dst_fd: int, overwrite: bool, limit: int,
    cancel: threading.Event,
) -> None:
    """Copy atomically to the other file system, then unlink the source."""
    try:
        fd = os.open(src.rel[-1], _READ_FLAGS, dir_fd=src_fd)
    except OSError as exc:
        raise _explain(exc, src_fd, src.rel[-1], src.path) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ActionError("not_regular", f"{src.path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode) & 0o777
        _place_at(
            dst_fd,
            dst.rel[-1],
            dst.path,
            _read_chunks(fd),
            mode=mode,
            overwrite=overwrite,
            limit=limit,
            cancel=cancel,
        )
    finally:
        os.close(fd)
    try:
        os.unlink(src.rel[-1], dir_fd=src_fd)
    except OSError as exc:
        raise _os_error(exc, f"{src.path} (copied to {dst.path} but not removed)") from exc


@dataclass
class _Deletion:
    """A recursive delete under way: what it deletes, and how many entries are gone,
    so that a stop (the cancel flag, checked before every entry) can say exactly."""

    path: str
    cancel: threading.Event
    deleted: int = 0

    def check(self) -> None:
        if self.cancel.is_set():
            raise Stopped(
                f"deleting {self.path} was stopped after {self.deleted} entries; the rest is still there",
                {"path": self.path, "deleted": self.deleted, "complete": False},
            )


def _delete_tree(dir_fd: int, shown: str, depth: int, deletion: _Deletion, guard: _Guard) -> int:
    """Delete everything inside the directory ``dir_fd``; return how many entries went.

    ``guard`` is met here only by routes a path comparison cannot see (a bind mount, a
    hard link to the key): the action stops there, leaving the rest in place.
    """
    if depth > MAX_DEPTH:
        raise ActionError(
            "too_deep", f"{shown} is nested deeper than {MAX_DEPTH} levels; not deleted"
        )
    count = 0
    for name in os.listdir(dir_fd):
        deletion.check()
        path = _join(shown, name)
        try:
            # Try to enter it as a directory without following links; whatever is not
            # a real directory (a file, or a symlink to anywhere) is unlinked itself.
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue
            if exc.errno not in _SYMLINK_ERRNOS:
                raise _os_error(exc, path) from exc
            guard.check_at(dir_fd, name, path)
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as unlink_exc:
                raise _os_error(unlink_exc, path) from unlink_exc
            count += 1
            deletion.deleted += 1
            continue
        try:
            guard.check(os.fstat(child), path)
            count += _delete_tree(child, path, depth + 1, deletion, guard)
        finally:
            os.close(child)
        deletion.check()  # before the rmdir: its contents went, the directory stays
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError as exc:
            raise _os_error(exc, path) from exc
        count += 1
        deletion.deleted += 1
    return count


def _file_delete(params: Mapping[str, Any], roots: _Roots) -> dict[str, Any]:
    target = _locate(params.get("path"), "path", roots.write, "write")
    recursive = _bool(params, "recursive", False)
    if not target.rel or _is_root(target.parts, roots.all):
        raise ActionError("root_refused", f"{target.path} is an allowed root and cannot be deleted")
    if recursive and (inner := _root_below(target.parts, roots.all)) is not None:
        raise ActionError(
            "root_refused", f"{target.path} contains the allowed root {inner}; not deleted"
        )
    target.root.guard.check_tree(target.real, target.path)
    name = target.rel[-1]
    with _parent_dir(target) as parent:
        st = _lstat_at(parent, name)
        target.root.guard.check(st, target.path)
        if st is None:
            raise ActionError("not_found", f"{target.path} does not exist")
        try:
            if not stat.S_ISDIR(st.st_mode):
                # A symlink is removed itself; what it points to is never touched.
                os.unlink(name, dir_fd=parent)
                return {"path": target.path, "deleted": 1}
            if not recursive:
                try:
                    os.rmdir(name, dir_fd=parent)
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise ActionError(
                            "not_empty",
                            f"{target.path} is not empty; pass recursive=true to delete it and its contents",
                        ) from exc
                    raise
                return {"path": target.path, "deleted": 1}
            deletion = _Deletion(target.path, roots.cancel)
            with _directory(target) as fd:
                count = _delete_tree(fd, target.path, 1, deletion, target.root.guard)
            deletion.check()
            os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            raise _os_error(exc, target.path) from exc
    return {"path": target.path, "deleted": count + 1}


def _file_hash(params: Mapping[str, Any], roots: _Roots) -> dict[str, Any]:
    target = _locate(params.get("path"), "path", roots.read, "read")
    algorithm = _choice(params, "algorithm", "sha256", ("sha256",))
    fd, _ = _open_regular(target)
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in _read_chunks(fd):
            if roots.cancel.is_set():
                raise Stopped(
                    f"hashing {target.path} was stopped after {size} bytes; no digest",
                    {"path": target.path, "bytes_hashed": size},
                )
            digest.update(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return {"path": target.path, "algorithm": algorithm, "sha256": digest.hexdigest(), "size": size}


_ACTIONS: dict[str, Callable[[Mapping[str, Any], _Roots], dict[str, Any]]] = {
    "file.list": _file_list,
    "file.stat": _file_stat,
    "file.read": _file_read,
    "file.write": _file_write,
    "file.copy": _file_copy,
    "file.move": _file_move,
    "file.delete": _file_delete,
    "file.hash": _file_hash,
}

FILE_ACTIONS: tuple[str, ...] = tuple(_ACTIONS)


def run_file_action(
    action: str, params: Mapping[str, Any], roots: FileRoots, cancel: threading.Event | None = None
) -> dict[str, Any]:
    """Perform one ``file.*`` action confined to ``roots``; return its JSON-able output.

    Blocking: the agent calls it through ``asyncio.to_thread``. Every failure is an
    :class:`ActionError` with a stable ``code`` and a message for the end user.
    """
    handler = _ACTIONS.get(action)
    if handler is None:
        raise ActionError("unsupported", f"unknown file action {action!r}")
    if not _platform_supported():
        raise ActionError(
            "unsupported",
            "file actions need POSIX directory-fd support (Linux, macOS); this platform is not supported yet",
        )
    guard = _resolve_guard(roots.protected)
    resolved = _Roots(
        read=_resolve_roots(roots.read, guard),
        write=_resolve_roots(roots.write, guard),
        max_write_bytes=roots.max_write_bytes,
        cancel=cancel or threading.Event(),
    )
    try:
        return handler(params, resolved)
    except OSError as exc:
        # Safety net: any OS error not translated closer to its cause.
        raise ActionError("io_error", f"{action} failed: {exc.strerror or exc}") from exc
