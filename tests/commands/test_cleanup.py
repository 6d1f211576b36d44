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


# --- the feed's journal ------------------------------------------------------------------------


def old_journal(journal, session: str, days: float) -> list:
    """A journal session of several segments, all last written `days` ago; its data files."""
    import os

    from qt_cli.core.journal import JournalWriter

    writer = JournalWriter(journal, fsync="none", segment_bytes=1024)
    for seq in range(1, 101, 10):
        writer.append_batch(session, seq, [(b"tick_X", b"x" * 40)] * 10)
        writer.commit()
    writer.close()
    when = time.time() - days * 86_400
    for path in journal.glob(f"*/{session}_*"):
        os.utime(path, (when, when))
    return sorted(journal.glob(f"*/{session}_*.qtj"))


def test_journal_dry_run_then_real_with_json(cli: CliRunner, tmp_path) -> None:
    journal = tmp_path / "journal"
    old = old_journal(journal, "old.ticks", 10)
    recent = old_journal(journal, "recent.ticks", 2)
    args = ["cleanup", "--journal", str(journal), "--retention", "7d", "--json"]
    dry = cli.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True and report["retention"] == "7d"
    assert {s["session"]: s["removed"] for s in report["sessions"]} == {
        "old.ticks": len(old),
        "recent.ticks": 0,
    }
    assert all(p.exists() for p in old)
    real = cli.invoke(app, args)
    assert real.exit_code == 0, real.output
    report = json.loads(real.stdout)
    assert report["removed"] == len(old) and report["freed_bytes"] > 0
    assert not any(p.exists() for p in old) and all(p.exists() for p in recent)
    sessions = {s["session"]: s for s in report["sessions"]}
    assert sessions["recent.ticks"]["first_seq_after"] == 1
    assert sessions["old.ticks"]["first_seq_after"] is None


def test_journal_table_summary_and_the_default_directory(cli: CliRunner, isolated_settings) -> None:
    journal = isolated_settings / "journal"  # <data dir>/journal, as `qt feed` writes it
    old = old_journal(journal, "old.ticks", 10)
    result = cli.invoke(app, ["cleanup", "--journal", "--retention", "7d", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would remove (dry run)" in result.stdout and "old.ticks" in result.stdout
    assert result.stderr.startswith(
        f"journal {journal}: 1 sessions; would remove {len(old)} segments last written before "
    )
    assert "(older than 7d)" in result.stderr


def test_journal_errors(cli: CliRunner, tmp_path) -> None:
    cases = [
        (["--journal", str(tmp_path / "none"), "--retention", "7d"], "no such directory"),
        (["--journal", str(tmp_path), "--retention", "ticks=7d"], "without a KIND= part"),
        (["--journal", str(tmp_path)], "--journal takes one --retention DURATION"),
        (["--journal", str(tmp_path), "--retention", "7d", "--max-entries", "3"], "streams"),
        (["--journal", str(tmp_path), "--retention", "0d"], "must be longer than zero"),
        ([str(tmp_path), "--retention", "7d"], "a PATH goes with --journal [PATH]"),
        (["--journal", "--retention", "7d", "--pattern", "x*"], "--pattern applies to streams"),
    ]
    for args, message in cases:
        result = cli.invoke(app, ["cleanup", *args])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("Error: ") and message in result.stderr, args


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


def test_rewrite_chunks_dry_run_then_real(cli: CliRunner, vk) -> None:
    from tests.core.test_chunks import make_trades
    from tests.core.test_query import seed_ticks

    seed_ticks(vk, make_trades(2000), max_events=500, versions=(1, 2))
    hist = keys.history_key("ticks", "WDOQ25")
    dry = cli.invoke(app, ["cleanup", "--rewrite-chunks", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True and report["rewritten"] == 2
    assert [(s["key"], s["chunks"], s["old"]) for s in report["streams"]] == [(hist, 4, 2)]
    assert sorted(f[b"v"] for _, f in vk.xrange(hist)) == [b"1", b"1", b"2", b"2"]
    real = cli.invoke(app, ["cleanup", "--rewrite-chunks"])
    assert real.exit_code == 0, real.output
    assert hist in real.stdout
    assert "1 history streams: rewrote 2 chunks to codec version 2" in real.stderr
    assert [f[b"v"] for _, f in vk.xrange(hist)] == [b"2"] * 4


def test_rewrite_chunks_does_not_trim(cli: CliRunner, vk) -> None:
    result = cli.invoke(app, ["cleanup", "--rewrite-chunks", "--retention", "30d"])
    assert result.exit_code != 0
    assert "Error: --rewrite-chunks does not trim" in result.stderr
