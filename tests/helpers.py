"""Test helpers shared by the suites: waiting on conditions, free ports, real `qt` processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QT_EXE = shutil.which("qt", path=str(Path(sys.executable).parent)) or ""


def eventually(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, message: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"condition not met within {timeout}s: {message or condition} (last: {last!r})"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def qt_command(*args: str) -> list[str]:
    if QT_EXE:
        return [QT_EXE, *args]
    return [sys.executable, "-m", "qt_cli", *args]


@dataclass
class Finished:
    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class QtProcesses:
    """Starts real `qt` processes and makes sure none outlives the test."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.procs: list[subprocess.Popen[bytes]] = []

    def run(
        self,
        *args: str,
        timeout: float = 60.0,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> Finished:
        """Run `qt args…` to completion (killed at `timeout`) and collect its output."""
        proc = self.start(
            *args, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL
        )
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(
                f"qt {' '.join(args)} did not finish in {timeout}s\n{err.decode(errors='replace')}"
            ) from None
        return Finished(
            args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )

    def start(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
    ) -> subprocess.Popen[bytes]:
        """Start `qt args…` in the background; stopped at teardown if still running."""
        proc = subprocess.Popen(
            qt_command(*args),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=self.cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(
        proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 20.0
    ) -> Finished:
        """Send `sig` and collect the output once the process exits."""
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(
                f"process did not exit {timeout}s after signal {sig}\n{err.decode(errors='replace')}"
            ) from None
        return Finished(
            [],
            proc.returncode,
            (out or b"").decode(errors="replace"),
            (err or b"").decode(errors="replace"),
        )

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    stream.close()


# What an older qt's library looks like to this one: same name, other version, other arguments.
OTHER_QT_LIBRARY = """#!lua name=qt
local function refuse(keys, args)
  return server.error_reply('qt_append: expected count, a one-byte separator and the data')
end
server.register_function('qt_append', refuse)
server.register_function('qt_chunk', refuse)
server.register_function{function_name = 'qt_version', callback = function() return '3' end,
  flags = {'no-writes'}}
"""


# --- faults: a Valkey that loses its last writes, a full disk -------------------------------


def kill_valkey(server: Any) -> None:
    """SIGKILL a `ManagedValkey` (no AOF flush, no goodbye) and wait until it is gone."""
    pid = server._pid()
    assert pid > 0, "the server is not running"
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except (OSError, IndexError):
            return True

    eventually(gone, message="valkey-server killed")


def last_incr_aof(server: Any) -> Path:
    """The newest incremental file of a `ManagedValkey`'s multi-part append-only file (Valkey 7+
    keeps base + incr files and a manifest in its appenddir). Cutting its tail is what an
    operating-system crash may leave under `appendfsync everysec`; the server loads what is left
    (`aof-load-truncated yes`, the default)."""
    files = sorted(server.data_dir.rglob("*.incr.aof"), key=lambda p: int(p.name.split(".")[-3]))
    assert files, f"no incremental AOF under {server.data_dir}"
    return files[-1]


def mount_small_tmpfs(path: Path, size: str = "2m") -> Callable[[], None]:
    """Mount a tmpfs of `size` on `path` (needs root); returns the unmount."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"cannot mount a {size} tmpfs (root needed): {result.stderr.strip()}")

    def unmount() -> None:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)

    return unmount
