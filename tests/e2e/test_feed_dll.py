"""`qt feed --dll` as a real process on the fake ProfitDLL, checked by subscribing over ZeroMQ.

The fake holds its connector thread until a gate file exists (FAKE_PROFIT_GATE): the test
connects its SUB sockets, waits until each one's handshake with the feed's PUB has succeeded,
then opens the gate, so every message the feed publishes has a listener and a missing seq is a
real gap, not a slow joiner.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from qt_cli.core import events as ev
from qt_cli.core import keys
from tests.fakedll import expected as fx
from tests.fakedll.build import build_fake, build_missing_export
from tests.helpers import QtProcesses, tcp_endpoint

pytestmark = pytest.mark.e2e

PASSWORD = "pw-Do-Not-Print-7f3a"
CREDENTIALS = {
    "PROFIT_ACTIVATION_KEY": "activation-key",
    "PROFIT_USER": "trader@example.com",
    "PROFIT_PASSWORD": PASSWORD,
}
GENERATED = 200
HISTORY = 5
SYMBOL = fx.SYMBOL


@pytest.fixture(scope="session")
def fake_dll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake ProfitDLL shared library, compiled once per session."""
    return build_fake(tmp_path_factory.mktemp("fakedll"))


class Subscribers:
    """One SUB socket per channel, each with a monitor that reports the finished handshake."""

    def __init__(self, endpoints: dict[str, str]) -> None:
        self.context = zmq.Context()
        self.sockets: dict[str, zmq.Socket[Any]] = {}
        self.monitors: dict[str, zmq.Socket[Any]] = {}
        self.received: dict[str, list[tuple[str, bytes]]] = {name: [] for name in endpoints}
        for name, endpoint in endpoints.items():
            sock = self.context.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 0)  # never drop on our side
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            monitor.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            self.sockets[name] = sock
            self.monitors[name] = monitor

    def wait_connected(self, alive: Any, timeout: float = 30.0) -> None:
        """Until every SUB finished its handshake with the feed's PUB; `alive()` false fails."""
        waiting = dict(self.monitors)
        deadline = time.monotonic() + timeout
        while waiting:
            assert alive(), "the feed exited before its publishers were up"
            assert time.monotonic() < deadline, f"no handshake on {sorted(waiting)}"
            for name, monitor in list(waiting.items()):
                if monitor.poll(50):
                    event = recv_monitor_message(monitor)
                    if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        del waiting[name]

    def collect(self, done: Any, timeout: float = 30.0) -> None:
        """Receive (every recv under a poll timeout) until `done(received)` or fail at `timeout`."""
        poller = zmq.Poller()
        for sock in self.sockets.values():
            poller.register(sock, zmq.POLLIN)
        names = {sock: name for name, sock in self.sockets.items()}
        deadline = time.monotonic() + timeout
        while not done(self.received):
            counts = {name: len(got) for name, got in self.received.items()}
            assert time.monotonic() < deadline, f"incomplete after {timeout}s: {counts}"
            for sock, _ in poller.poll(100):
                while True:
                    try:
                        topic, payload = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.received[names[sock]].append((topic.decode(), payload))

    def close(self) -> None:
        for sock in [*self.monitors.values(), *self.sockets.values()]:
            sock.close(linger=0)
        self.context.term()


@pytest.fixture
def endpoints() -> dict[str, str]:
    return {name: tcp_endpoint() for name in ("ticks", "book", "history", "replay")}


@pytest.fixture
def subscribers(endpoints: dict[str, str]) -> Iterator[Subscribers]:
    subs = Subscribers({k: v for k, v in endpoints.items() if k != "replay"})
    yield subs
    subs.close()


def feed_args(dll: Path, endpoints: dict[str, str], journal: Path, *extra: str) -> list[str]:
    outs = [arg for kind, uri in endpoints.items() for arg in ("--out", f"{kind}={uri}")]
    return ["feed", "--dll", str(dll), "--symbol", SYMBOL, *outs, "--journal", str(journal), *extra]


def complete(received: dict[str, list[tuple[str, bytes]]]) -> bool:
    """Everything the fake emits for one subscribed ticker with history has arrived."""
    ticks = [orjson.loads(payload) for _, payload in received["ticks"]]
    live_trades = sum(1 for m in ticks if m["type"] == "tick")
    history_done = any(m.get("text") == "HISTORY_DONE" for m in ticks)
    # progress 100 follows the last history trade and may come after HISTORY_DONE
    progress_done = any(m.get("text") == "HISTORY_PROGRESS" and m["code"] == 100 for m in ticks)
    return (
        live_trades >= len(fx.KNOWN_TRADES) + GENERATED
        and history_done
        and progress_done
        and len(received["book"]) >= 2 + 4 + 2 + 4 + 2  # price book, offer book, tiny book
        and len(received["history"]) >= HISTORY
    )


def test_feed_dll_publishes_every_event_with_gap_free_seq(
    qt: QtProcesses,
    fake_dll: Path,
    endpoints: dict[str, str],
    subscribers: Subscribers,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    env = {
        **CREDENTIALS,
        "FAKE_PROFIT_GATE": str(gate),
        "FAKE_PROFIT_TRADES": str(GENERATED),
        "FAKE_PROFIT_HISTORY": str(HISTORY),
    }
    history = ("--history-from", "2025-08-08T10:00:00", "--history-to", "2025-08-08T17:00:00")
    args = feed_args(fake_dll, endpoints, tmp_path / "journal", *history, "--duration", "90s")
    proc = qt.start(*args, "--json", env=env)
    subscribers.wait_connected(alive=lambda: proc.poll() is None)
    gate.touch()
    try:
        subscribers.collect(complete)
    finally:
        result = qt.stop(proc)
    assert result.returncode in (0, 130), result.output
    assert "Traceback" not in result.stderr, result.output
    assert PASSWORD not in result.stdout + result.stderr
    assert isinstance(json.loads(result.stdout), dict), result.output

    # every channel: one session `<run>.<channel>`, seq 1..n without a gap, the same run id
    runs = set()
    decoded: dict[str, list[tuple[str, ev.Event]]] = {}
    for channel, messages in subscribers.received.items():
        wire = [orjson.loads(payload) for _, payload in messages]
        sessions = {m["session"] for m in wire}
        assert len(sessions) == 1, (channel, sessions)
        (session,) = sessions
        run, _, suffix = session.partition(".")
        assert suffix == channel
        runs.add(run)
        assert [m["seq"] for m in wire] == list(range(1, len(wire) + 1)), channel
        decoded[channel] = [(topic, ev.decode(payload)) for topic, payload in messages]
    assert len(runs) == 1

    ticks = decoded["ticks"]
    for topic, event in ticks + decoded["book"] + decoded["history"]:
        wire_type = "history" if getattr(event, "history", False) else event.TYPE
        assert topic == keys.topic(wire_type, event.symbol)

    # connection states in words, then the subscription, then the ticker's own state
    states = [e for _, e in ticks if isinstance(e, ev.State)]
    assert [(s.source, s.code, s.text) for s in states if s.symbol == "*"] == fx.CONNECTION_STATES
    texts = [s.text for s in states]
    assert texts.index("SUBSCRIBED") > texts.index("MARKET_CONNECTED")
    assert ("ticker", 0, "OPENED") in [(s.source, s.code, s.text) for s in states]

    # live trades, every field, including the edit, the out-of-order one and unknown types
    trades = [e for _, e in ticks if isinstance(e, ev.Trade)]
    assert all(t.symbol == SYMBOL and not t.history for t in trades)
    fixed = [tuple(getattr(t, name) for name in fx.TRADE_FIELDS) for t in trades[:6]]
    assert fixed == fx.KNOWN_TRADES
    generated = [(t.trade_id, t.ts_event, t.price, t.quantity, t.aggressor) for t in trades[6:]]
    assert generated == [fx.generated_trade(i) for i in range(GENERATED)]
    # the seed guide's tick fields, as a seed-era consumer reads them
    first_trade = next(orjson.loads(p) for _, p in subscribers.received["ticks"] if b'"tick"' in p)
    assert first_trade["timestamp"] == "2025-08-08T09:00:00.100-03:00"
    assert first_trade["timestamp_ms"] == fx.session_ns(100) // fx.MS
    assert first_trade["recv_ns"] == first_trade["ts_init"] > 0

    (daily,) = [e for _, e in ticks if isinstance(e, ev.Daily)]
    assert {name: getattr(daily, name) for name in fx.DAILY} == fx.DAILY

    # book channel: top of book, then the price book and the offer book
    book = [e for _, e in decoded["book"]]
    tops = [
        (t.bid_price, t.bid_qty, t.ask_price, t.ask_qty)
        for t in book
        if isinstance(t, ev.TopOfBook)
    ]
    assert tops[-1] == fx.TOP_OF_BOOK_FINAL
    price = [e for e in book if isinstance(e, ev.BookUpdate) and e.book == "price"]
    assert {e.side: e.levels for e in price if e.action == "full"} == fx.PRICE_BOOK_FULL
    assert [
        (e.side, e.action, e.position, e.price, e.quantity, e.count) for e in price[2:]
    ] == fx.PRICE_BOOK_UPDATES
    offer = [e for e in book if isinstance(e, ev.BookUpdate) and e.book == "offer"]
    assert {e.side: e.levels for e in offer if e.action == "full"} == fx.OFFER_BOOK_FULL
    assert [
        (e.side, e.action, e.position, e.price, e.quantity, e.agent, e.order_id) for e in offer[2:]
    ] == fx.OFFER_BOOK_UPDATES

    # history channel: the all-zero trade was dropped, the rest arrived flagged as history
    history_trades = [e for _, e in decoded["history"]]
    start = fx.session_ns(3_600_000)
    assert [(t.trade_id, t.ts_event, t.price, t.quantity) for t in history_trades] == [
        fx.history_trade(i, start) for i in range(HISTORY)
    ]
    assert all(isinstance(t, ev.Trade) and t.history for t in history_trades)
    progress = [s.code for s in states if s.text == "HISTORY_PROGRESS"]
    assert progress == list(range(1, 101))


@pytest.mark.parametrize(
    ("case", "codes", "message"),
    [
        # the command may check the path itself (a usage error) before the binding does
        ("missing_file", (2, 3), r"ProfitDLL64\.dll: no such file|ProfitDLL not found"),
        ("not_a_library", (3,), r"cannot load .*ProfitDLL64\.dll: it is not a loadable library"),
        ("missing_export", (3,), r"does not export SetTradeCallbackV2\."),
        (
            "login_fail",
            (3,),
            r"login failed: LOGIN_INVALID_PASS: wrong password: check PROFIT_PASSWORD",
        ),
    ],
)
def test_feed_dll_fails_with_one_clear_line(
    qt: QtProcesses,
    fake_dll: Path,
    endpoints: dict[str, str],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    case: str,
    codes: tuple[int, ...],
    message: str,
) -> None:
    env = dict(CREDENTIALS)
    dll = fake_dll
    if case in ("missing_file", "not_a_library"):
        dll = tmp_path / "ProfitDLL64.dll"
        if case == "not_a_library":
            dll.write_text("not a library")
    elif case == "missing_export":
        dll = build_missing_export(tmp_path_factory.mktemp("fakedll-missing"), "SetTradeCallbackV2")
    else:
        env["FAKE_PROFIT_SCENARIO"] = "login_fail"
    args = feed_args(dll, endpoints, tmp_path / "journal", "--duration", "30s")
    result = qt.run(*args, env=env, timeout=60)
    assert result.returncode in codes, result.output  # 3 = ExitCode.UNAVAILABLE
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.output
    assert re.search(message, lines[-1]), result.output
    assert "Traceback" not in result.stderr, result.output
    for secret in CREDENTIALS.values():
        assert secret not in result.stdout + result.stderr
