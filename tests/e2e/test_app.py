"""The `qt` process as a whole, seen from the shell: what it does when its reader goes away."""

from __future__ import annotations

import os

import pytest

from tests.helpers import QtProcesses

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("query", "--help"),
        ("cleanup", "--help"),
        ("feed", "--help"),
        ("--version",),
        ("config",),
        ("config", "--json"),
        ("feed", "--sim", "--rate", "0", "--stop-after", "5000", "--out", "-", "--journal", "j"),
    ],
    ids=" ".join,
)
def test_a_closed_stdout_pipe_ends_quietly_with_exit_0(qt: QtProcesses, args: tuple[str]) -> None:
    """`qt … | head -1`: the reader has gone before qt writes; no error, no traceback, exit 0.

    (The feed still prints its totals on stderr: it was stopped by its reader going away.)"""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before qt writes a byte: every write is EPIPE
    try:
        proc = qt.start(*args, stdout=write_end, env={"COLUMNS": "80"})
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=60)
    talk = err.decode()
    assert proc.returncode == 0, talk
    assert "Error" not in talk and "Traceback" not in talk and "Exception" not in talk, talk
    if "--help" in args or "--version" in args:
        assert talk == ""
