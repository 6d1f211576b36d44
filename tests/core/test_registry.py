"""One registry of stream kinds (events.STREAM_EVENTS, from EVENT_TYPES) and one meaning per
file suffix (endpoints.SUFFIX_FORMATS): the other lists derive from them."""

from __future__ import annotations

import pytest

from qt_cli.core import cleanup, keys, monitor, query
from qt_cli.core.endpoints import FILE_FORMATS, SUFFIX_FORMATS, parse_endpoint
from qt_cli.core.errors import EndpointError
from qt_cli.core.events import EVENT_TYPES, STREAM_EVENTS, STREAM_KINDS
from qt_cli.core.files import FORMATS as FILE_SINK_FORMATS


def test_every_event_type_has_its_stream_in_the_registry() -> None:
    for wire_type, cls in EVENT_TYPES.items():
        assert cls in STREAM_EVENTS[cls.STREAM], wire_type
    assert STREAM_KINDS == ("ticks", "book", "candles", "daily", "state", "features",
                            "predictions", "signals")  # fmt: skip
    assert STREAM_EVENTS["book"] == (EVENT_TYPES["book"], EVENT_TYPES["tob"])


def test_query_cleanup_and_monitor_lists_follow_the_registry() -> None:
    per_symbol = [k.split(":", 1)[0] for k in query.KINDS if k not in keys.GLOBAL_STREAMS]
    assert per_symbol == list(STREAM_KINDS)
    assert set(query.KINDS) - set(STREAM_KINDS) == {"candles:1m", *keys.GLOBAL_STREAMS}
    assert query.EVENT_KINDS == {k: v for k, v in STREAM_EVENTS.items() if k != "ticks"}
    assert cleanup.RETENTION_KINDS == (*STREAM_KINDS, "gaps", "deadletter", keys.HISTORY_KIND)
    assert set(monitor.GROUP_STREAM_KINDS) <= set(STREAM_KINDS)
    for kind in STREAM_KINDS:
        assert query.check_kind(kind).split(":", 1)[0] == kind


def test_a_suffix_means_one_format_everywhere() -> None:
    assert SUFFIX_FORMATS[".json"] == "json"  # one JSON array: qt query --output x.json
    assert SUFFIX_FORMATS[".jsonl"] == SUFFIX_FORMATS[".ndjson"] == "jsonl"
    assert FILE_FORMATS == {s: f for s, f in SUFFIX_FORMATS.items() if f != "json"}
    assert set(FILE_SINK_FORMATS) == set(FILE_FORMATS.values())
    assert set(query.FORMATS) == {"table", *SUFFIX_FORMATS.values()}


@pytest.mark.parametrize("uri", ["events.json", "/data/day.JSON"])
def test_a_json_endpoint_is_refused_naming_jsonl(uri: str) -> None:
    with pytest.raises(
        EndpointError, match=r"\.json means one JSON array .* name the file \.jsonl"
    ):
        parse_endpoint(uri)
