"""`qt feed --sim` -> `qt bridge` -> Valkey with real processes: exactly N in, exactly N out.

The feed journals every message; the test serves that journal on a replay endpoint of its own
(`ReplayServer`), so a bridge can recover ranges even after the feed process has exited.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import valkey
import zmq

from qt_cli.core import keys
from qt_cli.core.candles import candles_from_ticks
from qt_cli.core.chunks import decode_tick_columns, trades_of
from qt_cli.core.events import decode_fields
from qt_cli.core.store.managed import ManagedValkey
from qt_cli.core.zmq_io import ReplayServer
from tests.helpers import QtProcesses, eventually, free_port, tcp_endpoint

pytestmark = pytest.mark.e2e

N = 20_000


class Pipeline:
    """Endpoints of one feed -> bridge run, and the journal the test serves for replay."""

    def __init__(self, tmp_path: Path) -> None:
        self.journal = tmp_path / "journal"
        self.journal.mkdir()
        self.ticks, self.book, self.history = tcp_endpoint(), tcp_endpoint(), tcp_endpoint()
        self.replay = tcp_endpoint()
        self.server = ReplayServer(self.journal, self.replay).start()

    def feed_args(self, *, rate: int, n: int = N, seed: int = 11, hwm: int | None = None):
        args = [
            "feed", "--sim", "--rate", str(rate), "--stop-after", str(n), "--seed", str(seed),
            "--journal", str(self.journal), "--fsync", "none",
            "--out", f"ticks={self.ticks}", "--out", f"book={self.book}",
            "--out", f"history={self.history}", "--out", "replay=none", "--json",
        ]  # fmt: skip
        if hwm is not None:
            args += ["--hwm", str(hwm)]
        return args

    def bridge_args(self, url: str, *extra: str):
        return [
            "bridge", "--in", self.ticks, "--in", self.book, "--in", self.history,
            "--replay", self.replay, "--out", url, "--json", *extra,
        ]  # fmt: skip

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path)
    yield p
    p.close()


def event_streams(client: valkey.Valkey) -> list[str]:
    out = []
    for raw in client.scan_iter(match="stream:*", count=1000, _type="stream"):
        key = raw.decode()
        parsed = keys.parse_stream_key(key)
        if parsed and not parsed[0].startswith(("candles", "hist")):
            out.append(key)
    return sorted(out)


def stored_count(client: valkey.Valkey) -> int:
    try:
        return sum(client.xlen(k) for k in event_streams(client))
    except (valkey.ConnectionError, valkey.TimeoutError):
        return -1


def stored_pairs(client: valkey.Valkey) -> list[tuple[str, int]]:
    pairs = []
    for key in event_streams(client):
        for _, fields in client.xrange(key):
            pairs.append((fields[b"session"].decode(), int(fields[b"seq"])))
    return sorted(pairs)


def expected_pairs(feed_totals: dict) -> list[tuple[str, int]]:
    pairs = []
    for channel in feed_totals["channels"].values():
        pairs += [(channel["session"], s) for s in range(1, channel["last_seq"] + 1)]
    return sorted(pairs)


def assert_candles_and_chunks_match(client: valkey.Valkey) -> int:
    """Live candles equal candles recomputed from the stored ticks; chunks hold those ticks."""
    compared = 0
    for key in event_streams(client):
        kind, symbol = keys.parse_stream_key(key) or ("", "")
        if kind != "ticks":
            continue
        ticks = [(i.decode(), decode_fields(f)) for i, f in client.xrange(key)]
        live = [decode_fields(f) for _, f in client.xrange(keys.stream_key("candles:1m", symbol))]
        assert live == [c for c in candles_from_ticks(ticks) if c.closed]
        compared += len(live)
        chunked = []
        for _, fields in client.xrange(keys.history_key("ticks", symbol)):
            chunked += trades_of(decode_tick_columns(fields), symbol)
        assert chunked == [t for _, t in ticks]  # the bridge seals the last chunk on exit
    return compared


def run_feed(qt: QtProcesses, pipeline: Pipeline, **kwargs) -> dict:
    result = qt.run(*pipeline.feed_args(**kwargs), timeout=120)
    assert result.returncode == 0, result.output
    return json.loads(result.stdout)


def stop(qt: QtProcesses, proc, sig: int = signal.SIGTERM) -> dict:
    finished = qt.stop(proc, sig)
    assert finished.returncode == 0, finished.output
    assert "Traceback" not in finished.stderr
    return json.loads(finished.stdout)


def test_n_simulated_events_in_exactly_n_out(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str
) -> None:
    bridge = qt.start(*pipeline.bridge_args(valkey_url))
    feed = run_feed(qt, pipeline, rate=10_000)
    assert feed["events"] == N
    eventually(lambda: stored_count(vk) == N, timeout=60, message=f"{N} events stored")
    totals = stop(qt, bridge, signal.SIGINT)
    assert stored_pairs(vk) == expected_pairs(feed)
    assert totals["written"] == N and totals["gaps_lost"] == 0
    assert totals["stopped_by"] == "SIGINT"
    assert assert_candles_and_chunks_match(vk) >= 1
    stats = vk.hgetall(keys.stats_key("bridge", "default"))
    assert int(stats[b"written"]) == N


def test_sigkill_and_restart_still_stores_exactly_n(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str
) -> None:
    first = qt.start(*pipeline.bridge_args(valkey_url))
    feed_proc = qt.start(*pipeline.feed_args(rate=4_000))
    eventually(lambda: stored_count(vk) >= N // 4, timeout=30, message="a quarter stored")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = stored_count(vk)
    second = qt.start(*pipeline.bridge_args(valkey_url))
    feed_out, feed_err = feed_proc.communicate(timeout=60)
    assert feed_proc.returncode == 0, feed_err
    feed = json.loads(feed_out)
    eventually(lambda: stored_count(vk) == N, timeout=60, message="all stored after restart")
    totals = stop(qt, second)
    assert killed_at < N
    assert stored_pairs(vk) == expected_pairs(feed)  # none lost, none twice
    assert totals["gaps_lost"] == 0
    assert_candles_and_chunks_match(vk)


def test_a_bridge_started_before_the_replay_endpoint_catches_up_once_it_hears_the_feed(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str
) -> None:
    """A bridge restarted while no feed (and so no replay endpoint) runs, as `qt up` starts the
    bridge beside a feed still starting: its catch-up of the sessions it wrote before is not
    lost, it runs once the new feed is heard (here: the first feed's tail, fetched from the
    journal the new feed's replay endpoint serves)."""
    first = qt.start(*pipeline.bridge_args(valkey_url, "--stop-after", "3000"))
    feed_a = run_feed(qt, pipeline, rate=6_000, n=8_000, seed=11)
    stop(qt, first, signal.SIGINT)
    stored_a = stored_count(vk)
    assert 0 < stored_a < 8_000  # the first feed's tail is only in the journal
    pipeline.server.close()  # no replay endpoint answers now
    second = qt.start(*pipeline.bridge_args(valkey_url))
    eventually(
        lambda: int(vk.hget(keys.stats_key("bridge", "default"), "pid") or 0) == second.pid,
        timeout=30,
        message="the second bridge running (its catch-up on start found no replay endpoint)",
    )
    pipeline.server = ReplayServer(pipeline.journal, pipeline.replay).start()
    feed_b = run_feed(qt, pipeline, rate=6_000, n=2_000, seed=12)
    want = sorted(expected_pairs(feed_a) + expected_pairs(feed_b))
    eventually(lambda: stored_count(vk) == len(want), timeout=60, message="both feeds stored")
    totals = stop(qt, second)
    assert stored_pairs(vk) == want  # the first feed's tail too, nothing twice
    assert totals["gaps_lost"] == 0


def test_valkey_stopped_and_restarted_mid_run(
    qt: QtProcesses, pipeline: Pipeline, tmp_path: Path
) -> None:
    server = ManagedValkey(tmp_path / "own-valkey", port=free_port())
    status = server.start()
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    try:
        bridge = qt.start(*pipeline.bridge_args(status.url, "--buffer", "2000"))
        feed_proc = qt.start(*pipeline.feed_args(rate=5_000))
        eventually(lambda: stored_count(client) >= 3_000, timeout=30, message="some stored")
        server.stop()
        time.sleep(1.0)  # the outage: the feed keeps publishing, the bridge buffers and spills
        server.start()
        feed_out, feed_err = feed_proc.communicate(timeout=60)
        assert feed_proc.returncode == 0, feed_err
        feed = json.loads(feed_out)
        eventually(lambda: stored_count(client) == N, timeout=60, message="all stored")
        finished = qt.stop(bridge, signal.SIGTERM)
        assert finished.returncode == 0, finished.output
        totals = json.loads(finished.stdout)
        assert totals["outages"] >= 1
        assert "unreachable" in finished.stderr and "Valkey is back" in finished.stderr
        # SIGTERM: Valkey wrote its AOF out before exiting, it lost nothing it acknowledged
        assert "no longer holds what it acknowledged" not in finished.stderr, finished.stderr
        assert stored_pairs(client) == expected_pairs(feed)
        assert_candles_and_chunks_match(client)
    finally:
        client.close()
        server.stop()


def test_a_forced_zeromq_drop_is_recovered_from_the_replay_endpoint(
    qt: QtProcesses, pipeline: Pipeline, vk: valkey.Valkey, valkey_url: str
) -> None:
    bridge = qt.start(*pipeline.bridge_args(valkey_url, "--hwm", "50"))
    # Only a session the bridge has heard from can be recovered (a channel that delivered
    # nothing at all before the feed ended is unknown to it: docs/bridge.md). So the feed runs
    # for a few seconds and the bridge is stopped once both channels have delivered.
    feed_proc = qt.start(*pipeline.feed_args(rate=8_000, hwm=50))

    def both_channels() -> bool:
        kinds = {keys.parse_stream_key(k)[0] for k in event_streams(vk) if vk.xlen(k)}
        return {"ticks", "book"} <= kinds

    eventually(both_channels, timeout=30, message="bridge receiving ticks and book")
    bridge.send_signal(signal.SIGSTOP)  # a consumer that stops reading: queues overflow
    try:
        feed_out, feed_err = feed_proc.communicate(timeout=60)
    finally:
        bridge.send_signal(signal.SIGCONT)
    assert feed_proc.returncode == 0, feed_err
    feed = json.loads(feed_out)
    eventually(lambda: stored_count(vk) == N, timeout=60, message="all stored after the drop")
    totals = stop(qt, bridge)
    assert totals["gaps_recovered"] >= 1 and totals["messages_recovered"] > 0
    assert totals["gaps_lost"] == 0
    assert stored_pairs(vk) == expected_pairs(feed)
    gaps = [f for _, f in vk.xrange(keys.stream_key("gaps"))]
    assert gaps and all(g[b"recovered"] == b"1" for g in gaps)


def test_garbage_payloads_land_in_the_dead_letter_stream(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str
) -> None:
    address = tcp_endpoint()
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(address)
    bridge = qt.start("bridge", "--in", address, "--out", valkey_url, "--replay", "none", "--json")
    try:

        def garbage_stored() -> bool:
            pub.send_multipart([b"tick_WDOQ25", b"\x00not json at all"])
            return vk.exists(keys.stream_key("deadletter")) == 1

        eventually(garbage_stored, timeout=30, message="dead letter stored")
        pub.send_multipart([b"tick_WDOQ25", b'{"type": "tick", "symbol": "WDOQ25", "price": 1}'])
        pub.send_multipart([b"book_WDOQ25", b'["a", "list"]'])
        eventually(lambda: vk.xlen(keys.stream_key("deadletter")) >= 3, timeout=10)
        totals = stop(qt, bridge)
    finally:
        pub.close(linger=0)
    letters = [f for _, f in vk.xrange(keys.stream_key("deadletter"))]
    assert all(f[b"source"] == address.encode() for f in letters)
    assert letters[0][b"raw"] == b"\x00not json at all"
    assert any(f[b"raw"] == b'["a", "list"]' for f in letters)
    assert any(f[b"field"] == b"ts_event" for f in letters)
    assert totals["deadletters"] == len(letters) and totals["written"] == 0


def load_replay(
    qt: QtProcesses, path: Path, url: str, journal: Path, source: str = "--replay"
) -> dict[str, Any]:
    """`qt feed --replay FILE --speed 0 --out - | qt bridge --in -`, real processes; the
    bridge's totals."""
    feed = qt.start(
        "feed", source, str(path), "--speed", "0", "--out", "-", "--journal", str(journal)
    )
    assert feed.stdout is not None
    bridge = qt.start("bridge", "--in", "-", "--out", url, "--json", stdin=feed.stdout)
    feed.stdout.close()  # the bridge reads it now
    out, err = bridge.communicate(timeout=120)
    feed_err = feed.communicate(timeout=60)[1]
    assert feed.returncode == 0, feed_err.decode(errors="replace")
    assert bridge.returncode == 0, err.decode(errors="replace")
    return json.loads(out)


def test_loading_a_nelogica_file_twice_and_an_overlapping_one_stores_each_trade_once(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    from tests.core.test_replay import nelogica_csv, nelogica_row

    # one trade a second from 09:00:00; trade numbers step by 10 as B3's do
    rows = [nelogica_row(i, 10 * (i + 1), price=5000.0 + i % 7) for i in range(450)]
    first = nelogica_csv(tmp_path / "WDOQ25_a.csv", rows[:300])  # 09:00:00 - 09:04:59
    overlapping = nelogica_csv(tmp_path / "WDOQ25_b.csv", rows[200:])  # 09:03:20 - 09:07:29
    journal = tmp_path / "journal"
    key = keys.stream_key("ticks", "WDOQ25")
    candle_key = keys.stream_key("candles:1m", "WDOQ25")

    totals = load_replay(qt, first, valkey_url, journal)
    assert (totals["written"], totals["duplicates"]) == (300, 0)
    assert vk.xlen(key) == 300
    totals = load_replay(qt, first, valkey_url, journal)  # the same file again: nothing new
    assert (totals["written"], totals["duplicates"]) == (0, 300)
    assert vk.xlen(key) == 300
    totals = load_replay(qt, overlapping, valkey_url, journal)  # 100 known, 150 new
    assert (totals["written"], totals["duplicates"]) == (150, 100)

    stored = [decode_fields(fields) for _, fields in vk.xrange(key)]
    assert len(stored) == 450
    assert [t.trade_id for t in stored] == [10 * (i + 1) for i in range(450)]  # type: ignore[attr-defined]
    assert all(b"late" not in fields for _, fields in vk.xrange(key))
    # the candles agree with the ticks: each minute's trades once, and the last minute
    # (09:07:00 - 09:07:29) is closed too, at the end of the input
    closed = [decode_fields(fields) for _, fields in vk.xrange(candle_key)]
    assert [c.trades for c in closed] == [60] * 7 + [30]  # type: ignore[attr-defined]
    assert all(c.closed for c in closed)  # type: ignore[attr-defined]
    ticks = [(i.decode(), decode_fields(f)) for i, f in vk.xrange(key)]
    assert closed == candles_from_ticks(ticks, final=True)
    # the stored identity is the trade's own; it names no feed run and no journal session
    assert {t.session for _, t in ticks} == {"nelogica:WDOQ25:2025-08-08"}
    assert not [k for k in vk.scan_iter(match=keys.stats_key("feed", "*")) if b"nelogica" in k]
    assert not [s for s in vk.hkeys(keys.hwm_key("bridge:default")) if b"nelogica" in s]
    # republishing the journal of those three runs (850 messages) twice stores nothing new
    for _ in range(2):
        totals = load_replay(qt, journal, valkey_url, tmp_path / "j2", "--replay-journal")
        assert (totals["written"], totals["duplicates"]) == (0, 850)
    assert vk.xlen(key) == 450
