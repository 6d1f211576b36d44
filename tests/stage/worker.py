"""A tiny derived stage for the stage-runtime tests, run as a real process with sys.executable.

Reads stream:ticks:{SYM} through consumer group GROUP as CONSUMER (`io.open_source`), writes one
entry per tick to stream:test:{SYM} through the one writer path (`StreamWriter`), acknowledges
after the write is confirmed (`stage.derived.GroupWorker`), runs under `stage.run_stage` and
prints its totals as one JSON line on exit.

usage: python worker.py VALKEY_URL SYMBOL GROUP CONSUMER [DELAY_MS_PER_ENTRY]
"""

from __future__ import annotations

import sys
import time

import orjson

from qt_cli.core import keys, store
from qt_cli.core.io import open_source
from qt_cli.core.stage import run_stage
from qt_cli.core.stage.derived import Derived, GroupWorker
from qt_cli.core.store.reader import SourceEntry
from qt_cli.core.store.writer import StreamWriter

NAMES = ("symbol", "price", "src", "session", "seq")


def main() -> None:
    url, symbol, group, consumer = sys.argv[1:5]
    delay_s = float(sys.argv[5]) / 1000 if len(sys.argv) > 5 else 0.0
    out_key = keys.stream_key("test", symbol)
    source = open_source(
        url,
        symbols=[symbol],
        kinds=["ticks"],
        start="0",
        group=group,
        consumer=consumer,
        claim_idle_s=0.5,
        count=100,
    )
    writer = StreamWriter(store.connect(url), maxlen=0)

    def derive(entry: SourceEntry, session: str, seq: int) -> list[Derived]:
        if delay_s:
            time.sleep(delay_s)
        trade = entry.event
        values = (symbol, f"{trade.price * 2}", entry.id, session, seq)  # type: ignore[attr-defined]
        return [Derived(out_key, NAMES, values, trade.ts_event // 1_000_000)]

    worker = GroupWorker(source, writer, derive, stage="test", name=consumer, max_held=200)
    totals = run_stage(worker, totals=worker.totals)
    sys.stdout.write(orjson.dumps(totals).decode() + "\n")


if __name__ == "__main__":
    main()
