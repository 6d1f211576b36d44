"""Stored feature history for model tests: a simulated market through the real features engine.

Faster than running the live features stage: run the simulator, feed its trades and book events
to `FeatureEngine`, and store the vectors as `FeatureVector`
events (and the trades as ticks) through the real `StreamWriter`, the way the bridge does.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from qt_cli.core.events import EXCHANGE_TZ, BookUpdate, FeatureVector, Trade
from qt_cli.core.features.engine import FeatureEngine
from qt_cli.core.sources.sim import SimConfig, SimulatedMarket
from qt_cli.core.store.writer import StreamWriter

SYMBOL = "WDOQ25"
# A Monday 09:00 in São Paulo.
START = datetime(2025, 8, 4, 9, 0, tzinfo=EXCHANGE_TZ)
START_NS = int(START.timestamp()) * 1_000_000_000


def simulate_and_store(
    client,
    *,
    seconds: float,
    alpha: float = 0.0,
    seed: int = 7,
    set_name: str = "qt",
    every: int = 1,
    start_ns: int = START_NS,
    symbol: str = SYMBOL,
    catalog_hash: str | None = None,
    book: bool = True,
) -> dict[str, int]:
    """Simulate `seconds` of session, store every trade and every `every`-th feature vector.

    `catalog_hash` stamps the vectors with another hash; `book=False` keeps the book from the
    engine (its book features stay NaN)."""
    sim = SimulatedMarket(
        SimConfig(
            symbols=(symbol,),
            seed=seed,
            rate=0,
            duration_s=seconds,
            start_ns=start_ns,
            alpha=alpha,
        )
    )
    engine = FeatureEngine(set_name)
    writer = StreamWriter(client, maxlen=10_000_000)
    session_ticks = f"sim{seed}.{start_ns}"
    session_features = f"feat{seed}.{start_ns}"
    counts = {"ticks": 0, "vectors": 0, "warm": 0}
    pending: list = []
    trade_seq = vec_seq = 0
    sim.open()
    try:
        while not sim.finished:
            for event in sim.read(timeout_s=1.0):
                if isinstance(event, Trade):
                    trade_seq += 1
                    trade = dataclasses.replace(event, session=session_ticks, seq=trade_seq)
                    pending.append(trade)
                    counts["ticks"] += 1
                    vector = engine.on_trade(trade)
                    if vector is None or trade_seq % every:
                        continue
                    vec_seq += 1
                    pending.append(
                        FeatureVector(
                            symbol=symbol,
                            ts_event=vector.ts_event,
                            feature_set=vector.feature_set,
                            catalog_hash=catalog_hash or vector.catalog_version,
                            features=dict(zip(vector.names, vector.values, strict=True)),
                            reasons=vector.reasons,
                            warm=vector.warm,
                            ts_init=trade.ts_init,
                            session=session_features,
                            seq=vec_seq,
                        )
                    )
                    counts["vectors"] += 1
                    counts["warm"] += int(vector.warm)
                elif book and isinstance(event, BookUpdate):
                    engine.on_book(event)
                if len(pending) >= 5000:
                    writer.append_events(pending)
                    pending = []
        if pending:
            writer.append_events(pending)
    finally:
        sim.close()
    return counts
