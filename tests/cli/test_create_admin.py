"""`coact relay create-admin`: the first admin of a relay, made on its own machine."""

from __future__ import annotations

import json
from pathlib import Path

from harness import PASSWORD, Relay, run_cli

from coact.relay.settings import Settings


def test_the_first_admin_is_created_offline_and_logs_in_to_the_relay(tmp_path: Path) -> None:
    data = tmp_path / "relay"
    made = run_cli("relay", "create-admin", "--data-dir", str(data), "--email", "First@Example.com",
                   "--org-name", "Acme", "--password-stdin", "--output", "json", input_text=PASSWORD + "\n")
    user = json.loads(made.stdout)
    assert user["email"] == "first@example.com"
    assert user["role"] == "admin"
    relay = Relay(data)
    relay.start()
    try:
        api = relay.api()
        tokens = api.ok("POST", "/api/v1/auth/login", {"email": "first@example.com", "password": PASSWORD})
        api.token = tokens["access_token"]
        me = api.ok("GET", "/api/v1/me")["user"]
        assert (me["id"], me["org_id"], me["role"]) == (user["id"], user["org_id"], "admin")
        # Made while the relay runs too: a second org, its admin able to log in at once.
        second = run_cli("relay", "create-admin", "--data-dir", str(data), "--email", "second@example.com",
                         "--password-stdin", input_text=PASSWORD + "\n")
        assert "Created org" in second.stdout
        api.ok("POST", "/api/v1/auth/login", {"email": "second@example.com", "password": PASSWORD})
    finally:
        relay.stop()


def test_an_existing_email_a_weak_password_or_a_bad_email_change_nothing(tmp_path: Path) -> None:
    data = tmp_path / "relay"
    run_cli("relay", "create-admin", "--data-dir", str(data), "--email", "a@example.com", "--password-stdin",
            input_text=PASSWORD + "\n")
    again = run_cli("relay", "create-admin", "--data-dir", str(data), "--email", "a@example.com",
                    "--password-stdin", input_text=PASSWORD + "\n", check=False)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    weak = run_cli("relay", "create-admin", "--data-dir", str(data), "--email", "b@example.com",
                   "--password-stdin", input_text="short\n", check=False)
    assert weak.returncode == 2
    assert "password:" in weak.stderr
    bad = run_cli("relay", "create-admin", "--data-dir", str(data), "--email", "not an email",
                  "--password-stdin", input_text=PASSWORD + "\n", check=False)
    assert bad.returncode == 2
    assert "is not an email address" in bad.stderr
    for output in (again, weak, bad):
        assert "Traceback" not in output.stderr


def test_signup_is_off_by_default_and_the_refusal_says_how_to_get_an_admin(tmp_path: Path) -> None:
    assert Settings().allow_signup is False
    relay = Relay(tmp_path / "relay", env={"COACT_ALLOW_SIGNUP": "false"})
    relay.start()
    try:
        refused = relay.api().post("/api/v1/auth/signup", {"email": "x@example.com", "password": PASSWORD})
        assert refused.status == 403
        assert "coact relay create-admin" in refused.body["detail"]
    finally:
        relay.stop()
