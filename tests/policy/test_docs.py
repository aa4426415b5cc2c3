"""docs/policy.md stays true: its examples parse and it names every action and key."""

from __future__ import annotations

import pathlib
import re

from coact.policy.actions import ACTIONS
from coact.policy.document import parse_policy, render_sandbox_policy

DOC = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text(
    encoding="utf-8"
)
TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", DOC, flags=re.DOTALL)


def test_every_toml_example_parses() -> None:
    assert len(TOML_BLOCKS) >= 2
    for block in TOML_BLOCKS:
        parse_policy(block)


def test_sandbox_example_is_what_init_writes() -> None:
    assert render_sandbox_policy("/home/alice/sandbox") in TOML_BLOCKS


def test_every_action_and_param_is_documented() -> None:
    for name, spec in ACTIONS.items():
        row = next((line for line in DOC.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{name} missing from the actions table"
        for param in spec.params:
            assert f"`{param}`" in row, f"{name}.{param} missing from the actions table"


def test_every_key_is_documented() -> None:
    keys = ["version", "default", "description", "files", "rules", "read_roots",
            "write_roots", "max_write_bytes", "actions", "effect", "name", "reason"]
    for key in keys:
        assert f"| `{key}` |" in DOC, key
