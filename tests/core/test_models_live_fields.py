"""The live predict stage's fast path gives what the events would: its stream fields are the
Prediction's and Signal's `to_fields`, its probabilities the compiled ones, its events made only
for ZeroMQ/file outputs; the FeatureVector wire decoder decodes as the general path does."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from qt_cli.core import keys
from qt_cli.core.errors import DecodeError
from qt_cli.core.events import (
    NS_PER_MS,
    Event,
    FeatureVector,
    Prediction,
    Signal,
    _vector_from_wire,
    decode,
)
from qt_cli.core.journal import wire_dict
from qt_cli.core.models.live import ModelSlot, Scorer
from qt_cli.core.models.predictor import PREDICTION_FIELDS, SIGNAL_FIELDS
from qt_cli.core.stage.derived import Derived
from qt_cli.core.store.reader import SourceEntry
from qt_cli.core.store.writer import event_key
from tests.core.test_models_bundle import write
from tests.core.test_models_predictor import vector

T0 = 1_754_308_800_000_000_000


def vectors(rows) -> list[FeatureVector]:
    """Vectors of every kind the stage meets: plain; stamped by the features stage (a latency);
    an int or NaN price; a seed-era one without session; the same second again (cooldown)."""
    out = []
    for i, row in enumerate(rows):
        v = vector(row, seq=i + 1, ts=T0 + (i // 2) * 10**9 + i)
        if i % 5 == 1:
            v = replace(v, ts_init=v.ts_event + 1234567)
        if i % 7 == 2:
            v = replace(v, features={**v.features, "price_current": 5278})
        if i % 7 == 3:
            v = replace(v, features={**v.features, "price_current": math.nan})
        if i % 11 == 4:
            v = replace(v, session="", seq=0)
        out.append(v)
    return out


def entries(vs: list[FeatureVector]) -> list[SourceEntry]:
    key = keys.stream_key("features", "WDOQ25")
    return [SourceEntry(key, f"{i + 1}-0", v) for i, v in enumerate(vs)]


@pytest.mark.parametrize("model", ["hgb", "logreg", "rf"])
def test_stream_fields_are_the_events_to_fields_and_probabilities_the_compiled_ones(
    tmp_path: Path, model: str
) -> None:
    path, _, rows = write(tmp_path, model)
    vs = vectors(rows[:80])
    for options in ({}, {"min_confidence": 1.0}, {"cooldown_ns": 2 * 10**9}):
        slot = ModelSlot(path, **options)  # type: ignore[arg-type]
        scorer = Scorer(slot)
        reference = slot.predictor
        actions = set()
        for entry in entries(vs):
            out = scorer(entry, "predict.stream:features:{WDOQ25}", 7)
            assert len(out) == 2
            for derived in out:
                # exactly what the stage stored before: the entry of the event, by to_fields
                assert derived == Derived.of(derived.event)
                assert derived.names == tuple(derived.event.to_fields())
            prediction, signal = out[0].event, out[1].event
            assert isinstance(prediction, Prediction) and isinstance(signal, Signal)
            v = entry.event
            want = reference.proba(reference.row(v))[0].tolist()
            # the same floats (repr: a NaN price gives logreg NaN probabilities)
            assert repr(list(prediction.probabilities.values())) == repr(want)
            assert repr(prediction.value) == repr(want[reference.up] - want[reference.down])
            assert (prediction.seq, signal.seq) == ((v.seq, v.seq) if v.session else (7, 7))
            session = v.session or "predict.stream:features:{WDOQ25}"
            assert prediction.session == f"{session}/{reference.tag}"
            assert signal.session == f"{prediction.session}.signal"
            price = v.features["price_current"]
            assert signal.price is price or (math.isnan(signal.price) and math.isnan(price))
            assert math.isnan(prediction.latency_us) == (not v.ts_init)
            actions.add((signal.action, signal.reason.split()[0]))
        if options:
            assert any(a == "hold" and r in ("confidence", "cooldown") for a, r in actions), actions


@pytest.mark.parametrize("model", ["hgb", "logreg", "rf"])
def test_events_only_for_sinks_fields_only_for_valkey(tmp_path: Path, model: str) -> None:
    path, _, rows = write(tmp_path, model)
    vs = entries(vectors(rows[:40]))
    both = Scorer(ModelSlot(path))
    fields_only = Scorer(ModelSlot(path), events=False)
    events_only = Scorer(ModelSlot(path), fields=False)
    at_init = PREDICTION_FIELDS.index("ts_init"), SIGNAL_FIELDS.index("ts_init")
    at_latency = PREDICTION_FIELDS.index("latency_us")
    for entry in vs:
        full = both(entry, "s", 1)
        lean = fields_only(entry, "s", 1)
        bare = events_only(entry, "s", 1)
        for k, (a, b, c) in enumerate(zip(full, lean, bare, strict=True)):
            assert b.event is None and c.names == () and c.values == ()
            assert (a.key, a.names, a.event_ms) == (b.key, b.names, b.event_ms)
            assert (c.key, c.event_ms) == (a.key, a.event_ms)
            # the same texts but the stamp of the moment each was made
            skip = {at_init[k]} | ({at_latency} if k == 0 else set())
            assert [x for i, x in enumerate(a.values) if i not in skip] == [
                x for i, x in enumerate(b.values) if i not in skip
            ]
            assert type(c.event) is type(a.event)
            stamp = ("ts_init", "latency_us")
            assert {n: x for n, x in c.event.to_fields().items() if n not in stamp} == {
                n: x for n, x in a.event.to_fields().items() if n not in stamp
            }
        assert a.event_ms == entry.event.ts_event // NS_PER_MS
        assert a.key == event_key(a.event)
    assert both.counters == fields_only.counters == events_only.counters


def general(data: dict) -> FeatureVector:
    """The general decoding (conversions and all): `Event.from_dict` and the features check."""
    event = Event.from_dict.__func__(FeatureVector, data)  # type: ignore[attr-defined]
    event._check_features()
    return event


def outcome(decoder, data: dict) -> str:
    try:
        return repr(decoder(data))
    except DecodeError as exc:
        return f"DecodeError: {exc} ({exc.field})"


def test_the_wire_decoder_decodes_as_the_general_path() -> None:
    v = vector([float(i) / 7 for i in range(65)], seq=9)
    v = replace(v, ts_init=v.ts_event + 5, reasons={"price_std_20": "warming up"})
    wire = orjson.loads(orjson.dumps(wire_dict(v)))
    assert _vector_from_wire(wire) is not None  # qt's own messages take the fast path
    nan_features = dict(v.features, price_current=None)
    cases = [
        wire,
        {**wire, "features": nan_features},
        {**wire, "features": dict(v.features, price_current=5278)},
        {**wire, "features": dict(v.features, price_current=True)},
        {**wire, "features": dict(v.features, price_current="5278")},
        {**wire, "features": orjson.dumps(v.features).decode()},
        {**wire, "features": [1.0, 2.0]},
        {**wire, "reasons": "{}"},
        {**wire, "reasons": None},
        {**wire, "warm": 1},
        {**wire, "warm": "1"},
        {**wire, "warm": None},
        {**wire, "ts_event": float(wire["ts_event"])},
        {**wire, "ts_event": str(wire["ts_event"])},
        {**wire, "ts_event": True},
        {**wire, "ts_event": 2**63},
        {**wire, "ts_event": -5},
        {**wire, "ts_init": None},
        {**wire, "seq": 2**64},
        {**wire, "seq": 3.0},
        {**wire, "session": 12},
        {**wire, "session": None},
        {**wire, "symbol": None},
        {**wire, "symbol": "WDO Q25"},
        {**wire, "symbol": b"WDOQ25"},
        {**wire, "feature_set": None},
        {**wire, "catalog_hash": 5},
        {**wire, "extra": "ignored"},
        {k: x for k, x in wire.items() if k not in ("reasons", "warm", "ts_init", "session")},
        {k: x for k, x in wire.items() if k != "symbol"},
        {k: x for k, x in wire.items() if k != "ts_event"},
    ]
    for data in cases:
        assert outcome(FeatureVector.from_dict, data) == outcome(general, data), data
    # a message as the features stage publishes it, replayed identity and all
    sent = {**wire, "origin": "feat1", "origin_seq": 9, "session": "pub.features", "seq": 77}
    decoded = decode(orjson.dumps(sent))
    assert repr(decoded) == repr(replace(general(sent), session="feat1", seq=9))


@pytest.mark.parametrize("cls", [FeatureVector, Prediction, Signal])
def test_the_quick_init_takes_what_the_dataclass_init_took(cls) -> None:
    """Same parameters in field order, same defaults, a new dict per instance, still frozen."""
    import dataclasses
    import inspect

    specs = dataclasses.fields(cls)
    assert list(inspect.signature(cls).parameters) == [f.name for f in specs]
    plain = cls("WDOQ25", T0)
    for f in specs[2:]:
        want = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert repr(getattr(plain, f.name)) == repr(want)
    values = [getattr(plain, f.name) for f in specs]
    assert repr(cls(*values)) == repr(
        cls(**{f.name: x for f, x in zip(specs, values, strict=True)})
    )
    factories = [f.name for f in specs if f.default_factory is not dataclasses.MISSING]
    other = cls("WDOQ25", T0)
    assert all(getattr(plain, n) is not getattr(other, n) for n in factories)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.symbol = "X"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cls("WDOQ25")  # type: ignore[call-arg]
    assert cls.__init__.__qualname__ == f"{cls.__name__}.__init__"
    assert "<init" in cls.__init__.__code__.co_filename  # the quick one, not the generated one
