"""Every malformed JSON body is a 400 problem, on every route that reads one (issue 14
item 5): absurd nesting, invalid UTF-8, other encodings, lone surrogates."""

from __future__ import annotations

import pytest
from harness import Relay

from coact.relay.jsonbody import MAX_JSON_DEPTH

DEEP = 150_000  # under the 1 MiB body limit, far over the recursion limit
BAD_BODIES = {
    "deep-array": b"[" * DEEP + b"]" * DEEP,
    "deep-object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "deep-unclosed": b'{"email":' + b"[" * DEEP,
    "deep-in-a-field": b'{"email":"a@b.c","password":' + b"[" * 2000 + b"]" * 2000 + b"}",
    "just-over-the-limit": b'{"x":' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
    "invalid-utf8": b'{"email":"\xff\xfe@example.com","password":"x"}',
    "utf8-encoded-surrogate": b'{"email":"\xed\xa0\x80@example.com","password":"x"}',
    "escaped-lone-surrogate": (b'{"email":"surrogate@example.com","password":"correct horse battery staple",'
                               b'"org_name":"\\ud800"}'),
    "surrogate-key": b'{"\\udfff":1}',
    "utf16": '{"email":"a@example.com"}'.encode("utf-16"),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_malformed_bodies_are_400_on_public_and_authenticated_routes(relay: Relay, name: str) -> None:
    admin, _ = relay.new_admin()
    for api, path in ((relay.api(), "/api/v1/auth/signup"), (relay.api(), "/api/v1/auth/login"),
                      (admin, "/api/v1/tasks"), (admin, "/api/v1/admin/users"),
                      (admin, "/api/v1/devices/enrollment-codes")):
        answer = api.post(path, raw=BAD_BODIES[name])
        assert answer.status == 400, (path, answer.status, answer.body)
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.body["title"] == "Bad request"
    # The relay is still serving.
    assert admin.get("/api/v1/me").status == 200


def test_brackets_inside_strings_do_not_count_as_depth(relay: Relay) -> None:
    password = "[" * 500 + '\\"{' * 150
    body = '{"email":"nobody@example.com","password":"' + password + '"}'
    answer = relay.api().post("/api/v1/auth/login", raw=body.encode())
    assert answer.status == 401, answer.body  # parsed: an unknown user, not a malformed body
