"""`qt query` speed and storage: one hour (50,000 ticks) and one trading day (500,000) stored.

For each size, in the same run on the same server:
- bare `XRANGE` of the per-event stream returning raw replies (the ceiling of the per-event layout),
- the naive read: per-event XRANGE turned into a DataFrame (what the seed design would do),
- bare `XRANGE` of the history chunks (raw replies),
- `query("ticks") -> DataFrame` (chunks + the chunk still forming + tail, decoded to columns):
  median time and peak memory, with the chunks in the current codec; the same without the
  forming chunk (its trades read per event); then the same chunks rewritten in the previous
  codec (version 1: zlib, decoded chunk by chunk) and read again,
- the bridge's chunker cost per trade, with and without packing the forming chunk,
- bytes per tick in Valkey (MEMORY USAGE … SAMPLES 0) of the chunks (both codecs) and of the
  per-event stream,
- streaming CSV export (`run(fmt="csv")`) rows/s.

Ticks come from the simulator (`qt feed --sim`, seeded) when it is available, else from a
generator of realistic WDO trades. Run: `python -m benchmarks.bench_query` (about a minute).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import valkey

from benchmarks.report import record, write_section
from qt_cli.core import keys, query
from qt_cli.core.bridge.derive import FORMING_INTERVAL_S, ColumnChunker
from qt_cli.core.chunks import (
    CODEC_VERSION,
    ChunkBuilder,
    decode_tick_columns,
    encode_columns,
    tick_columns_of,
)
from qt_cli.core.events import NS_PER_MS, NS_PER_S, Trade
from qt_cli.core.store.managed import ManagedValkey, free_port

SYMBOL = "WDOQ25"
SIZES = (("1 hour", 50_000), ("1 day", 500_000))
REPEAT = 5
CHUNKER_TRADES = 100_000
BARE_PEAK_MAX_TRADES = 100_000


def sim_trades(n: int) -> list[Trade] | None:
    """The first n trades of a seeded simulated session, or None without the simulator."""
    try:
        from qt_cli.core.sources.sim import SimConfig, SimulatedMarket
    except ImportError:
        return None
    start = int(pd.Timestamp("2025-08-04T09:00", tz="America/Sao_Paulo").value)
    market = SimulatedMarket(SimConfig(symbols=(SYMBOL,), seed=42, rate=0, start_ns=start))
    market.open()
    out: list[Trade] = []
    seq = 0
    try:
        while len(out) < n and not market.finished:
            for event in market.read(0.0):
                seq += 1  # the publisher numbers every message of the ticks channel
                if isinstance(event, Trade):
                    out.append(dataclasses.replace(event, session="9f2c61d4.ticks", seq=seq))
    finally:
        market.close()
    return out[:n] if len(out) >= n else None


def generated_trades(n: int) -> list[Trade]:
    """Realistic WDO trades: ms event times, ns receive times, 0.5-point steps, skewed brokers."""
    rng = np.random.default_rng(7)
    start_ms = 1_754_654_400_000
    mean_gap_ms = 3_600_000 / 50_000
    ts = (start_ms + np.cumsum(rng.exponential(mean_gap_ms, n).astype(np.int64))) * NS_PER_MS
    latency = rng.integers(500_000, 20_000_000, n)
    price = 5432.5 + np.cumsum(rng.choice([-1, 0, 0, 0, 1], n)) * 0.5
    quantity = np.minimum(rng.geometric(0.35, n), 500)
    brokers = np.array((3, 8, 15, 27, 39, 45, 72, 85, 92, 107, 114, 120, 122, 127, 147, 172))
    weights = 1.0 / np.arange(1, len(brokers) + 1)
    buyer = rng.choice(brokers, n, p=weights / weights.sum())
    seller = rng.choice(brokers, n, p=weights / weights.sum())
    kinds = rng.choice([2, 3, 1], n, p=[0.49, 0.49, 0.02])
    return [
        Trade(
            symbol=SYMBOL,
            ts_event=int(ts[i]),
            price=float(price[i]),
            quantity=int(quantity[i]),
            volume=float(price[i]) * int(quantity[i]) * 10.0,
            trade_id=100_000 + i,
            buyer=int(buyer[i]),
            seller=int(seller[i]),
            trade_type=int(kinds[i]),
            aggressor="buy" if kinds[i] == 2 else "sell" if kinds[i] == 3 else "none",
            ts_init=int(ts[i] + latency[i]),
            session="9f2c61d4.ticks",
            seq=i + 1,
        )
        for i in range(n)
    ]


def store(client: valkey.Valkey, trades: list[Trade]) -> None:
    """Per-event entries and history chunks, laid out as docs/contracts.md says."""
    key = keys.stream_key("ticks", SYMBOL)
    hist = keys.history_key("ticks", SYMBOL)
    builder = ChunkBuilder()
    top = -1
    all_ids: list[bytes] = []
    sealed_src = b""
    for start in range(0, len(trades), 5000):
        batch = trades[start : start + 5000]
        pipe = client.pipeline(transaction=False)
        for t in batch:
            fields = t.to_fields()
            ms = t.ts_event // NS_PER_MS
            if ms < top:
                ms, fields["late"] = top, "1"
            top = max(top, ms)
            pipe.xadd(key, fields, id=f"{ms}-*")
        ids = pipe.execute()
        all_ids += ids
        for t, entry_id in zip(batch, ids, strict=True):
            if chunk := builder.add(t, entry_id):
                client.xadd(hist, chunk.fields, id=f"{chunk.t_min_ms}-*")
                sealed_src = chunk.fields["src"]
    # What is not sealed yet stays in the per-event tail, as on a live system; the bridge stores
    # the chunk still forming about once a second (derive.FORMING_INTERVAL_S), so it covers the
    # pending trades but the last second's, which are read entry by entry.
    first = next(i for i, entry_id in enumerate(all_ids) if entry_id > sealed_src)
    newest = trades[-1].ts_event
    covered = [
        i
        for i in range(first, len(trades))
        if trades[i].ts_event <= newest - int(FORMING_INTERVAL_S * NS_PER_S)
    ]
    if covered:
        last = covered[-1]
        late = [
            keys.parse_id(all_ids[i])[0] > trades[i].ts_event // NS_PER_MS
            for i in range(first, last + 1)
        ]
        fields = encode_columns(tick_columns_of(trades[first : last + 1], late=late), fast=True)
        fields.update(src=all_ids[last], after=sealed_src)
        client.hset(keys.forming_chunk_key("ticks", SYMBOL), mapping=fields)


def recode(client: valkey.Valkey, version: int) -> None:
    """The history chunks rewritten in codec `version` (same ids, other fields kept)."""
    hist = keys.history_key("ticks", SYMBOL)
    copy = keys.rewrite_key(hist)
    pipe = client.pipeline(transaction=False)
    for entry_id, fields in client.xrange(hist):
        new = encode_columns(decode_tick_columns(fields), version=version)
        pipe.xadd(copy, {**fields, **{k.encode(): v for k, v in new.items()}}, id=entry_id)
    pipe.execute()
    client.rename(copy, hist)
    forming = keys.forming_chunk_key("ticks", SYMBOL)
    if fields := client.hgetall(forming):
        client.hset(forming, mapping=encode_columns(decode_tick_columns(fields), version=version))


def timed(fn: Callable[[], Any], repeat: int = REPEAT) -> tuple[float, Any]:
    """Median seconds of `repeat` runs, and the last result."""
    times = []
    result = None
    for _ in range(repeat):
        result = None
        gc.collect()
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def assert_same_frame(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """The same index, columns, dtypes (categories aside) and values, NaN where NaN: what
    `pd.testing.assert_frame_equal` checks, in NumPy (it takes ~20 s on a day's frame)."""
    assert got.index.equals(expected.index), "index differs"
    assert list(got.columns) == list(expected.columns), (list(got.columns), list(expected.columns))
    for name in expected.columns:
        a, b = got[name], expected[name]
        if isinstance(b.dtype, pd.CategoricalDtype):  # the strings, whatever the category order
            assert np.array_equal(np.asarray(a), np.asarray(b)), name
            continue
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        values, want = a.to_numpy(), b.to_numpy()
        same = np.array_equal(values, want, equal_nan=values.dtype.kind == "f")
        assert same, name


def bare_peak(r: dict) -> str:
    if "bare_peak_mib" in r:
        return f"{r['bare_peak_mib']:.0f} MiB"
    return f"— (measured up to {BARE_PEAK_MAX_TRADES:,} entries)"


def peak_mib(fn: Callable[[], Any]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def naive_frame(client: valkey.Valkey, key: str, start: str, end: str) -> pd.DataFrame:
    entries = client.xrange(key, start, end)
    rows = [f for _, f in entries]
    return pd.DataFrame(
        {
            "ts_event": [int(f[b"ts_event"]) for f in rows],
            "price": [float(f[b"price"]) for f in rows],
            "quantity": [int(f[b"quantity"]) for f in rows],
            "volume": [float(f[b"volume"]) for f in rows],
            "trade_id": [int(f[b"trade_id"]) for f in rows],
            "buyer": [int(f[b"buyer"]) for f in rows],
            "seller": [int(f[b"seller"]) for f in rows],
            "aggressor": [f[b"aggressor"].decode() for f in rows],
        }
    )


def chunker_ns(trades: list[Trade], forming_every: Callable[[int, int], bool] | None) -> float:
    """ns per trade the bridge's deriver spends in its chunker (`derive.ColumnChunker`, sealing
    included), fed batches of 64 trades; with `forming_every(trades since, event ns since)`, it
    also packs the chunk still forming when that says so (what `_write_forming` stores)."""
    batches = []
    for start in range(0, len(trades), 64):
        part = trades[start : start + 64]
        ids = [f"{t.ts_event // NS_PER_MS}-{start + i}" for i, t in enumerate(part)]
        batches.append((tick_columns_of(part), ids, part[-1].ts_event))
    best = float("inf")
    for _ in range(2):
        chunker = ColumnChunker()
        chunker.after = "0-1"
        since_n, since_ns = 0, batches[0][2]
        gc.collect()
        started = time.perf_counter()
        for cols, ids, newest in batches:
            chunker.add_columns(cols, ids)
            since_n += cols.n
            if forming_every is not None and forming_every(since_n, newest - since_ns):
                chunker.forming()
                since_n, since_ns = 0, newest
        best = min(best, time.perf_counter() - started)
    return best / len(trades) * 1e9


def measure(client: valkey.Valkey, trades: list[Trade]) -> dict[str, float]:
    from_ns, to_ns = trades[0].ts_event, trades[-1].ts_event
    start_ms, end_ms = str(from_ns // NS_PER_MS), str(to_ns // NS_PER_MS)
    key = keys.stream_key("ticks", SYMBOL)
    hist = keys.history_key("ticks", SYMBOL)
    results: dict[str, float] = {}

    # The per-event baselines take seconds per read of a day: fewer repeats there.
    slow = 1 if len(trades) > 100_000 else 3
    results["bare_events"], _ = timed(
        lambda: client.execute_command("XRANGE", key, start_ms, end_ms), repeat=slow
    )
    results["naive"], _ = timed(lambda: naive_frame(client, key, start_ms, end_ms), repeat=slow)
    chunk_start = str(from_ns // NS_PER_MS - 60_000)
    results["bare_chunks"], _ = timed(
        lambda: client.execute_command("XRANGE", hist, chunk_start, end_ms)
    )

    def run_query() -> pd.DataFrame:
        return query.query("ticks", symbols=SYMBOL, start=from_ns, end=to_ns, client=client)

    results["query"], frame = timed(run_query)
    assert len(frame) == len(trades), (len(frame), len(trades))
    # The same read without the chunk still forming (as before it existed): its trades are read
    # per event. Same stream, same run.
    forming = keys.forming_chunk_key("ticks", SYMBOL)
    saved = client.hgetall(forming)
    client.delete(forming)
    results["query_no_forming"], frame_no_forming = timed(run_query)
    assert_same_frame(frame_no_forming, frame)
    if saved:
        client.hset(forming, mapping=saved)
    assert frame["trade_id"].tolist()[:5] == [t.trade_id for t in trades[:5]]
    results["query_peak_mib"] = peak_mib(run_query)
    # The bare per-event read's peak: tracemalloc tracing 500,000 entries' objects takes ~30 s,
    # so it is measured on the smaller size only (it grows with the entries read).
    if len(trades) <= BARE_PEAK_MAX_TRADES:
        results["bare_peak_mib"] = peak_mib(
            lambda: client.execute_command("XRANGE", key, start_ms, end_ms)
        )
    results["frame_mib"] = frame.memory_usage(deep=False).sum() / 2**20

    results["chunk_bytes_per_tick"] = client.memory_usage(hist, samples=0) / len(trades)
    results["event_bytes_per_tick"] = client.memory_usage(key, samples=0) / len(trades)

    request = query.make_request("ticks", symbols=[SYMBOL], start=from_ns, end=to_ns)
    with open(os.devnull, "wb") as sink:
        started = time.perf_counter()
        result = query.run(client, request, fmt="csv", out=sink)
        csv_s = time.perf_counter() - started
    results["csv_rows_per_s"] = result.rows / csv_s
    with open(os.devnull, "wb") as sink:
        started = time.perf_counter()
        result = query.run(client, request, fmt="jsonl", out=sink)
        results["jsonl_rows_per_s"] = result.rows / (time.perf_counter() - started)

    # Packing cost per trade (what the bridge pays when it seals a chunk), both codecs.
    stored = [decode_tick_columns(f) for _, f in client.xrange(hist)]
    for version in (CODEC_VERSION, 1):
        seconds = min(
            timed(lambda v=version: [encode_columns(c, version=v) for c in stored], repeat=1)[0]
            for _ in range(2)
        )
        results[f"encode_v{version}_ns"] = seconds / sum(c.n for c in stored) * 1e9

    # What storing the chunk still forming costs the bridge's deriver, per trade: never; once
    # a second of event time (the data's own pace); once per 100,000 trades (1 s at 100k/s).
    # Per trade, so the first CHUNKER_TRADES trades tell it (the day's would take ~20 s more).
    interval_ns = int(FORMING_INTERVAL_S * NS_PER_S)
    sample = trades[:CHUNKER_TRADES]
    results["chunker_ns"] = chunker_ns(sample, None)
    results["chunker_forming_live_ns"] = chunker_ns(sample, lambda n, ns: ns >= interval_ns)
    results["chunker_forming_100k_ns"] = chunker_ns(sample, lambda n, ns: n >= 100_000)

    # The same chunks in the previous codec (version 1), read the same way.
    recode(client, 1)
    results["v1_bare_chunks"], _ = timed(
        lambda: client.execute_command("XRANGE", hist, chunk_start, end_ms)
    )
    results["v1_query"], frame_v1 = timed(run_query)
    assert_same_frame(frame_v1, frame)
    results["v1_chunk_bytes_per_tick"] = client.memory_usage(hist, samples=0) / len(trades)
    recode(client, CODEC_VERSION)
    return results


def main() -> None:
    largest = max(n for _, n in SIZES)
    started = time.perf_counter()
    gc.disable()  # objects that all live to the end: no collection walks them while they grow
    trades_all = sim_trades(largest)
    source = "the simulator (`--sim`, seed 42)"
    if trades_all is None:
        trades_all = generated_trades(largest)
        source = "a generator of realistic WDO trades"
    print(f"{len(trades_all)} trades from {source} in {time.perf_counter() - started:.1f} s")
    # The benchmark's own 500,000 Trade objects live to the end: out of the cycle collector's
    # sight, so the gc.collect() before each timed run does not walk them (and leave the caches
    # cold for the read it times). The simulator's own garbage is collected first.
    gc.enable()
    gc.collect()
    gc.freeze()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ManagedValkey(Path(tmp), port=free_port())
        status = server.start()
        try:
            client = valkey.Valkey(host="127.0.0.1", port=status.port)
            for label, n in SIZES:
                client.flushall()
                trades = trades_all[:n]
                span_h = (trades[-1].ts_event - trades[0].ts_event) / NS_PER_S / 3600
                store(client, trades)
                r = measure(client, trades)
                r["span_h"] = span_h
                rows.append((label, n, r))
                print(label, {k: round(v, 4) for k, v in r.items()}, file=sys.stderr)
            client.close()
        finally:
            server.stop()

    targets = {"1 hour": 0.010, "1 day": 0.080}
    lines = [
        "## query",
        "",
        f"Ticks from {source}, stored per event and as history chunks (`docs/query.md`); "
        f"times are medians of {REPEAT} runs (each after a `gc.collect()`; the benchmark's own "
        "Trade objects frozen out of it), peak memory from tracemalloc. Chunks in the "
        f"current codec (version {CODEC_VERSION}: zstd, decoded a page at a time), then the same "
        "chunks rewritten in the previous one (version 1: zlib, decoded chunk by chunk) and read "
        "again in the same run; both reads give the same frame.",
        "",
        "| stored | bare XRANGE per-event (raw) | per-event → DataFrame (naive) | bare XRANGE chunks (raw) "
        f"| **query → DataFrame (v{CODEC_VERSION})** | target | same, without the forming chunk "
        "| previous codec (v1): bare XRANGE / query | peak memory query / bare XRANGE | DataFrame |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, n, r in rows:
        lines.append(
            f"| {label}: {n:,} ticks ({r['span_h']:.1f} h) | {r['bare_events'] * 1000:.0f} ms "
            f"| {r['naive'] * 1000:.0f} ms | {r['bare_chunks'] * 1000:.1f} ms "
            f"| **{r['query'] * 1000:.1f} ms** | ≤ {targets[label] * 1000:.0f} ms "
            f"| {r['query_no_forming'] * 1000:.1f} ms "
            f"| {r['v1_bare_chunks'] * 1000:.1f} ms / {r['v1_query'] * 1000:.1f} ms "
            f"| {r['query_peak_mib']:.0f} MiB / {bare_peak(r)} | {r['frame_mib']:.0f} MiB |"
        )
    lines += [
        "",
        f"| stored | history chunks v{CODEC_VERSION} (MEMORY USAGE) | previous codec (v1) "
        "| per-event stream | CSV export | JSON lines export |",
        "|---|---|---|---|---|---|",
    ]
    for label, _, r in rows:
        lines.append(
            f"| {label} | **{r['chunk_bytes_per_tick']:.1f} B/tick** (target ≤ 12) "
            f"| {r['v1_chunk_bytes_per_tick']:.1f} B/tick "
            f"| {r['event_bytes_per_tick']:.0f} B/tick | **{r['csv_rows_per_s']:,.0f} rows/s** "
            f"(target ≥ 200,000) | {r['jsonl_rows_per_s']:,.0f} rows/s |"
        )
    packing = ", ".join(
        f"{label}: {r[f'encode_v{CODEC_VERSION}_ns']:.0f} ns (v1: {r['encode_v1_ns']:.0f} ns)"
        for label, _, r in rows
    )
    chunker = "; ".join(
        f"{label}: {r['chunker_ns']:.0f} ns, with the forming chunk packed once a second of event "
        f"time {r['chunker_forming_live_ns']:.0f} ns (at this data's {n / (r['span_h'] * 3600):.0f} "
        "trades/s: "
        f"{(r['chunker_forming_live_ns'] - r['chunker_ns']) * n / (r['span_h'] * 3600) / 1e6:.2f} "
        "ms of CPU per second more), once per 100,000 trades (a second at 100k trades/s) "
        f"{r['chunker_forming_100k_ns']:.0f} ns"
        for label, n, r in rows
    )
    lines += [
        "",
        "The chunk still forming: the bridge stores the trades it has not sealed into a chunk yet "
        f"as one packed value about every {FORMING_INTERVAL_S:g} s (`derive.FORMING_INTERVAL_S`); "
        "here it covers the pending trades but the last second's, which are read per event. "
        '"Without the forming chunk" reads the same stream with it removed (its trades per '
        "event, as before it existed). The bridge's chunker per trade (sealing included, best of "
        f"2, over the first {CHUNKER_TRADES:,} trades at most): {chunker}.",
    ]
    lines += [
        "",
        f"Packing a chunk (`encode_columns`, what the bridge pays when it seals one), per trade, "
        f"codec v{CODEC_VERSION} (previous codec in brackets), best of 2: {packing}.",
    ]
    write_section("query", "\n".join(lines))
    print("\n".join(lines))
    for (label, n, r), limit in zip(rows, (10.0, 80.0), strict=True):
        ms = r["query"] * 1000
        record("query", f"{label} ({n:,} ticks) -> DataFrame", ms, "ms",
               ceiling=r["bare_chunks"] * 1000, target=f"≤ {limit:g} ms", met=ms <= limit,
               seed_target="1 h query < 100 ms" if n <= 100_000 else "")  # fmt: skip
        record("query", f"{label}: bytes per tick in Valkey", r["chunk_bytes_per_tick"], "B",
               target="≤ 12", met=r["chunk_bytes_per_tick"] <= 12)  # fmt: skip


if __name__ == "__main__":
    main()
