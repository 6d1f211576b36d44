"""Feed benchmark: publish cost per message, sustained msgs/s, Nelogica CSV parse rows/s.

Run: `python -m benchmarks.bench_feed` (writes the `feed` section of BENCHMARKS.md).

- Publish cost: `PubSink.send` (wire dict + orjson + journal append/commit + two-frame send) on
  a real sim event mix, one message per call and in batches of 1,024, with a subscriber in
  another process draining the socket; against a bare `send_multipart` loop of the same
  pre-encoded frames on the same kind of socket, measured in the same run.
- Sustained: `qt feed --sim --rate 0` in-process (`run_feed`, journal on, fsync batch) and the
  simulator alone, so the feed's own share is visible.
- Parse: a generated Nelogica tick export through NelogicaCsvSource (rows -> Trade events).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from benchmarks.report import record, write_section
from qt_cli.core.events import Event
from qt_cli.core.feed import FeedOptions, run_feed
from qt_cli.core.journal import JournalWriter
from qt_cli.core.sources.replay import NelogicaCsvSource
from qt_cli.core.sources.sim import SimConfig, SimulatedMarket
from qt_cli.core.zmq_io import PubSink
from tests.helpers import tcp_endpoint

CONSUMER = """
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.SUB); s.setsockopt(zmq.SUBSCRIBE, b""); s.setsockopt(zmq.RCVHWM, 0)
s.connect(sys.argv[1]); n = 0
while True:
    if not s.poll(3000): break
    s.recv_multipart(); n += 1
print(n)
"""


def sim_events(n: int) -> list[Event]:
    market = SimulatedMarket(SimConfig(seed=1, rate=0))
    market.open()
    events: list[Event] = []
    while len(events) < n:
        events += market.read(0.0)
    market.close()
    return events[:n]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)]


def start_consumer(endpoint: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", CONSUMER, endpoint], stdout=subprocess.PIPE)
    time.sleep(0.5)  # let it connect (slow joiner)
    return proc


def publish_cost(events: list[Event], tmp: Path) -> dict[str, float]:
    endpoint = tcp_endpoint()
    journal = JournalWriter(tmp / "journal-cost", fsync="batch")
    pub = PubSink(endpoint, channel="bench", session="bench.ticks", journal=journal)
    consumer = start_consumer(endpoint)
    clock = time.perf_counter_ns
    single: list[float] = []
    for event in events[:50_000]:
        t0 = clock()
        pub.send([event])
        single.append((clock() - t0) / 1000)
    batched: list[float] = []
    batch = 1024
    t_start = clock()
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        t0 = clock()
        pub.send(chunk)
        batched.append((clock() - t0) / 1000 / len(chunk))
    batch_rate = len(events) / ((clock() - t_start) / 1e9)
    pub.close()
    journal.close()
    consumer.wait(timeout=60)

    # baseline: the same frames, pre-encoded, through a bare send_multipart loop
    frames = [(f"tick_{e.symbol}".encode(), e.to_wire()) for e in events]
    endpoint = tcp_endpoint()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 200_000)
    sock.bind(endpoint)
    consumer = start_consumer(endpoint)
    bare: list[float] = []
    for topic, payload in frames[:50_000]:
        t0 = clock()
        sock.send_multipart([topic, payload])
        bare.append((clock() - t0) / 1000)
    t_start = clock()
    for topic, payload in frames:
        sock.send_multipart([topic, payload])
    bare_rate = len(frames) / ((clock() - t_start) / 1e9)
    sock.close(linger=2000)
    consumer.wait(timeout=60)
    return {
        "single_p50": statistics.median(single),
        "single_p99": pct(single, 0.99),
        "batched_p50": statistics.median(batched),
        "batched_p99": pct(batched, 0.99),
        "batch_rate": batch_rate,
        "bare_p50": statistics.median(bare),
        "bare_p99": pct(bare, 0.99),
        "bare_rate": bare_rate,
    }


def sustained(tmp: Path, n: int) -> dict[str, float]:
    market = SimulatedMarket(SimConfig(seed=2, rate=0))
    market.open()
    t0 = time.perf_counter()
    produced = 0
    while produced < n:
        produced += len(market.read(0.0))
    sim_rate = produced / (time.perf_counter() - t0)
    market.close()
    options = FeedOptions(
        source="sim",
        rate=0,
        seed=2,
        stop_after=n,
        journal_dir=tmp / "journal-sim",
        outputs=tuple(f"{k}={tcp_endpoint()}" for k in ("ticks", "book", "history", "replay")),
    )
    totals = run_feed(options, handle_signals=False)
    return {
        "feed_rate": totals["rate"],
        "sim_rate": sim_rate,
        "journal_mb": totals["journal"]["bytes"] / 1e6,
    }


def nelogica_file(path: Path, rows: int) -> Path:
    with open(path, "w") as handle:
        handle.write(
            "ticker,date,time,trade_number,price,qty,vol,buy_agent,sell_agent,trade_type,aft\n"
        )
        kinds = ("AggressorBuyer", "AggressorSeller", "Compra Agressão", "Leilão")
        for i in range(rows):
            second = 9 * 3600 + i // 25
            hhmmss = f"{second // 3600:02d}{second // 60 % 60:02d}{second % 60:02d}"
            price = 5000 + (i % 40) * 0.5
            qty = 1 + i % 5
            handle.write(
                f"WDOQ25,20250808,{hhmmss},{i + 1},{price},{qty},{price * qty * 10},"
                f"XP INVESTIMENTOS,BTG PACTUAL,{kinds[i % 4]},N\n"
            )
    return path


def parse_rate(tmp: Path, rows: int) -> dict[str, float]:
    path = nelogica_file(tmp / "ticks.csv", rows)
    source = NelogicaCsvSource(path, speed=0)
    source.open()
    t0 = time.perf_counter()
    count = 0
    while not source.finished:
        count += len(source.read(0.1))
    elapsed = time.perf_counter() - t0
    source.close()
    assert count == rows, (count, rows)
    return {"rows": rows, "parse_rate": rows / elapsed, "mb": path.stat().st_size / 1e6}


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        events = sim_events(200_000)
        kinds = sorted({e.TYPE for e in events})
        cost = publish_cost(events, tmp)
        rate = sustained(tmp, 500_000)
        parse = parse_rate(tmp, 1_000_000)
    md = f"""## feed

Publish cost per message (`PubSink.send`: wire dict + orjson + journal append and commit + send),
on {len(events):,} simulator events ({", ".join(kinds)}), a subscriber draining in another process:

| path | p50 µs/msg | p99 µs/msg | msgs/s |
|---|---:|---:|---:|
| qt, one message per call (journal commit each) | {cost["single_p50"]:.1f} | {cost["single_p99"]:.1f} | |
| qt, batches of 1,024 | {cost["batched_p50"]:.2f} | {cost["batched_p99"]:.2f} | {cost["batch_rate"]:,.0f} |
| bare `send_multipart` of pre-encoded frames (no encode, no journal) | {cost["bare_p50"]:.1f} | {cost["bare_p99"]:.1f} | {cost["bare_rate"]:,.0f} |

Target p99 ≤ 50 µs per message.

Sustained, `qt feed --sim --rate 0` in one process (journal on, fsync batch, 500,000 events):
**{rate["feed_rate"]:,.0f} msgs/s** (target ≥ 100,000), journal {rate["journal_mb"]:,.0f} MB.
The simulator alone generates {rate["sim_rate"]:,.0f} events/s, i.e. it takes about
{100 * rate["feed_rate"] / rate["sim_rate"]:.0f}% of the feed's time per event on this core.

Nelogica tick-export parse (`NelogicaCsvSource`, rows -> Trade events, {parse["rows"]:,} rows,
{parse["mb"]:,.0f} MB): **{parse["parse_rate"]:,.0f} rows/s** (target ≥ 200,000).
"""
    print(md)
    write_section("feed", md)
    record("feed", "publish p99, one message per call", cost["single_p99"], "µs",
           ceiling=cost["bare_p99"], target="≤ 50 µs", met=cost["single_p99"] <= 50,
           seed_target="publish < 1 ms")  # fmt: skip
    record("feed", "publish, batches of 1,024", cost["batch_rate"], "msgs/s",
           ceiling=cost["bare_rate"], seed_target="> 10k msgs/s")  # fmt: skip
    record("feed", "sustained qt feed --sim --rate 0", rate["feed_rate"], "msgs/s",
           ceiling=rate["sim_rate"], target="≥ 100,000", met=rate["feed_rate"] >= 100_000,
           seed_target="> 10k msgs/s")  # fmt: skip
    record("feed", "Nelogica CSV parse", parse["parse_rate"], "rows/s",
           target="≥ 200,000", met=parse["parse_rate"] >= 200_000)  # fmt: skip


if __name__ == "__main__":
    main()
