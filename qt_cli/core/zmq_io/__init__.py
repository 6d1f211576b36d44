"""ZeroMQ: the feed's publisher, a gap-aware subscriber, and the replay protocol between them.

The only package that imports zmq: `base` (context, run ids, binding), `pub` (`PubSink`), `sub`
(`SubSource`: seq tracking, gap recovery, rejects), `replay` (`ReplayServer`, `ReplayClient`).
"""

from qt_cli.core.records import DeadLetter, Gap
from qt_cli.core.zmq_io.base import (
    DEFAULT_RCVHWM,
    DEFAULT_SNDHWM,
    PROTOCOL,
    new_run_id,
    process_run_id,
)
from qt_cli.core.zmq_io.pub import PubSink
from qt_cli.core.zmq_io.replay import (
    ReplayClient,
    ReplayPage,
    ReplayServer,
    ReplayTimeout,
    missing_ranges,
    not_journaled,
)
from qt_cli.core.zmq_io.sub import SessionCounters, SubSource, SubStats

__all__ = [
    "DeadLetter",
    "DEFAULT_RCVHWM",
    "DEFAULT_SNDHWM",
    "Gap",
    "PROTOCOL",
    "PubSink",
    "ReplayClient",
    "ReplayPage",
    "ReplayServer",
    "ReplayTimeout",
    "SessionCounters",
    "SubSource",
    "SubStats",
    "missing_ranges",
    "new_run_id",
    "not_journaled",
    "process_run_id",
]
