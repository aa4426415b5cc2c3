"""Policy documents: TOML text in, a frozen ``Policy`` out.

A policy says which actions a device may perform, which need a human's approval,
and where on disk file actions may read and write. The format (every key, with an
example) is described in ``docs/policy.md``. Parsing is strict: an unknown key, a
wrong type or a rule pattern that matches no action is a ``PolicyError`` whose
message starts with the TOML key path (``rules[1].effect: ...``), because a typo in
a policy must never quietly widen or narrow what a device does.

Parsing works on text; reading the file is the caller's business.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal, cast

from coact.policy.actions import ACTIONS
from coact.policy.errors import PolicyError
from coact.policy.paths import path_problem, whole_file_system

Effect = Literal["allow", "deny", "require_approval"]
EFFECTS: tuple[Effect, ...] = ("allow", "deny", "require_approval")

POLICY_VERSION = 1
DEFAULT_MAX_WRITE_BYTES = 10 * 1024 * 1024

# Action globs use only the characters of action names plus * and ?: no [classes],
# so a pattern reads the same to a person as to fnmatch.
_PATTERN = re.compile(r"[a-z0-9_.*?]+")
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class FileAccess:
    """The ``[files]`` table: where file actions may read and write."""

    read_roots: tuple[str, ...] = ()
    write_roots: tuple[str, ...] = ()
    max_write_bytes: int = DEFAULT_MAX_WRITE_BYTES
    # Not a key of the document: the agent sets it when it loads the policy, to the
    # paths of its own files (data directory), which no action may reach whatever the
    # roots say. A policy cannot name, widen or clear it.
    protected: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """One ``[[rules]]`` entry. ``index`` is its position in the document."""

    actions: tuple[str, ...]
    effect: Effect
    index: int
    name: str | None = None
    reason: str | None = None

    @property
    def label(self) -> str:
        """How decisions refer to this rule: its name, else ``rules[i]``."""
        return self.name if self.name is not None else f"rules[{self.index}]"

    def matches(self, action: str) -> bool:
        return any(fnmatchcase(action, pattern) for pattern in self.actions)


@dataclass(frozen=True)
class Policy:
    """A parsed, validated policy document (version 1, default deny)."""

    version: int
    default: Literal["deny"]
    files: FileAccess
    rules: tuple[Rule, ...]
    description: str | None = None


def parse_policy(text: str) -> Policy:
    """Parse and validate a TOML policy document, or raise PolicyError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"not valid TOML: {exc}") from exc
    _only_keys("", doc, {"version", "default", "description", "files", "rules"})

    if "version" not in doc:
        raise PolicyError("version: required")
    version = doc["version"]
    if type(version) is not int or version != POLICY_VERSION:
        raise PolicyError(f"version: must be {POLICY_VERSION}, got {version!r}")
    default = doc.get("default", "deny")
    if default != "deny":
        raise PolicyError(f"default: only \"deny\" is allowed, got {default!r}")
    description = doc.get("description")
    if description is not None:
        _string("description", description)

    files = _parse_files(doc.get("files", {}))

    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        raise PolicyError("rules: expected an array of tables ([[rules]])")
    rules = tuple(_parse_rule(i, raw) for i, raw in enumerate(raw_rules))
    seen: dict[str, int] = {}
    for rule in rules:
        if rule.name is not None:
            if rule.name in seen:
                raise PolicyError(
                    f"rules[{rule.index}].name: {rule.name!r} is already used by "
                    f"rules[{seen[rule.name]}]"
                )
            seen[rule.name] = rule.index

    return Policy(
        version=version,
        default="deny",
        files=files,
        rules=rules,
        description=description,
    )


def _only_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            path = f"{where}.{key}" if where else key
            raise PolicyError(f"{path}: unknown key")


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: expected a table, got {type(value).__name__}")
    return cast(dict[str, Any], value)


def _string_list(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise PolicyError(f"{where}: expected an array of strings")
    return tuple(_string(f"{where}[{i}]", item) for i, item in enumerate(value))


def _parse_files(raw: Any) -> FileAccess:
    table = _table("files", raw)
    _only_keys("files", table, {"read_roots", "write_roots", "max_write_bytes"})
    roots: dict[str, tuple[str, ...]] = {}
    for key in ("read_roots", "write_roots"):
        values = _string_list(f"files.{key}", table.get(key, []))
        for i, root in enumerate(values):
            problem = path_problem(root) or whole_file_system(root)
            if problem is not None:
                raise PolicyError(f"files.{key}[{i}]: {problem}")
        roots[key] = values
    limit = table.get("max_write_bytes", DEFAULT_MAX_WRITE_BYTES)
    if type(limit) is not int or limit < 0:
        raise PolicyError(f"files.max_write_bytes: expected a non-negative integer, got {limit!r}")
    return FileAccess(roots["read_roots"], roots["write_roots"], limit)


def _parse_rule(index: int, raw: Any) -> Rule:
    where = f"rules[{index}]"
    table = _table(where, raw)
    _only_keys(where, table, {"name", "actions", "effect", "reason"})

    if "actions" not in table:
        raise PolicyError(f"{where}.actions: required")
    patterns = _string_list(f"{where}.actions", table["actions"])
    if not patterns:
        raise PolicyError(f"{where}.actions: must name at least one action pattern")
    for i, pattern in enumerate(patterns):
        if not _PATTERN.fullmatch(pattern):
            raise PolicyError(
                f"{where}.actions[{i}]: {pattern!r} is not an action pattern "
                "(lowercase action names, '*' and '?' only)"
            )
        if not any(fnmatchcase(action, pattern) for action in ACTIONS):
            raise PolicyError(f"{where}.actions[{i}]: {pattern!r} matches no known action")

    if "effect" not in table:
        raise PolicyError(f"{where}.effect: required")
    effect = table["effect"]
    if effect not in EFFECTS:
        raise PolicyError(
            f"{where}.effect: must be one of {', '.join(EFFECTS)}, got {effect!r}"
        )

    name = table.get("name")
    if name is not None and not _RULE_NAME.fullmatch(_string(f"{where}.name", name)):
        raise PolicyError(
            f"{where}.name: {name!r} must be 1-64 letters, digits, '_', '.' or '-'"
        )
    reason = table.get("reason")
    if reason is not None:
        _string(f"{where}.reason", reason)
    return Rule(
        actions=patterns, effect=cast(Effect, effect), index=index, name=name, reason=reason,
    )


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string literal (quotes included)."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def render_sandbox_policy(sandbox_dir: str) -> str:
    """The policy ``coact policy init --sandbox DIR`` writes: file.* inside DIR only.

    File actions may read and write under ``sandbox_dir``; every other action, and
    every path outside it, is denied. Raises PolicyError if ``sandbox_dir`` is not an
    acceptable absolute path.
    """
    problem = path_problem(sandbox_dir) or whole_file_system(sandbox_dir)
    if problem is not None:
        raise PolicyError(f"sandbox directory: {problem}")
    root = _toml_string(sandbox_dir)
    return f"""\
# Coact device policy, written by `coact policy init --sandbox`.
# Default deny: anything not allowed below is refused, with reasons.
# File actions may read and write only inside the sandbox directory.
# The format is described in docs/policy.md.

version = 1
default = "deny"
description = {_toml_string(f"sandbox: file actions under {sandbox_dir} only")}

[files]
read_roots = [{root}]
write_roots = [{root}]
max_write_bytes = {DEFAULT_MAX_WRITE_BYTES}

[[rules]]
name = "sandbox-files"
actions = ["file.*"]
effect = "allow"
reason = "file actions inside the sandbox"
"""
