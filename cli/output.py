"""How admin commands present results: aligned tables for people, JSON for scripts,
and a progress line on stderr that only a terminal sees.

Machine-readable output goes to stdout and nothing else does; progress and
diagnostics go to stderr, so ``coact ... --output json | jq`` always parses.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import click

OUTPUT_OPTION = click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="text: tables and sentences for people; json: machine-readable, on stdout only.",
)

_SPINNER = "|/-\\"


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def cell(value: Any) -> str:
    """One table cell: empty for missing values, lists joined, nothing multi-line."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return " ".join(str(value).split())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is never padded."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *cells]:
        padded = [value.ljust(widths[i]) for i, value in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    if not rows:
        click.echo(empty, err=True)
        return
    click.echo(table(headers, rows))


class Progress:
    """A one-line status on stderr, redrawn in place; silent when stderr is not a TTY."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._frame = 0
        self._width = 0

    def update(self, message: str) -> None:
        if not self.enabled:
            return
        spin = _SPINNER[self._frame % len(_SPINNER)]
        self._frame += 1
        line = f"{spin} {message}"
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


@contextmanager
def progress() -> Iterator[Progress]:
    line = Progress()
    try:
        yield line
    finally:
        line.clear()


def elapsed_since(start: float) -> str:
    return f"{time.monotonic() - start:.1f} s"
