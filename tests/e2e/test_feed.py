"""`qt feed` as a real process, checked by real ZeroMQ subscribers."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from qt_cli.core import keys
from qt_cli.core.events import Event, decode
from qt_cli.core.zmq_io import ReplayClient, SubSource
from tests.core.test_replay import nelogica_csv, nelogica_row
from tests.helpers import QtProcesses, eventually, tcp_endpoint

pytestmark = pytest.mark.e2e


@pytest.fixture
def endpoints() -> dict[str, str]:
    return {kind: tcp_endpoint() for kind in ("ticks", "book", "history", "replay")}


def outs(endpoints: dict[str, str]) -> list[str]:
    return [arg for kind, uri in endpoints.items() for arg in ("--out", f"{kind}={uri}")]


@pytest.fixture
def subscribers() -> Iterator[list[SubSource]]:
    made: list[SubSource] = []
    yield made
    for source in made:
        source.close()


def collect(proc: subprocess.Popen[bytes], sources: list[SubSource]) -> dict[str, list[Event]]:
    """Read every source until the feed exits, then drain what is still queued."""
    got: dict[str, list[Event]] = {}
    quiet = 0
    while proc.poll() is None or quiet < 10:
        batch = [e for s in sources for e in s.read(0.05)]
        for event in batch:
            got.setdefault(event.session, []).append(event)
        quiet = 0 if batch or any(s.recovering for s in sources) else quiet + 1
    return got


def test_sim_over_zmq_is_gap_free_and_decodable(
    qt: QtProcesses, tmp_path: Path, endpoints: dict[str, str], subscribers: list[SubSource]
) -> None:
    proc = qt.start(
        "feed", "--sim", "--rate", "3000", "--duration", "4s", *outs(endpoints),
        "--journal", str(tmp_path / "journal"), "--json",
    )  # fmt: skip
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SUBSCRIBE, b"")
    raw.connect(endpoints["book"])
    for channel in ("ticks", "book"):
        subscribers.append(SubSource(endpoints[channel], replay=endpoints["replay"]))
    try:
        topic, payload = eventually(lambda: raw.poll(50) and raw.recv_multipart(), timeout=20)
        event = decode(payload)
        assert topic.decode() == keys.topic(event.TYPE, event.symbol)
    finally:
        raw.close(linger=0)
    got = collect(proc, subscribers)
    finished = QtProcesses.stop(proc)
    assert finished.returncode == 0, finished.output
    totals = json.loads(finished.stdout)
    assert totals["events"] > 1000
    for channel in ("ticks", "book"):
        session = totals["channels"][channel]["session"]
        seqs = [e.seq for e in got[session]]
        assert seqs == list(range(1, totals["channels"][channel]["last_seq"] + 1)), channel
    for source in subscribers:
        assert source.take_rejects() == []
        assert all(g.recovered for g in source.take_gaps())
        assert source.stats.gaps_lost == 0


def test_slow_subscriber_with_a_tiny_hwm_recovers_every_missing_seq(
    qt: QtProcesses, tmp_path: Path, endpoints: dict[str, str], subscribers: list[SubSource]
) -> None:
    proc = qt.start(
        "feed", "--sim", "--rate", "5000", "--duration", "120s", "--hwm", "50", *outs(endpoints),
        "--journal", str(tmp_path / "journal"), "--fsync", "none", "--linger", "3s", "--json",
    )  # fmt: skip
    for channel in ("ticks", "book"):
        subscribers.append(
            SubSource(
                endpoints[channel], replay=endpoints["replay"], rcvhwm=20, replay_timeout_s=10
            )
        )
    got: dict[str, list[Event]] = {}
    gaps: list[Any] = []

    def read() -> None:
        for source in subscribers:
            for event in source.read(0.02):
                got.setdefault(event.session, []).append(event)
            gaps.extend(source.take_gaps())

    time.sleep(5)  # a stalled consumer while ~25,000 messages (many MB of book) go out
    client = ReplayClient(endpoints["replay"], timeout_s=10)
    try:
        eventually(
            lambda: read() or any(g.reason.startswith("seq jumped") for g in gaps),
            timeout=60,
            message="the tiny high-water mark should have dropped messages live",
        )
        # catch up with what the feed has journaled by now, then stop it
        journaled = {s: info["last_seq"] for s, info in client.info().items()}
        eventually(
            lambda: (
                read()
                or all(
                    max((e.seq for e in got.get(s, [])), default=0) >= last
                    for s, last in journaled.items()
                    if s in got
                )
            ),
            timeout=90,
            message="the subscriber never caught up",
        )
    finally:
        client.close()
    proc.send_signal(signal.SIGINT)
    # While the feed lingers, fetch any tail the tiny high-water mark dropped after the last
    # message received (no later seq can reveal it).
    eventually(
        lambda: read() or all(not s.recovering and s.check_tail() == 0 for s in subscribers),
        timeout=60,
        message="the lost tail was never recovered",
    )
    got_rest = collect(proc, subscribers)
    for session, events in got_rest.items():
        got.setdefault(session, []).extend(events)
    gaps += [g for s in subscribers for g in s.take_gaps()]
    finished = QtProcesses.stop(proc)
    assert finished.returncode == 0, finished.output
    totals = json.loads(finished.stdout)
    assert [g for g in gaps if not g.recovered] == []
    for channel in ("ticks", "book"):
        session = totals["channels"][channel]["session"]
        seqs = [e.seq for e in got[session]]
        assert seqs == list(range(1, totals["channels"][channel]["last_seq"] + 1)), channel
    assert totals["replay"]["requests"] > 0 and totals["replay"]["messages"] > 0
    assert totals["lingered_s"] >= 3  # served replays until 3 s passed without a request


def test_replay_of_a_nelogica_export_reports_the_bad_line(qt: QtProcesses, tmp_path: Path) -> None:
    rows = [nelogica_row(i // 3, i + 1, kind="Compra Agressão") for i in range(30)]
    rows.insert(10, "WDOQ25,20250808,090003,x")  # line 12 of the file
    path = nelogica_csv(tmp_path / "WDOQ25_20250808.csv", rows)
    result = qt.run(
        "feed", "--replay", str(path), "--speed", "0", "--out", "-",
        "--journal", str(tmp_path / "journal"),
    )  # fmt: skip
    assert result.returncode == 0, result.output
    events = [decode(line) for line in result.stdout.splitlines()]
    assert len(events) == 30
    assert [e.seq for e in events] == list(range(1, 31))
    assert {e.aggressor for e in events} == {"buy"}  # type: ignore[attr-defined]
    assert f"{path}:12: expected 11 fields, got 4" in result.stderr
    assert "1-second resolution" in result.stderr
    assert "1 bad records skipped" in result.stderr


def test_replay_journal_republishes_a_journal(qt: QtProcesses, tmp_path: Path) -> None:
    first = qt.run(
        "feed", "--sim", "--rate", "0", "--stop-after", "400", "--out", "-",
        "--journal", str(tmp_path / "j1"),
    )  # fmt: skip
    assert first.returncode == 0, first.output
    again = qt.run(
        "feed", "--replay-journal", str(tmp_path / "j1"), "--speed", "0", "--out", "-",
        "--journal", str(tmp_path / "j2"), "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.output
    original = [orjson.loads(line) for line in first.stdout.splitlines()]
    replayed = [orjson.loads(line) for line in again.stdout.splitlines()]
    assert len(replayed) == 400
    totals = json.loads(again.stderr[again.stderr.index("{") :])  # stdout carries the events
    assert totals["events"] == 400 and totals["source"] == "replay-journal"

    def body(row: dict[str, Any]) -> bytes:
        transport = ("session", "seq", "origin", "origin_seq")
        return orjson.dumps({k: v for k, v in row.items() if k not in transport})

    assert sorted(map(body, original)) == sorted(map(body, replayed))
    # each message keeps its identity (what it was published as) beside the new run's numbering
    assert sorted((r["origin"], r["origin_seq"]) for r in replayed) == sorted(
        (r["session"], r["seq"]) for r in original
    )
    assert {r["session"].split(".")[0] for r in replayed} == {totals["run_id"]}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_feed_with_totals(
    qt: QtProcesses,
    tmp_path: Path,
    endpoints: dict[str, str],
    subscribers: list[SubSource],
    sig: int,
) -> None:
    proc = qt.start(
        "feed", "--sim", *outs(endpoints), "--journal", str(tmp_path / "journal"),
    )  # fmt: skip
    subscribers.append(SubSource(endpoints["book"], replay=endpoints["replay"]))
    eventually(lambda: subscribers[0].read(0.05), timeout=20, message="no book update arrived")
    finished = QtProcesses.stop(proc, sig)
    assert finished.returncode == 0, finished.output
    assert "published" in finished.stderr and "stopped by signal" in finished.stderr
    assert "Traceback" not in finished.stderr
    journal = tmp_path / "journal"
    assert any(journal.rglob("*.qtj"))


@pytest.mark.parametrize(
    "pace", [("--rate", "0", "--duration", "1m"), ("--duration", "2s")], ids=["fast", "real-time"]
)
def test_two_sim_runs_into_valkey_never_overlap(
    qt: QtProcesses, valkey_url: str, vk, pace: tuple[str, ...]
) -> None:
    """The same `qt feed --sim` twice, each through `qt bridge` into one Valkey: the second run
    starts after the first, so nothing is stored late and candles see every trade."""
    ticks = keys.stream_key("ticks", "WDOQ25")
    last: tuple[bytes, float] | None = None
    for run in range(2):
        fed = qt.run(
            "feed", "--sim", *pace, "--seed", str(7 + run), "--out", "-", "--journal", f"j{run}",
            timeout=120,
        )  # fmt: skip
        assert fed.returncode == 0, fed.output
        bridged = qt.run(
            "bridge", "--in", "-", "--out", valkey_url, "--json", input=fed.stdout.encode()
        )
        assert bridged.returncode == 0, bridged.output
        totals = json.loads(bridged.stdout)
        assert totals["written"] == totals["received"] > 0, totals
        assert totals["late"] == 0, (run, totals["late"], fed.stderr)
        if last is not None:  # the second run picks up at the first one's last price
            first = vk.xrange(ticks, f"({last[0].decode()}", "+", count=1)[0][1]
            assert abs(float(first[b"price"]) / last[1] - 1) < 0.002, (first, last, fed.stderr)
        top_id, top = vk.xrevrange(ticks, "+", "-", count=1)[0]
        last = (top_id, float(top[b"price"]))
    entries = vk.xrange(ticks, "-", "+")
    assert not [fields for _, fields in entries if fields.get(b"late") == b"1"]
