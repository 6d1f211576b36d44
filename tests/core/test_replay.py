"""Replay sources: Nelogica tick exports (vectorized), recorded event files, journals, pacing."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from qt_cli.core.errors import DataError, DecodeError, UsageError
from qt_cli.core.events import (
    EXCHANGE_TZ,
    NS_PER_S,
    BookUpdate,
    Event,
    State,
    Trade,
    decode_dict,
)
from qt_cli.core.files import write_events
from qt_cli.core.journal import JournalWriter, Sequencer
from qt_cli.core.sources.base import PACE_S
from qt_cli.core.sources.replay import (
    NELOGICA_COLUMNS,
    SUBSECOND_NOTE,
    JournalSource,
    NelogicaCsvSource,
    RecordedFileSource,
    check_read,
    detect_format,
    open_replay,
    trade_type_code,
)
from tests.helpers import eventually

HEADER = ",".join(NELOGICA_COLUMNS)
T0 = 1_754_654_400 * NS_PER_S  # 2025-08-08 12:00 UTC: files hold plausible times


def nelogica_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    """A Nelogica tick export with the given data lines."""
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def nelogica_row(
    second: int,
    number: int,
    price: float = 5000.5,
    qty: int = 1,
    kind: str = "AggressorBuyer",
    ticker: str = "WDOQ25",
    date: str = "20250808",
) -> str:
    hhmmss = f"{9 + second // 3600:02d}{second // 60 % 60:02d}{second % 60:02d}"
    return f"{ticker},{date},{hhmmss},{number},{price},{qty},{price * qty * 10},XP,BTG Pactual,{kind},N"


def drain(source: object, timeout_s: float = 0.1) -> list[Event]:
    out: list[Event] = []
    src = source  # the MarketSource protocol
    src.open()  # type: ignore[attr-defined]
    while not src.finished:  # type: ignore[attr-defined]
        out += src.read(timeout_s)  # type: ignore[attr-defined]
    src.close()  # type: ignore[attr-defined]
    return out


def without_identity(events: list[Event]) -> list[Event]:
    """The events with the storage identity a replay gives them (session/seq) cleared."""
    return [replace(e, session="", seq=0) for e in events]  # type: ignore[type-var]


def local_ns(*args: int) -> int:
    return int(datetime(*args, tzinfo=EXCHANGE_TZ).timestamp()) * NS_PER_S


def test_nelogica_rows_become_trades(tmp_path: Path) -> None:
    path = nelogica_csv(
        tmp_path / "wdo.csv",
        [
            nelogica_row(0, 1, 5000.5, 2, "AggressorBuyer"),
            nelogica_row(0, 2, 5001.0, 1, "Venda Agressão"),
            nelogica_row(0, 3, 5001.0, 3, "Leilão"),
            nelogica_row(0, 4, 5001.5, 1, "Direto"),
            nelogica_row(1, 5, 5002.0, 1, "AggressorSeller"),
        ],
    )
    assert detect_format(path) == "nelogica"
    source = open_replay(path, speed=0)
    assert isinstance(source, NelogicaCsvSource)
    trades = drain(source)
    assert all(isinstance(t, Trade) for t in trades)
    first = trades[0]
    assert isinstance(first, Trade)
    assert (first.symbol, first.price, first.quantity, first.volume) == (
        "WDOQ25",
        5000.5,
        2,
        100010.0,
    )
    assert (first.trade_id, first.buyer_name, first.seller_name) == (1, "XP", "BTG Pactual")
    assert (first.buyer, first.seller, first.is_edit, first.history) == (0, 0, False, False)
    assert [(t.trade_type, t.aggressor) for t in trades] == [  # type: ignore[attr-defined]
        (2, "buy"),
        (3, "sell"),
        (4, "none"),
        (1, "none"),
        (3, "sell"),
    ]
    # 09:00:00 B3 time; the four trades of that second at 0, 1/4, 2/4, 3/4 s, in file order
    nine = local_ns(2025, 8, 8, 9, 0, 0)
    assert [t.ts_event - nine for t in trades] == [
        0,
        250_000_000,
        500_000_000,
        750_000_000,
        NS_PER_S,
    ]
    assert first.ts_init == first.ts_event
    assert source.take_notices()[0] == SUBSECOND_NOTE


def test_dates_use_the_historical_b3_offset(tmp_path: Path) -> None:
    path = nelogica_csv(
        tmp_path / "old.csv",
        [nelogica_row(0, 1, date="20180115"), nelogica_row(0, 2, date="20250808")],
    )
    summer_2018, winter_2025 = drain(open_replay(path, speed=0))
    assert summer_2018.ts_event == local_ns(2018, 1, 15, 9, 0, 0)  # -02:00 (daylight saving)
    assert summer_2018.ts_event % (86_400 * NS_PER_S) == 11 * 3600 * NS_PER_S
    assert winter_2025.ts_event % (86_400 * NS_PER_S) == 12 * 3600 * NS_PER_S


def test_bad_lines_are_reported_by_line_number_and_the_rest_replays(tmp_path: Path) -> None:
    rows = [
        nelogica_row(0, 1),  # line 2
        nelogica_row(0, 2).replace(",5000.5,", ",abc,"),  # line 3: non-numeric price
        "",  # line 4: blank, skipped silently
        "WDOQ25,20250808,090001,4,5001.0",  # line 5: missing columns
        nelogica_row(2, 5).replace("20250808", "20251399"),  # line 6: not a date
        nelogica_row(3, 6).replace(",5000.5,", ",-5,"),  # line 7: negative price
        nelogica_row(4, 7),  # line 8
    ]
    path = nelogica_csv(tmp_path / "bad.csv", rows)
    source = NelogicaCsvSource(path)
    trades = drain(source)
    assert [t.trade_id for t in trades] == [1, 7]  # type: ignore[attr-defined]
    assert source.stats.rejected == 4
    assert source.stats.problems == [
        f"{path}:3: price 'abc' is not a number",
        f"{path}:5: expected 11 fields, got 5: 'WDOQ25,20250808,090001,4,5001.0'",
        f"{path}:6: date '20251399' is not YYYYMMDD",
        f"{path}:7: price '-5' must be positive",
    ]
    with pytest.raises(DataError, match=r"bad.csv:3: price 'abc' is not a number \(--strict"):
        drain(NelogicaCsvSource(path, strict=True))


def test_a_header_without_a_required_column_is_a_clear_error(tmp_path: Path) -> None:
    path = nelogica_csv(
        tmp_path / "short.csv",
        ["WDOQ25,20250808,090000,5000.5,1"],
        header="ticker,date,time,price,qty",
    )
    with pytest.raises(DataError, match=r"line 1: the header lacks column\(s\) trade_number, vol"):
        open_replay(path)


@pytest.mark.parametrize("missing", ["price", "ticker", "date"])
def test_a_nelogica_export_missing_a_column_names_it(tmp_path: Path, missing: str) -> None:
    columns = [c for c in NELOGICA_COLUMNS if c != missing]
    row = dict(zip(NELOGICA_COLUMNS, nelogica_row(0, 1).split(","), strict=True))
    path = nelogica_csv(
        tmp_path / "short.csv", [",".join(row[c] for c in columns)], header=",".join(columns)
    )
    assert detect_format(path) == "nelogica"
    with pytest.raises(
        DataError, match=rf"short.csv: line 1: the header lacks column\(s\) {missing} "
    ):
        open_replay(path)


def test_tickers_the_stream_keys_refuse_are_bad_lines(tmp_path: Path) -> None:
    rows = [
        nelogica_row(0, 1),
        nelogica_row(1, 2, ticker="a:b{c}"),  # line 3
        nelogica_row(2, 3, ticker="WDO Q25"),  # line 4
        nelogica_row(3, 4, ticker="WDO-Q_25.X"),
    ]
    path = nelogica_csv(tmp_path / "tickers.csv", rows)
    source = NelogicaCsvSource(path)
    trades = drain(source)
    assert [t.symbol for t in trades] == ["WDOQ25", "WDO-Q_25.X"]
    assert source.stats.problems == [
        f"{path}:3: ticker 'a:b{{c}}' is not a ticker (letters, digits, '.', '_', '-')",
        f"{path}:4: ticker 'WDO Q25' is not a ticker (letters, digits, '.', '_', '-')",
    ]
    assert [r.reason for r in source.take_rejects()] == source.stats.problems


def test_dates_before_2000_are_bad_lines(tmp_path: Path) -> None:
    rows = [nelogica_row(0, 1, date="19991231"), nelogica_row(0, 2)]
    path = nelogica_csv(tmp_path / "old.csv", rows)
    source = NelogicaCsvSource(path)
    assert [t.trade_id for t in drain(source)] == [2]  # type: ignore[attr-defined]
    assert source.stats.problems == [f"{path}:2: date '19991231' is before 2000 or after tomorrow"]


def test_nothing_valid_is_a_data_error_once_read(tmp_path: Path) -> None:
    tob = tmp_path / "tob.csv"
    tob.write_text(
        "type,symbol,bid_price,bid_qty\n" + "tob,WDOQ25,5000.5,3\n" * 50, encoding="utf-8"
    )
    source = open_replay(tob)
    assert drain(source) == []
    with pytest.raises(DataError) as info:
        check_read(source, tob)
    assert str(info.value) == (
        f"nothing valid in {tob}: all 50 records were skipped "
        f"(first: {tob}:2: field 'ts_event' is missing)"
    )
    header_only = nelogica_csv(tmp_path / "none.csv", [])
    source = open_replay(header_only)
    drain(source)
    with pytest.raises(DataError, match="nothing to replay in .*none.csv: it holds no records"):
        check_read(source, header_only)
    filtered = open_replay(nelogica_csv(tmp_path / "one.csv", [nelogica_row(0, 1)]), symbols=["X"])
    assert drain(filtered) == []
    check_read(filtered, "one.csv")  # valid rows, all filtered out: not an error


def test_time_unit_is_refused_for_a_nelogica_export(tmp_path: Path) -> None:
    path = nelogica_csv(tmp_path / "n.csv", [nelogica_row(0, 1)])
    with pytest.raises(UsageError, match="--time-unit applies to files with a ts_event column"):
        open_replay(path, time_unit="ms")


def test_seconds_split_across_blocks_keep_one_spacing(tmp_path: Path) -> None:
    rows = [nelogica_row(i // 10, i) for i in range(2_000)]  # 10 trades per second
    path = nelogica_csv(tmp_path / "many.csv", rows)
    small = drain(NelogicaCsvSource(path, block_bytes=4_096))
    whole = drain(NelogicaCsvSource(path))
    assert [t.ts_event for t in small] == [t.ts_event for t in whole]
    steps = {b.ts_event - a.ts_event for a, b in zip(whole, whole[1:], strict=False)}
    assert steps == {NS_PER_S // 10}


def test_semicolons_decimal_commas_and_unknown_types(tmp_path: Path) -> None:
    path = tmp_path / "br.csv"
    path.write_text(
        HEADER.replace(",", ";")
        + "\nWDOQ25;20250808;090000;1;5000,5;2;100010,0;XP;BTG;Compra Agressão;N\n"
        + "WDOQ25;20250808;090001;2;5001,0;1;50010,0;XP;BTG;Cancelado;N\n",
        encoding="utf-8",
    )
    source = NelogicaCsvSource(path)
    first, second = drain(source)
    assert (first.price, first.trade_type, first.aggressor) == (5000.5, 2, "buy")  # type: ignore[attr-defined]
    assert second.trade_type == 32  # type: ignore[attr-defined]
    notices = source.take_notices()
    assert "unknown trade_type values replayed as 32 (unknown): 'Cancelado' (1)" in notices


def test_symbol_filter(tmp_path: Path) -> None:
    path = nelogica_csv(
        tmp_path / "two.csv",
        [nelogica_row(0, 1, ticker="WDOQ25"), nelogica_row(0, 2, ticker="WINV25")],
    )
    (only,) = drain(open_replay(path, speed=0, symbols=("WINV25",)))
    assert only.symbol == "WINV25"


def test_trade_type_names() -> None:
    assert trade_type_code("AggressorBuyer") == 2
    assert trade_type_code(" compra agressao ") == 2
    assert trade_type_code("VENDA AGRESSÃO") == 3
    assert trade_type_code("Leilão") == 4
    assert trade_type_code("Direct") == 1
    assert trade_type_code("13") == 13
    assert trade_type_code("something") is None


def test_detect_format(tmp_path: Path) -> None:
    events = [Trade("WDOQ25", T0 + 10 * NS_PER_S, price=1.0)]
    for name in ("a.jsonl", "a.csv", "a.parquet"):
        write_events(tmp_path / name, events)
    assert detect_format(tmp_path / "a.jsonl") == "jsonl"
    assert detect_format(tmp_path / "a.csv") == "csv"
    assert detect_format(tmp_path / "a.parquet") == "parquet"
    (tmp_path / "x.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(UsageError, match="not a recognised file"):
        detect_format(tmp_path / "x.csv")
    (tmp_path / "empty.csv").write_text("")
    for name in ("empty.csv", "empty.jsonl", "empty.parquet"):
        (tmp_path / name).write_text("")
        with pytest.raises(UsageError, match=rf"^--in \S+{name} is empty \(nothing to replay\)"):
            detect_format(tmp_path / name, option="--in")
    with pytest.raises(UsageError, match="no such file"):
        detect_format(tmp_path / "missing.csv")
    with pytest.raises(UsageError, match="use --replay-journal"):
        detect_format(tmp_path)


@pytest.mark.parametrize("name", ["events.jsonl", "events.csv", "events.parquet"])
def test_recorded_files_replay_their_events(tmp_path: Path, name: str) -> None:
    events: list[Event] = [
        Trade("WDOQ25", T0 + 10 * NS_PER_S, price=5000.0, quantity=1),
        BookUpdate(
            "WDOQ25", T0 + 11 * NS_PER_S, side="bid", action="add", price=4999.5, quantity=2
        ),
        State("*", T0 + 12 * NS_PER_S, text="connected"),
        Trade("WINV25", T0 + 13 * NS_PER_S, price=130_000.0, quantity=1),
    ]
    write_events(tmp_path / name, events)
    source = open_replay(tmp_path / name, speed=0, symbols=("WDOQ25",))
    assert isinstance(source, RecordedFileSource)
    got = drain(source)
    assert without_identity(got) == events[:3]  # WINV25 filtered out; the state for "*" passes
    # no session in the file: identity from type, symbol, B3 date and the µs of that day
    # (T0 + 10 s is 09:00:10 of 2025-08-08 in B3 time: 32,410 s into the day)
    assert [(e.session, e.seq) for e in got] == [
        ("file:tick:WDOQ25:2025-08-08", 32_410 * 10**9),
        ("file:book:WDOQ25:2025-08-08", 32_411 * 10**9),
        ("file:state:*:2025-08-08", 32_412 * 10**9),
    ]
    done, total = source.progress
    assert done == total > 0


def test_speed_paces_by_event_time(tmp_path: Path) -> None:
    events = [Trade("WDOQ25", T0 + (10 + 3 * i) * NS_PER_S, price=5000.0) for i in range(2)]
    write_events(tmp_path / "slow.jsonl", events)
    source = open_replay(tmp_path / "slow.jsonl", speed=1.0)
    source.open()
    assert without_identity(source.read(0.05)) == events[:1]
    assert source.read(0.05) == []  # the next one is due 3 s later
    source.close()
    fast = open_replay(tmp_path / "slow.jsonl", speed=100.0)  # 3 s of events in 30 ms
    started = time.monotonic()
    assert without_identity(drain(fast, timeout_s=0.5)) == events
    assert time.monotonic() - started < 2.0


def test_a_fast_replay_leaves_in_batches_of_one_pace_interval(tmp_path: Path) -> None:
    # 20,000 events a second of event time, at speed 1: a read per due event (one each) cost more
    # than the events; what falls due within one PACE_S leaves together, about on time.
    n = 10_000
    events = [Trade("WDOQ25", T0 + i * 50_000, price=5000.0) for i in range(n)]
    write_events(tmp_path / "fast.jsonl", events)
    source = open_replay(tmp_path / "fast.jsonl", speed=1.0)
    source.open()
    sizes: list[int] = []
    late: list[float] = []
    got: list[Event] = []
    while not source.finished:
        batch = source.read(0.1)
        if batch:
            late.append(time.monotonic() - source._due(batch[0].ts_event))
            sizes.append(len(batch))
            got += batch
    source.close()
    assert without_identity(got) == events
    assert len(sizes) <= 0.5 / PACE_S * 1.2 + 5, (len(sizes), sizes[:20])
    assert sorted(sizes)[len(sizes) // 2] >= 10, sizes[:20]
    assert sorted(late)[len(late) // 2] < PACE_S + 0.002


def test_long_pauses_are_shortened(tmp_path: Path) -> None:
    events = [Trade("WDOQ25", T0 + t * NS_PER_S, price=5000.0) for t in (100, 100 + 15 * 3600)]
    write_events(tmp_path / "night.jsonl", events)
    source = RecordedFileSource(
        tmp_path / "night.jsonl", format="jsonl", speed=1.0, max_pause_s=0.1
    )
    source.open()
    got: list[Event] = []
    eventually(lambda: got.extend(source.read(0.05)) or len(got) == 2, timeout=5)
    source.close()
    assert without_identity(got) == events


def test_negative_speed_is_a_usage_error(tmp_path: Path) -> None:
    write_events(tmp_path / "e.jsonl", [Trade("WDOQ25", T0 + NS_PER_S, price=1.0)])
    with pytest.raises(UsageError, match="--speed"):
        open_replay(tmp_path / "e.jsonl", speed=-1)


def test_journal_source_replays_every_session(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path / "j")
    ticks, book = Sequencer("r.ticks", writer), Sequencer("r.book", writer)
    trade = Trade("WDOQ25", 10 * NS_PER_S, price=5000.0, ts_init=10 * NS_PER_S + 1)
    update = BookUpdate(
        "WDOQ25", 10 * NS_PER_S, side="ask", price=5000.5, ts_init=10 * NS_PER_S + 2
    )
    ticks.encode([trade])
    book.encode([update])
    ticks.encode([Trade("WDOQ25", 11 * NS_PER_S, price=5000.5, ts_init=11 * NS_PER_S)])
    writer.close()
    source = JournalSource(tmp_path / "j", speed=0)
    got = drain(source)
    assert [type(e).__name__ for e in got] == ["Trade", "BookUpdate", "Trade"]  # by ts_init
    assert [(e.session, e.seq) for e in got] == [("r.ticks", 1), ("r.book", 1), ("r.ticks", 2)]
    with pytest.raises(UsageError, match="no journal segments"):
        JournalSource(tmp_path)


# --- identities: a replayed record is stored under the same identity whatever file holds it ---


def test_nelogica_rows_are_identified_by_symbol_day_and_trade_number(tmp_path: Path) -> None:
    rows = [nelogica_row(i, 10 * (i + 1)) for i in range(4)]
    rows += [nelogica_row(0, 7, ticker="WINV25"), nelogica_row(1, 3, date="20250811")]
    first = drain(open_replay(nelogica_csv(tmp_path / "a.csv", rows), speed=0))
    assert [(e.session, e.seq) for e in first] == [
        ("nelogica:WDOQ25:2025-08-08", 10),
        ("nelogica:WDOQ25:2025-08-08", 20),
        ("nelogica:WDOQ25:2025-08-08", 30),
        ("nelogica:WDOQ25:2025-08-08", 40),
        ("nelogica:WINV25:2025-08-08", 7),
        ("nelogica:WDOQ25:2025-08-11", 3),
    ]
    # another file holding some of the same trades gives them the same identities
    overlap = drain(open_replay(nelogica_csv(tmp_path / "b.csv", rows[2:4]), speed=0))
    assert [(e.session, e.seq) for e in overlap] == [(e.session, e.seq) for e in first[2:4]]


def test_a_trade_number_going_back_gets_the_files_own_identity(tmp_path: Path) -> None:
    rows = [nelogica_row(0, 10), nelogica_row(1, 30), nelogica_row(2, 20), nelogica_row(3, 40)]
    path = nelogica_csv(tmp_path / "back.csv", rows)
    source = open_replay(path, speed=0)
    got = drain(source)
    digest = got[2].session.removeprefix("file:")
    assert len(digest) == 16 and int(digest, 16) >= 0
    # trade 20 comes after 30: a mark would skip it, so it is numbered by its place in the file
    assert [(e.session, e.seq) for e in got] == [
        ("nelogica:WDOQ25:2025-08-08", 10),
        ("nelogica:WDOQ25:2025-08-08", 30),
        (f"file:{digest}", 3),
        ("nelogica:WDOQ25:2025-08-08", 40),
    ]
    assert any("1 records go back in their day's order" in n for n in source.take_notices())
    again = drain(open_replay(path, speed=0))  # the same file: the same identities
    assert [(e.session, e.seq) for e in again] == [(e.session, e.seq) for e in got]


def test_recorded_events_keep_their_session_and_seq(tmp_path: Path) -> None:
    events = [
        Trade("WDOQ25", T0 + (10 + i) * NS_PER_S, price=5000.0, session="r.ticks", seq=i + 1)
        for i in range(3)
    ]
    write_events(tmp_path / "e.jsonl", events)
    assert drain(open_replay(tmp_path / "e.jsonl", speed=0)) == events


def test_a_journal_keeps_the_identity_of_what_it_published(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path / "j")
    sequencer = Sequencer("run2.ticks", writer, keep_identity=True)
    replayed = Trade("WDOQ25", 10 * NS_PER_S, price=5000.0, session="nelogica:WDOQ25:x", seq=70)
    live = Trade("WDOQ25", 11 * NS_PER_S, price=5000.5)
    (_, payload), _ = sequencer.encode([replayed, live])
    wire = orjson.loads(payload)
    assert (wire["origin"], wire["origin_seq"], wire["session"]) == (
        "nelogica:WDOQ25:x",
        70,
        "run2.ticks",
    )
    writer.close()
    got = drain(JournalSource(tmp_path / "j", speed=0))
    # the replayed record keeps its origin; the live one is identified by how it was published
    assert [(e.session, e.seq) for e in got] == [("nelogica:WDOQ25:x", 70), ("run2.ticks", 2)]


def test_decoding_a_wire_message_gives_the_origin_identity() -> None:
    wire = Trade("WDOQ25", NS_PER_S, price=1.0, session="run.ticks", seq=5).to_dict()
    assert decode_dict(wire).session == "run.ticks"
    event = decode_dict({**wire, "origin": "nelogica:WDOQ25:2025-08-08", "origin_seq": 90})
    assert (event.session, event.seq) == ("nelogica:WDOQ25:2025-08-08", 90)  # type: ignore[attr-defined]
    with pytest.raises(DecodeError, match="origin_seq"):
        decode_dict({**wire, "origin": "x", "origin_seq": 0})


def test_a_trade_seen_again_keeps_its_identity(tmp_path: Path) -> None:
    # two exports pasted into one file: 20 and 30 come again (the same trades), 25 is new
    rows = [nelogica_row(i, n) for i, n in enumerate((10, 20, 30, 20, 30, 25, 40))]
    source = open_replay(nelogica_csv(tmp_path / "twice.csv", rows), speed=0)
    got = drain(source)
    day = "nelogica:WDOQ25:2025-08-08"
    digest = got[5].session
    assert digest.startswith("file:")
    assert [(e.session, e.seq) for e in got] == [
        (day, 10), (day, 20), (day, 30), (day, 20), (day, 30), (digest, 6), (day, 40)
    ]  # fmt: skip
    assert source.out_of_identity_order == 1


def test_a_journal_holding_a_record_twice_keeps_its_identity(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path / "j")
    trade = Trade("WDOQ25", 10 * NS_PER_S, price=5000.0, ts_init=10 * NS_PER_S)
    for run in ("a", "b"):  # the same two records published by two replay runs
        Sequencer(f"{run}.ticks", writer, keep_identity=True).encode(
            [replace(trade, session="nelogica:WDOQ25:d", seq=s) for s in (5, 6)]
        )
    writer.close()
    source = JournalSource(tmp_path / "j", speed=0)
    got = drain(source)
    assert (
        sorted((e.session, e.seq) for e in got)
        == [("nelogica:WDOQ25:d", 5)] * 2 + [("nelogica:WDOQ25:d", 6)] * 2
    )
    assert source.out_of_identity_order == 0


def test_stamped_copies_for_event_sinks_carry_the_identity(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path / "j")
    sequencer = Sequencer("run3.ticks", writer, keep_identity=True)
    replayed = Trade("WDOQ25", 10 * NS_PER_S, price=5000.0, session="nelogica:WDOQ25:x", seq=70)
    live = Trade("WDOQ25", 11 * NS_PER_S, price=5000.5)
    stamped = sequencer.stamp([replayed, live])
    # files and Valkey (`--out valkey://`) store the identity; the journal keeps both
    assert [(e.session, e.seq) for e in stamped] == [("nelogica:WDOQ25:x", 70), ("run3.ticks", 2)]
    writer.close()
    got = drain(JournalSource(tmp_path / "j", speed=0))
    assert [(e.session, e.seq) for e in got] == [("nelogica:WDOQ25:x", 70), ("run3.ticks", 2)]
