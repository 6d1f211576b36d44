"""Core receives its settings as arguments: only commands call `config.current()`.

With `config.current()` made to fail, the core entry points still work from what they are given
(the server's URL and password, the replay endpoint, the data dir) against a real Valkey and
real ZeroMQ sockets.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import qt_cli
from qt_cli.core import config, query, store
from qt_cli.core.events import NS_PER_MS
from qt_cli.core.feed import Feed, FeedOptions, parse_outputs, run_feed
from qt_cli.core.io import open_sink
from qt_cli.core.sim_start import plan_start
from qt_cli.core.sources.sim import SimConfig, SimulatedMarket
from qt_cli.core.zmq_io import ReplayServer, SubSource
from tests.core.test_chunks import make_trades
from tests.core.test_query import SYMBOL, seed_ticks
from tests.helpers import tcp_endpoint

CORE = Path(qt_cli.__file__).parent / "core"


@pytest.fixture
def no_global_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> config.Settings:
        raise AssertionError("core called config.current(): pass the settings instead")

    monkeypatch.setattr(config, "current", refuse)


def test_no_core_module_reads_the_global_settings() -> None:
    calls = [
        f"{path.relative_to(CORE)}:{n}"
        for path in sorted(CORE.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bconfig\.current\(\)|\bcurrent\(\)", line) and "def current" not in line
        if path.name != "config.py"
    ]
    assert calls == []


@pytest.mark.usefixtures("no_global_settings")
def test_feed_outputs_and_the_journal_come_from_the_settings_given(tmp_path: Path) -> None:
    ports = {k: tcp_endpoint() for k in ("ticks", "book", "history", "replay")}
    settings = config.Settings(
        data_dir=tmp_path / "data", **{f"{k}_endpoint": v for k, v in ports.items()}
    )
    outputs = parse_outputs([], settings)
    assert outputs.channels == {k: ports[k] for k in ("ticks", "book", "history")}
    assert outputs.replay == ports["replay"]
    totals = run_feed(
        FeedOptions(source="sim", rate=0, seed=1, stop_after=50, settings=settings),
        handle_signals=False,
    )
    assert totals["events"] == 50
    assert (tmp_path / "data" / "journal").is_dir()  # settings.journal_dir, not the global one


@pytest.mark.usefixtures("no_global_settings")
def test_valkey_output_query_and_sim_start_take_url_and_password(
    vk, valkey_url: str, tmp_path: Path
) -> None:
    trades = make_trades(300)
    seed_ticks(vk, trades)
    client = store.connect(valkey_url, password="")
    frame = query.query("ticks", symbols=SYMBOL, start=0, end=trades[-1].ts_event, client=client)
    assert frame["trade_id"].tolist() == [t.trade_id for t in trades]

    notes: list[str] = []
    start = plan_start(
        None,
        rate=0,
        symbols=[SYMBOL],
        say=notes.append,
        settings=config.Settings(valkey_url=valkey_url),
    )
    assert start.start_ns == (trades[-1].ts_event // NS_PER_MS + 1) * NS_PER_MS
    assert start.levels == ((SYMBOL, trades[-1].price),)
    assert "simulation continues after it" in notes[-1]

    sink = open_sink(valkey_url, password="", maxlen=1000)
    sink.send(list(SimulatedMarket(SimConfig(seed=2, rate=0, symbols=("WINQ25",))).read(0.0)))
    sink.close()
    assert vk.xlen("stream:ticks:{WINQ25}") > 0


@pytest.mark.usefixtures("no_global_settings")
def test_subscriber_recovers_from_the_replay_endpoint_it_is_given(tmp_path: Path) -> None:
    replay = tcp_endpoint()
    server = ReplayServer(tmp_path / "journal", replay).start()
    try:
        source = SubSource(tcp_endpoint(), replay=replay, catch_up=False)
        assert source.replay is not None and source.replay.endpoint.uri == replay
        source.close()
        bare = SubSource(tcp_endpoint())
        assert bare.replay is None  # no replay endpoint given: gaps are lost, none is looked up
        bare.close()
    finally:
        server.close()
    feed = Feed(
        SimulatedMarket(SimConfig(seed=3, rate=0)),
        parse_outputs([str(tmp_path / "out.jsonl")], config.Settings()),
        journal_dir=tmp_path / "j",
        stop_after=10,
    )
    feed.open()
    try:
        assert feed.run()["events"] == 10
    finally:
        feed.close()
