"""`coact actions`: the catalog as an admin reads it, without a relay."""

from __future__ import annotations

import json

from harness import run_cli

from coact.agent.executors import EXECUTORS
from coact.policy.actions import ACTIONS


def test_ls_lists_every_action_with_its_risk_and_whether_the_agent_runs_it() -> None:
    listed = json.loads(run_cli("actions", "ls", "--output", "json").stdout)
    assert [a["name"] for a in listed] == list(ACTIONS)
    for action in listed:
        assert action["base_risk"] == ACTIONS[action["name"]].base_risk
        assert action["implemented"] == (action["name"] in EXECUTORS)
    text = run_cli("actions", "ls").stdout
    assert "file.read" in text
    assert "not yet" in text  # app.* are in the catalog, not in this agent


def test_show_gives_each_param_with_its_bounds() -> None:
    shown = json.loads(run_cli("actions", "show", "file.read", "-o", "json").stdout)
    params = {p["name"]: p for p in shown["params"]}
    assert params["path"]["required"] is True
    assert "absolute path" in params["path"]["bounds"]
    assert params["max_bytes"]["bounds"] == f"0..{16 * 1024 * 1024}"
    assert params["encoding"]["bounds"] == "one of utf-8, base64"


def test_an_unknown_action_is_an_error_that_points_to_the_list() -> None:
    missing = run_cli("actions", "show", "file.explode", check=False)
    assert missing.returncode == 1
    assert "no such action 'file.explode'" in missing.stderr
    assert "coact actions ls" in missing.stderr
