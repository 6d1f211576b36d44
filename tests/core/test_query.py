"""Range reads and queries against a real Valkey, seeded exactly as docs/contracts.md lays out."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

from qt_cli.core import keys, query
from qt_cli.core.chunks import (
    ChunkBuilder,
    SealedChunk,
    TickColumns,
    decode_tick_columns,
    encode_columns,
    encode_ticks,
    trades_of,
)
from qt_cli.core.errors import TimeParseError, UsageError
from qt_cli.core.events import (
    NS_PER_MS,
    NS_PER_S,
    BookUpdate,
    Candle,
    Daily,
    Event,
    FeatureVector,
    Prediction,
    Signal,
    State,
    TopOfBook,
    Trade,
)
from qt_cli.core.files import read_events
from qt_cli.core.store import reader
from tests.core.test_chunks import START_MS, make_trades

SYMBOL = "WDOQ25"
T0 = START_MS * NS_PER_MS  # 2025-08-08 09:00 -03:00


# --- seeding per docs/contracts.md -----------------------------------------------------------


def xadd_event(vk, key: str, event: Event, top: list[int]) -> bytes:
    """Per-event XADD with id `<event ms>-*`, clamped to the top with late=1 when older."""
    fields = event.to_fields()
    ms = event.ts_event // NS_PER_MS
    if top and ms < top[0]:
        ms = top[0]
        fields["late"] = "1"
    entry_id = vk.xadd(key, fields, id=f"{ms}-*")
    if not top:
        top.append(ms)
    top[0] = max(top[0], ms)
    return entry_id


def add_chunk(vk, symbol: str, chunk: SealedChunk) -> bytes:
    """History chunk with id `<t_min ms>-*`, clamped to the top and indexed when late."""
    hist = keys.history_key("ticks", symbol)
    last = vk.xrevrange(hist, count=1)
    top = reader.parse_id(last[0][0])[0] if last else -1
    if chunk.t_min_ms < top:
        entry_id = vk.xadd(hist, chunk.fields, id=f"{top}-*")
        vk.zadd(keys.late_index_key("ticks", symbol), {entry_id: chunk.t_min_ms})
        return entry_id
    return vk.xadd(hist, chunk.fields, id=f"{chunk.t_min_ms}-*")


def seed_ticks(
    vk,
    trades: list[Trade],
    *,
    chunked: int | None = None,
    max_events: int = 1000,
    symbol: str = SYMBOL,
    versions: tuple[int, ...] = (),
) -> list[bytes]:
    """Write trades per event; chunk the first `chunked` of them (all by default).

    `versions`: codec versions the chunks are written in, in turn (default: the current one)."""
    key = keys.stream_key("ticks", symbol)
    top: list[int] = []
    ids = [xadd_event(vk, key, t, top) for t in trades]
    count = len(trades) if chunked is None else chunked
    builder = ChunkBuilder(max_events=max_events)
    sealed = []
    for trade, entry_id in zip(trades[:count], ids[:count], strict=True):
        if chunk := builder.add(trade, entry_id):
            sealed.append(chunk)
    if chunk := builder.seal():
        sealed.append(chunk)
    for i, chunk in enumerate(sealed):
        if versions:
            fields = encode_columns(
                decode_tick_columns(chunk.fields), version=versions[i % len(versions)]
            )
            chunk = dataclasses.replace(chunk, fields={**fields, "src": chunk.fields["src"]})
        add_chunk(vk, symbol, chunk)
    return ids


def seed_events(vk, events: list[Event]) -> None:
    tops: dict[str, list[int]] = {}
    for event in events:
        key = keys.stream_key(event.stream_kind, event.symbol)
        xadd_event(vk, key, event, tops.setdefault(key, []))


def in_range(trades: list[Trade], from_ns: int, to_ns: int) -> list[Trade]:
    inside = [t for t in trades if from_ns <= t.ts_event <= to_ns]
    return sorted(inside, key=lambda t: t.ts_event)  # stable: stream order among equal times


def frame_trades(frame: pd.DataFrame, symbol: str = SYMBOL) -> list[Trade]:
    """Trades back from a ticks DataFrame (checks every column survived)."""
    out = []
    for row in frame.itertuples(index=False):
        out.append(
            Trade(
                symbol=str(row.symbol),
                ts_event=int(row.ts_event),
                price=float(row.price),
                quantity=int(row.quantity),
                volume=float(row.volume),
                trade_id=int(row.trade_id),
                buyer=int(row.buyer),
                seller=int(row.seller),
                trade_type=int(row.trade_type),
                aggressor=str(row.aggressor),
                is_edit=bool(row.is_edit),
                buyer_name=str(row.buyer_name),
                seller_name=str(row.seller_name),
                history=bool(row.history),
                ts_init=int(row.ts_init),
                session=str(row.session),
                seq=int(row.seq),
            )
        )
    return out


def with_time(trade: Trade, ts_event: int, **changes) -> Trade:
    values = {name: getattr(trade, name) for name, _, _ in Trade._spec}
    return Trade(**{**values, "ts_event": ts_event, **changes})


# --- ticks -----------------------------------------------------------------------------------


def test_ticks_from_chunks_and_tail_in_a_range(vk) -> None:
    trades = make_trades(5000)
    seed_ticks(vk, trades, chunked=4200)
    from_ns, to_ns = trades[300].ts_event, trades[4700].ts_event
    frame = query.query("ticks", symbols=SYMBOL, start=from_ns, end=to_ns, client=vk)
    assert frame_trades(frame) == in_range(trades, from_ns, to_ns)
    assert str(frame.index.tz) == "America/Sao_Paulo"
    assert frame.index.name == "time"
    assert frame.index[0] == pd.Timestamp(from_ns, unit="ns", tz="UTC")
    assert frame.index.is_monotonic_increasing
    assert frame["price"].dtype == np.float64
    assert frame["quantity"].dtype == np.int64
    assert frame["buyer"].dtype == np.int32
    assert frame["is_edit"].dtype == bool
    assert isinstance(frame["session"].dtype, pd.CategoricalDtype)
    assert isinstance(frame["aggressor"].dtype, pd.CategoricalDtype)
    assert set(frame["aggressor"].unique()) <= {"buy", "sell", "none"}


def test_ticks_with_text_times_and_another_zone(vk) -> None:
    trades = make_trades(3000)
    seed_ticks(vk, trades)
    frame = query.query(
        "ticks", symbols=[SYMBOL], start="2025-08-08T09:01", end="2025-08-08T09:02", client=vk
    )
    expected = in_range(trades, T0 + 60 * NS_PER_S, T0 + 120 * NS_PER_S)
    assert frame_trades(frame) == expected
    utc = query.query(
        "ticks",
        symbols=[SYMBOL],
        start="2025-08-08T12:01",
        end="2025-08-08T12:02",
        tz="UTC",
        client=vk,
    )
    assert frame_trades(utc) == expected
    assert str(utc.index.tz) == "UTC"


def test_ticks_only_per_event_entries_seed_compatible(vk) -> None:
    trades = make_trades(800)
    seed_ticks(vk, trades, chunked=0)
    assert not vk.exists(keys.history_key("ticks", SYMBOL))
    frame = query.query(
        "ticks", symbols=SYMBOL, start=trades[10].ts_event, end=trades[700].ts_event, client=vk
    )
    assert frame_trades(frame) == trades[10:701]


def test_seed_era_entries_without_ts_event_still_read(vk) -> None:
    key = keys.stream_key("ticks", SYMBOL)
    trades = make_trades(3)
    for t in trades:
        fields = t.to_fields()
        for name in ("ts_event", "ts_init", "session", "seq", "aggressor"):
            fields.pop(name)
        vk.xadd(key, fields, id=f"{t.ts_event // NS_PER_MS}-*")
    frame = query.query("ticks", symbols=SYMBOL, start=T0, end=T0 + 3600 * NS_PER_S, client=vk)
    assert frame["price"].tolist() == [t.price for t in trades]
    assert frame["ts_event"].tolist() == [t.ts_event for t in trades]
    assert frame["aggressor"].tolist() == [t.aggressor for t in trades]


def test_paging_across_page_boundaries_gives_the_same_rows(vk) -> None:
    trades = make_trades(3000)
    seed_ticks(vk, trades, chunked=2500, max_events=100)
    from_ns, to_ns = trades[5].ts_event, trades[2990].ts_event
    expected = in_range(trades, from_ns, to_ns)
    for page_chunks, page_entries in ((1, 1), (3, 7), (100, 10_000)):
        stats = reader.ReadStats()
        pages = list(
            reader.iter_ticks(
                vk,
                SYMBOL,
                from_ns,
                to_ns,
                page_chunks=page_chunks,
                page_entries=page_entries,
                stats=stats,
            )
        )
        merged = TickColumns.concat([p.columns for p in pages])
        assert trades_of(merged, SYMBOL) == expected, (page_chunks, page_entries)
        assert stats.tail_entries == 500
        if page_chunks == 1:
            assert len(pages) > 20
            marks = [p.watermark_ns for p in pages]
            assert marks == sorted(marks)
            for page, previous in zip(pages[1:], pages, strict=False):
                assert page.columns.arrays["ts_event"][0] >= previous.watermark_ns


def test_late_entries_merge_into_event_time_order(vk) -> None:
    trades = make_trades(2000)
    # corrections that arrive late: in the chunked part, in the tail, and one far older
    late_a = with_time(trades[100], trades[100].ts_event - 5 * NS_PER_S, trade_id=1, seq=0)
    late_b = with_time(trades[1500], trades[1500].ts_event - 2 * NS_PER_S, trade_id=2, seq=0)
    late_far = with_time(trades[0], T0 - 600 * NS_PER_S, trade_id=3, seq=0, history=True)
    stream = [*trades[:800], late_a, *trades[800:1800], late_far, late_b, *trades[1800:]]
    seed_ticks(vk, stream, chunked=1200, max_events=300)
    # the chunk holding late_a starts below the previous chunk: clamped and indexed
    assert vk.zcard(keys.late_index_key("ticks", SYMBOL)) == 1
    from_ns, to_ns = T0 - 3600 * NS_PER_S, trades[-1].ts_event
    frame = query.query("ticks", symbols=SYMBOL, start=from_ns, end=to_ns, client=vk)
    assert frame_trades(frame) == in_range(stream, from_ns, to_ns)
    assert frame["ts_event"].is_monotonic_increasing
    assert set(frame.loc[frame["late"], "trade_id"]) == {1, 2, 3}
    assert frame["trade_id"].iloc[0] == 3


def test_late_chunks_from_the_late_index(vk) -> None:
    trades = make_trades(1000)
    backfill = [
        with_time(t, t.ts_event - 7200 * NS_PER_S, history=True, session="h.history")
        for t in trades[:50]
    ]
    seed_ticks(vk, [*trades, *backfill], max_events=400)
    index = keys.late_index_key("ticks", SYMBOL)
    assert vk.zcard(index) == 1  # the backfill chunk: below the history stream's top
    frame = query.query(
        "ticks", symbols=SYMBOL, start=T0 - 7300 * NS_PER_S, end=T0 - 7000 * NS_PER_S, client=vk
    )
    assert frame_trades(frame) == backfill
    assert frame["late"].all()
    everything = query.query(
        "ticks", symbols=SYMBOL, start=T0 - 7300 * NS_PER_S, end=trades[-1].ts_event, client=vk
    )
    assert frame_trades(everything) == [*backfill, *trades]


def test_chunk_sealed_after_the_snapshot_is_not_read_twice(vk) -> None:
    trades = make_trades(900)
    ids = seed_ticks(vk, trades, max_events=300)
    # The reader's snapshot of the chunked position says: only the first chunk is covered.
    hist = keys.history_key("ticks", SYMBOL)
    vk.hset(keys.hwm_key(hist), "src", ids[299])
    assert reader.chunked_src(vk, SYMBOL) == reader.parse_id(ids[-1])  # the newest wins
    vk.delete(hist)
    builder = ChunkBuilder(max_events=300)
    chunks = [c for t, i in zip(trades, ids, strict=True) if (c := builder.add(t, i))]
    add_chunk(vk, SYMBOL, chunks[0])
    assert reader.chunked_src(vk, SYMBOL) == reader.parse_id(ids[299])
    add_chunk(vk, SYMBOL, chunks[1])  # sealed after the mark: its trades are read from the tail
    vk.hset(keys.hwm_key(hist), "src", ids[299])
    vk.xtrim(hist, minid="0-0")
    frame = query.query("ticks", symbols=SYMBOL, start=T0, end=trades[-1].ts_event, client=vk)
    assert frame_trades(frame) == trades


def test_several_symbols_merge_by_time(vk) -> None:
    a = make_trades(700, symbol="WDOQ25", seed=1)
    b = make_trades(700, symbol="WINQ25", seed=2)
    seed_ticks(vk, a, symbol="WDOQ25", max_events=200)
    seed_ticks(vk, b, symbol="WINQ25", max_events=200)
    end = max(a[-1].ts_event, b[-1].ts_event)
    frame = query.query("ticks", symbols=["WDOQ25", "WINQ25"], start=T0, end=end, client=vk)
    assert frame["ts_event"].is_monotonic_increasing
    assert len(frame) == 1400
    assert frame_trades(frame[frame["symbol"] == "WINQ25"], "WINQ25") == b
    everything = query.query("ticks", start=T0, end=end, client=vk)  # no --symbol: all of them
    assert len(everything) == 1400
    # the streaming path merges the same way
    out = io.BytesIO()
    request = query.make_request("ticks", start=T0, end=end)
    result = query.run(vk, request, fmt="jsonl", out=out)
    assert result.rows == 1400
    rows = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [r["ts_event"] for r in rows] == frame["ts_event"].tolist()


def test_empty_range_is_an_empty_typed_frame(vk) -> None:
    seed_ticks(vk, make_trades(100))
    frame = query.query(
        "ticks", symbols=SYMBOL, start=T0 - 7200 * NS_PER_S, end=T0 - 3600 * NS_PER_S, client=vk
    )
    assert frame.empty
    assert frame["price"].dtype == np.float64
    assert str(frame.index.tz) == "America/Sao_Paulo"
    out = io.BytesIO()
    request = query.make_request("ticks", symbols=[SYMBOL], start=T0 - 7200 * NS_PER_S, end=T0 - 1)
    assert query.run(vk, request, fmt="csv", out=out).rows == 0
    assert out.getvalue().decode().startswith('"type","symbol","timestamp"')


def test_reads_what_the_bridge_writer_stores(vk) -> None:
    """The real write path (qt_append / qt_chunk server functions) with late trades in it."""
    from qt_cli.core.store.writer import StreamWriter

    trades = make_trades(3000)
    late = with_time(
        trades[2000], trades[2000].ts_event - 30 * NS_PER_S, trade_id=9, seq=0, session=""
    )
    stream = [*trades[:2500], late, *trades[2500:]]
    writer = StreamWriter(vk)
    results = writer.append_events(stream)
    assert sum(r.late for r in results) == 1
    ids = [i for r in results for i in r.ids]
    builder = ChunkBuilder(max_events=1000)
    for trade, entry_id in zip(stream[:2800], ids[:2800], strict=True):
        if chunk := builder.add(trade, entry_id):
            writer.append_chunk(SYMBOL, chunk)
    frame = query.query("ticks", symbols=SYMBOL, start=T0, end=trades[-1].ts_event, client=vk)
    assert frame_trades(frame) == in_range(stream, T0, trades[-1].ts_event)
    assert frame.loc[frame["late"], "trade_id"].tolist() == [9]


# --- other kinds -----------------------------------------------------------------------------


def book_events() -> list[Event]:
    out: list[Event] = []
    for i in range(40):
        ts = T0 + i * 250 * NS_PER_MS
        if i % 4 == 3:
            out.append(
                TopOfBook(
                    symbol=SYMBOL,
                    ts_event=ts,
                    bid_price=5432.0,
                    bid_qty=10 + i,
                    ask_price=5432.5,
                    ask_qty=7,
                    seq=i + 1,
                    session="s.book",
                )
            )
        else:
            out.append(
                BookUpdate(
                    symbol=SYMBOL,
                    ts_event=ts,
                    side="bid" if i % 2 else "ask",
                    action="full" if i == 0 else "add",
                    position=i % 5,
                    price=5432.0 + (i % 3) * 0.5,
                    quantity=i + 1,
                    count=1,
                    levels=[[5432.0, 10.0, 2.0]] if i == 0 else [],
                    seq=i + 1,
                    session="s.book",
                )
            )
    return out


def test_book_mixes_updates_and_top_of_book(vk) -> None:
    events = book_events()
    seed_events(vk, events)
    frame = query.query("book", symbols=SYMBOL, start=T0, end=T0 + 60 * NS_PER_S, client=vk)
    assert len(frame) == 40
    assert frame["type"].tolist() == [e.TYPE for e in events]
    assert frame["levels"].iloc[0] == [[5432.0, 10.0, 2.0]]
    tob = frame[frame["type"] == "tob"]
    assert tob["bid_qty"].tolist() == [e.bid_qty for e in events if isinstance(e, TopOfBook)]
    assert tob["side"].isna().all()
    out = io.BytesIO()
    request = query.make_request("book", symbols=[SYMBOL], start=T0, end=T0 + 60 * NS_PER_S)
    query.run(vk, request, fmt="jsonl", out=out)
    rows = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert rows[0]["time"] == "2025-08-08T09:00:00.000-03:00"
    decoded = [type(e).from_dict(r) for e, r in zip(events, rows, strict=True)]
    assert decoded == events
    assert "side" not in rows[3]  # a tob row carries only its own fields


def test_candles_features_predictions_signals_daily_state(vk) -> None:
    candles = [
        Candle(
            symbol=SYMBOL,
            ts_event=T0 + i * 60 * NS_PER_S,
            open=5432.0 + i,
            high=5433.0 + i,
            low=5431.5 + i,
            close=5432.5 + i,
            volume=1e6,
            quantity=200,
            trades=50 + i,
            vwap=5432.25 + i,
        )
        for i in range(5)
    ]
    features = [
        FeatureVector(
            symbol=SYMBOL,
            ts_event=T0 + i * NS_PER_S,
            feature_set="basic11",
            catalog_hash="abc",
            features={"ret_1m": 0.001 * i, "vol_5m": math.nan if i == 0 else 0.2},
            reasons={"vol_5m": "warming up"} if i == 0 else {},
            warm=i > 0,
        )
        for i in range(4)
    ]
    predictions = [
        Prediction(
            symbol=SYMBOL,
            ts_event=T0 + NS_PER_S,
            model="m1",
            value=0.7,
            label="up",
            probabilities={"up": 0.7, "down": 0.3},
        )
    ]
    signals = [Signal(symbol=SYMBOL, ts_event=T0 + 2 * NS_PER_S, action="buy", confidence=0.7)]
    daily = [Daily(symbol=SYMBOL, ts_event=T0 + NS_PER_S, open=5430.0, close=5432.0, trades=10)]
    state = [State(symbol=SYMBOL, ts_event=T0 + NS_PER_S, code=2, text="connected")]
    seed_events(vk, [*candles, *features, *predictions, *signals, *daily, *state])
    end = T0 + 3600 * NS_PER_S

    def get(kind: str) -> pd.DataFrame:
        return query.query(kind, symbols=SYMBOL, start=T0, end=end, client=vk)

    frame = get("candles:1m")
    assert frame["close"].tolist() == [c.close for c in candles]
    assert frame["trades"].dtype == np.int64
    assert frame["closed"].dtype == bool
    assert frame.index[1] - frame.index[0] == pd.Timedelta(minutes=1)
    assert len(get("candles")) == 5  # candles means candles:1m

    frame = get("features")
    assert frame["ret_1m"].tolist() == pytest.approx([0.0, 0.001, 0.002, 0.003])
    assert math.isnan(frame["vol_5m"].iloc[0])
    assert frame["vol_5m"].iloc[1] == 0.2
    assert frame["reasons"].iloc[0] == {"vol_5m": "warming up"}
    assert frame["warm"].tolist() == [False, True, True, True]

    frame = get("predictions")
    assert frame["probabilities"].iloc[0] == {"up": 0.7, "down": 0.3}
    assert frame["label"].tolist() == ["up"]
    assert get("signals")["action"].tolist() == ["buy"]
    assert get("daily")["trades"].tolist() == [10]
    assert get("state")["text"].tolist() == ["connected"]


def test_gaps_and_dead_letters_by_receive_time(vk) -> None:
    vk.xadd(
        keys.stream_key("gaps"),
        {
            "session": "a.ticks",
            "from_seq": "10",
            "to_seq": "19",
            "recovered": "1",
            "reason": "seq jump",
            "endpoint": "tcp://127.0.0.1:5559",
            "ts_init": str(T0 + NS_PER_S),
        },
        id=f"{START_MS + 1000}-*",
    )
    vk.xadd(
        keys.stream_key("deadletter"),
        {
            "reason": "field 'price': price is NaN",
            "field": "price",
            "raw": b'{"type":"tick","price":null}',
            "source": "tcp://127.0.0.1:5555",
            "topic": "tick_WDOQ25",
            "ts_init": str(T0 + 2 * NS_PER_S),
        },
        id=f"{START_MS + 2000}-*",
    )
    gaps = query.query("gaps", start=T0, end=T0 + 60 * NS_PER_S, client=vk)
    assert gaps["from_seq"].tolist() == [10]
    assert gaps["recovered"].tolist() == [True]
    assert gaps.index[0] == pd.Timestamp(T0 + NS_PER_S, unit="ns", tz="UTC")
    dead = query.query("deadletter", start=T0, end=T0 + 60 * NS_PER_S, client=vk)
    assert dead["field"].tolist() == ["price"]
    assert dead["raw"].tolist() == ['{"type":"tick","price":null}']
    out = io.BytesIO()
    query.run(
        vk, query.make_request("deadletter", start=T0, end=T0 + 60 * NS_PER_S), fmt="csv", out=out
    )
    assert "price is NaN" in out.getvalue().decode()


# --- as of -----------------------------------------------------------------------------------


def test_as_of_gives_the_latest_entry_per_symbol(vk) -> None:
    a = make_trades(600, symbol="WDOQ25", seed=1)
    b = make_trades(50, symbol="WINQ25", seed=2)
    seed_ticks(vk, a, symbol="WDOQ25", max_events=100)
    seed_ticks(vk, b, symbol="WINQ25", max_events=100)
    at = a[400].ts_event
    frame = query.query("ticks", symbols=["WDOQ25", "WINQ25"], as_of=at, client=vk)
    assert len(frame) == 2
    by_symbol = {str(r.symbol): r for r in frame.itertuples()}
    assert by_symbol["WDOQ25"].trade_id == max(
        t.trade_id
        for t in a
        if t.ts_event <= at and t.ts_event == max(x.ts_event for x in a if x.ts_event <= at)
    )
    assert by_symbol["WINQ25"].ts_event == b[-1].ts_event  # long before: the window grows
    assert frame["ts_event"].is_monotonic_increasing
    before = query.query("ticks", symbols=["WDOQ25"], as_of=T0 - NS_PER_S, client=vk)
    assert before.empty


def test_as_of_features_far_back(vk) -> None:
    vectors = [
        FeatureVector(symbol=SYMBOL, ts_event=T0 + i * 3600 * NS_PER_S, features={"x": float(i)})
        for i in range(3)
    ]
    seed_events(vk, vectors)
    frame = query.query("features", symbols=SYMBOL, as_of=T0 + 2 * 3600 * NS_PER_S - 1, client=vk)
    assert frame["x"].tolist() == [1.0]
    out = io.BytesIO()
    request = query.make_request("features", symbols=[SYMBOL], as_of=T0 + 10 * 3600 * NS_PER_S)
    assert query.run(vk, request, fmt="jsonl", out=out).rows == 1
    assert orjson.loads(out.getvalue())["features"] == {"x": 2.0}


def test_as_of_finds_a_late_entry_stored_above_the_instant(vk) -> None:
    on_time = FeatureVector(symbol=SYMBOL, ts_event=T0 + 10 * NS_PER_S, features={"x": 1.0})
    late = FeatureVector(symbol=SYMBOL, ts_event=T0 + 5 * NS_PER_S, features={"x": 0.5})
    seed_events(vk, [on_time, late])  # late: id clamped to T0 + 10 s, late=1
    frame = query.query("features", symbols=SYMBOL, as_of=T0 + 7 * NS_PER_S, client=vk)
    assert frame["x"].tolist() == [0.5]
    assert frame["late"].tolist() == [True]


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_tick_files_replay_as_the_same_trades(vk, tmp_path: Path, fmt: str) -> None:
    trades = make_trades(1500)
    trades[7] = with_time(
        trades[7], trades[7].ts_event, history=True, buyer_name="", seller_name=""
    )
    seed_ticks(vk, trades, chunked=1200, max_events=500)
    request = query.make_request(
        "ticks", symbols=[SYMBOL], start=trades[0].ts_event, end=trades[-1].ts_event
    )
    path = tmp_path / f"ticks.{fmt}"
    with path.open("wb") as out:
        result = query.run(vk, request, fmt=fmt, out=out)
    assert result.rows == 1500
    assert read_events(path) == trades


def test_jsonl_rows_are_trade_to_dict(vk) -> None:
    trades = make_trades(20, names=False)
    seed_ticks(vk, trades)
    out = io.BytesIO()
    request = query.make_request("ticks", symbols=[SYMBOL], start=T0, end=trades[-1].ts_event)
    query.run(vk, request, fmt="jsonl", out=out)
    rows = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert rows == [t.to_dict() for t in trades]


def test_json_array_and_csv_shapes(vk) -> None:
    trades = make_trades(30)
    seed_ticks(vk, trades)
    request = query.make_request("ticks", symbols=[SYMBOL], start=T0, end=trades[-1].ts_event)
    out = io.BytesIO()
    query.run(vk, request, fmt="json", out=out)
    rows = orjson.loads(out.getvalue())
    assert [r["trade_id"] for r in rows] == [t.trade_id for t in trades]
    out = io.BytesIO()
    query.run(vk, request, fmt="csv", out=out)
    frame = pd.read_csv(io.BytesIO(out.getvalue()))
    assert frame["price"].tolist() == [t.price for t in trades]
    assert frame["is_edit"].tolist() == [0] * 30
    assert frame["timestamp"].iloc[0] == trades[0].to_dict()["timestamp"]
    empty = io.BytesIO()
    query.run(
        vk, query.make_request("ticks", symbols=[SYMBOL], start=1, end=2), fmt="json", out=empty
    )
    assert orjson.loads(empty.getvalue()) == []


def test_parquet_is_typed(vk, tmp_path: Path) -> None:
    seed_events(vk, book_events())
    path = tmp_path / "book.parquet"
    request = query.make_request("book", symbols=[SYMBOL], start=T0, end=T0 + 60 * NS_PER_S)
    with path.open("wb") as out:
        query.run(vk, request, fmt="parquet", out=out)
    table = pq.read_table(path)
    assert table.num_rows == 40
    assert str(table.schema.field("price").type) == "double"
    assert str(table.schema.field("quantity").type) == "int64"
    assert table.column("levels")[0].as_py() == "[[5432.0,10.0,2.0]]"


def test_table_preview_keeps_the_first_rows_and_counts_all(vk) -> None:
    trades = make_trades(500)
    seed_ticks(vk, trades, max_events=100)
    request = query.make_request("ticks", symbols=[SYMBOL], start=T0, end=trades[-1].ts_event)
    result = query.run(vk, request, fmt="table", limit=10)
    assert result.rows == 500
    header, body = query.table_rows(result)
    assert header[0] == "time (America/Sao_Paulo)"
    assert len(body) == 10
    assert body[0][0] == trades[0].to_dict()["timestamp"][:23].replace("T", " ")
    assert "price" in header


def test_progress_reaches_the_end(vk) -> None:
    trades = make_trades(2000)
    seed_ticks(vk, trades, max_events=100)
    seen: list[tuple[float, int]] = []
    request = query.make_request("ticks", symbols=[SYMBOL], start=T0, end=trades[-1].ts_event)
    query.run(vk, request, fmt="jsonl", out=io.BytesIO(), progress=lambda f, n: seen.append((f, n)))
    assert seen[-1] == (1.0, 2000)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_iso_array_matches_iso_local_across_dst() -> None:
    from qt_cli.core.events import EXCHANGE_TZ, iso_local

    stamps = np.array(
        [
            1_541_300_399_999 * NS_PER_MS,  # 2018-11-03 23:59:59.999 -03:00
            1_541_300_400_000 * NS_PER_MS,  # 2018-11-04 01:00:00.000 -02:00 (spring forward)
            1_550_372_400_123 * NS_PER_MS,  # 2019-02-17 00:00 -02:00 -> 23:00 -03:00
            T0 + 123_456_789,
        ],
        dtype=np.int64,
    )
    assert query.iso_array(stamps, EXCHANGE_TZ).to_pylist() == [iso_local(int(s)) for s in stamps]


# --- errors ----------------------------------------------------------------------------------


def test_request_errors() -> None:
    with pytest.raises(UsageError, match=r"--from \(2025-08-08T10:00:00.000-03:00\) is after --to"):
        query.make_request("ticks", start="2025-08-08T10:00", end="2025-08-08T09:00")
    with pytest.raises(UsageError, match="unknown kind 'trades': choose one of ticks, book"):
        query.make_request("trades")
    with pytest.raises(TimeParseError, match="not a time I can read"):
        query.make_request("ticks", start="last tuesday")
    with pytest.raises(UsageError, match="gaps are not per symbol"):
        query.make_request("gaps", symbols=["WDOQ25"])
    with pytest.raises(UsageError, match="--as-of reads one instant"):
        query.make_request("ticks", start="09:00", as_of="10:00")
    with pytest.raises(UsageError, match="is not a ticker"):
        query.make_request("ticks", symbols=["WDO Q25"])
    assert query.check_kind("candles:5m") == "candles:5m"


def test_unknown_symbol_names_the_stored_ones(vk) -> None:
    seed_ticks(vk, make_trades(10))
    with pytest.raises(UsageError, match=r"no ticks stored for WINQ25 \(stored: WDOQ25\)"):
        query.query("ticks", symbols="WINQ25", start=T0, end=T0 + NS_PER_S, client=vk)
    with pytest.raises(UsageError, match="nothing of this kind is stored yet"):
        query.query("book", symbols="WINQ25", start=T0, end=T0 + NS_PER_S, client=vk)


def test_default_range_is_today_until_now(vk) -> None:
    request = query.make_request("ticks", now_ns=T0 + 3600 * NS_PER_S)
    assert request.from_ns == T0 - 9 * 3600 * NS_PER_S  # midnight in São Paulo
    assert request.to_ns == T0 + 3600 * NS_PER_S
    assert query.query("ticks", client=vk).empty  # nothing stored: empty, no error


# --- live tailing ----------------------------------------------------------------------------


def test_stream_source_follows_new_entries(vk) -> None:
    old = make_trades(5)
    seed_events(vk, old)
    source = reader.StreamSource(vk, symbols=[SYMBOL])
    assert source.read(0.05) == []  # starts at the end: the old entries are not replayed
    new = make_trades(3, start_ms=START_MS + 3_600_000)
    seed_events(vk, new)
    key = keys.stream_key("ticks", SYMBOL)
    vk.xadd(key, {"type": "tick", "symbol": SYMBOL, "price": "-1"}, id="*")
    got: list[Event] = []
    for _ in range(20):
        got += source.read(0.1)
        if len(got) >= 3:
            break
    assert got == new
    assert source.rejected == 1
    assert "field 'ts_event' is missing" in source.problems[0]
    assert not source.finished


def test_stream_source_from_the_start_and_discovering_symbols(vk) -> None:
    seed_events(vk, make_trades(4))
    seed_events(vk, book_events()[:2])
    source = reader.StreamSource(vk, start="0")
    got = source.read(0.5)
    got += source.read(0.1)
    assert len(got) == 6
    assert {type(e) for e in got} == {Trade, BookUpdate}


def _mixed_trades() -> list[Trade]:
    """Two sessions, late trades (older than the top) and a price off the decimal grid."""
    trades = make_trades(6000, seed=5)
    trades += make_trades(300, start_ms=START_MS + 30_000, session="b.ticks", seed=6)
    trades[4000] = dataclasses.replace(trades[4000], price=math.pi)
    return trades


def test_query_reads_streams_mixing_both_codec_versions(vk) -> None:
    """A stream whose chunks were written by codec 1 and codec 2 in turn reads back as exactly
    the frame of the same trades all in codec 2 (and all in codec 1); late chunks included."""
    trades = _mixed_trades()
    start, end = T0 - NS_PER_S, T0 + 3600 * NS_PER_S
    frames = {}
    for versions in ((2,), (1,), (1, 2, 2, 1, 2)):
        vk.flushall()
        seed_ticks(vk, trades, chunked=6100, max_events=700, versions=versions)
        assert vk.zcard(keys.late_index_key("ticks", SYMBOL)) > 0
        stored = {f[b"v"] for _, f in vk.xrange(keys.history_key("ticks", SYMBOL))}
        assert stored == {str(v).encode() for v in versions}
        frames[versions] = query.query("ticks", symbols=SYMBOL, start=start, end=end, client=vk)
    pd.testing.assert_frame_equal(frames[(1, 2, 2, 1, 2)], frames[(2,)])
    pd.testing.assert_frame_equal(frames[(1,)], frames[(2,)])
    got = [t.to_fields() for t in frame_trades(frames[(1, 2, 2, 1, 2)])]
    assert got == [t.to_fields() for t in in_range(trades, start, end)]


def test_raw_tail_entries_read_like_parsed_ones(vk) -> None:
    """Per-event tick entries read unparsed (by field position, grouped by field layout) give
    the same columns as the dict path: entries with and without `late`, names, history trades,
    and a seed-era entry (no ts_event), which falls back to the dict path."""
    trades = make_trades(300)
    trades[7] = dataclasses.replace(trades[7], history=True)
    key = keys.stream_key("ticks", SYMBOL)
    top: list[int] = []
    for t in trades[:200]:
        xadd_event(vk, key, t, top)
    for t in reversed(trades[200:]):  # older than the top: clamped, `late` added
        xadd_event(vk, key, t, top)
    pages = list(reader.xrange_pages(vk, key, count=64, raw=True))
    parsed = list(reader.xrange_pages(vk, key, count=64))
    assert not isinstance(pages[0][0][1], dict)
    for raw_page, parsed_page in zip(pages, parsed, strict=True):
        got = reader.tick_columns_from_raw(raw_page)
        want = reader.tick_columns_from_entries(parsed_page)
        assert trades_of(got, SYMBOL) == trades_of(want, SYMBOL)
        np.testing.assert_array_equal(got.arrays["late"], want.arrays["late"])
    assert sum(reader.tick_columns_from_raw(p).arrays["late"].sum() for p in pages) == 99
    seed_era = trades[0].to_fields()
    seed_era.pop("ts_event")
    vk.xadd(key, seed_era, id="9999999999999-0")
    last = list(reader.xrange_pages(vk, key, "9999999999999-0", count=10, raw=True))[0]
    assert trades_of(reader.tick_columns_from_raw(last), SYMBOL)[0].price == trades[0].price


def test_whole_range_read_equals_streamed_pages(vk) -> None:
    """read_ticks (one page, the tail decoded into the chunks' arrays when it comes after them)
    gives exactly the rows and dictionaries of the streamed pages joined."""
    trades = make_trades(5000, seed=3)
    trades += make_trades(400, start_ms=START_MS + 10_000_000, session="c.ticks", names=False)
    for chunked in (4990, 5100):  # tail after every chunk; tail overlapping the chunks
        vk.flushall()
        seed_ticks(vk, trades, chunked=chunked, max_events=300)
        from_ns, to_ns = trades[3].ts_event, trades[-2].ts_event
        whole = reader.read_ticks(vk, SYMBOL, from_ns, to_ns)
        streamed = TickColumns.concat(
            [p.columns for p in reader.iter_ticks(vk, SYMBOL, from_ns, to_ns, page_chunks=4)]
        )
        assert whole.n == streamed.n == len(in_range(trades, from_ns, to_ns))
        for name in whole.arrays:
            np.testing.assert_array_equal(whole.arrays[name], streamed.arrays[name], err_msg=name)
        for name in ("session", "buyer_name", "seller_name"):
            assert whole.strings(name).tolist() == streamed.strings(name).tolist()


# --- the chunk still forming -----------------------------------------------------------------


def store_forming(vk, trades: list[Trade], ids: list[bytes], first: int, last: int, after) -> None:
    """What the bridge's deriver stores: trades[first..last] packed as a chunk, following the
    sealed chunk whose src is `after`."""
    late = [
        reader.parse_id(i)[0] > t.ts_event // NS_PER_MS for t, i in zip(trades, ids, strict=True)
    ]
    fields = encode_ticks(trades[first : last + 1], late=late[first : last + 1])
    fields.update(src=ids[last], after=after)
    vk.hset(keys.forming_chunk_key("ticks", SYMBOL), mapping=fields)


def read_all_ways(vk, from_ns: int, to_ns: int) -> tuple[pd.DataFrame, list[Trade], query.Stats]:
    """The DataFrame, the streamed pages (small pages, not held back) and the frame's stats."""
    stats = query.Stats()
    frame = query.query("ticks", symbols=SYMBOL, start=from_ns, end=to_ns, client=vk, stats=stats)
    pages = [p.columns for p in reader.iter_ticks(vk, SYMBOL, from_ns, to_ns, page_chunks=2)]
    return frame, trades_of(TickColumns.concat(pages), SYMBOL), stats


@pytest.mark.parametrize("late_in_forming", [False, True])
def test_the_forming_chunk_is_read_instead_of_its_entries(vk, late_in_forming: bool) -> None:
    """Chunks up to trade 4200, the forming chunk 4200..4799, per-event entries after it: every
    range gives exactly the frame of the same stream without the forming chunk, and only the
    entries after the forming chunk are read one by one."""
    trades = make_trades(5000)
    if late_in_forming:  # older than the stream's top: stored clamped, flagged late
        trades[4500] = with_time(trades[4500], trades[4100].ts_event)
    ids = seed_ticks(vk, trades, chunked=4200)
    store_forming(vk, trades, ids, 4200, 4799, after=ids[4199])
    forming = keys.forming_chunk_key("ticks", SYMBOL)
    saved = vk.hgetall(forming)
    ranges = [
        (trades[0].ts_event, trades[-1].ts_event),  # everything
        (trades[300].ts_event, trades[4700].ts_event),  # ends inside the forming chunk
        (trades[4400].ts_event, trades[4900].ts_event),  # starts inside it
        (trades[4850].ts_event, trades[4950].ts_event),  # after it
    ]
    for from_ns, to_ns in ranges:
        vk.hset(forming, mapping=saved)
        frame, streamed, stats = read_all_ways(vk, from_ns, to_ns)
        assert stats.read.problems == []
        vk.delete(forming)
        without, streamed_without, plain = read_all_ways(vk, from_ns, to_ns)
        # the same rows and values; category order follows the stored dictionaries' layout
        pd.testing.assert_frame_equal(frame, without, check_categorical=False)
        assert streamed == streamed_without == frame_trades(frame)
        assert frame_trades(frame) == in_range(trades, from_ns, to_ns)
        assert plain.read.forming_rows == 0
        if from_ns <= trades[4799].ts_event:
            assert stats.read.forming_rows == 600
            assert stats.read.tail_entries == 200  # only the entries after it
    vk.hset(forming, mapping=saved)
    frame, _, _ = read_all_ways(vk, trades[0].ts_event, trades[-1].ts_event)
    assert frame["late"].sum() == late_in_forming


def test_a_stale_forming_chunk_is_ignored(vk) -> None:
    """A forming chunk that does not follow the newest sealed chunk (one was sealed since, or it
    is from before a rebuild) is not read: its trades come from the chunks and the entries."""
    trades = make_trades(3000)
    ids = seed_ticks(vk, trades, chunked=2400)  # chunks of 1000: srcs 999, 1999, 2399
    # stored while trades 2000..2599 were forming; the chunk sealed since holds 2000..2399
    store_forming(vk, trades, ids, 2000, 2599, after=ids[1999])
    frame, streamed, stats = read_all_ways(vk, trades[0].ts_event, trades[-1].ts_event)
    assert frame_trades(frame) == streamed == trades
    assert stats.read.forming_rows == 0 and stats.read.tail_entries == 600
    # a forming chunk that follows the newest chunk but does not decode: read from the entries
    store_forming(vk, trades, ids, 2400, 2599, after=ids[2399])
    vk.hset(keys.forming_chunk_key("ticks", SYMBOL), "cols", b"not zstd")
    frame, streamed, stats = read_all_ways(vk, trades[0].ts_event, trades[-1].ts_event)
    assert frame_trades(frame) == streamed == trades
    assert len(stats.read.problems) == 1 and "forming" in stats.read.problems[0]
