"""Parsing policy documents and rendering the sandbox policy."""

from __future__ import annotations

import pytest

from coact.policy.document import (
    DEFAULT_MAX_WRITE_BYTES,
    FileAccess,
    Policy,
    Rule,
    parse_policy,
    render_sandbox_policy,
)
from coact.policy.errors import PolicyError

EXAMPLE = """
version = 1
default = "deny"
description = "Alice's laptop"

[files]
read_roots = ["/home/alice/sandbox", "/home/alice/docs"]
write_roots = ["/home/alice/sandbox"]
max_write_bytes = 1048576

[[rules]]
name = "sandbox-files"
actions = ["file.*"]
effect = "allow"
reason = "sandbox file access"

[[rules]]
actions = ["file.delete"]
effect = "require_approval"

[[rules]]
actions = ["input.*", "app.launch"]
effect = "deny"
reason = "no remote control of this machine"
"""


def test_parse_example() -> None:
    policy = parse_policy(EXAMPLE)
    assert policy == Policy(
        version=1,
        default="deny",
        description="Alice's laptop",
        files=FileAccess(
            read_roots=("/home/alice/sandbox", "/home/alice/docs"),
            write_roots=("/home/alice/sandbox",),
            max_write_bytes=1048576,
        ),
        rules=(
            Rule(("file.*",), "allow", 0, "sandbox-files", "sandbox file access"),
            Rule(("file.delete",), "require_approval", 1),
            Rule(("input.*", "app.launch"), "deny", 2, None, "no remote control of this machine"),
        ),
    )
    assert policy.rules[0].label == "sandbox-files"
    assert policy.rules[1].label == "rules[1]"


def test_minimal_policy_has_defaults() -> None:
    policy = parse_policy("version = 1")
    assert policy.default == "deny"
    assert policy.rules == ()
    assert policy.files == FileAccess((), (), DEFAULT_MAX_WRITE_BYTES)
    assert policy.description is None


def test_rule_matching() -> None:
    rule = Rule(("file.*", "serial.qu?ry"), "allow", 0)
    assert rule.matches("file.read")
    assert rule.matches("serial.query")
    assert not rule.matches("serial.write")
    assert not rule.matches("FILE.read")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = ", "not valid TOML: "),
        ("", "version: required"),
        ("version = 2", "version: must be 1, got 2"),
        ("version = true", "version: must be 1, got True"),
        ('version = 1\ndefault = "allow"', 'default: only "deny" is allowed, got \'allow\''),
        ("version = 1\ncolour = 1", "colour: unknown key"),
        ("version = 1\ndescription = 3", "description: expected a string, got int"),
        ("version = 1\nfiles = 3", "files: expected a table, got int"),
        ("version = 1\n[files]\nroots = []", "files.roots: unknown key"),
        ('version = 1\n[files]\nread_roots = "/a"', "files.read_roots: expected an array of strings"),
        ("version = 1\n[files]\nread_roots = [1]", "files.read_roots[0]: expected a string, got int"),
        ('version = 1\n[files]\nwrite_roots = ["/a", "rel"]',
         "files.write_roots[1]: 'rel' is not an absolute path"),
        ("version = 1\n[files]\nmax_write_bytes = -1",
         "files.max_write_bytes: expected a non-negative integer, got -1"),
        ("version = 1\n[files]\nmax_write_bytes = 1.5",
         "files.max_write_bytes: expected a non-negative integer, got 1.5"),
        ("version = 1\nrules = 1", "rules: expected an array of tables ([[rules]])"),
        ("version = 1\nrules = [1]", "rules[0]: expected a table, got int"),
        ('version = 1\n[[rules]]\neffect = "allow"', "rules[0].actions: required"),
        ('version = 1\n[[rules]]\nactions = ["file.read"]', "rules[0].effect: required"),
        ('version = 1\n[[rules]]\nactions = []\neffect = "allow"',
         "rules[0].actions: must name at least one action pattern"),
        ('version = 1\n[[rules]]\nactions = ["file.*"]\neffect = "allow"\n'
         '[[rules]]\nactions = ["fiel.*"]\neffect = "deny"',
         "rules[1].actions[0]: 'fiel.*' matches no known action"),
        ('version = 1\n[[rules]]\nactions = ["file.[rw]*"]\neffect = "deny"',
         "rules[0].actions[0]: 'file.[rw]*' is not an action pattern "
         "(lowercase action names, '*' and '?' only)"),
        ('version = 1\n[[rules]]\nactions = ["file.*"]\neffect = "permit"',
         "rules[0].effect: must be one of allow, deny, require_approval, got 'permit'"),
        ('version = 1\n[[rules]]\nactions = ["file.*"]\neffect = "allow"\nwhy = "x"',
         "rules[0].why: unknown key"),
        ('version = 1\n[[rules]]\nactions = ["file.*"]\neffect = "allow"\nname = "a b"',
         "rules[0].name: 'a b' must be 1-64 letters, digits, '_', '.' or '-'"),
        ('version = 1\n[[rules]]\nactions = ["file.*"]\neffect = "allow"\nname = 5',
         "rules[0].name: expected a string, got int"),
        ('version = 1\n[[rules]]\nactions = ["file.*"]\neffect = "allow"\nreason = 5',
         "rules[0].reason: expected a string, got int"),
        ('version = 1\n[[rules]]\nname = "r"\nactions = ["file.*"]\neffect = "allow"\n'
         '[[rules]]\nname = "r"\nactions = ["app.*"]\neffect = "deny"',
         "rules[1].name: 'r' is already used by rules[0]"),
    ],
)
def test_parse_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert str(info.value).startswith(message)


def test_toml_error_is_chained() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy("version = = 1")
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    "sandbox",
    [
        "/home/alice/sandbox",
        "C:\\Users\\Alice\\Coact Sandbox",
        '/tmp/we"ird\\dir\tname\x7f\u00e9\U0001f600',
    ],
)
def test_sandbox_policy_round_trips(sandbox: str) -> None:
    policy = parse_policy(render_sandbox_policy(sandbox))
    assert policy.files.read_roots == (sandbox,)
    assert policy.files.write_roots == (sandbox,)
    assert [(r.actions, r.effect) for r in policy.rules] == [(("file.*",), "allow")]
    assert policy.default == "deny"


@pytest.mark.parametrize("bad", ["relative/dir", "", "/a\x00b"])
def test_sandbox_policy_needs_an_absolute_dir(bad: str) -> None:
    with pytest.raises(PolicyError, match="^sandbox directory: "):
        render_sandbox_policy(bad)


WHOLE_FILE_SYSTEMS = ["/", "///", "/..", "/tmp/..", "C:\\", "c:/", "\\\\server\\share"]


@pytest.mark.parametrize("root", WHOLE_FILE_SYSTEMS)
@pytest.mark.parametrize("key", ["read_roots", "write_roots"])
def test_a_whole_file_system_is_never_a_root(root: str, key: str) -> None:
    # Such a root holds the agent's own key and policy (issue 14, finding 2).
    toml_root = root.replace("\\", "\\\\")
    with pytest.raises(PolicyError, match=rf"^files\.{key}\[1\]: .* is a whole file system"):
        parse_policy(f'version = 1\n[files]\n{key} = ["/srv/ok", "{toml_root}"]\n')


@pytest.mark.parametrize("root", WHOLE_FILE_SYSTEMS)
def test_sandbox_policy_refuses_a_whole_file_system(root: str) -> None:
    with pytest.raises(PolicyError, match="^sandbox directory: .* is a whole file system"):
        render_sandbox_policy(root)
