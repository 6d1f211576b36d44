"""`qt cleanup` through the CLI: dry run, real run, --json, errors."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from qt_cli.app import app
from qt_cli.core import keys

DAY_MS = 86_400_000
TICKS = keys.stream_key("ticks", "WDOQ25")
BOOK = keys.stream_key("book", "WDOQ25")


def seed(vk) -> None:
    """Entries 40, 10 and 1 days old (ids are event time, as the bridge writes them)."""
    now_ms = time.time_ns() // 1_000_000
    pipe = vk.pipeline(transaction=False)
    for key in (TICKS, BOOK):
        for age_days, count in ((40, 300), (10, 20), (1, 10)):
            base = now_ms - age_days * DAY_MS
            for i in range(count):
                pipe.xadd(key, {"price": "1", "i": str(i)}, id=f"{base + i}-*")
    pipe.execute()


def test_dry_run_then_real_with_json(cli: CliRunner, vk) -> None:
    seed(vk)
    args = ["cleanup", "--retention", "30d", "--retention", "book=5d", "--json"]
    dry = cli.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert {s["key"]: s["removed"] for s in report["streams"]} == {BOOK: 320, TICKS: 300}
    assert vk.xlen(TICKS) == 330
    real = cli.invoke(app, args)
    assert real.exit_code == 0, real.output
    report = json.loads(real.stdout)
    streams = {s["key"]: s for s in report["streams"]}
    assert streams[TICKS]["entries_before"] == 330
    assert streams[TICKS]["entries_after"] == 30
    assert streams[BOOK]["entries_after"] == 10
    assert report["removed"] == 620
    assert report["freed_bytes"] > 0
    assert vk.xlen(TICKS) == 30


def test_table_and_summary(cli: CliRunner, vk) -> None:
    seed(vk)
    result = cli.invoke(app, ["cleanup", "--retention", "book=5d", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would trim (dry run)" in result.stdout
    assert BOOK in result.stdout
    assert result.stderr.startswith(
        "1 streams matching 'stream:*': would remove 320 entries, about "
    )
    assert "1 without a policy left alone" in result.stderr
    assert vk.xlen(BOOK) == 330


def test_max_entries_and_pattern(cli: CliRunner, vk) -> None:
    seed(vk)
    result = cli.invoke(
        app, ["cleanup", "--max-entries", "5", "--pattern", "stream:ticks:*", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert [s["key"] for s in json.loads(result.stdout)["streams"]] == [TICKS]
    assert vk.xlen(TICKS) == 5
    assert vk.xlen(BOOK) == 330


def test_errors(cli: CliRunner, vk) -> None:
    result = cli.invoke(app, ["cleanup"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: say what to keep: --retention 30d (per kind: book=5d) or --max-entries N"
    )
    result = cli.invoke(app, ["cleanup", "--retention", "quotes=5d"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(
        "Error: --retention 'quotes=5d': unknown kind 'quotes'; choose from ticks, book"
    )


def test_the_table_at_80_columns_has_one_line_per_stream(cli: CliRunner, vk) -> None:
    """The longest keys the bridge writes, six-digit counts, MiB freed: still one line each."""
    now_ms = time.time_ns() // 1_000_000
    streams = [
        BOOK,
        keys.stream_key(keys.candle_kind("1m") + ":partial", "WDOQ25"),
        keys.history_key("ticks", "WDOQ25"),
        keys.stream_key("predictions", "WDOQ25"),
    ]
    payload = "x" * 150
    for key in streams:
        pipe = vk.pipeline(transaction=False)
        for i in range(100_001 if key == BOOK else 2_000):
            pipe.xadd(key, {"price": "5153.5", "v": payload}, id=f"{now_ms - 40 * DAY_MS + i}-*")
        pipe.execute()
    result = cli.invoke(app, ["cleanup", "--retention", "30d", "--dry-run"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 80, result.stdout
    # title, header, rule, then exactly one line per stream, whose key is shown whole
    assert len(lines) == 3 + len(streams), result.stdout
    assert sorted(line.split()[0] for line in lines[3:]) == sorted(streams), result.stdout
    assert "100,001" in result.stdout and "MiB" in result.stdout
