"""The file executors against a real file system: behaviour, confinement, races.

Every test builds a sandbox (the allowed root) and an ``outside`` directory next to
it holding content that must never be read, written or deleted through an action.
"""

from __future__ import annotations

import base64
import hashlib
import os
import resource
import signal
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coact.agent.executors.errors import ActionError, Stopped
from coact.agent.executors.files import FileRoots, run_file_action
from coact.shared.clock import from_rfc3339
from coact.shared.errors import CoactError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file executors are POSIX-only")


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    path = tmp_path / "sandbox"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("OUTSIDE SECRET")
    return path


@pytest.fixture
def roots(sandbox: Path) -> FileRoots:
    return FileRoots(read=(str(sandbox),), write=(str(sandbox),))


def run(action: str, roots: FileRoots, **params: Any) -> dict[str, Any]:
    return run_file_action(action, params, roots)


def refused(action: str, roots: FileRoots, code: str, **params: Any) -> ActionError:
    with pytest.raises(ActionError) as info:
        run_file_action(action, params, roots)
    assert info.value.code == code, info.value.message
    return info.value


def snapshot(directory: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every entry below ``directory`` with its content and mtime, to prove nothing changed."""
    result: dict[str, tuple[bytes | None, int]] = {}
    for path in sorted(directory.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        result[str(path.relative_to(directory))] = (content, info.st_mtime_ns)
    result["."] = (None, directory.stat().st_mtime_ns)
    return result


# ------------------------------------------------------------------ errors, roots


def test_action_error_is_a_coact_error() -> None:
    err = ActionError("not_found", "/x does not exist")
    assert isinstance(err, CoactError)
    assert (err.code, err.message, str(err)) == (
        "not_found",
        "/x does not exist",
        "/x does not exist",
    )


def test_roots_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        FileRoots(read=("relative/dir",), write=())
    with pytest.raises(ValueError, match="max_write_bytes"):
        FileRoots(read=(), write=(), max_write_bytes=-1)


def test_unknown_action_is_unsupported(roots: FileRoots) -> None:
    refused("file.chmod", roots, "unsupported", path="/x")


# ------------------------------------------------------------------ file.list


def test_list_reports_entries_without_following_symlinks(
    sandbox: Path, outside: Path, roots: FileRoots
) -> None:
    (sandbox / "a.txt").write_text("hello")
    (sandbox / "sub").mkdir()
    (sandbox / "sub" / "inner.txt").write_text("x")
    (sandbox / "out").symlink_to(outside)
    out = run("file.list", roots, path=str(sandbox))
    assert out["truncated"] is False
    by_name = {entry["name"]: entry for entry in out["entries"]}
    assert set(by_name) == {"a.txt", "sub", "out"}
    assert by_name["a.txt"]["type"] == "file"
    assert by_name["a.txt"]["size"] == 5
    assert by_name["a.txt"]["path"] == str(sandbox / "a.txt")
    assert by_name["sub"]["type"] == "dir"
    assert by_name["out"]["type"] == "symlink"
    from_rfc3339(by_name["a.txt"]["mtime"])  # parses as RFC 3339


def test_list_recursive_walks_dirs_but_not_symlinked_dirs(
    sandbox: Path, outside: Path, roots: FileRoots
) -> None:
    (sandbox / "a" / "b").mkdir(parents=True)
    (sandbox / "a" / "b" / "deep.txt").write_text("d")
    (sandbox / "a" / "out").symlink_to(outside)
    out = run("file.list", roots, path=str(sandbox), recursive=True)
    paths = [entry["path"] for entry in out["entries"]]
    assert paths == [
        str(sandbox / "a"),
        str(sandbox / "a" / "b"),
        str(sandbox / "a" / "b" / "deep.txt"),
        str(sandbox / "a" / "out"),
    ]
    assert not any("secret" in path for path in paths)


def test_list_truncates_at_max_entries(sandbox: Path, roots: FileRoots) -> None:
    for index in range(5):
        (sandbox / f"f{index}").write_text("")
    out = run("file.list", roots, path=str(sandbox), max_entries=3)
    assert [entry["name"] for entry in out["entries"]] == ["f0", "f1", "f2"]
    assert out["truncated"] is True


def test_list_of_a_file_is_not_directory(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "f").write_text("")
    refused("file.list", roots, "not_directory", path=str(sandbox / "f"))


# ------------------------------------------------------------------ file.stat


def test_stat_file_dir_and_root(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "f").write_text("abc")
    (sandbox / "f").chmod(0o640)
    (sandbox / "d").mkdir()
    out = run("file.stat", roots, path=str(sandbox / "f"))
    assert out["path"] == str(sandbox / "f")
    assert (out["type"], out["size"], out["mode"]) == ("file", 3, 0o640)
    assert out["mtime"].endswith("Z")
    assert run("file.stat", roots, path=str(sandbox / "d"))["type"] == "dir"
    assert run("file.stat", roots, path=str(sandbox))["type"] == "dir"


def test_stat_reports_final_symlink_without_following(
    sandbox: Path, outside: Path, roots: FileRoots
) -> None:
    (sandbox / "link").symlink_to(outside / "secret.txt")
    out = run("file.stat", roots, path=str(sandbox / "link"))
    assert out["type"] == "symlink"
    assert out["size"] == len(os.readlink(sandbox / "link"))  # the link's own size


def test_stat_missing_is_not_found(sandbox: Path, roots: FileRoots) -> None:
    err = refused("file.stat", roots, "not_found", path=str(sandbox / "nope"))
    assert str(sandbox / "nope") in err.message


# ------------------------------------------------------------------ file.read


def test_read_utf8_and_base64(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "t.txt").write_text("héllo", encoding="utf-8")
    (sandbox / "b.bin").write_bytes(b"\x00\xff\xfe")
    out = run("file.read", roots, path=str(sandbox / "t.txt"))
    assert out == {
        "path": str(sandbox / "t.txt"),
        "size": 6,
        "content": "héllo",
        "encoding": "utf-8",
        "truncated": False,
    }
    out = run("file.read", roots, path=str(sandbox / "b.bin"), encoding="base64")
    assert base64.b64decode(out["content"]) == b"\x00\xff\xfe"


def test_read_truncates_and_never_splits_a_character(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "t.txt").write_text("aé", encoding="utf-8")  # 'é' is two bytes
    out = run("file.read", roots, path=str(sandbox / "t.txt"), max_bytes=2)
    assert (out["content"], out["truncated"], out["size"]) == ("a", True, 3)
    out = run("file.read", roots, path=str(sandbox / "t.txt"), max_bytes=3)
    assert (out["content"], out["truncated"]) == ("aé", False)


def test_read_binary_as_text_suggests_base64(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "b.bin").write_bytes(b"\xff\xfe\x00")
    err = refused("file.read", roots, "not_text", path=str(sandbox / "b.bin"))
    assert "base64" in err.message


def test_read_directory_and_fifo_refused(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "d").mkdir()
    refused("file.read", roots, "is_directory", path=str(sandbox / "d"))
    refused("file.read", roots, "is_directory", path=str(sandbox))
    os.mkfifo(sandbox / "fifo")
    # Must not hang waiting for a writer.
    refused("file.read", roots, "not_regular", path=str(sandbox / "fifo"))


# ------------------------------------------------------------------ file.write


def test_write_creates_file_atomically(sandbox: Path, roots: FileRoots) -> None:
    out = run("file.write", roots, path=str(sandbox / "new.txt"), content="hi there", mode=0o600)
    assert out == {
        "path": str(sandbox / "new.txt"),
        "size": 8,
        "sha256": hashlib.sha256(b"hi there").hexdigest(),
    }
    assert (sandbox / "new.txt").read_text() == "hi there"
    assert (sandbox / "new.txt").stat().st_mode & 0o777 == 0o600
    assert os.listdir(sandbox) == ["new.txt"]  # no temp file left


def test_write_base64(sandbox: Path, roots: FileRoots) -> None:
    payload = bytes(range(256))
    run(
        "file.write",
        roots,
        path=str(sandbox / "b"),
        content=base64.b64encode(payload).decode(),
        encoding="base64",
    )
    assert (sandbox / "b").read_bytes() == payload
    refused(
        "file.write",
        roots,
        "invalid_params",
        path=str(sandbox / "c"),
        content="@@",
        encoding="base64",
    )


def test_write_refuses_existing_without_overwrite(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "f").write_text("original")
    err = refused("file.write", roots, "exists", path=str(sandbox / "f"), content="new")
    assert "overwrite" in err.message
    assert (sandbox / "f").read_text() == "original"
    run("file.write", roots, path=str(sandbox / "f"), content="new", overwrite=True)
    assert (sandbox / "f").read_text() == "new"
    assert os.listdir(sandbox) == ["f"]


def test_write_limits(sandbox: Path) -> None:
    roots = FileRoots(read=(), write=(str(sandbox),), max_write_bytes=4)
    refused("file.write", roots, "too_large", path=str(sandbox / "f"), content="12345")
    run("file.write", roots, path=str(sandbox / "f"), content="1234")
    refused(
        "file.write", roots, "invalid_params", path=str(sandbox / "g"), content="x", mode=0o4755
    )
    assert os.listdir(sandbox) == ["f"]


def test_write_needs_existing_parent_and_refuses_dirs(sandbox: Path, roots: FileRoots) -> None:
    err = refused("file.write", roots, "not_found", path=str(sandbox / "no" / "f"), content="x")
    assert "parent directory must exist" in err.message
    (sandbox / "d").mkdir()
    refused(
        "file.write", roots, "is_directory", path=str(sandbox / "d"), content="x", overwrite=True
    )
    refused("file.write", roots, "root_refused", path=str(sandbox), content="x", overwrite=True)
    assert os.listdir(sandbox) == ["d"]


def test_failed_write_leaves_no_temp_file(sandbox: Path, roots: FileRoots) -> None:
    # A real failure after the temp file exists: the kernel's file-size limit (EFBIG).
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(ActionError) as info:
            run("file.write", roots, path=str(sandbox / "big"), content="x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert info.value.code == "too_large"
    assert os.listdir(sandbox) == []


# ------------------------------------------------------------------ file.copy


def test_copy_from_read_root_to_write_root(tmp_path: Path) -> None:
    source, target = tmp_path / "ro", tmp_path / "rw"
    source.mkdir()
    target.mkdir()
    (source / "f").write_bytes(b"data")
    (source / "f").chmod(0o640)
    roots = FileRoots(read=(str(source),), write=(str(target),))
    out = run("file.copy", roots, src=str(source / "f"), dst=str(target / "g"))
    assert out == {
        "src": str(source / "f"),
        "dst": str(target / "g"),
        "size": 4,
        "sha256": hashlib.sha256(b"data").hexdigest(),
    }
    assert (target / "g").read_bytes() == b"data"
    assert (target / "g").stat().st_mode & 0o777 == 0o640
    refused("file.copy", roots, "exists", src=str(source / "f"), dst=str(target / "g"))
    # The read root is not writable, and the write root is not readable.
    err = refused("file.copy", roots, "outside_roots", src=str(source / "f"), dst=str(source / "h"))
    assert f"outside the allowed write roots ({target})" in err.message
    refused("file.copy", roots, "outside_roots", src=str(target / "g"), dst=str(target / "h"))


def test_copy_over_the_limit_leaves_nothing(sandbox: Path) -> None:
    (sandbox / "big").write_bytes(b"x" * 100)
    roots = FileRoots(read=(str(sandbox),), write=(str(sandbox),), max_write_bytes=10)
    refused("file.copy", roots, "too_large", src=str(sandbox / "big"), dst=str(sandbox / "c"))
    assert os.listdir(sandbox) == ["big"]


# ------------------------------------------------------------------ file.move


def test_move_file_and_directory(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "a").write_text("A")
    assert run("file.move", roots, src=str(sandbox / "a"), dst=str(sandbox / "b")) == {
        "src": str(sandbox / "a"),
        "dst": str(sandbox / "b"),
    }
    assert (sandbox / "b").read_text() == "A"
    assert not (sandbox / "a").exists()
    (sandbox / "d").mkdir()
    (sandbox / "d" / "x").write_text("x")
    run("file.move", roots, src=str(sandbox / "d"), dst=str(sandbox / "e"))
    assert (sandbox / "e" / "x").read_text() == "x"


def test_move_refuses_overwrite_and_roots(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "a").write_text("A")
    (sandbox / "b").write_text("B")
    refused("file.move", roots, "exists", src=str(sandbox / "a"), dst=str(sandbox / "b"))
    assert (sandbox / "a").read_text() == "A"
    assert (sandbox / "b").read_text() == "B"
    run("file.move", roots, src=str(sandbox / "a"), dst=str(sandbox / "b"), overwrite=True)
    assert (sandbox / "b").read_text() == "A"
    refused("file.move", roots, "root_refused", src=str(sandbox), dst=str(sandbox / "x"))
    refused("file.move", roots, "not_found", src=str(sandbox / "gone"), dst=str(sandbox / "x"))


def test_move_needs_write_access_to_source(tmp_path: Path) -> None:
    source, target = tmp_path / "ro", tmp_path / "rw"
    source.mkdir()
    target.mkdir()
    (source / "f").write_text("keep")
    roots = FileRoots(read=(str(source),), write=(str(target),))
    refused("file.move", roots, "outside_roots", src=str(source / "f"), dst=str(target / "f"))
    assert (source / "f").read_text() == "keep"


def test_move_refuses_symlink_source(sandbox: Path, outside: Path, roots: FileRoots) -> None:
    (sandbox / "link").symlink_to(outside / "secret.txt")
    refused(
        "file.move", roots, "symlink_refused", src=str(sandbox / "link"), dst=str(sandbox / "x")
    )


def test_move_across_file_systems(sandbox: Path) -> None:
    shm = Path("/dev/shm")
    if (
        not shm.is_dir()
        or not os.access(shm, os.W_OK)
        or shm.stat().st_dev == sandbox.stat().st_dev
    ):
        pytest.skip("needs a writable second file system at /dev/shm")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        roots = FileRoots(read=(), write=(str(sandbox), other))
        (sandbox / "f").write_text("travels")
        run("file.move", roots, src=str(sandbox / "f"), dst=f"{other}/f")
        assert Path(other, "f").read_text() == "travels"
        assert os.listdir(sandbox) == []
        assert os.listdir(other) == ["f"]
        (sandbox / "d").mkdir()
        refused("file.move", roots, "unsupported", src=str(sandbox / "d"), dst=f"{other}/d")


# ------------------------------------------------------------------ file.delete


def test_delete_file_and_empty_dir(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "f").write_text("")
    (sandbox / "d").mkdir()
    assert run("file.delete", roots, path=str(sandbox / "f")) == {
        "path": str(sandbox / "f"),
        "deleted": 1,
    }
    assert run("file.delete", roots, path=str(sandbox / "d"))["deleted"] == 1
    assert os.listdir(sandbox) == []
    refused("file.delete", roots, "not_found", path=str(sandbox / "f"))


def test_delete_non_empty_needs_recursive(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "d" / "e").mkdir(parents=True)
    (sandbox / "d" / "e" / "f").write_text("")
    (sandbox / "d" / "g").write_text("")
    err = refused("file.delete", roots, "not_empty", path=str(sandbox / "d"))
    assert "recursive" in err.message
    assert run("file.delete", roots, path=str(sandbox / "d"), recursive=True)["deleted"] == 4
    assert os.listdir(sandbox) == []


def test_delete_refuses_roots(sandbox: Path, tmp_path: Path) -> None:
    inner = sandbox / "inner"
    inner.mkdir()
    roots = FileRoots(read=(str(inner),), write=(str(sandbox),))
    refused("file.delete", roots, "root_refused", path=str(sandbox), recursive=True)
    refused("file.delete", roots, "root_refused", path=str(inner), recursive=True)
    (sandbox / "d").mkdir()
    run("file.delete", roots, path=str(sandbox / "d"))
    assert inner.is_dir()


def test_recursive_delete_unlinks_symlinks_only(
    sandbox: Path, outside: Path, roots: FileRoots
) -> None:
    before = snapshot(outside)
    (sandbox / "d").mkdir()
    (sandbox / "d" / "to_dir").symlink_to(outside)
    (sandbox / "d" / "to_file").symlink_to(outside / "secret.txt")
    (sandbox / "top_link").symlink_to(outside)
    assert run("file.delete", roots, path=str(sandbox / "d"), recursive=True)["deleted"] == 3
    assert run("file.delete", roots, path=str(sandbox / "top_link"), recursive=True)["deleted"] == 1
    assert os.listdir(sandbox) == []
    assert snapshot(outside) == before


# ------------------------------------------------------------------ file.hash


def test_hash_matches_hashlib(sandbox: Path, roots: FileRoots) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    (sandbox / "blob").write_bytes(payload)
    out = run("file.hash", roots, path=str(sandbox / "blob"))
    assert out == {
        "path": str(sandbox / "blob"),
        "algorithm": "sha256",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "size": len(payload),
    }
    refused("file.hash", roots, "invalid_params", path=str(sandbox / "blob"), algorithm="md5")


# ------------------------------------------------------------------ confinement


@pytest.mark.parametrize("action", ["file.read", "file.stat", "file.hash", "file.list"])
def test_outside_paths_are_refused(
    action: str, sandbox: Path, outside: Path, roots: FileRoots
) -> None:
    err = refused(action, roots, "outside_roots", path=str(outside / "secret.txt"))
    assert err.message == (
        f"{outside / 'secret.txt'} is outside the allowed read roots ({sandbox})"
    )
    refused(action, roots, "outside_roots", path="/etc/passwd")
    refused(action, roots, "outside_roots", path="//etc/passwd")


def test_sibling_with_common_prefix_is_outside(
    tmp_path: Path, sandbox: Path, roots: FileRoots
) -> None:
    sibling = tmp_path / "sandbox2"
    sibling.mkdir()
    (sibling / "f").write_text("no")
    refused("file.read", roots, "outside_roots", path=str(sibling / "f"))
    refused("file.write", roots, "outside_roots", path=str(sibling / "g"), content="x")
    assert os.listdir(sibling) == ["f"]


@pytest.mark.parametrize(
    "suffix", ["/../outside/secret.txt", "/sub/../../outside/secret.txt", "/..", "/sub/.."]
)
def test_dotdot_is_refused_outright(
    suffix: str, sandbox: Path, outside: Path, roots: FileRoots
) -> None:
    (sandbox / "sub").mkdir()
    err = refused("file.read", roots, "invalid_params", path=str(sandbox) + suffix)
    assert "'..'" in err.message
    refused("file.write", roots, "invalid_params", path=str(sandbox) + suffix, content="x")


@pytest.mark.parametrize("path", ["relative/f", "", "f", "./f"])
def test_relative_paths_are_refused(path: str, roots: FileRoots) -> None:
    refused("file.read", roots, "invalid_params", path=path)


def test_nul_and_non_string_paths_are_refused(sandbox: Path, roots: FileRoots) -> None:
    refused("file.read", roots, "invalid_params", path=f"{sandbox}/f\x00/etc/passwd")
    refused("file.read", roots, "invalid_params", path=None)
    refused("file.read", roots, "invalid_params", path=b"/etc/passwd")


def test_redundant_slashes_and_dots_are_normalised(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "f").write_text("ok")
    out = run("file.read", roots, path=f"/{sandbox}//./f")
    assert (out["path"], out["content"]) == (str(sandbox / "f"), "ok")


def test_symlink_final_component_is_refused(sandbox: Path, outside: Path, roots: FileRoots) -> None:
    before = snapshot(outside)
    (sandbox / "link").symlink_to(outside / "secret.txt")
    for action in ("file.read", "file.hash"):
        err = refused(action, roots, "symlink_refused", path=str(sandbox / "link"))
        assert "symbolic link" in err.message
    refused(
        "file.write",
        roots,
        "symlink_refused",
        path=str(sandbox / "link"),
        content="x",
        overwrite=True,
    )
    refused(
        "file.copy", roots, "symlink_refused", src=str(sandbox / "link"), dst=str(sandbox / "c")
    )
    (sandbox / "f").write_text("f")
    refused(
        "file.copy",
        roots,
        "symlink_refused",
        src=str(sandbox / "f"),
        dst=str(sandbox / "link"),
        overwrite=True,
    )
    refused("file.list", roots, "symlink_refused", path=str(sandbox / "link"))
    assert snapshot(outside) == before
    assert sorted(os.listdir(sandbox)) == ["f", "link"]


def test_symlink_middle_component_is_refused(
    sandbox: Path, outside: Path, roots: FileRoots
) -> None:
    before = snapshot(outside)
    (sandbox / "via").symlink_to(outside)
    secret = str(sandbox / "via" / "secret.txt")
    for action in ("file.read", "file.stat", "file.hash", "file.delete"):
        refused(action, roots, "symlink_refused", path=secret)
    refused("file.list", roots, "symlink_refused", path=str(sandbox / "via"), recursive=True)
    refused("file.write", roots, "symlink_refused", path=str(sandbox / "via" / "new"), content="x")
    refused("file.write", roots, "symlink_refused", path=secret, content="x", overwrite=True)
    refused("file.move", roots, "symlink_refused", src=secret, dst=str(sandbox / "stolen"))
    assert snapshot(outside) == before


def test_symlink_pointing_inside_is_refused_too(sandbox: Path, roots: FileRoots) -> None:
    (sandbox / "real").mkdir()
    (sandbox / "real" / "f").write_text("in")
    (sandbox / "alias").symlink_to(sandbox / "real")
    refused("file.read", roots, "symlink_refused", path=str(sandbox / "alias" / "f"))


def test_root_behind_a_symlink_is_allowed(tmp_path: Path, sandbox: Path) -> None:
    # Like /tmp -> /private/tmp on macOS: the root itself is trusted configuration.
    link = tmp_path / "root_link"
    link.symlink_to(sandbox)
    roots = FileRoots(read=(str(link),), write=(str(link),))
    run("file.write", roots, path=str(link / "f"), content="via link")
    assert run("file.read", roots, path=str(sandbox / "f"))["content"] == "via link"
    assert run("file.read", roots, path=str(link / "f"))["path"] == str(link / "f")


def test_missing_root_is_reported(tmp_path: Path) -> None:
    roots = FileRoots(read=(str(tmp_path / "gone"),), write=())
    err = refused("file.list", roots, "not_found", path=str(tmp_path / "gone"))
    assert "allowed root" in err.message


def test_no_roots_configured(sandbox: Path) -> None:
    roots = FileRoots(read=(), write=())
    err = refused("file.read", roots, "outside_roots", path=str(sandbox / "f"))
    assert "no read roots" in err.message


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    parts=st.lists(
        st.sampled_from(["sub", "f", "..", ".", "", "outside", "secret.txt"]), max_size=6
    )
)
def test_any_accepted_path_stays_inside(
    parts: list[str], sandbox: Path, outside: Path, roots: FileRoots
) -> None:
    (sandbox / "sub").mkdir(exist_ok=True)
    (sandbox / "f").write_text("inside")
    path = str(sandbox) + "/" + "/".join(parts)
    try:
        out = run("file.stat", roots, path=path)
    except ActionError as err:
        refusal: str | None = err.code
    else:
        refusal = None
    if refusal is not None:
        assert refusal in {"invalid_params", "not_found", "not_directory"}
        return
    assert os.path.commonpath([os.path.normpath(out["path"]), str(sandbox)]) == str(sandbox)
    assert ".." not in parts


# ------------------------------------------------------------------ TOCTOU race


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    # Switch threads often so the swapper interleaves with every step of an action.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.usefixtures("fast_thread_switching")
def test_symlink_swapped_in_after_the_check_never_escapes(
    sandbox: Path, outside: Path, roots: FileRoots
) -> None:
    """A thread keeps swapping ``d`` between a real directory and a symlink to outside.

    Whatever the interleaving, no action may read, stat, list, write or delete
    anything in ``outside``. We loop until both states were observed, so the test
    proves the race actually happened.
    """
    real = sandbox / "d"
    real.mkdir()
    (real / "secret.txt").write_text("INSIDE")
    link = sandbox / "d_link"
    link.symlink_to(outside)
    parked = sandbox / "d_parked"
    before = snapshot(outside)
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            os.rename(real, parked)
            os.rename(link, real)  # now d -> outside
            os.rename(real, link)
            os.rename(parked, real)

    allowed = {"not_found", "symlink_refused", "not_directory"}
    outcomes: Counter[str] = Counter()
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        for _ in range(20_000):
            calls: list[tuple[str, dict[str, Any]]] = [
                ("file.read", {"path": str(real / "secret.txt")}),
                ("file.stat", {"path": str(real / "secret.txt")}),
                ("file.list", {"path": str(real)}),
                (
                    "file.write",
                    {"path": str(real / "secret.txt"), "content": "INSIDE", "overwrite": True},
                ),
                (
                    "file.write",
                    {"path": str(real / "new.txt"), "content": "planted", "overwrite": True},
                ),
                ("file.delete", {"path": str(real / "new.txt")}),
                ("file.delete", {"path": str(real / "secret.txt") + "-absent"}),
            ]
            for action, params in calls:
                try:
                    out = run_file_action(action, params, roots)
                except ActionError as err:
                    outcomes[err.code] += 1
                    continue
                outcomes["ok"] += 1
                if action == "file.read":
                    assert out["content"] == "INSIDE"
                elif action == "file.stat":
                    assert out["size"] == len("INSIDE")
                elif action == "file.list":
                    assert {e["name"] for e in out["entries"]} <= {"secret.txt", "new.txt"}
            if outcomes["ok"] > 50 and outcomes["symlink_refused"] > 50:
                break
    finally:
        stop.set()
        thread.join()
    assert snapshot(outside) == before
    assert set(outcomes) <= allowed | {"ok"}, outcomes
    assert outcomes["ok"] > 50
    assert outcomes["symlink_refused"] > 50, outcomes
    leftovers = [name for name in os.listdir(real) if name.startswith(".coact-tmp")]
    assert leftovers == []


class _StopAfter(threading.Event):
    """A cancel flag that is raised after it has been looked at ``checks`` times: the
    time-out landing at a chosen step of the executor's loop."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.checks = checks

    def is_set(self) -> bool:
        self.checks -= 1
        if self.checks < 0:
            self.set()
        return super().is_set()


@pytest.mark.parametrize("checks", [0, 1, 7, 40, 60])
def test_a_stopped_recursive_delete_says_exactly_what_it_deleted(sandbox: Path, roots: FileRoots, checks: int) -> None:
    tree = sandbox / "tree"
    for d in range(5):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(10):
            (tree / f"d{d}" / f"f{f}").write_bytes(b"x")
    total = 5 * 10 + 5 + 1
    cancel = _StopAfter(checks)
    with pytest.raises(Stopped) as info:
        run_file_action("file.delete", {"path": str(tree), "recursive": True}, roots, cancel)
    progress = info.value.progress
    left = sum(1 for _ in tree.rglob("*")) + tree.exists()
    assert progress["complete"] is False
    assert left == total - progress["deleted"]
    assert f"stopped after {progress['deleted']} entries" in info.value.message
    assert tree.exists()  # the top is removed last, and only when everything below went


@pytest.mark.parametrize(("action", "params", "key"), [
    ("file.hash", {"path": "big"}, "bytes_hashed"),
    ("file.read", {"path": "big", "max_bytes": 16 * 1024 * 1024}, "bytes_read"),
    ("file.copy", {"src": "big", "dst": "copy"}, "bytes_written"),
    ("file.list", {"path": ".", "recursive": True}, "listed"),
])
def test_every_long_file_action_stops_when_told(sandbox: Path, roots: FileRoots, action: str,
                                                params: dict[str, Any], key: str) -> None:
    (sandbox / "big").write_bytes(b"y" * (4 * 1024 * 1024))
    for i in range(20):
        (sandbox / f"e{i}").write_bytes(b"")
    full = {name: str(sandbox / value) if name in ("path", "src", "dst") else value for name, value in params.items()}
    with pytest.raises(Stopped) as info:
        run_file_action(action, full, roots, _StopAfter(2))
    assert info.value.progress[key] > 0
    assert not (sandbox / "copy").exists()  # a stopped copy places nothing
