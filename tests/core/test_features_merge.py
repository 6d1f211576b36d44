"""The live stage's merge of a symbol's ticks and book streams (`live.Merge`) against the rule it
implements, written out plainly: everything comes out once, in (event time, trade before book,
stored order), and nothing is released before every other stream has passed it."""

from __future__ import annotations

import random

import pytest

from qt_cli.core.events import BookUpdate, Passed, Trade
from qt_cli.core.features.live import BOOK, TRADE, Merge
from qt_cli.core.store.reader import SourceEntry
from tests.core.features_data import SYMBOL, book_series, trade_series


def _streams(seed: int) -> dict[int, list[SourceEntry]]:
    """A symbol's two streams: the trades, and the book events with top-of-book positions
    (`Passed`) among them, each in stored (event-time) order."""
    rng = random.Random(seed)
    events = book_series(trade_series(300, seed=seed), seed=seed)
    ticks = [SourceEntry("t", str(i), e) for i, e in enumerate(events) if isinstance(e, Trade)]
    book: list[SourceEntry] = []
    for i, event in enumerate(e for e in events if isinstance(e, BookUpdate)):
        if rng.random() < 0.3:
            book.append(SourceEntry("b", f"p{i}", Passed(SYMBOL, "book", event.ts_event)))
        book.append(SourceEntry("b", str(i), event))
    return {TRADE: ticks, BOOK: book}


@pytest.mark.parametrize("seed", range(8))
def test_the_merge_releases_everything_once_in_order_and_nothing_early(seed: int) -> None:
    rng = random.Random(seed)
    streams = _streams(seed)
    merge = Merge((TRADE, BOOK))
    at = dict.fromkeys(streams, 0)
    released: list[tuple[int, SourceEntry]] = []
    while any(at[k] < len(s) for k, s in streams.items()):
        for kind, stream in streams.items():  # a read: a few entries of each stream, or none
            take = rng.choice((0, 1, 3, 17, 60))
            for entry in stream[at[kind] : at[kind] + take]:
                merge.add(kind, entry)
            at[kind] = min(at[kind] + take, len(stream))
        out = merge.release()
        for kind, entry in out:  # every other stream is past it: nothing can come before it
            other = BOOK if kind == TRADE else TRADE
            ts, last = entry.event.ts_event, merge.last[other]
            assert last > ts or (last == ts and other > kind)
        released += out
    for kind in streams:  # the end: each stream moves past everything
        merge.add(kind, SourceEntry("", "", Passed(SYMBOL, "", 2**62)))
    released += merge.release()
    assert len(merge) == 0
    want = sorted(
        ((e.event.ts_event, kind, i, e) for kind, s in streams.items() for i, e in enumerate(s)),
        key=lambda x: x[:3],
    )
    want_kept = [(k, e) for _, k, _, e in want if not isinstance(e.event, Passed)]
    assert [(k, e.key, e.id) for k, e in released] == [(k, e.key, e.id) for k, e in want_kept]


def test_one_stream_alone_releases_what_it_reads() -> None:
    merge = Merge((TRADE,))
    ticks = _streams(1)[TRADE][:5]
    for entry in ticks:
        merge.add(TRADE, entry)
    assert [e for _, e in merge.release()] == ticks and len(merge) == 0
