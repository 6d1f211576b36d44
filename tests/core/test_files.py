"""Event files: JSON lines, CSV and Parquet round-trip every market event; bad rows are reported."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from qt_cli.core.errors import DataError, UsageError
from qt_cli.core.events import NS_PER_S, BookUpdate, Daily, Event, State, TopOfBook, Trade
from qt_cli.core.files import (
    CsvSink,
    JsonLinesSource,
    columns_for,
    open_file_source,
    read_events,
    type_columns,
    write_events,
)
from qt_cli.core.io import open_sink, open_source

T0 = 1_754_654_400 * NS_PER_S


def sample() -> list[Event]:
    return [
        Trade(
            "WDOQ25",
            T0,
            price=5000.5,
            quantity=2,
            volume=100_010.0,
            trade_id=7,
            buyer=3,
            seller=72,
            trade_type=2,
            aggressor="buy",
            buyer_name="XP",
            seller_name="BTG Pactual",
            ts_init=T0 + 5,
            session="r.ticks",
            seq=1,
        ),
        Trade("WDOQ25", T0 + 1, price=5001.0, quantity=1, history=True, is_edit=True),
        BookUpdate("WDOQ25", T0 + 2, side="ask", action="full", levels=[[5001.0, 4.0, 2.0]], seq=3),
        BookUpdate("WDOQ25", T0 + 3, side="bid", action="delete", position=2),
        TopOfBook("WDOQ25", T0 + 4, bid_price=5000.5, bid_qty=3),
        State("*", T0 + 5, source="feed", code=4, text="market connected"),
        Daily("WDOQ25", T0 + 6, open=4990.0, high=5010.0, low=4980.0, close=5001.0, trades=9),
    ]


def same(a: Event, b: Event) -> bool:
    """Equal, with NaN == NaN."""
    if type(a) is not type(b):
        return False
    for name in a.to_dict():
        x, y = a.to_dict()[name], b.to_dict()[name]
        if isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_market_event_round_trips(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"events{suffix}"
    assert write_events(path, sample()) == 7
    back = read_events(path)
    assert len(back) == 7
    for original, read in zip(sample(), back, strict=True):
        assert same(original, read), (original, read)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_the_endpoint_grammar_opens_file_sinks_and_sources(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    sink = open_sink(str(path))
    sink.send(sample()[:5])  # CSV and Parquet take their columns from the first batch's types
    sink.send(sample()[5:])
    sink.flush()
    sink.close()
    source = open_source(str(path))
    got: list[Event] = []
    while not source.finished:
        got += source.read(0.1)
    source.close()
    assert len(got) == 7 and same(got[0], sample()[0])


def test_csv_columns_are_the_wire_fields_with_type_first(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    write_events(path, sample()[:2])
    header = path.read_text().splitlines()[0].split(",")
    assert header[:4] == ["type", "symbol", "timestamp", "timestamp_ms"]
    assert {"price", "quantity", "buyer_name", "history", "session", "seq", "recv_ns"} <= set(
        header
    )
    assert list(type_columns("tob"))[0] == "type"
    assert columns_for(["tick", "book"])["levels"] == "json"


def test_csv_bad_rows_are_reported_with_their_line_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    write_events(path, [sample()[0]] * 3)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",5000.5,", ",abc,")  # line 3: non-numeric price
    lines.insert(3, "tick,WDOQ25")  # line 4: too few fields
    path.write_text("\n".join(lines) + "\n")
    source = open_file_source(path, "csv")
    got = [e for batch in source.batches() for e in batch]
    source.close()
    assert len(got) == 2
    assert source.stats.rejected == 2
    assert source.stats.problems[0].startswith(f"{path}:3: field 'price'")
    assert (
        source.stats.problems[1] == f"{path}:4: expected {len(lines[0].split(','))} fields, got 2"
    )
    rejects = source.take_rejects()
    assert rejects[0].field == "price" and b"abc" in rejects[0].raw
    with pytest.raises(DataError, match=r":3: field 'price'.*--strict"):
        read_events(path, strict=True)


def test_jsonl_bad_lines_are_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "ticks.jsonl"
    write_events(path, sample()[:2])
    with open(path, "a") as handle:
        handle.write("\n{oops\n")
        handle.write('{"type": "tick", "symbol": "WDOQ25", "ts_event": 5, "price": -1}\n')
    source = JsonLinesSource(path)
    got = [e for batch in source.batches() for e in batch]
    source.close()
    assert len(got) == 2
    assert [p.split(": ", 1)[0] for p in source.stats.problems] == [f"{path}:4", f"{path}:5"]
    assert "not JSON" in source.stats.problems[0]
    assert source.take_rejects()[1].field == "price"


def test_a_file_opened_for_ticks_refuses_book_fields(tmp_path: Path) -> None:
    sink = CsvSink(tmp_path / "ticks.csv", types=["tick", "state", "daily"])
    sink.send(sample()[:1])
    with pytest.raises(DataError, match="write one file per kind or use .jsonl"):
        sink.send(sample()[2:3])
    sink.close()


def test_missing_files_and_unknown_formats_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        open_file_source(tmp_path / "nope.csv", "csv")
    with pytest.raises(UsageError, match="choose one of jsonl, csv, parquet"):
        open_file_source(tmp_path / "x.txt", "txt")
    (tmp_path / "plain.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="no 'type' column"):
        open_file_source(tmp_path / "plain.csv", "csv")


def test_parquet_columns_are_typed(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "events.parquet"
    write_events(path, sample())
    schema = pq.read_schema(path)
    assert str(schema.field("price").type) == "double"
    assert str(schema.field("quantity").type) == "int64"
    assert str(schema.field("is_edit").type) == "bool"
    assert str(schema.field("levels").type) == "string"


def test_times_in_another_unit_are_rejected_with_the_unit_they_look_like(tmp_path: Path) -> None:
    seconds = T0 // NS_PER_S
    path = tmp_path / "ticks.csv"
    path.write_text(
        "type,symbol,ts_event,price,quantity\n"
        f"tick,WDOQ25,{seconds * 1_000_000},5000.5,1\n"  # line 2: microseconds
        f"tick,WDOQ25,{seconds * 1000},5000.5,1\n"  # line 3: milliseconds
        f"tick,WDOQ25,{seconds},5000.5,1\n"  # line 4: seconds
        "tick,WDOQ25,86400000000000,5000.5,1\n"  # line 5: 1970-01-02 in ns, nothing fits
        f"tick,WDOQ25,{time.time_ns() + 2 * 86_400 * NS_PER_S},5000.5,1\n"  # line 6: 2 days ahead
        f"tick,WDOQ25,{T0},5000.5,1\n"  # line 7: nanoseconds, fine
    )
    source = open_file_source(path, "csv")
    got = [e for batch in source.batches() for e in batch]
    source.close()
    assert [e.ts_event for e in got] == [T0]
    assert source.stats.problems[:3] == [
        f"{path}:2: ts_event {seconds * 1_000_000} looks like microseconds; use --time-unit us",
        f"{path}:3: ts_event {seconds * 1000} looks like milliseconds; use --time-unit ms",
        f"{path}:4: ts_event {seconds} looks like seconds; use --time-unit s",
    ]
    assert source.stats.problems[3].startswith(
        f"{path}:5: ts_event 86400000000000 is not a plausible time (1970-01-02: before 2000"
    )
    assert "is not a plausible time" in source.stats.problems[4]
    assert source.take_rejects()[0].field == "ts_event"
    with pytest.raises(DataError, match=r":2: ts_event \d+ looks like microseconds.*--strict"):
        read_events(path, strict=True)


@pytest.mark.parametrize(("unit", "factor"), [("s", NS_PER_S), ("ms", 10**6), ("us", 1000)])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_time_unit_converts_the_time_columns(
    tmp_path: Path, suffix: str, unit: str, factor: int
) -> None:
    trade = Trade("WDOQ25", T0, price=5000.5, quantity=1, ts_init=T0 + 5 * factor)
    scaled = Trade("WDOQ25", T0 // factor, price=5000.5, quantity=1, ts_init=T0 // factor + 5)
    path = tmp_path / f"ticks{suffix}"
    write_events(path, [scaled])
    assert read_events(path, strict=False) == []  # without the unit: rejected
    source = open_file_source(path, suffix[1:], time_unit=unit)
    (got,) = [e for batch in source.batches() for e in batch]
    source.close()
    assert (got.ts_event, got.ts_init) == (trade.ts_event, trade.ts_init)  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="--time-unit 'h': choose one of s, ms, us, ns"):
        open_file_source(path, suffix[1:], time_unit="h")


def test_rows_without_ts_init_get_the_time_of_receipt(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(f"type,symbol,ts_event,price,quantity\ntick,WDOQ25,{T0},5000.5,1\n")
    jsonl = tmp_path / "ticks.jsonl"
    jsonl.write_text(f'{{"type": "tob", "symbol": "WDOQ25", "ts_event": {T0}}}\n')
    before = time.time_ns()
    (trade,) = read_events(path)
    (tob,) = read_events(jsonl)
    after = time.time_ns()
    assert before <= trade.ts_init <= after  # type: ignore[attr-defined]
    assert before <= tob.ts_init <= after  # type: ignore[attr-defined]
    kept = tmp_path / "kept.csv"
    write_events(kept, [Trade("WDOQ25", T0, price=1.0, ts_init=T0 + 5)])
    assert [e.ts_init for e in read_events(kept)] == [T0 + 5]  # type: ignore[attr-defined]
