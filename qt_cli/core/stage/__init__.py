"""The runtime every long-running stage shares (feed, bridge, features, predict).

- `lifecycle`: `run_stage` (open -> run -> close with the stop signals handled, totals at the end)
  and `stop_signals` (SIGINT/SIGTERM -> stop, SIGHUP -> reload), the only signal handling of qt's
  stages.
- `stats`: `StatsPublisher`, the one writer of `qt:stats:<stage>:<name>` (docs/contracts.md).
- `derived`: exactly-once derived streams: `derived_session`/`derived_seq` from the input, and
  `GroupWorker`, a stage over a consumer group that writes in input order and acks after the
  write is confirmed. Import it from `qt_cli.core.stage.derived` (it needs the Valkey reader;
  the feed imports this package without it).
"""

from qt_cli.core.stage.lifecycle import Stage, run_stage, stop_signals
from qt_cli.core.stage.stats import COMMON_FIELDS, STATS_TTL_S, RateMeter, StatsPublisher, fmt_float

__all__ = [
    "COMMON_FIELDS",
    "STATS_TTL_S",
    "RateMeter",
    "Stage",
    "StatsPublisher",
    "fmt_float",
    "run_stage",
    "stop_signals",
]
