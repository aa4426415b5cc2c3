"""Keep the layering of ``coact.shared/__init__.py`` true.

    coact.shared  <-  coact.policy  <-  { coact.agent, coact.relay }  <-  coact.cli

Two checks, both over every module that exists when the tests run:

* each module imports on its own in a fresh interpreter, so no import cycle hides
  behind the order in which a test session happened to import things;
* each source file imports only the Coact packages its layer allows (read with
  ``ast``, relative imports resolved), so a wrong-way import fails even when it
  would not (yet) make a cycle.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGES = ("coact.shared", "coact.policy", "coact.agent", "coact.relay", "coact.cli")
ALL = frozenset(PACKAGES)
ALLOWED: dict[str, frozenset[str]] = {
    "coact.shared": frozenset({"coact.shared"}),
    "coact.policy": frozenset({"coact.shared", "coact.policy"}),
    "coact.agent": frozenset({"coact.shared", "coact.policy", "coact.agent"}),
    "coact.relay": frozenset({"coact.shared", "coact.policy", "coact.relay"}),
    "coact.cli": ALL,
}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


def discover(package: str) -> list[Module]:
    """``package`` and every module under it, found without importing any of them."""
    spec = importlib.util.find_spec(package)
    assert spec is not None, f"{package} is not installed"
    assert spec.origin is not None
    assert spec.submodule_search_locations is not None
    found = [Module(package, Path(spec.origin), True)]
    # pkgutil.walk_packages would import each subpackage to recurse; iter_modules on
    # the directories does not, so a broken module fails its own test, not collection.
    pending = [(package, list(spec.submodule_search_locations))]
    while pending:
        parent, paths = pending.pop()
        for info in pkgutil.iter_modules(paths, prefix=parent + "."):
            base = Path(info.module_finder.path)  # type: ignore[union-attr]
            leaf = info.name.rpartition(".")[2]
            if info.ispkg:
                found.append(Module(info.name, base / leaf / "__init__.py", True))
                pending.append((info.name, [str(base / leaf)]))
            else:
                found.append(Module(info.name, base / f"{leaf}.py", False))
    return sorted(found, key=lambda m: m.name)


MODULES = [module for package in PACKAGES for module in discover(package)]


def layer_of(name: str) -> str | None:
    for package in PACKAGES:
        if name == package or name.startswith(package + "."):
            return package
    return None


def coact_imports(source: str, module: str, *, is_package: bool) -> set[str]:
    """Every ``coact.*`` module that ``source`` (the text of ``module``) imports."""
    tree = ast.parse(source)
    # The package a relative import is relative to.
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(here) - 1:
                    raise ValueError(f"{module}: relative import beyond the top-level package")
                base = ".".join(here[: len(here) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            if target == "coact":
                # ``from coact import agent``: the names are the packages imported.
                found.update(f"coact.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return {name for name in found if name == "coact" or name.startswith("coact.")}


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The imports in ``source`` that cross the layering the wrong way."""
    layer = layer_of(module)
    assert layer is not None, f"{module} is in no layer"
    bad = []
    for target in sorted(coact_imports(source, module, is_package=is_package)):
        target_layer = layer_of(target)
        if target == "coact":
            continue  # the namespace itself holds nothing
        if target_layer is None or target_layer not in ALLOWED[layer]:
            bad.append(f"{module} imports {target}")
    return bad


# ------------------------------------------------------------------ the checks


def test_every_package_is_discovered() -> None:
    names = {module.name for module in MODULES}
    assert names >= ALL
    assert "coact.shared.chain" in names
    for module in MODULES:
        assert module.path.is_file(), module


def _import_alone(name: str) -> tuple[str, int, str]:
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    return name, result.returncode, result.stderr


@pytest.fixture(scope="module")
def import_results() -> dict[str, tuple[int, str]]:
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 2) * 2)) as pool:
        return {
            name: (code, stderr)
            for name, code, stderr in pool.map(_import_alone, [m.name for m in MODULES])
        }


@pytest.mark.parametrize("module", [m.name for m in MODULES])
def test_module_imports_on_its_own(module: str, import_results: dict[str, tuple[int, str]]) -> None:
    code, stderr = import_results[module]
    assert code == 0, f"python -c 'import {module}' failed:\n{stderr}"


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_imports_follow_the_layering(module: Module) -> None:
    source = module.path.read_text(encoding="utf-8")
    assert violations(source, module.name, is_package=module.is_package) == []


# ------------------------------------------------- the checker itself can fail


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "coact.shared.keys",
            "import coact.policy.rules",
            ["coact.shared.keys imports coact.policy.rules"],
        ),
        ("coact.shared.keys", "from coact import relay", ["coact.shared.keys imports coact.relay"]),
        (
            "coact.policy.engine",
            "from coact.agent.store import Store",
            ["coact.policy.engine imports coact.agent.store"],
        ),
        (
            "coact.agent.runner",
            "from coact.relay import app",
            ["coact.agent.runner imports coact.relay"],
        ),
        ("coact.relay.app", "import coact.agent", ["coact.relay.app imports coact.agent"]),
        (
            "coact.relay.app",
            "import coact.cli.main as m",
            ["coact.relay.app imports coact.cli.main"],
        ),
        # Relative imports resolve against the importing module's package.
        (
            "coact.shared.chain",
            "from ..policy import rules",
            ["coact.shared.chain imports coact.policy"],
        ),
        (
            "coact.relay.api.routes",
            "from ...agent.store import Store",
            ["coact.relay.api.routes imports coact.agent.store"],
        ),
        ("coact.agent.store", "from ..relay import app", ["coact.agent.store imports coact.relay"]),
        # Hidden inside a function or TYPE_CHECKING, or done dynamically: still counted.
        (
            "coact.shared.clock",
            "def f():\n    import coact.agent\n",
            ["coact.shared.clock imports coact.agent"],
        ),
        (
            "coact.policy.x",
            "if TYPE_CHECKING:\n    from coact.relay.app import App\n",
            ["coact.policy.x imports coact.relay.app"],
        ),
        (
            "coact.policy.x",
            "importlib.import_module('coact.agent.store')",
            ["coact.policy.x imports coact.agent.store"],
        ),
        # A Coact package outside the five layers is allowed nowhere, not even in cli.
        ("coact.cli.main", "import coact.secret", ["coact.cli.main imports coact.secret"]),
        ("coact.shared.chain", "from .. import agent", ["coact.shared.chain imports coact.agent"]),
    ],
)
def test_checker_flags_wrong_way_imports(module: str, source: str, expected: list[str]) -> None:
    assert violations(source, module) == expected


@pytest.mark.parametrize(
    ("module", "source", "is_package"),
    [
        (
            "coact.shared.chain",
            "from coact.shared import keys\nfrom .canonical import digest",
            False,
        ),
        ("coact.shared", "from . import chain", True),
        ("coact.policy.engine", "from coact.shared.errors import CoactError\nimport json", False),
        ("coact.agent.executors.shell", "from .. import store\nfrom ...policy import rules", False),
        ("coact.relay.api.routes", "from ..app import make\nfrom coact.policy import x", False),
        ("coact.cli.main", "import coact.agent, coact.relay\nfrom coact import policy", False),
        ("coact.shared.x", "import coactive\nfrom coactx import y", False),
    ],
)
def test_checker_accepts_allowed_imports(module: str, source: str, is_package: bool) -> None:
    assert violations(source, module, is_package=is_package) == []


def test_relative_import_in_a_package_init_resolves_to_the_package() -> None:
    assert coact_imports("from . import chain", "coact.shared", is_package=True) == {"coact.shared"}
    assert coact_imports("from . import chain", "coact.shared.keys", is_package=False) == {
        "coact.shared"
    }
    assert coact_imports("from .. import agent", "coact.shared", is_package=True) == {
        "coact",
        "coact.agent",
    }


def test_relative_import_beyond_the_top_is_an_error() -> None:
    with pytest.raises(ValueError, match="beyond"):
        coact_imports("from ... import x", "coact.shared.keys", is_package=False)
