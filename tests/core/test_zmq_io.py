"""PubSink, SubSource and the replay protocol over real ZeroMQ sockets on random ports."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from qt_cli.core.errors import UnavailableError
from qt_cli.core.events import NS_PER_S, BookUpdate, Event, Passed, State, Trade
from qt_cli.core.journal import JournalReader, JournalWriter, trim_journal
from qt_cli.core.zmq_io import (
    PROTOCOL,
    PubSink,
    ReplayClient,
    ReplayServer,
    ReplayTimeout,
    SubSource,
    missing_ranges,
)
from qt_cli.core.zmq_io.sub import TAIL_CHECK_EVERY_S, TailCheck
from tests.helpers import eventually, tcp_endpoint

T0 = 1_754_654_400 * NS_PER_S
SYM = "WDOQ25"


def trades(n: int, start: int = 0, symbol: str = SYM) -> list[Event]:
    return [
        Trade(symbol, T0 + (start + i) * 1000, price=5000.0 + (i % 7) * 0.5, quantity=1, trade_id=i)
        for i in range(n)
    ]


@dataclass
class Rig:
    pub: PubSink
    journal: JournalWriter
    server: ReplayServer
    pub_uri: str
    replay_uri: str


@pytest.fixture
def rig(tmp_path: Path, ctx: zmq.Context[Any]) -> Iterator[Rig]:
    journal = JournalWriter(tmp_path / "journal", fsync="none")
    pub_uri, replay_uri = tcp_endpoint(), tcp_endpoint()
    pub = PubSink(pub_uri, channel="ticks", session="run1.ticks", journal=journal, context=ctx)
    server = ReplayServer(tmp_path / "journal", replay_uri, context=ctx).start()
    yield Rig(pub, journal, server, pub_uri, replay_uri)
    server.close()
    pub.close()
    journal.close()


def connected(source: SubSource, pub: PubSink) -> None:
    """Publish probes until the subscriber sees one (slow joiner), then forget them."""

    def probe() -> bool:
        pub.send([State("*", T0, source="probe", text="hello")])
        return bool(source.read(0.05))

    eventually(probe, message="subscriber never connected")


def read_all(source: SubSource, until: int, session: str = "run1.ticks") -> list[Event]:
    got: list[Event] = []

    def done() -> bool:
        got.extend(source.read(0.05))
        return source.last_seqs().get(session, 0) >= until and not source.recovering

    eventually(done, message=f"{session} never reached seq {until}")
    return got


def test_pub_sink_sends_topic_and_stamped_payload(rig: Rig, ctx: zmq.Context[Any]) -> None:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"tick_")
    sub.connect(rig.pub_uri)

    def received() -> list[bytes] | None:
        rig.pub.send(trades(1))
        return sub.recv_multipart() if sub.poll(50) else None

    try:
        topic, payload = eventually(received)
    finally:
        sub.close(linger=0)
    assert topic == b"tick_WDOQ25"
    wire = orjson.loads(payload)
    assert wire["session"] == "run1.ticks" and wire["seq"] >= 1
    assert wire["type"] == "tick" and wire["price"] == 5000.0
    assert rig.pub.session == "run1.ticks" and rig.pub.last_seq >= wire["seq"]


def test_journal_holds_every_message_before_it_is_sent(rig: Rig) -> None:
    rig.pub.send(trades(25))
    reader = JournalReader(rig.journal.directory)
    assert [r.seq for r in reader.records("run1.ticks")] == list(range(1, 26))


def test_subscriber_recovers_a_gap_in_seq_order(rig: Rig) -> None:
    source = SubSource(rig.pub_uri, replay=rig.replay_uri, catch_up=False)
    try:
        connected(source, rig.pub)
        start = rig.pub.last_seq
        # messages published while nobody listens: journaled, never received live
        rig.pub.sequencer.encode(trades(30))
        rig.pub.send(trades(5, start=30))
        got = read_all(source, start + 35)
        assert [e.seq for e in got] == list(range(start + 1, start + 36))
        (gap,) = source.take_gaps()
        assert (gap.from_seq, gap.to_seq, gap.recovered) == (start + 1, start + 30, True)
        assert gap.reason.startswith(f"seq jumped from {start} to {start + 31}")
        assert gap.endpoint == rig.replay_uri
        assert source.stats.messages_recovered == 30 and source.stats.gaps_recovered == 1
    finally:
        source.close()


def test_late_joiner_catches_up_from_seq_one(rig: Rig) -> None:
    rig.pub.send(trades(40))
    source = SubSource(rig.pub_uri, replay=rig.replay_uri)  # catch_up is the default
    try:
        connected(source, rig.pub)
        got = read_all(source, 41)
        seqs = [e.seq for e in got]
        assert seqs[:41] == list(range(1, 42)) or seqs == list(range(1, len(seqs) + 1))
        gaps = source.take_gaps()
        assert gaps[0].from_seq == 1 and gaps[0].recovered
        assert gaps[0].reason.startswith("late join")
    finally:
        source.close()


def test_large_gaps_are_recovered_a_page_at_a_time(rig: Rig, tmp_path: Path) -> None:
    rig.server.page_messages = 7
    source = SubSource(rig.pub_uri, replay=rig.replay_uri, catch_up=False)
    try:
        connected(source, rig.pub)
        start = rig.pub.last_seq
        rig.pub.sequencer.encode(trades(50))
        rig.pub.send(trades(1, start=50))
        first = source.read(1.0)
        assert 0 < len(first) <= 7, "one page per read while recovering"
        got = first + read_all(source, start + 51)
        assert [e.seq for e in got] == list(range(start + 1, start + 52))
        assert all(g.recovered for g in source.take_gaps())
    finally:
        source.close()


def test_gap_without_a_replay_endpoint_is_lost(rig: Rig) -> None:
    source = SubSource(rig.pub_uri, replay=None, catch_up=False)
    try:
        connected(source, rig.pub)
        start = rig.pub.last_seq
        rig.pub.sequencer.encode(trades(3))
        rig.pub.send(trades(1, start=3))
        got = read_all(source, start + 4)
        assert [e.seq for e in got] == [start + 4]
        (gap,) = source.take_gaps()
        assert (gap.from_seq, gap.to_seq, gap.recovered) == (start + 1, start + 3, False)
        assert "no replay endpoint configured" in gap.reason
        assert source.stats.messages_lost == 3
    finally:
        source.close()


def test_gap_with_a_silent_replay_endpoint_is_lost_after_the_timeout(rig: Rig) -> None:
    nobody = tcp_endpoint()
    source = SubSource(rig.pub_uri, replay=nobody, replay_timeout_s=0.2, catch_up=False)
    try:
        connected(source, rig.pub)
        start = rig.pub.last_seq
        rig.pub.sequencer.encode(trades(2))
        rig.pub.send(trades(1, start=2))
        got = read_all(source, start + 3)
        assert [e.seq for e in got] == [start + 3]
        (gap,) = source.take_gaps()
        assert not gap.recovered
        assert f"replay endpoint {nobody} did not answer within 0.2 s" in gap.reason
        assert gap.to_fields()["recovered"] == "0"
    finally:
        source.close()


def test_gap_of_a_session_the_journal_lacks_is_lost(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    pub_uri, replay_uri = tcp_endpoint(), tcp_endpoint()
    pub = PubSink(pub_uri, channel="ticks", session="nojournal.ticks", context=ctx)
    server = ReplayServer(tmp_path / "empty", replay_uri, context=ctx).start()
    source = SubSource(pub_uri, replay=replay_uri, catch_up=False)
    try:
        connected(source, pub)
        start = pub.last_seq
        pub.sequencer.encode(trades(4))
        pub.send(trades(1, start=4))
        read_all(source, start + 5, session="nojournal.ticks")
        (gap,) = source.take_gaps()
        assert not gap.recovered and "does not hold this session" in gap.reason
    finally:
        source.close()
        server.close()
        pub.close()


def test_undecodable_messages_are_rejects_and_do_not_look_like_gaps(
    rig: Rig, ctx: zmq.Context[Any]
) -> None:
    raw_uri = tcp_endpoint()
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.bind(raw_uri)
    source = SubSource(raw_uri, replay=None, catch_up=False)
    try:
        bad_price = Trade(SYM, T0, price=5000.0).to_dict() | {"session": "x.ticks", "seq": 2}
        bad_price["price"] = -1.0
        good = Trade(SYM, T0, price=5000.0).to_dict() | {"session": "x.ticks", "seq": 3}
        messages = [
            [b"tick_WDOQ25", b"{not json"],
            [b"tick_WDOQ25", orjson.dumps([1, 2])],
            [b"tick_WDOQ25", orjson.dumps(bad_price)],
            [b"tick_WDOQ25", orjson.dumps(good)],
        ]
        first = Trade(SYM, T0, price=5000.0).to_dict() | {"session": "x.ticks", "seq": 1}

        def ready() -> bool:
            raw.send_multipart([b"tick_WDOQ25", orjson.dumps(first)])
            return bool(source.read(0.05))

        eventually(ready)
        for frames in messages:
            raw.send_multipart(frames)
        got: list[Event] = []
        eventually(lambda: got.extend(source.read(0.05)) or len(source._rejects) >= 3)
        eventually(lambda: got.extend(source.read(0.05)) or any(e.seq == 3 for e in got))
        rejects = source.take_rejects()
        assert [r.reason.split(":")[0] for r in rejects] == [
            "not JSON",
            "expected a JSON object, got list",
            "field 'price'",
        ]
        assert rejects[2].field == "price" and rejects[2].raw == orjson.dumps(bad_price)
        assert rejects[0].topic == "tick_WDOQ25" and rejects[0].source == raw_uri
        assert rejects[0].to_fields()["raw"] == b"{not json"
        assert source.take_gaps() == []  # seq 2 was received (though invalid): no gap
        assert [e.seq for e in got if e.seq > 1] == [3]
    finally:
        source.close()
        raw.close(linger=0)


def test_duplicates_and_known_seqs_are_dropped(ctx: zmq.Context[Any]) -> None:
    raw_uri = tcp_endpoint()
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.bind(raw_uri)
    source = SubSource(raw_uri, replay=None, known={"k.ticks": 5})

    def message(seq: int, session: str = "k.ticks") -> list[bytes]:
        wire = Trade(SYM, T0 + seq, price=5000.0).to_dict() | {"session": session, "seq": seq}
        return [b"tick_WDOQ25", orjson.dumps(wire)]

    try:
        probes = iter(range(1, 10_000))

        def ready() -> bool:
            raw.send_multipart(message(next(probes), "probe.ticks"))
            return bool(source.read(0.05))

        eventually(ready)
        for seq in (3, 4, 5, 6, 7, 7, 8):
            raw.send_multipart(message(seq))
        got: list[Event] = []
        eventually(lambda: got.extend(source.read(0.05)) or source.last_seqs()["k.ticks"] == 8)
        assert [e.seq for e in got if e.session == "k.ticks"] == [6, 7, 8]
        assert source.stats.duplicates == 4  # 3, 4, 5 (known) and the second 7
        assert [g for g in source.take_gaps() if g.session == "k.ticks"] == []
        source.set_known("k.ticks", 20)
        assert source.last_seqs()["k.ticks"] == 20
    finally:
        source.close()
        raw.close(linger=0)


def test_skipped_types_come_as_positions_and_malformed_ones_are_rejected(
    ctx: zmq.Context[Any],
) -> None:
    """With `symbols` and `skip` (the features stage): a top of book comes as `Passed`; a type
    or symbol that is not text, or a skipped message without a valid event time, is a rejected
    message (counted), never an exception out of `read`."""
    raw_uri = tcp_endpoint()
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.bind(raw_uri)
    source = SubSource(raw_uri, symbols=[SYM], replay=None, catch_up=False, skip=frozenset({"tob"}))
    tob = {"type": "tob", "symbol": SYM, "ts_event": T0, "bid_price": 5000.0, "ask_price": 5000.5}
    try:
        eventually(lambda: raw.send_multipart([b"x", orjson.dumps(tob)]) or source.read(0.05))
        source.stats.rejected = 0
        bad = [
            {**tob, "type": []},
            {**tob, "symbol": []},
            {**tob, "symbol": {"a": 1}},
            {**tob, "ts_event": -5},
            {**tob, "ts_event": "soon"},
        ]
        for message in [*bad, tob]:
            raw.send_multipart([b"book_" + SYM.encode(), orjson.dumps(message)])
        got: list[Any] = []
        eventually(lambda: got.extend(source.read(0.05)) or len(got) == 1)
        assert got == [Passed(SYM, "book", T0)]
        assert source.stats.rejected == len(bad)
    finally:
        source.close()
        raw.close(linger=0)


def test_symbol_filter_applies_after_seq_tracking(rig: Rig) -> None:
    source = SubSource(rig.pub_uri, symbols=("WINV25",), replay=rig.replay_uri, catch_up=False)
    try:

        def probe() -> bool:
            rig.pub.send(trades(1, symbol="WINV25"))
            return bool(source.read(0.05))

        eventually(probe)
        start = rig.pub.last_seq
        mixed = trades(3) + trades(2, symbol="WINV25") + [State("*", T0, text="connected")]
        rig.pub.send(mixed)
        got = read_all(source, start + 6)
        assert [e.symbol for e in got] == ["WINV25", "WINV25", "*"]
        assert source.take_gaps() == [] and source.stats.filtered >= 3
    finally:
        source.close()


def test_replay_client_pages_and_reports_missing(rig: Rig) -> None:
    rig.pub.send(trades(30))
    rig.server.page_messages = 8
    client = ReplayClient(rig.replay_uri, timeout_s=2.0)
    try:
        page = client.page("run1.ticks", 5, 40)
        assert [m[0] for m in page.messages] == list(range(5, 13)) and page.next == 13
        messages, missing = client.fetch("run1.ticks", 5, 40)
        assert [m[0] for m in messages] == list(range(5, 31))
        assert missing == [(31, 40)]
        assert orjson.loads(messages[0][2])["seq"] == 5 and messages[0][1] == b"tick_WDOQ25"
        info = client.info()
        assert info["run1.ticks"]["first_seq"] == 1 and info["run1.ticks"]["last_seq"] == 30
        assert client.fetch("unknown.ticks", 1, 3) == ([], [(1, 3)])
    finally:
        client.close()


def test_replay_server_answers_a_req_socket_and_bad_requests(
    rig: Rig, ctx: zmq.Context[Any]
) -> None:
    rig.pub.send(trades(3))
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(rig.replay_uri)
    try:
        _ask_req(req)
    finally:
        req.close(linger=0)


def _ask_req(req: zmq.Socket[Any]) -> None:
    req.send_multipart([PROTOCOL, b"7", b"range", b"run1.ticks", b"2", b"3"])
    assert req.poll(2000)
    frames = req.recv_multipart()
    assert frames[:2] == [PROTOCOL, b"7"]
    header = orjson.loads(frames[2])
    assert header["count"] == 2 and header["next"] is None and header["last"] == 3
    req.send_multipart([PROTOCOL, b"8", b"range", b"run1.ticks", b"x", b"3"])
    assert req.poll(2000)
    assert orjson.loads(req.recv_multipart()[2]) == {
        "status": "error",
        "error": "bad session or seq",
    }


def test_replay_client_times_out_when_nobody_answers() -> None:
    client = ReplayClient(tcp_endpoint(), timeout_s=0.1)
    try:
        with pytest.raises(ReplayTimeout, match="did not answer within 0.1 s"):
            client.page("s.ticks", 1, 2)
    finally:
        client.close()


def test_binding_a_busy_port_is_a_clear_error(rig: Rig, ctx: zmq.Context[Any]) -> None:
    with pytest.raises(UnavailableError, match=r"cannot bind ticks publisher .*in use"):
        PubSink(rig.pub_uri, channel="ticks", context=ctx)


def test_missing_ranges() -> None:
    assert missing_ranges(1, 10, [1, 2, 5, 6, 10]) == [(3, 4), (7, 9)]
    assert missing_ranges(1, 3, []) == [(1, 3)]
    assert missing_ranges(4, 6, [4, 5, 6]) == []


def test_book_and_nan_fields_survive_the_wire(rig: Rig) -> None:
    source = SubSource(rig.pub_uri, replay=rig.replay_uri, catch_up=False)
    try:
        connected(source, rig.pub)
        start = rig.pub.last_seq
        book = BookUpdate(SYM, T0, side="bid", action="full", levels=[[5000.0, 3, 1]])
        rig.pub.send([book])
        (got,) = read_all(source, start + 1)
        assert isinstance(got, BookUpdate) and got.levels == [[5000.0, 3, 1]]
        assert math.isnan(got.price)
    finally:
        source.close()


def test_only_range_requests_keep_a_lingering_feed_up(rig: Rig) -> None:
    """A subscriber polling `info` must not keep `qt feed --linger` from ever ending."""
    rig.pub.send(trades(3))
    client = ReplayClient(rig.replay_uri, timeout_s=2.0)
    try:
        client.info()
        assert rig.server.last_request_at == 0.0
        client.fetch("run1.ticks", 1, 3)
        assert rig.server.last_request_at > 0.0
    finally:
        client.close()


def test_check_tail_recovers_what_no_later_seq_reveals(rig: Rig, ctx: zmq.Context[Any]) -> None:
    source = SubSource(rig.pub_uri, replay=rig.replay_uri, context=ctx)
    try:
        connected(source, rig.pub)  # probes take the first seqs
        rig.pub.send(trades(5))
        last = rig.pub.sequencer.seq
        read_all(source, until=last)
        source.take_gaps()  # a probe missed while joining is recovered as a gap of its own
        # Journaled but never received (dropped by a high-water mark after the last message):
        for seq, trade in enumerate(trades(3), start=last + 1):
            payload = orjson.dumps({**trade.to_dict(), "session": "run1.ticks", "seq": seq})
            rig.journal.append("run1.ticks", seq, b"tick_WDOQ25", payload)
        rig.journal.commit()
        assert source.read(0.1) == []  # nothing on the wire reveals them
        assert source.check_tail() == 3
        tail = read_all(source, until=last + 3)
        assert [e.seq for e in tail] == [last + 1, last + 2, last + 3]
        gaps = source.take_gaps()
        assert [(g.from_seq, g.to_seq, g.recovered) for g in gaps] == [(last + 1, last + 3, True)]
        assert source.check_tail() == 0
    finally:
        source.close()


class SilentReplay:
    """A ROUTER where a feed's replay endpoint would be that takes requests and never answers
    (a feed that is down, seen from its subscribers): `ops()` drains the requests it got."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.uri = tcp_endpoint()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.uri)

    def ops(self) -> list[bytes]:
        got = []
        while self.sock.poll(100, zmq.POLLIN):
            frames = self.sock.recv_multipart()  # identity, protocol, request id, op, args
            got.append(frames[3])
        return got


@pytest.fixture
def silent_replay(ctx: zmq.Context[Any]) -> Iterator[SilentReplay]:
    replay = SilentReplay(ctx)
    yield replay
    replay.sock.close(linger=0)


def test_check_tail_asks_nothing_before_a_session_was_heard(
    rig: Rig, silent_replay: SilentReplay, ctx: zmq.Context[Any]
) -> None:
    replay = silent_replay
    source = SubSource(rig.pub_uri, replay=replay.uri, replay_timeout_s=0.2, context=ctx)
    try:
        assert source.check_tail() == 0  # nothing heard, nothing to compare: no wait either
        assert replay.ops() == []
        connected(source, rig.pub)
        replay.ops()  # a probe missed while joining was asked for as a gap
        with pytest.raises(UnavailableError, match="did not answer within 0.5 s"):
            source.check_tail()
        assert replay.ops() == [b"info"]
    finally:
        source.close()


def test_tail_checks_back_off_while_the_replay_endpoint_does_not_answer(
    rig: Rig, silent_replay: SilentReplay, ctx: zmq.Context[Any]
) -> None:
    replay = silent_replay
    source = SubSource(rig.pub_uri, replay=replay.uri, replay_timeout_s=0.2, context=ctx)
    now = [0.0]
    try:
        connected(source, rig.pub)
        replay.ops()
        tail = TailCheck(source, clock=lambda: now[0])
        asked = []
        for t, got_events in [
            (0.5, False),  # quiet for less than TAIL_IDLE_S
            (1.0, False),  # asks: no answer, next in 4 s
            (3.0, False),
            (5.0, False),  # asks: next in 8 s
            (12.0, False),
            (13.0, False),  # asks: next in 16 s
            (14.0, True),  # a message: the feed is back, every 2 s again
            (15.0, False),  # quiet for 1 s, 2 s after the last check: asks
        ]:
            now[0] = t
            tail.after_read(got_events)
            if replay.ops() == [b"info"]:
                asked.append(t)
        assert asked == [1.0, 5.0, 13.0, 15.0]
        assert tail.every_s == 2 * TAIL_CHECK_EVERY_S
    finally:
        source.close()


def test_a_range_removed_by_journal_retention_is_a_lost_gap_that_says_so(
    tmp_path: Path, ctx: zmq.Context[Any]
) -> None:
    journal_dir = tmp_path / "journal"
    journal = JournalWriter(journal_dir, fsync="none", segment_bytes=4096)
    pub_uri, replay_uri = tcp_endpoint(), tcp_endpoint()
    pub = PubSink(pub_uri, channel="ticks", session="run1.ticks", journal=journal, context=ctx)
    server = ReplayServer(journal_dir, replay_uri, context=ctx).start()
    client = ReplayClient(replay_uri, timeout_s=2.0)
    source: SubSource | None = None
    try:
        for start in range(0, 200, 10):  # nobody listens yet: only the journal has them
            pub.send(trades(10, start=start))  # in batches, so that segments roll
        assert client.page("run1.ticks", 1, 10).first == 1  # the server has read the journal
        old = time.time() - 10 * 86_400
        for path in journal_dir.glob("*/*"):
            os.utime(path, (old, old))
        report = trim_journal(journal_dir, 7 * 86_400 * NS_PER_S)
        kept = report.sessions[0].first_seq_after
        assert report.removed >= 2 and kept is not None and kept > 1  # the open segment stays
        page = client.page("run1.ticks", 1, 10)
        assert page.messages == [] and page.first == kept and page.last == 200
        assert client.fetch("run1.ticks", 1, kept) == (
            client.fetch("run1.ticks", kept, kept)[0],
            [(1, kept - 1)],
        )
        source = SubSource(pub_uri, replay=replay_uri)  # a late joiner: catches up from seq 1
        got: list[Event] = []

        def caught_up() -> bool:
            assert source is not None
            pub.send([State("*", T0, source="probe", text="hello")])
            got.extend(source.read(0.05))
            return source.last_seqs().get("run1.ticks", 0) > 200 and not source.recovering

        eventually(caught_up, message="never caught up")
        gaps = source.take_gaps()
        lost = [g for g in gaps if not g.recovered]
        assert [(g.from_seq, g.to_seq) for g in lost] == [(1, kept - 1)], gaps
        assert "removed from the journal behind" in lost[0].reason
        assert f"by its retention (it holds seq {kept} on)" in lost[0].reason
        assert [e.seq for e in got if e.seq <= 200] == list(range(kept, 201))
        assert source.stats.messages_lost == kept - 1
    finally:
        if source is not None:
            source.close()
        client.close()
        server.close()
        pub.close()
        journal.close()
