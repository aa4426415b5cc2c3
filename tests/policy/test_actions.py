"""The action catalog, params validation and JSON Schema export."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from coact.policy.actions import (
    ACTIONS,
    MAX_SAFE_INTEGER,
    ActionSpec,
    ParamSpec,
    spec_as_json_schema,
    validate_params,
)
from coact.policy.errors import ParamsError

ALL_ACTIONS = {
    "file.list", "file.stat", "file.read", "file.write", "file.copy", "file.move",
    "file.delete", "file.hash", "app.launch", "app.close", "app.list", "input.move",
    "input.click", "input.type", "input.hotkey", "screen.capture", "serial.list",
    "serial.write", "serial.query", "watch.add", "watch.remove", "system.info",
}


def test_catalog_covers_every_action() -> None:
    assert set(ACTIONS) == ALL_ACTIONS
    for name, spec in ACTIONS.items():
        assert spec.name == name
        assert spec.summary


def test_catalog_is_read_only() -> None:
    with pytest.raises(TypeError):
        ACTIONS["evil.thing"] = ACTIONS["file.read"]  # type: ignore[index]


def test_path_params_are_declared_path_strings() -> None:
    for spec in ACTIONS.values():
        for name in (*spec.paths_read, *spec.paths_written):
            param = spec.params[name]
            assert param.is_path
            assert param.required


def test_file_path_roles() -> None:
    assert ACTIONS["file.copy"].paths_read == ("src",)
    assert ACTIONS["file.copy"].paths_written == ("dst",)
    assert ACTIONS["file.move"].paths_read == ("src",)
    assert set(ACTIONS["file.move"].paths_written) == {"src", "dst"}
    assert ACTIONS["file.delete"].paths_written == ("path",)
    assert ACTIONS["file.delete"].paths_read == ()


@pytest.mark.parametrize(
    ("action", "params", "expected"),
    [
        ("file.list", {"path": "/s"}, {"path": "/s", "recursive": False, "max_entries": 1000}),
        ("file.stat", {"path": "/s"}, {"path": "/s"}),
        (
            "file.read",
            {"path": "/s"},
            {"path": "/s", "max_bytes": 1024 * 1024, "encoding": "utf-8"},
        ),
        (
            "file.write",
            {"path": "/s/a", "content": "hi"},
            {"path": "/s/a", "content": "hi", "encoding": "utf-8", "overwrite": False,
             "mode": 420},
        ),
        (
            "file.copy",
            {"src": "/a", "dst": "/b"},
            {"src": "/a", "dst": "/b", "overwrite": False},
        ),
        ("file.delete", {"path": "/a"}, {"path": "/a", "recursive": False}),
        ("file.hash", {"path": "/a"}, {"path": "/a", "algorithm": "sha256"}),
        ("app.launch", {"argv": ("notepad.exe",)}, {"argv": ["notepad.exe"]}),
        ("input.click", {}, {"button": "left"}),
        ("screen.capture", {}, {}),
        (
            "serial.query",
            {"port": "COM3", "data": "AT\r"},
            {"port": "COM3", "data": "AT\r", "read_bytes": 256, "timeout_s": 1.0,
             "baudrate": 9600, "encoding": "utf-8"},
        ),
        ("watch.add", {"path": "C:\\data"}, {"path": "C:\\data", "recursive": False}),
    ],
)
def test_validate_fills_defaults(
    action: str, params: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert validate_params(action, params) == expected


def test_validate_does_not_change_its_input() -> None:
    params = {"path": "/s"}
    validate_params("file.list", params)
    assert params == {"path": "/s"}


@pytest.mark.parametrize(
    ("action", "params", "message"),
    [
        # An unknown action's error says where the catalog is (issue 15.5).
        ("x", {}, "unknown action 'x'; `coact actions ls` lists the actions and their params"),
        ("file.list", {}, "params.path: required"),
        ("file.list", {"path": "/a", "foo": 1}, "params.foo: unknown parameter"),
        ("file.list", {"path": "/a", "recursive": "yes"},
         "params.recursive: expected boolean, got string"),
        ("file.list", {"path": "/a", "max_entries": True},
         "params.max_entries: expected integer, got boolean"),
        ("file.list", {"path": "/a", "max_entries": 1.0},
         "params.max_entries: expected integer, got number"),
        ("file.list", {"path": "/a", "max_entries": 0}, "params.max_entries: must be at least 1"),
        ("file.list", {"path": "relative"}, "params.path: 'relative' is not an absolute path"),
        ("file.list", {"path": "/a\x00"}, "params.path: contains a NUL byte"),
        ("file.list", {"path": ""}, "params.path: must be at least 1 character(s) long"),
        ("file.list", {"path": None}, "params.path: expected string, got null"),
        ("file.list", {"path": "/" + "a" * 5000},
         "params.path: must be at most 4096 characters long"),
        ("file.read", {"path": "/a", "max_bytes": 16 * 1024 * 1024 + 1},
         "params.max_bytes: must be at most 16777216"),
        ("file.read", {"path": "/a", "encoding": "latin-1"},
         "params.encoding: must be one of 'utf-8', 'base64'"),
        ("file.write", {"path": "/a"}, "params.content: required"),
        ("file.write", {"path": "/a", "content": "%%", "encoding": "base64"},
         "params.content: not valid base64"),
        ("file.write", {"path": "/a", "content": "x", "mode": 0o4755},
         "params.mode: must be at most 511"),
        ("file.write", {"path": "/a", "content": "\ud800"},
         "params.content: contains a lone surrogate"),
        ("file.hash", {"path": "/a", "algorithm": "md5"}, "params.algorithm: must be one of 'sha256'"),
        ("app.launch", {"argv": []}, "params.argv: needs at least 1 item(s)"),
        ("app.launch", {"argv": "ls -la"}, "params.argv: expected array, got string"),
        ("app.launch", {"argv": ["ls", 3]}, "params.argv[1]: expected string, got integer"),
        ("app.launch", {"argv": ["ls"], "cwd": "tmp"}, "params.cwd: 'tmp' is not an absolute path"),
        ("input.hotkey", {"keys": ["a"] * 9}, "params.keys: allows at most 8 items"),
        ("input.move", {"x": 1}, "params.y: required"),
        ("serial.query", {"port": "COM1", "data": "x", "timeout_s": float("nan")},
         "params.timeout_s: expected a finite number"),
        ("serial.query", {"port": "COM1", "data": "x", "timeout_s": -1},
         "params.timeout_s: must be at least 0"),
        ("app.close", {"pid": 2**32 - 1}, None),
        ("app.close", {"pid": 2**32}, "params.pid: must be at most 4294967295"),
        ("app.close", {"pid": 2**53}, "params.pid: integer beyond the range JSON carries exactly (+-9007199254740991)"),
        ("app.close", {"pid": 100000000000000000001},
         "params.pid: integer beyond the range JSON carries exactly (+-9007199254740991)"),
        ("file.list", {"path": "/a", "max_entries": -(2**60)},
         "params.max_entries: integer beyond the range JSON carries exactly (+-9007199254740991)"),
        ("system.info", [], "params: expected object, got array"),
        ("system.info", {1: 2}, "params: parameter names must be strings, got 1"),
    ],
)
def test_validate_errors(action: str, params: Any, message: str | None) -> None:
    if message is None:  # in range: no error
        validate_params(action, params)
        return
    with pytest.raises(ParamsError) as info:
        validate_params(action, params)
    assert str(info.value) == message


def test_number_accepts_integers() -> None:
    out = validate_params("serial.query", {"port": "COM1", "data": "x", "timeout_s": 2})
    assert out["timeout_s"] == 2


def test_every_numeric_param_is_bounded_on_both_sides_within_the_safe_range() -> None:
    """A numeric param without bounds let one task carry an integer that the agent
    could not journal (issue 14): every one has a minimum and a maximum, inside the
    range canonical JSON carries exactly."""

    def numeric(where: str, spec: ParamSpec) -> Iterator[tuple[str, ParamSpec]]:
        if spec.type in ("integer", "number"):
            yield where, spec
        if spec.items is not None:
            yield from numeric(f"{where}[]", spec.items)

    found = [pair for action in ACTIONS.values() for name, spec in action.params.items()
             for pair in numeric(f"{action.name}.{name}", spec)]
    assert len(found) >= 8
    for where, spec in found:
        assert spec.minimum is not None, f"{where} has no minimum"
        assert spec.maximum is not None, f"{where} has no maximum"
        assert -MAX_SAFE_INTEGER <= spec.minimum <= spec.maximum <= MAX_SAFE_INTEGER, where


def test_object_and_array_params_refuse_integers_beyond_the_safe_range() -> None:
    spec = ActionSpec("test.obj", "test", {"meta": ParamSpec("object", "free-form", required=True),
                                           "list": ParamSpec("array", "free-form")})
    with pytest.raises(ParamsError, match=r"^params.meta.a\[1\]: integer beyond the range"):
        spec.validate({"meta": {"a": [1, 2**53]}})
    with pytest.raises(ParamsError, match=r"^params.list\[0\].b: integer beyond the range"):
        spec.validate({"meta": {}, "list": [{"b": -(2**64)}]})
    assert spec.validate({"meta": {"a": 2**53 - 1}}) == {"meta": {"a": 2**53 - 1}}


def test_object_params() -> None:
    spec = ActionSpec(
        "test.obj", "test", {"meta": ParamSpec("object", "free-form", required=True)}
    )
    assert spec.validate({"meta": {"a": 1}}) == {"meta": {"a": 1}}
    with pytest.raises(ParamsError, match=r"^params.meta: object keys must be strings$"):
        spec.validate({"meta": {1: 1}})
    with pytest.raises(ParamsError, match=r"^params.meta: expected object, got array$"):
        spec.validate({"meta": [1]})


def test_payload_size() -> None:
    spec = ACTIONS["file.write"]
    text = spec.validate({"path": "/a", "content": "é"})
    assert spec.payload_size(text) == 2
    b64 = spec.validate({"path": "/a", "content": "AAAA", "encoding": "base64"})
    assert spec.payload_size(b64) == 3
    assert ACTIONS["file.read"].payload_size({"path": "/a"}) is None


@pytest.mark.parametrize("action", sorted(ALL_ACTIONS))
def test_json_schema_shape(action: str) -> None:
    schema = spec_as_json_schema(action)
    spec = ACTIONS[action]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(spec.params)
    assert schema["required"] == [n for n, p in spec.params.items() if p.required]
    for name, prop in schema["properties"].items():
        assert prop["type"] == spec.params[name].type
        if "default" in prop:
            # Defaults must themselves validate.
            validate_params(action, {**_minimal(action), name: prop["default"]})


def _minimal(action: str) -> dict[str, Any]:
    """Smallest valid params, built from the schema's required list."""
    samples: dict[str, Any] = {
        "path": "/s/x", "src": "/s/a", "dst": "/s/b", "content": "", "argv": ["true"],
        "pid": 1, "text": "hi", "keys": ["ctrl"], "x": 0, "y": 0, "port": "COM1",
        "data": "", "watch_id": "w1",
    }
    return {name: samples[name] for name in spec_as_json_schema(action)["required"]}


@pytest.mark.parametrize("action", sorted(ALL_ACTIONS))
def test_minimal_params_validate(action: str) -> None:
    validate_params(action, _minimal(action))


def test_json_schema_details() -> None:
    schema = spec_as_json_schema("file.read")
    assert schema["properties"]["max_bytes"] == {
        "type": "integer",
        "description": "Read at most this many bytes.",
        "default": 1048576,
        "minimum": 0,
        "maximum": 16777216,
    }
    assert schema["properties"]["encoding"]["enum"] == ["utf-8", "base64"]
    pattern = re.compile(schema["properties"]["path"]["pattern"])
    for absolute in ("/etc", "C:\\x", "\\\\srv\\s"):
        assert pattern.match(absolute)
    assert not pattern.match("relative")
    argv = spec_as_json_schema("app.launch")["properties"]["argv"]
    assert argv["items"] == {"type": "string", "minLength": 1, "maxLength": 32768}


def test_json_schema_unknown_action() -> None:
    with pytest.raises(ParamsError, match="unknown action 'nope'"):
        spec_as_json_schema("nope")
