"""`qt feed` through CliRunner: option errors, outputs, totals as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from qt_cli.app import app
from qt_cli.core import keys
from qt_cli.core.errors import UsageError
from qt_cli.core.journal import JournalReader
from qt_cli.core.timeparse import parse_time
from tests.core.test_replay import nelogica_csv, nelogica_row
from tests.helpers import eventually, tcp_endpoint


def feed(cli: CliRunner, *args: str, input: str | None = None):  # noqa: ANN201
    return cli.invoke(app, ["feed", *args], input=input)


def zmq_outs() -> list[str]:
    """Random ports for every endpoint, so tests never bind the defaults."""
    return [
        arg
        for kind in ("ticks", "book", "history", "replay")
        for arg in ("--out", f"{kind}={tcp_endpoint()}")
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "choose exactly one source: --dll PATH, --sim, --replay FILE or --replay-journal DIR"),
        (["--sim", "--replay", "x.csv"], "(got --sim, --replay)"),
        (["--sim", "--out", "ticks=tcp://127.0.0.1"], "the port is missing"),
        (["--sim", "--out", "ticks=gopher://x"], "unknown scheme 'gopher'"),
        (["--sim", "--out", "tcp://127.0.0.1:7000"], "a ZeroMQ endpoint binds one channel"),
        (  # .json is one JSON array everywhere (qt query --output); a stream is JSON lines
            ["--sim", "--stop-after", "1", "--out", "events.json"],
            "endpoint 'events.json': .json means one JSON array",
        ),
        (
            ["--sim", "--fsync", "sometimes"],
            "--fsync 'sometimes': choose one of none, batch, always",
        ),
        (["--replay", "missing.csv"], "--replay missing.csv: no such file"),
        (["--replay-journal", "nowhere"], "--replay-journal nowhere: no such directory"),
        (["--dll", "missing.so"], "--dll missing.so: no such file"),
        (["--sim", "--speed", "-2"], "--speed -2: 0 (as fast as possible) or positive"),
        (["--sim", "--history-from", "2025-08-08"], "--history-from/--history-to apply to --dll"),
        (
            ["--replay-journal", ".", "--rate", "0"],
            "--rate, --seed, --start and --alpha apply to --sim only",
        ),
        (["--sim", "--symbol", "WDO Q25"], "symbol 'WDO Q25': use letters, digits, '.', '_' or"),
        (  # --stop-after: were the symbol taken, the run would end rather than hang
            ["--sim", "--symbol", "a:b{c}", "--stop-after", "1", "--out", "-"],
            "symbol 'a:b{c}': the exchange is one letter",
        ),
        (["--sim", "--symbol", "a{c}", "--stop-after", "1"], "symbol 'A{C}': use letters, digits"),
        (["--sim", "--time-unit", "us"], "--time-unit applies to --replay FILE only"),
        (["--replay", "x.csv", "--time-unit", "h"], "--time-unit 'h': choose one of s, ms, us, ns"),
    ],
)
def test_bad_options_are_one_line_usage_errors(
    cli: CliRunner, args: list[str], message: str
) -> None:
    result = feed(cli, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("Error: ")
    assert "Traceback" not in result.output


def test_same_port_for_two_outputs_is_refused(cli: CliRunner) -> None:
    uri = tcp_endpoint()
    result = feed(cli, "--sim", "--out", f"ticks={uri}", "--out", f"book={uri}")
    assert result.exit_code == 2
    assert "is given to two outputs" in result.stderr


def test_dll_credentials_come_only_from_the_environment(cli: CliRunner, tmp_path: Path) -> None:
    dll = tmp_path / "ProfitDLL.so"
    dll.write_bytes(b"")
    result = feed(cli, "--dll", str(dll), "--symbol", "WDOQ25")
    assert result.exit_code == 2
    assert "PROFIT_ACTIVATION_KEY, PROFIT_USER, PROFIT_PASSWORD in the environment" in result.stderr


def test_sim_json_totals_and_a_gap_free_jsonl_file(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    journal = tmp_path / "journal"
    result = feed(
        cli,
        "--sim",
        "--rate", "0",
        "--seed", "7",
        "--stop-after", "300",
        "--out", str(out),
        "--journal", str(journal),
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)
    assert totals["events"] == 300 and totals["stopped_by"] == "stop_after"
    assert totals["source"] == "sim"
    assert sum(totals["by_kind"].values()) == 300
    assert totals["journal"]["records"] == 300 and totals["journal"]["dir"] == str(journal)
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(rows) == 300
    by_session: dict[str, list[int]] = {}
    for row in rows:
        by_session.setdefault(row["session"], []).append(row["seq"])
    for session, seqs in by_session.items():
        channel = session.split(".")[1]
        assert session == f"{totals['run_id']}.{channel}"
        assert seqs == list(range(1, len(seqs) + 1))
        assert totals["channels"][channel]["last_seq"] == len(seqs)
    assert sum(ch["published"] for ch in totals["channels"].values()) == 300
    assert sorted(JournalReader(journal).sessions()) == sorted(by_session)


def test_out_dash_writes_json_lines_to_stdout(cli: CliRunner, tmp_path: Path) -> None:
    path = nelogica_csv(tmp_path / "wdo.csv", [nelogica_row(i, i + 1) for i in range(5)])
    result = feed(
        cli, "--replay", str(path), "--speed", "0", "--out", "-", "--journal", str(tmp_path / "j")
    )
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [line["trade_id"] for line in lines] == [1, 2, 3, 4, 5]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert {line["type"] for line in lines} == {"tick"}
    assert "published 5 events (tick 5)" in result.stderr
    assert "stopped by end" in result.stderr
    assert "1-second resolution" in result.stderr


def test_replay_over_zmq_with_bad_lines_and_strict(cli: CliRunner, tmp_path: Path) -> None:
    rows = [nelogica_row(0, 1), "WDOQ25,20250808,090000", nelogica_row(1, 3)]
    path = nelogica_csv(tmp_path / "bad.csv", rows)
    result = feed(
        cli, "--replay", str(path), "--speed", "0", *zmq_outs(), "--journal", str(tmp_path / "j"),
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)
    assert totals["events"] == 2 and totals["rejected"] == 1
    assert totals["problems"] == [f"{path}:3: expected 11 fields, got 3: 'WDOQ25,20250808,090000'"]
    assert f"{path}:3: expected 11 fields" in result.stderr
    strict = feed(
        cli, "--replay", str(path), "--speed", "0", "--strict", *zmq_outs(),
        "--journal", str(tmp_path / "j2"),
    )  # fmt: skip
    assert strict.exit_code == 4
    assert f"Error: {path}:3: expected 11 fields" in strict.stderr


def test_replay_journal_republishes_with_new_sessions(cli: CliRunner, tmp_path: Path) -> None:
    first = feed(
        cli, "--sim", "--rate", "0", "--stop-after", "120", "--out", str(tmp_path / "a.jsonl"),
        "--journal", str(tmp_path / "j1"), "--json",
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    again = feed(
        cli, "--replay-journal", str(tmp_path / "j1"), "--speed", "0",
        "--out", str(tmp_path / "b.jsonl"), "--journal", str(tmp_path / "j2"), "--json",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    a = [orjson.loads(x) for x in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    b = [orjson.loads(x) for x in (tmp_path / "b.jsonl").read_bytes().splitlines()]
    assert json.loads(again.stdout)["events"] == 120 and len(b) == 120
    strip = ("session", "seq", "origin", "origin_seq")

    def key(row: dict[str, object]) -> str:
        return orjson.dumps({k: v for k, v in row.items() if k not in strip}).decode()

    assert sorted(map(key, a)) == sorted(map(key, b))
    # new transport sessions; each message keeps the identity it was first published with
    assert sorted((r["origin"], r["origin_seq"]) for r in b) == sorted(
        (r["session"], r["seq"]) for r in a
    )
    assert {r["session"].split(".")[0] for r in a}.isdisjoint(
        {r["session"].split(".")[0] for r in b}
    )


def test_csv_output_per_channel(cli: CliRunner, tmp_path: Path) -> None:
    result = feed(
        cli, "--sim", "--rate", "0", "--stop-after", "200",
        "--out", f"ticks={tmp_path / 'ticks.csv'}", "--out", f"book={tmp_path / 'book.parquet'}",
        "--out", f"history={tmp_path / 'history.csv'}", "--journal", str(tmp_path / "j"), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)
    from qt_cli.core.files import read_events

    ticks = read_events(tmp_path / "ticks.csv")
    book = read_events(tmp_path / "book.parquet")
    assert len(ticks) == totals["channels"]["ticks"]["published"]
    assert len(book) == totals["channels"]["book"]["published"]
    assert [e.seq for e in book] == list(range(1, len(book) + 1))
    assert {e.TYPE for e in book} <= {"book", "tob"}


# --- the core the command calls (qt_cli/core/feed.py) ------------------------------------------


def test_outputs_default_to_the_configured_endpoints() -> None:
    from qt_cli.core.feed import parse_outputs

    outputs = parse_outputs([])
    assert outputs.channels == {
        "ticks": "tcp://127.0.0.1:5555",
        "book": "tcp://127.0.0.1:5556",
        "history": "tcp://127.0.0.1:5557",
    }
    assert outputs.replay == "tcp://127.0.0.1:5559"


def test_a_bare_output_takes_every_channel_not_given_by_kind() -> None:
    from qt_cli.core.feed import parse_outputs

    outputs = parse_outputs(["-", "book=tcp://127.0.0.1:7001"])
    assert outputs.channels == {"ticks": "-", "book": "tcp://127.0.0.1:7001", "history": "-"}
    assert outputs.replay == "tcp://127.0.0.1:5559"  # a ZeroMQ channel remains
    assert parse_outputs(["-"]).replay == ""  # nothing to recover over stdout
    assert parse_outputs(["replay=none"]).replay == ""
    with pytest.raises(UsageError, match="--out book= given twice"):
        parse_outputs(["book=-", "book=x.jsonl"])
    with pytest.raises(UsageError, match="only one output for every channel"):
        parse_outputs(["-", "x.jsonl"])


def test_events_are_routed_to_their_channel() -> None:
    from qt_cli.core.events import BookUpdate, Daily, State, TopOfBook, Trade
    from qt_cli.core.feed import channel_of

    assert channel_of(Trade("X", 1, price=1.0)) == "ticks"
    assert channel_of(Trade("X", 1, price=1.0, history=True)) == "history"
    assert channel_of(State("*", 1)) == "ticks"
    assert channel_of(Daily("X", 1)) == "ticks"
    assert channel_of(BookUpdate("X", 1)) == "book"
    assert channel_of(TopOfBook("X", 1)) == "book"


def test_feed_stop_from_another_thread_flushes_and_totals(tmp_path: Path) -> None:
    import threading

    from qt_cli.core.feed import Feed, parse_outputs
    from qt_cli.core.sources.sim import SimConfig, SimulatedMarket

    out = tmp_path / "live.jsonl"
    feed_ = Feed(
        SimulatedMarket(SimConfig(seed=3, rate=2000)),
        parse_outputs([str(out)]),
        journal_dir=tmp_path / "j",
        source_name="sim",
    )
    feed_.open()
    timer = threading.Timer(0.5, feed_.stop)
    timer.start()
    try:
        totals = feed_.run()
    finally:
        feed_.close()
        timer.cancel()
    assert totals["stopped_by"] == "signal"
    assert totals["events"] > 0
    assert len(out.read_bytes().splitlines()) == totals["events"]
    assert (
        JournalReader(tmp_path / "j").last_seq(totals["channels"]["book"]["session"])
        == (totals["channels"]["book"]["last_seq"])
    )


# --- journal retention ---------------------------------------------------------------------------


def _old_journal(journal: Path, session: str = "oldrun.ticks", days: float = 10) -> list[Path]:
    """A finished run's journal, several segments, all last written `days` ago."""
    import os
    import time

    from qt_cli.core.journal import JournalWriter

    writer = JournalWriter(journal, fsync="none", segment_bytes=1024)
    for seq in range(1, 101, 10):
        writer.append_batch(session, seq, [(b"tick_X", b"x" * 40)] * 10)
        writer.commit()
    writer.close()
    files = sorted(journal.glob(f"*/{session}_*"))
    when = time.time() - days * 86_400
    for path in files:
        os.utime(path, (when, when))
    return files


def test_journal_retention_trims_old_segments_when_the_feed_starts(
    cli: CliRunner, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    old = _old_journal(journal)
    recent = _old_journal(journal, "recentrun.ticks", days=2)
    assert len(old) >= 4
    result = feed(
        cli,
        "--sim", "--rate", "0", "--stop-after", "50", "--out", str(tmp_path / "e.jsonl"),
        "--journal", str(journal), "--journal-retention", "7d", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)
    assert totals["journal"]["retention"]["retention"] == "7d"
    assert totals["journal"]["retention"]["segments_removed"] == len(old) // 2  # data + index
    assert not [p for p in old if p.exists()]
    assert all(p.exists() for p in recent)
    sessions = JournalReader(journal).sessions()
    assert "oldrun.ticks" not in sessions and "recentrun.ticks" in sessions
    assert f"{totals['run_id']}.ticks" in sessions
    again = feed(
        cli,
        "--sim", "--rate", "0", "--stop-after", "5", "--out", str(tmp_path / "e2.jsonl"),
        "--journal", str(journal), "--journal-retention", "1d",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    removed = len(recent) // 2  # recentrun's segments, 2 days old (data + index files)
    assert f"; retention 1d removed {removed} old segments (" in again.stderr
    assert not any(p.exists() for p in recent)


def test_journal_retention_must_be_a_duration(cli: CliRunner, tmp_path: Path) -> None:
    result = feed(cli, "--sim", "--journal", str(tmp_path), "--journal-retention", "forever")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(
        "Error: --journal-retention 'forever': expected a duration (7d, 12h)"
    )


def test_a_running_feed_trims_when_a_segment_rolls(tmp_path: Path) -> None:
    import threading

    from qt_cli.core.feed import Feed, parse_outputs
    from qt_cli.core.sources.sim import SimConfig, SimulatedMarket

    journal = tmp_path / "j"
    notices: list[str] = []
    feed_ = Feed(
        SimulatedMarket(SimConfig(seed=3, rate=2000)),
        parse_outputs([str(tmp_path / "live.jsonl")]),
        journal_dir=journal,
        source_name="sim",
        journal_retention="7d",
        retention_interval_s=3600,  # only a roll wakes it up during this test
        journal_segment_bytes=16 * 1024,
        on_notice=notices.append,
    )
    feed_.open()
    runner = threading.Thread(target=feed_.run, daemon=True)
    runner.start()
    try:
        eventually(lambda: feed_.retention is not None and feed_.retention.runs >= 1)
        old = _old_journal(journal)  # appears after the pass at start
        eventually(lambda: not any(p.exists() for p in old), message="trimmed at a roll")
    finally:
        feed_.stop()
        runner.join(20)
        feed_.close()
    assert any("journal retention 7d: removed" in n for n in notices)
    sessions = JournalReader(journal).sessions()
    own = [len(v) for k, v in sessions.items() if k.startswith(f"{feed_.run_id}.")]
    assert max(own) >= 2  # it rolled, and kept its own (recent) segments
    assert "oldrun.ticks" not in sessions


def sim_rows(cli: CliRunner, tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    out = tmp_path / "sim.jsonl"
    result = feed(
        cli, "--sim", "--seed", "7", "--out", str(out), "--journal", str(tmp_path / "j"), *args
    )
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in out.read_bytes().splitlines()], result.stderr


def test_start_picks_the_first_venue_time(cli: CliRunner, tmp_path: Path) -> None:
    rows, talk = sim_rows(
        cli, tmp_path, "--rate", "0", "--stop-after", "50", "--start", "2025-07-01T10:00"
    )
    assert rows[0]["ts_event"] == parse_time("2025-07-01T10:00")
    assert (
        "simulated WDOQ25 from 2025-07-01 10:00:00 São Paulo, seed 7, as fast as possible" in talk
    )
    rows, _ = sim_rows(cli, tmp_path, "--rate", "0", "--stop-after", "50", "--start", "2025-07-05")
    assert rows[0]["ts_event"] == parse_time("2025-07-07T09:00")  # a Saturday: Monday's open
    result = feed(cli, "--sim", "--start", "soon")
    assert result.exit_code == 2 and "time 'soon' is not a time I can read" in result.stderr


def test_a_fast_run_continues_after_what_valkey_holds(cli: CliRunner, tmp_path: Path, vk) -> None:
    """`qt feed --sim --rate 0` twice the same day: the second run starts after the first."""
    midday_ms = parse_time("2025-08-04T12:34:56.789") // 1_000_000
    vk.xadd(keys.stream_key("state", "WDOQ25"), {"text": "opened"}, id=f"{midday_ms - 9}-0")
    vk.xadd(keys.stream_key("ticks", "WDOQ25"), {"price": "5000"}, id=f"{midday_ms}-0")
    rows, talk = sim_rows(cli, tmp_path, "--rate", "0", "--stop-after", "50")
    assert rows[0]["ts_event"] == midday_ms * 1_000_000 + 1_000_000
    # from the last stored price (5,000: below where WDO levels are drawn, 5,060-5,540)
    first_trade = next(row for row in rows if row["type"] == "tick")
    assert 4_975 <= first_trade["price"] <= 5_025, first_trade
    assert "starting from the last stored price of WDOQ25 5,000.00" in talk
    assert (
        f"Valkey at {vk_url(vk)} holds WDOQ25 up to 2025-08-04T12:34:56.789-03:00: the "
        "simulation continues after it (--start to choose)"
    ) in talk
    # so does a run at N events/s (its venue time does not follow the wall clock either)
    rows, _ = sim_rows(cli, tmp_path, "--rate", "100000", "--stop-after", "50")
    assert rows[0]["ts_event"] == midday_ms * 1_000_000 + 1_000_000
    # a trimmed (empty) stream still counts: its last id stays
    friday_close_ms = parse_time("2025-08-08T18:00") // 1_000_000
    book = keys.stream_key("book", "WDOQ25")
    vk.xadd(book, {"price": "5000"}, id=f"{friday_close_ms}-0")
    vk.xtrim(book, maxlen=0)
    rows, _ = sim_rows(cli, tmp_path, "--rate", "0", "--stop-after", "50")
    assert rows[0]["ts_event"] == parse_time("2025-08-11T09:00")  # after Friday's close: Monday
    # another symbol has nothing stored: today's open, and the user is told
    rows, talk = sim_rows(cli, tmp_path, "--rate", "0", "--stop-after", "50", "--symbol", "WINV25")
    assert (
        f"Valkey at {vk_url(vk)} holds nothing of WINV25: the simulation starts at today's" in talk
    )


def test_a_fast_run_without_valkey_says_where_it_starts(cli: CliRunner, tmp_path: Path) -> None:
    _, talk = sim_rows(cli, tmp_path, "--rate", "0", "--stop-after", "5")
    assert (
        "no Valkey configured or running to continue after: the simulation starts at today's "
        "session open"
    ) in talk


def vk_url(vk) -> str:
    kwargs = vk.connection_pool.connection_kwargs
    return f"valkey://{kwargs['host']}:{kwargs['port']}/0"


def test_a_replay_with_nothing_valid_exits_4_in_one_line(cli: CliRunner, tmp_path: Path) -> None:
    tob = tmp_path / "tob.csv"  # top of book without ts_event: 50 of 50 bad
    tob.write_text("type,symbol,bid_price,bid_qty\n" + "tob,WDOQ25,5000.5,3\n" * 50)
    result = feed(cli, "--replay", str(tob), "--speed", "0", "--out", str(tmp_path / "o.jsonl"),
                  "--journal", str(tmp_path / "j"))  # fmt: skip
    assert result.exit_code == 4, result.output
    assert result.stderr.splitlines()[-1] == (
        f"Error: nothing valid in {tob}: all 50 records were skipped "
        f"(first: {tob}:2: field 'ts_event' is missing)"
    )
    for name in ("empty.csv", "empty.jsonl"):
        empty = tmp_path / name
        empty.write_text("")
        result = feed(cli, "--replay", str(empty), "--journal", str(tmp_path / "j"))
        assert result.exit_code == 2, result.output
        assert result.stderr == f"Error: --replay {empty} is empty (nothing to replay)\n"


def test_times_in_microseconds_are_refused_with_a_hint_or_converted(
    cli: CliRunner, tmp_path: Path
) -> None:
    stamp_us = 1_723_112_400_000_000  # 2024-08-08 10:20 UTC in microseconds
    path = tmp_path / "us.csv"
    path.write_text(f"type,symbol,ts_event,price,quantity\ntick,WDOQ25,{stamp_us},5000.5,1\n")
    args = ["--replay", str(path), "--speed", "0", "--journal", str(tmp_path / "j")]
    result = feed(cli, *args, "--out", str(tmp_path / "a.jsonl"))
    assert result.exit_code == 4, result.output
    assert f"{path}:2: ts_event {stamp_us} looks like microseconds; use --time-unit us" in (
        result.stderr
    )
    result = feed(cli, *args, "--time-unit", "us", "--out", "-")
    assert result.exit_code == 0, result.output
    (row,) = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert row["ts_event"] == stamp_us * 1000
    assert row["timestamp"] == "2024-08-08T07:20:00.000-03:00"
    assert row["ts_init"] > row["ts_event"]  # the time of receipt, not 0


def test_a_nelogica_ticker_the_keys_refuse_is_a_bad_line(cli: CliRunner, tmp_path: Path) -> None:
    path = nelogica_csv(
        tmp_path / "t.csv", [nelogica_row(0, 1), nelogica_row(1, 2, ticker="a:b{c}")]
    )
    result = feed(
        cli, "--replay", str(path), "--speed", "0", "--out", "-", "--journal", str(tmp_path / "j")
    )
    assert result.exit_code == 0, result.output
    assert [orjson.loads(line)["symbol"] for line in result.stdout.splitlines()] == ["WDOQ25"]
    assert f"{path}:3: ticker 'a:b{{c}}' is not a ticker" in result.stderr
