"""Properties of the policy core, checked with hypothesis."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from coact.policy.actions import ACTIONS
from coact.policy.decision import decide, is_within
from coact.policy.document import (
    EFFECTS,
    FileAccess,
    Policy,
    Rule,
    parse_policy,
    render_sandbox_policy,
)
from coact.policy.risk import assess, level_for

ROOT = "/sandbox"
ACTION_NAMES = sorted(ACTIONS)

# Path segments chosen to hit the traps: traversal, empty segments, sibling prefixes.
segment = st.sampled_from(
    ["sandbox", "sandbox2", "sandbox.", "sand", "SANDBOX", "..", ".", "", "etc", "data", "a", "b c"]
)
raw_path = st.lists(segment, max_size=6).map(lambda parts: "/" + "/".join(parts)) | st.text(
    max_size=30
)
trailing = st.sampled_from(["", "/", "//", "/."])
path = st.builds(lambda p, t: p + t, raw_path, trailing)


def _lexically_inside(candidate: str, top: str = "sandbox") -> bool:
    """An independent model of containment for POSIX paths under ``/top``."""
    if not candidate.startswith("/") or "\x00" in candidate:
        return False
    if candidate.startswith("//") and not candidate.startswith("///"):
        return False
    stack: list[str] = []
    for part in candidate.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if stack:
                stack.pop()
        else:
            stack.append(part)
    return stack[:1] == [top]


@given(path)
def test_is_within_matches_a_model(candidate: str) -> None:
    assert is_within(candidate, ROOT) is _lexically_inside(candidate)
    assert is_within(candidate, ROOT + "/") is _lexically_inside(candidate)


def _policy(rules: list[Rule], read: tuple[str, ...], write: tuple[str, ...]) -> Policy:
    return Policy(1, "deny", FileAccess(read, write), tuple(rules))


rule_st = st.builds(
    lambda patterns, effect: (patterns, effect),
    st.lists(st.sampled_from([*ACTION_NAMES, "file.*", "*", "app.*", "input.*", "*.list"]),
             min_size=1, max_size=3),
    st.sampled_from(EFFECTS),
)

file_params = st.fixed_dictionaries(
    {"path": path},
    optional={"recursive": st.booleans()},
)


@given(st.lists(rule_st, max_size=5), st.sampled_from(ACTION_NAMES), st.data())
def test_deny_wins(raw_rules: list[tuple[list[str], Any]], action: str, data: st.DataObject) -> None:
    deny = Rule((action,), "deny", 0, reason="forbidden")
    others = [Rule(tuple(p), e, i + 1) for i, (p, e) in enumerate(raw_rules)]
    position = data.draw(st.integers(0, len(others)))
    rules = [*others[:position], deny, *others[position:]]
    policy = _policy(rules, ("/",), ("/",))
    params = data.draw(st.dictionaries(st.sampled_from(["path", "x", "text"]), st.text(max_size=5)))
    assert decide(policy, action, params).outcome == "deny"


@given(path, st.sampled_from(["file.read", "file.list", "file.stat", "file.hash", "watch.add",
                              "file.write", "file.delete"]))
def test_path_outside_every_root_is_never_allowed(candidate: str, action: str) -> None:
    policy = _policy([Rule(("*",), "allow", 0)], (ROOT, "/data"), (ROOT,))
    params: dict[str, Any] = {"path": candidate}
    if action == "file.write":
        params["content"] = "x"
    allowed = decide(policy, action, params).outcome == "allow"
    in_write_root = _lexically_inside(candidate)
    in_read_root = in_write_root or _lexically_inside(candidate, "data")
    assert allowed == (in_write_root if ACTIONS[action].paths_written else in_read_root)


@given(path, path)
def test_copy_and_move_outside_are_never_allowed(src: str, dst: str) -> None:
    policy = _policy([Rule(("file.*",), "allow", 0)], (ROOT,), (ROOT,))
    for action in ("file.copy", "file.move"):
        allowed = decide(policy, action, {"src": src, "dst": dst}).outcome == "allow"
        assert allowed == (_lexically_inside(src) and _lexically_inside(dst))


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)
any_params = st.dictionaries(
    st.sampled_from(["path", "src", "dst", "content", "argv", "x", "y", "pid", "keys", "mode",
                     "encoding", "recursive", "port", "data", "timeout_s", "extra"])
    | st.text(max_size=5),
    json_value,
    max_size=6,
)


@settings(max_examples=300)
@given(st.sampled_from([*ACTION_NAMES, "nope", ""]), any_params | json_value)
def test_decide_and_assess_never_raise(action: str, params: Any) -> None:
    policy = _policy([Rule(("*",), "allow", 0)], ("/",), ("/",))
    decision = decide(policy, action, params)
    assert decision.outcome in ("allow", "deny", "needs_approval")
    assert decision.reasons
    risk = assess(action, params)
    assert 0 <= risk.score <= 100
    assert risk.level == level_for(risk.score)


@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40))
def test_sandbox_policy_round_trips_any_dir(name: str) -> None:
    sandbox = "/sandbox/" + name
    policy = parse_policy(render_sandbox_policy(sandbox))
    assert policy.files.read_roots == (sandbox,)
    assert policy.files.write_roots == (sandbox,)
