"""``coact actions ...``: the catalog of actions a task can name, with their params and
base risk, and whether this version's agent performs them yet.

The catalog is part of the installed Coact (``coact.policy.actions``), the same one the
relay validates tasks against, so these commands need no relay and no login.
"""

from __future__ import annotations

from typing import Any

import click

from coact.cli.output import OUTPUT_OPTION, print_json, print_table
from coact.policy.actions import ACTIONS, ActionSpec, ParamSpec


def _implemented() -> frozenset[str]:
    from coact.agent.executors import EXECUTORS

    return frozenset(EXECUTORS)


def _bounds(spec: ParamSpec) -> str:
    parts = []
    if spec.enum is not None:
        parts.append("one of " + ", ".join(str(v) for v in spec.enum))
    for label, low, high in (("", spec.minimum, spec.maximum), ("length ", spec.min_length, spec.max_length),
                             ("items ", spec.min_items, spec.max_items)):
        if low is not None and high is not None:
            parts.append(f"{label}{low}..{high}")
        elif low is not None:
            parts.append(f"{label}>= {low}")
        elif high is not None:
            parts.append(f"{label}<= {high}")
    if spec.is_path:
        parts.append("absolute path")
    return "; ".join(parts)


def _param_view(name: str, spec: ParamSpec) -> dict[str, Any]:
    return {"name": name, "type": spec.type, "required": spec.required, "default": spec.default,
            "bounds": _bounds(spec), "description": spec.description}


def _action_view(spec: ActionSpec, implemented: frozenset[str]) -> dict[str, Any]:
    return {
        "name": spec.name, "summary": spec.summary, "base_risk": spec.base_risk,
        "implemented": spec.name in implemented,
        "params": [_param_view(name, param) for name, param in spec.params.items()],
    }


@click.group("actions")
def actions_group() -> None:
    """The actions a task can name: their params, risk and support."""


@actions_group.command("ls")
@OUTPUT_OPTION
def ls(output: str) -> None:
    """List every action with its base risk and whether this agent performs it yet."""
    implemented = _implemented()
    views = [_action_view(spec, implemented) for spec in ACTIONS.values()]
    if output == "json":
        print_json(views)
        return
    rows = [[v["name"], v["base_risk"], "yes" if v["implemented"] else "not yet",
             ",".join(p["name"] + ("" if p["required"] else "?") for p in v["params"]), v["summary"]]
            for v in views]
    print_table(["ACTION", "RISK", "RUNS", "PARAMS", "SUMMARY"], rows, empty="no actions")


@actions_group.command("show")
@click.argument("name")
@OUTPUT_OPTION
def show(name: str, output: str) -> None:
    """One action's params: type, required, default, bounds and meaning."""
    spec = ACTIONS.get(name)
    if spec is None:
        raise click.ClickException(f"no such action {name!r}; `coact actions ls` lists them")
    view = _action_view(spec, _implemented())
    if output == "json":
        print_json(view)
        return
    runs = "yes" if view["implemented"] else "not yet: this version's agent answers unsupported"
    click.echo(f"{spec.name}: {spec.summary}\nbase risk: {spec.base_risk}\nruns on the agent: {runs}\n")
    print_table(["PARAM", "TYPE", "REQUIRED", "DEFAULT", "BOUNDS", "DESCRIPTION"],
                [[p["name"], p["type"], p["required"], p["default"], p["bounds"] or None, p["description"]]
                 for p in view["params"]],
                empty="(no params)")
