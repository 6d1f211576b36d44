"""Hostile input on the wire with real processes: garbage frames, hostile values and oversized
messages published into a running `qt bridge`, `qt features --in tcp://…` and `qt predict --in
tcp://…`, then valid events. Each stage survives, counts every rejected message (the bridge's
`stream:deadletter` and `deadletters`, the derived stages' `rejected`), says so in one warning
line, and stores every valid event once."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import valkey
import zmq

from qt_cli.core import keys
from qt_cli.core.events import NS_PER_S, FeatureVector, Trade, decode_fields
from qt_cli.core.zmq_io import PubSink
from tests.core.models_data import START_NS, SYMBOL, simulate_and_store
from tests.helpers import QtProcesses, eventually, tcp_endpoint

pytestmark = pytest.mark.e2e

MAX_BYTES = 4096
T0 = 1_754_654_400 * NS_PER_S  # 2025-08-08 12:00 UTC


def trade(n: int) -> Trade:
    """Trade n: four a second of event time from T0."""
    return Trade(
        symbol=SYMBOL, ts_event=T0 + n * NS_PER_S // 4, price=5000.0 + n % 7, quantity=1 + n % 3,
        volume=50_000.0, trade_id=n, trade_type=2, aggressor="buy", ts_init=T0 + n,
    )  # fmt: skip


def tick(n: int, **changes: Any) -> bytes:
    """Trade n's wire payload with `changes` (json: integers past 64 bits too)."""
    return json.dumps({**trade(n).to_dict(), **changes}).encode()


# Each one message the decoders must reject (no session: judged on its own, not as a gap).
GARBAGE: list[list[bytes]] = [
    [b"tick_WDOQ25", b"\x00\xff not json"],
    [b"tick_WDOQ25", b'["a", "list"]'],
    [b"a single frame"],
    [b"tick_WDOQ25", b"{", b"three frames"],
    [b"tick_WDOQ25", tick(1, trade_id=2**64 - 1)],
    [b"tick_WDOQ25", tick(2, ts_event=2**63)],  # year 2262: after any time a stage accepts
    [b"tick_WDOQ25", tick(3, ts_event=-NS_PER_S)],  # before 1970
    [b"tick_WDOQ25", tick(4, price="NaN")],
    [b"tick_WDOQ25", tick(5, price=-1.0)],
    [b"tick_WDOQ25", tick(6, history=[])],
    [b"tick_WDOQ25", tick(7, price=1e308, quantity="1e400")],
]
OVERSIZED = [[b"tick_WDOQ25", tick(8, pad="x" * (2 * MAX_BYTES))] for _ in range(2)]


class Garbage:
    """A PUB socket of our own that sends the garbage (the stage subscribes to it as one of its
    inputs); `probe(payload)` sends a message the stage counts, to learn when it has subscribed
    (probes sent before are lost, so they are never garbage the counts must match)."""

    def __init__(self) -> None:
        self.endpoint = tcp_endpoint()
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)
        self.sent = 0

    def probe(self, message: list[bytes]) -> None:
        self.sock.send_multipart(message)

    def send(self, messages: list[list[bytes]]) -> None:
        for message in messages:
            self.sock.send_multipart(message)
            self.sent += 1

    def close(self) -> None:
        self.sock.close(linger=0)
        self.context.destroy(linger=0)


@pytest.fixture
def garbage() -> Iterator[Garbage]:
    g = Garbage()
    yield g
    g.close()


def stopped(qt: QtProcesses, proc: Any) -> tuple[dict, str]:
    finished = qt.stop(proc, signal.SIGINT)
    assert finished.returncode == 0, finished.output
    assert "Traceback" not in finished.stderr
    return json.loads(finished.stdout), finished.stderr


def stat(vk: valkey.Valkey, stage: str, name: str, field: str) -> int:
    return int(vk.hget(keys.stats_key(stage, name), field) or 0)


def stored_ids(vk: valkey.Valkey) -> list[int]:
    return [int(f[b"trade_id"]) for _, f in vk.xrange(keys.stream_key("ticks", SYMBOL))]


def hostile_letters(vk: valkey.Valkey) -> list:
    """The dead letters other than the subscription probes."""
    return [e for e in vk.xrange(keys.stream_key("deadletter")) if e[1][b"raw"] != b"probe"]


def oversize_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "--max-message-bytes" in line]


def test_the_bridge_dead_letters_every_hostile_message_and_stores_the_valid_ones(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, garbage: Garbage
) -> None:
    feed = tcp_endpoint()
    pub = PubSink(feed, channel="ticks", session="hostile.ticks")
    bridge = qt.start(
        "bridge", "--in", garbage.endpoint, "--in", feed, "--out", valkey_url, "--replay",
        "none", "--no-catch-up", "--max-message-bytes", str(MAX_BYTES), "--json",
    )  # fmt: skip
    try:
        letters = keys.stream_key("deadletter")
        eventually(
            lambda: garbage.probe([b"probe"]) or vk.exists(letters),
            timeout=30,
            message="subscribed",
        )
        hostile = [
            *GARBAGE,
            [b"tick_WDOQ25", tick(9, symbol="WDO}Q25")],  # would break its key name
            [b"tick_WDOQ25", tick(10, symbol="WDOQ25\n")],
            *OVERSIZED,
        ]
        garbage.send(hostile)
        eventually(
            lambda: len(hostile_letters(vk)) == garbage.sent, timeout=30, message="all rejected"
        )
        trades = [trade(n) for n in range(100, 300)]
        eventually(
            lambda: pub.send(trades[:1]) or vk.exists(keys.stream_key("ticks", SYMBOL)),
            timeout=30,
            message="the feed subscribed",
        )
        pub.send(trades[1:])
        ticks = keys.stream_key("ticks", SYMBOL)
        eventually(
            lambda: vk.xlen(ticks) >= len(trades) and stored_ids(vk)[-1] == trades[-1].trade_id,
            timeout=30,
            message="the valid ones stored",
        )
        totals, stderr = stopped(qt, bridge)
    finally:
        pub.close()
    assert totals["deadletters"] == vk.xlen(letters)  # the probes too
    assert len(hostile_letters(vk)) == len(hostile) == garbage.sent
    stored = stored_ids(vk)
    assert list(dict.fromkeys(stored)) == [t.trade_id for t in trades]  # in order (the first
    assert totals["written"] == len(stored)  # maybe sent again until the feed was heard)
    reasons = [f[b"reason"].decode() for _, f in hostile_letters(vk)]
    assert sum("is over --max-message-bytes 4,096" in r for r in reasons) == len(OVERSIZED)
    assert len(oversize_warnings(stderr)) == 1, stderr  # one line, however many
    assert not [k for k in vk.keys("stream:*") if b"}Q25" in k or b"\n" in k]


def test_the_features_stage_counts_every_hostile_message_and_computes_from_the_valid_ones(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, garbage: Garbage
) -> None:
    feed = tcp_endpoint()
    pub = PubSink(feed, channel="ticks", session="hostile.ticks")
    proc = qt.start(
        "features", "--in", garbage.endpoint, "--in", feed, "--replay", "none", "--symbol",
        SYMBOL, "--set", "basic11", "--every", "1s", "--out", valkey_url, "--max-message-bytes",
        str(MAX_BYTES),
        "--json",
    )  # fmt: skip
    try:
        early = trade(-40).to_wire()  # a valid trade before the others: counted as received
        eventually(
            lambda: (
                garbage.probe([b"tick_WDOQ25", early])
                or stat(vk, "features", "features", "received") > 0
            ),
            timeout=30,
            message="subscribed",
        )
        garbage.send([*GARBAGE, *OVERSIZED])
        eventually(
            lambda: stat(vk, "features", "features", "rejected") == garbage.sent,
            timeout=30,
            message="all rejected",
        )
        trades = [trade(n) for n in range(200)]
        pub.send(trades)  # subscribed when the garbage input was (one connect, one process)
        out = keys.stream_key("features", SYMBOL)
        eventually(lambda: vk.xlen(out) >= 40, timeout=30, message="vectors from the valid ones")
        totals, stderr = stopped(qt, proc)
    finally:
        pub.close()
    assert totals["rejected"] == garbage.sent
    assert "undecodable messages rejected" in stderr
    assert len(oversize_warnings(stderr)) == 1, stderr
    assert len([line for line in stderr.splitlines() if "rejected a message" in line]) == 1
    vectors = [decode_fields(f) for _, f in vk.xrange(keys.stream_key("features", SYMBOL))]
    assert all(isinstance(v, FeatureVector) for v in vectors)


def test_the_predict_stage_counts_every_hostile_message_and_scores_the_valid_ones(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, garbage: Garbage, tmp_path: Any
) -> None:
    from tests.core.test_models_bundle import write

    model = write(tmp_path, "logreg")[0]
    counts = simulate_and_store(vk, seconds=30, every=2, start_ns=START_NS)
    feat_key = keys.stream_key("features", SYMBOL)
    vectors = [decode_fields(f) for _, f in vk.xrange(feat_key)]
    vk.delete(feat_key)
    feed = tcp_endpoint()
    pub = PubSink(feed, channel="features", keep_identity=True)
    unnumbered = {**vectors[0].to_dict(), "session": "", "seq": 0}  # each judged on its own
    hostile_vectors = [
        [b"features_WDOQ25", json.dumps({**unnumbered, "features": {"a": "x"}}).encode()],
        [b"features_WDOQ25", json.dumps({**unnumbered, "features": [1.0]}).encode()],
        [b"features_WDOQ25", json.dumps({**unnumbered, "ts_event": 2**63}).encode()],
    ]
    proc = qt.start(
        "predict", "--model", str(model), "--in", garbage.endpoint, "--in", feed, "--symbol",
        SYMBOL, "--out", valkey_url, "--max-message-bytes", str(MAX_BYTES), "--json",
    )  # fmt: skip
    try:
        other_set = FeatureVector(symbol=SYMBOL, ts_event=START_NS, feature_set="other")
        eventually(
            lambda: (
                garbage.probe([b"features_WDOQ25", other_set.to_wire()])
                or stat(vk, "predict", "predict", "received") > 0
            ),
            timeout=30,
            message="subscribed",
        )
        garbage.send([*GARBAGE, *hostile_vectors, *OVERSIZED])
        eventually(
            lambda: stat(vk, "predict", "predict", "rejected") == garbage.sent,
            timeout=30,
            message="all rejected",
        )
        eventually(
            lambda: pub.send(vectors[:1]) or stat(vk, "predict", "predict", "received") > 0,
            timeout=30,
            message="the feed subscribed",
        )
        pub.send(vectors[1:])
        signals = keys.stream_key("signals", SYMBOL)
        eventually(lambda: vk.xlen(signals) == counts["warm"], timeout=60, message="all scored")
        totals, stderr = stopped(qt, proc)
    finally:
        pub.close()
    assert totals["rejected"] == garbage.sent
    assert totals["predictions"] >= counts["warm"]  # the first vector maybe sent twice
    assert len(oversize_warnings(stderr)) == 1, stderr


def test_a_closed_stdin_is_one_error_line(qt: QtProcesses, valkey_url: str) -> None:
    """`qt bridge --in - <&-`: stdin is closed (Python's sys.stdin is None)."""
    import shlex
    import subprocess

    from tests.helpers import qt_command

    command = shlex.join(qt_command("bridge", "--in", "-", "--out", valkey_url, "--replay", "none"))
    result = subprocess.run(
        ["sh", "-c", f"exec {command} <&-"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: --in -: stdin is closed or not a file; pipe events into it, e.g. "
        "qt feed --sim --out - | qt bridge --in -"
    )


@pytest.mark.parametrize(
    ("name", "code", "says"),
    [
        ("garbage.bin", 2, "is not a recognised file"),
        ("garbage.csv", 2, "is not a recognised file"),
        ("garbage.parquet", 4, "not a readable Parquet file"),
        ("garbage.jsonl", 4, "nothing valid in"),
    ],
)
def test_a_replay_file_of_binary_garbage_is_one_error(
    qt: QtProcesses, tmp_path: Any, name: str, code: int, says: str
) -> None:
    import random

    path = tmp_path / name
    path.write_bytes(random.Random(17).randbytes(20_000))
    result = qt.run("feed", "--replay", str(path), "--speed", "0", "--out", "-", timeout=60)
    assert result.returncode == code, result.output
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and says in errors[0], result.stderr
