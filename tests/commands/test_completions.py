from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qt_cli.completions import FILENAMES, SHELLS, render

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("shell", SHELLS)
def test_completions_are_current(shell: str) -> None:
    committed = ROOT / "completions" / FILENAMES[shell]
    assert committed.exists(), f"{committed} missing: run 'make completions'"
    assert committed.read_text() == render(shell), f"{committed} is stale: run 'make completions'"


def test_bash_completion_completes_subcommands() -> None:
    script = ROOT / "completions" / "qt.bash"
    out = subprocess.run(
        [
            "bash",
            "-c",
            f'source "{script}"; COMP_WORDS=(qt valkey st); COMP_CWORD=2; _qt_completion; echo "${{COMPREPLY[@]}}"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["start", "stop", "status"]
