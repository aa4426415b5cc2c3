"""No file action reaches the agent's own files (key, journal, outbox, policy), whatever
the policy says: issue 14, finding 2.

Start-up refuses a policy whose roots contain the data directory (tests/cli/
test_policy_init.py); these tests are the defence in depth behind that, for a data
directory that ends up under a root anyway. The policy is the one the agent runs with,
bound to a real DataDir, and actions go through the agent's own ``execute``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from coact.agent.config import DataDir, bind_protected
from coact.agent.executors import execute
from coact.agent.executors.errors import ActionError
from coact.agent.executors.files import FileRoots, run_file_action
from coact.policy.document import Policy, parse_policy, render_sandbox_policy

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file executors are POSIX-only")

KEY = b"-----BEGIN PRIVATE KEY-----\nTHE DEVICE KEY\n-----END PRIVATE KEY-----\n"
OWN = {"device.key": KEY, "policy.toml": b"version = 1\n", "agent.db": b"SQLite outbox",
       "agent.db-wal": b"journal frames", "state.json": b"{}"}


def snapshot(directory: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(directory)): (None if p.is_dir() else p.read_bytes()) for p in sorted(directory.rglob("*"))}


class Setup:
    """sandbox/tree/agent is the agent's data directory, inside the only root;
    sandbox/link.key is a hard link to its key; sandbox/public.txt is fair game."""

    def __init__(self, tmp_path: Path) -> None:
        self.sandbox = tmp_path / "sandbox"
        self.data = self.sandbox / "tree" / "agent"
        self.data.mkdir(parents=True)
        for name, content in OWN.items():
            (self.data / name).write_bytes(content)
        os.link(self.data / "device.key", self.sandbox / "link.key")
        (self.sandbox / "public.txt").write_text("public")
        (self.sandbox / "tree" / "other.txt").write_text("other")
        self.policy = bind_protected(parse_policy(render_sandbox_policy(str(self.sandbox))), DataDir(self.data))

    def run(self, action: str, **params: Any) -> dict[str, Any]:
        return asyncio.run(execute(action, params, self.policy, 60))

    def refused(self, action: str, **params: Any) -> ActionError:
        before = snapshot(self.sandbox)
        with pytest.raises(ActionError) as info:
            self.run(action, **params)
        assert info.value.code == "protected", info.value.message
        assert "agent's own files" in info.value.message
        assert KEY.decode() not in info.value.message
        assert snapshot(self.sandbox) == before, "a refused action changed something"
        return info.value


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_the_loaded_policy_carries_the_real_path_of_the_data_dir(setup: Setup) -> None:
    assert setup.policy.files.protected == (os.path.realpath(setup.data),)


def test_an_own_file_that_links_elsewhere_is_protected_where_it_is(tmp_path: Path) -> None:
    # An admin may keep the policy in /etc/coact and link it into the data directory.
    sandbox, data = tmp_path / "sandbox", tmp_path / "agent"
    (sandbox / "etc").mkdir(parents=True)
    data.mkdir()
    (sandbox / "etc" / "policy.toml").write_text("version = 1\n")
    (data / "policy.toml").symlink_to(sandbox / "etc" / "policy.toml")
    policy = bind_protected(parse_policy(render_sandbox_policy(str(sandbox))), DataDir(data))
    assert str(sandbox / "etc" / "policy.toml") in policy.files.protected
    for action, params in [("file.read", {"path": f"{sandbox}/etc/policy.toml"}),
                           ("file.write", {"path": f"{sandbox}/etc/policy.toml", "content": "x", "overwrite": True}),
                           ("file.delete", {"path": f"{sandbox}/etc", "recursive": True})]:
        with pytest.raises(ActionError) as info:
            asyncio.run(execute(action, params, policy, 60))
        assert info.value.code == "protected", (action, info.value.message)
    entries = asyncio.run(execute("file.list", {"path": f"{sandbox}/etc"}, policy, 60))["entries"]
    assert entries == []


@pytest.mark.parametrize("name", ["device.key", "policy.toml", "agent.db", "agent.db-wal", "state.json"])
@pytest.mark.parametrize("action", ["file.read", "file.hash", "file.stat"])
def test_reading_any_own_file_is_refused(setup: Setup, action: str, name: str) -> None:
    setup.refused(action, path=f"{setup.data}/{name}")


@pytest.mark.parametrize("spelling", ["{d}/./device.key", "{d}//device.key", "{d}/../agent/device.key", "{s}/link.key"])
def test_other_spellings_and_hard_links_of_the_key_are_refused(setup: Setup, spelling: str) -> None:
    path = spelling.format(d=setup.data, s=setup.sandbox)
    for action in ("file.read", "file.hash", "file.stat"):
        with pytest.raises(ActionError) as info:
            setup.run(action, path=path, encoding="base64")
        # '..' is refused as a parameter before anything else; every other route as protected.
        assert info.value.code == ("invalid_params" if ".." in path else "protected"), info.value.message


def test_a_symlink_to_the_data_dir_is_not_followed(setup: Setup) -> None:
    (setup.sandbox / "via").symlink_to(setup.data)
    with pytest.raises(ActionError) as info:
        setup.run("file.read", path=f"{setup.sandbox}/via/device.key")
    assert info.value.code == "symlink_refused"


@pytest.mark.parametrize("path", ["{d}", "{d}/"])
def test_the_data_dir_cannot_be_listed_or_stat(setup: Setup, path: str) -> None:
    setup.refused("file.list", path=path.format(d=setup.data))
    setup.refused("file.stat", path=path.format(d=setup.data))


@pytest.mark.parametrize("recursive", [False, True])
def test_listing_a_parent_does_not_reveal_the_agents_files(setup: Setup, recursive: bool) -> None:
    listed = {e["path"] for e in setup.run("file.list", path=str(setup.sandbox), recursive=recursive)["entries"]}
    assert f"{setup.sandbox}/public.txt" in listed
    assert f"{setup.sandbox}/tree" in listed
    assert not any(p.startswith(str(setup.data)) for p in listed), listed
    assert f"{setup.sandbox}/link.key" not in listed  # a hard link to the key is the key
    if recursive:
        assert f"{setup.sandbox}/tree/other.txt" in listed


def test_writing_the_policy_to_widen_it_is_refused(setup: Setup) -> None:
    wide = 'version = 1\n[files]\nread_roots = ["/"]\nwrite_roots = ["/"]\n'
    setup.refused("file.write", path=f"{setup.data}/policy.toml", content=wide, overwrite=True)
    setup.refused("file.write", path=f"{setup.data}/new.txt", content="x")
    setup.refused("file.write", path=f"{setup.sandbox}/link.key", content="x", overwrite=True)


def test_copy_cannot_take_from_or_put_into_the_agents_files(setup: Setup) -> None:
    setup.refused("file.copy", src=f"{setup.data}/device.key", dst=f"{setup.sandbox}/stolen")
    setup.refused("file.copy", src=f"{setup.sandbox}/link.key", dst=f"{setup.sandbox}/stolen")
    setup.refused("file.copy", src=f"{setup.sandbox}/public.txt", dst=f"{setup.data}/policy.toml", overwrite=True)
    setup.refused("file.copy", src=f"{setup.sandbox}/public.txt", dst=f"{setup.sandbox}/link.key", overwrite=True)


def test_move_cannot_take_replace_or_carry_the_agents_files(setup: Setup) -> None:
    setup.refused("file.move", src=f"{setup.data}/device.key", dst=f"{setup.sandbox}/stolen")
    setup.refused("file.move", src=f"{setup.sandbox}/link.key", dst=f"{setup.sandbox}/stolen")
    setup.refused("file.move", src=str(setup.data), dst=f"{setup.sandbox}/moved")
    setup.refused("file.move", src=f"{setup.sandbox}/tree", dst=f"{setup.sandbox}/moved")
    setup.refused("file.move", src=f"{setup.sandbox}/public.txt", dst=f"{setup.data}/policy.toml", overwrite=True)
    setup.refused("file.move", src=f"{setup.sandbox}/public.txt", dst=f"{setup.sandbox}/link.key", overwrite=True)


def test_delete_touches_nothing_of_the_agents_files(setup: Setup) -> None:
    setup.refused("file.delete", path=f"{setup.data}/device.key")
    setup.refused("file.delete", path=f"{setup.data}/agent.db-wal")
    setup.refused("file.delete", path=str(setup.data), recursive=True)
    # The whole tree is refused before anything in it goes, other.txt included.
    setup.refused("file.delete", path=f"{setup.sandbox}/tree", recursive=True)
    setup.refused("file.delete", path=f"{setup.sandbox}/link.key")


def test_a_recursive_delete_stops_at_a_hard_link_to_the_key(setup: Setup) -> None:
    (setup.sandbox / "junk").mkdir()
    os.link(setup.data / "device.key", setup.sandbox / "junk" / "k")
    with pytest.raises(ActionError) as info:
        setup.run("file.delete", path=f"{setup.sandbox}/junk", recursive=True)
    assert info.value.code == "protected"
    assert (setup.data / "device.key").read_bytes() == KEY


def test_actions_beside_the_agents_files_still_work(setup: Setup) -> None:
    assert setup.run("file.read", path=f"{setup.sandbox}/public.txt")["content"] == "public"
    setup.run("file.write", path=f"{setup.sandbox}/tree/new.txt", content="n")
    setup.run("file.move", src=f"{setup.sandbox}/tree/new.txt", dst=f"{setup.sandbox}/new.txt")
    setup.run("file.delete", path=f"{setup.sandbox}/new.txt")


def _policy_with_root(root: Path, data: Path) -> Policy:
    return bind_protected(parse_policy(render_sandbox_policy(str(root))), DataDir(data))


def test_a_root_that_is_inside_or_is_the_data_dir_or_links_to_it_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "agent"
    (data / "sub").mkdir(parents=True)
    (data / "device.key").write_bytes(KEY)
    (tmp_path / "alias").symlink_to(data)
    for root in (data, data / "sub", tmp_path / "alias"):
        policy = _policy_with_root(root, data)
        with pytest.raises(ActionError) as info:
            asyncio.run(execute("file.list", {"path": str(root)}, policy, 60))
        assert info.value.code == "protected", (root, info.value.message)
        with pytest.raises(ActionError) as info:
            asyncio.run(execute("file.read", {"path": f"{root}/device.key"}, policy, 60))
        assert info.value.code == "protected"


def test_a_relative_or_symlinked_data_dir_is_protected_by_its_real_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "sandbox" / "agent"
    data.mkdir(parents=True)
    (data / "device.key").write_bytes(KEY)
    (tmp_path / "dd-link").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    for given in (Path("sandbox/agent"), Path("dd-link")):
        policy = _policy_with_root(tmp_path / "sandbox", given)
        assert policy.files.protected[0] == os.path.realpath(data)
        with pytest.raises(ActionError) as info:
            asyncio.run(execute("file.read", {"path": f"{data}/device.key"}, policy, 60))
        assert info.value.code == "protected"


def test_a_root_owned_by_someone_else_or_writable_by_others_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    (root / "f").write_text("f")
    roots = FileRoots(read=(str(root),), write=(str(root),))
    os.chmod(root, 0o775)
    with pytest.raises(ActionError) as info:
        run_file_action("file.read", {"path": f"{root}/f"}, roots)
    assert info.value.code == "root_unsafe"
    os.chmod(root, 0o755)
    assert run_file_action("file.read", {"path": f"{root}/f"}, roots)["content"] == "f"
    if os.geteuid() == 0:
        os.chown(root, 65534, 65534)
        with pytest.raises(ActionError) as info:
            run_file_action("file.read", {"path": f"{root}/f"}, roots)
        assert info.value.code == "root_unsafe"


def test_protected_cannot_be_set_by_the_policy_document() -> None:
    with pytest.raises(Exception, match="files.protected: unknown key"):
        parse_policy('version = 1\n[files]\nprotected = []\n')
