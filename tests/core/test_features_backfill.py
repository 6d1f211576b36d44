"""Backfill over stored history (real bridge, real Valkey) equals the engine fed the same events
directly; `--every` sampling; `qt features --from … --output`; `qt query --kind features --set`."""

from __future__ import annotations

import json
import math
import multiprocessing

import numpy as np
import orjson
import pandas as pd
import pytest

from qt_cli.app import app
from qt_cli.core import keys, query
from qt_cli.core.errors import UsageError
from qt_cli.core.events import BookUpdate, Trade, decode_fields
from qt_cli.core.events import FeatureVector as WireVector
from qt_cli.core.features import backfill as backfill_module
from qt_cli.core.features.backfill import (
    _books,
    _merged_book_rows,
    backfill,
    every_ns,
    stored_events,
    to_event,
)
from qt_cli.core.features.catalog import SETS
from qt_cli.core.features.engine import FeatureEngine
from tests.core.features_stored import SYMBOLS, engine_order, simulate, store

ALL = (0, 2**62)


@pytest.fixture(scope="module")
def session_events():
    return simulate(hours=1.0, activity=0.05)


@pytest.fixture
def stored(session_events, valkey_url, tmp_path):
    store(session_events, valkey_url, tmp_path)
    return session_events


def _same(a, b) -> bool:
    return a == b or (a != a and b != b) or abs(a - b) <= 1e-9


def _engine(set_name: str) -> FeatureEngine:
    if set_name == "seed65":  # the ranking parameters, so that vectors get warm
        return FeatureEngine(
            set_name, top_buyers=[3, 8, 15, 27, 39], top_sellers=[3, 8, 15, 27, 39]
        )
    return FeatureEngine(set_name)


def _direct(events, set_name="qt"):
    engine = _engine(set_name)
    return [v for e in engine_order(events) if (v := engine.on_event(e)) is not None]


def test_stored_events_come_back_in_engine_order(stored, vk):
    got = list(stored_events(vk, SYMBOLS, *ALL))
    want = engine_order(stored)
    assert len(got) == len(want) > 1000
    assert [(e.ts_event, type(e).__name__, e.symbol, e.seq) for e in got] == [
        (e.ts_event, type(e).__name__, e.symbol, e.seq) for e in want
    ]
    # at equal event times a trade comes before a book event
    kinds = [(e.ts_event, type(e).__name__) for e in got]
    assert any(
        a[0] == b[0] and a[1] == "Trade" and b[1] == "BookUpdate"
        for a, b in zip(kinds, kinds[1:], strict=False)
    )
    assert not any(
        a[0] == b[0] and a[1] == "BookUpdate" and b[1] == "Trade"
        for a, b in zip(kinds, kinds[1:], strict=False)
    )


def _frame_way_book_events(vk, symbol):
    """The price-book events as the query API's frames give them (the backfill's former read)."""
    request = query.make_request("book", symbols=[symbol], start=ALL[0], end=ALL[1])
    return [e for frame, _ in query.pages(vk, request) for _, _, _, e in _books(frame)]


def test_book_read_gives_the_events_of_the_query_frames(stored, vk):
    """The direct read of the book stream (no DataFrame) gives what the query frames gave: the
    same entries in the same order, the same values, also for entries of other kinds, another
    program's entry, an entry missing fields or with unreadable ones, and a late entry."""
    symbol = SYMBOLS[0]
    key = keys.stream_key("book", symbol)
    last_id, last = vk.xrevrange(key, count=1)[0]
    ts = int(last[b"ts_event"])
    base = {
        k.decode(): v
        for k, v in vk.xrange(key, count=1)[0][1].items()
        if k != b"levels" or v  # the first entry is a full book
    }
    late = {**base, "action": b"add", "levels": b"", "price": b"5100.5", "seq": b"900001"}
    late["ts_event"] = str(int(base["ts_event"]) + 1).encode()  # far older than the stream's end
    vk.xadd(key, late)
    vk.xadd(key, {"init": "true"})  # the seed guide's marker
    missing = {k: v for k, v in late.items() if k not in ("count", "session")}
    vk.xadd(key, {**missing, "ts_event": str(ts).encode(), "seq": b"900002"})
    odd = {**late, "ts_event": str(ts).encode(), "quantity": b"1.5", "price": b"x", "seq": b"3"}
    vk.xadd(key, {**odd, "levels": b"[[1.0, 2, 3]"})  # position unreadable, levels not JSON
    vk.xadd(key, {**late, "ts_event": str(ts).encode(), "levels": b"{}", "seq": b"900004"})
    assert last_id < vk.xrevrange(key, count=1)[0][0]

    got = [BookUpdate(*row) for row in _merged_book_rows(vk, [symbol], *ALL)]
    want = _frame_way_book_events(vk, symbol)
    assert len(got) == len(want) > 100
    assert [repr(e) for e in got] == [repr(e) for e in want]
    assert [type(e.quantity) for e in got] == [type(e.quantity) for e in want]
    assert sum(e.seq >= 900001 for e in got) == 3  # the added book entries are there
    aside = list(stored_events(vk, [symbol], *ALL, kinds=("book",), aside=True))
    assert [repr(e) for e in aside] == [repr(e) for e in want]


def test_read_aside_gives_the_same_events_in_the_same_order(stored, vk, monkeypatch):
    """The events read, decoded and merged by a helper process (a long book) are those of the
    read here, in the same order; a backfill over a book longer than the threshold takes it,
    with the same vectors."""
    here = list(stored_events(vk, SYMBOLS, *ALL, aside=False))
    aside = list(stored_events(vk, SYMBOLS, *ALL, aside=True))
    assert len(here) == len(aside) > 1000
    assert [repr(e) for e in aside] == [repr(e) for e in here]
    monkeypatch.setattr(backfill_module, "ASIDE_ENTRIES", 10)
    started = []
    real = backfill_module._events_aside
    monkeypatch.setattr(backfill_module, "_events_aside", lambda *a: started.append(1) or real(*a))
    got = list(backfill(vk, SYMBOLS, *ALL, engine=FeatureEngine("qt"), every="trade"))
    assert started
    direct = _direct(stored, "qt")
    assert len(got) == len(direct)
    for a, b in zip(direct, got, strict=True):
        assert (a.symbol, a.ts_event, a.missing) == (b.symbol, b.ts_event, b.missing)
        assert all(_same(x, y) for x, y in zip(a.values, b.values, strict=True))


def test_read_aside_stops_with_its_reader_and_reports_its_error(stored, vk, valkey_url):
    """Closing the read early stops the helper process; a helper that cannot read raises here."""
    events = stored_events(vk, SYMBOLS, *ALL, aside=True)
    next(events)
    assert multiprocessing.active_children()
    events.close()
    assert not multiprocessing.active_children()
    import valkey as valkey_client

    gone = valkey_client.Valkey(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    gone_events = backfill_module._events_aside(gone, SYMBOLS, *ALL, ("ticks", "book"))
    with pytest.raises(Exception, match="(?i)connect"):
        next(gone_events)


@pytest.mark.parametrize("set_name", ["qt", "seed65"])
def test_backfill_equals_the_engine_fed_directly(stored, vk, set_name):
    direct = _direct(stored, set_name)
    got = list(backfill(vk, SYMBOLS, *ALL, engine=_engine(set_name), every="trade"))
    assert len(got) == len(direct) > 500
    assert sum(v.warm for v in got) > len(got) // 2
    for a, b in zip(direct, got, strict=True):
        assert (a.symbol, a.ts_event, a.warm, a.missing) == (
            b.symbol,
            b.ts_event,
            b.warm,
            b.missing,
        )
        assert all(_same(x, y) for x, y in zip(a.values, b.values, strict=True)), a.ts_event


def test_every_keeps_the_last_vector_of_each_period(stored, vk):
    direct = _direct(stored)
    frame = pd.DataFrame({"symbol": [v.symbol for v in direct], "ts": [v.ts_event for v in direct]})
    frame["i"] = range(len(frame))
    want = frame.groupby(["symbol", frame.ts // 1_000_000_000])["i"].max().sort_values().tolist()
    got = list(backfill(vk, SYMBOLS, *ALL, engine=FeatureEngine("qt"), every="1s"))
    assert sorted((v.ts_event, v.symbol) for v in got) == sorted(
        (direct[i].ts_event, direct[i].symbol) for i in want
    )
    by_key = {(v.ts_event, v.symbol): v for v in got}
    for i in want:
        v = by_key[(direct[i].ts_event, direct[i].symbol)]
        assert all(_same(x, y) for x, y in zip(v.values, direct[i].values, strict=True))
    candle = list(backfill(vk, SYMBOLS, *ALL, engine=FeatureEngine("qt"), every="candle"))
    minutes = {(v.symbol, v.ts_event // 60_000_000_000) for v in direct}
    assert len(candle) == len(minutes)


def test_every_rejects_nonsense():
    assert every_ns("trade") == 0
    assert every_ns("250ms") == 250_000_000
    assert every_ns("candle") == 60_000_000_000
    with pytest.raises(UsageError, match="--every 'often': use trade, candle"):
        every_ns("often")


def test_backfill_command_writes_parquet_csv_and_jsonl(stored, vk, cli, tmp_path):
    direct = _direct(stored)
    for name in ("v.parquet", "v.csv", "v.jsonl"):
        out = tmp_path / name
        result = cli.invoke(
            app,
            ["features", "--from", "2025-07-01", "--to", "2025-07-02", "-s", "WDOQ25", "-s", "WINQ25",
             "--every", "trade", "--output", str(out), "--json"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["vectors"] == len(direct)
        assert summary["trades"] == len(direct)
        assert summary["bytes"] == out.stat().st_size > 0
    frame = pd.read_parquet(tmp_path / "v.parquet")
    assert list(frame.columns[6:]) == list(SETS["qt"])
    assert frame["ts_event"].tolist() == [v.ts_event for v in direct]
    np.testing.assert_allclose(
        frame[list(SETS["qt"])].to_numpy(), np.array([v.values for v in direct]), rtol=0, atol=1e-9
    )
    csv = pd.read_csv(tmp_path / "v.csv")
    assert csv["warm"].astype(bool).tolist() == [v.warm for v in direct]
    lines = (tmp_path / "v.jsonl").read_bytes().splitlines()
    first = WireVector.from_dict(orjson.loads(lines[-1]))
    assert first.features == pytest.approx(
        dict(zip(direct[-1].names, direct[-1].values, strict=True)), nan_ok=True
    )


def test_backfill_command_errors(valkey_url, cli, tmp_path):
    result = cli.invoke(app, ["features", "--from", "2025-07-01", "-s", "WDOQ25"])
    assert result.exit_code != 0
    assert "a backfill needs --from and one of --output" in result.stderr
    result = cli.invoke(
        app,
        ["features", "--from", "2025-07-01", "-s", "WDOQ25", "--output", str(tmp_path / "x.txt")],
    )
    assert "use a .parquet, .csv or .jsonl file" in result.stderr
    result = cli.invoke(
        app,
        ["features", "--from", "2025-07-01", "-s", "WDOQ25", "--output", str(tmp_path / "x.csv")],
    )
    assert result.exit_code != 0
    assert "no ticks stored for WDOQ25" in result.stderr


def test_query_features_by_set(stored, vk, valkey_url, tmp_path, cli):
    """Vectors of two sets stored through the bridge; --set keeps one set, its columns in order."""
    direct = {name: _direct(stored, name)[-40:] for name in ("basic11", "qt")}
    wires = []
    for name, vectors in direct.items():
        for i, v in enumerate(vectors):
            wires.append(
                WireVector(**{**_fields(to_event(v)), "session": f"ft.{name}", "seq": i + 1})
            )
    wires.sort(key=lambda w: w.ts_event)
    store(wires, valkey_url, tmp_path)
    assert vk.xlen(keys.stream_key("features", "WDOQ25")) + vk.xlen(
        keys.stream_key("features", "WINQ25")
    ) == len(wires)
    frame = query.query("features", start=0, end=2**62, feature_set="basic11", client=vk)
    assert len(frame) == 40
    assert list(frame.columns[-11:]) == list(SETS["basic11"])
    assert not set(SETS["qt"]) - set(SETS["basic11"]) & set(frame.columns)
    want = np.array([v.values for v in sorted(direct["basic11"], key=lambda v: v.ts_event)])
    np.testing.assert_allclose(frame[list(SETS["basic11"])].to_numpy(), want, atol=1e-9)
    qt = query.query("features", start=0, end=2**62, feature_set="qt", client=vk)
    assert list(qt.columns[-65:]) == list(SETS["qt"]) and len(qt) == 40
    result = cli.invoke(
        app, ["query", "--kind", "features", "--set", "basic11", "--from", "2025-07-01",
              "--to", "2025-07-02", "--format", "jsonl"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 40 and list(rows[0]["features"]) == list(SETS["basic11"])
    bad = cli.invoke(app, ["query", "--kind", "ticks", "--set", "qt"])
    assert "--set picks a feature set: use it with --kind features, not ticks" in bad.stderr
    bad = cli.invoke(app, ["query", "--kind", "features", "--set", "nope"])
    assert "unknown feature set 'nope'" in bad.stderr


def _fields(event: WireVector) -> dict:
    return {
        name: getattr(event, name)
        for name, _, _ in WireVector._spec
        if name not in ("session", "seq")
    }


def test_wire_vector_round_trips_through_the_stream_fields(stored):
    vector = _direct(stored)[-1]
    event = to_event(vector)
    back = decode_fields({k.encode(): v.encode() for k, v in event.to_fields().items()})
    assert isinstance(back, WireVector)
    assert all(
        _same(back.features[n], x) or (math.isnan(x) and math.isnan(back.features[n]))
        for n, x in zip(vector.names, vector.values, strict=True)
    )


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_write_stopped_midway_closes_its_writer_first(stored, monkeypatch, tmp_path, suffix):
    """Ctrl+C (or any error) in the middle of `qt features --from … --output x.parquet`: the
    file writer is closed before its file, so nothing is reported later from its finaliser
    ("Exception ignored … write to closed file")."""
    import gc
    import sys

    from qt_cli.core.features.backfill import write_vectors

    monkeypatch.setattr(backfill_module, "WRITE_BATCH", 10)
    vectors = _direct(stored)[:25]
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def stopped():
        yield from vectors
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_vectors(stopped(), tmp_path / f"v{suffix}", FeatureEngine("qt").names)
    gc.collect()
    assert not unraisable, [str(u.exc_value) for u in unraisable]


def test_live_catch_up_holds_a_bounded_backlog_and_equals_the_backfill(
    stored, vk, valkey_url, monkeypatch
):
    """The live stage reading a stored session from its start: the ticks stream, read faster
    than the book it waits for, pauses while its symbol's merge holds HOLD_MAX entries (they
    wait in Valkey, not in memory), and every trade's vector is the backfill's."""
    from qt_cli.core.features import live
    from qt_cli.core.io import open_source

    monkeypatch.setattr(live, "HOLD_MAX", 40)
    engine = FeatureEngine("qt", symbols=SYMBOLS)
    source = open_source(valkey_url, symbols=SYMBOLS, kinds=("ticks", "book"), start="0", count=50)
    stage = live.LiveFeatures(source, None, engine=engine, symbols=SYMBOLS, every="trade")
    held = []
    got = []
    real_emit = stage._emit
    monkeypatch.setattr(
        stage, "_emit", lambda kept: got.extend(v for v, _ in kept) or real_emit(kept)
    )
    try:
        while True:
            before = stage.stats.received
            stage._step()
            held.append(max(len(m) for m in stage.reader._merges.values()))
            if stage.stats.received == before:
                break
    finally:
        stage.close()
    assert max(held) <= 40 + 2 * 50  # the cap, plus one read of each stream
    want = list(backfill(vk, SYMBOLS, *ALL, engine=FeatureEngine("qt"), every="trade"))
    assert len(got) > 500 and len(want) - len(got) < 10  # the last trades wait for the book
    for symbol in SYMBOLS:  # each symbol's vectors in order (symbols interleave differently)
        mine = [v for v in got if v.symbol == symbol]
        theirs = [v for v in want if v.symbol == symbol][: len(mine)]
        assert [v.ts_event for v in mine] == [v.ts_event for v in theirs]
        for x, y in zip(mine, theirs, strict=True):
            assert all(_same(a, b) for a, b in zip(x.values, y.values, strict=True))


def _live_vectors(stage) -> list:
    """Every vector (with its input entry) the live stage computes until its input is drained."""
    got = []
    real_emit = stage._emit
    stage._emit = lambda kept: got.extend(kept) or real_emit(kept)
    quiet = 0
    try:
        while quiet < 3:  # the helper process may still be reading: a few empty reads in a row
            before = stage.stats.received
            stage._step()
            quiet = quiet + 1 if stage.stats.received == before else 0
    finally:
        stage.close()
    return got


def test_the_stage_reading_through_a_helper_process_computes_what_it_computes_reading_here(
    stored, valkey_url
):
    """`--in valkey://…` (no group) reads, decodes and merges in a helper process
    (`AsideReader`): the same vectors, from the same input entries (the identities they are
    stored under), as reading in the stage's own process; top-of-book entries are not decoded
    (`Passed`), neither way, and the counts agree."""
    from qt_cli.core.features import live

    kinds = ("ticks", "book")
    runs = {}
    for aside in (False, True):
        reader = live.valkey_input(valkey_url, SYMBOLS, kinds, aside=aside)
        assert isinstance(reader, live.AsideReader if aside else live.MergedReader)
        stage = live.LiveFeatures(
            reader,
            None,
            engine=FeatureEngine("qt", symbols=SYMBOLS),
            symbols=SYMBOLS,
            every="trade",
        )
        got = _live_vectors(stage)
        runs[aside] = (got, stage.totals())
    (inline, here), (aside, there) = runs[False], runs[True]
    assert len(inline) > 500 and len(aside) == len(inline)
    fields = [name for name, _, _ in Trade._spec]
    for (x, ex), (y, ey) in zip(inline, aside, strict=True):
        # the helper's trades come as `TradeRow`s: the same fields, read by the same names
        assert type(ex.event) is Trade and type(ey.event) is live.TradeRow
        assert (ex.key, ex.id) == (ey.key, ey.id)
        assert [getattr(ex.event, n) for n in fields] == [getattr(ey.event, n) for n in fields]
        assert x.lineage == y.lineage and x.ts_event == y.ts_event
        assert all(_same(a, b) for a, b in zip(x.values, y.values, strict=True))
    for name in ("received", "trades", "book_events", "vectors", "rejected", "waiting"):
        assert here[name] == there[name], name
    assert here["counters"] == there["counters"]
    tob = sum(1 for e in stored if type(e).__name__ == "TopOfBook")
    # every entry read: a trade or book event computed, a top of book passed, or one waiting
    # for the other stream (the last trades wait for a later book event)
    handled = here["trades"] + here["book_events"] + tob + here["waiting"]
    assert tob > 0 and here["received"] == handled


def test_a_skipped_type_comes_as_where_it_stands_and_a_bad_one_is_still_rejected(vk, valkey_url):
    """`StreamSource(skip=…)`: an entry of a skipped type is handed out as `Passed` (symbol,
    stream, event time) without being decoded; one whose event time does not read is decoded,
    so it is rejected and counted as before."""
    from qt_cli.core import keys
    from qt_cli.core.events import Passed
    from qt_cli.core.io import open_source

    key = keys.stream_key("book", "WDOQ25")
    vk.xadd(key, {"type": "tob", "symbol": "WDOQ25", "ts_event": "1754654400000000000"})
    vk.xadd(key, {"type": "tob", "symbol": "WDOQ25", "ts_event": "soon"})
    source = open_source(
        valkey_url, symbols=["WDOQ25"], kinds=("book",), start="0", skip=frozenset({"tob"})
    )
    try:
        got = source.read_entries(0.1)
    finally:
        source.close()
    assert [e.event for e in got] == [Passed("WDOQ25", "book", 1754654400000000000)]
    assert source.rejected == 1


def test_the_helper_reader_waits_out_a_valkey_outage_and_loses_nothing(tmp_path):
    """A Valkey outage while the helper process reads: the stage warns once and counts it, the
    helper retries, and once Valkey is back every trade is computed once, in order."""
    import threading

    import valkey

    from qt_cli.core.events import NS_PER_MS, Trade
    from qt_cli.core.features import live
    from qt_cli.core.stage import run_stage
    from qt_cli.core.store.managed import ManagedValkey
    from qt_cli.core.store.writer import StreamWriter
    from tests.helpers import eventually, free_port

    server = ManagedValkey(tmp_path / "own-valkey", port=free_port())
    status = server.start()
    client = valkey.Valkey(host="127.0.0.1", port=status.port)

    def seed(first: int, n: int) -> None:
        trades = [
            Trade(
                symbol="WDOQ25",
                ts_event=(1_754_654_400_000 + i) * NS_PER_MS,
                price=5000.0 + i % 7,
                quantity=1 + i % 3,
                aggressor="buy" if i % 2 else "sell",
                session="seed.ticks",
                seq=i + 1,
            )
            for i in range(first, first + n)
        ]
        StreamWriter(client, maxlen=0).append_events(trades)

    seed(0, 300)
    warnings: list[str] = []
    reader = live.valkey_input(status.url, ["WDOQ25"], ("ticks",), aside=True)
    stage = live.LiveFeatures(
        reader,
        None,
        engine=FeatureEngine("seed65", symbols=["WDOQ25"]),
        symbols=["WDOQ25"],
        every="trade",
        warn=warnings.append,
    )
    got: list = []
    real_emit = stage._emit
    stage._emit = lambda kept: got.extend(v for v, _ in kept) or real_emit(kept)
    thread = threading.Thread(target=run_stage, args=(stage,), kwargs={"handle_signals": False})
    thread.start()
    try:
        eventually(lambda: stage.stats.trades == 300, message="the first 300 trades")
        server.stop()
        eventually(lambda: stage.stats.outages > 0, timeout=10, message="the outage seen")
        server.start()
        seed(300, 300)
        eventually(lambda: stage.stats.trades == 600, timeout=20, message="caught up")
    finally:
        stage.stop("test")
        thread.join(20)
        client.close()
        server.stop()
    assert not thread.is_alive()
    assert any("Valkey unreachable" in w for w in warnings)
    stamps = [v.ts_event for v in got]
    assert len(stamps) == 600 and stamps == sorted(set(stamps))


def test_the_helper_reader_ends_when_the_stage_is_gone_even_with_its_pipe_full(stored, valkey_url):
    """The stage's end of the pipe closed (the stage killed) while the helper is blocked on a
    full pipe: the helper's write breaks and it ends (it holds no copy of the stage's end)."""
    from pathlib import Path

    from qt_cli.core.features import live
    from tests.helpers import eventually

    reader = live.valkey_input(valkey_url, SYMBOLS, ("ticks", "book"), aside=True)
    helper = reader._helper
    wchan = Path(f"/proc/{helper.pid}/wchan")
    try:
        eventually(
            lambda: "pipe_write" in wchan.read_text(), timeout=20, message="the pipe is full"
        )
        reader._conn.close()  # what the stage's death does to its end
        helper.join(10)
        assert not helper.is_alive()
    finally:
        if helper.is_alive():
            helper.kill()
            helper.join()
