"""The columnar tick chunk codec and the chunk builder."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import zstandard

from qt_cli.core import chunks, keys
from qt_cli.core.chunks import (
    CHUNK_MAX_EVENTS,
    CHUNK_MAX_SPAN_NS,
    ChunkBuilder,
    TickColumns,
    decode_tick_columns,
    decode_ticks,
    encode_columns,
    encode_ticks,
    trades_of,
)
from qt_cli.core.errors import DecodeError
from qt_cli.core.events import NS_PER_MS, NS_PER_S, Trade

START_MS = 1_754_654_400_000  # 2025-08-08 09:00 -03:00
BROKERS = (3, 8, 15, 27, 39, 45, 72, 85, 92, 107, 114, 120, 122, 127, 147, 172, 174, 190, 238, 262)


def make_trades(
    n: int,
    *,
    symbol: str = "WDOQ25",
    start_ms: int = START_MS,
    mean_gap_ms: float = 72.0,
    seed: int = 7,
    names: bool = True,
    session: str = "9f2c61d4.ticks",
    first_seq: int = 1,
) -> list[Trade]:
    """Realistic WDO trades: ms event times, ns receive times, 0.5-point price steps, skewed brokers."""
    rng = np.random.default_rng(seed)
    ts = (
        start_ms * NS_PER_MS
        + np.cumsum(rng.exponential(mean_gap_ms, n).astype(np.int64)) * NS_PER_MS
    )
    latency = rng.integers(500_000, 20_000_000, n)
    price = 5432.5 + np.cumsum(rng.choice([-1, 0, 0, 0, 1], n)) * 0.5
    quantity = np.minimum(rng.geometric(0.35, n), 500)
    weights = 1.0 / np.arange(1, len(BROKERS) + 1)
    weights /= weights.sum()
    buyer = rng.choice(BROKERS, n, p=weights)
    seller = rng.choice(BROKERS, n, p=weights)
    trade_type = rng.choice([2, 3, 1, 4], n, p=[0.48, 0.48, 0.03, 0.01])
    trade_id = 100_000 + np.cumsum(np.where(rng.random(n) < 0.98, 1, 2))
    out = []
    for i in range(n):
        kind = int(trade_type[i])
        out.append(
            Trade(
                symbol=symbol,
                ts_event=int(ts[i]),
                price=float(price[i]),
                quantity=int(quantity[i]),
                volume=float(price[i]) * int(quantity[i]) * 10.0,
                trade_id=int(trade_id[i]),
                buyer=int(buyer[i]),
                seller=int(seller[i]),
                trade_type=kind,
                aggressor="buy" if kind == 2 else "sell" if kind == 3 else "none",
                buyer_name=f"Corretora {buyer[i]}" if names else "",
                seller_name=f"Corretora {seller[i]}" if names else "",
                ts_init=int(ts[i] + latency[i]),
                session=session,
                seq=first_seq + i,
            )
        )
    return out


def roundtrip(trades: list[Trade]) -> list[Trade]:
    return trades_of(decode_tick_columns(encode_ticks(trades)), trades[0].symbol)


def test_roundtrip_realistic_trades_is_exact() -> None:
    trades = make_trades(4096)
    assert roundtrip(trades) == trades


def test_decoded_columns_have_the_documented_dtypes() -> None:
    trades = make_trades(100)
    cols = decode_ticks(encode_ticks(trades))
    for name, dtype in chunks.NUMERIC_COLUMNS.items():
        assert cols[name].dtype == dtype, name
        assert len(cols[name]) == 100
    assert cols["price"].tolist() == [t.price for t in trades]
    assert cols["session"].tolist() == ["9f2c61d4.ticks"] * 100
    assert cols["buyer_name"].tolist() == [t.buyer_name for t in trades]
    assert not np.isnan(cols["price"]).any()
    aggressor = {1: "buy", -1: "sell", 0: "none"}
    assert [aggressor[a] for a in cols["aggressor"].tolist()] == [t.aggressor for t in trades]


def test_fields_carry_count_and_time_range() -> None:
    trades = make_trades(50)
    fields = encode_ticks(trades)
    assert set(fields) == {"v", "n", "t_min", "t_max", "cols"}
    assert fields["v"] == str(chunks.CODEC_VERSION).encode() == b"2"
    assert int(fields["n"]) == 50
    assert int(fields["t_min"]) == min(t.ts_event for t in trades)
    assert int(fields["t_max"]) == max(t.ts_event for t in trades)


def test_roundtrip_awkward_values() -> None:
    """ns event times, times going backwards, prices that are not short decimals, NaN volume,
    a volume that is not price x qty x multiplier, zero receive time, several sessions, unicode."""
    base = START_MS * NS_PER_MS
    trades = [
        Trade(symbol="X", ts_event=base + 123, price=0.1 + 0.2, volume=math.nan, ts_init=0),
        Trade(
            symbol="X",
            ts_event=base - 5 * NS_PER_S,
            price=math.pi,
            quantity=3,
            volume=7.25,
            trade_id=2**62,
            buyer=-1,
            seller=2**31 - 1,
            trade_type=255,
            aggressor="sell",
            is_edit=True,
            history=True,
            buyer_name="Ação Ltda ✓",
            session="b.history",
            seq=2**40,
            ts_init=base + 10**15,
        ),
        Trade(symbol="X", ts_event=base + 7, price=1e-9, quantity=10**12, volume=1e300, seq=3),
    ]
    # NaN != NaN, so compare the flat fields (NaN is "" there)
    assert [t.to_fields() for t in roundtrip(trades)] == [t.to_fields() for t in trades]
    cols = decode_ticks(encode_ticks(trades))
    assert math.isnan(cols["volume"][0])


def test_volume_exceptions_are_kept_exactly() -> None:
    trades = make_trades(1000)
    odd = {5, 77, 500}
    trades = [
        Trade(**{**_kwargs(t), "volume": t.volume + 0.01}) if i in odd else t
        for i, t in enumerate(trades)
    ]
    assert roundtrip(trades) == trades


def _kwargs(trade: Trade) -> dict:
    return {name: getattr(trade, name) for name, _, _ in Trade._spec}


def test_late_flags_roundtrip() -> None:
    trades = make_trades(10)
    late = [i % 3 == 0 for i in range(10)]
    cols = decode_ticks(encode_ticks(trades, late=late))
    assert cols["late"].tolist() == late


def test_single_trade_and_constant_columns() -> None:
    trade = make_trades(1, names=False)
    assert roundtrip(trade) == trade


def test_encode_refuses_nothing() -> None:
    with pytest.raises(ValueError, match="at least one"):
        encode_ticks([])


@pytest.mark.parametrize("version", [1, 2])
def test_corrupt_or_foreign_chunks_raise_decode_errors(version: int) -> None:
    fields = encode_columns(chunks.tick_columns_of(make_trades(10)), version=version)
    with pytest.raises(DecodeError, match="codec version '9'"):
        decode_ticks({**fields, "v": b"9"})
    with pytest.raises(DecodeError, match="cannot unpack"):
        decode_ticks({**fields, "cols": b"garbage"})
    with pytest.raises(DecodeError, match="header says 10 trades"):
        decode_ticks({**fields, "n": b"11"})
    with pytest.raises(DecodeError, match="'cols' is missing"):
        decode_ticks({k: v for k, v in fields.items() if k != "cols"})
    if version == 1:
        truncated = zlib.compress(zlib.decompress(fields["cols"])[:-3])
    else:
        raw = zstandard.ZstdDecompressor().decompress(fields["cols"])
        truncated = zstandard.ZstdCompressor().compress(raw[:-3])
    with pytest.raises(DecodeError):
        decode_ticks({**fields, "cols": truncated})
    with pytest.raises(DecodeError, match="not a number"):
        decode_ticks({**fields, "n": b"ten"})


def test_bytes_keys_as_xrange_returns_them() -> None:
    fields = {k.encode(): v for k, v in encode_ticks(make_trades(5)).items()}
    assert len(decode_ticks(fields)["price"]) == 5


def test_concat_merges_dictionaries() -> None:
    a = make_trades(5, session="a.ticks", names=False)
    b = make_trades(5, session="b.ticks", start_ms=START_MS + 10_000)
    merged = TickColumns.concat(
        [decode_tick_columns(encode_ticks(a)), decode_tick_columns(encode_ticks(b))]
    )
    assert trades_of(merged, "WDOQ25") == a + b
    assert merged.strings("session").tolist() == ["a.ticks"] * 5 + ["b.ticks"] * 5
    assert TickColumns.concat([]).n == 0


def test_take_selects_rows() -> None:
    trades = make_trades(20)
    cols = decode_tick_columns(encode_ticks(trades))
    picked = cols.take(np.array([3, 1]))
    assert trades_of(picked, "WDOQ25") == [trades[3], trades[1]]


# --- builder ---------------------------------------------------------------------------------


def entry_id(trade: Trade, n: int = 0) -> str:
    return f"{trade.ts_event // NS_PER_MS}-{n}"


def test_builder_seals_at_max_events() -> None:
    trades = make_trades(10)
    builder = ChunkBuilder(max_events=4)
    sealed = [c for t in trades if (c := builder.add(t, entry_id(t)))]
    assert [c.n for c in sealed] == [4, 4]
    assert builder.pending == 2
    last = builder.seal()
    assert last is not None and last.n == 2
    assert builder.seal() is None
    assert builder.pending == 0
    assert sealed[0].src == entry_id(trades[3])
    assert sealed[0].fields["src"] == entry_id(trades[3]).encode()
    assert sealed[0].t_min == trades[0].ts_event
    assert sealed[0].t_max == trades[3].ts_event
    assert sealed[0].t_min_ms == trades[0].ts_event // NS_PER_MS
    decoded = [trades_of(decode_tick_columns(c.fields), "WDOQ25") for c in [*sealed, last]]
    assert sum(decoded, []) == trades


def test_builder_seals_before_a_trade_that_would_stretch_the_span() -> None:
    trades = make_trades(3, mean_gap_ms=1)
    far = Trade(**{**_kwargs(trades[0]), "ts_event": trades[-1].ts_event + CHUNK_MAX_SPAN_NS + 1})
    builder = ChunkBuilder()
    assert all(builder.add(t, entry_id(t)) is None for t in trades)
    sealed = builder.add(far, entry_id(far))
    assert sealed is not None and sealed.n == 3
    assert builder.pending == 1
    assert builder.last_src == entry_id(far)
    # exactly the span is still allowed
    edge = Trade(**{**_kwargs(far), "ts_event": far.ts_event + CHUNK_MAX_SPAN_NS})
    assert builder.add(edge, entry_id(edge)) is None
    assert builder.span_ns == CHUNK_MAX_SPAN_NS


def test_builder_span_counts_late_trades_going_backwards() -> None:
    builder = ChunkBuilder()
    now = make_trades(1)[0]
    old = Trade(**{**_kwargs(now), "ts_event": now.ts_event - 2 * CHUNK_MAX_SPAN_NS})
    builder.add(now, entry_id(now))
    sealed = builder.add(old, entry_id(now, 1))  # clamped id: above its event time
    assert sealed is not None and sealed.n == 1
    late = builder.seal()
    assert late is not None
    assert late.t_min == old.ts_event
    assert decode_ticks(late.fields)["late"].tolist() == [True]
    assert decode_ticks(sealed.fields)["late"].tolist() == [False]


def test_builder_with_single_event_chunks() -> None:
    builder = ChunkBuilder(max_events=1)
    trades = make_trades(3)
    assert [builder.add(t, entry_id(t)).n for t in trades] == [1, 1, 1]  # type: ignore[union-attr]


def test_default_limits() -> None:
    assert CHUNK_MAX_EVENTS == 4096
    assert CHUNK_MAX_SPAN_NS == 10 * 60 * NS_PER_S


def test_bytes_per_tick_in_valkey(vk) -> None:
    """An hour of generated ticks (random ns receive latencies, which hardly compress) stored
    as chunks stays within 14 bytes per tick (simulated sessions: ~9.5, see BENCHMARKS.md)."""
    trades = make_trades(50_000)
    key = keys.history_key("ticks", "WDOQ25")
    builder = ChunkBuilder()
    for t in trades:
        chunk = builder.add(t, entry_id(t))
        if chunk:
            vk.xadd(key, chunk.fields, id=f"{chunk.t_min_ms}-*")
    chunk = builder.seal()
    assert chunk is not None
    vk.xadd(key, chunk.fields, id=f"{chunk.t_min_ms}-*")
    used = vk.memory_usage(key, samples=0)
    per_tick = used / len(trades)
    assert per_tick <= 14, f"{per_tick:.1f} bytes per tick"
    entries = vk.xrange(key)
    back = TickColumns.concat([decode_tick_columns(f) for _, f in entries])
    assert trades_of(back, "WDOQ25") == trades


def _awkward_pages() -> list[list[Trade]]:
    """Groups of trades whose chunks differ in every way a page can mix: decimal and raw
    prices, volume exceptions, receive times on their own or as latency, constant and varying
    columns, different dictionaries, flags set in some chunks only, late trades."""
    base = make_trades(3000, seed=11)
    groups = [base[i : i + 500] for i in range(0, 3000, 500)]
    groups[1] = [Trade(**{**_kwargs(t), "price": t.price + math.pi / 1e4}) for t in groups[1]]
    groups[2] = [
        Trade(**{**_kwargs(t), "volume": t.volume + (0.01 if i % 50 == 0 else 0)})
        for i, t in enumerate(groups[2])
    ]
    groups[3] = [
        Trade(**{**_kwargs(t), "ts_init": 0, "session": "b.history", "history": True})
        for t in groups[3]
    ]
    groups[4] = [
        Trade(**{**_kwargs(t), "is_edit": i % 7 == 0, "buyer_name": "", "seller_name": ""})
        for i, t in enumerate(groups[4])
    ]
    groups.append(make_trades(1, names=False, start_ms=START_MS - 90_000))
    groups.append(
        [Trade(**{**_kwargs(t), "volume": math.nan}) for t in make_trades(20, first_seq=9000)]
    )
    return groups


def test_page_decode_equals_chunk_by_chunk_for_mixed_pages() -> None:
    """decode_chunks over a page of differently encoded chunks (both versions) gives exactly
    the rows and dictionaries that decoding each chunk and concatenating gives."""
    groups = _awkward_pages()
    for versions in ([2] * len(groups), [1, 2, 2, 1, 2, 1, 2, 2]):
        fields = [
            encode_columns(
                chunks.tick_columns_of(g, late=[i % 4 == 0 for i in range(len(g))]), version=v
            )
            for g, v in zip(groups, versions, strict=False)
        ]
        page, problems = chunks.decode_chunks(fields)
        assert problems == []
        expected = TickColumns.concat([decode_tick_columns(f) for f in fields])
        assert page.n == expected.n == sum(map(len, groups))
        for name, values in expected.arrays.items():
            assert page.arrays[name].dtype == values.dtype, name
            np.testing.assert_array_equal(page.arrays[name], values, err_msg=name)
        for name in chunks.STRING_COLUMNS:
            assert page.strings(name).tolist() == expected.strings(name).tolist(), name
        back = [t.to_fields() for t in trades_of(page, "WDOQ25")]
        assert back == [t.to_fields() for g in groups for t in g]  # NaN volume compares as ""


def test_page_decode_leaves_out_bad_chunks_and_says_which() -> None:
    groups = _awkward_pages()[:3]
    fields = [encode_ticks(g) for g in groups]
    fields.insert(1, {**fields[0], "cols": b"garbage"})
    page, problems = chunks.decode_chunks(fields)
    assert [i for i, _ in problems] == [1]
    assert "cannot unpack" in str(problems[0][1])
    assert trades_of(page, "WDOQ25") == [t for g in groups for t in g]


def _assert_page_equals_chunk_by_chunk(fields: list[dict]) -> TickColumns:
    page, problems = chunks.decode_chunks(fields)
    assert problems == []
    expected = TickColumns.concat([decode_tick_columns(f) for f in fields])
    assert page.n == expected.n
    for name, values in expected.arrays.items():
        assert page.arrays[name].dtype == values.dtype, name
        np.testing.assert_array_equal(page.arrays[name], values, err_msg=name)
    for name in chunks.STRING_COLUMNS:
        assert page.strings(name).tolist() == expected.strings(name).tolist(), name
    return page


def test_page_decode_applies_each_chunks_own_factor_ratio_base_and_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page whose chunks all use the same encodings with different parameters: prices with
    1, 2 and 3 decimal places, volume at other contract multipliers, times at s / ms / ns
    resolution, delta- and frame-coded broker ids in one column. Enough chunks that they are
    inflated together on zstd's threads."""
    monkeypatch.setattr(chunks, "INFLATE_THREADS_MIN_CHUNKS", 4)
    base = make_trades(4500, seed=5)
    groups = [base[i : i + 500] for i in range(0, 4500, 500)]
    assert len(groups) >= chunks.INFLATE_THREADS_MIN_CHUNKS
    price_step = {1: 0.01, 2: 0.001, 5: 0.01}
    multiplier = {3: 0.2, 4: 50.0}
    out = []
    for g, group in enumerate(groups):
        trades = []
        for i, t in enumerate(group):
            price = round(t.price + price_step.get(g, 0) * (i % 3), 3)
            volume = price * t.quantity * multiplier.get(g, 10.0)
            ts = t.ts_event
            if g == 6:
                ts = ts // NS_PER_S * NS_PER_S  # whole seconds
            elif g == 7:
                ts = ts + i % 1000  # nanoseconds
            buyer = t.buyer if g != 8 else 100 + i  # a delta-coded column among frame-coded
            trades.append(
                Trade(
                    **{
                        **_kwargs(t),
                        "price": price,
                        "volume": volume,
                        "ts_event": ts,
                        "buyer": buyer,
                    }
                )
            )
        out.append(trades)
    fields = [encode_ticks(g) for g in out]
    specs = [chunks._parse_v2(f).specs for f in fields]
    assert len({s["price"].get("k") for s in specs}) == 3  # the page really mixes them
    assert len({s["volume"].get("r") for s in specs}) == 3
    assert len({s["ts_event"].get("s") for s in specs}) >= 2
    assert {s["buyer"]["m"] for s in specs} == {"d", "f"}
    page = _assert_page_equals_chunk_by_chunk(fields)
    assert [t.to_fields() for t in trades_of(page, "WDOQ25")] == [
        t.to_fields() for g in out for t in g
    ]


def test_a_page_inflated_together_still_says_which_chunk_is_bad(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chunks, "INFLATE_THREADS_MIN_CHUNKS", 4)
    groups = [g for g in _awkward_pages() if len(g) > 1][:2] * 5
    fields = [encode_ticks(g) for g in groups]
    assert len(fields) >= chunks.INFLATE_THREADS_MIN_CHUNKS
    fields.insert(3, {**fields[0], "cols": fields[0]["cols"][:-9]})  # a truncated frame
    page, problems = chunks.decode_chunks(fields)
    assert [i for i, _ in problems] == [3]
    assert page.n == sum(map(len, groups))
