from __future__ import annotations

from pathlib import Path

from qt_cli.clidoc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    assert DOC.exists(), "docs/cli.md missing: run 'make docs'"
    assert DOC.read_text() == render(), "docs/cli.md is stale: run 'make docs'"


def test_cli_reference_covers_every_command() -> None:
    from qt_cli.commands import COMMANDS

    text = DOC.read_text()
    for name, _, _ in COMMANDS:
        assert f"## `qt {name}" in text
