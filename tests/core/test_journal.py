"""The journal: records round-trip, range reads seek, torn tails are tolerated, segments roll."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest

from qt_cli.core.errors import UsageError
from qt_cli.core.events import NS_PER_S, BookUpdate, State, Trade, decode
from qt_cli.core.journal import (
    DATA_SUFFIX,
    JournalReader,
    JournalWriter,
    Sequencer,
    parse_retention,
    trim_journal,
    wire_dict,
)

T0 = 1_754_654_400 * NS_PER_S


def _write(directory: Path, session: str, count: int, **kwargs: object) -> JournalWriter:
    writer = JournalWriter(directory, **kwargs)  # type: ignore[arg-type]
    for seq in range(1, count + 1):
        writer.append(session, seq, b"tick_WDOQ25", b'{"seq":%d}' % seq)
        if seq % 10 == 0:
            writer.commit()
    writer.commit()
    return writer


def test_records_round_trip_in_seq_order(tmp_path: Path) -> None:
    writer = _write(tmp_path, "run1.ticks", 100, fsync="none")
    writer.close()
    records = list(JournalReader(tmp_path).records("run1.ticks"))
    assert [r.seq for r in records] == list(range(1, 101))
    assert records[41].topic == b"tick_WDOQ25"
    assert records[41].payload == b'{"seq":42}'
    assert records[41].session == "run1.ticks"


def test_range_read_uses_the_index_and_spans_segments(tmp_path: Path) -> None:
    writer = _write(tmp_path, "run1.ticks", 5_000, segment_bytes=20_000, index_every=16)
    writer.close()
    reader = JournalReader(tmp_path)
    segments = reader.sessions()["run1.ticks"]
    assert len(segments) > 3, "small segment_bytes must roll segments"
    assert [s.first_seq for s in segments] == sorted(s.first_seq for s in segments)
    got = [r.seq for r in reader.read_range("run1.ticks", 1_234, 3_456)]
    assert got == list(range(1_234, 3_457))
    assert [r.seq for r in reader.read_range("run1.ticks", 4_990, 9_999)] == list(
        range(4_990, 5_001)
    )
    assert [r.seq for r in reader.read_range("run1.ticks", 10, 20, limit=3)] == [10, 11, 12]
    assert list(reader.read_range("other.ticks", 1, 10)) == []
    assert reader.last_seq("run1.ticks") == 5_000
    assert reader.last_seq("other.ticks") is None


def test_reader_sees_committed_records_while_the_writer_is_open(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, fsync="none")
    reader = JournalReader(tmp_path)
    writer.append("s.ticks", 1, b"t", b"one")
    assert list(reader.read_range("s.ticks", 1, 1)) == []  # buffered, not committed
    writer.commit()
    assert [r.payload for r in reader.read_range("s.ticks", 1, 1)] == [b"one"]
    writer.append("s.ticks", 2, b"t", b"two")
    writer.commit()
    assert [r.payload for r in reader.read_range("s.ticks", 1, 5)] == [b"one", b"two"]
    writer.close()


def _segment(tmp_path: Path) -> Path:
    (path,) = list(tmp_path.rglob(f"*{DATA_SUFFIX}"))
    return path


def test_a_torn_last_record_is_ignored(tmp_path: Path) -> None:
    _write(tmp_path, "run1.ticks", 50).close()
    path = _segment(tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size - 3)  # the crash cut the last write short
    assert [r.seq for r in JournalReader(tmp_path).records()] == list(range(1, 50))
    assert JournalReader(tmp_path).last_seq("run1.ticks") == 49


def test_a_corrupt_last_record_is_ignored(tmp_path: Path) -> None:
    _write(tmp_path, "run1.ticks", 20).close()
    path = _segment(tmp_path)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # flip a payload byte: the checksum no longer matches
    path.write_bytes(bytes(data))
    assert [r.seq for r in JournalReader(tmp_path).records()] == list(range(1, 20))


def test_garbage_after_the_last_record_is_ignored(tmp_path: Path) -> None:
    _write(tmp_path, "run1.ticks", 20).close()
    path = _segment(tmp_path)
    with open(path, "ab") as handle:
        handle.write(b"\xff\xff\xff\x7f garbage")
    assert [r.seq for r in JournalReader(tmp_path).read_range("run1.ticks", 15, 99)] == [
        15,
        16,
        17,
        18,
        19,
        20,
    ]


def test_an_index_ahead_of_its_data_is_tolerated(tmp_path: Path) -> None:
    _write(tmp_path, "run1.ticks", 300, index_every=8).close()
    path = _segment(tmp_path)
    with open(path, "r+b") as handle:  # data lost its tail, the index did not
        handle.truncate(path.stat().st_size // 2)
    reader = JournalReader(tmp_path)
    last = reader.last_seq("run1.ticks")
    assert last is not None and 100 < last < 200
    assert [r.seq for r in reader.read_range("run1.ticks", 90, 400)] == list(range(90, last + 1))


def test_day_change_starts_new_segments(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path)
    writer.append("s.book", 1, b"book_X", b"a")
    writer.commit()
    writer._day_end = 0  # pretend midnight passed
    writer.commit()
    writer.append("s.book", 2, b"book_X", b"b")
    writer.close()
    reader = JournalReader(tmp_path)
    assert [s.first_seq for s in reader.sessions()["s.book"]] == [1, 2]
    assert [r.payload for r in reader.read_range("s.book", 1, 2)] == [b"a", b"b"]
    day_dirs = {p.parent.name for p in tmp_path.rglob(f"*{DATA_SUFFIX}")}
    assert all(len(d) == 10 and d[4] == "-" for d in day_dirs)


@pytest.mark.parametrize("policy", ["none", "batch", "always"])
def test_every_fsync_policy_writes_readable_records(tmp_path: Path, policy: str) -> None:
    _write(tmp_path, "s.ticks", 25, fsync=policy).close()
    assert JournalReader(tmp_path).last_seq("s.ticks") == 25


def test_an_unknown_fsync_policy_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--fsync 'sometimes': choose one of none, batch, always"):
        JournalWriter(tmp_path, fsync="sometimes")


def test_sequencer_numbers_journals_and_encodes(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path)
    sequencer = Sequencer("abc.ticks", writer)
    events = [
        Trade("WDOQ25", T0, price=5000.5, quantity=2, trade_id=1),
        State("*", T0 + 1, source="feed", text="connected"),
        Trade("WDOQ25", T0 + 2, price=5001.0, quantity=1, history=True),
    ]
    frames = sequencer.encode(events) + sequencer.encode(events[:1])
    assert [orjson.loads(p)["seq"] for _, p in frames] == [1, 2, 3, 4]
    assert {orjson.loads(p)["session"] for _, p in frames} == {"abc.ticks"}
    assert [t for t, _ in frames] == [b"tick_WDOQ25", b"state_*", b"history_WDOQ25", b"tick_WDOQ25"]
    decoded = decode(frames[2][1])
    assert isinstance(decoded, Trade) and decoded.history and decoded.seq == 3
    # committed before encode returned: the journal already holds every frame
    journaled = list(JournalReader(tmp_path).records("abc.ticks"))
    assert [(r.topic, r.payload) for r in journaled] == frames
    writer.close()


def test_sequencer_stamp_returns_copies_with_session_and_seq(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path)
    sequencer = Sequencer("abc.book", writer)
    original = BookUpdate("WDOQ25", T0, side="ask", action="add", price=5000.5, quantity=3)
    (stamped,) = sequencer.stamp([original])
    assert original.seq == 0 and original.session == ""
    assert stamped.seq == 1 and stamped.session == "abc.book"
    assert stamped == BookUpdate(
        "WDOQ25", T0, side="ask", action="add", price=5000.5, quantity=3, session="abc.book", seq=1
    )
    (record,) = JournalReader(tmp_path).records()
    assert decode(record.payload) == stamped
    writer.close()


def test_wire_dict_equals_to_dict_for_every_market_type() -> None:
    events = [
        Trade("WDOQ25", T0, price=1.5, buyer_name="XP", seller_name="BTG"),
        BookUpdate("WDOQ25", T0, action="full", levels=[[1.0, 2, 3]]),
        State("*", T0, text="x"),
    ]
    for event in events:
        assert wire_dict(event) == event.to_dict()
        assert list(wire_dict(event)) == list(event.to_dict())


def test_not_a_journal_directory_reads_as_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert JournalReader(tmp_path / "missing").sessions() == {}
    assert JournalReader(tmp_path).sessions() == {}
    assert os.listdir(tmp_path) == ["notes.txt"]


# --- retention ---------------------------------------------------------------------------------

DAY_S = 86_400


def _age(path: Path, days: float) -> None:
    """Make a segment (data and index) look last written `days` ago."""
    when = time.time() - days * DAY_S
    for file in (path, path.with_suffix(".qtx")):
        os.utime(file, (when, when))


def _segments(directory: Path, session: str) -> list[Path]:
    return sorted(p for p in directory.glob(f"*/{session}_*{DATA_SUFFIX}"))


def test_retention_removes_whole_old_segments_and_keeps_the_rest(tmp_path: Path) -> None:
    _write(tmp_path, "old.ticks", 300, fsync="none", segment_bytes=2048).close()
    segments = _segments(tmp_path, "old.ticks")
    assert len(segments) >= 4
    for path in segments[:-1]:
        _age(path, 10)  # the newest segment was written just now: within the retention
    dry = trim_journal(tmp_path, 7 * DAY_S * NS_PER_S, dry_run=True, retention_text="7d")
    assert _segments(tmp_path, "old.ticks") == segments  # a dry run removes nothing
    (session,) = dry.sessions
    assert (session.removed, session.segments_after) == (len(segments) - 1, 1)
    report = trim_journal(tmp_path, 7 * DAY_S * NS_PER_S, retention_text="7d")
    assert report.as_dict()["removed"] == len(segments) - 1 == dry.removed
    assert report.freed_bytes == dry.freed_bytes > 0
    assert _segments(tmp_path, "old.ticks") == segments[-1:]
    assert not list(tmp_path.glob(f"*/{segments[0].stem}.qtx"))  # the index goes with its data
    reader = JournalReader(tmp_path)
    first_kept = report.sessions[0].first_seq_after
    assert reader.first_seq("old.ticks") == first_kept > 1
    assert [r.seq for r in reader.records("old.ticks")] == list(range(first_kept, 301))
    assert reader.describe()["old.ticks"]["first_seq"] == first_kept


def test_retention_never_removes_a_segment_a_writer_holds_open(tmp_path: Path) -> None:
    writer = _write(tmp_path, "live.ticks", 300, fsync="none", segment_bytes=2048)
    try:
        segments = _segments(tmp_path, "live.ticks")
        for path in segments:
            _age(path, 30)  # even the open one: a session quiet for longer than the retention
        report = trim_journal(tmp_path, 7 * DAY_S * NS_PER_S)
        assert _segments(tmp_path, "live.ticks") == segments[-1:]
        assert report.sessions[0].in_use == 1 and report.in_use == 1
        writer.append("live.ticks", 301, b"t", b"{}")  # the writer goes on undisturbed
        writer.commit()
        assert JournalReader(tmp_path).last_seq("live.ticks") == 301
    finally:
        writer.close()
    report = trim_journal(tmp_path, 7 * DAY_S * NS_PER_S)  # closed now, but written just now
    assert report.removed == 0 and _segments(tmp_path, "live.ticks") == segments[-1:]


def test_retention_keeps_each_session_one_unbroken_range(tmp_path: Path) -> None:
    _write(tmp_path, "s.ticks", 300, fsync="none", segment_bytes=2048).close()
    segments = _segments(tmp_path, "s.ticks")
    _age(segments[0], 10)
    _age(segments[2], 10)  # older than the cutoff, but a newer segment comes before it
    report = trim_journal(tmp_path, 7 * DAY_S * NS_PER_S)
    assert report.removed == 1
    assert _segments(tmp_path, "s.ticks") == segments[1:]
    seqs = [r.seq for r in JournalReader(tmp_path).records("s.ticks")]
    assert seqs == list(range(seqs[0], 301))


def test_retention_removes_empty_old_day_directories(tmp_path: Path) -> None:
    _write(tmp_path, "s.ticks", 10, fsync="none").close()
    (tmp_path / "2020-01-01").mkdir()
    report = trim_journal(tmp_path, 7 * DAY_S * NS_PER_S)
    assert report.days_removed == ["2020-01-01"]
    assert not (tmp_path / "2020-01-01").exists() and _segments(tmp_path, "s.ticks")


def test_retention_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="longer than zero"):
        trim_journal(tmp_path, 0)
    with pytest.raises(UsageError, match="--journal-retention 'soon': expected a duration"):
        parse_retention("soon")
    assert parse_retention("7") == parse_retention("7d") == 7 * DAY_S * NS_PER_S


def test_the_writer_tells_when_a_segment_rolls(tmp_path: Path) -> None:
    rolls: list[int] = []
    writer = JournalWriter(
        tmp_path, fsync="none", segment_bytes=512, on_roll=lambda: rolls.append(1)
    )
    try:
        writer.append_batch("s.ticks", 1, [(b"t", b"x" * 100)] * 3)
        writer.commit()
        assert rolls == []
        writer.append_batch("s.ticks", 4, [(b"t", b"x" * 100)] * 10)  # the segment is now full
        writer.commit()
        assert rolls == []
        writer.append("s.ticks", 14, b"t", b"x")  # starts the next segment
        writer.commit()
        assert len(rolls) == 1 == len(_segments(tmp_path, "s.ticks")) - 1
    finally:
        writer.close()


def test_a_range_read_reaches_into_a_segment_started_after_the_last_refresh(
    tmp_path: Path,
) -> None:
    writer = JournalWriter(tmp_path, fsync="none", segment_bytes=1024)
    try:
        writer.append_batch("s.ticks", 1, [(b"t", b"x" * 40)] * 30)
        writer.append_batch("s.ticks", 31, [(b"t", b"x" * 40)] * 30)  # a second segment
        writer.commit()
        reader = JournalReader(tmp_path)  # knows these two segments
        assert len(reader.sessions()["s.ticks"]) == 2
        writer.append_batch("s.ticks", 61, [(b"t", b"x" * 40)] * 5)  # rolls: a third one
        writer.commit()
        assert [r.seq for r in reader.read_range("s.ticks", 1, 100)] == list(range(1, 66))
        assert [r.seq for r in reader.read_range("s.ticks", 59, 70, limit=4)] == [59, 60, 61, 62]
    finally:
        writer.close()


def test_a_full_disk_is_one_error_naming_the_file_and_close_adds_none(tmp_path: Path) -> None:
    from qt_cli.core.errors import UnavailableError
    from tests.helpers import mount_small_tmpfs

    directory = tmp_path / "journal"
    try:
        unmount = mount_small_tmpfs(directory, size="256k")
    except AssertionError as exc:
        pytest.skip(str(exc))
    try:
        writer = JournalWriter(directory, fsync="none")

        def fill() -> None:
            for seq in range(1, 100_000, 100):
                writer.append_batch("s.ticks", seq, [(b"tick_X", b"x" * 200)] * 100)
                writer.commit()

        with pytest.raises(UnavailableError) as raised:
            fill()
        message = str(raised.value)
        assert "No space left on device" in message and "--journal DIR" in message
        assert ".qtj" in message and str(directory) in message
        writer.close()  # what it could not write was reported once: no second error
        assert JournalReader(directory).last_seq("s.ticks")  # what it took reads back
    finally:
        unmount()
