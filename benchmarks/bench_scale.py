"""Scale-out on one machine: `qt features` and `qt predict` with 1, 2 and 3 workers of one group
over 6 symbols, beside the raw per-core compute rate measured in the same run.

Input: a seeded simulated session of 6 symbols (`SimulatedMarket`), stored in a valkey-server
of the benchmark's own the way `qt bridge` stores it (ticks and book, each with its session and
seq). For each worker count N, on an emptied server:
- features: N `qt features --group g --consumer wI --every trade` processes (set qt); once the
  6 symbols' leases are spread (each worker holds ceil(6 / N)), the input is written and the
  vectors stored are counted;
- predict: N `qt predict --group p --consumer wI` processes (logistic regression, ONNX); once
  all run, the feature vectors of the same session (computed in-process before) are written and
  the signals stored are counted.
Throughput = entries stored per second between 10 % and 90 % of the expected total (start-up
and the tail left out), polled every 20 ms. Raw baseline, same run: the same work in this
process on one core without Valkey (`FeatureEngine` over every event; `Predictor` per warm
vector), i.e. what one worker could do at most. N workers can at most use min(N, cores) cores,
and share them with valkey-server and this process.

Run: `python -m benchmarks.bench_scale` (about a minute).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import valkey

from benchmarks.bench_bridge import own_server
from benchmarks.bench_models import save_bundle, vectors
from benchmarks.report import record, write_section
from qt_cli.core import keys
from qt_cli.core.events import BookUpdate, Event, FeatureVector, Trade
from qt_cli.core.features.backfill import to_event
from qt_cli.core.features.engine import FeatureEngine
from qt_cli.core.features.share import STAGE as FEATURES
from qt_cli.core.models.bundle import load
from qt_cli.core.models.predictor import Predictor
from qt_cli.core.models.training import choose_threshold, label, make_pipeline
from qt_cli.core.sources.sim import SimConfig, SimulatedMarket
from qt_cli.core.store.writer import StreamWriter

QT = str(Path(sys.executable).with_name("qt"))
SYMBOLS = ("MGLU3", "WEGE3", "WINQ25", "PETR4", "WDOQ25", "ITUB4")
SIM_SECONDS = 150  # of market time: about 3,000 trades per symbol
WORKERS = (1, 2, 3)
START_NS = 1_754_308_800 * 10**9 + 3 * 3_600 * 10**9  # a Monday, 09:00 São Paulo
TAIL = 5 * len(SYMBOLS)  # the last trades of a symbol wait for a later book event


def session_events(seed: int = 5) -> list[Event]:
    """The simulated session's trades and book events, numbered per stream kind as the bridge
    stores them (one session per kind)."""
    sim = SimulatedMarket(
        SimConfig(symbols=SYMBOLS, seed=seed, rate=0, duration_s=SIM_SECONDS, start_ns=START_NS)
    )
    out: list[Event] = []
    seqs = {"ticks": 0, "book": 0}
    sim.open()
    try:
        while not sim.finished:
            for event in sim.read(timeout_s=1.0):
                kind = "ticks" if isinstance(event, Trade) else "book"
                if isinstance(event, Trade | BookUpdate):
                    seqs[kind] += 1
                    out.append(
                        dataclasses.replace(event, session=f"scale{seed}.{kind}", seq=seqs[kind])
                    )
    finally:
        sim.close()
    return out


def compute_vectors(events: Sequence[Event]) -> tuple[list[FeatureVector], float]:
    """Every trade's qt vector, as the features stage stores them, and the in-process rate
    (trades/s: the raw features baseline)."""
    engine = FeatureEngine("qt", symbols=SYMBOLS)
    out: list[FeatureVector] = []
    trades = 0
    seqs = dict.fromkeys(SYMBOLS, 0)
    started = time.perf_counter()
    for event in events:
        if isinstance(event, BookUpdate):
            engine.on_book(event)
            continue
        assert isinstance(event, Trade)
        trades += 1
        vector = engine.on_trade(event)
        if vector is None:
            continue
        seqs[event.symbol] += 1
        out.append(
            to_event(
                vector,
                ts_init=event.ts_init,
                session=f"scalefeat.{event.symbol}",
                seq=seqs[event.symbol],
            )
        )
    return out, trades / (time.perf_counter() - started)


def predict_rate(model: Path, warm: Sequence[FeatureVector], n: int = 3_000) -> float:
    """Warm vectors scored per second in-process (the raw predict baseline)."""
    predictor = Predictor(load(model))
    sample = list(warm[:n])
    started = time.perf_counter()
    for vector in sample:
        predictor.proba(predictor.row(vector))
    return len(sample) / (time.perf_counter() - started)


def start(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen([QT, *args], stdout=subprocess.PIPE, stderr=err)


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    totals = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        try:
            totals.append(json.loads(out))
        except ValueError:
            totals.append({})
    return totals


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark: {what} not reached within {timeout_s:.0f} s")
        time.sleep(0.05)


def measure(count: Callable[[], int], target: int, *, stall_s: float = 10.0) -> dict[str, float]:
    """Poll `count` every 20 ms until it reaches `target` (or stops moving for `stall_s`): the
    rate between 10 % and 90 % of `target`."""
    samples: list[tuple[float, int]] = []
    last_move = time.monotonic()
    while True:
        now, n = time.monotonic(), count()
        if samples and n > samples[-1][1]:
            last_move = now
        samples.append((now, n))
        if n >= target or now - last_move > stall_s:
            break
        time.sleep(0.02)
    if samples[-1][1] < 0.9 * target:
        raise RuntimeError(
            f"benchmark: {samples[-1][1]:,} of {target:,} stored, then nothing for {stall_s:.0f} s"
        )
    lo = next(s for s in samples if s[1] >= 0.1 * target)
    hi = next(s for s in samples if s[1] >= 0.9 * target)
    rate = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else float("nan")
    return {"rate": rate, "stored": samples[-1][1], "target": target}


def total_len(client: valkey.Valkey, kind: str) -> int:
    pipe = client.pipeline(transaction=False)
    for symbol in SYMBOLS:
        pipe.xlen(keys.stream_key(kind, symbol))
    return sum(pipe.execute())


def sym_args() -> list[str]:
    return [a for s in SYMBOLS for a in ("--symbol", s)]


def write(client: valkey.Valkey, events: Sequence[Event]) -> None:
    writer = StreamWriter(client, maxlen=0)
    for i in range(0, len(events), 5_000):
        writer.append_events(events[i : i + 5_000])


def features_run(
    client: valkey.Valkey, url: str, events: Sequence[Event], n_vectors: int, n: int, tmp: Path
) -> dict[str, Any]:
    client.flushall()
    log = tmp / f"features-{n}.log"
    args = ["features", "--in", url, *sym_args(), "--set", "qt", "--every", "trade", "--json"]
    procs = [start(*args, "--group", "g", "--consumer", f"w{i}", log=log) for i in range(n)]
    share = math.ceil(len(SYMBOLS) / n)

    def spread() -> bool:
        holders = [client.get(keys.lease_key(FEATURES, "g", s)) for s in SYMBOLS]
        return (
            None not in holders
            and len(set(holders)) == n
            and max(holders.count(h) for h in holders) <= share
        )

    try:
        wait_for(spread, 60, f"the leases of {n} features workers")
        write(client, events)
        result = measure(lambda: total_len(client, "features"), n_vectors - TAIL)
    finally:
        totals = stop(procs)
    result["per_worker"] = [t.get("vectors", 0) for t in totals]
    return result


def predict_run(
    client: valkey.Valkey, url: str, model: Path, vecs: Sequence[FeatureVector], n: int, tmp: Path
) -> dict[str, Any]:
    client.flushall()
    log = tmp / f"predict-{n}.log"
    args = ["predict", "--model", str(model), "--in", url, *sym_args(), "--json"]
    procs = [start(*args, "--group", "p", "--consumer", f"w{i}", log=log) for i in range(n)]
    try:
        wait_for(
            lambda: all(client.exists(keys.stats_key("predict", f"w{i}")) for i in range(n)),
            60,
            f"{n} predict workers running",
        )
        write(client, vecs)
        result = measure(lambda: total_len(client, "signals"), sum(v.warm for v in vecs))
    finally:
        totals = stop(procs)
    result["per_worker"] = [t.get("predictions", 0) for t in totals]
    return result


def main() -> None:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qt-bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        X, returns, _ = vectors(seconds=300)
        model = tmp / "logreg.qtm"
        save_bundle(
            model,
            make_pipeline("logreg").fit(X, label(returns, choose_threshold(returns))),
            "logreg",
            X[-200:],
        )
        events = session_events()
        vecs, raw_features = compute_vectors(events)
        warm = [v for v in vecs if v.warm]
        raw_predict = predict_rate(model, warm)
        trades = sum(1 for e in events if isinstance(e, Trade))
        with own_server(tmp / "valkey") as (client, url):
            features = {n: features_run(client, url, events, len(vecs), n, tmp) for n in WORKERS}
            predict = {n: predict_run(client, url, model, vecs, n, tmp) for n in WORKERS}
    elapsed = time.monotonic() - began
    load1 = os.getloadavg()[0]
    cores = os.cpu_count() or 1

    lines = [
        "## Scale-out: workers of one group",
        "",
        "`python -m benchmarks.bench_scale`: a simulated session of 6 symbols "
        f"({trades:,} trades, {len(events) - trades:,} book events, {len(vecs):,} qt vectors of "
        f"which {len(warm):,} warm) in a valkey-server of the benchmark's own; `qt features "
        "--group g --every trade` (set qt: symbols shared by leases) and `qt predict --group p` "
        "(logistic regression, ONNX: vectors shared by the consumer group) with 1, 2 and 3 "
        "workers. Each run starts its workers on an emptied server, waits until they run (the "
        "features leases spread), writes the input and counts what is stored: the rate between "
        "10 % and 90 % of the total. Raw baseline, same run: the same computation in one "
        "process without Valkey (`FeatureEngine` over every event; `Predictor` per warm "
        f"vector): **{raw_features:,.0f} trades/s** and **{raw_predict:,.0f} vectors/s** on one "
        "core.",
        "",
        "| stage | workers | stored / expected | per worker | rate | × 1 worker | / raw one core |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, runs, raw, unit in (
        ("features", features, raw_features, "trades/s"),
        ("predict", predict, raw_predict, "vectors/s"),
    ):
        one = runs[1]["rate"]
        for n, r in runs.items():
            lines.append(
                f"| {stage} | {n} | {r['stored']:,} / {r['target']:,} "
                f"| {', '.join(f'{x:,}' for x in r['per_worker'])} | {r['rate']:,.0f} {unit} "
                f"| {r['rate'] / one:.2f}× | {r['rate'] / raw:.2f}× |"
            )
    lines += [
        "",
        f"This machine has {cores} cores, shared by the workers, valkey-server and the "
        "benchmark process: past 2 workers there is no core left to gain, and a third worker "
        "only adds contention. On more cores (or hosts) each worker adds up to one raw core's "
        "rate until valkey-server's one thread is the limit (docs/SCALING.md). "
        f"Load average at the end: {load1:.1f}; the whole run took {elapsed:.0f} s.",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("scale", text)
    for stage, runs, raw, unit in (
        ("features", features, raw_features, "trades/s"),
        ("predict", predict, raw_predict, "vectors/s"),
    ):
        for n, r in runs.items():
            record("scale", f"{stage}, {n} worker{'s' if n > 1 else ''} of one group, 6 symbols",
                   r["rate"], unit, ceiling=raw)  # fmt: skip


if __name__ == "__main__":
    main()
