"""The one place that builds every Valkey key and ZeroMQ topic.

Stream keys put the symbol in a hash tag (`stream:ticks:{WDOQ25}`) so every key of one symbol
lives in one cluster slot and a server-side function may touch them together.
"""

from __future__ import annotations

import functools
import re

# Per-symbol stream kinds: events.STREAM_KINDS (`candles:<tf>` is built with candle_kind()).
HISTORY_KIND = "hist"  # stream:hist:<kind>:{SYMBOL}, the columnar history (history_key)
GLOBAL_STREAMS = {"gaps": "stream:gaps", "deadletter": "stream:deadletter"}

# ZeroMQ topic prefix per wire `type` (seed guide: tick_{SYMBOL}, book_{SYMBOL}, features_{SYMBOL}).
TOPIC_PREFIX = {
    "tick": "tick",
    "history": "history",
    "book": "book",
    "tob": "book",
    "daily": "daily",
    "state": "state",
    "candle": "candle",
    "features": "features",
    "prediction": "prediction",
    "signal": "signal",
}

_SYMBOL_RE = re.compile(r"^[A-Za-z0-9._\-]{1,32}$")
_KEY_RE = re.compile(r"^stream:(?P<kind>.+):\{(?P<symbol>[^}]+)\}$")


STREAM_PREFIX = "stream:"
STREAM_PATTERN = "stream:*"  # every stream qt writes (SCAN MATCH)


def stream_pattern(kind: str) -> str:
    """`stream_pattern("ticks")` -> `stream:ticks:*`: the per-symbol streams of a kind (SCAN)."""
    return f"{STREAM_PREFIX}{kind}:*"


@functools.lru_cache(maxsize=4096)  # every decoded event asks: the same few tickers
def valid_symbol(symbol: str) -> bool:
    """True for a ticker we accept in keys and topics (letters, digits, . _ -)."""
    return bool(_SYMBOL_RE.fullmatch(symbol))  # fullmatch: `$` alone lets a final newline in


def candle_kind(timeframe: str) -> str:
    return f"candles:{timeframe}"


def stream_key(kind: str, symbol: str | None = None) -> str:
    """`stream_key("ticks", "WDOQ25")` -> `stream:ticks:{WDOQ25}`; global streams take no symbol."""
    if symbol is None:
        return GLOBAL_STREAMS[kind]
    return f"{STREAM_PREFIX}{kind}:{{{symbol}}}"


def partial_candle_key(kind: str, symbol: str) -> str:
    """`partial_candle_key("candles:1m", "WDOQ25")` -> `stream:candles:1m:partial:{WDOQ25}`:
    snapshots of the candle still forming (closed=0), newest last."""
    return stream_key(f"{kind}:partial", symbol)


def parse_stream_key(key: str) -> tuple[str, str] | None:
    """(kind, symbol) of a per-symbol stream key, or None for anything else."""
    match = _KEY_RE.match(key)
    if match is None:
        return None
    return match["kind"], match["symbol"]


def history_key(kind: str, symbol: str) -> str:
    """The columnar history (chunks of many events per entry) beside a per-event stream."""
    return stream_key(f"{HISTORY_KIND}:{kind}", symbol)


def forming_chunk_key(kind: str, symbol: str) -> str:
    """Hash holding the history chunk still forming (the bridge's pending trades, packed like a
    sealed chunk, with `after`: the sealed chunk it follows); same slot, outside `stream:*`."""
    return f"forming:{history_key(kind, symbol)}"


def late_index_key(kind: str, symbol: str) -> str:
    """Sorted set of history chunks that hold events older than the chunk id (late events)."""
    return f"idx:late:{kind}:{{{symbol}}}"


def hwm_key(stream: str) -> str:
    """Hash of the highest (session -> seq) written to a stream; same slot as the stream."""
    return f"hwm:{stream}"


def watermark_key(name: str) -> str:
    """Hash of input session -> highest seq the bridge `name` has fully written."""
    return hwm_key(f"bridge:{name}")


def stats_key(stage: str, name: str = "default") -> str:
    """Hash of a running stage's counters, read by `qt monitor`."""
    return f"qt:stats:{stage}:{name}"


STATS_PATTERN = "qt:stats:*"
# Set of the stats hash keys of every stage that ever ran, so `qt monitor` finds them without SCAN.
STAGES_SET = "qt:stages"


def lease_key(stage: str, group: str, symbol: str) -> str:
    """`qt:lease:features:g:{WDOQ25}`: which consumer of `group` computes `symbol` (value: its
    name; expires unless renewed)."""
    return f"qt:lease:{stage}:{group}:{{{symbol}}}"


def members_key(stage: str, group: str) -> str:
    """`qt:members:features:g`: the consumers of a symbol-sharing group (ZSET: name -> the ms
    its heartbeat expires)."""
    return f"qt:members:{stage}:{group}"


def topic(wire_type: str, symbol: str) -> str:
    """ZeroMQ topic for a message: `tick_WDOQ25`, `book_WDOQ25`, `features_WDOQ25`, …"""
    return f"{TOPIC_PREFIX[wire_type]}_{symbol}"


def rewrite_key(stream: str) -> str:
    """Scratch copy of a stream being rewritten (`qt cleanup --rewrite-chunks`); same slot, and
    outside `stream:*`, so no reader or retention pattern ever picks it up."""
    return f"tmp:rewrite:{stream}"


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as a comparable (ms, seq) pair: `b"1754654400000-3"` -> (1754654400000,
    3), `"1754654400000"` -> (1754654400000, 0); '' (no id yet) -> (-1, -1), before every id."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    if not text:
        return (-1, -1)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
