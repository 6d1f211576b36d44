"""`qt bridge` through the CLI: options, output, errors (real Valkey, files and stdin)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import valkey
from typer.testing import CliRunner

from qt_cli.app import app
from qt_cli.core import keys
from qt_cli.core.events import NS_PER_S, Trade
from tests.helpers import QtProcesses, free_port

T0 = 1_754_654_400 * NS_PER_S


def lines(n: int, *, session: str = "cli1.ticks", symbols=("WDOQ25", "WINV25")) -> bytes:
    out = []
    for i in range(n):
        ts = T0 + i * 250_000_000
        trade = Trade(
            symbol=symbols[i % len(symbols)],
            ts_event=ts,
            price=5000.0 + i % 9,
            quantity=1 + i % 3,
            volume=(5000.0 + i % 9) * (1 + i % 3) * 10,
            aggressor="buy" if i % 2 else "sell",
            ts_init=ts + 1000,
        )
        out.append(orjson.dumps({**trade.to_dict(), "session": session, "seq": i + 1}))
    return b"\n".join(out) + b"\n"


def test_help_has_an_example(cli: CliRunner) -> None:
    result = cli.invoke(app, ["bridge", "--help"])
    assert result.exit_code == 0, result.output
    assert "Example: qt bridge --in tcp://127.0.0.1:5555" in result.stdout
    for option in ("--in", "--out", "--replay", "--timeframe", "--maxlen", "--stop-after"):
        assert option in result.stdout


def test_stdin_to_valkey_with_json_totals(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str
) -> None:
    # A real process: stdin is read through its file descriptor.
    result = qt.run(
        "bridge", "--in", "-", "--out", valkey_url, "--timeframe", "1m,5m", "--json",
        input=lines(600) + b"garbage\n",
    )  # fmt: skip
    assert result.returncode == 0, result.output
    totals = json.loads(result.stdout)
    assert (totals["received"], totals["written"], totals["deadletters"]) == (600, 600, 1)
    assert totals["stopped_by"] == "end of input"
    assert vk.xlen(keys.stream_key("ticks", "WDOQ25")) == 300
    assert vk.xlen(keys.stream_key("deadletter")) == 1
    assert vk.exists(keys.stream_key("candles:1m", "WDOQ25"))  # 150 s of ticks


def test_a_file_twice_is_stored_once_and_the_summary_says_so(
    cli: CliRunner, vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "ticks.jsonl"
    path.write_bytes(lines(100))
    first = cli.invoke(app, ["bridge", "--in", str(path), "--out", valkey_url])
    assert first.exit_code == 0, first.output
    assert "received 100, written 100" in first.stderr
    second = cli.invoke(app, ["bridge", "--in", str(path), "--out", valkey_url])
    assert second.exit_code == 0, second.output
    assert "written 0" in second.stderr and "duplicates 100" in second.stderr
    assert second.stdout == ""


def test_symbol_filter_maxlen_and_no_derived_data(
    cli: CliRunner, vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "ticks.jsonl"
    path.write_bytes(lines(2000, symbols=("WDOQ25", "PETR4")))
    result = cli.invoke(
        app,
        [
            "bridge", "--in", str(path), "--out", valkey_url, "--symbol", "WDOQ25",
            "--maxlen", "100", "--no-candles", "--no-chunks", "--batch-size", "50", "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)
    assert (totals["written"], totals["filtered"], totals["candles"]) == (1000, 1000, 0)
    assert 100 <= vk.xlen(keys.stream_key("ticks", "WDOQ25")) < 300
    assert not vk.exists(keys.stream_key("ticks", "PETR4"))
    assert not vk.exists(keys.history_key("ticks", "WDOQ25"))


def test_stop_after(cli: CliRunner, vk: valkey.Valkey, valkey_url: str, tmp_path: Path) -> None:
    path = tmp_path / "ticks.jsonl"
    path.write_bytes(lines(500))
    result = cli.invoke(
        app, ["bridge", "--in", str(path), "--out", valkey_url, "--stop-after", "123", "--json"]
    )
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)
    assert (totals["received"], totals["written"], totals["stopped_by"]) == (123, 123, "stop-after")


def test_the_configured_valkey_is_the_default_output(
    cli: CliRunner, vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "ticks.jsonl"
    path.write_bytes(lines(10))
    result = cli.invoke(app, ["bridge", "--in", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"] == valkey_url


def test_bad_options_are_usage_errors(cli: CliRunner, valkey_url: str) -> None:
    result = cli.invoke(app, ["bridge", "--in", "-", "--timeframe", "7m"])
    assert result.exit_code == 2
    assert "Error: timeframe '7m': must divide a day evenly" in result.stderr
    result = cli.invoke(app, ["bridge", "--in", "-", "--out", "tcp://127.0.0.1:5555"])
    assert result.exit_code == 2
    assert "the bridge writes to Valkey" in result.stderr
    result = cli.invoke(app, ["bridge", "--in", "-", "--out", valkey_url, "--out", valkey_url])
    assert result.exit_code == 2
    assert "give one --out" in result.stderr
    result = cli.invoke(app, ["bridge", "--in", "nope.txt", "--out", valkey_url])
    assert result.exit_code == 2
    assert "not a known file type" in result.stderr
    result = cli.invoke(app, ["bridge", "--in", "-", "--out", valkey_url, "-s", "a:b{c}"])
    assert result.exit_code == 2, result.output
    assert "Error: symbol 'a:b{c}': use letters, digits, '.', '_' or '-'" in result.stderr


def test_unreachable_valkey_exits_3_with_a_hint(cli: CliRunner) -> None:
    url = f"valkey://127.0.0.1:{free_port()}/0"
    result = cli.invoke(app, ["bridge", "--in", "-", "--out", url])
    assert result.exit_code == 3
    assert f"cannot reach Valkey at {url}" in result.stderr
    assert "Traceback" not in result.output


def test_duration_stops_a_bridge_that_hears_nothing(
    cli: CliRunner, vk: valkey.Valkey, valkey_url: str
) -> None:
    quiet = f"tcp://127.0.0.1:{free_port()}"
    result = cli.invoke(
        app, ["bridge", "--in", quiet, "--replay", "none", "--duration", "0.3s", "--json"]
    )
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)
    assert (totals["received"], totals["stopped_by"]) == (0, "duration")
    assert vk.hget(keys.stats_key("bridge", "default"), "stage") == b"bridge"


def test_a_bad_input_is_reported_before_any_server_starts(
    cli: CliRunner, isolated_settings: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for args, message in (
        (["--in", "bogus://x"], "Error: endpoint 'bogus://x': unknown scheme 'bogus'"),
        (["--in", str(empty)], f"Error: --in {empty} is empty (nothing to replay)"),
        (
            ["--in", str(tmp_path / "gone.csv")],
            f"Error: --in {tmp_path / 'gone.csv'}: no such file",
        ),
    ):
        result = cli.invoke(app, ["bridge", *args, "--duration", "1s"])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(message), result.stderr
        assert "starting the managed server" not in result.stderr
        assert not (isolated_settings / "valkey").exists()


def test_a_nelogica_export_is_read_as_the_feed_reads_it(
    cli: CliRunner, vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    from tests.core.test_replay import nelogica_csv, nelogica_row

    rows = [nelogica_row(i, i + 1) for i in range(5)]
    rows.insert(2, nelogica_row(1, 99, ticker="a:b{c}"))  # line 4
    path = nelogica_csv(tmp_path / "wdo.csv", rows)
    result = cli.invoke(app, ["bridge", "--in", str(path), "--out", valkey_url, "--json"])
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)
    assert (totals["written"], totals["deadletters"]) == (5, 1)
    stored = vk.xrange(keys.stream_key("ticks", "WDOQ25"))
    assert [int(f[b"trade_id"]) for _, f in stored] == [1, 2, 3, 4, 5]
    assert stored[0][1][b"buyer_name"] == b"XP"
    ((_, letter),) = vk.xrange(keys.stream_key("deadletter"))
    assert letter[b"reason"] == f"{path}:4: ticker 'a:b{{c}}' is not a ticker (letters, digits, '.', '_', '-')".encode()  # fmt: skip


def test_a_file_gets_the_verdict_the_feed_gives_it(
    cli: CliRunner, vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    for name in ("empty.csv", "empty.jsonl"):
        empty = tmp_path / name
        empty.write_text("")
        result = cli.invoke(app, ["bridge", "--in", str(empty), "--out", valkey_url])
        assert result.exit_code == 2, result.output
        assert result.stderr.endswith(f"Error: --in {empty} is empty (nothing to replay)\n")
    tob = tmp_path / "tob.csv"
    tob.write_text("type,symbol,bid_price,bid_qty\n" + "tob,WDOQ25,5000.5,3\n" * 50)
    result = cli.invoke(app, ["bridge", "--in", str(tob), "--out", valkey_url])
    assert result.exit_code == 4, result.output
    assert result.stderr.splitlines()[-1] == (
        f"Error: nothing valid in {tob}: all 50 records were skipped "
        f"(first: {tob}:2: field 'ts_event' is missing)"
    )
    assert vk.xlen(keys.stream_key("deadletter")) == 50  # what was bad is still kept


def test_time_unit_for_files_and_stdin(
    cli: CliRunner, vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "ms.csv"
    path.write_text(
        "type,symbol,ts_event,price,quantity\n"
        + "".join(f"tick,WDOQ25,{T0 // 10**6 + i},5000.5,1\n" for i in range(3))
    )
    result = cli.invoke(app, ["bridge", "--in", str(path), "--out", valkey_url])
    assert result.exit_code == 4, result.output
    assert f"ts_event {T0 // 10**6} looks like milliseconds; use --time-unit ms" in result.stderr
    result = cli.invoke(
        app, ["bridge", "--in", str(path), "--out", valkey_url, "--time-unit", "ms", "--json"]
    )
    assert result.exit_code == 0, result.output
    stored = vk.xrange(keys.stream_key("ticks", "WDOQ25"))
    assert [int(f[b"ts_event"]) for _, f in stored] == [T0 + i * 10**6 for i in range(3)]
    assert all(int(f[b"ts_init"]) > T0 for _, f in stored)  # received now, not 0
    result = cli.invoke(
        app, ["bridge", "--in", "tcp://127.0.0.1:5555", "--out", valkey_url, "--time-unit", "s"]
    )
    assert result.exit_code == 2
    assert "--time-unit applies to file and stdin inputs" in result.stderr
