"""`qt query` through the CLI: formats, --output, table, errors, empty ranges."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from qt_cli.app import app
from qt_cli.core.files import read_events
from tests.core.test_chunks import make_trades
from tests.core.test_query import SYMBOL, seed_ticks

RANGE = ["--from", "2025-08-08T09:00", "--to", "2025-08-08T09:05"]


def expected(trades) -> list:
    from qt_cli.core.timeparse import parse_time

    lo, hi = parse_time("2025-08-08T09:00"), parse_time("2025-08-08T09:05")
    return [t for t in trades if lo <= t.ts_event <= hi]


def test_jsonl_on_a_pipe_by_default(cli: CliRunner, vk) -> None:
    trades = make_trades(2000)
    seed_ticks(vk, trades, chunked=1700, max_events=500)
    result = cli.invoke(app, ["query", "--symbol", SYMBOL, *RANGE])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows == [t.to_dict() for t in expected(trades)]
    assert (
        f"{len(rows):,} rows: ticks of WDOQ25 from 2025-08-08T09:00:00.000-03:00" in result.stderr
    )
    assert "(America/Sao_Paulo)" in result.stderr


def test_csv_to_stdout_and_every_format_to_files(cli: CliRunner, vk, tmp_path: Path) -> None:
    trades = make_trades(2000)
    seed_ticks(vk, trades, chunked=1700, max_events=500)
    want = expected(trades)
    result = cli.invoke(app, ["query", "-s", SYMBOL, *RANGE, "--format", "csv"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert frame["trade_id"].tolist() == [t.trade_id for t in want]
    for suffix in ("csv", "jsonl", "parquet"):
        path = tmp_path / f"out.{suffix}"
        result = cli.invoke(app, ["query", "-s", SYMBOL, *RANGE, "--output", str(path)])
        assert result.exit_code == 0, result.output
        assert result.stdout == ""
        assert f"rows to {path}" in result.stderr
        assert read_events(path) == want, suffix
    path = tmp_path / "out.json"
    assert cli.invoke(app, ["query", "-s", SYMBOL, *RANGE, "-O", str(path)]).exit_code == 0
    assert [r["seq"] for r in json.loads(path.read_text())] == [t.seq for t in want]
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == len(want)


def test_json_flag_is_a_json_array(cli: CliRunner, vk) -> None:
    trades = make_trades(300)
    seed_ticks(vk, trades)
    result = cli.invoke(app, ["query", "-s", SYMBOL, *RANGE, "--json"])
    assert result.exit_code == 0, result.output
    assert [r["trade_id"] for r in json.loads(result.stdout)] == [
        t.trade_id for t in expected(trades)
    ]


def test_table_with_a_row_limit_and_summary(cli: CliRunner, vk) -> None:
    trades = make_trades(300)
    seed_ticks(vk, trades)
    result = cli.invoke(
        app,
        ["query", "-s", SYMBOL, "--from", "2025-08-08T12:00", "--to", "2025-08-08T12:05"]
        + ["--tz", "UTC", "--format", "table", "--limit", "5"],
    )
    assert result.exit_code == 0, result.output
    assert "time (UTC)" in result.stdout
    assert "2025-08-08 12:00:00" in result.stdout
    assert "price" in result.stdout
    n = len(expected(trades))
    assert f"{n:,} rows: ticks of WDOQ25 from 2025-08-08T12:00:00.000+00:00" in result.stderr
    assert "showing the first 5 (--limit" in result.stderr


def test_other_kinds_and_as_of(cli: CliRunner, vk) -> None:
    from qt_cli.core.events import Candle, FeatureVector
    from tests.core.test_query import T0, seed_events

    seed_events(
        vk,
        [
            Candle(symbol=SYMBOL, ts_event=T0 + i * 60 * 10**9, open=1.0, close=2.0 + i)
            for i in range(3)
        ],
    )
    seed_events(vk, [FeatureVector(symbol=SYMBOL, ts_event=T0, features={"a": 1.5})])
    result = cli.invoke(app, ["query", "-s", SYMBOL, "-k", "candles:1m", *RANGE, "-f", "csv"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert frame["close"].tolist() == [2.0, 3.0, 4.0]
    assert frame["time"].iloc[0] == "2025-08-08T09:00:00.000-03:00"
    result = cli.invoke(
        app, ["query", "-s", SYMBOL, "-k", "candles", "--as-of", "2025-08-08T09:01:30"]
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["close"] for line in result.stdout.splitlines()] == [3.0]
    assert "as of 2025-08-08T09:01:30.000-03:00" in result.stderr
    result = cli.invoke(app, ["query", "-k", "features", *RANGE, "-f", "table"])
    assert result.exit_code == 0, result.output
    assert "1.5" in result.stdout


def test_empty_range_exits_zero_with_a_message(cli: CliRunner, vk) -> None:
    seed_ticks(vk, make_trades(10))
    result = cli.invoke(
        app, ["query", "-s", SYMBOL, "--from", "2025-08-07T09:00", "--to", "2025-08-07T10:00"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("no ticks of WDOQ25 from 2025-08-07T09:00:00.000-03:00")


def test_errors_are_one_clear_line(cli: CliRunner, vk) -> None:
    seed_ticks(vk, make_trades(10))
    cases = [
        (
            ["query", "--from", "2025-08-08T10:00", "--to", "2025-08-08T09:00"],
            "Error: --from (2025-08-08T10:00:00.000-03:00) is after --to "
            "(2025-08-08T09:00:00.000-03:00): swap them or widen the range",
        ),
        (
            ["query", "--from", "yesterdayish"],
            "Error: time 'yesterdayish' is not a time I can read: use ISO 8601 "
            "(2025-08-08T09:00), a date (2025-08-08), a time of day (09:00), a relative time "
            "(-15m, -2h, now) or epoch milliseconds (1754654400000)",
        ),
        (
            ["query", "--kind", "quotes"],
            "Error: unknown kind 'quotes': choose one of ticks, book, candles:1m, daily, state, "
            "features, predictions, signals, gaps, deadletter (or candles:<tf>)",
        ),
        (
            ["query", "-s", "WINQ25", *RANGE],
            "Error: no ticks stored for WINQ25 (stored: WDOQ25); check --symbol and --kind",
        ),
        (
            ["query", *RANGE, "--tz", "Nowhere/Land"],
            "Error: time zone 'Nowhere/Land' is unknown: use a tz database name such as "
            "America/Sao_Paulo or UTC",
        ),
        (
            ["query", *RANGE, "--output", "out.xlsx"],
            "Error: --output out.xlsx: cannot tell the format from the suffix; add --format "
            "csv|jsonl|json|parquet",
        ),
        (
            ["query", *RANGE, "--format", "xml"],
            "Error: unknown format 'xml': choose table, csv, jsonl, json or parquet",
        ),
    ]
    for args, message in cases:
        result = cli.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.strip() == message, args
        assert result.stdout == ""


def test_unreachable_valkey_is_exit_3(cli: CliRunner, monkeypatch) -> None:
    from tests.helpers import free_port

    monkeypatch.setenv("QT_VALKEY_URL", f"valkey://127.0.0.1:{free_port()}/0")
    result = cli.invoke(app, ["query", *RANGE])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("Error: cannot reach Valkey at valkey://127.0.0.1:")


def test_a_closed_pipe_stops_quietly(qt, vk) -> None:
    """`qt query … | head -1`: the reader goes away; no traceback, exit 0."""
    trades = make_trades(20_000, mean_gap_ms=10)
    seed_ticks(vk, trades, max_events=4096)
    proc = qt.start("query", "-s", SYMBOL, "--from", "2025-08-08T08:00", "--to", "2025-08-08T18:00")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert json.loads(first)["trade_id"] == trades[0].trade_id
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    assert "Traceback" not in stderr
    assert "Error" not in stderr


def bridge_file(valkey_url: str, tmp_path: Path, trades, **overrides) -> None:
    """Run the real bridge over a JSON lines file of `trades` (to its end, or `stop_after`)."""
    from dataclasses import replace

    from qt_cli.core.bridge import Bridge, BridgeConfig
    from tests.core.test_bridge import jsonl

    path = jsonl(tmp_path / "in.jsonl", trades)
    config = BridgeConfig(
        inputs=(str(path),), output=valkey_url, spill_dir=tmp_path / "spill", stats_interval_s=0.2
    )
    bridge = Bridge(replace(config, **overrides))
    bridge.run()
    bridge.close()


def candle_rows(cli: CliRunner, *extra: str) -> list[tuple[str, int, bool]]:
    result = cli.invoke(app, ["query", "-s", SYMBOL, "-k", "candles:1m", *RANGE, *extra])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return [(r["time"][11:19], r["trades"], r["closed"]) for r in rows]


def test_the_last_minute_of_a_bridged_file_is_a_candle(
    cli: CliRunner, vk, valkey_url: str, tmp_path: Path
) -> None:
    from tests.core.test_bridge import make_trades as trades_every

    bridge_file(valkey_url, tmp_path, trades_every(150, symbols=(SYMBOL,), step_ms=1000))
    # 09:00:00 … 09:02:29: the input ended, so 09:02 is closed with its 30 trades
    assert candle_rows(cli) == [
        ("09:00:00", 60, True),
        ("09:01:00", 60, True),
        ("09:02:00", 30, True),
    ]
    assert candle_rows(cli, "--partial") == candle_rows(cli)  # nothing is still forming


def test_partial_adds_the_candle_still_forming(
    cli: CliRunner, vk, valkey_url: str, tmp_path: Path
) -> None:
    from tests.core.test_bridge import make_trades as trades_every

    trades = trades_every(150, symbols=(SYMBOL,), step_ms=1000)
    bridge_file(valkey_url, tmp_path, trades, stop_after=140)  # stopped at 09:02:19
    assert candle_rows(cli) == [("09:00:00", 60, True), ("09:01:00", 60, True)]
    assert candle_rows(cli, "--partial") == [
        ("09:00:00", 60, True),
        ("09:01:00", 60, True),
        ("09:02:00", 20, False),  # still forming: marked closed false
    ]
    result = cli.invoke(app, ["query", "-s", SYMBOL, *RANGE, "--partial"])
    assert result.exit_code == 2
    assert (
        "--partial adds the candle still forming: use it with --kind candles:<tf>" in result.stderr
    )


def seed_a_simulated_market(vk) -> None:
    """Two symbols of the simulator (trades, book, top of book, daily, state) and real-sized
    candles, as the bridge stores them."""
    from qt_cli.core.events import Candle, Daily
    from qt_cli.core.sources.sim import SimConfig, SimulatedMarket
    from tests.core.test_query import T0, seed_events

    sim = SimulatedMarket(
        SimConfig(
            symbols=(SYMBOL, "WINV25"), seed=7, rate=0, start_ns=T0, duration_s=240, activity=0.2
        )
    )
    events = []
    while not sim.finished:
        events += sim.read(timeout_s=1.0)
    sim.close()
    events += [
        Candle(
            symbol=symbol,
            ts_event=T0 + i * 60 * 10**9,
            open=5153.0,
            high=5154.0,
            low=5151.0,
            close=5153.5,
            volume=210_588_200.0,
            quantity=4087,
            trades=1614,
            buy_volume=101_099_595.0,
            sell_volume=104_645_035.0,
            vwap=5152.6351847320775,
            closed=True,
        )
        for i in range(3)
        for symbol in (SYMBOL, "WINV25")
    ]
    events += [  # a day's totals late in a busy session
        Daily(
            symbol=symbol,
            ts_event=T0 + 30 * 10**9,
            open=5153.0,
            high=5154.0,
            low=5146.5,
            close=5152.0,
            volume=1_930_597_840.0,
            adjust=5152.5,
            buy_volume=940_360_530.0,
            sell_volume=959_642_765.0,
            quantity=37484,
            trades=14484,
            buy_quantity=18257,
            sell_quantity=18633,
            buy_trades=7167,
            sell_trades=7278,
        )
        for symbol in (SYMBOL, "WINV25")
    ]
    seed_events(vk, events)


@pytest.mark.parametrize("kind", ["ticks", "book", "candles:1m", "daily", "state"])
def test_a_table_at_80_columns_has_one_line_per_row(cli: CliRunner, vk, kind: str) -> None:
    seed_a_simulated_market(vk)
    limit = 4
    result = cli.invoke(
        app,
        ["query", "-k", kind, "-s", SYMBOL, "-s", "WINV25", *RANGE, "-f", "table"]
        + ["--limit", str(limit)],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 80, result.stdout
    # header, rule, then exactly one line per row: no cell wrapped onto a second line
    assert len(lines) == 2 + limit, result.stdout
    assert all(line.lstrip().startswith("2025-08-08 09:") for line in lines[2:]), result.stdout
    assert lines[0].split()[:2] == ["time", "(America/Sao_Paulo)"]
    if kind in ("ticks", "book"):  # several symbols: which one a row is stays visible
        assert "symbol" in lines[0].split()


def test_entries_another_program_wrote_are_skipped_and_counted(cli: CliRunner, vk) -> None:
    from qt_cli.core import keys
    from qt_cli.core.events import Candle, FeatureVector
    from tests.core.test_query import T0, seed_events

    # The seed guide's marker, as `XADD stream:candles:1m:{WDOQ25} * init true` writes it.
    for kind in ("candles:1m", "features"):
        vk.xadd(keys.stream_key(kind, SYMBOL), {"init": "true"}, id=f"{T0 // 10**6 - 1000}-0")
    candles = [Candle(symbol=SYMBOL, ts_event=T0 + i * 60 * 10**9, close=2.0 + i) for i in range(2)]
    seed_events(vk, [*candles, FeatureVector(symbol=SYMBOL, ts_event=T0, features={"a": 1.5})])
    wide = ["--from", "2025-08-08T08:50", "--to", "2025-08-08T09:05"]  # the marker is inside
    for fmt in ("csv", "jsonl", "parquet", "table"):
        result = cli.invoke(app, ["query", "-s", SYMBOL, "-k", "candles:1m", *wide, "-f", fmt])
        assert result.exit_code == 0, result.output
        assert "2 rows: candles:1m of WDOQ25" in result.stderr, fmt
        assert "skipped: stream:candles:1m:{WDOQ25} " in result.stderr
        assert "not a candles:1m entry (fields: init)" in result.stderr
    result = cli.invoke(app, ["query", "-s", SYMBOL, "-k", "candles:1m", *wide, "-f", "csv"])
    assert pd.read_csv(io.StringIO(result.stdout))["close"].tolist() == [2.0, 3.0]
    result = cli.invoke(app, ["query", "-k", "features", *wide, "--json"])
    assert result.exit_code == 0, result.output
    assert [row["features"] for row in json.loads(result.stdout)] == [{"a": 1.5}]
    result = cli.invoke(
        app, ["query", "-k", "features", "--as-of", "2025-08-08T08:59:59.5", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
