"""How commands talk: data on stdout, messages on stderr, colour only on a terminal."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from rich.console import Console

# Created lazily so CliRunner's swapped streams are honoured.


def err_console() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def out_console() -> Console:
    return Console(file=sys.stdout, highlight=False)


def say(message: str) -> None:
    """A message for the user, on stderr."""
    err_console().print(message, markup=False)


def warn(message: str) -> None:
    err_console().print(f"Warning: {message}", markup=False, style="yellow")


def emit_json(data: Any) -> None:
    """One JSON document on stdout (for --json)."""
    sys.stdout.write(
        orjson.dumps(
            data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        ).decode()
    )
    sys.stdout.write("\n")
    sys.stdout.flush()


def is_terminal(stream: Any = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
