"""coact.policy stays pure: it imports only coact.shared, itself and harmless modules."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

POLICY_DIR = pathlib.Path(__file__).resolve().parents[2] / "policy"
MODULES = sorted(p.stem for p in POLICY_DIR.glob("*.py"))
# Standard-library modules that do I/O or reach outside the process.
FORBIDDEN = {"os", "io", "pathlib", "shutil", "socket", "subprocess", "sqlite3", "urllib",
             "http", "asyncio", "tempfile", "glob", "logging", "open"}


def test_every_module_is_checked() -> None:
    assert {"actions", "decision", "document", "errors", "paths", "risk"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_imports_on_its_own(name: str) -> None:
    module = "coact.policy" if name == "__init__" else f"coact.policy.{name}"
    importlib.import_module(module)


@pytest.mark.parametrize("name", MODULES)
def test_imports_only_allowed_modules(name: str) -> None:
    tree = ast.parse((POLICY_DIR / f"{name}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = [node.module or ""]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open", f"{name}.py calls open()"
            continue
        else:
            continue
        for target in targets:
            top = target.split(".")[0]
            assert top not in FORBIDDEN, f"{name}.py imports {target}"
            if top == "coact":
                assert target.startswith(("coact.shared", "coact.policy")), (
                    f"{name}.py imports {target}"
                )
