"""The bridge: ZeroMQ (or files, stdin) -> Valkey streams, exactly once, plus derived data.

Parts: `receive` (inputs, decoding), `rows` (what travels to the writer), `spill` (the queue
between them), `writer` (pipelined `qt_append` batches, the watermark), `reconcile` (after a
reconnect), `derive` (candles and chunks), `config` (settings, counters), `runner` (`Bridge`:
lifecycle, supervision, stats). See docs/bridge.md.
"""

from qt_cli.core.bridge.config import (
    BridgeConfig,
    BridgeStats,
    check_file_inputs,
    check_time_unit,
)
from qt_cli.core.bridge.derive import ColumnChunker, entry_columns, partial_key
from qt_cli.core.bridge.rows import Item, Refill, Row, tick_row, trade_row
from qt_cli.core.bridge.runner import Bridge, run_bridge
from qt_cli.core.bridge.spill import SpillQueue
from qt_cli.core.bridge.writer import watermark_key
from qt_cli.core.records import DeadLetter, Gap
from qt_cli.core.store.writer import entry_trade

__all__ = [
    "Bridge",
    "BridgeConfig",
    "BridgeStats",
    "ColumnChunker",
    "DeadLetter",
    "Gap",
    "Item",
    "Refill",
    "Row",
    "SpillQueue",
    "check_file_inputs",
    "check_time_unit",
    "entry_columns",
    "entry_trade",
    "partial_key",
    "run_bridge",
    "tick_row",
    "trade_row",
    "watermark_key",
]
