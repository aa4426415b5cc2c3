"""The catalog of actions a device can perform, and validation of their params.

Every task names an action from ``ACTIONS`` and carries params. ``validate_params``
checks the params against the action's ``ActionSpec`` and returns them normalised
(defaults filled in, in spec order); the relay does it when a task is created and
the agent again before it acts. ``spec_as_json_schema`` gives the same rules as JSON
Schema for the OpenAPI document.

Which params are file paths is part of the spec (``paths_read``/``paths_written``),
so that ``coact.policy.decision`` can hold them to the policy's roots and
``coact.policy.risk`` can look at where a write lands.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from coact.policy.errors import ParamsError
from coact.policy.paths import path_problem

ParamType = Literal["string", "integer", "number", "boolean", "array", "object"]
RiskLevel = Literal["low", "medium", "high", "critical"]

MiB = 1024 * 1024
MAX_PATH_LENGTH = 4096
# The integers JSON carries exactly (I-JSON, RFC 7493): canonical JSON refuses the rest
# (coact.shared.canonical), and a task is journaled, hashed and audited as canonical
# JSON, so a param beyond this range could never be recorded (decision 49).
MAX_SAFE_INTEGER = 2**53 - 1
# Process ids: Linux caps them at 2**22, Windows and macOS fit them in 32 bits.
MAX_PID = 2**32 - 1

# The JSON Schema spelling of "an absolute POSIX path, drive path or UNC path"; the
# finer rules (NUL, Windows oddities) are checked by ``path_problem``.
ABSOLUTE_PATH_PATTERN = r"^(/|[A-Za-z]:[\\/]|\\\\)"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an action: a small, JSON-Schema-like description.

    ``default`` of ``None`` means "no default" (no param takes JSON null). An
    optional param without a default is simply left out of the normalised params.
    ``is_path`` marks strings that must be absolute paths.
    """

    type: ParamType
    description: str
    required: bool = False
    default: Any = None
    enum: tuple[Any, ...] | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    items: ParamSpec | None = None
    min_items: int | None = None
    max_items: int | None = None
    is_path: bool = False


@dataclass(frozen=True)
class ActionSpec:
    """What an action is called, what params it takes and how risky it is at base.

    ``paths_read`` / ``paths_written`` name the params that are file paths the action
    reads or writes (``file.move`` both reads and writes ``src``: it removes it).
    ``payload`` names a (data param, encoding param) pair whose data is text or
    base64 according to the encoding.
    """

    name: str
    summary: str
    params: Mapping[str, ParamSpec] = field(default_factory=dict, hash=False)
    paths_read: tuple[str, ...] = ()
    paths_written: tuple[str, ...] = ()
    base_risk: RiskLevel = "high"
    payload: tuple[str, str] | None = None

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``params`` against this spec; return them normalised or raise."""
        if not isinstance(params, Mapping):
            raise ParamsError(f"params: expected object, got {_json_type(params)}")
        for key in params:
            if not isinstance(key, str):
                raise ParamsError(f"params: parameter names must be strings, got {key!r}")
            if key not in self.params:
                raise ParamsError(f"params.{key}: unknown parameter")
        out: dict[str, Any] = {}
        for name, spec in self.params.items():
            if name in params:
                out[name] = _check(f"params.{name}", spec, params[name])
            elif spec.required:
                raise ParamsError(f"params.{name}: required")
            elif spec.default is not None:
                out[name] = spec.default
        if self.payload is not None:
            data_param, encoding_param = self.payload
            if data_param in out and out.get(encoding_param) == "base64":
                try:
                    base64.b64decode(out[data_param], validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise ParamsError(f"params.{data_param}: not valid base64") from exc
        return out

    def payload_size(self, params: Mapping[str, Any]) -> int | None:
        """Size in bytes of the payload of already-validated ``params``, if any."""
        if self.payload is None:
            return None
        data_param, encoding_param = self.payload
        data = params.get(data_param)
        if not isinstance(data, str):
            return None
        if params.get(encoding_param) == "base64":
            return len(base64.b64decode(data, validate=True))
        return len(data.encode("utf-8"))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _type_ok(kind: ParamType, value: Any) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        if isinstance(value, float):
            return math.isfinite(value)
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list | tuple)
    return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)


def _check(where: str, spec: ParamSpec, value: Any) -> Any:
    """Validate one value; return its normalised form (arrays become lists)."""
    if not _type_ok(spec.type, value):
        return _fail(where, spec, value)
    if spec.enum is not None and value not in spec.enum:
        allowed = ", ".join(repr(v) for v in spec.enum)
        raise ParamsError(f"{where}: must be one of {allowed}")
    if isinstance(value, str):
        _check_string(where, spec, value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_safe_integers(where, value)
        if spec.minimum is not None and value < spec.minimum:
            raise ParamsError(f"{where}: must be at least {spec.minimum}")
        if spec.maximum is not None and value > spec.maximum:
            raise ParamsError(f"{where}: must be at most {spec.maximum}")
    elif isinstance(value, list | tuple):
        if spec.min_items is not None and len(value) < spec.min_items:
            raise ParamsError(f"{where}: needs at least {spec.min_items} item(s)")
        if spec.max_items is not None and len(value) > spec.max_items:
            raise ParamsError(f"{where}: allows at most {spec.max_items} items")
        if spec.items is not None:
            return [_check(f"{where}[{i}]", spec.items, item) for i, item in enumerate(value)]
        _check_safe_integers(where, value)
        return list(value)
    elif isinstance(value, Mapping):
        _check_safe_integers(where, value)
    return value


def _check_safe_integers(where: str, value: Any) -> None:
    """Refuse an integer, anywhere in ``value``, that canonical JSON cannot carry."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ParamsError(
                f"{where}: integer beyond the range JSON carries exactly (+-{MAX_SAFE_INTEGER})"
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_safe_integers(f"{where}.{key}", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_safe_integers(f"{where}[{index}]", item)


def _fail(where: str, spec: ParamSpec, value: Any) -> Any:
    if spec.type == "number" and isinstance(value, float):
        raise ParamsError(f"{where}: expected a finite number")
    if spec.type == "object" and isinstance(value, Mapping):
        raise ParamsError(f"{where}: object keys must be strings")
    raise ParamsError(f"{where}: expected {spec.type}, got {_json_type(value)}")


def _check_string(where: str, spec: ParamSpec, value: str) -> None:
    if spec.min_length is not None and len(value) < spec.min_length:
        raise ParamsError(f"{where}: must be at least {spec.min_length} character(s) long")
    if spec.max_length is not None and len(value) > spec.max_length:
        raise ParamsError(f"{where}: must be at most {spec.max_length} characters long")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate cannot be hashed, signed or written to disk faithfully.
        raise ParamsError(f"{where}: contains a lone surrogate") from exc
    if spec.is_path:
        problem = path_problem(value)
        if problem is not None:
            raise ParamsError(f"{where}: {problem}")


def validate_params(action: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``params`` normalised for ``action`` (defaults filled) or raise ParamsError.

    Messages are precise enough to show to the user as they are: ``unknown action
    'x'``, ``params.path: required``, ``params.foo: unknown parameter``,
    ``params.recursive: expected boolean, got string``.
    """
    spec = ACTIONS.get(action) if isinstance(action, str) else None
    if spec is None:
        raise ParamsError(f"unknown action {action!r}; `coact actions ls` lists the actions and their params")
    return spec.validate(params)


def _param_schema(spec: ParamSpec) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": spec.type}
    if spec.description:
        schema["description"] = spec.description
    if spec.enum is not None:
        schema["enum"] = list(spec.enum)
    if spec.default is not None:
        schema["default"] = spec.default
    for key, value in (
        ("minLength", spec.min_length),
        ("maxLength", spec.max_length),
        ("minimum", spec.minimum),
        ("maximum", spec.maximum),
        ("minItems", spec.min_items),
        ("maxItems", spec.max_items),
    ):
        if value is not None:
            schema[key] = value
    if spec.is_path:
        schema["pattern"] = ABSOLUTE_PATH_PATTERN
    if spec.items is not None:
        schema["items"] = _param_schema(spec.items)
    return schema


def spec_as_json_schema(action: str) -> dict[str, Any]:
    """The params of ``action`` as a JSON Schema (draft 2020-12 subset) object schema.

    Rules that JSON Schema cannot say (Windows path oddities, base64 payloads) are
    still enforced by ``validate_params``; the schema never accepts less than it.
    Raises ParamsError for an unknown action.
    """
    spec = ACTIONS.get(action)
    if spec is None:
        raise ParamsError(f"unknown action {action!r}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{spec.name} params",
        "description": spec.summary,
        "type": "object",
        "properties": {name: _param_schema(p) for name, p in spec.params.items()},
        "required": [name for name, p in spec.params.items() if p.required],
        "additionalProperties": False,
    }


# --- the catalog -------------------------------------------------------------------


def _path(description: str) -> ParamSpec:
    return ParamSpec(
        "string", description, required=True, min_length=1, max_length=MAX_PATH_LENGTH,
        is_path=True,
    )


def _flag(description: str) -> ParamSpec:
    return ParamSpec("boolean", description, default=False)


_ENCODING = ParamSpec(
    "string", "How the data is encoded: text (utf-8) or base64 bytes.",
    enum=("utf-8", "base64"), default="utf-8",
)
_PORT = ParamSpec(
    "string", "Serial port name, e.g. /dev/ttyUSB0 or COM3.", required=True,
    min_length=1, max_length=256,
)
_BAUDRATE = ParamSpec(
    "integer", "Line speed in bits per second.", default=9600, minimum=50, maximum=4_000_000,
)
_SERIAL_DATA = ParamSpec(
    "string", "Bytes to send, as text or base64 per `encoding`.", required=True,
    max_length=1 * MiB,
)
_COORD = ParamSpec(
    "integer", "Screen coordinate in pixels (may be negative on multi-monitor setups).",
    minimum=-100_000, maximum=100_000,
)


def _catalog(*specs: ActionSpec) -> Mapping[str, ActionSpec]:
    return MappingProxyType({s.name: s for s in specs})


ACTIONS: Mapping[str, ActionSpec] = _catalog(
    ActionSpec(
        "file.list", "List the entries of a directory.",
        {
            "path": _path("Directory to list."),
            "recursive": _flag("Descend into subdirectories."),
            "max_entries": ParamSpec(
                "integer", "Stop after this many entries.", default=1000,
                minimum=1, maximum=100_000,
            ),
        },
        paths_read=("path",), base_risk="low",
    ),
    ActionSpec(
        "file.stat", "Size, times, type and mode of a file or directory.",
        {"path": _path("File or directory to describe.")},
        paths_read=("path",), base_risk="low",
    ),
    ActionSpec(
        "file.read", "Read a file's content (large content becomes an artifact).",
        {
            "path": _path("File to read."),
            "max_bytes": ParamSpec(
                "integer", "Read at most this many bytes.", default=1 * MiB,
                minimum=0, maximum=16 * MiB,
            ),
            "encoding": ParamSpec(
                "string", "Return the content as text (utf-8) or base64.",
                enum=("utf-8", "base64"), default="utf-8",
            ),
        },
        paths_read=("path",), base_risk="low",
    ),
    ActionSpec(
        "file.write", "Create or replace a file with the given content.",
        {
            "path": _path("File to write."),
            "content": ParamSpec(
                "string", "The content, as text or base64 per `encoding`.", required=True,
                max_length=24 * MiB,
            ),
            "encoding": _ENCODING,
            "overwrite": _flag("Replace the file if it exists."),
            "mode": ParamSpec(
                "integer", "Permission bits of a new file (420 = 0o644); no setuid, "
                "setgid or sticky bits.", default=0o644, minimum=0, maximum=0o777,
            ),
        },
        paths_written=("path",), base_risk="medium", payload=("content", "encoding"),
    ),
    ActionSpec(
        "file.copy", "Copy a file.",
        {
            "src": _path("File to copy."),
            "dst": _path("Where the copy goes."),
            "overwrite": _flag("Replace `dst` if it exists."),
        },
        paths_read=("src",), paths_written=("dst",), base_risk="medium",
    ),
    ActionSpec(
        "file.move", "Move or rename a file or directory.",
        {
            "src": _path("What to move (it is removed from here)."),
            "dst": _path("Where it goes."),
            "overwrite": _flag("Replace `dst` if it exists."),
        },
        paths_read=("src",), paths_written=("src", "dst"), base_risk="medium",
    ),
    ActionSpec(
        "file.delete", "Delete a file, or a directory tree if `recursive`.",
        {
            "path": _path("File or directory to delete."),
            "recursive": _flag("Delete a directory and everything below it."),
        },
        paths_written=("path",), base_risk="high",
    ),
    ActionSpec(
        "file.hash", "Digest of a file's content.",
        {
            "path": _path("File to hash."),
            "algorithm": ParamSpec(
                "string", "Digest algorithm.", enum=("sha256",), default="sha256",
            ),
        },
        paths_read=("path",), base_risk="low",
    ),
    ActionSpec(
        "app.launch", "Start a program from an argument vector (never a shell string).",
        {
            "argv": ParamSpec(
                "array", "Program and its arguments; argv[0] is the program.", required=True,
                items=ParamSpec("string", "", min_length=1, max_length=32_768),
                min_items=1, max_items=1024,
            ),
            "cwd": ParamSpec(
                "string", "Working directory for the program.", min_length=1,
                max_length=MAX_PATH_LENGTH, is_path=True,
            ),
        },
        base_risk="high",
    ),
    ActionSpec(
        "app.close", "Ask a running program to close.",
        {"pid": ParamSpec("integer", "Process id.", required=True, minimum=1, maximum=MAX_PID)},
        base_risk="medium",
    ),
    ActionSpec("app.list", "List running programs.", {}, base_risk="low"),
    ActionSpec(
        "input.move", "Move the mouse pointer.",
        {"x": replace(_COORD, required=True), "y": replace(_COORD, required=True)},
        base_risk="high",
    ),
    ActionSpec(
        "input.click", "Click a mouse button, at (x, y) if given.",
        {
            "x": _COORD,
            "y": _COORD,
            "button": ParamSpec(
                "string", "Which button.", enum=("left", "right", "middle"), default="left",
            ),
        },
        base_risk="high",
    ),
    ActionSpec(
        "input.type", "Type text with the keyboard.",
        {"text": ParamSpec("string", "Text to type.", required=True, max_length=100_000)},
        base_risk="high",
    ),
    ActionSpec(
        "input.hotkey", "Press a key combination, e.g. ['ctrl', 's'].",
        {
            "keys": ParamSpec(
                "array", "Key names, pressed in order and released in reverse.",
                required=True, items=ParamSpec("string", "", min_length=1, max_length=32),
                min_items=1, max_items=8,
            ),
        },
        base_risk="high",
    ),
    ActionSpec(
        "screen.capture", "Take a screenshot (returned as an artifact).", {},
        base_risk="medium",
    ),
    ActionSpec("serial.list", "List serial ports.", {}, base_risk="low"),
    ActionSpec(
        "serial.write", "Send bytes to a serial port.",
        {"port": _PORT, "data": _SERIAL_DATA, "encoding": _ENCODING, "baudrate": _BAUDRATE},
        base_risk="high", payload=("data", "encoding"),
    ),
    ActionSpec(
        "serial.query", "Send bytes to a serial port and read the reply.",
        {
            "port": _PORT,
            "data": _SERIAL_DATA,
            "read_bytes": ParamSpec(
                "integer", "Read at most this many bytes of reply.", default=256,
                minimum=1, maximum=1 * MiB,
            ),
            "timeout_s": ParamSpec(
                "number", "Stop reading after this many seconds.", default=1.0,
                minimum=0, maximum=60,
            ),
            "baudrate": _BAUDRATE,
            "encoding": _ENCODING,
        },
        base_risk="high", payload=("data", "encoding"),
    ),
    ActionSpec(
        "watch.add", "Watch a path and raise events when it changes.",
        {
            "path": _path("File or directory to watch."),
            "recursive": _flag("Also watch subdirectories."),
        },
        paths_read=("path",), base_risk="low",
    ),
    ActionSpec(
        "watch.remove", "Stop a watch.",
        {"watch_id": ParamSpec(
            "string", "Id returned by watch.add.", required=True, min_length=1, max_length=128,
        )},
        base_risk="low",
    ),
    ActionSpec("system.info", "OS, CPU, memory, disks and uptime.", {}, base_risk="low"),
)
