"""`qt monitor` in a real pseudo-terminal: it draws, updates, and Ctrl+C ends it with exit code 0.

The pipeline is fed by a writer thread that stores ticks, a top of book and the bridge's stats
hash exactly as docs/contracts.md says the bridge does, while `qt monitor` runs as a real process.
The screen is reconstructed from the bytes the process writes by a small terminal emulator.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
import valkey as valkey_lib

from qt_cli.core import keys
from qt_cli.core.events import NS_PER_S, TopOfBook
from tests.conftest import ValkeyServer
from tests.core.test_monitor import seed_stage, trade, xadd_event
from tests.helpers import QtProcesses, eventually, qt_command

pytestmark = pytest.mark.e2e

SYM = "WDOQ25"
ROWS, COLS = 40, 150
CSI = re.compile(r"\x1b\[(\??)([0-9;]*)([A-Za-z])")


class Screen:
    """Enough of a VT100 for rich: text, CR, LF, cursor moves, erase line/screen, SGR ignored."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.lines = [[" "] * cols for _ in range(rows)]
        self.row = self.col = 0

    def feed(self, data: str) -> None:
        i = 0
        while i < len(data):
            char = data[i]
            if char == "\x1b":
                match = CSI.match(data, i)
                if match is None:  # an escape we do not model (e.g. a title): skip it
                    i += 2
                    continue
                self._csi(match.group(1), match.group(2), match.group(3))
                i = match.end()
                continue
            if char == "\r":
                self.col = 0
            elif char == "\n":
                self._newline()
            elif char == "\b":
                self.col = max(0, self.col - 1)
            elif char >= " ":
                if self.col >= self.cols:
                    self.col = 0
                    self._newline()
                self.lines[self.row][self.col] = char
                self.col += 1
            i += 1

    def _newline(self) -> None:
        if self.row == self.rows - 1:
            self.lines.pop(0)
            self.lines.append([" "] * self.cols)
        else:
            self.row += 1

    def _csi(self, private: str, params: str, final: str) -> None:
        if private:
            return  # ?25l / ?25h: cursor visibility
        numbers = [int(p) for p in params.split(";") if p]
        n = numbers[0] if numbers else 0
        if final == "A":
            self.row = max(0, self.row - max(n, 1))
        elif final == "B":
            self.row = min(self.rows - 1, self.row + max(n, 1))
        elif final == "C":
            self.col = min(self.cols - 1, self.col + max(n, 1))
        elif final == "D":
            self.col = max(0, self.col - max(n, 1))
        elif final == "G":
            self.col = max(0, n - 1)
        elif final == "H":
            self.row = max(0, (numbers[0] if numbers else 1) - 1)
            self.col = max(0, (numbers[1] if len(numbers) > 1 else 1) - 1)
        elif final == "K":
            line = self.lines[self.row]
            start, end = {0: (self.col, self.cols), 1: (0, self.col + 1), 2: (0, self.cols)}[n]
            line[start:end] = [" "] * (end - start)
        elif final == "J" and n == 2:
            self.lines = [[" "] * self.cols for _ in range(self.rows)]

    def text(self) -> str:
        return "\n".join("".join(line).rstrip() for line in self.lines).strip("\n")


class Writer(threading.Thread):
    """Plays the bridge: a trade and a top of book every 50 ms, the stats hash every 200 ms."""

    def __init__(self, client: valkey_lib.Valkey) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.halt = threading.Event()
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            price = 5400.0
            last_stats = 0
            while not self.halt.is_set():
                now = time.time_ns()
                self.written += 1
                price += 0.5 if self.written % 3 else -0.5
                xadd_event(self.client, trade(now, price, 1, trade_id=self.written))
                xadd_event(
                    self.client,
                    TopOfBook(symbol=SYM, ts_event=now, bid_price=price - 0.5, ask_price=price),
                )
                if now - last_stats > NS_PER_S // 5:
                    last_stats = now
                    seed_stage(
                        self.client,
                        "bridge",
                        "default",
                        updated_ns=now,
                        received=self.written,
                        written=self.written,
                        rate=20.0,
                    )
                self.halt.wait(0.05)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


@pytest.fixture
def writer(valkey_url: str, valkey_server: ValkeyServer) -> Iterator[Writer]:
    thread = Writer(valkey_server.client())
    thread.start()
    yield thread
    thread.halt.set()
    thread.join(timeout=5)
    thread.client.close()
    assert thread.error is None, thread.error


def _trades_on_screen(screen: Screen) -> int | None:
    """The trade count in the symbol's row, once a whole frame is on screen (None before)."""
    lines = screen.text().splitlines()
    if not any(line.startswith("predict") for line in lines):
        return None  # a frame is drawn in several writes: wait for its last table row
    for line in lines:
        if line.startswith(SYM):
            cells = line.split()
            # Symbol, Last, Chg %, Vol, Trades, …
            return int(cells[4].lstrip("≥").replace(",", ""))
    return None


class Terminal:
    """`qt monitor` in a pseudo-terminal, its output fed to a Screen."""

    def __init__(self, *args: str) -> None:
        command = qt_command("monitor", *args)
        env = {**os.environ, "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}
        for name in ("NO_COLOR", "COLUMNS", "LINES"):
            env.pop(name, None)
        self.child = pexpect.spawn(
            command[0], command[1:], env=env, dimensions=(ROWS, COLS), encoding="utf-8", timeout=20
        )
        self.screen = Screen(ROWS, COLS)
        self.raw: list[str] = []

    def pump(self) -> None:
        try:
            chunk = self.child.read_nonblocking(65536, timeout=0.1)
        except pexpect.TIMEOUT:
            return
        self.raw.append(chunk)
        self.screen.feed(chunk)

    def trades(self) -> int | None:
        self.pump()
        return _trades_on_screen(self.screen)

    def watch_updates(self) -> tuple[str, str]:
        """Two whole frames with a growing trade count for the symbol."""
        first_count = eventually(self.trades, timeout=20, message="a frame with WDOQ25")
        first = self.screen.text()
        eventually(
            lambda: (n := self.trades()) is not None and n > first_count,
            timeout=20,
            message="the trade count on screen grows",
        )
        return first, self.screen.text()

    def ctrl_c(self) -> str:
        """Ctrl+C through the terminal, as a user would; the final screen."""
        self.child.sendintr()
        self.child.expect(pexpect.EOF, timeout=20)
        self.screen.feed(self.child.before or "")
        self.child.close()
        return self.screen.text()

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()


def _check_frame(screen: str) -> str:
    for expected in ("qt monitor", "Symbols", "Pipeline", "bridge", "Valkey"):
        assert expected in screen, screen
    assert screen.count("qt monitor ") == 1, screen  # one frame, redrawn in place
    row = next(line for line in screen.splitlines() if line.startswith(SYM))
    assert "STALE" not in row, row
    return row


def _check_exit(terminal: Terminal, final: str) -> None:
    assert terminal.child.signalstatus is None, "killed by a signal instead of exiting"
    assert terminal.child.exitstatus == 0, "".join(terminal.raw)
    assert re.search(r"monitor stopped after \d+ frames?$", final, re.MULTILINE), final
    assert "Traceback" not in final
    assert SYM in final  # the last frame stays on screen


def test_monitor_updates_in_a_terminal_and_exits_0_on_ctrl_c(writer: Writer) -> None:
    eventually(lambda: writer.written >= 3, message="the writer stores ticks")
    terminal = Terminal("--refresh", "300ms")
    try:
        first, second = terminal.watch_updates()
        assert first != second
        row = _check_frame(second)
        assert "WAITING" in row, row
        assert "ok" in next(line for line in second.splitlines() if line.startswith("bridge"))
        assert "\x1b[" in "".join(terminal.raw)  # colours and cursor moves: a real terminal
        final = terminal.ctrl_c()
    finally:
        terminal.close()
    _check_exit(terminal, final)


def test_monitor_watches_a_running_simulated_feed(
    valkey_url: str, vk: valkey_lib.Valkey, qt: QtProcesses, tmp_path: Path
) -> None:
    """A real `qt feed --sim` stores into Valkey while `qt monitor` runs in a terminal."""
    feed = qt.start(
        "feed",
        "--sim",
        "--symbol",
        SYM,
        "--out",
        valkey_url,
        "--journal",
        str(tmp_path / "journal"),
        "--duration",
        "60s",
    )
    eventually(
        lambda: vk.xlen(keys.stream_key("ticks", SYM)) > 0 or feed.poll() is not None,
        timeout=20,
        message="the feed stores ticks",
    )
    assert feed.poll() is None, qt.stop(feed).output
    terminal = Terminal("--refresh", "300ms")
    try:
        _, second = terminal.watch_updates()
        row = _check_frame(second)
        cells = row.split()
        assert float(cells[1].replace(",", "")) > 0  # last price
        final = terminal.ctrl_c()
    finally:
        terminal.close()
    _check_exit(terminal, final)
    assert qt.stop(feed).returncode == 0


def test_monitor_without_a_terminal_prints_frames_and_exits_0_on_sigterm(
    writer: Writer, qt: QtProcesses
) -> None:
    eventually(lambda: writer.written >= 3, message="the writer stores ticks")
    proc = qt.start("monitor", "--refresh", "200ms", env={"COLUMNS": "120"})
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen: list[bytes] = []

    def frames() -> bool:
        chunk = proc.stdout.read() if proc.stdout else None
        if chunk:
            seen.append(chunk)
        return b"".join(seen).count(b"qt monitor ") >= 3

    eventually(frames, timeout=20, message="three frames on stdout")
    finished = qt.stop(proc, signal.SIGTERM)
    assert finished.returncode == 0, finished.output
    assert re.search(r"monitor stopped after \d+ frames", finished.stderr), finished.output
    output = b"".join(seen).decode() + finished.stdout
    assert "\x1b[" not in output  # not a terminal: no colours, no cursor moves
    assert SYM in output
