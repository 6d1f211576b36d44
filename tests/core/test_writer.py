"""The exactly-once write path: the `qt` Valkey function library and StreamWriter / StreamSink."""

from __future__ import annotations

import math
import random
import struct

import pytest
import valkey

from qt_cli.core import keys
from qt_cli.core.chunks import ChunkBuilder
from qt_cli.core.events import (
    BookUpdate,
    Candle,
    FeatureVector,
    State,
    Trade,
    decode_fields,
)
from qt_cli.core.store.writer import (
    FCALL,
    LIBRARY_VERSION,
    SEP,
    StreamSink,
    StreamWriter,
    event_values,
    is_out_of_order,
    library_code,
    pack_json,
    pack_values,
    trade_values,
)
from tests.helpers import OTHER_QT_LIBRARY

BASE_NS = 1_754_654_400_000_000_000  # 2025-08-08 12:00:00 UTC
TICKS = keys.stream_key("ticks", "WDOQ25")


def trade(seq: int, *, ms: int | None = None, session: str = "run1.ticks", **extra) -> Trade:
    ts = BASE_NS + (seq if ms is None else ms) * 1_000_000 + 123
    price = 5000.0 + (seq % 7) * 0.5
    qty = 1 + seq % 3
    return Trade(
        symbol="WDOQ25",
        ts_event=ts,
        price=price,
        quantity=qty,
        volume=price * qty * 10,
        trade_id=seq,
        buyer=3,
        seller=72,
        trade_type=2 + seq % 2,
        aggressor="buy" if seq % 2 == 0 else "sell",
        ts_init=ts + 40_000,
        session=session,
        seq=seq,
        **extra,
    )


def append(writer: StreamWriter, events, key: str = TICKS):
    batch = writer.batch(key)
    for event in events:
        batch.add_event(event)
    return writer.append(batch)


def stored(vk: valkey.Valkey, key: str = TICKS) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(i.decode(), f) for i, f in vk.xrange(key)]


def as_text(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


@pytest.mark.parametrize(
    "event",
    [
        trade(1),
        trade(2, buyer_name="XP", seller_name="BTG"),
        trade(3, history=True),
        trade(4, buyer_name="XP", seller_name="", history=True, is_edit=True),
        Trade(symbol="WDOQ25", ts_event=BASE_NS, price=math.nan, volume=1e16, quantity=0),
        BookUpdate(
            symbol="WDOQ25",
            ts_event=BASE_NS,
            side="ask",
            action="full",
            levels=[[5000.5, 10, 2], [5001.0, 3, 1]],
            session="run1.book",
            seq=9,
        ),
        FeatureVector(
            symbol="WDOQ25", ts_event=BASE_NS, features={"a": 1.5, "b": math.nan}, warm=True
        ),
        State(symbol="*", ts_event=BASE_NS, code=3, text="connected"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_stored_fields_are_exactly_to_fields(vk: valkey.Valkey, event) -> None:
    writer = StreamWriter(vk)
    key = keys.stream_key(event.stream_kind, event.symbol)
    result = append(writer, [event], key)
    assert result.written == 1
    [(entry_id, fields)] = stored(vk, key)
    assert as_text(fields) == event.to_fields()
    assert entry_id.startswith(f"{event.ts_event // 1_000_000}-")
    names, values = event_values(event)
    assert list(names) == list(event.to_fields())
    assert len(values) == len(names)


def test_a_batch_mixing_schemas_stores_each_entry_as_its_fields(vk: valkey.Valkey) -> None:
    # Plain trades first, then other schemas: the entries already added get their schema index
    # when the second schema appears; type, symbol, timestamp_ms and recv_ns are never sent.
    writer = StreamWriter(vk)
    events = [
        trade(1),
        trade(2),
        trade(3, buyer_name="XP", seller_name="BTG"),
        trade(4, history=True),
        trade(5),
        trade(6, buyer_name="XP", seller_name="", history=True, is_edit=True),
    ]
    result = append(writer, events)
    assert (result.written, result.duplicates, result.late) == (6, 0, 0)
    assert [as_text(f) for _, f in stored(vk)] == [e.to_fields() for e in events]


def test_a_call_requiring_marks_not_reached_writes_nothing(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    append(writer, [trade(1), trade(2)])
    later = writer.batch(TICKS)
    later.add_event(trade(5))
    later.require = {"run1.ticks": 4}  # seq 3..4 were sent before and are not stored
    with pytest.raises(valkey.ResponseError) as refused:
        writer.append(later)
    assert is_out_of_order(refused.value)
    assert vk.xlen(TICKS) == 2
    assert writer.high_water(TICKS) == {"run1.ticks": 2}
    append(writer, [trade(3), trade(4)])
    result = writer.append(later)
    assert (result.written, result.duplicates) == (1, 0)
    assert [int(f[b"seq"]) for _, f in stored(vk)] == [1, 2, 3, 4, 5]


def test_a_batch_is_stored_once_however_often_it_is_sent(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    events = [trade(seq) for seq in range(1, 501)]
    first = append(writer, events)
    assert (first.written, first.duplicates, first.late) == (500, 0, 0)
    assert all(first.ids)
    again = append(writer, events)
    assert (again.written, again.duplicates) == (0, 500)
    assert again.ids == [""] * 500
    # An overlapping batch: only the new half is written.
    overlap = append(writer, [trade(seq) for seq in range(251, 751)])
    assert (overlap.written, overlap.duplicates) == (250, 250)
    entries = stored(vk)
    assert [int(f[b"seq"]) for _, f in entries] == list(range(1, 751))
    assert vk.hgetall(keys.hwm_key(TICKS)) == {b"run1.ticks": b"750"}


def test_ids_come_from_event_time(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    result = append(writer, [trade(1, ms=10), trade(2, ms=10), trade(3, ms=25)])
    base_ms = BASE_NS // 1_000_000
    assert result.ids == [f"{base_ms + 10}-0", f"{base_ms + 10}-1", f"{base_ms + 25}-0"]


def test_late_events_are_clamped_to_the_top_and_flagged(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    base_ms = BASE_NS // 1_000_000
    append(writer, [trade(1, ms=100), trade(2, ms=200)])
    result = append(writer, [trade(3, ms=150), trade(4, ms=50), trade(5, ms=300)])
    assert result.late == 2
    assert result.ids == [f"{base_ms + 200}-1", f"{base_ms + 200}-2", f"{base_ms + 300}-0"]
    entries = dict(stored(vk))
    late = entries[f"{base_ms + 200}-2"]
    assert late[b"late"] == b"1"
    assert int(late[b"ts_event"]) == BASE_NS + 50 * 1_000_000 + 123  # true time kept
    assert decode_fields(late) == trade(4, ms=50)
    assert b"late" not in entries[f"{base_ms + 300}-0"]


def test_late_against_a_trimmed_stream_uses_the_last_generated_id(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    base_ms = BASE_NS // 1_000_000
    append(writer, [trade(1, ms=100), trade(2, ms=200)])
    vk.xtrim(TICKS, minid=f"{base_ms + 1000}-0")  # empties the stream; its top id stays
    assert vk.xlen(TICKS) == 0
    result = append(writer, [trade(3, ms=150)])
    assert result.ids == [f"{base_ms + 200}-1"]
    assert result.late == 1


def test_high_water_marks_are_per_session(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    a = [trade(seq, session="a.ticks") for seq in (1, 2, 3)]
    b = [trade(seq, session="b.history") for seq in (1, 2)]
    result = append(writer, [a[0], b[0], a[1], b[1], a[2]])
    assert result.written == 5
    again = append(writer, [*a, *b, trade(3, session="b.history")])
    assert (again.written, again.duplicates) == (1, 5)
    assert vk.hgetall(keys.hwm_key(TICKS)) == {b"a.ticks": b"3", b"b.history": b"3"}


def test_entries_without_a_session_are_always_written(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    anonymous = trade(1, session="")
    append(writer, [anonymous])
    result = append(writer, [anonymous])
    assert result.written == 1
    assert vk.xlen(TICKS) == 2
    assert vk.exists(keys.hwm_key(TICKS)) == 0


def test_maxlen_trims_approximately_and_zero_keeps_everything(vk: valkey.Valkey) -> None:
    bounded = StreamWriter(vk, maxlen=100)
    for start in range(1, 2001, 500):
        append(bounded, [trade(seq) for seq in range(start, start + 500)])
    assert 100 <= vk.xlen(TICKS) < 400
    unbounded = StreamWriter(vk, maxlen=0)
    key = keys.stream_key("ticks", "WINV25")
    for start in range(1, 2001, 500):
        append(unbounded, [trade(seq) for seq in range(start, start + 500)], key)
    assert vk.xlen(key) == 2000


def test_the_library_is_reloaded_when_the_server_lost_it(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    append(writer, [trade(1)])
    vk.function_flush()
    result = append(writer, [trade(1), trade(2)])  # NOSCRIPT-like error -> reload -> retry
    assert (result.written, result.duplicates) == (1, 1)
    assert vk.fcall_ro("qt_version", 0) == LIBRARY_VERSION.encode()
    vk.function_flush()
    other = keys.stream_key("book", "WDOQ25")
    results = writer.append_many(
        [_batch(writer, TICKS, [trade(3)]), _batch(writer, other, [trade(1, session="x")])]
    )
    assert [r.written for r in results] == [1, 1]


def _batch(writer: StreamWriter, key: str, events):
    batch = writer.batch(key)
    for event in events:
        batch.add_event(event)
    return batch


def test_an_old_library_version_is_replaced(vk: valkey.Valkey) -> None:
    old = library_code().replace(f"local VERSION = '{LIBRARY_VERSION}'", "local VERSION = '0'")
    vk.function_load(old, replace=True)
    writer = StreamWriter(vk)
    writer.ensure_library()
    assert vk.fcall_ro("qt_version", 0) == LIBRARY_VERSION.encode()
    # Another qt version takes the server over while this writer runs: its refusal is not
    # taken for a bad batch; the writer reloads its own library and writes.
    vk.function_load(OTHER_QT_LIBRARY, replace=True)
    assert append(writer, [trade(1)]).written == 1
    vk.function_load(OTHER_QT_LIBRARY, replace=True)
    other = keys.stream_key("book", "WDOQ25")
    results = writer.append_many(
        [_batch(writer, TICKS, [trade(2)]), _batch(writer, other, [trade(1, session="x")])]
    )
    assert [r.written for r in results] == [1, 1]


def test_a_failing_write_keeps_marks_and_stream_consistent(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    vk.set(TICKS, "not a stream")
    with pytest.raises(valkey.ResponseError, match="WRONGTYPE"):
        append(writer, [trade(1)])
    assert vk.exists(keys.hwm_key(TICKS)) == 0


def test_append_many_writes_each_stream_in_one_round_trip(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    events = [
        trade(1),
        BookUpdate(symbol="WDOQ25", ts_event=BASE_NS, price=5000.0, session="r.book", seq=1),
        trade(2),
        Trade(symbol="WINV25", ts_event=BASE_NS, price=130000.0, session="r.ticks", seq=3),
    ]
    results = writer.append_events(events)
    assert {r.key: r.written for r in results} == {
        TICKS: 2,
        keys.stream_key("book", "WDOQ25"): 1,
        keys.stream_key("ticks", "WINV25"): 1,
    }


def test_chunks_are_appended_once_and_late_chunks_indexed(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    result = append(writer, [trade(seq, ms=seq * 10) for seq in range(1, 11)])
    builder = ChunkBuilder(max_events=5)
    sealed = [
        c
        for seq, entry_id in zip(range(1, 11), result.ids, strict=True)
        if (c := builder.add(trade(seq, ms=seq * 10), entry_id)) is not None
    ]
    assert len(sealed) == 2
    hist = keys.history_key("ticks", "WDOQ25")
    first = writer.append_chunk("WDOQ25", sealed[0])
    assert first.appended and not first.late
    assert writer.append_chunk("WDOQ25", sealed[0]).appended is False  # same src: skipped
    second = writer.append_chunk("WDOQ25", sealed[1])
    assert second.appended
    assert writer.append_chunk("WDOQ25", sealed[0]).appended is False  # older src: skipped
    assert vk.xlen(hist) == 2
    assert writer.last_chunk_src("WDOQ25") == result.ids[-1]
    last = vk.xrevrange(hist, count=1)[0][1]
    assert last[b"src"] == result.ids[-1].encode() and last[b"n"] == b"5"

    # A chunk of older event time after a newer one: clamped and listed in the late index.
    late_result = append(writer, [trade(seq, ms=1) for seq in range(11, 14)])
    late_builder = ChunkBuilder()
    for seq, entry_id in zip(range(11, 14), late_result.ids, strict=True):
        late_builder.add(trade(seq, ms=1), entry_id)
    late_chunk = late_builder.seal()
    assert late_chunk is not None
    outcome = writer.append_chunk("WDOQ25", late_chunk)
    assert outcome.appended and outcome.late
    index = vk.zrange(keys.late_index_key("ticks", "WDOQ25"), 0, -1, withscores=True)
    assert index == [(outcome.id.encode(), float(late_chunk.t_min_ms))]


def test_the_chunk_mark_survives_trimming_of_the_history_stream(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    result = append(writer, [trade(seq) for seq in range(1, 4)])
    builder = ChunkBuilder()
    for seq, entry_id in zip(range(1, 4), result.ids, strict=True):
        builder.add(trade(seq), entry_id)
    chunk = builder.seal()
    assert chunk is not None
    writer.append_chunk("WDOQ25", chunk)
    vk.delete(keys.history_key("ticks", "WDOQ25"))
    assert writer.append_chunk("WDOQ25", chunk).appended is False


def test_stream_sink_stores_events_exactly_once(vk: valkey.Valkey, valkey_url: str) -> None:
    from qt_cli.core import store

    sink = StreamSink(store.connect(valkey_url))
    events = [trade(seq) for seq in range(1, 101)]
    sink.send(events[:60])
    sink.send(events[40:])
    sink.flush()
    assert (sink.written, sink.duplicates) == (100, 20)
    sink.close()
    assert vk.xlen(TICKS) == 100


def test_open_sink_resolves_valkey_urls_to_a_stream_sink(
    vk: valkey.Valkey, valkey_url: str
) -> None:
    from qt_cli.core.io import open_sink

    sink = open_sink(valkey_url)
    assert isinstance(sink, StreamSink)
    sink.send([Candle(symbol="WDOQ25", ts_event=BASE_NS, open=1.0, close=2.0, seq=1)])
    sink.close()
    assert vk.xlen(keys.stream_key("candles:1m", "WDOQ25")) == 1


# --- the batch encoding: all values of a call in one argument, split by the function ----------


def test_values_are_packed_each_followed_by_the_separator() -> None:
    values = [1, 1754654400123, "tick", 5000.5, "", 3, 1e16, -0.0]
    sep, data = pack_values(values)
    assert sep == SEP
    assert data == b"1\x001754654400123\x00tick\x005000.5\x00\x003\x001e+16\x00-0.0\x00"
    assert data.split(sep)[:-1] == [str(v).encode() for v in values]


def _random_float(rng: random.Random) -> float:
    kind = rng.randrange(4)
    if kind == 0:  # any finite bit pattern: huge, tiny, subnormal
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        return value if math.isfinite(value) else 1.0
    if kind == 1:  # around the 1e-4 and 1e16 edges where repr switches to an exponent
        return (
            rng.choice((1.0, -1.0)) * rng.uniform(0.5, 2.0) * 10.0 ** rng.choice((-5, -4, 15, 16))
        )
    if kind == 2:  # prices in ticks of 0.5 and 0.01
        return rng.randrange(1, 2_000_000) * rng.choice((0.5, 0.01))
    return float(rng.randrange(-(10**6), 10**6))


@pytest.mark.parametrize("seed", range(5))
def test_packed_values_are_str_of_each_value(seed: int) -> None:
    """Every value as str() writes it; a float below 1e-4 may be spelled otherwise, same number."""
    rng = random.Random(seed)
    strings = [
        "tick",
        "",
        "a,b",
        'q"uote',
        "back\\slash",
        "tab\t",
        "ação",
        "null",
        "e-mini",
        "run1.ticks",
        "2025-08-08T09:00:00.000000-03:00",
    ]
    fast = 0
    for _ in range(2_000):
        values: list = []
        for _ in range(rng.randrange(1, 4)):
            kind = rng.randrange(3)
            if kind == 0:
                values.append(_random_float(rng))
            elif kind == 1:
                values.append(rng.randrange(-(2**63), 2**64) >> rng.randrange(64))
            else:
                values.append(rng.choice(strings))
        sep, data = pack_values(values)
        tokens = data.split(sep)[:-1]
        assert len(tokens) == len(values)
        for token, value in zip(tokens, values, strict=True):
            if type(value) is float and 0 < abs(value) < 1e-4:
                assert float(token) == value
            else:
                assert token == str(value).encode()
        fast += pack_json(values) is not None
    assert fast > 1_000  # the one-call path was taken, on values of every kind


def test_trade_values_take_the_one_call_path() -> None:
    values = [v for seq in range(1, 500) for v in trade_values(trade(seq))[1]]
    data = pack_json(values)
    assert data is not None
    assert data.split(SEP)[:-1] == [str(v).encode() for v in values]


def test_a_value_holding_nul_switches_to_a_byte_no_value_holds() -> None:
    values = [1, 10, "a\x00b", "ação", 2.5]
    sep, data = pack_values(values)
    assert sep == b"\xff"  # never part of UTF-8 text
    assert data.split(sep)[:-1] == [str(v).encode() for v in values]


@pytest.mark.parametrize(
    ("buyer_name", "seller_name", "session"),
    [
        ("Ágora CTVM", "Itaú 証券 📈", "run1.ticks"),
        ("has\x00nul", "tab\tnew\nline", "run1.ticks"),
        ("\xff\xfe", "sep\x00\x00", "sess\x00ion"),
        ("", "x", "ünï.ticks"),
        ("XP, Inc.", "[BTG]", 'a"b\\c'),
    ],
)
def test_values_with_separators_and_unicode_are_stored_exactly(
    vk: valkey.Valkey, buyer_name: str, seller_name: str, session: str
) -> None:
    writer = StreamWriter(vk)
    events = [
        trade(seq, buyer_name=buyer_name, seller_name=seller_name, session=session)
        for seq in (1, 2)
    ] + [trade(3, session=session), trade(4, ms=0, session=session)]
    result = append(writer, events)
    assert (result.written, result.duplicates, result.late) == (4, 0, 1)
    entries = stored(vk)
    assert [as_text(f) for _, f in entries] == [e.to_fields() for e in events[:3]] + [
        {**events[3].to_fields(), "late": "1"}
    ]
    assert [i for i, _ in entries] == result.ids
    assert writer.high_water(TICKS) == {session: 4}
    again = append(writer, events)
    assert (again.written, again.duplicates) == (0, 4)


def test_a_malformed_call_is_refused_before_anything_is_written(vk: valkey.Valkey) -> None:
    writer = StreamWriter(vk)
    writer.ensure_library()
    hwm = keys.hwm_key(TICKS)
    head = [0, "1", 0, 1, 2, "session", "", "seq", ""]
    with pytest.raises(valkey.ResponseError, match="separator"):
        vk.execute_command(FCALL, "qt_append", 2, TICKS, hwm, *head, 1, "", "10\x00s\x001\x00")
    with pytest.raises(valkey.ResponseError, match="ends inside an entry"):
        vk.execute_command(FCALL, "qt_append", 2, TICKS, hwm, *head, 1, SEP, "10\x00s\x00")
    bad = [0, "1", 0, 1, 1, "session", "?"]
    with pytest.raises(valkey.ResponseError, match="unknown source"):
        vk.execute_command(FCALL, "qt_append", 2, TICKS, hwm, *bad, 1, SEP, "10\x00")
    assert vk.xlen(TICKS) == 0
    assert vk.hgetall(hwm) == {}
