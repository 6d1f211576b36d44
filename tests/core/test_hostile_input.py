"""Hostile input: random and malformed payloads at every decoder a stage reads the wire or Valkey
with (hypothesis). Each either gives a valid event or raises the project's declared rejection
(`DecodeError`, which the stages count: the bridge's `stream:deadletter`, the derived stages'
`rejected`); nothing else escapes, and nothing accepted can break a key, a column or a stream id.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qt_cli.core import keys
from qt_cli.core.bridge.rows import tick_row
from qt_cli.core.errors import DecodeError, QtError
from qt_cli.core.events import (
    _DICT_DECODERS,
    EVENT_TYPES,
    INT_MAX,
    INT_MIN,
    MAX_TS_NS,
    Candle,
    Event,
    FeatureVector,
    Trade,
    decode,
    decode_dict,
    decode_fields,
)
from qt_cli.core.store.writer import entry_trade, event_key
from qt_cli.core.zmq_io import SubSource
from tests.core.test_events import SAMPLES
from tests.helpers import eventually, tcp_endpoint

# Bounded: these run in CI (a few seconds each); QT_FUZZ_EXAMPLES raises it for a long local run.
EXAMPLES = int(os.environ.get("QT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

T0 = 1_754_654_400_000_000_000  # 2025-08-08 12:00 UTC

# What orjson can hand a decoder: integers from -2^63 to 2^64 - 1, finite doubles, text, nesting.
wire_ints = st.integers(min_value=INT_MIN, max_value=2**64 - 1)
hostile_ints = st.sampled_from([0, -1, 1, 2**53 + 1, INT_MAX, INT_MAX + 1, 2**64 - 1, MAX_TS_NS])
wire_floats = st.floats(allow_nan=False, allow_infinity=False)
# Files (CSV, Parquet) and Python callers can also hand NaN and infinities.
any_floats = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324])
hostile_text = st.text(max_size=40) | st.sampled_from(
    ["", "*", "a:b", "x}y{", "{WDOQ25}", "WDO Q25", "é", "A" * 33, "\x00", "1e400", "nan", "-1"]
)


def json_values(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    leaf = st.none() | st.booleans() | wire_ints | hostile_ints | floats | hostile_text
    return st.recursive(
        leaf,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4)
        ),
        max_leaves=8,
    )


FIELD_NAMES = sorted(
    {name for cls in EVENT_TYPES.values() for name, _, _ in cls._spec}
    | {"type", "origin", "origin_seq", "timestamp", "timestamp_ms", "recv_ns", "late"}
)
VALID_TICK = Trade(
    symbol="WDOQ25",
    ts_event=T0,
    price=5000.5,
    quantity=2,
    volume=100_010.0,
    trade_id=7,
    trade_type=2,
    aggressor="buy",
    ts_init=T0 + 1000,
    session="run1.ticks",
    seq=3,
).to_dict()


def messages(floats: st.SearchStrategy[float]) -> st.SearchStrategy[dict[str, Any]]:
    """A wire dict: a known (or unknown) type and a random mix of known and unknown fields with
    random values; or a valid tick with one field replaced by a hostile value."""
    values = json_values(floats)
    mixed = st.builds(
        lambda kind, extra: {**extra, "type": kind},
        st.sampled_from([*EVENT_TYPES, "nope", ""]) | hostile_text,
        st.dictionaries(st.sampled_from(FIELD_NAMES) | hostile_text, values, max_size=14),
    )
    one_bad_field = st.builds(
        lambda name, value: {**VALID_TICK, name: value}, st.sampled_from(FIELD_NAMES), values
    )
    return mixed | one_bad_field


def check_accepted(event: Event) -> None:
    """What an accepted event must never be: outside the times and integers the stages store,
    or a key that is not one of ours."""
    assert 0 < event.ts_event < MAX_TS_NS
    for name, typ, _ in type(event)._spec:
        if typ is int:
            assert INT_MIN <= getattr(event, name) <= INT_MAX, name
    key = event_key(event)
    assert keys.parse_stream_key(key) == (event.stream_kind, event.symbol)
    assert key.count("{") == 1 and key.count("}") == 1
    if event.symbol != "*":
        assert keys.valid_symbol(event.symbol)
    if isinstance(event, FeatureVector):
        assert all(isinstance(v, float | int) for v in event.features.values())
    fields = event.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    again = decode(event.to_wire())  # what a stage publishes, the next one reads
    assert type(again) is type(event) and again.ts_event == event.ts_event


@FUZZ
@given(messages(any_floats))
def test_a_wire_dict_decodes_to_a_valid_event_or_raises_decode_error(data: dict) -> None:
    try:
        event = decode_dict(dict(data))
    except DecodeError:
        return
    check_accepted(event)


@FUZZ
@given(messages(wire_floats))
def test_the_bridge_fast_path_accepts_only_what_the_generic_decoder_accepts(data: dict) -> None:
    """`tick_row` (the bridge's per-tick path) never stores a trade the generic decoder would
    reject, and stores it as the generic decoder reads it."""
    try:
        row = tick_row(dict(data))
    except DecodeError:
        with pytest.raises(DecodeError):
            decode_dict(dict(data))
        return
    if row is None:
        return  # left to the generic decoder (which the bridge then calls)
    event = decode_dict(dict(data))
    check_accepted(event)
    key, _, entry = row
    assert key == event_key(event)
    assert entry_trade(entry) == event


# A valid wire dict of each type: test_events' samples (history: a tick on its own endpoint).
VALID = {e.TYPE: e.to_dict() for e in SAMPLES} | {"history": {**VALID_TICK, "type": "history"}}


_GONE = object()


@st.composite
def typed_messages(draw: Any, floats: st.SearchStrategy[float]) -> dict[str, Any]:
    """A valid wire dict of each type with up to three of its own fields replaced by random
    values or removed, sometimes replayed (`origin`)."""
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    own = {name: typ for name, typ, _ in EVENT_TYPES[kind]._spec}
    out = dict(VALID[kind])
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(own)) | st.sampled_from(FIELD_NAMES))
        typed = {int: wire_ints | hostile_ints, float: floats, str: hostile_text}
        value = draw(typed.get(own.get(name), st.booleans()) | json_values(floats) | st.just(_GONE))
        if value is _GONE:
            out.pop(name, None)
        else:
            out[name] = value
    if draw(st.booleans()):
        out.update(origin="run0.ticks", origin_seq=9)
    return out


@FUZZ
@given(typed_messages(any_floats))
def test_the_wire_fast_path_decodes_as_the_general_path_or_leaves_it_the_message(
    data: dict,
) -> None:
    """`decode_dict` takes a generated decoder per type (`events._DICT_DECODERS`): it gives the
    event the general path (`from_dict`) gives, or leaves the message to it."""
    kind = data.get("type")
    fast = _DICT_DECODERS.get(kind) if type(kind) is str else None
    cls = EVENT_TYPES.get(kind) if type(kind) is str else None
    got = fast(dict(data)) if fast is not None else None
    try:
        expected = cls.from_dict(dict(data)) if cls is not None else None
    except DecodeError:
        expected = None
    if got is not None:
        assert expected is not None, data
        assert type(got) is type(expected)
        assert got.to_fields() == expected.to_fields()
    try:
        whole = decode_dict(dict(data))
    except DecodeError:
        whole = None
    if expected is not None and whole is not None:
        assert whole.to_fields() == decode_dict_general(dict(data)).to_fields()


def decode_dict_general(data: dict[str, Any]) -> Event:
    """`decode_dict` without the generated decoders (what it was before them)."""
    saved = dict(_DICT_DECODERS)
    _DICT_DECODERS.clear()
    try:
        return decode_dict(data)
    finally:
        _DICT_DECODERS.update(saved)


def test_every_valid_wire_dict_takes_the_fast_path() -> None:
    """The generated decoders are used: each type's valid message decodes on them."""
    assert set(_DICT_DECODERS) == set(EVENT_TYPES)
    for kind, data in VALID.items():
        event = _DICT_DECODERS[kind](dict(data))
        assert event is not None, kind
        assert event.to_fields() == EVENT_TYPES[kind].from_dict(dict(data)).to_fields()


@FUZZ
@given(st.binary(max_size=300) | messages(wire_floats).map(orjson.dumps))
def test_a_payload_of_random_bytes_decodes_or_raises_decode_error(payload: bytes) -> None:
    try:
        event = decode(payload)
    except DecodeError:
        return
    check_accepted(event)


def flat(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


@FUZZ
@given(messages(wire_floats).map(lambda d: {k: flat(v) for k, v in d.items()}))
def test_stream_fields_decode_the_same_from_bytes_and_text_or_raise_decode_error(
    fields: dict[str, str],
) -> None:
    """An entry as XRANGE returns it (bytes) takes the fast path, as text the general one: the
    same event or the same rejection (an entry any client may have written)."""
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
    try:
        expected: Event | None = decode_fields(fields)
    except DecodeError:
        expected = None
    if expected is None:
        with pytest.raises(DecodeError):
            decode_fields(as_bytes)
        return
    check_accepted(expected)
    got = decode_fields(as_bytes)
    assert got.to_fields() == expected.to_fields()


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("ts_event", -1_000_000_000, "not a time"),  # before 1970
        ("ts_event", 0, "not a time"),
        ("ts_event", MAX_TS_NS, "after 2200-01-01"),  # far in the future
        ("ts_event", 2**64 - 1, "outside the 64-bit integer range"),
        ("price", math.nan, "price is NaN"),
        ("price", math.inf, "price must be positive"),
        ("price", -math.inf, "price must be positive"),
        ("price", "inf", "price must be positive"),
        ("price", "NaN", "price is NaN"),
        ("trade_id", 2**63, "outside the 64-bit integer range"),
        ("quantity", 2**64 - 1, "outside the 64-bit integer range"),
        ("seq", 1e300, "outside the 64-bit integer range"),
        ("symbol", "WDO}Q25", "is not a ticker"),
        ("symbol", "a:b", "is not a ticker"),
        ("symbol", "x" * 33, "is not a ticker"),
        ("symbol", "{WDOQ25}", "is not a ticker"),
        ("symbol", "WDOQ25\n", "is not a ticker"),
    ],
)
def test_hostile_values_are_refused_naming_the_field(field: str, value: Any, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as caught:
        decode_dict({**VALID_TICK, field: value})
    assert caught.value.field == field
    if isinstance(value, int | str):  # what JSON carries: the bridge's own path refuses it too
        data = {**VALID_TICK, field: value}
        with pytest.raises(DecodeError, match=reason):
            tick_row(data) or decode_dict(data)  # as the bridge decodes (SubSource._emit)


def test_a_candle_timeframe_that_would_break_its_key_is_refused() -> None:
    candle = Candle(symbol="WDOQ25", ts_event=T0, open=1.0, high=1.0, low=1.0, close=1.0)
    for bad in ("x}y{", "1m:{X}", "", "1 m", "1m\n", "m1"):
        with pytest.raises(DecodeError, match="is not a timeframe"):
            decode_dict({**candle.to_dict(), "timeframe": bad})
    for good in ("1m", "15m", "1h", "30s", "1d"):
        assert decode_dict({**candle.to_dict(), "timeframe": good}).stream_kind == f"candles:{good}"


def test_feature_values_that_are_not_numbers_are_refused() -> None:
    vector = {"type": "features", "symbol": "WDOQ25", "ts_event": T0, "feature_set": "qt"}
    for bad in ("x", [1.0], {"a": 1}, True):
        with pytest.raises(DecodeError, match="not a number"):
            decode_dict({**vector, "features": {"a": 1.0, "b": bad}})
    got = decode_dict({**vector, "features": {"a": 1.0, "b": None, "c": 2}})
    assert isinstance(got, FeatureVector) and math.isnan(got.features["b"])


# --- the subscriber every ZeroMQ input uses (bridge, features, predict) -------------------------


@pytest.fixture(scope="module")
def wire() -> Any:
    """A real PUB socket and a `SubSource` connected to it (without seq tracking: the frames
    carry no session, so each is judged on its own)."""
    import zmq

    address = tcp_endpoint()
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(address)
    source = SubSource(address, context=context)
    marker = orjson.dumps({**VALID_TICK, "session": "", "seq": 0, "trade_id": -5})

    def subscribed() -> bool:
        pub.send_multipart([b"tick_WDOQ25", marker])
        return bool(source.read(0.05))

    eventually(subscribed, message="subscription up")
    source.take_rejects()
    yield pub, source
    source.close()
    pub.close(linger=0)
    context.destroy(linger=0)


frames = st.lists(
    st.tuples(st.binary(max_size=20) | hostile_text.map(str.encode), st.binary(max_size=200))
    | st.tuples(
        st.just(b"tick_WDOQ25"),
        messages(wire_floats).map(lambda d: {**d, "session": "", "seq": 0}).map(orjson.dumps),
    )
    | st.lists(st.binary(max_size=30), min_size=1, max_size=4).map(tuple),
    min_size=1,
    max_size=20,
)


@settings(
    max_examples=max(EXAMPLES // 10, 20),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(frames)
def test_every_frame_on_the_wire_is_decoded_or_counted_as_rejected(wire: Any, sent: list) -> None:
    pub, source = wire
    end = orjson.dumps({**VALID_TICK, "session": "", "seq": 0, "trade_id": -1})
    for message in sent:
        pub.send_multipart(list(message))
    pub.send_multipart([b"tick_WDOQ25", end])
    got: list[Any] = []
    rejects: list[Any] = []

    def all_in() -> bool:
        got.extend(source.read(0.05))
        rejects.extend(source.take_rejects())
        return any(isinstance(e, Trade) and e.trade_id == -1 for e in got)

    eventually(all_in, timeout=10, message="the end marker")
    assert len(got) + len(rejects) == len(sent) + 1  # each frame: an event or a dead letter
    for event in got:
        check_accepted(event)
    for letter in rejects:
        assert letter.reason and len(letter.raw) <= 64 * 1024


# --- model bundles of garbage ------------------------------------------------------------------

metadata_values = json_values(wire_floats)
BASE_META = {
    "format": "qt-model",
    "format_version": 1,
    "features": {"set": "qt", "names": ["a", "b"]},
    "label": {"classes": [{"index": 0, "value": 1, "label": "UP", "action": "buy"}]},
}


@settings(
    max_examples=max(EXAMPLES // 6, 30),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.dictionaries(
        st.sampled_from(["features", "label", "serving", "training", "validation", "model"]),
        metadata_values,
        max_size=4,
    ),
    st.dictionaries(
        st.sampled_from(["pipeline.skops", "model.onnx", "native.txt", "native.json"]),
        st.binary(max_size=64) | st.sampled_from([b"PK\x03\x04", b"tree\nversion=v4\n", b"{}"]),
        max_size=3,
    ),
)
def test_a_bundle_of_garbage_is_refused_with_a_model_error(
    tmp_path_factory: pytest.TempPathFactory, meta: dict, members: dict
) -> None:
    """A bundle with a valid content hash (so the checks below it run) and garbage inside:
    reading, listing, showing, verifying and loading it for serving raise ModelError (a
    QtError: one `Error:` line), never anything else."""
    from qt_cli.core.models import bundle as bundles
    from qt_cli.core.models.predictor import Predictor

    path = Path(tmp_path_factory.mktemp("bundle")) / "garbage.qtm"
    bundles.write_members(path, members, {**BASE_META, **meta})
    for call in (
        bundles.metadata_of,
        bundles.verify,
        lambda p: Predictor(bundles.load(p)),
        lambda p: bundles.list_bundles([p]),
    ):
        try:
            call(path)
        except QtError:
            pass


def test_an_empty_xgboost_model_is_an_error_not_an_abort(tmp_path: Path) -> None:
    """XGBoost aborts the process (`terminate called`) on an empty buffer: refused first."""
    from qt_cli.core.models import bundle as bundles
    from qt_cli.core.models.errors import ModelError

    path = tmp_path / "empty.qtm"
    bundles.write_members(path, {bundles.NATIVE_XGB: b""}, BASE_META)
    with pytest.raises(ModelError, match=r"empty\.qtm: unreadable native\.json \(.*empty"):
        bundles.load(path)


def test_a_bundle_whose_onnx_graph_is_garbage_is_refused_by_verify_and_serving(
    tmp_path: Path,
) -> None:
    from qt_cli.core.models import bundle as bundles
    from qt_cli.core.models.errors import ModelError
    from qt_cli.core.models.predictor import Predictor
    from tests.core.test_models_bundle import rewrite_member, write

    path, _, _ = write(tmp_path, "logreg")
    rewrite_member(path, bundles.ONNX, b"\x08\x07garbage", rehash=True)
    with pytest.raises(ModelError, match=r"logreg\.qtm: the ONNX graph does not load"):
        bundles.verify(path)
    with pytest.raises(ModelError, match=r"logreg\.qtm: the ONNX graph does not load"):
        Predictor(bundles.load(path))


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"features": "abc"}, "no 'features' object"),
        ({"features": {"set": "qt", "names": "ab"}}, "'features.names' is not a list"),
        ({"features": {"set": 5, "names": ["a"]}}, "'features.set' is not"),
        ({"label": {"classes": [{"index": 0}]}}, "lacks an index, a value, a label"),
        ({"serving": None}, "'serving' is not an object"),
        ({"validation": {"model": 1}}, "is not an object of metrics"),
    ],
)
def test_bundle_metadata_serving_cannot_read_is_named(
    tmp_path: Path, meta: dict, reason: str
) -> None:
    from qt_cli.core.models import bundle as bundles
    from qt_cli.core.models.errors import ModelError

    path = tmp_path / "bad.qtm"
    bundles.write_members(path, {bundles.NATIVE: b"tree\n"}, {**BASE_META, **meta})
    with pytest.raises(ModelError, match=reason):
        bundles.metadata_of(path)
    (row,) = bundles.list_bundles([path])
    assert reason.split("'")[0] in row["error"]


def test_a_bundle_without_a_model_is_refused(tmp_path: Path) -> None:
    from qt_cli.core.models import bundle as bundles
    from qt_cli.core.models.errors import ModelError

    path = tmp_path / "hollow.qtm"
    bundles.write_members(path, {bundles.ONNX: b"\x08\x07"}, BASE_META)
    with pytest.raises(ModelError, match="no model in it"):
        bundles.verify(path)


def test_a_trade_at_an_extreme_price_packs_into_a_chunk_and_reads_back() -> None:
    """A finite price near the float maximum is a valid trade: the history chunk holds it exactly
    (its decimal check used to overflow, an error under warnings-as-errors)."""
    from qt_cli.core.chunks import decode_tick_columns, encode_ticks, trades_of

    trades = [
        decode_dict({**VALID_TICK, "price": price, "seq": i + 1, "volume": 1.0})
        for i, price in enumerate([1e308, 5000.5, 5e-324])
    ]
    fields = encode_ticks(trades)
    assert trades_of(decode_tick_columns(fields), "WDOQ25") == trades


def test_the_bridge_stores_the_valid_lines_and_dead_letters_each_hostile_one(
    vk: Any, valkey_url: str, tmp_path: Path
) -> None:
    """One file of valid trades (one at a price near the float maximum) among hostile lines:
    every hostile line is one dead letter naming its field, every valid one is stored, and
    candles and chunks are built without an error (warnings are errors here)."""
    from qt_cli.core.bridge import Bridge, BridgeConfig

    def tick(n: int, **changes: Any) -> dict:
        return {**VALID_TICK, "ts_event": T0 + n * 10**9, "seq": n, **changes}

    valid = [tick(1), tick(2, price=1.7e308, volume=1.7e308), tick(3, price=1e308), tick(4)]
    hostile = {
        "ts_event": tick(10, ts_event=2**64 - 1),
        "trade_id": tick(11, trade_id=2**63),
        "seq": tick(15, seq=2**64 - 1),
        "quantity": tick(12, quantity=2**64 - 1),
        "history": tick(13, history=[]),
        "symbol": tick(14, symbol="WDOQ25\n"),
        "timeframe": {
            "type": "candle",
            "symbol": "WDOQ25",
            "ts_event": T0,
            "timeframe": "1m}:{x",
            "session": "c.candles",
            "seq": 1,
        },  # fmt: skip
        "features": {
            "type": "features",
            "symbol": "WDOQ25",
            "ts_event": T0,
            "features": {"a": "x"},
            "session": "f.features",
            "seq": 1,
        },  # fmt: skip
    }
    path = tmp_path / "hostile.jsonl"
    lines = (json.dumps(d) for d in [*valid, *hostile.values()])  # orjson stops at 64 bits
    path.write_text("\n".join(lines) + "\n")
    config = BridgeConfig(inputs=(str(path),), output=valkey_url, spill_dir=tmp_path / "spill")
    bridge = Bridge(config)
    try:
        stats = bridge.run()
    finally:
        bridge.close()
    assert (stats.written, stats.deadletters) == (len(valid), len(hostile))
    letters = [f for _, f in vk.xrange(keys.stream_key("deadletter"))]
    assert sorted(f[b"field"].decode() for f in letters) == sorted(hostile)
    stored = [decode_fields(f) for _, f in vk.xrange(keys.stream_key("ticks", "WDOQ25"))]
    assert [t.price for t in stored] == [t["price"] for t in valid]
    assert vk.xlen(keys.history_key("ticks", "WDOQ25")) >= 1
    assert vk.keys("stream:candles:1m}*") == []


def test_an_oversized_message_is_a_dead_letter_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import zmq

    address = tcp_endpoint()
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(address)
    source = SubSource(address, context=context, max_message_bytes=1000)
    small = orjson.dumps({**VALID_TICK, "session": "", "seq": 0})
    big = orjson.dumps({**VALID_TICK, "session": "", "seq": 0, "pad": "x" * 1000})
    try:
        got: list[Any] = []
        eventually(
            lambda: (
                pub.send_multipart([b"tick_WDOQ25", small]) or got.extend(source.read(0.05)) or got
            )
        )
        for _ in range(3):
            pub.send_multipart([b"tick_WDOQ25", big])
        pub.send_multipart([b"tick_WDOQ25", small])
        pub.send_multipart([b"x" * 2000])  # one frame, over the limit too
        rejects: list[Any] = []

        def four_rejected() -> bool:
            source.read(0.05)
            rejects.extend(source.take_rejects())
            return len(rejects) == 4

        eventually(four_rejected, message="the oversized messages rejected")
    finally:
        source.close()
        pub.close(linger=0)
        context.destroy(linger=0)
    assert source.stats.oversized == 4
    assert all("is over --max-message-bytes 1,000" in r.reason for r in rejects)
    assert rejects[0].raw == big and rejects[0].topic == "tick_WDOQ25"
    warnings = [r for r in caplog.records if "--max-message-bytes" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
