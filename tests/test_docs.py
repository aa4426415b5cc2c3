"""The docs in ``docs/`` stay true to the code (in the manner of sqlite-utils'
``tests/test_docs.py``): every HTTP route, setting, CLI command and wire message type
is documented, and the served OpenAPI document matches the declared routes.

``python tests/test_docs.py`` prints the settings table for ``docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest

from coact.cli.main import LAZY_GROUPS, cli
from coact.relay import hub
from coact.relay.api import meta as meta_api
from coact.relay.app import ROUTE_TABLES, VERSION, create_app
from coact.relay.openapi import build_openapi
from coact.relay.routing import Route
from coact.relay.settings import Settings, setting_help
from coact.shared.protocol import AGENT_MESSAGE_TYPES, RELAY_MESSAGE_TYPES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_DOCS = sorted((DOCS / "api").glob("*.md"))
CLI_DOC = DOCS / "cli.md"

ROUTES: list[Route] = [route for table in ROUTE_TABLES for route in table.routes]

# The paths of the API contract (shared API.md, "/api/v1" prefix added where it has
# one) that the relay implements today. A route removed or renamed by mistake fails.
CONTRACT = [
    ("POST", "/api/v1/auth/signup"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/logout"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/api/v1/me"),
    ("GET", "/api/v1/me/activity"),
    ("GET", "/api/v1/admin/users"),
    ("PATCH", "/api/v1/admin/users/{id}"),  # API.md's "PATCH /admin/users", per user
    ("GET", "/api/v1/admin/stats"),
    ("GET", "/api/v1/ws"),
    ("POST", "/api/v1/devices/enrollment-codes"),
    ("POST", "/api/v1/devices/enroll"),
    ("POST", "/api/v1/devices/token"),
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/devices/{id}"),
    ("POST", "/api/v1/devices/{id}/revoke"),
    ("GET", "/api/v1/agent/ws"),
    ("POST", "/api/v1/tasks"),
    ("GET", "/api/v1/tasks"),
    ("GET", "/api/v1/tasks/{id}"),
    ("POST", "/api/v1/tasks/{id}/cancel"),
    ("GET", "/api/v1/audit"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    # Not in API.md; added by the auth-hardening issue and relied on by docs and runbooks.
    ("GET", "/api/v1/devices/enrollment-codes"),
    ("POST", "/api/v1/devices/enrollment-codes/{id}/revoke"),
    ("POST", "/api/v1/admin/users"),
    ("POST", "/api/v1/me/password"),
]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _sections(text: str) -> dict[str, str]:
    """Markdown heading line -> the text up to the next heading of any level."""
    out: dict[str, str] = {}
    parts = re.split(r"^(#{1,6} .*)$", text, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        out[heading] = body
    return out


def _api_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    for path in API_DOCS:
        for heading, body in _sections(_read(path)).items():
            sections[f"{path.name}: {heading}"] = body
    return sections


# -- (a) every HTTP route is documented, with its access rule -----------------------


def test_api_docs_exist() -> None:
    names = {path.name for path in API_DOCS}
    assert {"auth.md", "me.md", "devices.md", "tasks.md", "ws.md", "audit.md", "meta.md"} <= names


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_route_documented(route: Route) -> None:
    needle = f"{route.method} {route.path}"
    headings = [h for h in _api_sections() if re.search(rf"`{re.escape(needle)}`\s*$", h)]
    assert headings, f"no heading `{needle}` in docs/api/*.md"
    assert len(headings) == 1, f"`{needle}` is documented more than once: {headings}"
    body = _api_sections()[headings[0]]
    access = f"Access: `{route.access.describe()}`"
    assert access in body, f"{headings[0]} should say {access!r}"


def test_no_undeclared_route_documented() -> None:
    """A documented route heading that the relay does not serve is stale."""
    declared = {f"{r.method} {r.path}" for r in ROUTES}
    for heading in _api_sections():
        match = re.search(r"`((?:GET|POST|PUT|PATCH|DELETE) /\S*)`\s*$", heading)
        if match:
            assert match.group(1) in declared, f"{heading} documents a route the relay does not have"


# -- (b) every setting is documented ---------------------------------------------------


def _default_text(item: dataclasses.Field[object]) -> str:
    value = item.default
    if isinstance(value, Path):
        value = str(value)
    return "(empty)" if value == "" else str(value)


def settings_table() -> str:
    """The settings table of docs/configuration.md, rendered from the registry."""
    help_text = setting_help()
    lines = [
        "| setting | environment variable | type | default | secret | description |",
        "|---|---|---|---|---|---|",
    ]
    for item in dataclasses.fields(Settings):
        secret = "yes" if item.metadata.get("secret") else ""
        lines.append(
            f"| `{item.name}` | `COACT_{item.name.upper()}` | {item.type} | `{_default_text(item)}` "
            f"| {secret} | {help_text[item.name]} |"
        )
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", [item.name for item in dataclasses.fields(Settings)])
def test_setting_documented(name: str) -> None:
    doc = _read(DOCS / "configuration.md")
    assert f"| `{name}` | `COACT_{name.upper()}` |" in doc, f"setting {name} missing from docs/configuration.md"


def test_settings_table_is_current() -> None:
    assert settings_table() in _read(DOCS / "configuration.md"), (
        "docs/configuration.md's settings table is stale: regenerate it with `python tests/test_docs.py`"
    )


# -- (c) every CLI command is documented ---------------------------------------------


def _walk(command: click.Command, prefix: str) -> list[tuple[str, click.Command]]:
    if not isinstance(command, click.Group):
        return [(prefix, command)]
    ctx = click.Context(command, info_name=prefix)
    found: list[tuple[str, click.Command]] = []
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        assert sub is not None, f"{prefix} {name} is listed but cannot be loaded"
        found.extend(_walk(sub, f"{prefix} {name}"))
    return found


def cli_commands() -> list[tuple[str, click.Command]]:
    """Every leaf command of ``coact`` with its name, e.g. ``coact relay keys rotate``."""
    ctx = click.Context(cli, info_name="coact")
    found: list[tuple[str, click.Command]] = []
    for name in sorted(LAZY_GROUPS):
        command = cli.get_command(ctx, name)  # imports the module: a missing one fails here
        assert command is not None, name
        found.extend(_walk(command, f"coact {name}"))
    return found


def _section(doc: str, name: str) -> str:
    """The text of the ``### <name>`` section of ``doc`` ('' if there is none)."""
    match = re.search(rf"^### {re.escape(name)}$(.*?)(?=^#{{1,3}} |\Z)", doc, flags=re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


@pytest.mark.parametrize(("name", "command"), cli_commands(), ids=[n for n, _ in cli_commands()])
def test_cli_command_and_its_options_documented(name: str, command: click.Command) -> None:
    doc = _read(CLI_DOC)
    section = _section(doc, name)
    assert section, f"docs/cli.md has no '### {name}' section"
    shared_options = _section_by_heading(doc, "Admin conventions")
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            documented = any(f"`{opt}" in section or f"`{opt}" in shared_options for opt in param.opts)
            assert documented, f"{name}: option {param.opts[0]} is not documented in its section"


def _section_by_heading(doc: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}$(.*?)(?=^## |\Z)", doc, flags=re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


# -- (d) every wire message type and close code is documented -------------------------


@pytest.mark.parametrize("kind", sorted(set(AGENT_MESSAGE_TYPES) | set(RELAY_MESSAGE_TYPES)))
def test_message_type_documented(kind: str) -> None:
    assert f"| `{kind}` |" in _read(DOCS / "api" / "ws.md"), f"message type {kind} missing from docs/api/ws.md"


@pytest.mark.parametrize(
    "code",
    [hub.CLOSE_PROTOCOL, hub.CLOSE_AUTH, hub.CLOSE_REVOKED, hub.CLOSE_TIMEOUT, hub.CLOSE_REPLACED],
)
def test_close_code_documented(code: int) -> None:
    assert f"| {code} |" in _read(DOCS / "api" / "ws.md")


# -- (e) the served OpenAPI document matches the route tables -------------------------


def _operations(document: dict[str, object]) -> set[tuple[str, str]]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def test_openapi_matches_route_tables(tmp_path: Path) -> None:
    # create_app opens nothing until startup; the document it serves is built here.
    app = create_app(Settings(data_dir=tmp_path / "relay"))
    served = app[meta_api.OPENAPI]
    declared = {(r.method, r.path) for r in ROUTES}
    assert len(declared) == len(ROUTES), "a route is declared twice"
    assert _operations(served) == declared
    assert served == build_openapi(ROUTES, VERSION, Settings(data_dir=tmp_path / "relay").effective_public_url)
    for route in ROUTES:
        operation = served["paths"][route.path][route.method.lower()]
        assert operation["x-coact-access"] == route.access.describe()
        assert ("security" in operation) == (route.access.kind != "public"), route.path


def test_contract_paths_are_served() -> None:
    declared = {(r.method, r.path) for r in ROUTES}
    missing = [f"{method} {path}" for method, path in CONTRACT if (method, path) not in declared]
    assert not missing, f"API contract routes not served: {missing}"


# -- (f) the security docs name tests that exist ------------------------------------------

SECURITY_DOCS = [DOCS / "THREAT_MODEL.md", DOCS / "SECURITY.md"]

# `tests/dir/test_x.py::test_name`, or `::test_name` for the file named last on the line.
_TEST_REF = re.compile(r"`(?:(tests/[\w/.-]+\.py)::|::)(test_\w+)`")
_TEST_FILE_REF = re.compile(r"`(tests/[\w/.-]+\.py)`")


def named_tests(text: str) -> list[tuple[int, str, str]]:
    """Every ``(line, file, test)`` a doc names. A bare ``::test_name`` belongs to the
    file named last before it on the same line; a line that starts with one has no file
    (returned as ``""``, which the check reports)."""
    found: list[tuple[int, str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        current = ""
        for match in _TEST_REF.finditer(line):
            current = match.group(1) or current
            found.append((number, current, match.group(2)))
    return found


def _defined_tests(path: Path) -> set[str]:
    return set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)\(", _read(path), flags=re.MULTILINE))


def broken_test_references(doc: Path) -> list[str]:
    """What in ``doc`` names a test file or test function that does not exist."""
    text = _read(doc)
    problems: list[str] = []
    for number, name in (
        (n, m.group(1)) for n, line in enumerate(text.splitlines(), 1) for m in _TEST_FILE_REF.finditer(line)
    ):
        if not (ROOT / name).is_file():
            problems.append(f"{doc.name}:{number}: no file {name}")
    for number, file, test in named_tests(text):
        if not file:
            problems.append(f"{doc.name}:{number}: `::{test}` without a file before it on the line")
        elif not (ROOT / file).is_file():
            problems.append(f"{doc.name}:{number}: no file {file}")
        elif test not in _defined_tests(ROOT / file):
            problems.append(f"{doc.name}:{number}: {file} has no `def {test}`")
    return problems


@pytest.mark.parametrize("doc", SECURITY_DOCS, ids=lambda p: p.name)
def test_security_docs_name_tests_that_exist(doc: Path) -> None:
    assert named_tests(_read(doc)), f"{doc.name} names no tests"
    problems = broken_test_references(doc)
    assert not problems, "stale test references:\n" + "\n".join(problems)


def test_reference_check_catches_a_wrong_name(tmp_path: Path) -> None:
    """The check itself can fail: a misspelt test, a missing file and an orphan ``::``."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "| a | `tests/test_docs.py::test_contract_paths_are_served`, `::test_no_such_test` |\n"
        "| b | `tests/no_such_file.py::test_x` |\n"
        "| c | `::test_contract_paths_are_served` |\n",
        encoding="utf-8",
    )
    problems = broken_test_references(doc)
    assert len(problems) == 3, problems
    assert "no `def test_no_such_test`" in problems[0]


def _threat_rows(text: str) -> list[tuple[str, str]]:
    """``(section, row)`` for each table row of the STRIDE and peer-incident sections."""
    rows: list[tuple[str, str]] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line
        elif section in ("## STRIDE per component", "## Peer incidents") and line.startswith("| "):
            cells = line.split(" | ")
            if cells[0] not in ("| threat", "| incident") and not set(line) <= set("|- "):
                rows.append((section, line))
    return rows


def test_every_threat_names_a_test() -> None:
    text = _read(DOCS / "THREAT_MODEL.md")
    rows = _threat_rows(text)
    assert len(rows) > 40, "THREAT_MODEL.md's tables were not found"
    untested = [row for _, row in rows if not _TEST_REF.search(row.rsplit(" | ", 1)[-1])]
    assert not untested, "threats without a `tests/...py::test_name` in their test column:\n" + "\n".join(untested)


if __name__ == "__main__":
    print(settings_table(), end="")


def test_every_relay_event_kind_is_documented() -> None:
    """Each audit event kind the relay writes has a row in docs/api/audit.md."""
    source = "\n".join(path.read_text() for path in (ROOT / "relay").rglob("*.py"))
    kinds = set(re.findall(r'"((?:user|auth|device|task|enrollment_code|security)\.[a-z_]+)"', source))
    assert len(kinds) > 10
    doc = _read(DOCS / "api" / "audit.md")
    missing = sorted(kind for kind in kinds if f"`{kind}`" not in doc)
    assert not missing, f"relay event kinds missing from docs/api/audit.md: {missing}"
