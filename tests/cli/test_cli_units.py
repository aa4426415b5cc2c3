"""Pure pieces of the admin CLI: parameter parsing, tables, summaries, profiles file."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import click
import pytest

from coact.cli.admin import parse_params, summary
from coact.cli.client import CliError, Profile, ProfileStore, refused
from coact.cli.output import table


def test_param_values_are_json_when_they_parse() -> None:
    params = parse_params(
        ["recursive=true", "max_bytes=10", "path=/tmp/a b", "names=[\"x\"]", "empty=", "eq=a=b", "nan=NaN"],
        '{"path": "/overridden", "mode": 420}',
    )
    assert params == {"recursive": True, "max_bytes": 10, "path": "/tmp/a b", "names": ["x"], "empty": "",
                      "eq": "a=b", "nan": "NaN", "mode": 420}


@pytest.mark.parametrize(("pairs", "params_json", "message"), [
    (["novalue"], None, "is not KEY=VALUE"),
    (["=x"], None, "is not KEY=VALUE"),
    ([], "[1]", "must be a JSON object"),
    ([], "{", "not valid JSON"),
])
def test_bad_params_are_usage_errors(pairs: list[str], params_json: str | None, message: str) -> None:
    with pytest.raises(click.BadParameter, match=message):
        parse_params(pairs, params_json)


def test_table_aligns_columns_and_flattens_cells() -> None:
    text = table(["ID", "TAGS", "NOTE"], [["a", ["x", "y"], "two\nlines"], ["bbbb", [], None]])
    assert text.splitlines() == ["ID    TAGS  NOTE", "a     x,y   two lines", "bbbb  -     -"]


def test_summary_is_one_short_line() -> None:
    assert summary({"action": "file.read", "ok": True}) == "action=file.read ok=true"
    assert len(summary({"text": "x" * 500})) == 80
    assert "\n" not in summary({"text": "a\nb"})


def test_refusals_show_the_problem_detail() -> None:
    problem = {"type": "t", "title": "Forbidden", "status": 403, "detail": "role viewer may not do this"}
    assert refused(403, problem).message == "relay refused: 403 Forbidden — role viewer may not do this"
    assert refused(502, "<html>bad gateway</html>").message == "relay refused: 502 Error — <html>bad gateway</html>"


def test_profiles_file_is_private_and_rewritten_whole(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "coact" / "profiles.json")
    assert store.get("default") is None
    store.save("default", Profile("http://r", "a", "r", time.time() + 60, "me@example.com"))
    store.save("other", Profile("http://s"))
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert sorted(json.loads(store.path.read_text())["profiles"]) == ["default", "other"]
    assert [p.name for p in store.path.parent.iterdir() if p.name.startswith(".profiles.")] == []
    store.forget_tokens("default")
    kept = store.get("default")
    assert kept == Profile("http://r", None, None, None, "me@example.com")
    assert not kept.logged_in


def test_a_damaged_profiles_file_is_reported_not_crashed_on(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text("{not json")
    with pytest.raises(CliError, match="not valid JSON"):
        ProfileStore(path).get("default")


def test_expiry_has_a_margin() -> None:
    now = 1000.0
    assert Profile("http://r", "a", "r", now + 60).access_expired(now) is False
    assert Profile("http://r", "a", "r", now + 2).access_expired(now) is True
