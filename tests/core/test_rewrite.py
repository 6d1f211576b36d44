"""`rewrite.rewrite_chunks`: old-codec history chunks rewritten in place, ids and reads unchanged."""

from __future__ import annotations

import pandas as pd

from qt_cli.core import keys, query, rewrite
from qt_cli.core.chunks import CODEC_VERSION, ChunkBuilder
from qt_cli.core.events import NS_PER_S
from tests.core.test_chunks import make_trades
from tests.core.test_query import SYMBOL, T0, _mixed_trades, add_chunk, seed_ticks

HIST = keys.history_key("ticks", SYMBOL)


def _versions(vk) -> list[bytes]:
    return [f[b"v"] for _, f in vk.xrange(HIST)]


def _frame(vk) -> pd.DataFrame:
    return query.query(
        "ticks", symbols=SYMBOL, start=T0 - NS_PER_S, end=T0 + 3600 * NS_PER_S, client=vk
    )


def test_dry_run_counts_and_real_run_rewrites_keeping_ids_and_frames(vk) -> None:
    seed_ticks(vk, _mixed_trades(), chunked=6100, max_events=700, versions=(1, 2, 1))
    before = _frame(vk)
    ids = [i for i, _ in vk.xrange(HIST)]
    late = vk.zrange(keys.late_index_key("ticks", SYMBOL), 0, -1, withscores=True)
    last_generated = vk.xinfo_stream(HIST)["last-generated-id"]
    old = sum(1 for v in _versions(vk) if v == b"1")
    assert old > 0

    dry = rewrite.rewrite_chunks(vk, dry_run=True)
    assert [(s.key, s.chunks, s.old) for s in dry.streams] == [(HIST, len(ids), old)]
    assert _versions(vk).count(b"1") == old  # nothing changed

    seen: list[tuple[int, int]] = []
    report = rewrite.rewrite_chunks(
        vk, progress=lambda done, total, key: seen.append((done, total))
    )
    assert report.rewritten == old and seen[-1] == (old, old)
    assert set(_versions(vk)) == {str(CODEC_VERSION).encode()}
    assert [i for i, _ in vk.xrange(HIST)] == ids
    assert vk.zrange(keys.late_index_key("ticks", SYMBOL), 0, -1, withscores=True) == late
    assert vk.xinfo_stream(HIST)["last-generated-id"] == last_generated
    assert not vk.exists(keys.rewrite_key(HIST))
    pd.testing.assert_frame_equal(_frame(vk), before)
    assert rewrite.rewrite_chunks(vk).rewritten == 0  # nothing left to do


def test_chunks_appended_during_the_rewrite_are_kept(vk) -> None:
    """The bridge appending while a stream is copied: the swap notices, copies the new chunk
    and swaps then, so nothing appended meanwhile is lost."""
    trades = make_trades(3000)
    seed_ticks(vk, trades[:2000], max_events=500, versions=(1,))
    extra = ChunkBuilder(max_events=2000)  # the 1,000 trades in one chunk, sealed below
    appended: list[bytes] = []

    def bridge_appends(done: int, total: int, key: str) -> None:
        if not appended:
            for t in trades[2000:]:
                extra.add(t, f"{t.ts_event // 1_000_000}-0")
            chunk = extra.seal()
            assert chunk is not None
            appended.append(add_chunk(vk, SYMBOL, chunk))

    report = rewrite.rewrite_chunks(vk, progress=bridge_appends)
    assert report.rewritten == 4
    ids = [i for i, _ in vk.xrange(HIST)]
    assert appended[0] in ids and len(ids) == 5
    assert set(_versions(vk)) == {str(CODEC_VERSION).encode()}
