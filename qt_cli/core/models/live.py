"""The live predict stage: `qt predict --model M.qtm --in valkey://… --symbol SYM --out …`.

Reads feature vectors (`stream:features:{SYM}` through a consumer group, or the features stage's
ZeroMQ output), scores each warm vector of the model's feature set with the model's compiled
path (`Predictor`) and emits a Prediction and a Signal: stored in `stream:predictions:{SYM}` /
`stream:signals:{SYM}` and published on ZeroMQ (`prediction_{SYM}`, `signal_{SYM}`). The stage is
a `stage.derived.GroupWorker`: it writes in input order through the one writer path and
acknowledges a vector only once its results are stored; the results' identities come from the
vector's and the model's hash (`Predictor`), so a restarted or second worker stores nothing twice.

Vectors of another feature set in the same stream are skipped and counted (`other_set`), vectors
that are not warm too (`not_warm`). A vector of the model's set whose names, order or catalog hash
differ stops the stage with one `SchemaMismatch` naming the differences (it stays pending).

Reload (`ModelSlot`): on SIGHUP, or when the bundle file changes, the new bundle is loaded and
verified on a background thread while the old one keeps serving, then swapped in between two
batches: no vector waits or is dropped. A bundle that does not verify, or whose feature schema
differs from the one being served, is refused with a warning and the old one keeps serving.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from qt_cli.core import keys
from qt_cli.core.errors import QtError
from qt_cli.core.events import NS_PER_MS, FeatureVector, Prediction, Signal
from qt_cli.core.models.bundle import load, verify
from qt_cli.core.models.errors import ModelError
from qt_cli.core.models.predictor import PREDICTION_FIELDS, SIGNAL_FIELDS, Predictor
from qt_cli.core.records import DEFAULT_MAX_MESSAGE_BYTES
from qt_cli.core.stage.derived import Derived, GroupWorker
from qt_cli.core.store.reader import SourceEntry

STAGE = "predict"
CLAIM_IDLE_S = 30.0  # vectors pending this long on another worker of the group are taken over
WATCH_INTERVAL_S = 1.0


def open_predictor(path: Path, *, min_confidence: float, cooldown_ns: int) -> Predictor:
    """A Predictor over the bundle at `path`, verified as `qt models verify` does."""
    verify(path)
    return Predictor(load(path), min_confidence=min_confidence, cooldown_ns=cooldown_ns, live=True)


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ModelSlot:
    """The Predictor being served, replaced whole on reload (`request()` from SIGHUP, or the
    file's inode/size/mtime changing, checked every `interval_s` by a watcher thread)."""

    def __init__(
        self,
        path: Path,
        *,
        min_confidence: float = 0.0,
        cooldown_ns: int = 0,
        interval_s: float = WATCH_INTERVAL_S,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.min_confidence = min_confidence
        self.cooldown_ns = cooldown_ns
        self.interval_s = interval_s
        self.warn = warn or (lambda _m: None)
        self._stamp = _file_stamp(self.path)
        self.predictor = open_predictor(
            self.path, min_confidence=min_confidence, cooldown_ns=cooldown_ns
        )
        self.reloads = 0
        self.refused = 0
        self._requested = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="qt-predict-reload", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._requested.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def request(self) -> None:
        """Reload as soon as possible (SIGHUP; safe from a signal handler)."""
        self._requested.set()

    def _watch(self) -> None:
        while not self._stopped.is_set():
            asked = self._requested.wait(self.interval_s)
            if self._stopped.is_set():
                return
            self._requested.clear()
            stamp = _file_stamp(self.path)
            if asked or (stamp is not None and stamp != self._stamp):
                self._stamp = stamp
                self.reload()

    def reload(self) -> bool:
        """Load, verify and swap in the bundle now at `path`; False (warned) when refused."""
        old = self.predictor
        try:
            new = open_predictor(
                self.path, min_confidence=self.min_confidence, cooldown_ns=self.cooldown_ns
            )
            if (new.feature_set, new.names, new.catalog_hash) != (
                old.feature_set,
                old.names,
                old.catalog_hash,
            ):
                raise ModelError(
                    f"it needs feature set {new.feature_set!r} (catalog "
                    f"{new.catalog_hash or '?'}, {new.n} features), the stage serves "
                    f"{old.feature_set!r} (catalog {old.catalog_hash or '?'}, {old.n} features): "
                    "start another qt predict for it"
                )
        except QtError as exc:
            self.refused += 1
            self.warn(f"predict: new bundle {self.path} refused ({exc}); still serving {old.tag}")
            return False
        new._last_signal = old._last_signal  # the cooldown carries over
        self.predictor = new
        self.reloads += 1
        self.warn(f"predict: reloaded {self.path}: serving {new.tag} (was {old.tag})")
        return True


class Scorer:
    """`derive` for the GroupWorker: one feature-vector entry -> its Prediction and Signal.

    The entries' values are built straight from the scored vector (`Predictor.fields`, the
    texts `to_fields` gives), only with `fields` (a stage writing to Valkey); the Prediction
    and Signal events only with `events` (the stage's ZeroMQ/file outputs send them). An entry
    built without fields has empty names and values (nothing writes it)."""

    def __init__(self, slot: ModelSlot, *, events: bool = True, fields: bool = True) -> None:
        self.slot = slot
        self.events = events
        self.fields = fields
        self.counters = {
            "vectors": 0,
            "not_warm": 0,
            "other_set": 0,
            "predictions": 0,
            "signals": 0,
            "buy": 0,
            "sell": 0,
        }
        self._keys: dict[str, tuple[str, str]] = {}  # symbol -> (predictions, signals) stream

    def __call__(self, entry: SourceEntry, session: str, seq: int) -> list[Derived]:
        vector = entry.event
        if not isinstance(vector, FeatureVector):
            return []
        c = self.counters
        c["vectors"] += 1
        predictor = self.slot.predictor
        if vector.feature_set != predictor.feature_set:
            c["other_set"] += 1
            return []
        if not vector.session:  # written by a seed-era tool: the stage's identity for it
            vector = replace(vector, session=session, seq=seq)
        d = predictor.predict_fields(
            vector, price=vector.features.get("price_current", math.nan), events=self.events
        )
        if d is None:
            c["not_warm"] += 1
            return []
        c["predictions"] += 1
        action = d.action
        if action != "hold":
            c["signals"] += 1
            c[action] += 1
        symbol = vector.symbol
        pair = self._keys.get(symbol)
        if pair is None:
            pair = self._keys[symbol] = (
                keys.stream_key(Prediction.STREAM, symbol),
                keys.stream_key(Signal.STREAM, symbol),
            )
        ms = vector.ts_event // NS_PER_MS
        if not self.fields:
            return [
                Derived(pair[0], (), (), ms, d.prediction),
                Derived(pair[1], (), (), ms, d.signal),
            ]
        prediction, signal = predictor.fields(d)
        return [
            Derived(pair[0], PREDICTION_FIELDS, prediction, ms, d.prediction),
            Derived(pair[1], SIGNAL_FIELDS, signal, ms, d.signal),
        ]

    def describe(self) -> dict[str, Any]:
        p = self.slot.predictor
        return {
            "model": p.name,
            "model_hash": p.tag,
            "serving": p.serving,
            "feature_set": p.feature_set,
            **self.counters,
            "reloads": self.slot.reloads,
            "reloads_refused": self.slot.refused,
        }


class LivePredict(GroupWorker):
    """The stage: a GroupWorker whose derive is a `Scorer` over a `ModelSlot`."""

    def __init__(self, source: Any, writer: Any, slot: ModelSlot, **kwargs: Any) -> None:
        self.slot = slot
        # events for the ZeroMQ/file outputs, stream fields for Valkey: only what is sent
        self.scorer = Scorer(slot, events=bool(kwargs.get("sinks")), fields=writer is not None)
        super().__init__(
            source, writer, self.scorer, stage=STAGE, describe=self.scorer.describe, **kwargs
        )

    def open(self) -> None:
        self.slot.start()

    def close(self) -> None:
        self.slot.close()
        super().close()

    def reload(self) -> None:
        self.slot.request()


def open_live(
    model: Path,
    inputs: Sequence[str],
    outputs: Sequence[str],
    *,
    symbols: Sequence[str],
    name: str = STAGE,
    group: str | None = None,
    consumer: str | None = None,
    start: str = "0",
    min_confidence: float = 0.0,
    cooldown_ns: int = 0,
    password: str = "",
    maxlen: int = 0,
    duration_s: float | None = None,
    replay: str | None = None,
    claim_idle_s: float = CLAIM_IDLE_S,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    warn: Callable[[str], None] | None = None,
) -> LivePredict:
    """The stage for `qt predict --in … --out …`: one `--in valkey://…` read through consumer
    group `group` (default `predict`; the group starts at `start`, default every stored vector),
    or the features stage's `--in tcp://…`; Valkey and ZeroMQ/file outputs."""
    from qt_cli.core import store
    from qt_cli.core.endpoints import parse_endpoint
    from qt_cli.core.errors import UsageError
    from qt_cli.core.io import open_sink, open_source
    from qt_cli.core.stage.inputs import ZmqInput
    from qt_cli.core.store.writer import StreamWriter

    if not symbols:
        raise UsageError("the live predict stage needs --symbol, e.g. --symbol WDOQ25")
    ins = [parse_endpoint(x) for x in inputs]
    zmq_in = bool(ins) and all(x.kind == "zmq" for x in ins)
    if not ins or not (zmq_in or (len(ins) == 1 and ins[0].kind == "valkey")):
        raise UsageError(
            "qt predict reads one --in valkey://… (the features streams) or the features "
            "stage's --in tcp://… output"
        )
    if zmq_in and group:
        raise UsageError("--group shares a --in valkey://… between workers; not with tcp://")
    outs = [parse_endpoint(x) for x in outputs] or ([] if zmq_in else [ins[0]])
    if not outs:
        raise UsageError("with --in tcp://…, give --out valkey://… and/or --out tcp://…")
    stores = [o for o in outs if o.kind == "valkey"]
    if len(stores) > 1:
        raise UsageError("give at most one --out valkey://…")
    slot = ModelSlot(model, min_confidence=min_confidence, cooldown_ns=cooldown_ns, warn=warn)
    source: Any
    if zmq_in:
        source = ZmqInput(
            [
                open_source(x, symbols=symbols, replay=replay, max_message_bytes=max_message_bytes)
                for x in ins
            ],
            symbols,
        )
    else:
        source = open_source(
            ins[0],
            symbols=symbols,
            kinds=("features",),
            start=start,
            group=group or STAGE,
            consumer=consumer or name,
            password=password,
            claim_idle_s=claim_idle_s,
        )
    writer = (
        StreamWriter(store.connect(stores[0], password=password), maxlen=maxlen) if stores else None
    )
    stats_client = (
        None if writer is not None or zmq_in else store.connect(ins[0], password=password)
    )
    sinks = [open_sink(o, keep_identity=True) for o in outs if o.kind != "valkey"]
    return LivePredict(
        source,
        writer,
        slot,
        name=consumer or name,
        sinks=sinks,
        stats_client=stats_client,
        duration_s=duration_s,
        warn=warn,
    )


def summary_line(t: dict[str, Any]) -> str:
    """The one line printed when the stage stops."""
    return (
        f"predict {t['name']} stopped ({t['stopped_by']}): {t['vectors']:,} vectors, "
        f"{t['predictions']:,} predictions, {t['signals']:,} signals ({t['buy']:,} buy, "
        f"{t['sell']:,} sell), {t['not_warm']:,} not warm, {t['other_set']:,} of another set; "
        f"written {t['written']:,}, duplicates {t['duplicates']:,}; model {t['model_hash']}"
        + (f", {t['reloads']} reloads" if t["reloads"] else "")
        + (f", {t['reloads_refused']} refused" if t["reloads_refused"] else "")
        + (f"; {t['rejected']:,} undecodable messages rejected" if t["rejected"] else "")
    )


__all__ = ["STAGE", "LivePredict", "ModelSlot", "Scorer", "open_live", "summary_line"]
