"""The live predict stage's fast path gives what the events would: its stream fields are the
Prediction's and Signal's `to_fields`, its probabilities the compiled ones, its events made only
for ZeroMQ/file outputs (and only the fields for Valkey)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from qt_cli.core import keys
from qt_cli.core.events import (
    NS_PER_MS,
    FeatureVector,
    Prediction,
    Signal,
)
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


def test_events_are_the_dataclass_events_of_the_decision(tmp_path: Path) -> None:
    """`Predictor.events` (values in field order) makes what the keyword constructors make."""
    path, _, rows = write(tmp_path, "logreg")
    predictor = ModelSlot(path).predictor
    assert PREDICTION_FIELDS == (
        "type", "symbol", "ts_event", "model", "model_hash", "feature_set", "value", "label",
        "probabilities", "ts_features", "latency_us", "ts_init", "session", "seq",
    )  # fmt: skip
    assert SIGNAL_FIELDS == (
        "type", "symbol", "ts_event", "action", "confidence", "price", "model", "reason",
        "ts_init", "session", "seq",
    )  # fmt: skip
    for v in vectors(rows[:20]):
        if not v.session:
            continue
        d = predictor.decide(v, predictor.first(predictor.row(v)), price=5001.5)
        prediction, signal = predictor.events(d)
        assert repr(prediction) == repr(
            Prediction(
                symbol=v.symbol,
                ts_event=v.ts_event,
                model=predictor.name,
                model_hash=predictor.model_hash,
                feature_set=predictor.feature_set,
                value=d.value,
                label=predictor.labels[d.best],
                probabilities=dict(zip(predictor.labels, d.q, strict=True)),
                ts_features=v.ts_event,
                latency_us=d.latency_us,
                ts_init=d.now,
                session=f"{v.session}/{predictor.tag}",
                seq=v.seq,
            )
        )
        assert repr(signal) == repr(
            Signal(
                symbol=v.symbol,
                ts_event=v.ts_event,
                action=d.action,
                confidence=d.confidence,
                price=5001.5,
                model=predictor.name,
                reason=d.reason,
                ts_init=d.now,
                session=f"{v.session}/{predictor.tag}.signal",
                seq=v.seq,
            )
        )


def test_a_zeromq_only_stage_publishes_the_events_it_scored(tmp_path: Path) -> None:
    """`--in tcp://… --out tcp://…`: no Valkey writer, so no stream fields are built; every
    vector's Prediction and Signal are published under the vector's own identity."""
    import threading

    from qt_cli.core.models.live import open_live
    from qt_cli.core.zmq_io import PubSink, SubSource
    from tests.helpers import eventually, tcp_endpoint

    path, _, rows = write(tmp_path, "logreg")
    feats, out = tcp_endpoint(), tcp_endpoint()
    pub = PubSink(feats, channel="features", keep_identity=True)
    worker = open_live(path, [feats], [out], symbols=["WDOQ25"])
    assert worker.scorer.events and not worker.scorer.fields
    sub = SubSource(out)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    got: list = []
    try:
        warm = iter(range(10_000, 20_000))

        def connected() -> bool:  # warm-up vectors until results come back (slow joiners)
            pub.send([vector(rows[0], seq=next(warm))])
            got.extend(sub.read(0.05))
            return bool(got)

        eventually(connected, message="the stage's results never arrived")
        vs = [vector(row, seq=i + 1, ts=T0 + i * 10**6) for i, row in enumerate(rows[:30])]
        pub.send(vs)

        def results() -> list:  # the test vectors' (the warm-up ones have seqs from 10,000)
            got.extend(sub.read(0.1))
            return [e for e in got if e.seq <= len(vs)]

        eventually(lambda: len(results()) >= 2 * len(vs))
    finally:
        worker.stop("test")
        runner.join(5)
        worker.close()
        pub.close()
        sub.close()
    reference = ModelSlot(path).predictor
    mine = [e for e in got if e.seq <= len(vs)]
    assert len(mine) == 2 * len(vs)
    for v, prediction, signal in zip(vs, mine[::2], mine[1::2], strict=True):
        assert isinstance(prediction, Prediction) and isinstance(signal, Signal)
        assert (prediction.session, prediction.seq) == (f"feat1/{reference.tag}", v.seq)
        assert (signal.session, signal.seq) == (f"feat1/{reference.tag}.signal", v.seq)
        want = reference.proba(reference.row(v))[0].tolist()
        assert list(prediction.probabilities.values()) == want
        assert signal.price == v.features["price_current"]
    assert worker.scorer.counters["predictions"] >= len(vs)
