"""docs/cli.md: the CLI reference, generated from every command's --help (`make docs`).

tests/commands/test_clidoc.py fails when the committed file differs, so a new or changed option
is never undocumented.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

WIDTH = 100


def _paths() -> list[list[str]]:
    from qt_cli.app import app

    root = typer.main.get_command(app)
    found: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    return found


def render() -> str:
    from qt_cli.app import app

    runner = CliRunner()
    parts = [
        "# CLI reference",
        "",
        "Generated from `--help` by `make docs`; do not edit by hand.",
        "",
    ]
    for path in _paths():
        result = runner.invoke(
            app,
            [*path, "--help"],
            prog_name="qt",
            terminal_width=WIDTH,
            env={"NO_COLOR": "1", "COLUMNS": str(WIDTH), "TERM": "dumb"},
        )
        title = " ".join(["qt", *path])
        text = "\n".join(line.rstrip() for line in result.stdout.strip("\n").splitlines())
        parts += [f"## `{title}`", "", "```text", text, "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/cli.md")
    target.write_text(render())
    sys.stderr.write(f"wrote {target}\n")
