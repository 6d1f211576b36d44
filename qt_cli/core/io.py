"""The one factory that opens Sources and Sinks from endpoint URIs (grammar: endpoints.py).

Each kind is opened by the module that owns its external system (zmq_io, store, files,
sources.replay), imported only when used, so a command pays only for what it opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qt_cli.core.config import Settings
from qt_cli.core.endpoints import Endpoint, Sink, Source, parse_endpoint
from qt_cli.core.records import DEFAULT_MAX_MESSAGE_BYTES


def open_sink(
    endpoint: Endpoint | str,
    *,
    password: str = "",
    maxlen: int = Settings.maxlen,
    keep_identity: bool = False,
) -> Sink:
    """Open an output: ZeroMQ PUB (bind), Valkey streams, stdout JSON lines, or a file.
    `password` and `maxlen` (approximate entries kept per stream) apply to Valkey;
    `keep_identity` to ZeroMQ (events keep their own session/seq as `origin`/`origin_seq`: what
    derived stages publish)."""
    ep = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
    if ep.kind == "zmq":
        from qt_cli.core import zmq_io

        return zmq_io.PubSink(ep, keep_identity=keep_identity)
    if ep.kind == "valkey":
        from qt_cli.core import store
        from qt_cli.core.store.writer import StreamSink

        return StreamSink(store.connect(ep, password=password), maxlen=maxlen)
    from qt_cli.core import files

    if ep.kind == "stdio":
        return files.JsonLinesSink(None)
    return files.open_file_sink(Path(ep.path), ep.format)


def open_source(
    endpoint: Endpoint | str,
    *,
    symbols: Sequence[str] = (),
    time_unit: str | None = None,
    kinds: Sequence[str] | None = None,
    start: str = "$",
    group: str | None = None,
    consumer: str | None = None,
    claim_idle_s: float = 30.0,
    count: int = 1000,
    replay: str | None = None,
    password: str = "",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    skip: frozenset[str] = frozenset(),
) -> Source:
    """Open an input: ZeroMQ SUB (connect), Valkey streams, stdin JSON lines, or a file.

    A file is read as `qt feed --replay` reads it (its format from its content, a Nelogica tick
    export included), at full speed; `time_unit` is the unit of its (or stdin's) ts_* fields.
    Valkey only: stream `kinds` (default ticks and book), `start` ($, 0, an entry id or a time),
    and a consumer `group` with this reader's `consumer` name and `claim_idle_s` (see
    `store.reader.StreamSource`: entries then carry ids and are acknowledged by the stage).
    `replay` is the replay endpoint a ZeroMQ input recovers gaps from (None: gaps are lost);
    `password` is Valkey's; `max_message_bytes` the largest ZeroMQ message decoded (a longer one
    is rejected: `SubSource`). `skip`: event types not decoded (ZeroMQ and Valkey; handed out
    as `events.Passed`).
    """
    ep = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
    if ep.kind == "zmq":
        from qt_cli.core import zmq_io

        return zmq_io.SubSource(
            ep, symbols=symbols, replay=replay, max_message_bytes=max_message_bytes, skip=skip
        )
    if ep.kind == "valkey":
        from qt_cli.core import store
        from qt_cli.core.store.reader import StreamSource

        return StreamSource(
            store.connect(ep, password=password),
            symbols=symbols,
            kinds=tuple(kinds) if kinds else ("ticks", "book"),
            start=start,
            group=group,
            consumer=consumer,
            claim_idle_s=claim_idle_s,
            count=count,
            skip=skip,
        )
    if ep.kind == "stdio":
        from qt_cli.core import files

        return files.JsonLinesSource(None, time_unit=time_unit)
    from qt_cli.core.sources.replay import open_replay

    return open_replay(ep.path, speed=0.0, time_unit=time_unit, option="--in")
