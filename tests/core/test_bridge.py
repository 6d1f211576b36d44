"""The bridge runner with a real Valkey, real ZeroMQ sockets, a real journal and replay endpoint."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pytest
import valkey
import zmq

from qt_cli.core import keys, query
from qt_cli.core.bridge import (
    Bridge,
    BridgeConfig,
    BridgeStats,
    DeadLetter,
    Gap,
    SpillQueue,
    entry_trade,
    partial_key,
    trade_row,
    watermark_key,
)
from qt_cli.core.bridge import derive as bridge_derive
from qt_cli.core.bridge import runner as bridge_runner
from qt_cli.core.bridge import spill as bridge_spill
from qt_cli.core.candles import candles_from_ticks
from qt_cli.core.chunks import decode_tick_columns, trades_of
from qt_cli.core.errors import UsageError
from qt_cli.core.events import NS_PER_S, BookUpdate, Trade, decode_fields
from qt_cli.core.journal import JournalWriter, trim_journal
from qt_cli.core.store.managed import ManagedValkey
from qt_cli.core.store.writer import LIBRARY_VERSION, is_out_of_order
from qt_cli.core.zmq_io import PubSink, ReplayServer
from tests.helpers import OTHER_QT_LIBRARY, eventually, free_port, tcp_endpoint

T0 = 1_754_654_400 * NS_PER_S


def make_trades(n: int, *, symbols=("WDOQ25", "WINV25"), step_ms: int = 37) -> list[Trade]:
    out = []
    for i in range(n):
        ts = T0 + i * step_ms * 1_000_000
        price = 5000.0 + (i * 7 % 23) * 0.5
        qty = 1 + i % 5
        out.append(
            Trade(
                symbol=symbols[i % len(symbols)],
                ts_event=ts,
                price=price,
                quantity=qty,
                volume=price * qty * 10,
                trade_id=i + 1,
                trade_type=2 + i % 2,
                aggressor="buy" if i % 2 == 0 else "sell",
                ts_init=ts + 500_000,
            )
        )
    return out


def stored_ticks(vk: valkey.Valkey, symbol: str) -> list[tuple[str, Trade]]:
    return [(i.decode(), decode_fields(f)) for i, f in vk.xrange(keys.stream_key("ticks", symbol))]


def stored_candles(vk: valkey.Valkey, symbol: str, tf: str = "1m"):
    return [decode_fields(f) for _, f in vk.xrange(keys.stream_key(f"candles:{tf}", symbol))]


def session_seqs(vk: valkey.Valkey, symbols) -> list[tuple[str, int]]:
    pairs = []
    for symbol in symbols:
        for _, fields in vk.xrange(keys.stream_key("ticks", symbol)):
            pairs.append((fields[b"session"].decode(), int(fields[b"seq"])))
    return sorted(pairs)


def newest_tick_ns(vk: valkey.Valkey) -> int:
    """Event time of the newest stored tick of any symbol (what a stopping bridge closes by)."""
    newest = 0
    for raw in vk.scan_iter(match=keys.stream_key("ticks", "*"), _type="stream"):
        for _, fields in vk.xrange(raw):
            newest = max(newest, int(fields[b"ts_event"]))
    return newest


def assert_derived_match(
    vk: valkey.Valkey, symbol: str, timeframes=("1m",), *, ended: bool = True
) -> None:
    """Live candles equal recomputed ones; the chunks hold exactly the stored ticks.

    `ended`: the bridge finished at the end of its input (every forming candle closed), else
    it was stopped (candles complete by the newest tick's event time closed)."""
    ticks = stored_ticks(vk, symbol)
    recomputed = candles_from_ticks(
        ticks, timeframes, final=ended, complete_by_ns=None if ended else newest_tick_ns(vk)
    )
    for tf in timeframes:
        assert stored_candles(vk, symbol, tf) == [c for c in recomputed if c.timeframe == tf]
    chunks = vk.xrange(keys.history_key("ticks", symbol))
    from_chunks = []
    for _, fields in chunks:
        from_chunks += trades_of(decode_tick_columns(fields), symbol)
    assert from_chunks == [t for _, t in ticks][: len(from_chunks)]
    if chunks:
        assert chunks[-1][1][b"src"].decode() == ticks[len(from_chunks) - 1][0]


@dataclass
class Feed:
    """A publisher with a journal and a replay endpoint, as `qt feed` runs them."""

    pub: PubSink
    journal: JournalWriter
    replay: ReplayServer
    pub_uri: str
    replay_uri: str

    def send(self, events) -> list[tuple[bytes, bytes]]:
        frames = self.pub.sequencer.encode(events)
        self.pub.send_encoded(frames)
        return frames


@pytest.fixture
def feed(tmp_path: Path) -> Iterator[Feed]:
    journal = JournalWriter(tmp_path / "journal", fsync="none")
    pub_uri, replay_uri = tcp_endpoint(), tcp_endpoint()
    pub = PubSink(pub_uri, channel="ticks", session="testrun.ticks", journal=journal)
    replay = ReplayServer(tmp_path / "journal", replay_uri).start()
    yield Feed(pub, journal, replay, pub_uri, replay_uri)
    replay.close()
    pub.close()
    journal.close()


class Running:
    """A bridge running on a thread."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.result: BridgeStats | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.bridge.run()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 20.0) -> BridgeStats:
        self.bridge.stop()
        return self.wait(timeout)

    def wait(self, timeout: float = 20.0) -> BridgeStats:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the bridge did not stop"
        self.bridge.close()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@pytest.fixture
def messages() -> list[str]:
    return []


def config_for(url: str, tmp_path: Path, *inputs: str, **overrides) -> BridgeConfig:
    base = BridgeConfig(
        inputs=inputs,
        output=url,
        spill_dir=tmp_path / "spill",
        stats_interval_s=0.2,
        replay_timeout_s=1.0,
    )
    return replace(base, **overrides)


def jsonl(path: Path, events, *, session: str = "file1.ticks", extra: bytes = b"") -> Path:
    lines = []
    for seq, event in enumerate(events, 1):
        wire = event.to_dict()
        wire.update(session=session, seq=seq)
        lines.append(orjson.dumps(wire))
    path.write_bytes(b"\n".join(lines) + b"\n" + extra)
    return path


# --- files and exactly once -------------------------------------------------------------------


def test_a_file_is_stored_once_however_often_it_is_bridged(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path, messages: list[str]
) -> None:
    trades = make_trades(3000)
    path = jsonl(tmp_path / "in.jsonl", trades)
    config = config_for(valkey_url, tmp_path, str(path), timeframes=("1m", "5m"))
    first = Bridge(config, say=messages.append)
    stats = first.run()
    first.close()
    assert (stats.received, stats.written, stats.duplicates) == (3000, 3000, 0)
    assert stats.stopped_by == "end of input"
    again = Bridge(config, say=messages.append)
    stats2 = again.run()
    again.close()
    assert (stats2.written, stats2.duplicates) == (0, 3000)
    assert session_seqs(vk, ("WDOQ25", "WINV25")) == [("file1.ticks", s) for s in range(1, 3001)]
    for symbol in ("WDOQ25", "WINV25"):
        assert_derived_match(vk, symbol, ("1m", "5m"))
        assert stored_candles(vk, symbol)  # 111 s of ticks: a closed minute at least
        partial = vk.xrevrange(partial_key("1m", symbol), count=1)
        assert partial and partial[0][1][b"closed"] == b"0"
    assert vk.hgetall(watermark_key("default")) == {b"file1.ticks": b"3000"}


def test_a_restarted_bridge_continues_candles_and_chunks_exactly(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    # 530 ms apart: a chunk seals on its 10-minute span every ~1,130 trades.
    trades = make_trades(6000, symbols=("WDOQ25",), step_ms=530)
    whole = jsonl(tmp_path / "b.jsonl", trades, session="s.ticks")
    # stopped mid-minute (not the end of its input): the forming candle stays open and the
    # second run continues it
    for stop_after in (2500, None):
        bridge = Bridge(config_for(valkey_url, tmp_path, str(whole), stop_after=stop_after))
        bridge.run()
        bridge.close()
    assert vk.xlen(keys.stream_key("ticks", "WDOQ25")) == 6000
    assert_derived_match(vk, "WDOQ25")


def test_the_end_of_the_input_closes_every_forming_candle(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    trades = make_trades(150, symbols=("WDOQ25",), step_ms=1000)  # 09:00:00 … 09:02:29 UTC
    bridge = Bridge(config_for(valkey_url, tmp_path, str(jsonl(tmp_path / "a.jsonl", trades))))
    stats = bridge.run()
    bridge.close()
    assert stats.stopped_by == "end of input"
    candles = stored_candles(vk, "WDOQ25")
    # the last minute is a closed candle too: nothing more of it can come from this input
    assert [(c.ts_event - T0, c.trades, c.closed) for c in candles] == [  # type: ignore[attr-defined]
        (0, 60, True),
        (60 * NS_PER_S, 60, True),
        (120 * NS_PER_S, 30, True),
    ]
    assert stats.candles == 3
    assert_derived_match(vk, "WDOQ25")
    # its last forming snapshot stays in the partial stream; a restart resumes after the close
    partial = vk.xrevrange(partial_key("1m", "WDOQ25"), count=1)
    assert partial[0][1][b"trades"] == b"30" and partial[0][1][b"closed"] == b"0"


def test_a_stop_closes_the_candles_complete_by_event_time(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    trades = [
        Trade("WDOQ25", T0 + 10 * NS_PER_S, price=5000.0, quantity=1),
        Trade("WDOQ25", T0 + 50 * NS_PER_S, price=5001.0, quantity=1),
        Trade("WINV25", T0 + 90 * NS_PER_S, price=130_000.0, quantity=1),
    ]
    path = jsonl(tmp_path / "a.jsonl", trades)
    bridge = Bridge(config_for(valkey_url, tmp_path, str(path), stop_after=3))
    stats = bridge.run()
    bridge.close()
    assert stats.stopped_by == "stop-after"
    # WINV25 traded at 09:01:30, so WDOQ25's 09:00 candle is complete; WINV25's is still open
    assert [(c.ts_event - T0, c.trades) for c in stored_candles(vk, "WDOQ25")] == [(0, 2)]  # type: ignore[attr-defined]
    assert stored_candles(vk, "WINV25") == []
    partial = vk.xrevrange(partial_key("1m", "WINV25"), count=1)
    assert partial[0][1][b"closed"] == b"0"


def test_undecodable_lines_go_to_the_dead_letter_stream(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    bad = b'not json\n{"type": "tick", "symbol": "WDOQ25", "ts_event": 5, "price": -1}\n'
    path = jsonl(tmp_path / "in.jsonl", make_trades(10), extra=bad)
    bridge = Bridge(config_for(valkey_url, tmp_path, str(path)))
    stats = bridge.run()
    bridge.close()
    assert (stats.written, stats.deadletters) == (10, 2)
    letters = [f for _, f in vk.xrange(keys.stream_key("deadletter"))]
    assert [f[b"raw"] for f in letters] == bad.splitlines()
    assert b"not JSON" in letters[0][b"reason"]
    assert letters[1][b"field"] == b"price" and b"positive" in letters[1][b"reason"]


def test_symbol_filter_and_other_event_kinds(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    events = [
        *make_trades(20),
        BookUpdate(symbol="WDOQ25", ts_event=T0, side="bid", price=5000.0, quantity=3),
    ]
    path = jsonl(tmp_path / "in.jsonl", events)
    bridge = Bridge(config_for(valkey_url, tmp_path, str(path), symbols=("WDOQ25",)))
    stats = bridge.run()
    bridge.close()
    assert (stats.written, stats.filtered) == (11, 10)
    assert vk.exists(keys.stream_key("ticks", "WINV25")) == 0
    assert vk.xlen(keys.stream_key("book", "WDOQ25")) == 1


def test_bad_configuration_is_a_usage_error(valkey_url: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="writes to Valkey"):
        Bridge(config_for("tcp://127.0.0.1:5555", tmp_path, "-"))
    with pytest.raises(UsageError, match="no input"):
        Bridge(config_for(valkey_url, tmp_path))
    bridge = Bridge(config_for(valkey_url, tmp_path, valkey_url))
    with pytest.raises(UsageError, match="Valkey is where it writes"):
        bridge.run()
    bridge.close()


# --- ZeroMQ, gaps, replay ---------------------------------------------------------------------


def test_zeromq_events_are_stored_and_a_dropped_range_is_recovered_from_replay(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path, feed: Feed, messages: list[str]
) -> None:
    config = config_for(valkey_url, tmp_path, feed.pub_uri, replay=feed.replay_uri)
    running = Running(Bridge(config, say=messages.append))
    trades = make_trades(2000)
    # Before the subscription is up messages are lost (slow joiner): catch-up replays them.
    feed.send(trades[:500])
    eventually(lambda: vk.xlen(keys.stream_key("ticks", "WDOQ25")) >= 1, message="first write")
    frames = feed.pub.sequencer.encode(trades[500:2000])
    feed.pub.send_encoded(frames[:300] + frames[700:])  # 400 journaled but never sent
    total = lambda: sum(  # noqa: E731
        vk.xlen(keys.stream_key("ticks", s)) for s in ("WDOQ25", "WINV25")
    )
    eventually(lambda: total() == 2000, timeout=15, message="all 2000 stored")
    stats = running.finish()
    assert session_seqs(vk, ("WDOQ25", "WINV25")) == [("testrun.ticks", s) for s in range(1, 2001)]
    assert stats.gaps_recovered >= 1 and stats.gaps_lost == 0
    gaps = [f for _, f in vk.xrange(keys.stream_key("gaps"))]
    recovered = [g for g in gaps if g[b"from_seq"] == b"801"]
    assert recovered and recovered[0][b"to_seq"] == b"1200" and recovered[0][b"recovered"] == b"1"
    assert any("recovered seq 801..1200" in m for m in messages)
    for symbol in ("WDOQ25", "WINV25"):
        assert_derived_match(vk, symbol, ended=False)


def test_zeromq_inputs_share_one_receiving_thread_and_recover_their_gaps(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path, feed: Feed
) -> None:
    # The feed's channels (ticks, book) are polled by one thread: a thread per input woke per
    # message batch of its channel, each wake-up a context switch and a turn of the interpreter
    # lock. A range dropped on one input is recovered while the other keeps flowing.
    from collections import Counter

    from qt_cli.core.feed import channel_of
    from qt_cli.core.sources.sim import SimConfig, SimulatedMarket
    from qt_cli.core.store.writer import event_key

    book_uri = tcp_endpoint()
    book = PubSink(book_uri, channel="book", session="testrun.book", journal=feed.journal)
    sim = SimulatedMarket(
        SimConfig(seed=3, rate=0, max_events=4000, start_ns=1754658000 * NS_PER_S)
    )
    events: list = []
    while not sim.finished:
        events += sim.read(0.0)
    assert len(events) == 4000
    ticks = [e for e in events if channel_of(e) == "ticks"]
    books = [e for e in events if channel_of(e) == "book"]
    assert len(ticks) > 300 and len(books) > 1000
    config = config_for(valkey_url, tmp_path, feed.pub_uri, book_uri, replay=feed.replay_uri)
    running = Running(Bridge(config))
    try:
        readers = [t.name for t in threading.enumerate() if t.name.startswith("qt-bridge-in")]
        eventually(
            lambda: (
                [t.name for t in threading.enumerate() if t.name.startswith("qt-bridge-in")]
                == ["qt-bridge-in:zmq"]
            ),
            message=f"one receiving thread for both inputs (saw {readers})",
        )
        tick_frames = feed.pub.sequencer.encode(ticks)
        book_frames = book.sequencer.encode(books)
        half_t, half_b = len(tick_frames) // 2, len(book_frames) // 2
        at = [0]

        def heard() -> bool:  # what is sent before the subscriptions are up is recovered later
            feed.pub.send_encoded(tick_frames[at[0] : at[0] + 1])
            book.send_encoded(book_frames[at[0] : at[0] + 1])
            at[0] += 1
            return vk.xlen(event_key(ticks[0])) >= 1 and vk.xlen(event_key(books[0])) >= 1

        eventually(heard, message="the bridge hears both inputs")
        assert at[0] < half_t
        feed.pub.send_encoded(tick_frames[at[0] : half_t])
        book.send_encoded(book_frames[at[0] : half_b])
        feed.pub.send_encoded(tick_frames[half_t + 50 :])  # 50 ticks journaled, never sent
        book.send_encoded(book_frames[half_b : half_b + 100] + book_frames[half_b + 300 :])
        expected = Counter(event_key(e) for e in events if channel_of(e) in ("ticks", "book"))
        eventually(
            lambda: all(vk.xlen(key) == n for key, n in expected.items()),
            timeout=15,
            message="every tick and book event stored once",
        )
        stats = running.finish()
    finally:
        book.close()
    assert stats.gaps_recovered >= 2 and stats.gaps_lost == 0
    assert stats.written == len(ticks) + len(books)


def test_the_deriver_gathers_paced_batches_without_a_wake_up_for_each(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path, feed: Feed
) -> None:
    # A paced feed makes the writer store a small batch a millisecond or so; the deriver gathers
    # DERIVE_LINGER_S of them. A wake-up per stored batch cost a context switch and an
    # interpreter-lock turn each: only the first of a gathering (or a full one) wakes it.
    config = config_for(valkey_url, tmp_path, feed.pub_uri, replay=feed.replay_uri)
    running = Running(Bridge(config))
    trades = make_trades(400, symbols=("WDOQ25",), step_ms=500)
    sent = [0]

    def heard() -> bool:  # what is sent before the subscription is up is recovered later
        if sent[0] < 50:
            feed.send(trades[sent[0] : sent[0] + 1])
            sent[0] += 1
        return vk.xlen(keys.stream_key("ticks", "WDOQ25")) >= 1

    eventually(heard, message="the bridge hears the feed")
    for i in range(sent[0], 400, 5):
        feed.send(trades[i : i + 5])
        time.sleep(0.003)  # a paced feed: a small batch every few ms
    eventually(lambda: vk.xlen(keys.stream_key("ticks", "WDOQ25")) == 400, message="all stored")
    deriver = running.bridge.deriver
    eventually(lambda: deriver._queued == 0, message="derived")
    running.finish()
    assert deriver.pushes >= 30, deriver.pushes
    assert deriver.wakeups <= deriver.pushes / 3, (deriver.wakeups, deriver.pushes)
    assert_derived_match(vk, "WDOQ25", ended=False)


def test_an_unrecoverable_gap_is_recorded_and_reported_loudly(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path, messages: list[str]
) -> None:
    pub_uri = tcp_endpoint()
    pub = PubSink(pub_uri, channel="ticks", session="nojournal.ticks")  # no journal behind it
    dead_replay = tcp_endpoint()  # nobody answers there
    config = config_for(
        valkey_url, tmp_path, pub_uri, replay=dead_replay, catch_up=False, replay_timeout_s=0.3
    )
    warnings: list[str] = []
    running = Running(Bridge(config, say=messages.append, warn=warnings.append))
    key = keys.stream_key("ticks", "WDOQ25")
    try:

        def first_arrives() -> bool:
            pub.send(make_trades(1))
            return vk.exists(key) == 1

        eventually(first_arrives, message="subscription up")
        probes = pub.last_seq
        frames = pub.sequencer.encode(make_trades(99, symbols=("WDOQ25",)))
        pub.send_encoded(frames[:10] + frames[60:])  # seqs probes+11 .. probes+60 never sent
        eventually(lambda: running.bridge.stats.gaps_lost >= 1, message="gap given up")
        eventually(lambda: running.bridge.stats.written >= 49 + 1, message="rest written")
        stats = running.finish()
    finally:
        pub.close()
    assert stats.messages_lost == 50
    [gap] = [f for _, f in vk.xrange(keys.stream_key("gaps"))]
    assert gap[b"recovered"] == b"0" and gap[b"session"] == b"nojournal.ticks"
    assert (int(gap[b"from_seq"]), int(gap[b"to_seq"])) == (probes + 11, probes + 60)
    assert any("LOST seq" in w and "nojournal.ticks" in w for w in warnings)
    seqs = [s for _, s in session_seqs(vk, ("WDOQ25",))]
    first_seen = seqs[0]
    expected = [*range(first_seen, probes + 11), *range(probes + 61, probes + 100)]
    assert seqs == expected


def test_garbage_on_the_wire_goes_to_the_dead_letter_stream(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    address = tcp_endpoint()
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(address)
    config = config_for(valkey_url, tmp_path, address, replay=None, catch_up=False)
    running = Running(Bridge(config))
    try:

        def garbage_arrives() -> bool:
            pub.send_multipart([b"tick_WDOQ25", b"\xff\xfe garbage"])
            return vk.exists(keys.stream_key("deadletter")) == 1

        eventually(garbage_arrives, message="dead letter written")
        pub.send_multipart([b"tick_WDOQ25", b'{"type": "tick", "symbol": "WDOQ25"}'])
        eventually(lambda: running.bridge.stats.deadletters >= 2)
        stats = running.finish()
    finally:
        pub.close(linger=0)
    letters = [f for _, f in vk.xrange(keys.stream_key("deadletter"))]
    assert letters[0][b"raw"] == b"\xff\xfe garbage"
    assert letters[0][b"source"] == address.encode() and letters[0][b"topic"] == b"tick_WDOQ25"
    assert any(f[b"field"] in (b"ts_event", b"price") for f in letters)
    assert stats.deadletters == len(letters)


def send_until_stored(vk: valkey.Valkey, feed: Feed, trades: list[Trade]) -> int:
    """Send one trade at a time until the first is stored (the subscription is up); returns
    how many were sent. Those sent before the subscription was up are caught up from replay."""
    sent = 0

    def stored() -> bool:
        nonlocal sent
        feed.send(trades[sent : sent + 1])
        sent += 1
        return any(vk.exists(keys.stream_key("ticks", t.symbol)) for t in trades[:sent])

    eventually(stored, message="subscription up")
    return sent


def test_a_restarted_bridge_asks_for_what_it_missed(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path, feed: Feed, messages: list[str]
) -> None:
    config = config_for(valkey_url, tmp_path, feed.pub_uri, replay=feed.replay_uri)
    trades = make_trades(1500)
    running = Running(Bridge(config))
    sent = send_until_stored(vk, feed, trades)
    feed.send(trades[sent:500])
    key = keys.stream_key("ticks", "WDOQ25")
    eventually(lambda: vk.xlen(key) == 250, message="first 500 stored")
    running.finish()
    feed.send(trades[500:1000])  # nobody listens: only the journal has them
    running = Running(Bridge(config, say=messages.append))
    eventually(lambda: vk.xlen(key) == 500, message="the missed 500 caught up on start")
    feed.send(trades[1000:])
    eventually(lambda: vk.xlen(key) == 750)
    stats = running.finish()
    assert session_seqs(vk, ("WDOQ25", "WINV25")) == [("testrun.ticks", s) for s in range(1, 1501)]
    assert stats.duplicates == 0 and stats.gaps_lost == 0
    assert any("recovered seq 501..1000 of testrun.ticks" in m for m in messages)
    assert_derived_match(vk, "WDOQ25", ended=False)


def test_a_range_journal_retention_removed_is_recorded_as_an_unrecoverable_gap(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path, messages: list[str]
) -> None:
    journal = JournalWriter(tmp_path / "journal", fsync="none", segment_bytes=16 * 1024)
    pub_uri, replay_uri = tcp_endpoint(), tcp_endpoint()
    pub = PubSink(pub_uri, channel="ticks", session="testrun.ticks", journal=journal)
    replay = ReplayServer(tmp_path / "journal", replay_uri).start()
    feed = Feed(pub, journal, replay, pub_uri, replay_uri)
    warnings: list[str] = []
    try:
        config = config_for(valkey_url, tmp_path, pub_uri, replay=replay_uri)
        trades = make_trades(1500, symbols=("WDOQ25",))
        running = Running(Bridge(config))
        sent = send_until_stored(vk, feed, trades)
        feed.send(trades[sent:500])
        key = keys.stream_key("ticks", "WDOQ25")
        eventually(lambda: vk.xlen(key) == 500, message="first 500 stored")
        running.finish()
        for i in range(500, 1000, 20):  # nobody listens: only the journal has them
            feed.send(trades[i : i + 20])
        old = time.time() - 10 * 86_400
        for path in (tmp_path / "journal").glob("*/*"):
            os.utime(path, (old, old))
        report = trim_journal(tmp_path / "journal", 7 * 86_400 * NS_PER_S)
        kept = report.sessions[0].first_seq_after
        assert kept is not None and 501 < kept <= 1000  # the open segment stays
        running = Running(Bridge(config, say=messages.append, warn=warnings.append))
        eventually(lambda: vk.xlen(key) == 1000 - (kept - 501), message="the rest caught up")
        feed.send(trades[1000:])
        eventually(lambda: vk.xlen(key) == 1500 - (kept - 501), message="live again")
        stats = running.finish()
    finally:
        replay.close()
        pub.close()
        journal.close()
    assert stats.gaps_lost == 1 and stats.messages_lost == kept - 501
    lost = [f for _, f in vk.xrange(keys.stream_key("gaps")) if f[b"recovered"] == b"0"]
    assert [(int(g[b"from_seq"]), int(g[b"to_seq"])) for g in lost] == [(501, kept - 1)]
    assert b"by its retention" in lost[0][b"reason"]
    assert any(f"LOST seq 501..{kept - 1} of testrun.ticks" in w for w in warnings)
    seqs = [s for _, s in session_seqs(vk, ("WDOQ25",))]
    assert seqs == [*range(1, 501), *range(kept, 1501)]


# --- Valkey outages ---------------------------------------------------------------------------


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[ManagedValkey]:
    """A server of this test alone (stopped and restarted by it)."""
    managed = ManagedValkey(tmp_path / "own-valkey", port=free_port())
    managed.start()
    yield managed
    managed.stop()


def test_a_valkey_outage_is_buffered_spilled_and_drained_in_order(
    own_valkey: ManagedValkey, tmp_path: Path, feed: Feed, messages: list[str]
) -> None:
    url = own_valkey.status().url
    client = valkey.Valkey(host="127.0.0.1", port=own_valkey.status().port)
    config = config_for(url, tmp_path, feed.pub_uri, replay=feed.replay_uri, buffer_events=300)
    warnings: list[str] = []
    running = Running(Bridge(config, say=messages.append, warn=warnings.append))
    trades = make_trades(3000)
    key = keys.stream_key("ticks", "WDOQ25")
    try:
        sent = send_until_stored(client, feed, trades[:1000])
        feed.send(trades[sent:1000])
        eventually(lambda: client.xlen(key) == 500, message="first 1000 stored")
        own_valkey.stop()
        for start in range(1000, 3000, 250):
            feed.send(trades[start : start + 250])
        eventually(lambda: running.bridge.stats.received == 3000, message="received while down")
        eventually(lambda: running.bridge.queue.spilled_total > 0, message="spilled to disk")
        own_valkey.start()
        eventually(lambda: _xlen(client, key) == 1500, timeout=30, message="drained")
        stats = running.finish()
        assert stats.outages == 1 and stats.spilled > 0
        assert any("unreachable" in w for w in warnings)
        assert any("Valkey is back" in m for m in messages)
        assert session_seqs(client, ("WDOQ25", "WINV25")) == [
            ("testrun.ticks", s) for s in range(1, 3001)
        ]
        for symbol in ("WDOQ25", "WINV25"):
            assert_derived_match(client, symbol, ended=False)
        assert not config.spill_path.exists()
    finally:
        client.close()


def _xlen(client: valkey.Valkey, key: str) -> int:
    try:
        return client.xlen(key)
    except (valkey.ConnectionError, valkey.TimeoutError):
        return -1


def test_stopping_during_an_outage_keeps_the_buffer_for_the_next_run(
    own_valkey: ManagedValkey, tmp_path: Path, feed: Feed
) -> None:
    url = own_valkey.status().url
    client = valkey.Valkey(host="127.0.0.1", port=own_valkey.status().port)
    config = config_for(url, tmp_path, feed.pub_uri, replay=feed.replay_uri, buffer_events=100)
    warnings: list[str] = []
    running = Running(Bridge(config, warn=warnings.append))
    trades = make_trades(1200)
    key = keys.stream_key("ticks", "WDOQ25")
    try:
        sent = send_until_stored(client, feed, trades[:200])
        feed.send(trades[sent:200])
        eventually(lambda: client.xlen(key) == 100, message="first 200 stored")
        own_valkey.stop()
        feed.send(trades[200:])
        eventually(lambda: running.bridge.stats.received == 1200)
        stats = running.finish()
        assert stats.written == 200
        assert any("kept in" in w for w in warnings)
        assert config.spill_path.exists()
        own_valkey.start()
        # An input that adds nothing new (a trade already stored); an empty file is refused.
        again = jsonl(tmp_path / "again.jsonl", trades[:1], session="testrun.ticks")
        later = Bridge(replace(config, inputs=(str(again),)))
        later_stats = later.run()
        later.close()
        assert (later_stats.written, later_stats.duplicates) == (1000, 1)
        assert session_seqs(client, ("WDOQ25", "WINV25")) == [
            ("testrun.ticks", s) for s in range(1, 1201)
        ]
        assert_derived_match(client, "WDOQ25")
    finally:
        client.close()


def as_trades(items) -> list:
    """Trades read back from a spill file come as Rows (what the receiver makes of them)."""
    return [entry_trade(i[2]) if type(i) is tuple else i for i in items]


def test_spilled_rows_come_back_as_the_same_rows(tmp_path: Path) -> None:
    extras = [
        {},
        {"buyer_name": "XP, Inc.", "seller_name": "[BTG]"},
        {"history": True},
        {"buyer_name": "Ágora", "is_edit": True, "history": True},
    ]
    trades = [
        replace(t, session="s1.ticks", seq=i, **extra)
        for i, (t, extra) in enumerate(zip(make_trades(4), extras, strict=True), 1)
    ]
    rows = [trade_row(t, keys.stream_key("ticks", t.symbol)) for t in trades]
    for trade, row in zip(trades, rows, strict=True):  # the line is the trade's wire form
        assert orjson.loads(bridge_spill._item_to_line(row)) == {"e": trade.to_dict()}
    queue = SpillQueue(tmp_path / "q.spill", max_memory=1)
    queue.put(rows)
    assert queue.spilling
    assert queue.take(10, wait_s=0) + queue.take(10, wait_s=0) == rows


def test_spill_queue_keeps_order_across_memory_and_disk(tmp_path: Path) -> None:
    queue = SpillQueue(tmp_path / "q.spill", max_memory=5)
    events = make_trades(23)
    queue.put(events[:3])
    queue.put(events[3:9])  # 2 fit in memory, 4 spill
    assert queue.spilling and len(queue) == 9
    first = queue.take(4, wait_s=0)
    queue.put(events[9:12])  # still spilling: behind the spilled ones
    out = first + queue.take(100, wait_s=0)
    out += queue.take(100, wait_s=0)
    queue.put(events[12:23])
    while len(queue):
        out += queue.take(3, wait_s=0)
    assert as_trades(out) == events
    assert not (tmp_path / "q.spill").exists()


def test_spill_queue_wakes_a_lingering_writer_only_for_a_full_batch(tmp_path: Path) -> None:
    # A wake-up per put (a feed batch a millisecond per channel) cost the writer a context switch
    # and the interpreter lock each time: while it lingers, only a full batch wakes it early.
    queue = SpillQueue(tmp_path / "q.spill")
    events = make_trades(60)
    taken: list[list] = []
    lingering = threading.Event()

    def writer() -> None:
        lingering.set()
        taken.append(queue.take(50, wait_s=5, linger_s=5))

    thread = threading.Thread(target=writer)
    thread.start()
    lingering.wait()
    started = time.monotonic()
    queue.put(events[:1])  # wakes it: it waited for a first item
    eventually(lambda: queue._wake_at == 50)  # now lingering for a full batch
    for i in range(1, 49):
        queue.put(events[i : i + 1])
    assert queue.wakeups == 1 and not taken
    queue.put(events[49:60])  # a full batch: it takes 50 at once, long before the linger's end
    thread.join(timeout=10)
    assert time.monotonic() - started < 4.0
    assert as_trades(taken[0]) == events[:50] and queue.wakeups == 2
    assert as_trades(queue.take(50, wait_s=0)) == events[50:]
    assert queue._wake_at == 1


def test_spill_queue_persists_everything_for_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "q.spill"
    queue = SpillQueue(path, max_memory=4)
    events = make_trades(10)
    letter = DeadLetter("bad", b"\x00\xff raw", "tcp://x", "tick_X", "price", 7)
    gap = Gap("s.ticks", 3, 9, False, "lost", "tcp://r", 8)
    queue.put([*events[:6], letter, gap])
    batch = queue.take(3, wait_s=0)
    queue.push_front(batch)
    assert queue.persist() == 8
    queue.close()
    again = SpillQueue(path, max_memory=4)
    assert again.recovered_from_disk == 8
    assert as_trades(again.take(100, wait_s=0)) == [*events[:6], letter, gap]


# --- the fast decoding of trades ----------------------------------------------------------------


def test_stats_are_published_for_the_monitor(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    path = jsonl(tmp_path / "in.jsonl", make_trades(50), session="abcd1234.ticks")
    bridge = Bridge(config_for(valkey_url, tmp_path, str(path), name="unit"))
    bridge.run()
    bridge.close()
    stats_key = keys.stats_key("bridge", "unit")
    stats = {k.decode(): v.decode() for k, v in vk.hgetall(stats_key).items()}
    for name in (
        "stage", "name", "pid", "host", "started_ns", "updated_ns", "received", "written",
        "rate", "lag_ms", "duplicates", "batches", "gaps_detected", "gaps_recovered",
        "gaps_lost", "deadletters", "late", "buffered", "spilled",
    ):  # fmt: skip
        assert name in stats, name
    assert (stats["stage"], stats["name"], stats["written"]) == ("bridge", "unit", "50")
    assert 0 < vk.ttl(stats_key) <= 300
    feed_key = keys.stats_key("feed", "abcd1234")
    feed = {k.decode(): v.decode() for k, v in vk.hgetall(feed_key).items()}
    assert (feed["received"], feed["last_seq"]) == ("50", "50")
    assert {stats_key.encode(), feed_key.encode()} <= set(vk.smembers(keys.STAGES_SET))


def test_a_batch_sent_behind_another_is_stored_only_after_it(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    # Two batches are on the wire at once: each stream's call of the second requires the marks
    # the first sets, so it can never be stored ahead of a first that failed (and is retried).
    bridge = Bridge(config_for(valkey_url, tmp_path, str(tmp_path / "unused.jsonl")))
    trades = [replace(t, session="s1.ticks", seq=i) for i, t in enumerate(make_trades(40), 1)]
    rows = [trade_row(t, keys.stream_key("ticks", t.symbol)) for t in trades]
    first = bridge._prepare(rows[:20])
    second = bridge._prepare(rows[20:], after=first)
    assert {b.key: b.require for b in second.batches} == {
        keys.stream_key("ticks", "WDOQ25"): {"s1.ticks": 19},
        keys.stream_key("ticks", "WINV25"): {"s1.ticks": 20},
    }
    with pytest.raises(valkey.ResponseError) as refused:
        bridge.writer.append_many(second.batches)
    assert is_out_of_order(refused.value)
    assert session_seqs(vk, ("WDOQ25", "WINV25")) == []
    assert vk.hgetall(watermark_key(bridge.config.name)) == {}
    bridge._write_batch(first, look_ahead=False)
    bridge._write_batch(second, look_ahead=False)
    assert session_seqs(vk, ("WDOQ25", "WINV25")) == [("s1.ticks", i) for i in range(1, 41)]
    bridge._flush_watermark()  # moved only once the replies confirmed both stored
    assert vk.hgetall(watermark_key(bridge.config.name)) == {b"s1.ticks": b"40"}
    bridge.close()


def test_a_library_replaced_by_another_qt_version_is_reloaded_not_dead_lettered(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    path = jsonl(tmp_path / "in.jsonl", make_trades(300))
    bridge = Bridge(config_for(valkey_url, tmp_path, str(path)))  # loads its library
    vk.function_load(OTHER_QT_LIBRARY, replace=True)  # an older qt on the same server
    stats = bridge.run()
    bridge.close()
    assert (stats.written, stats.deadletters) == (300, 0)
    assert vk.xlen(keys.stream_key("deadletter")) == 0
    assert vk.fcall_ro("qt_version", 0) == LIBRARY_VERSION.encode()
    assert_derived_match(vk, "WDOQ25")


def test_cycles_are_collected_on_a_schedule_while_the_bridge_runs(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge_runner, "GC_EVERY_S", 0.0)  # collect on every supervisor pass
    collections: list[int] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    automatic: list[bool] = []
    path = jsonl(tmp_path / "in.jsonl", make_trades(2000))
    bridge = Bridge(config_for(valkey_url, tmp_path, str(path)))
    assert gc.isenabled()
    gc.callbacks.append(on_gc)
    try:
        stats = bridge.run(on_progress=lambda _: automatic.append(gc.isenabled()))
    finally:
        gc.callbacks.remove(on_gc)
        bridge.close()
    assert stats.written == 2000
    assert automatic and not any(automatic)  # no automatic collection while running
    assert 2 in collections  # the scheduled full collections ran
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the interpreter is as it was


# The last two cases seal on the span limit (10 minutes of event time), the first on the count.
@pytest.mark.parametrize(("n", "step_ms"), [(10_000, 3), (3_000, 400), (700, 1000)])
def test_the_bridge_chunker_makes_the_same_chunks_as_chunk_builder(n: int, step_ms: int) -> None:
    from qt_cli.core.bridge import ColumnChunker
    from qt_cli.core.chunks import ChunkBuilder

    trades = make_trades(n, symbols=("WDOQ25",), step_ms=step_ms)
    trades[n // 2] = replace(trades[n // 2], ts_event=trades[0].ts_event, buyer_name="late")
    reference, ours = ChunkBuilder(), ColumnChunker()
    expected, got = [], []
    for i, trade in enumerate(trades):
        entry_id = f"{T0 // 1_000_000 + i * step_ms}-0"
        late = not entry_id.startswith(f"{trade.ts_event // 1_000_000}-")
        expected.append(reference.add(trade, entry_id, late=late))
        got.append(ours.add(trade, entry_id, late=late))
    expected.append(reference.seal())
    got.append(ours.seal())
    assert [c.fields if c else None for c in got] == [c.fields if c else None for c in expected]
    assert sum(1 for c in got if c) >= 2


def test_a_server_out_of_memory_is_waited_out_not_dropped(
    own_valkey: ManagedValkey, tmp_path: Path
) -> None:
    status = own_valkey.status()
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    path = jsonl(tmp_path / "in.jsonl", make_trades(500))
    warnings: list[str] = []
    try:
        bridge = Bridge(config_for(status.url, tmp_path, str(path)), warn=warnings.append)
        client.config_set("maxmemory", "1")  # every write refused with OOM
        running = Running(bridge)
        eventually(lambda: bridge.stats.outages == 1, message="OOM treated as an outage")
        assert client.exists(keys.stream_key("ticks", "WDOQ25")) == 0
        client.config_set("maxmemory", "0")
        stats = running.wait()
        assert (stats.written, stats.deadletters) == (500, 0)
        assert any("OutOfMemoryError" in w for w in warnings)
        assert_derived_match(client, "WDOQ25")
    finally:
        client.config_set("maxmemory", "0")
        client.close()


def test_the_chunk_still_forming_is_stored_and_a_restart_after_a_crash_reads_it(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deriver stores the chunk it is still accumulating (here at every flush): exactly the
    stored ticks after the sealed chunk it follows. A bridge that died before sealing leaves it
    behind: queries read it, and the restarted bridge seals the same trades again."""
    monkeypatch.setattr(bridge_derive, "FORMING_INTERVAL_S", 0.0)
    # 530 ms apart: a chunk seals on its 10-minute span every ~1,130 trades.
    trades = make_trades(6000, symbols=("WDOQ25",), step_ms=530)
    whole = jsonl(tmp_path / "b.jsonl", trades, session="s.ticks")
    bridge = Bridge(config_for(valkey_url, tmp_path, str(whole), stop_after=2500))
    bridge.run()
    bridge.close()
    forming_key = keys.forming_chunk_key("ticks", "WDOQ25")
    stored = vk.hgetall(forming_key)
    ticks = stored_ticks(vk, "WDOQ25")
    ids = [i for i, _ in ticks]
    after, src = ids.index(stored[b"after"].decode()), ids.index(stored[b"src"].decode())
    assert after < src
    assert (
        trades_of(decode_tick_columns(stored), "WDOQ25")
        == [t for _, t in ticks][after + 1 : src + 1]
    )

    # As if it had died before sealing its last chunk: that chunk is the forming one.
    hist = keys.history_key("ticks", "WDOQ25")
    (last_id, last), (_, before) = vk.xrevrange(hist, count=2)
    vk.xdel(hist, last_id)
    vk.hset(keys.hwm_key(hist), "src", before[b"src"])
    vk.delete(forming_key)
    vk.hset(forming_key, mapping={**last, b"after": before[b"src"]})
    stats = query.Stats()
    frame = query.query(
        "ticks", symbols="WDOQ25", start=T0, end=T0 + 10**13, client=vk, stats=stats
    )
    assert frame["trade_id"].tolist() == [t.trade_id for t in trades[:2500]]
    assert stats.read.forming_rows == int(last[b"n"]) and stats.read.tail_entries == 0

    bridge = Bridge(config_for(valkey_url, tmp_path, str(whole)))
    bridge.run()
    bridge.close()
    assert vk.xlen(keys.stream_key("ticks", "WDOQ25")) == 6000
    assert_derived_match(vk, "WDOQ25")
    frame = query.query("ticks", symbols="WDOQ25", start=T0, end=T0 + 10**13, client=vk)
    assert frame["trade_id"].tolist() == [t.trade_id for t in trades]
