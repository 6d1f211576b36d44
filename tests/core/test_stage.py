"""The stage runtime: lifecycle and signals, the stats publisher against docs/contracts.md, the
consumer-group source."""

from __future__ import annotations

import gc
import os
import re
import signal
import threading
from pathlib import Path

import pytest
import valkey

from qt_cli.core import keys
from qt_cli.core.bridge import Bridge
from qt_cli.core.errors import TimeParseError
from qt_cli.core.events import NS_PER_MS, Trade
from qt_cli.core.gcpause import STREAMING_GEN0
from qt_cli.core.monitor import Monitor, MonitorOptions
from qt_cli.core.stage import COMMON_FIELDS, run_stage, stop_signals
from qt_cli.core.stage.derived import Derived, GroupWorker, derived_identity, derived_seq, input_id
from qt_cli.core.stage.lifecycle import StopFlag
from qt_cli.core.store.managed import ManagedValkey
from qt_cli.core.store.reader import SourceEntry, StreamSource, start_id
from qt_cli.core.store.writer import StreamWriter
from tests.core import test_bridge as bridge_tests
from tests.core.test_bridge import config_for, jsonl, make_trades
from tests.helpers import eventually

own_valkey = bridge_tests.own_valkey  # a server of the test's own (stopped and restarted)
IN_KEY = keys.stream_key("ticks", "WDOQ25")
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def documented_stats_fields() -> dict[str, list[str]]:
    """The fields docs/contracts.md lists: 'common' and one list per stage."""
    text = CONTRACTS.read_text()
    section = text[text.index("## Stats") :]
    section = section[: section.index("\n- The bridge also writes")]
    head, _, rest = section.partition("and per stage:")
    common = re.findall(r"`([a-z_0-9]+)`", head[head.index("(`COMMON_FIELDS`):") :])
    out = {"common": [c for c in common if c != "COMMON_FIELDS"]}
    for item in re.split(r"\n  - ", rest)[1:]:
        stage, _, fields = item.partition(":")
        # a field is a backticked name not inside parentheses (those are values or explanations)
        plain = re.sub(r"\([^)]*\)", "", fields)
        out[stage.split(" (")[0].strip()] = re.findall(r"`([a-z_0-9]+)`", plain)
    return out


def test_the_documented_common_fields_are_what_every_stage_writes() -> None:
    assert documented_stats_fields()["common"] == list(COMMON_FIELDS)


def test_the_bridge_stats_hash_has_exactly_the_documented_fields(
    vk: valkey.Valkey, valkey_url: str, tmp_path: Path
) -> None:
    path = jsonl(tmp_path / "in.jsonl", make_trades(20), session="abcd1234.ticks")
    bridge = Bridge(config_for(valkey_url, tmp_path, str(path), name="doc"))
    bridge.run()
    bridge.close()
    key = keys.stats_key("bridge", "doc")
    fields = {k.decode() for k in vk.hgetall(key)}
    doc = documented_stats_fields()
    assert fields == {*doc["common"], *doc["bridge"]}
    assert 0 < vk.ttl(key) <= 300 and vk.sismember(keys.STAGES_SET, key)


def seed(vk: valkey.Valkey, n: int, *, session: str = "seed.ticks", first: int = 0) -> list[str]:
    trades = [
        Trade(
            symbol="WDOQ25",
            ts_event=(1_751_374_800_000 + i) * NS_PER_MS,
            price=5000.0,
            quantity=1,
            session=session,
            seq=i + 1 if session else 0,
        )
        for i in range(first, first + n)
    ]
    StreamWriter(vk, maxlen=0).append_events(trades)
    return [e[0].decode() for e in vk.xrange(keys.stream_key("ticks", "WDOQ25"))]


def copy_stage(out_key: str):
    def derive(entry: SourceEntry, session: str, seq: int) -> list[Derived]:
        return [
            Derived(out_key, ("src", "session", "seq"), (entry.id, session, seq), 1_751_374_800_000)
        ]

    return derive


def test_a_derived_stage_publishes_the_documented_fields_and_stops_on_request(
    vk: valkey.Valkey, valkey_url: str
) -> None:
    seed(vk, 30)
    source = StreamSource(
        valkey.Valkey.from_url(valkey_url), symbols=["WDOQ25"], kinds=["ticks"], start="0",
        group="g", consumer="w1",
    )  # fmt: skip
    out_key = keys.stream_key("test", "WDOQ25")
    worker = GroupWorker(source, StreamWriter(vk), copy_stage(out_key), stage="test", name="w1")
    thread = threading.Thread(target=lambda: run_stage(worker, handle_signals=False))
    thread.start()
    try:
        eventually(lambda: vk.xlen(out_key) == 30, message="all derived")
    finally:
        worker.stop("test")
        thread.join(10)
    assert not thread.is_alive()
    assert worker.totals()["acked"] == 30 and worker.totals()["stopped_by"] == "test"
    fields = {k.decode() for k in vk.hgetall(keys.stats_key("test", "w1"))}
    doc = documented_stats_fields()
    assert fields == {*doc["common"], *doc["derived stages"]}
    with Monitor(valkey_url, MonitorOptions()) as monitor:  # qt monitor shows any stage
        views = [v for v in monitor.collect().stages if v.stage == "test"]
    assert [(v.name, v.received, v.written) for v in views] == [("w1", 30, 30)]


def test_stop_signals_route_sigterm_and_sighup_and_restore_the_handlers() -> None:
    got: list[str] = []
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    with stop_signals(got.append, reload=lambda: got.append("reload")) as installed:
        assert installed
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
    assert got == ["reload", "SIGTERM"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


def test_a_signal_while_stopping_gives_the_previous_handler_back() -> None:
    got: list[str] = []
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _f: seen.append(signum))
    try:
        with stop_signals(got.append, stopping=lambda: bool(got)):
            os.kill(os.getpid(), signal.SIGTERM)  # stop
            os.kill(os.getpid(), signal.SIGTERM)  # already stopping: passed on from now
            os.kill(os.getpid(), signal.SIGTERM)  # the previous handler
        assert got == ["SIGTERM", "SIGTERM"] and seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_stage_runs_with_the_collector_tuned_for_its_loop_and_gets_it_back() -> None:
    """`run_stage` runs the loop under `streaming_gc`: young collections every STREAMING_GEN0
    new objects and what existed at the start frozen (a batch in flight no longer survives into
    the older generations); the settings come back after, also when the loop fails."""
    before = gc.get_threshold(), gc.get_freeze_count()

    class Loop(StopFlag):
        def __init__(self, fail: bool) -> None:
            self._stop = threading.Event()
            self.stats = type("S", (), {"stopped_by": ""})()
            self.fail = fail
            self.seen: tuple = ()

        def open(self) -> None:
            self.window = [[i] for i in range(1000)]  # built before the loop: frozen during it

        def run(self) -> str:
            self.seen = (gc.get_threshold()[0], gc.get_freeze_count())
            if self.fail:
                raise RuntimeError("the loop failed")
            return "done"

        def close(self) -> None:
            pass

    loop = Loop(fail=False)
    assert run_stage(loop, handle_signals=False) == "done"
    assert loop.seen[0] == STREAMING_GEN0 and loop.seen[1] >= before[1] + 1000
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
    failing = Loop(fail=True)
    with pytest.raises(RuntimeError):
        run_stage(failing, handle_signals=False)
    assert failing.seen[0] == STREAMING_GEN0
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_start_positions() -> None:
    assert [start_id(s) for s in ("$", "0", "1751374800000-3", "1751374800000")] == [
        "$", "0", "1751374800000-3", "1751374800000-0",
    ]  # fmt: skip
    assert start_id("2025-07-01T10:00:00-03:00") == "1751374800000-0"
    with pytest.raises(TimeParseError):
        start_id("yesterday-ish")


def test_derived_identity_comes_from_the_input(vk: valkey.Valkey) -> None:
    assert input_id(derived_seq("1751374800000-7")) == "1751374800000-7"
    assert derived_seq("1751374800000-7") < 2**53
    with pytest.raises(ValueError, match="1001 entries in one ms"):
        derived_seq("1751374800000-1000")
    event = Trade(symbol="X", ts_event=1, price=1.0, session="r.ticks", seq=9)
    entry = SourceEntry("stream:ticks:{X}", "5-0", event)
    assert derived_identity("features", entry) == ("features.r.ticks", 9)
    bare = SourceEntry("stream:ticks:{X}", "5-2", Trade(symbol="X", ts_event=1, price=1.0))
    assert derived_identity("features", bare) == ("features.stream:ticks:{X}", 5002)


def test_group_source_hands_out_ids_and_late_and_redelivers_unacked_to_a_restart(
    vk: valkey.Valkey, valkey_url: str
) -> None:
    ids = seed(vk, 10)
    key = keys.stream_key("ticks", "WDOQ25")

    def open_as(consumer: str) -> StreamSource:
        return StreamSource(
            valkey.Valkey.from_url(valkey_url), symbols=["WDOQ25"], kinds=["ticks"], start="0",
            group="g", consumer=consumer, claim_idle_s=60,
        )  # fmt: skip

    first = open_as("c1")
    got = first.read_entries(0.5)
    assert [e.id for e in got] == ids and {e.key for e in got} == {key}
    assert not any(e.late for e in got)
    assert first.ack(got[:4]) == 4
    first.close()
    again = open_as("c1")  # the same consumer restarted: its unacknowledged entries first
    assert [e.id for e in again.read_entries(0.5)] == ids[4:]
    assert again.read_entries(0.1) == []  # nothing new
    assert again.pending_ids(key, until="+", count=100) == ids[4:]
    again.close()


def test_a_derived_stage_waits_out_a_valkey_outage_and_catches_up(
    own_valkey: ManagedValkey,
) -> None:
    status = own_valkey.status()
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    seed(client, 100)
    source = StreamSource(
        valkey.Valkey.from_url(status.url), symbols=["WDOQ25"], kinds=["ticks"], start="0",
        group="g", consumer="w1",
    )  # fmt: skip
    out_key = keys.stream_key("test", "WDOQ25")
    warnings: list[str] = []
    worker = GroupWorker(
        source, StreamWriter(valkey.Valkey.from_url(status.url)), copy_stage(out_key),
        stage="test", name="w1", warn=warnings.append,
    )  # fmt: skip
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_stage(worker, handle_signals=False)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        eventually(lambda: client.xlen(out_key) == 100, message="the first 100 derived")
        own_valkey.stop()
        eventually(lambda: worker.stats.outages > 0, message="the worker saw the outage")
        own_valkey.start()
        seed(client, 100, first=100)
        eventually(
            lambda: client.xlen(out_key) == 200 and client.xpending(IN_KEY, "g")["pending"] == 0,
            timeout=20,
            message="caught up after the outage",
        )
    finally:
        worker.stop("test")
        thread.join(20)
    assert not errors and not thread.is_alive()
    assert any("Valkey unreachable" in w for w in warnings)
    srcs = [f[b"src"] for _, f in client.xrange(out_key)]
    assert len(set(srcs)) == 200
