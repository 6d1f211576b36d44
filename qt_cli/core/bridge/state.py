"""What the parts of `Bridge` share, declared once for the type checker.

`Bridge` (runner.py) is made of `_Receiver`, `_Writer` and `_Reconciler`, each in its own module
and each using attributes `Bridge.__init__` sets and methods another part defines. They all
derive from `_BridgeState`, which only declares those names: it holds no code and no values.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qt_cli.core.bridge.config import BridgeConfig, BridgeStats, _FeedRun
    from qt_cli.core.bridge.derive import _Deriver
    from qt_cli.core.bridge.receive import _Input
    from qt_cli.core.bridge.rows import Item, Refill
    from qt_cli.core.bridge.spill import SpillQueue
    from qt_cli.core.endpoints import Endpoint
    from qt_cli.core.records import Gap
    from qt_cli.core.store import Client
    from qt_cli.core.store.writer import StreamWriter


class _BridgeState:
    config: BridgeConfig
    say: Callable[[str], None]
    warn: Callable[[str], None]
    stats: BridgeStats
    client: Client
    writer: StreamWriter
    queue: SpillQueue
    deriver: _Deriver
    _out: Endpoint
    _symbols: frozenset[str]
    _stop: threading.Event
    _inputs_done: threading.Event
    _writer_done: threading.Event
    _writer_error: BaseException | None
    _inputs: list[_Input]
    _count_lock: threading.Lock
    _watermark_key: str
    _watermark: dict[str, int]
    _watermark_due: dict[str, int]
    _confirmed: dict[str, dict[str, int]]
    _run_id: str
    _last_server_check: float
    _replay_client: Any
    _feeds: dict[str, _FeedRun]
    _latencies: deque[int]
    _key_cache: dict[tuple[str, str], str]
    _outage_since: float | None
    _conn: Any
    _packer: Any

    if TYPE_CHECKING:  # defined by one part, called by another

        def stop(self, reason: str = "stopped") -> None: ...
        def _guarded(self, fn: Callable[[], None]) -> None: ...
        def _publish_stats(self) -> None: ...
        def _report_gap(self, gap: Gap) -> None: ...
        def _feed(self, session: str) -> _FeedRun: ...
        def _due_stats(self) -> bool: ...
        def _check_server(self) -> None: ...
        def _server_run_id(self) -> str: ...
        def _recovered_from_outage(self) -> Refill | None: ...
        def _refill_step(self, refill: Refill) -> None: ...
        def _load_watermark(self) -> dict[str, int]: ...
        def _decode_messages(
            self, messages: list[tuple[int, bytes, bytes]], endpoint: str
        ) -> list[Item]: ...
