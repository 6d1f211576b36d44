"""Columnar history chunks: many trades packed into one Valkey stream entry, built for reading.

Why: reading per-event stream entries back into Python costs ~10 µs per entry (reply parsing and
a Python object per field), so an hour of ticks takes ~0.5 s. A chunk holds up to
`CHUNK_MAX_EVENTS` trades as packed columns in one value, so a query reads a handful of entries
and turns them into NumPy arrays without a Python loop per row.

An entry of `stream:hist:ticks:{SYM}` has the fields `v` (codec version), `n` (trades),
`t_min`/`t_max` (event time range, ns), `cols` (the packed columns) and `src` (the id of the last
per-event entry the chunk includes; added by the builder / the bridge).

`cols` is one compressed buffer (version 2: a Zstandard frame; version 1: a zlib stream)
holding a 4-byte little-endian header length, a JSON header, then the column buffers back to
back. The header lists, per column, how its buffer is encoded:

- integers (`int`): optionally divided by a common power of ten (`s`, e.g. 1e6 for ms-resolution
  times), then either delta-encoded (`m: "d"`, base = first value) or frame-of-reference encoded
  (`m: "f"`, base = minimum), stored in the narrowest integer type that holds them (`t`). Version
  2 transposes the bytes of 8-byte values (byte shuffle, marked `sh`) so the compressor sees the
  slowly changing high bytes together; version 1 does so for every multi-byte column, unmarked. A column whose values are all equal is `m: "c"` and takes no bytes.
- floats: `dec` (every value is an exact decimal with `k` places: stored as the integers
  value × 10^k, checked to read back bit for bit), `ratio` (volume = price × quantity × `r`,
  with the rows that differ stored raw), or `raw` (float64; byte-shuffled in version 1 only).
- strings (session, buyer/seller names): a dictionary in the header and integer codes.

Decoding version 2 goes a page of chunks at a time (`decode_chunks`): inflate the chunks
together (on zstd's threads), check each, then build each column for the whole page with a
handful of NumPy calls (one concatenation of the stored integers, one cumsum, per-chunk bases
added in place) into arrays carved out of one allocation.
Version 1 chunks are decoded one by one (inflate, one `frombuffer` per column, a cumsum).
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import zstandard

from qt_cli.core.errors import DecodeError
from qt_cli.core.events import NS_PER_MS, NS_PER_S, Trade
from qt_cli.core.keys import parse_id

CODEC_VERSION = 2
READABLE_VERSIONS = (1, 2)
CHUNK_MAX_EVENTS = 4096
# The span limit bounds how far before `from` a reader looks for a chunk reaching into its range.
# Ten minutes, not one: a day of a 20-trades/s symbol is ~120 chunks of 4,096 instead of ~450
# of ~1,100, which takes a third off a whole-day read (the per-chunk header and column work).
CHUNK_MAX_SPAN_NS = 10 * 60 * NS_PER_S
ZLIB_LEVEL = 6  # version 1
ZSTD_LEVEL = 6  # version 2
# The chunk still forming is repacked about every second and replaced when its chunk seals: it
# is packed at level 1, in about half the time of level 6 (its size matters little). A sealed
# chunk keeps level 6: a 4,096-trade chunk then fits a smaller allocation in Valkey (level 3
# cost 5-15 % more memory per tick). Chunks packed at any level read the same.
ZSTD_FAST_LEVEL = 1
# Version 2 byte-shuffles columns stored this wide (marked `sh`): on simulated sessions shuffling
# 4-byte columns too saved 2 % of the bytes and cost 5 % of the decoding time, 2-byte ones grew.
SHUFFLE_MIN_BYTES = 8
V1_SHUFFLE = True  # version 1: every multi-byte column shuffled, unmarked

# Numeric columns of a decoded chunk and their dtypes, in display order.
NUMERIC_COLUMNS: dict[str, np.dtype[Any]] = {
    "ts_event": np.dtype(np.int64),
    "ts_init": np.dtype(np.int64),
    "price": np.dtype(np.float64),
    "quantity": np.dtype(np.int64),
    "volume": np.dtype(np.float64),
    "trade_id": np.dtype(np.int64),
    "buyer": np.dtype(np.int32),
    "seller": np.dtype(np.int32),
    "trade_type": np.dtype(np.uint8),
    "aggressor": np.dtype(np.int8),  # 1 buy, -1 sell, 0 none
    "is_edit": np.dtype(np.bool_),
    "history": np.dtype(np.bool_),
    "late": np.dtype(np.bool_),  # stored with an id clamped above its event time
    "seq": np.dtype(np.int64),
}
# String columns: dictionary-encoded (a tuple of strings per column, codes per row).
STRING_COLUMNS = ("session", "buyer_name", "seller_name")
_INT_COLUMNS = (
    "quantity",
    "trade_id",
    "buyer",
    "seller",
    "trade_type",
    "aggressor",
    "is_edit",
    "history",
    "late",
    "seq",
)

AGGRESSOR_CODES = {"buy": 1, "sell": -1, "none": 0}
AGGRESSOR_NAMES = {1: "buy", -1: "sell", 0: "none"}

_HEADER_LEN = struct.Struct("<I")
_TIME_SCALES = (NS_PER_S, NS_PER_MS, 1_000)
_MAX_EXACT_INT = 2**53


# --- integer columns -------------------------------------------------------------------------


def _narrow_signed(lo: int, hi: int) -> str:
    for name in ("<i1", "<i2", "<i4"):
        info = np.iinfo(np.dtype(name))
        if info.min <= lo and hi <= info.max:
            return name
    return "<i8"


def _narrow_unsigned(hi: int) -> str:
    for name in ("<u1", "<u2", "<u4"):
        if hi <= np.iinfo(np.dtype(name)).max:
            return name
    return "<u8"


def _shuffle(values: np.ndarray, dtype: str, shuffle: bool = True) -> bytes:
    arr = values.astype(dtype, copy=False)
    if arr.itemsize == 1 or not shuffle:
        return arr.tobytes()
    return arr.view(np.uint8).reshape(len(arr), arr.itemsize).T.tobytes()


def _unshuffle(
    payload: bytes | memoryview, offset: int, n: int, dtype: str, shuffled: bool = True
) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.itemsize == 1 or not shuffled:
        return np.frombuffer(payload, dt, n, offset)
    raw = np.frombuffer(payload, np.uint8, n * dt.itemsize, offset)
    return raw.reshape(dt.itemsize, n).T.copy().view(dt).reshape(n)


def _pack_int(
    values: np.ndarray, out: list[bytes], *, scales: Iterable[int] = (), shuffle: int = V1_SHUFFLE
) -> dict:
    """`shuffle`: the narrowest stored width (bytes) that is byte-shuffled. Version 1 shuffles
    every multi-byte column and says nothing in the spec (`V1_SHUFFLE`); version 2 shuffles
    columns at least `SHUFFLE_MIN_BYTES` wide and marks them `sh` in the spec."""
    """Spec for an int64 column; appends its buffer (if any) to `out`."""
    n = len(values)
    first = int(values[0]) if n else 0
    if n == 0 or not np.any(values != first):
        return {"e": "int", "m": "c", "b": first}
    scale = 1
    for candidate in scales:
        if not np.any(values % candidate):
            scale = candidate
            break
    v = values // scale if scale != 1 else values
    lo, hi = int(v.min()), int(v.max())
    frame_type = _narrow_unsigned(hi - lo)
    deltas = np.empty(n, dtype=np.int64)
    deltas[0] = 0
    np.subtract(v[1:], v[:-1], out=deltas[1:])
    delta_type = _narrow_signed(int(deltas.min()), int(deltas.max()))
    delta_size, frame_size = np.dtype(delta_type).itemsize, np.dtype(frame_type).itemsize
    # Same width: deltas win for near-monotonic columns (times, ids), offsets for codes.
    if delta_size < frame_size or (
        delta_size == frame_size and np.abs(deltas).sum() < (v - lo).sum()
    ):
        buf = _shuffle(deltas, delta_type, delta_size >= shuffle)
        spec = {"e": "int", "m": "d", "b": int(v[0]), "t": delta_type, "s": scale}
        if shuffle is not V1_SHUFFLE and delta_size >= shuffle:
            spec["sh"] = 1
    else:
        buf = _shuffle(v - lo, frame_type, frame_size >= shuffle)
        spec = {"e": "int", "m": "f", "b": lo, "t": frame_type, "s": scale}
        if shuffle is not V1_SHUFFLE and frame_size >= shuffle:
            spec["sh"] = 1
    spec["len"] = len(buf)
    out.append(buf)
    return spec


def _unpack_int(
    spec: dict, payload: memoryview, offset: int, n: int, shuffled: bool = True
) -> tuple[np.ndarray, int]:
    mode = spec["m"]
    if mode == "c":
        return np.full(n, spec["b"], dtype=np.int64), offset
    stored = _unshuffle(payload, offset, n, spec["t"], shuffled)
    if mode == "d":
        values = np.cumsum(stored, dtype=np.int64)
    else:
        values = stored.astype(np.int64)
    values += spec["b"]
    if spec["s"] != 1:
        values *= spec["s"]
    return values, offset + spec["len"]


# --- float columns ---------------------------------------------------------------------------


def _decimal_places(values: np.ndarray, max_places: int = 8) -> tuple[int, np.ndarray] | None:
    """(k, values × 10^k as int64) when every value reads back exactly from that integer."""
    # compared by dividing the limit: a value near the float maximum must not overflow here
    if not np.all(np.isfinite(values)) or np.any(np.abs(values) >= _MAX_EXACT_INT / 10**max_places):
        return None
    for k in range(max_places + 1):
        factor = float(10**k)
        ints = np.round(values * factor)
        if np.array_equal(ints / factor, values):
            return k, ints.astype(np.int64)
    return None


def _pack_float(values: np.ndarray, out: list[bytes], shuffle: int = V1_SHUFFLE) -> dict:
    found = _decimal_places(values)
    if found is not None:
        k, ints = found
        return {"e": "dec", "k": k, "i": _pack_int(ints, out, shuffle=shuffle)}
    return _pack_raw(values, out, shuffle is V1_SHUFFLE)


def _pack_raw(values: np.ndarray, out: list[bytes], shuffle: bool = True) -> dict:
    buf = _shuffle(values, "<f8", shuffle)
    out.append(buf)
    return {"e": "raw", "len": len(buf)}


def _ratio_prediction(price: np.ndarray, quantity: np.ndarray, ratio: float) -> np.ndarray:
    # One formula for encoder and decoder, so the predictions are the same doubles on both sides.
    return price * quantity.astype(np.float64) * ratio


def _pack_volume(
    volume: np.ndarray,
    price: np.ndarray,
    quantity: np.ndarray,
    out: list[bytes],
    shuffle: int = V1_SHUFFLE,
) -> dict:
    """Volume is usually price × quantity × contract multiplier: store only the rows that are not."""
    usable = np.flatnonzero((quantity > 0) & np.isfinite(price) & (price > 0) & np.isfinite(volume))
    if len(usable) >= max(1, len(volume) // 2):
        i = int(usable[0])
        with np.errstate(over="ignore", invalid="ignore"):  # a price near the float maximum
            ratio = float(volume[i] / (price[i] * float(quantity[i])))
            predicted = _ratio_prediction(price, quantity, ratio)
        # only predictions the decoder recomputes without overflow (else the volumes as floats)
        misses = np.flatnonzero(predicted != volume)
        if np.all(np.isfinite(predicted)) and len(misses) <= len(volume) // 8:
            spec: dict = {"e": "ratio", "r": ratio}
            x = _pack_int(misses.astype(np.int64), out, shuffle=shuffle) if len(misses) else None
            spec["x"] = x
            spec["nx"] = int(len(misses))
            if len(misses):
                spec["xv"] = _pack_float(volume[misses], out, shuffle)
            return spec
    return _pack_float(volume, out, shuffle)


def _unpack_float(
    spec: dict,
    payload: memoryview,
    offset: int,
    n: int,
    columns: Mapping[str, np.ndarray],
    shuffled: bool = True,
) -> tuple[np.ndarray, int]:
    kind = spec["e"]
    if kind == "dec":
        ints, offset = _unpack_int(spec["i"], payload, offset, n, shuffled)
        return ints / float(10 ** spec["k"]), offset
    if kind == "raw":
        values = _unshuffle(payload, offset, n, "<f8", shuffled).astype(np.float64)
        return values, offset + spec["len"]
    if kind == "ratio":
        values = _ratio_prediction(columns["price"], columns["quantity"], spec["r"])
        nx = spec["nx"]
        if nx:
            misses, offset = _unpack_int(spec["x"], payload, offset, nx, shuffled)
            exact, offset = _unpack_float(spec["xv"], payload, offset, nx, columns, shuffled)
            values[misses] = exact
        return values, offset
    raise DecodeError(f"history chunk: unknown float encoding {kind!r}", field="cols")


# --- encode / decode -------------------------------------------------------------------------


def _dictionary(values: Sequence[str], table: dict[str, int]) -> np.ndarray:
    return np.fromiter(
        (table.setdefault(v, len(table)) for v in values), dtype=np.int64, count=len(values)
    )


def encode_ticks(
    events: Sequence[Trade], *, late: Sequence[bool] | None = None
) -> dict[str, bytes]:
    """Pack trades (in stream order) into the fields `v`, `n`, `t_min`, `t_max`, `cols`.

    `late` marks trades stored with an id clamped above their event time (default: none).
    """
    if not events:
        raise ValueError("encode_ticks needs at least one trade")
    return encode_columns(tick_columns_of(events, late=late))


def encode_columns(
    columns: TickColumns, *, version: int = CODEC_VERSION, fast: bool = False
) -> dict[str, bytes]:
    """Pack decoded columns (at least one row) into chunk fields; see encode_ticks.

    `version` 1 (zlib, byte-shuffled) is kept for tests and for comparing the codecs. `fast`:
    version 2 at `ZSTD_FAST_LEVEL` (the chunk still forming).
    """
    n = columns.n
    if n == 0:
        raise ValueError("a chunk needs at least one trade")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"unknown codec version {version}")
    shuffle = V1_SHUFFLE if version == 1 else SHUFFLE_MIN_BYTES
    a = columns.arrays
    ints = {name: a[name].astype(np.int64) for name in _INT_COLUMNS}
    t_event = a["ts_event"]
    t_init = a["ts_init"]
    buffers: list[bytes] = []
    specs: dict[str, dict] = {}
    specs["ts_event"] = _pack_int(t_event, buffers, scales=_TIME_SCALES, shuffle=shuffle)
    # Receive time: either on its own or as latency after the event time, whichever packs narrower.
    own: list[bytes] = []
    own_spec = _pack_int(t_init, own, scales=_TIME_SCALES, shuffle=shuffle)
    rel: list[bytes] = []
    rel_spec = _pack_int(t_init - t_event, rel, scales=_TIME_SCALES, shuffle=shuffle)
    if sum(map(len, rel)) < sum(map(len, own)):
        specs["ts_init"] = {"e": "rel", "i": rel_spec}
        buffers += rel
    else:
        specs["ts_init"] = own_spec
        buffers += own
    specs["price"] = _pack_float(a["price"], buffers, shuffle)
    specs["quantity"] = _pack_int(ints["quantity"], buffers, shuffle=shuffle)
    specs["volume"] = _pack_volume(a["volume"], a["price"], ints["quantity"], buffers, shuffle)
    for name in _INT_COLUMNS:
        if name != "quantity":
            specs[name] = _pack_int(ints[name], buffers, shuffle=shuffle)
    for name in STRING_COLUMNS:
        specs[name] = _pack_int(columns.codes[name].astype(np.int64), buffers, shuffle=shuffle)
    header = orjson.dumps(
        {"n": n, "cols": specs, "dicts": {k: list(columns.dictionaries[k]) for k in STRING_COLUMNS}}
    )
    raw = _HEADER_LEN.pack(len(header)) + header + b"".join(buffers)
    if version == 1:
        blob = zlib.compress(raw, ZLIB_LEVEL)
    else:
        blob = _zstd_compressor(fast).compress(raw)
    return {
        "v": str(version).encode(),
        "n": str(n).encode(),
        "t_min": str(int(t_event.min())).encode(),
        "t_max": str(int(t_event.max())).encode(),
        "cols": blob,
    }


_local = threading.local()


def _zstd_compressor(fast: bool = False) -> zstandard.ZstdCompressor:
    """One compressor per thread and level (a zstandard context is not shared between threads)."""
    name = "fast_compressor" if fast else "compressor"
    found = getattr(_local, name, None)
    if found is None:
        found = zstandard.ZstdCompressor(level=ZSTD_FAST_LEVEL if fast else ZSTD_LEVEL)
        setattr(_local, name, found)
    return found


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    found = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


def tick_columns_of(events: Sequence[Trade], *, late: Sequence[bool] | None = None) -> TickColumns:
    """Trades as columns (one pass over the objects)."""
    n = len(events)
    if n == 0:
        return TickColumns.empty()
    rows = [
        (
            e.ts_event,
            e.ts_init,
            e.price,
            e.quantity,
            e.volume,
            e.trade_id,
            e.buyer,
            e.seller,
            e.trade_type,
            AGGRESSOR_CODES.get(e.aggressor, 0),
            e.is_edit,
            e.history,
            e.seq,
            e.session,
            e.buyer_name,
            e.seller_name,
        )
        for e in events
    ]
    cols = list(zip(*rows, strict=True))
    names = (
        "ts_event",
        "ts_init",
        "price",
        "quantity",
        "volume",
        "trade_id",
        "buyer",
        "seller",
        "trade_type",
        "aggressor",
        "is_edit",
        "history",
        "seq",
    )
    arrays = {
        name: np.array(col, dtype=NUMERIC_COLUMNS[name])
        for name, col in zip(names, cols[: len(names)], strict=True)
    }
    arrays["late"] = np.zeros(n, dtype=np.bool_) if late is None else np.array(late, dtype=np.bool_)
    codes: dict[str, np.ndarray] = {}
    dictionaries: dict[str, tuple[str, ...]] = {}
    for name, col in zip(STRING_COLUMNS, cols[len(names) :], strict=True):
        table: dict[str, int] = {}
        codes[name] = _dictionary(col, table).astype(np.int32)
        dictionaries[name] = tuple(table)
    return TickColumns(n, {k: arrays[k] for k in NUMERIC_COLUMNS}, codes, dictionaries)


@dataclass(frozen=True)
class TickColumns:
    """Decoded ticks: numeric arrays plus dictionary-encoded strings (codes into a tuple)."""

    n: int
    arrays: dict[str, np.ndarray]
    codes: dict[str, np.ndarray] = field(default_factory=dict)
    dictionaries: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def strings(self, name: str) -> np.ndarray:
        """A string column as an object array."""
        table = np.array(self.dictionaries[name] or ("",), dtype=object)
        return table[self.codes[name]]

    def to_dict(self) -> dict[str, np.ndarray]:
        out = dict(self.arrays)
        for name in STRING_COLUMNS:
            out[name] = self.strings(name)
        return out

    def take(self, index: np.ndarray | slice) -> TickColumns:
        """The rows at `index` (integer array, boolean mask or slice), in that order."""
        arrays = {k: v[index] for k, v in self.arrays.items()}
        codes = {k: v[index] for k, v in self.codes.items()}
        n = len(next(iter(arrays.values()))) if arrays else 0
        return TickColumns(n, arrays, codes, dict(self.dictionaries))

    @staticmethod
    def empty() -> TickColumns:
        return TickColumns(
            0,
            {k: np.empty(0, dtype=dt) for k, dt in NUMERIC_COLUMNS.items()},
            {k: np.empty(0, dtype=np.int32) for k in STRING_COLUMNS},
            dict.fromkeys(STRING_COLUMNS, ()),
        )

    @staticmethod
    def concat(parts: Sequence[TickColumns]) -> TickColumns:
        """One TickColumns from many, merging their string dictionaries."""
        parts = [p for p in parts if p.n]
        if not parts:
            return TickColumns.empty()
        if len(parts) == 1:
            return parts[0]
        arrays = {k: np.concatenate([p.arrays[k] for p in parts]) for k in NUMERIC_COLUMNS}
        codes: dict[str, np.ndarray] = {}
        dictionaries: dict[str, tuple[str, ...]] = {}
        for name in STRING_COLUMNS:
            merged: dict[str, int] = {}
            pieces = []
            for p in parts:
                local = p.dictionaries[name]
                remap = np.fromiter(
                    (merged.setdefault(s, len(merged)) for s in local), np.int32, len(local)
                )
                pieces.append(remap[p.codes[name]] if len(local) else p.codes[name])
            codes[name] = np.concatenate(pieces)
            dictionaries[name] = tuple(merged)
        return TickColumns(sum(p.n for p in parts), arrays, codes, dictionaries)


def _text(fields: Mapping[Any, Any], name: str) -> bytes:
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        raise DecodeError(f"history chunk: field {name!r} is missing", field=name)
    return value.encode() if isinstance(value, str) else bytes(value)


def _version(fields: Mapping[Any, Any]) -> int:
    version = _text(fields, "v")
    if version == b"2":
        return 2
    if version == b"1":
        return 1
    raise DecodeError(
        f"history chunk codec version {version.decode(errors='replace')!r} is not one of "
        f"{', '.join(map(str, READABLE_VERSIONS))}: this chunk was written by another qt "
        "version; upgrade qt",
        field="v",
    )


def decode_tick_columns(fields: Mapping[Any, Any]) -> TickColumns:
    """Decode one chunk's fields (bytes or str keys, as XRANGE returns them)."""
    if _version(fields) == 1:
        return _decode_v1(fields)
    columns, problems = decode_chunks([fields])
    if problems:
        raise problems[0][1]
    return columns


def decode_chunks(
    chunks: Sequence[Mapping[Any, Any]], *, append: TickColumns | None = None
) -> tuple[TickColumns, list[tuple[int, DecodeError]]]:
    """Many chunks' fields (in stream order) decoded into one set of columns, rows in that order,
    then `append`'s rows (decoded already, e.g. the per-event tail), in the same arrays.

    Version-2 chunks are decoded together: each is inflated and its header read, then every
    column is built for all of them at once (one concatenation of the stored integers, then
    NumPy over the whole page) instead of chunk by chunk. Version-1 chunks take the old path.
    A chunk that does not decode is left out and returned as (index, error).
    """
    problems: list[tuple[int, DecodeError]] = []
    runs: list[TickColumns] = []
    pending: list[_Parsed] = []
    inflated = _inflate_all(chunks)
    for i, fields in enumerate(chunks):
        try:
            if _version(fields) == 1:
                if pending:
                    runs.append(_decode_page(pending))
                    pending = []
                runs.append(_decode_v1(fields))
            else:
                pending.append(_parse_v2(fields, None if inflated is None else inflated[i]))
        except DecodeError as exc:
            problems.append((i, exc))
    if pending:
        runs.append(_decode_page(pending, append))
    elif append is not None:
        runs.append(append)
    return TickColumns.concat(runs), problems


# --- version 2: zstd, columns not shuffled, decoded a page at a time ------------------------

_ITEMSIZE = {"<i1": 1, "<i2": 2, "<i4": 4, "<i8": 8, "<u1": 1, "<u2": 2, "<u4": 4, "<u8": 8}


@dataclass
class _Parsed:
    """One inflated version-2 chunk: its buffer, row count, column specs (each buffer's offset
    written into its spec as `o`) and string dictionaries."""

    blob: bytes | memoryview
    n: int
    specs: dict
    dicts: dict[str, tuple[str, ...]]


def _place_int(spec: dict, offset: int, n: int) -> int:
    if spec["m"] == "c":
        int(spec["b"])
        return offset
    if spec["m"] not in ("d", "f") or spec["len"] != _ITEMSIZE[spec["t"]] * n:
        raise ValueError(f"bad integer column {spec!r:.80}")
    int(spec["b"])
    int(spec["s"])
    spec["o"] = offset
    return offset + spec["len"]


def _place_float(spec: dict, offset: int, n: int) -> int:
    kind = spec["e"]
    if kind == "dec":
        int(spec["k"])
        return _place_int(spec["i"], offset, n)
    if kind == "raw":
        if spec["len"] != 8 * n:
            raise ValueError("bad float column")
        spec["o"] = offset
        return offset + spec["len"]
    if kind == "ratio":
        float(spec["r"])
        nx = spec["nx"]
        if nx:
            offset = _place_int(spec["x"], offset, nx)
            offset = _place_float(spec["xv"], offset, nx)
        return offset
    raise ValueError(f"unknown float encoding {kind!r}")


# Inflating many chunks, zstd's own threads share the work (it releases the GIL): on 2 cores a
# day's 120 chunks inflate in about half the time. Fewer chunks are not worth starting threads.
INFLATE_THREADS = 2
INFLATE_THREADS_MIN_CHUNKS = 32


def _inflate_all(chunks: Sequence[Mapping[Any, Any]]) -> list[Any] | None:
    """Every chunk's `cols` inflated at once (index i: chunk i's buffer), or None when that is
    not worth it or not possible (a version-1 chunk, a missing field, a frame that does not
    inflate): then each chunk is inflated on its own and a bad one is reported as itself."""
    if len(chunks) < INFLATE_THREADS_MIN_CHUNKS:
        return None
    try:
        frames: list[bytes | bytearray | memoryview] = [
            _text(fields, "cols") for fields in chunks if _version(fields) == 2
        ]
        if len(frames) != len(chunks):
            return None
        inflated = _zstd_decompressor().multi_decompress_to_buffer(frames, threads=INFLATE_THREADS)
        return [inflated[i] for i in range(len(frames))]
    except (DecodeError, zstandard.ZstdError, ValueError):
        return None


def _parse_v2(fields: Mapping[Any, Any], inflated: Any = None) -> _Parsed:
    """One version-2 chunk parsed; `inflated`: its `cols` already inflated (a buffer)."""
    n = _count(fields)
    try:
        blob: bytes | memoryview = (
            _zstd_decompressor().decompress(_text(fields, "cols"))
            if inflated is None
            else memoryview(inflated)
        )
        (header_len,) = _HEADER_LEN.unpack_from(blob)
        header = orjson.loads(blob[4 : 4 + header_len])
    except (zstandard.ZstdError, struct.error, orjson.JSONDecodeError) as exc:
        raise DecodeError(
            f"history chunk: cannot unpack its columns ({exc})", field="cols"
        ) from None
    if n < 1 or not isinstance(header, dict) or header.get("n") != n:
        got = header.get("n") if isinstance(header, dict) else None
        raise DecodeError(f"history chunk: header says {got} trades, field n says {n}", field="n")
    try:
        specs = header["cols"]
        offset = _place_int(specs["ts_event"], 4 + header_len, n)
        init = specs["ts_init"]
        offset = _place_int(init["i"] if init.get("e") == "rel" else init, offset, n)
        offset = _place_float(specs["price"], offset, n)
        offset = _place_int(specs["quantity"], offset, n)
        offset = _place_float(specs["volume"], offset, n)
        for name in (*_INT_COLUMNS[1:], *STRING_COLUMNS):
            offset = _place_int(specs[name], offset, n)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DecodeError(f"history chunk: malformed columns ({exc})", field="cols") from None
    if offset != len(blob):
        raise DecodeError("history chunk: column sizes do not add up", field="cols")
    try:
        dicts = {name: tuple(header["dicts"][name]) for name in STRING_COLUMNS}
    except (KeyError, TypeError) as exc:
        raise DecodeError(f"history chunk: malformed dictionaries ({exc})", field="cols") from None
    return _Parsed(blob, n, specs, dicts)


def _scratch(n: int) -> np.ndarray:
    """An int64 work array of `n` rows, reused by this thread's next decodes: fresh memory for a
    page-sized temporary costs a page fault per 4 KiB, more than the work done in it."""
    if n > _SCRATCH_MAX_ROWS:
        return np.empty(n, np.int64)
    found: np.ndarray | None = getattr(_local, "scratch", None)
    if found is None or len(found) < n:
        found = _local.scratch = np.empty(n, np.int64)
    return found[:n]


_SCRATCH_MAX_ROWS = 2_000_000  # 16 MB kept at most


def _arena(n: int, dtypes: Sequence[np.dtype[Any]]) -> list[np.ndarray]:
    """Arrays of `n` rows of each dtype, carved out of one allocation: NumPy asks the kernel for
    huge pages for an allocation this large, so a 500,000-row page faults in ~20 2-MiB pages
    instead of ~10,000 4-KiB ones (about 10 ms less on this machine). The arrays keep the
    allocation alive together."""
    sizes = [-(-n * dt.itemsize // 64) * 64 for dt in dtypes]  # each 64-byte aligned
    buffer = np.empty(sum(sizes) + 64, np.uint8)
    start = -buffer.ctypes.data % 64
    out = []
    for dt, size in zip(dtypes, sizes, strict=True):
        out.append(buffer[start : start + n * dt.itemsize].view(dt))
        start += size
    return out


class _Page:
    """Row layout of a page of parsed chunks."""

    def __init__(self, parsed: Sequence[_Parsed]) -> None:
        self.parsed = parsed
        self.ns = np.fromiter((p.n for p in parsed), np.int64, len(parsed))
        self.total = int(self.ns.sum())
        self.starts = np.zeros(len(parsed), np.int64)
        np.cumsum(self.ns[:-1], out=self.starts[1:])

    def apply(self, op: np.ufunc, values: np.ndarray, per_chunk: np.ndarray) -> None:
        """`values op= per_chunk[i]` on chunk i's rows, in place: one call when all chunks
        agree, else a call per chunk (a per-row array of the per-chunk values would be one more
        page-sized allocation, and its fresh memory costs more than these calls)."""
        first = per_chunk[0]
        if len(per_chunk) == 1 or not np.any(per_chunk != first):
            op(values, first, out=values)
            return
        for i, (start, n) in enumerate(zip(self.starts.tolist(), self.ns.tolist(), strict=True)):
            rows = values[start : start + n]
            op(rows, per_chunk[i], out=rows)

    def ints(
        self, leaves: Sequence[dict], dtype: np.dtype[Any], out: np.ndarray | None = None
    ) -> np.ndarray:
        """Integer columns (one spec per chunk) for every row, as `dtype`; into `out[:total]`
        when given (then that view is returned).

        Narrow dtypes are computed in that dtype: the sums wrap modulo 2^bits, and since every
        stored value fits the column's dtype the result is exact.
        """
        work = np.dtype(np.uint8) if dtype == np.bool_ else dtype
        target = None if out is None else out[: self.total].view(work)
        bases = np.array([leaf["b"] for leaf in leaves], dtype=np.int64).astype(work)
        modes = {leaf["m"] for leaf in leaves}
        if modes == {"c"}:
            values = np.repeat(bases, self.ns)
        else:
            values = self._stored(leaves, work, target)
            starts = self.starts
            if modes == {"d"}:
                # One cumsum over the page: each chunk's first row gets its base minus the
                # value the previous chunk ended on (ends = base + sum of the chunk's deltas).
                ends = bases + np.add.reduceat(values, starts, dtype=work)
                jumps = bases.copy()
                jumps[1:] -= ends[:-1]
                values[starts] += jumps
                np.cumsum(values, dtype=work, out=values)
            elif "d" in modes:  # some chunks delta-coded, some not: chunk by chunk
                for leaf, start, n, base in zip(
                    leaves, starts.tolist(), self.ns.tolist(), bases, strict=True
                ):
                    rows = values[start : start + n]
                    if leaf["m"] == "d":
                        np.cumsum(rows, dtype=work, out=rows)
                    rows += base
            else:
                self.apply(np.add, values, bases)
            scales = np.array([leaf.get("s", 1) for leaf in leaves], dtype=np.int64)
            if np.any(scales != 1):
                self.apply(np.multiply, values, scales.astype(work))
        if target is not None and values is not target:
            target[...] = values
            values = target
        return values.view(np.bool_) if dtype == np.bool_ else values

    def _stored(self, leaves: Sequence[dict], work: np.dtype[Any], target: Any) -> np.ndarray:
        """The chunks' stored integers back to back, as `work` (into `target` when given)."""
        pieces = [
            (
                _unshuffle(p.blob, leaf["o"], p.n, leaf["t"], "sh" in leaf)
                if leaf["m"] != "c"
                else np.zeros(p.n, np.int8)
            )
            for p, leaf in zip(self.parsed, leaves, strict=True)
        ]
        if target is not None:
            return np.concatenate(pieces, out=target, casting="unsafe")
        if len(pieces) == 1:
            return pieces[0].astype(work)
        return np.concatenate(pieces, dtype=work, casting="unsafe")

    def floats(
        self,
        specs: Sequence[dict],
        price: np.ndarray | None,
        quantity: np.ndarray | None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Float columns for every row; into `out[:total]` when given (that view returned)."""
        target = np.empty(self.total, np.float64) if out is None else out[: self.total]
        kinds = {spec["e"] for spec in specs}
        if kinds == {"dec"}:
            ints = self.ints(
                [spec["i"] for spec in specs], np.dtype(np.int64), _scratch(self.total)
            )
            factors = np.array([float(10 ** spec["k"]) for spec in specs])
            if not np.any(factors != factors[0]):
                return np.divide(ints, factors[0], out=target)
            for start, n, factor in zip(
                self.starts.tolist(), self.ns.tolist(), factors.tolist(), strict=True
            ):  # each chunk by its own factor: the values read back bit for bit
                np.divide(ints[start : start + n], factor, out=target[start : start + n])
            return target
        if kinds == {"raw"}:
            pieces = [
                np.frombuffer(p.blob, "<f8", p.n, spec["o"])
                for p, spec in zip(self.parsed, specs, strict=True)
            ]
            return np.concatenate(pieces, out=target)
        if kinds == {"ratio"} and price is not None and quantity is not None:
            ratios = np.array([spec["r"] for spec in specs], dtype=np.float64)
            # _ratio_prediction's operations in its order, written in place.
            np.multiply(price, quantity, out=target)  # quantity cast as it is read
            self.apply(np.multiply, target, ratios)
            for p, spec, start in zip(self.parsed, specs, self.starts.tolist(), strict=True):
                if spec["nx"]:
                    misses = _one_int(spec["x"], p.blob, spec["nx"])
                    target[start + misses] = _one_float(spec["xv"], p.blob, spec["nx"])
            return target
        # Mixed encodings in one page: chunk by chunk.
        for p, spec, start in zip(self.parsed, specs, self.starts.tolist(), strict=True):
            rows = slice(start, start + p.n)
            if spec["e"] == "ratio":
                assert price is not None and quantity is not None
                values = _ratio_prediction(price[rows], quantity[rows], spec["r"])
                if spec["nx"]:
                    misses = _one_int(spec["x"], p.blob, spec["nx"])
                    values[misses] = _one_float(spec["xv"], p.blob, spec["nx"])
                target[rows] = values
            else:
                target[rows] = _one_float(spec, p.blob, p.n)
        return target


def _one_int(spec: dict, blob: bytes | memoryview, n: int) -> np.ndarray:
    values, _ = _unpack_int(spec, memoryview(blob), spec.get("o", 0), n, "sh" in spec)
    return values


def _one_float(spec: dict, blob: bytes | memoryview, n: int) -> np.ndarray:
    if spec["e"] == "dec":
        return _one_int(spec["i"], blob, n) / float(10 ** spec["k"])
    if spec["e"] == "raw":
        return np.frombuffer(blob, "<f8", n, spec["o"]).astype(np.float64)
    raise DecodeError(f"history chunk: unknown float encoding {spec['e']!r}", field="cols")


def _decode_page(parsed: Sequence[_Parsed], append: TickColumns | None = None) -> TickColumns:
    """The chunks' rows, then `append`'s (if any), in one set of arrays: each column is
    allocated once for both and the page decoded straight into it (no concatenation)."""
    page = _Page(parsed)
    total = page.total
    extra = append.n if append is not None else 0

    int32 = np.dtype(np.int32)
    memory = _arena(total + extra, [*NUMERIC_COLUMNS.values(), *[int32] * len(STRING_COLUMNS)])
    arrays = dict(zip(NUMERIC_COLUMNS, memory, strict=False))
    code_arrays = dict(zip(STRING_COLUMNS, memory[len(NUMERIC_COLUMNS) :], strict=True))
    specs = [p.specs for p in parsed]
    int64 = np.dtype(np.int64)
    t_event = page.ints([s["ts_event"] for s in specs], int64, arrays["ts_event"])
    init = [s["ts_init"] for s in specs]
    relative = np.array([spec.get("e") == "rel" for spec in init])
    leaves = [spec["i"] if spec.get("e") == "rel" else spec for spec in init]
    t_init = page.ints(leaves, int64, arrays["ts_init"])
    if relative.all():
        t_init += t_event
    elif relative.any():
        t_init += np.where(np.repeat(relative, page.ns), t_event, 0)
    quantity = page.ints([s["quantity"] for s in specs], int64, arrays["quantity"])
    price = page.floats([s["price"] for s in specs], None, None, arrays["price"])
    page.floats([s["volume"] for s in specs], price, quantity, arrays["volume"])
    for name in _INT_COLUMNS[1:]:
        page.ints([s[name] for s in specs], NUMERIC_COLUMNS[name], arrays[name])
    codes: dict[str, np.ndarray] = {}
    dictionaries: dict[str, tuple[str, ...]] = {}
    for name in STRING_COLUMNS:
        codes[name] = code_arrays[name]
        column = page.ints([s[name] for s in specs], int32, codes[name])
        tables = [p.dicts[name] for p in parsed]
        merged = {s: i for i, s in enumerate(tables[0])}
        if any(t != tables[0] for t in tables[1:]):
            for table, start, n in zip(tables, page.starts.tolist(), page.ns.tolist(), strict=True):
                remap = np.fromiter(
                    (merged.setdefault(s, len(merged)) for s in table), np.int32, len(table)
                )
                if len(table):
                    column[start : start + n] = remap[column[start : start + n]]
        if append is not None and extra:
            local = append.dictionaries[name]
            if tuple(merged)[: len(local)] == local:
                codes[name][total:] = append.codes[name]
            else:
                remap = np.fromiter(
                    (merged.setdefault(s, len(merged)) for s in local), np.int32, len(local)
                )
                if len(local):
                    codes[name][total:] = remap[append.codes[name]]
                else:  # no dictionary: every row is ""
                    codes[name][total:] = merged.setdefault("", len(merged))
        dictionaries[name] = tuple(merged)
    if append is not None and extra:
        for name, values in append.arrays.items():
            arrays[name][total:] = values
    return TickColumns(total + extra, arrays, codes, dictionaries)


# --- version 1: zlib, byte-shuffled columns, decoded chunk by chunk -------------------------


def _count(fields: Mapping[Any, Any]) -> int:
    text = _text(fields, "n")
    try:
        return int(text)
    except ValueError:
        raise DecodeError(f"history chunk: n {text[:20]!r} is not a number", field="n") from None


def _decode_v1(fields: Mapping[Any, Any]) -> TickColumns:
    n = _count(fields)
    try:
        blob = zlib.decompress(_text(fields, "cols"))
        (header_len,) = _HEADER_LEN.unpack_from(blob)
        header = orjson.loads(blob[4 : 4 + header_len])
    except (zlib.error, struct.error, orjson.JSONDecodeError) as exc:
        raise DecodeError(
            f"history chunk: cannot unpack its columns ({exc})", field="cols"
        ) from None
    if header.get("n") != n:
        raise DecodeError(
            f"history chunk: header says {header.get('n')} trades, field n says {n}", field="n"
        )
    payload = memoryview(blob)
    offset = 4 + header_len
    specs = header["cols"]
    arrays: dict[str, np.ndarray] = {}
    try:
        arrays["ts_event"], offset = _unpack_int(specs["ts_event"], payload, offset, n)
        init_spec = specs["ts_init"]
        if init_spec["e"] == "rel":
            latency, offset = _unpack_int(init_spec["i"], payload, offset, n)
            arrays["ts_init"] = latency + arrays["ts_event"]
        else:
            arrays["ts_init"], offset = _unpack_int(init_spec, payload, offset, n)
        arrays["price"], offset = _unpack_float(specs["price"], payload, offset, n, arrays)
        arrays["quantity"], offset = _unpack_int(specs["quantity"], payload, offset, n)
        arrays["volume"], offset = _unpack_float(specs["volume"], payload, offset, n, arrays)
        for name in _INT_COLUMNS:
            if name == "quantity":
                continue
            values, offset = _unpack_int(specs[name], payload, offset, n)
            dtype = NUMERIC_COLUMNS[name]
            arrays[name] = values if dtype == np.int64 else values.astype(dtype)
        codes: dict[str, np.ndarray] = {}
        for name in STRING_COLUMNS:
            values, offset = _unpack_int(specs[name], payload, offset, n)
            codes[name] = values.astype(np.int32)
    except (KeyError, ValueError, TypeError) as exc:
        raise DecodeError(f"history chunk: malformed columns ({exc})", field="cols") from None
    if offset != len(blob):
        raise DecodeError("history chunk: column sizes do not add up", field="cols")
    try:
        dictionaries = {name: tuple(header["dicts"][name]) for name in STRING_COLUMNS}
    except (KeyError, TypeError) as exc:
        raise DecodeError(f"history chunk: malformed dictionaries ({exc})", field="cols") from None
    ordered = {k: arrays[k] for k in NUMERIC_COLUMNS}
    return TickColumns(n, ordered, codes, dictionaries)


def decode_ticks(fields: Mapping[Any, Any]) -> dict[str, np.ndarray]:
    """Decode one chunk into columns (strings as object arrays); see NUMERIC_COLUMNS."""
    return decode_tick_columns(fields).to_dict()


def trades_of(columns: TickColumns, symbol: str) -> list[Trade]:
    """Trade events back from decoded columns (a Python loop: for tests and small exports)."""
    d = columns.to_dict()
    out = []
    for i in range(columns.n):
        out.append(
            Trade(
                symbol=symbol,
                ts_event=int(d["ts_event"][i]),
                price=float(d["price"][i]),
                quantity=int(d["quantity"][i]),
                volume=float(d["volume"][i]),
                trade_id=int(d["trade_id"][i]),
                buyer=int(d["buyer"][i]),
                seller=int(d["seller"][i]),
                trade_type=int(d["trade_type"][i]),
                aggressor=AGGRESSOR_NAMES[int(d["aggressor"][i])],
                is_edit=bool(d["is_edit"][i]),
                buyer_name=d["buyer_name"][i],
                seller_name=d["seller_name"][i],
                history=bool(d["history"][i]),
                ts_init=int(d["ts_init"][i]),
                session=d["session"][i],
                seq=int(d["seq"][i]),
            )
        )
    return out


# --- building chunks from the per-event stream -----------------------------------------------


@dataclass(frozen=True)
class SealedChunk:
    """A chunk ready to XADD: `fields` includes `src`; the entry id to ask for is `t_min_ms`."""

    fields: dict[str, bytes]
    n: int
    t_min: int
    t_max: int
    src: str

    @property
    def t_min_ms(self) -> int:
        return self.t_min // NS_PER_MS


class ChunkBuilder:
    """Accumulates trades in stream order and seals a chunk at `max_events` or `max_span_ns`.

    Pure (no I/O). `add(trade, entry_id)` returns a sealed chunk when one is due: when the
    chunk just reached `max_events`, or when the new trade would stretch the chunk's event-time
    span beyond `max_span_ns` (then the chunk holds the trades before it, and the new trade
    starts the next one). `seal()` packs whatever is pending (None when nothing is), e.g. on
    shutdown or when the market goes quiet. A trade whose entry id lies above its event time
    (a clamped, late entry) is flagged `late`.
    """

    def __init__(
        self, *, max_events: int = CHUNK_MAX_EVENTS, max_span_ns: int = CHUNK_MAX_SPAN_NS
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.max_events = max_events
        self.max_span_ns = max_span_ns
        self._events: list[Trade] = []
        self._late: list[bool] = []
        self._src = ""
        self._t_min = 0
        self._t_max = 0

    @property
    def pending(self) -> int:
        """Trades added but not yet sealed."""
        return len(self._events)

    @property
    def last_src(self) -> str:
        """Entry id of the last trade added ('' when nothing is pending)."""
        return self._src

    @property
    def span_ns(self) -> int:
        return self._t_max - self._t_min if self._events else 0

    def add(
        self, event: Trade, entry_id: str | bytes, *, late: bool | None = None
    ) -> SealedChunk | None:
        src = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        if late is None:
            late = parse_id(src)[0] > event.ts_event // NS_PER_MS
        sealed = None
        t = event.ts_event
        if self._events and (max(self._t_max, t) - min(self._t_min, t) > self.max_span_ns):
            sealed = self.seal()
        if not self._events:
            self._t_min = self._t_max = t
        else:
            self._t_min = min(self._t_min, t)
            self._t_max = max(self._t_max, t)
        self._events.append(event)
        self._late.append(late)
        self._src = src
        if len(self._events) >= self.max_events:
            # Never both: after a span break the new chunk holds one trade, and with
            # max_events == 1 the previous add already sealed, so there was nothing to break.
            return self.seal()
        return sealed

    def seal(self) -> SealedChunk | None:
        if not self._events:
            return None
        fields = encode_ticks(self._events, late=self._late)
        fields["src"] = self._src.encode()
        chunk = SealedChunk(fields, len(self._events), self._t_min, self._t_max, self._src)
        self._events = []
        self._late = []
        self._src = ""
        return chunk
