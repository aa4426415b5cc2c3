"""``coact admin users ls|add|set-role|disable|enable``: the org's users, for admins
(reference: docs/cli.md). Built on the session and output helpers of ``coact.cli.admin``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from coact.cli.admin import ID_PATTERN, connect, print_fields, relay_options
from coact.cli.client import API, CliError, Session, refused
from coact.cli.output import print_json, print_table

ROLES = ("admin", "operator", "approver", "viewer")


@click.group("admin")
def admin_group() -> None:
    """Administer the org (admins only)."""


@admin_group.group("users")
def users_group() -> None:
    """List users, add them, change roles, disable and enable them."""


def resolve_user(session: Session, ref: str) -> dict[str, Any]:
    """A user of the caller's org by id or by email (case-insensitive)."""
    wanted = ref.strip().lower()
    for user in session.pages("/admin/users"):
        if user["id"] == ref or (not ID_PATTERN.match(ref) and user["email"] == wanted):
            return dict(user)
    raise CliError(f"no user with id or email {ref!r} in your org: see `coact admin users ls`")


def show_user(user: dict[str, Any], output: str, sentence: str) -> None:
    if output == "json":
        print_json(user)
    else:
        click.echo(sentence)


def patch_user(session: Session, user: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    status, answer = session.request("PATCH", f"{API}/admin/users/{user['id']}", body)
    if status != 200:
        raise refused(status, answer)
    return dict(answer["user"])


@users_group.command("ls")
@relay_options
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many users.")
def users_ls(relay_url: str | None, profile: str, output: str, limit: int | None) -> None:
    """List the org's users, oldest first."""
    session = connect(relay_url, profile)
    users = list(session.pages("/admin/users", limit=limit))
    if output == "json":
        print_json(users)
        return
    rows = [[u["id"], u["email"], u["role"], "disabled" if u["disabled"] else "active", u["created_at"]]
            for u in users]
    print_table(["ID", "EMAIL", "ROLE", "STATUS", "CREATED_AT"], rows, "No users.")


@users_group.command("add")
@relay_options
@click.argument("email")
@click.option("--role", type=click.Choice(ROLES), required=True, help="The new user's role.")
@click.option("--password-stdin", is_flag=True,
              help="Read the first password from stdin instead of prompting (twice).")
def users_add(relay_url: str | None, profile: str, output: str, email: str, role: str,
              password_stdin: bool) -> None:
    """Add a user with EMAIL, a role and a first password to the org."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("First password for the new user", hide_input=True,
                                confirmation_prompt=True, err=True)
    if not password:
        raise click.UsageError("the password is empty")
    session = connect(relay_url, profile)
    user = session.post("/admin/users", {"email": email, "role": role, "password": password})["user"]
    if output == "json":
        print_json(user)
        return
    print_fields([("id", user["id"]), ("email", user["email"]), ("role", user["role"])])
    click.echo("Share the password out of band; they change it with POST /api/v1/me/password.", err=True)


@users_group.command("set-role")
@relay_options
@click.argument("user")
@click.argument("role", type=click.Choice(ROLES))
def users_set_role(relay_url: str | None, profile: str, output: str, user: str, role: str) -> None:
    """Give USER (an id or email) ROLE; it applies to their very next request."""
    session = connect(relay_url, profile)
    found = resolve_user(session, user)
    changed = patch_user(session, found, {"role": role})
    show_user(changed, output, f"{changed['email']} ({changed['id']}) is now {changed['role']}.")


@users_group.command("disable")
@relay_options
@click.argument("user")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def users_disable(relay_url: str | None, profile: str, output: str, user: str, yes: bool) -> None:
    """Disable USER (an id or email): their tokens stop working and every session ends."""
    session = connect(relay_url, profile)
    found = resolve_user(session, user)
    if not yes:
        click.confirm(f"Disable {found['email']} ({found['id']}) and end all their sessions?",
                      abort=True, err=True)
    changed = patch_user(session, found, {"disabled": True})
    show_user(changed, output, f"Disabled {changed['email']} ({changed['id']}); their sessions have ended.")


@users_group.command("enable")
@relay_options
@click.argument("user")
def users_enable(relay_url: str | None, profile: str, output: str, user: str) -> None:
    """Enable USER (an id or email) again; they must log in anew."""
    session = connect(relay_url, profile)
    found = resolve_user(session, user)
    changed = patch_user(session, found, {"disabled": False})
    show_user(changed, output, f"Enabled {changed['email']} ({changed['id']}).")
