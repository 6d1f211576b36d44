"""qt on a real 3-primary Valkey Cluster: the client qt picks, exactly-once appends to symbols on
every primary, multi-slot reads (plain and consumer group), the library on every primary, SCAN of
every primary. (`tests/e2e/test_cluster.py` runs the real stages on it.)"""

from __future__ import annotations

import pytest
import valkey
from valkey.crc import key_slot

from qt_cli.core import keys, store
from qt_cli.core.cleanup import find_streams
from qt_cli.core.events import Trade
from qt_cli.core.monitor.collect import Monitor
from qt_cli.core.store import cluster
from qt_cli.core.store.reader import StreamSource, symbols_of
from qt_cli.core.store.writer import StreamWriter
from tests.helpers import eventually
from tests.valkey_cluster import LocalCluster

# Two symbols on each primary of a cluster made by `valkey-cli --cluster create` (slots split
# in three equal ranges): MGLU3 WEGE3 | WINQ25 PETR4 | WDOQ25 ITUB4.
SYMBOLS = ("MGLU3", "WEGE3", "WINQ25", "PETR4", "WDOQ25", "ITUB4")
T0_NS = 1_754_308_800 * 10**9


def trades(n: int, *, session: str = "run1.ticks") -> list[Trade]:
    out = []
    for i in range(n):
        ts = T0_NS + i * 10_000_000
        out.append(
            Trade(
                symbol=SYMBOLS[i % len(SYMBOLS)],
                ts_event=ts,
                price=100.0 + i % 7,
                quantity=1 + i % 3,
                volume=100.0,
                trade_id=i + 1,
                aggressor="buy",
                ts_init=ts + 1,
                session=session,
                seq=i + 1,
            )
        )
    return out


@pytest.fixture
def client(cluster_url: str):
    c = store.connect(cluster_url)
    yield c
    c.close()


def test_a_cluster_node_gives_a_cluster_client_and_a_plain_server_a_plain_one(
    cluster_url: str, valkey_url: str, valkey_cluster: LocalCluster
) -> None:
    on_cluster = store.connect(cluster_url)
    plain = store.connect(valkey_url)
    try:
        assert cluster.is_cluster(on_cluster) and not cluster.is_cluster(plain)
        assert {n.port for n in on_cluster.get_primaries()} == set(valkey_cluster.ports)
    finally:
        on_cluster.close()
        plain.close()
    with pytest.raises(store.EndpointError, match="only database 0"):
        store.connect(cluster_url.replace("/0", "/1"))


def test_appends_to_symbols_on_every_primary_are_stored_once(
    client, valkey_cluster: LocalCluster
) -> None:
    writer = StreamWriter(client)
    events = trades(600)
    results = writer.append_events(events)
    assert sum(r.written for r in results) == 600
    # Every primary holds two symbols' streams and the library.
    for port in valkey_cluster.ports:
        node = valkey_cluster.node(port)
        held = sorted(k.decode() for k in node.scan_iter(match="stream:ticks:*"))
        assert len(held) == 2, (port, held)
        assert node.function_list(library="qt"), port
        node.close()
    # The same events again (a retry, a replay): all skipped by the high-water marks.
    again = writer.append_events(events)
    assert sum(r.written for r in again) == 0 and sum(r.duplicates for r in again) == 600
    for symbol in SYMBOLS:
        assert client.xlen(keys.stream_key("ticks", symbol)) == 100


def test_the_library_lost_on_one_primary_is_loaded_again(
    client, valkey_cluster: LocalCluster
) -> None:
    writer = StreamWriter(client)
    writer.append_events(trades(60))
    node = valkey_cluster.node(valkey_cluster.node_of(keys.stream_key("ticks", "MGLU3")))
    node.function_flush()
    assert not writer.has_current_library()  # the other primaries still have it
    results = writer.append_events(trades(120))  # seqs 61..120 are new
    assert sum(r.written for r in results) == 60
    assert node.function_list(library="qt")
    node.close()


def test_a_stream_source_follows_streams_of_every_slot_plain_and_in_a_group(client) -> None:
    StreamWriter(client).append_events(trades(60))
    plain = StreamSource(
        store.connect(client_url(client)), symbols=SYMBOLS, kinds=("ticks",), start="0"
    )
    got: list = []
    eventually(lambda: got.extend(plain.read(0.05)) or len(got) >= 60, message="all read")
    assert sorted(e.seq for e in got) == list(range(1, 61))
    plain.close()

    grouped = StreamSource(
        store.connect(client_url(client)),
        symbols=SYMBOLS,
        kinds=("ticks",),
        start="0",
        group="g",
        consumer="a",
    )
    entries: list = []
    eventually(
        lambda: entries.extend(grouped.read_entries(0.05)) or len(entries) >= 60,
        message="all delivered",
    )
    assert len(entries) == 60 and grouped.ack(entries) == 60
    for symbol in SYMBOLS:
        assert client.xpending(keys.stream_key("ticks", symbol), "g")["pending"] == 0
    grouped.close()


def test_scans_find_the_streams_of_every_primary(client) -> None:
    StreamWriter(client).append_events(trades(12))
    assert symbols_of(client, "ticks") == sorted(SYMBOLS)
    assert find_streams(client, keys.stream_pattern("ticks")) == sorted(
        keys.stream_key("ticks", s) for s in SYMBOLS
    )


def test_the_monitor_shows_every_primarys_symbols_and_their_memory_together(
    client, cluster_url: str, valkey_cluster: LocalCluster
) -> None:
    StreamWriter(client).append_events(trades(60))
    with Monitor(cluster_url) as monitor:
        snapshot = monitor.collect()
    assert snapshot.reachable, snapshot.error
    assert sorted(s.symbol for s in snapshot.symbols) == sorted(SYMBOLS)
    nodes = []
    for port in valkey_cluster.ports:
        node = valkey_cluster.node(port)
        nodes.append(node.info("memory")["used_memory"])
        node.close()
    assert snapshot.valkey.used_memory > 2 * min(nodes)  # about three primaries' worth


def test_every_key_of_a_symbol_is_in_the_slot_of_its_streams() -> None:
    """What makes qt's functions and scripts legal on a cluster: each call's keys share a slot."""
    symbol = "WDOQ25"
    ticks = keys.stream_key("ticks", symbol)
    hist = keys.history_key("ticks", symbol)
    same_slot = [
        keys.stream_key("book", symbol),
        keys.stream_key(keys.candle_kind("1m"), symbol),
        keys.partial_candle_key(keys.candle_kind("1m"), symbol),
        keys.stream_key("features", symbol),
        keys.stream_key("predictions", symbol),
        keys.stream_key("signals", symbol),
        keys.hwm_key(ticks),
        hist,
        keys.hwm_key(hist),
        keys.forming_chunk_key("ticks", symbol),
        keys.late_index_key("ticks", symbol),
        keys.rewrite_key(hist),
        keys.lease_key("features", "g", symbol),
    ]
    slot = key_slot(ticks.encode())
    assert {
        key: key_slot(k.encode()) for key, k in zip(same_slot, same_slot, strict=True)
    } == dict.fromkeys(same_slot, slot)
    assert key_slot(keys.stream_key("ticks", "WINQ25").encode()) != slot


def test_a_multi_slot_command_is_refused_by_the_cluster(client) -> None:
    """What the splitting avoids: one XREAD over two slots is refused."""
    a, b = (keys.stream_key("ticks", s) for s in ("MGLU3", "WDOQ25"))
    with pytest.raises((valkey.exceptions.ValkeyClusterException, valkey.ResponseError)):
        client.xread({a: "0", b: "0"})


def client_url(client) -> str:
    node = client.get_default_node()
    return f"valkey://{node.host}:{node.port}/0"
