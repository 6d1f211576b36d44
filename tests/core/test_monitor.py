"""Monitor core: window maths, collection from a real Valkey seeded per docs/contracts.md, rendering."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import valkey as valkey_lib
from rich.console import Console

from qt_cli.core import keys
from qt_cli.core.events import (
    NS_PER_MS,
    NS_PER_S,
    BookUpdate,
    Event,
    FeatureVector,
    Prediction,
    Signal,
    TopOfBook,
    Trade,
)
from qt_cli.core.monitor import (
    Monitor,
    MonitorOptions,
    Snapshot,
    Tick,
    fmt_age,
    render,
    sparkline,
    window_stats,
)
from qt_cli.core.store.managed import ManagedValkey
from tests.helpers import free_port

NOW = 1_754_654_400 * NS_PER_S  # 2025-08-08 12:00:00 UTC, 09:00 in São Paulo
SYM = "WDOQ25"


# --- seeding exactly as docs/contracts.md says the bridge writes -------------------------------


def xadd_event(client: valkey_lib.Valkey, event: Event, *, kind: str | None = None) -> str:
    """XADD `event.to_fields()` to its per-symbol stream with id `<event ms>-<n>`.

    An event older than the stream's top gets the top's ms with the next n and `late` = 1.
    """
    key = keys.stream_key(kind or event.stream_kind, event.symbol)
    ms = event.ts_event // NS_PER_MS
    fields = event.to_fields()
    top = client.xrevrange(key, "+", "-", count=1)
    n = 0
    if top:
        top_ms, top_n = (int(p) for p in top[0][0].decode().split("-"))
        if ms < top_ms:
            ms, n = top_ms, top_n + 1
            fields["late"] = "1"
        elif ms == top_ms:
            n = top_n + 1
    entry_id = f"{ms}-{n}"
    client.xadd(key, fields, id=entry_id)
    return entry_id


def trade(ts: int, price: float, qty: int, *, trade_id: int = 0, symbol: str = SYM) -> Trade:
    return Trade(
        symbol=symbol,
        ts_event=ts,
        price=price,
        quantity=qty,
        volume=price * qty * 10,
        trade_id=trade_id,
        ts_init=ts + 3 * NS_PER_MS,
        session="run1.ticks",
        seq=trade_id,
    )


def seed_trades(client: valkey_lib.Valkey, trades: Iterable[Trade]) -> None:
    for item in trades:
        xadd_event(client, item)


def seed_stage(client: valkey_lib.Valkey, stage: str, name: str, **values: Any) -> str:
    key = keys.stats_key(stage, name)
    client.hset(
        key, mapping={"stage": stage, "name": name, **{k: str(v) for k, v in values.items()}}
    )
    client.expire(key, 300)
    client.sadd(keys.STAGES_SET, key)
    return key


# The known data of the main tests: newest tick 2 s before NOW, so the window is
# [NOW-302s, NOW-2s]; the tick at NOW-400s is outside it.
KNOWN_TRADES = [
    trade(NOW - 400 * NS_PER_S, 5000.0, 9, trade_id=1),
    trade(NOW - 300 * NS_PER_S, 5400.0, 2, trade_id=2),
    trade(NOW - 200 * NS_PER_S, 5410.0, 3, trade_id=3),
    trade(NOW - 100 * NS_PER_S, 5420.0, 1, trade_id=4),
    trade(NOW - 2 * NS_PER_S, 5427.0, 4, trade_id=5),
]
KNOWN_VOLUME = (5400.0 * 2 + 5410.0 * 3 + 5420.0 * 1 + 5427.0 * 4) * 10  # 541,580


def seed_known(client: valkey_lib.Valkey) -> None:
    seed_trades(client, KNOWN_TRADES)
    xadd_event(
        client,
        TopOfBook(
            symbol=SYM,
            ts_event=NOW - 3 * NS_PER_S,
            bid_price=5426.5,
            bid_qty=5,
            ask_price=5427.0,
            ask_qty=7,
        ),
    )
    # Book updates after the top of book: the monitor still finds the newest `tob`.
    for i in range(5):
        xadd_event(
            client,
            BookUpdate(symbol=SYM, ts_event=NOW - 2 * NS_PER_S + i, side="bid", price=5426.0),
        )
    xadd_event(
        client,
        FeatureVector(
            symbol=SYM,
            ts_event=NOW - 1_500 * NS_PER_MS,
            feature_set="basic11",
            features={"returns_1": 0.001, "volatility_20": 0.02, "rsi_14": math.nan},
            reasons={"rsi_14": "warming up: 9 of 15 bars"},
            warm=True,
        ),
    )
    xadd_event(
        client,
        Prediction(
            symbol=SYM,
            ts_event=NOW - 1 * NS_PER_S,
            model="lgbm-basic11",
            value=0.8,
            label="up",
        ),
    )
    xadd_event(
        client,
        Signal(
            symbol=SYM,
            ts_event=NOW - 1 * NS_PER_S,
            action="buy",
            confidence=0.8,
            price=5427.0,
            model="lgbm-basic11",
        ),
    )
    seed_stage(
        client,
        "bridge",
        "default",
        pid=4242,
        host="box",
        updated_ns=NOW - 1 * NS_PER_S,
        received=1200,
        written=1190,
        rate=41.5,
        lag_ms=3.5,
        duplicates=10,
        gaps_recovered=2,
        gaps_lost=1,
        deadletters=3,
    )
    seed_stage(client, "feed", "run1", updated_ns=NOW - 10 * NS_PER_S, received=1300, rate=40.0)
    ticks_key = keys.stream_key("ticks", SYM)
    client.xgroup_create(ticks_key, "features", id="0")
    client.xreadgroup("features", "worker-1", {ticks_key: ">"}, count=3)


# --- window maths ------------------------------------------------------------------------------


def tick(ts_s: float, price: float, qty: int = 1, trade_id: int = 0, id_ms: int = 0) -> Tick:
    ts = int(ts_s * NS_PER_S)
    return Tick(id_ms or ts // NS_PER_MS, 0, ts, price, qty, price * qty, trade_id)


def test_change_takes_the_oldest_trade_as_first() -> None:
    # The seed took the newest tick as "first": here that would give -9.09% instead of +10%.
    stats = window_stats(
        [tick(10, 100.0), tick(20, 105.0), tick(30, 110.0)],
        end_ns=30 * NS_PER_S,
        window_ns=60 * NS_PER_S,
    )
    assert stats.first_price == 100.0
    assert stats.last_price == 110.0
    assert stats.change_pct == pytest.approx(10.0)
    assert stats.trades == 3
    assert stats.volume == pytest.approx(315.0)
    assert stats.quantity == 3


def test_order_is_event_time_not_stream_order() -> None:
    # A late entry (stored last, clamped id) that happened first is the window's first trade.
    late = tick(5, 90.0, id_ms=30_000)
    stats = window_stats(
        [tick(10, 100.0), tick(30, 110.0), late], end_ns=30 * NS_PER_S, window_ns=60 * NS_PER_S
    )
    assert stats.first_price == 90.0
    assert stats.last_price == 110.0
    assert stats.change_pct == pytest.approx((110.0 - 90.0) / 90.0 * 100)


def test_window_excludes_older_trades_and_counts_a_trade_id_once() -> None:
    ticks = [
        tick(0, 50.0, 7, trade_id=1),  # 60 s before the newest: outside a 59 s window
        tick(10, 100.0, 2, trade_id=2),
        tick(20, 101.0, 1, trade_id=3),
        tick(20, 102.0, 3, trade_id=3),  # an edit of trade 3: replaces it
        tick(60, 104.0, 1, trade_id=4),
    ]
    stats = window_stats(ticks, end_ns=60 * NS_PER_S, window_ns=59 * NS_PER_S)
    assert stats.trades == 3
    assert stats.quantity == 2 + 3 + 1
    assert stats.volume == pytest.approx(100.0 * 2 + 102.0 * 3 + 104.0)
    assert stats.first_price == 100.0


def test_an_empty_window_is_nan_not_zero() -> None:
    stats = window_stats([], end_ns=NOW, window_ns=60 * NS_PER_S, buckets=4)
    assert stats.trades == 0
    assert math.isnan(stats.change_pct)
    assert math.isnan(stats.last_price)
    assert stats.sparkline == [None] * 4


def test_sparkline_buckets_carry_the_last_price() -> None:
    ticks = [tick(15, 100.0), tick(35, 104.0), tick(36, 102.0), tick(75, 108.0)]
    stats = window_stats(ticks, end_ns=80 * NS_PER_S, window_ns=80 * NS_PER_S, buckets=4)
    assert stats.sparkline == [100.0, 102.0, 102.0, 108.0]
    assert sparkline(stats.sparkline) == "▁▃▃█"
    assert sparkline([None, 5.0, 5.0]) == " ▄▄"


def test_fmt_age() -> None:
    assert [fmt_age(x) for x in (0.25, 3.21, 312, 7500, math.nan)] == [
        "250ms",
        "3.2s",
        "5m12s",
        "2h05m",
        "—",
    ]


# --- collection against a real server -----------------------------------------------------------


def test_collect_known_data(vk: valkey_lib.Valkey, valkey_url: str) -> None:
    seed_known(vk)
    with Monitor(valkey_url, MonitorOptions(stale_ns=5 * NS_PER_S)) as monitor:
        snapshot = monitor.collect(now_ns=NOW)

    assert snapshot.reachable, snapshot.error
    assert [s.symbol for s in snapshot.symbols] == [SYM]
    view = snapshot.symbols[0]
    assert view.trades == 4
    assert view.volume == pytest.approx(KNOWN_VOLUME)
    assert view.quantity == 10
    assert view.first_price == 5400.0
    assert view.last_price == 5427.0
    assert view.change_pct == pytest.approx(0.5)
    assert view.window_start_ns == NOW - 302 * NS_PER_S
    assert view.window_complete
    assert view.lag_ticks_ms == pytest.approx(2000.0)
    assert view.lag_features_ms == pytest.approx(1500.0)
    assert view.lag_predictions_ms == pytest.approx(1000.0)
    assert (view.bid, view.ask, view.spread) == (5426.5, 5427.0, 0.5)
    assert (view.feature_count, view.features_valid, view.features_warm) == (3, 2, True)
    assert view.prediction_label == "up"
    assert view.signal_action == "buy"
    assert view.signal_confidence == 0.8
    assert view.signal_age_s == pytest.approx(1.0)
    assert view.state == "ACTIVE"
    assert not view.stale

    stages = {s.stage: s for s in snapshot.stages}
    assert list(stages) == ["feed", "bridge", "features", "predict"]
    bridge = stages["bridge"]
    assert (bridge.status, bridge.stale, bridge.age_s) == ("ok", False, 1.0)
    assert (bridge.rate, bridge.received, bridge.written) == (41.5, 1200, 1190)
    assert (bridge.gaps_recovered, bridge.gaps_lost, bridge.deadletters) == (2, 1, 3)
    assert (stages["feed"].status, stages["feed"].stale) == ("stale", True)
    assert stages["features"].seen is False
    assert stages["features"].pending == 3  # group "features" on the ticks stream
    assert [(g.stream, g.group, g.pending, g.consumers) for g in snapshot.groups] == [
        (keys.stream_key("ticks", SYM), "features", 3, 1)
    ]
    assert snapshot.valkey.version.startswith(("7", "8", "9"))
    assert snapshot.valkey.connected_clients and snapshot.valkey.connected_clients >= 1
    assert snapshot.valkey.aof_enabled is True  # the test server is a managed one (AOF on)
    assert snapshot.valkey.aof_status == "ok"
    assert math.isnan(snapshot.valkey.memory_ratio)
    assert "no limit" in snapshot.valkey.reasons["memory_ratio"]


def test_json_dict_has_null_for_nan(vk: valkey_lib.Valkey, valkey_url: str) -> None:
    seed_trades(vk, [trade(NOW - NS_PER_S, 10.0, 1)])
    with Monitor(valkey_url) as monitor:
        data = monitor.collect(now_ns=NOW).as_dict()
    symbol = data["symbols"][0]
    assert symbol["spread"] is None
    assert "spread" in symbol["reasons"]
    assert symbol["change_pct"] == 0.0
    assert symbol["state"] == "WAITING"  # ticks, no features yet
    assert symbol["reasons"]["features"] == "no entries in stream:features:{WDOQ25}"


def test_stale_symbol_and_no_data(vk: valkey_lib.Valkey, valkey_url: str) -> None:
    seed_trades(vk, [trade(NOW - 60 * NS_PER_S, 10.0, 1, symbol="OLD3")])
    with Monitor(valkey_url, MonitorOptions(symbols=("OLD3", "NONE3"))) as monitor:
        snapshot = monitor.collect(now_ns=NOW)
    old, none = snapshot.symbols
    assert (old.state, old.stale, old.lag_ticks_ms) == ("STALE", True, 60_000.0)
    assert none.state == "NO DATA"
    assert math.isnan(none.last_price)
    assert none.reasons["ticks"] == "no entries in stream:ticks:{NONE3}"


def test_reads_only_new_entries_and_moves_the_window(
    vk: valkey_lib.Valkey, valkey_url: str
) -> None:
    seed_trades(vk, KNOWN_TRADES)
    with Monitor(valkey_url, MonitorOptions(symbols=(SYM,))) as monitor:
        first = monitor.collect(now_ns=NOW).symbols[0]
        seed_trades(
            vk,
            [
                trade(NOW + 50 * NS_PER_S, 5430.0, 1, trade_id=6),
                trade(
                    NOW - 250 * NS_PER_S, 5300.0, 1, trade_id=7
                ),  # late: stored with a clamped id
            ],
        )
        vk.config_resetstat()
        second = monitor.collect(now_ns=NOW + 51 * NS_PER_S)
        stats = vk.info("commandstats")
    assert first.trades == 4
    view = second.symbols[0]
    # Window [NOW-250s, NOW+50s]: 5410, 5420, 5427, 5430 and the late 5300 (at its event time).
    assert view.trades == 5
    assert view.first_price == 5300.0
    assert view.last_price == 5430.0
    assert view.change_pct == pytest.approx((5430.0 - 5300.0) / 5300.0 * 100)
    assert view.lag_ticks_ms == pytest.approx(1000.0)
    assert stats["cmdstat_xrevrange"]["calls"] == 1 + 1 + 3  # new ticks, book, model side
    assert "cmdstat_scan" not in stats
    assert "cmdstat_keys" not in stats


def test_window_fills_across_refreshes_with_small_pages(
    vk: valkey_lib.Valkey, valkey_url: str
) -> None:
    seed_trades(
        vk, [trade(NOW - (100 - i) * NS_PER_S, 100.0 + i, 1, trade_id=i + 1) for i in range(100)]
    )
    # Each later refresh: one page for new entries, two pages of backfill.
    options = MonitorOptions(page_size=10, first_pages=3, pages_per_refresh=3)
    with Monitor(valkey_url, options) as monitor:
        views = [monitor.collect(now_ns=NOW).symbols[0] for _ in range(5)]
    assert [v.trades for v in views] == [30, 50, 70, 90, 100]
    assert [v.window_complete for v in views] == [False, False, False, False, True]
    assert "lower bounds" in views[0].reasons["window"]
    assert "window" not in views[-1].reasons
    assert views[-1].first_price == 100.0
    assert views[-1].change_pct == pytest.approx(99.0)


def test_more_new_ticks_than_one_refresh_reads(vk: valkey_lib.Valkey, valkey_url: str) -> None:
    seed_trades(vk, [trade(NOW - 200 * NS_PER_S, 100.0, 1, trade_id=1)])
    options = MonitorOptions(page_size=10, first_pages=3, pages_per_refresh=3)
    with Monitor(valkey_url, options) as monitor:
        assert monitor.collect(now_ns=NOW).symbols[0].trades == 1
        seed_trades(
            vk, [trade(NOW - (50 - i) * NS_PER_S, 200.0 + i, 1, trade_id=i + 2) for i in range(50)]
        )
        views = [monitor.collect(now_ns=NOW).symbols[0] for _ in range(4)]
    # 50 new entries, 30 readable per refresh: restart from the newest 30, then backfill.
    assert [v.trades for v in views] == [30, 50, 51, 51]
    assert [v.window_complete for v in views] == [False, False, True, True]
    assert views[-1].trades == 51
    assert views[-1].first_price == 100.0
    assert views[-1].last_price == 249.0


def test_symbols_discovered_with_scan_at_start_and_every_30s(
    vk: valkey_lib.Valkey, valkey_url: str
) -> None:
    seed_trades(vk, [trade(NOW, 10.0, 1, symbol="AAA3")])
    vk.config_resetstat()
    with Monitor(valkey_url) as monitor:
        assert [s.symbol for s in monitor.collect(now_ns=NOW).symbols] == ["AAA3"]
        seed_trades(vk, [trade(NOW, 20.0, 1, symbol="BBB4")])
        assert [s.symbol for s in monitor.collect(now_ns=NOW + 29 * NS_PER_S).symbols] == ["AAA3"]
        scans_before = vk.info("commandstats")["cmdstat_scan"]["calls"]
        assert [s.symbol for s in monitor.collect(now_ns=NOW + 30 * NS_PER_S).symbols] == [
            "AAA3",
            "BBB4",
        ]
    stats = vk.info("commandstats")
    assert scans_before == 1
    assert stats["cmdstat_scan"]["calls"] == 2
    assert "cmdstat_keys" not in stats


def test_commands_per_refresh_are_bounded(vk: valkey_lib.Valkey, valkey_url: str) -> None:
    seed_known(vk)
    for symbol in ("AAA3", "BBB4"):
        seed_trades(vk, [trade(NOW - NS_PER_S, 10.0, 1, symbol=symbol)])
    with Monitor(valkey_url) as monitor:
        monitor.collect(now_ns=NOW)
        snapshot = monitor.collect(now_ns=NOW)
    symbols, stage_hashes = 3, 2
    # INFO, SMEMBERS, 2 XLEN; per symbol 1 book + 3 model-side XREVRANGE + 4 XINFO GROUPS + 1 ticks page
    assert snapshot.commands == 4 + symbols * (1 + 3 + 4 + 1) + stage_hashes


def test_unreachable_is_said_and_retried_until_the_server_appears(tmp_path: Path) -> None:
    port = free_port()
    url = f"valkey://127.0.0.1:{port}/0"
    with Monitor(url, MonitorOptions(symbols=(SYM,))) as monitor:
        down = [monitor.collect(now_ns=NOW), monitor.collect(now_ns=NOW)]
        assert [s.reachable for s in down] == [False, False]
        assert [s.attempts for s in down] == [1, 2]
        assert f"cannot reach Valkey at {url}" in down[0].error
        frame = _text(render(down[1], width=100))
        assert "VALKEY UNREACHABLE" in frame
        assert "attempt 2" in frame

        server = ManagedValkey(tmp_path / "late-valkey", port=port)
        server.start()
        try:
            client = valkey_lib.Valkey(host="127.0.0.1", port=port)
            seed_trades(client, [trade(NOW - NS_PER_S, 10.0, 1)])
            client.close()
            up = monitor.collect(now_ns=NOW)
        finally:
            server.stop()
        assert up.reachable
        assert up.symbols[0].trades == 1
        lost = monitor.collect(now_ns=NOW + NS_PER_S)
    assert not lost.reachable
    assert lost.attempts == 1
    assert lost.symbols[0].trades == 1  # the last data read, flagged as such in the frame
    assert "showing data last read" in _text(render(lost, width=100))


# --- rendering -----------------------------------------------------------------------------------


def _text(renderable: Any, width: int = 100, color: bool = False) -> str:
    console = Console(
        width=width,
        record=True,
        file=io.StringIO(),
        force_terminal=color,
        color_system="truecolor" if color else None,
    )
    console.print(renderable)
    return console.export_text(styles=color)


def _snapshot(vk: valkey_lib.Valkey, url: str) -> Snapshot:
    seed_known(vk)
    seed_trades(vk, [trade(NOW - 60 * NS_PER_S, 10.0, 1, symbol="OLD3")])
    with Monitor(url) as monitor:
        return monitor.collect(now_ns=NOW)


def test_frame_shows_numbers_and_stale_in_words(vk: valkey_lib.Valkey, valkey_url: str) -> None:
    frame = _text(render(_snapshot(vk, valkey_url), width=200), width=200)
    row = next(line for line in frame.splitlines() if line.startswith(SYM))
    for cell in (
        "5,427.00",
        "+0.50%",
        "541,580",
        "2.0s",
        "ACTIVE",
        "0.50",
        "BUY 0.80 1.0s ago",
        "2/3",
    ):
        assert cell in row, (cell, row)
    stale_row = next(line for line in frame.splitlines() if line.startswith("OLD3"))
    assert "STALE" in stale_row
    feed_row = next(line for line in frame.splitlines() if line.startswith("feed"))
    assert "STALE 10.0s" in feed_row
    assert "2025-08-08 09:00:00" in frame


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_narrow_terminals_drop_columns_instead_of_wrapping(
    vk: valkey_lib.Valkey, valkey_url: str, width: int
) -> None:
    frame = _text(render(_snapshot(vk, valkey_url), width=width), width=width)
    lines = frame.splitlines()
    assert all(len(line) <= width for line in lines), frame
    row = next(line for line in lines if line.startswith(SYM))
    assert "5,427.00" in row  # the essentials stay on the symbol's one line
    assert "ACTIVE" in row
    assert sum(1 for line in lines if SYM in line and not line.startswith("stream:")) == 1


def test_colour_marks_stale(vk: valkey_lib.Valkey, valkey_url: str) -> None:
    frame = _text(render(_snapshot(vk, valkey_url), width=200), width=200, color=True)
    assert "STALE" in frame
    assert "\x1b[" in frame


def test_a_url_function_is_asked_again_before_each_reconnect(
    vk: valkey_lib.Valkey, valkey_url: str
) -> None:
    seed_trades(vk, [trade(NOW - NS_PER_S, 10.0, 1)])
    urls = [f"valkey://127.0.0.1:{free_port()}/0", valkey_url]
    asked: list[str] = []

    def find() -> str:
        asked.append(urls[min(len(asked), 1)])
        return asked[-1]

    with Monitor(find) as monitor:
        down = monitor.collect(now_ns=NOW)
        up = monitor.collect(now_ns=NOW)
        again = monitor.collect(now_ns=NOW)
    assert (down.reachable, up.reachable, again.reachable) == (False, True, True)
    assert asked == urls  # not asked again while connected
    assert up.url == valkey_url
    assert up.symbols[0].trades == 1


def test_stale_is_judged_on_receive_time_not_event_time(
    vk: valkey_lib.Valkey, valkey_url: str
) -> None:
    def received(symbol: str, ts_event: int, ts_init: int) -> Trade:
        return Trade(symbol=symbol, ts_event=ts_event, price=10.0, quantity=1, ts_init=ts_init)

    seed_trades(
        vk,
        [
            # A replay of last week, received just now: live, with a large event-time lag.
            received("REPLAY3", NOW - 7 * 86_400 * NS_PER_S, NOW - NS_PER_S),
            # A simulation whose clock is at tomorrow's open: live, with a negative lag.
            received("SIM3", NOW + 86_400 * NS_PER_S, NOW - NS_PER_S),
            # Recent event time, but nothing received for a minute: stale.
            received("SLOW3", NOW - NS_PER_S, NOW - 60 * NS_PER_S),
        ],
    )
    with Monitor(valkey_url) as monitor:
        views = {v.symbol: v for v in monitor.collect(now_ns=NOW).symbols}
    assert (views["REPLAY3"].stale, views["REPLAY3"].lag_ticks_ms) == (False, 7 * 86_400_000.0)
    assert (views["SIM3"].stale, views["SIM3"].lag_ticks_ms) == (False, -86_400_000.0)
    assert "ahead of this machine's clock" in views["SIM3"].reasons["lag_ticks_ms"]
    assert (views["SLOW3"].stale, views["SLOW3"].state) == (True, "STALE")
    assert views["SLOW3"].received_age_ms == 60_000.0


def test_a_lag_under_a_millisecond_ahead_is_no_lag() -> None:
    from qt_cli.core.monitor.render import _lag_text

    jitter = _lag_text(-0.4, 5 * 10**9)
    assert not jitter.plain.startswith("-") and jitter.style == "green"
    ahead = _lag_text(-250.0, 5 * 10**9)
    assert ahead.plain.startswith("-") and ahead.style == "yellow"
