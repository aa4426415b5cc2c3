"""decide(): default deny, deny wins, approvals, roots and limits."""

from __future__ import annotations

from typing import Any

import pytest

from coact.policy.decision import Decision, decide, is_within
from coact.policy.document import Policy, parse_policy, render_sandbox_policy
from coact.policy.paths import is_within as paths_is_within

POLICY = parse_policy(
    """
version = 1
[files]
read_roots = ["/home/alice/sandbox", "/home/alice/docs"]
write_roots = ["/home/alice/sandbox"]
max_write_bytes = 10

[[rules]]
name = "sandbox-files"
actions = ["file.*"]
effect = "allow"
reason = "sandbox file access"

[[rules]]
actions = ["file.delete"]
effect = "require_approval"

[[rules]]
actions = ["serial.*"]
effect = "require_approval"
reason = "the lab's PLC"

[[rules]]
actions = ["input.*"]
effect = "allow"

[[rules]]
name = "no-typing"
actions = ["input.type"]
effect = "deny"
reason = "typing is off on this machine"
"""
)
SANDBOX = "/home/alice/sandbox"


def _decide(action: str, **params: Any) -> Decision:
    return decide(POLICY, action, params)


def test_is_within_is_reexported() -> None:
    assert is_within is paths_is_within


def test_allow_inside_roots() -> None:
    d = _decide("file.read", path=f"{SANDBOX}/notes.txt")
    assert d == Decision("allow", ("sandbox-files: sandbox file access",), "sandbox-files")
    assert d.allowed


def test_read_only_root() -> None:
    assert _decide("file.read", path="/home/alice/docs/a").outcome == "allow"
    d = _decide("file.write", path="/home/alice/docs/a", content="x")
    assert d.outcome == "deny"
    assert d.reasons == (
        "path /home/alice/docs/a is outside every write root (/home/alice/sandbox)",
    )
    assert d.rule is None


def test_outside_read_roots() -> None:
    d = _decide("file.read", path="/etc/passwd")
    assert d.outcome == "deny"
    assert d.reasons == (
        "path /etc/passwd is outside every read root (/home/alice/sandbox, /home/alice/docs)",
    )


@pytest.mark.parametrize(
    "path",
    [
        f"{SANDBOX}/../bob/x",
        f"{SANDBOX}2/x",
        "/home/alice/sandbox/../../../etc/shadow",
        "/home/alice",
    ],
)
def test_traversal_and_sibling_prefix_denied(path: str) -> None:
    assert _decide("file.read", path=path).outcome == "deny"


def test_copy_checks_both_sides() -> None:
    assert _decide("file.copy", src=f"{SANDBOX}/a", dst=f"{SANDBOX}/b").outcome == "allow"
    out = _decide("file.copy", src=f"{SANDBOX}/a", dst="/home/alice/docs/b")
    assert out.outcome == "deny"
    assert out.reasons == (
        "path /home/alice/docs/b is outside every write root (/home/alice/sandbox)",
    )
    # Copying out of a read-only root into the sandbox is fine.
    assert _decide("file.copy", src="/home/alice/docs/a", dst=f"{SANDBOX}/b").outcome == "allow"


def test_move_needs_write_access_to_its_source() -> None:
    d = _decide("file.move", src="/home/alice/docs/a", dst=f"{SANDBOX}/a")
    assert d.outcome == "deny"
    assert "outside every write root" in d.reasons[0]


def test_all_path_violations_are_reported() -> None:
    d = _decide("file.move", src="/etc/a", dst="/etc/b")
    assert len(d.reasons) == 3  # src read, src write, dst write


def test_require_approval_beats_allow() -> None:
    d = _decide("file.delete", path=f"{SANDBOX}/a")
    assert d == Decision("needs_approval", ("rules[1] requires approval for file.delete",), "rules[1]")


def test_require_approval_alone_permits() -> None:
    d = _decide("serial.write", port="COM3", data="x")
    assert d == Decision("needs_approval", ("rules[2]: the lab's PLC",), "rules[2]")


def test_paths_checked_before_approval() -> None:
    assert _decide("file.delete", path="/etc/passwd").outcome == "deny"


def test_deny_wins() -> None:
    d = _decide("input.type", text="hello")
    assert d == Decision("deny", ("no-typing: typing is off on this machine",), "no-typing")
    assert _decide("input.click").outcome == "allow"


def test_deny_rule_and_path_reasons_together() -> None:
    policy = parse_policy(
        'version = 1\n[[rules]]\nactions = ["file.read"]\neffect = "deny"\n'
    )
    d = decide(policy, "file.read", {"path": "/x"})
    assert d.outcome == "deny"
    assert d.rule == "rules[0]"
    assert d.reasons == (
        "rules[0] denies file.read",
        "path /x is outside every read root (none configured)",
    )


def test_default_deny() -> None:
    assert _decide("app.launch", argv=["calc"]) == Decision(
        "deny", ("no rule allows app.launch",), None
    )
    empty = parse_policy("version = 1")
    assert decide(empty, "system.info", {}).reasons == ("no rule allows system.info",)


def test_unknown_action() -> None:
    assert _decide("file.shred", path="/x") == Decision("deny", ("unknown action 'file.shred'",))


def test_invalid_params() -> None:
    d = _decide("file.read", path=f"{SANDBOX}/a", recursive=True)
    assert d == Decision("deny", ("params.recursive: unknown parameter",))
    d = _decide("file.read", path="notes.txt")
    assert d.reasons == ("params.path: 'notes.txt' is not an absolute path",)


def test_max_write_bytes() -> None:
    assert _decide("file.write", path=f"{SANDBOX}/a", content="0123456789").outcome == "allow"
    d = _decide("file.write", path=f"{SANDBOX}/a", content="0123456789a")
    assert d.reasons == ("11 bytes to write exceeds files.max_write_bytes (10)",)
    # base64 is measured decoded: 12 chars are 9 bytes.
    d = _decide("file.write", path=f"{SANDBOX}/a", content="QUFBQUFBQUFB", encoding="base64")
    assert d.outcome == "allow"


def test_windows_sandbox() -> None:
    policy = parse_policy(render_sandbox_policy("C:\\Users\\Alice\\Sandbox"))
    assert decide(policy, "file.read", {"path": "c:/users/alice/sandbox/A.txt"}).allowed
    assert not decide(policy, "file.read", {"path": "C:\\Users\\Alice\\Sandbox2\\a"}).allowed
    assert not decide(policy, "file.read", {"path": "C:\\Users\\Alice\\Sandbox.\\a"}).allowed


def test_sandbox_policy_semantics() -> None:
    policy: Policy = parse_policy(render_sandbox_policy(SANDBOX))
    allowed: list[tuple[str, dict[str, Any]]] = [
        ("file.list", {"path": SANDBOX}),
        ("file.write", {"path": f"{SANDBOX}/a", "content": "x"}),
        ("file.delete", {"path": f"{SANDBOX}/a", "recursive": True}),
        ("file.hash", {"path": f"{SANDBOX}/a"}),
    ]
    denied: list[tuple[str, dict[str, Any]]] = [
        ("file.read", {"path": "/etc/passwd"}),
        ("system.info", {}),
        ("app.launch", {"argv": ["sh"]}),
        ("screen.capture", {}),
    ]
    for action, params in allowed:
        assert decide(policy, action, params).allowed, action
    for action, params in denied:
        assert decide(policy, action, params).outcome == "deny", action
