"""A small simulated market stored through the real bridge (for backfill and history tests)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from qt_cli.core.bridge import BridgeConfig, run_bridge
from qt_cli.core.events import BookUpdate, Event, Trade
from qt_cli.core.feed import channel_of
from qt_cli.core.files import JsonLinesSink
from qt_cli.core.sources.sim import SimConfig, SimulatedMarket

SYMBOLS = ("WDOQ25", "WINQ25")


def simulate(
    *,
    start: str = "2025-07-01",
    hours: float = 1.0,
    activity: float = 0.05,
    seed: int = 7,
    symbols: Sequence[str] = SYMBOLS,
) -> list[Event]:
    """Events of a seeded simulated market, numbered per channel as `qt feed` numbers them."""
    start_ns = int(pd.Timestamp(start, tz="America/Sao_Paulo").value)
    market = SimulatedMarket(
        SimConfig(
            symbols=tuple(symbols),
            seed=seed,
            rate=0,
            start_ns=start_ns,
            duration_s=hours * 3600,
            activity=activity,
        )
    )
    market.open()
    out: list[Event] = []
    seqs: dict[str, int] = {}
    try:
        while not market.finished:
            for event in market.read(0.0):
                channel = channel_of(event)
                seqs[channel] = seqs.get(channel, 0) + 1
                out.append(
                    dataclasses.replace(event, session=f"feedtest.{channel}", seq=seqs[channel])  # type: ignore[type-var]
                )
    finally:
        market.close()
    return out


def store(events: Sequence[Event], url: str, tmp_path: Path) -> None:
    """Write the events to a JSON-lines file and run the real bridge over it into `url`."""
    path = tmp_path / "events.jsonl"
    sink = JsonLinesSink(path)
    sink.send(list(events))
    sink.close()
    spill = tmp_path / "spill"
    spill.mkdir(exist_ok=True)
    bridge = run_bridge(BridgeConfig(inputs=(str(path),), output=url, spill_dir=spill))
    try:
        bridge.run()
    finally:
        bridge.close()


def engine_order(events: Sequence[Event]) -> list[Trade | BookUpdate]:
    """Trades and book events in the documented order: (ts_event, trade before book, as given)."""
    kept = [e for e in events if isinstance(e, Trade | BookUpdate)]
    return sorted(kept, key=lambda e: (e.ts_event, 0 if isinstance(e, Trade) else 1))
