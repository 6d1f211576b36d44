"""Retention: trim old entries from Valkey streams, safely on a live server.

- Streams are found with SCAN (never KEYS, which blocks the server on a large keyspace).
- Age policy: `XTRIM key MINID <cutoff ms>-0` removes entries whose id (event time, ms) is older
  than now - retention. Count policy (`max_entries`): `XTRIM key MAXLEN N`.
- Trimming goes in steps: `XTRIM … ~ … LIMIT step` (whole stream nodes, at most `step` entries a
  call) until nothing more goes, then one exact XTRIM for the rest of the last node; each call is
  short, so writers between the steps are not held up.
- Retention may differ per kind: `ticks=30d`, `book=5d`, `candles=365d` (all timeframes) or
  `candles:1m=…`, `hist=365d` (the history chunks, `stream:hist:ticks:{SYM}`), `gaps=…`,
  `deadletter=…`; a bare duration is the default for every other stream.
- When history chunks go, their entries leave the late index (`idx:late:ticks:{SYM}`) too.
- The feed's on-disk journal (`cleanup_journal`): whole segments older than one retention go,
  never one a feed still writes to (`journal.trim_journal`).
- Dry run: nothing changes; the entries that would go are counted (read in pages; beyond
  `count_limit` the rest is estimated from the ids' time span and flagged `estimated`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qt_cli.core import keys
from qt_cli.core.errors import UsageError
from qt_cli.core.events import NS_PER_MS, STREAM_KINDS
from qt_cli.core.keys import parse_id
from qt_cli.core.store.reader import first_id, last_id
from qt_cli.core.timeparse import parse_duration_ns

if TYPE_CHECKING:
    from qt_cli.core.journal import JournalTrimReport

DEFAULT_PATTERN = keys.STREAM_PATTERN
STEP_ENTRIES = 10_000
COUNT_LIMIT = 1_000_000
# Every stream kind, the global streams and `hist` (the columnar history, keys.history_key).
RETENTION_KINDS = (*STREAM_KINDS, *keys.GLOBAL_STREAMS, keys.HISTORY_KIND)


@dataclass(frozen=True)
class Policy:
    """Retention per kind (ns); `default_ns` for kinds not named; `max_entries` as well or instead."""

    default_ns: int | None = None
    per_kind_ns: dict[str, int] = field(default_factory=dict)
    max_entries: int | None = None

    def retention_for(self, kind: str) -> int | None:
        """Most specific first: `candles:1m`, then `candles`; `hist:ticks`, then `hist`."""
        if kind in self.per_kind_ns:
            return self.per_kind_ns[kind]
        base = kind.split(":", 1)[0]
        if base in self.per_kind_ns:
            return self.per_kind_ns[base]
        return self.default_ns


def parse_policy(retention: Sequence[str] = (), *, max_entries: int | None = None) -> Policy:
    """`["30d", "book=5d", "candles=365d"]` -> Policy; UsageError names the bad part."""
    default_ns: int | None = None
    per_kind: dict[str, int] = {}
    for item in retention:
        text = item.strip()
        kind, sep, duration = text.partition("=")
        if not sep:
            kind, duration = "", text
        kind = kind.strip()
        try:
            ns = parse_duration_ns(duration.strip(), default_unit="d")
        except UsageError:
            raise UsageError(
                f"--retention {item!r}: expected a duration (30d, 12h) or KIND=DURATION (book=5d)"
            ) from None
        if ns <= 0:
            raise UsageError(f"--retention {item!r}: must be longer than zero")
        if not kind:
            default_ns = ns
        else:
            base = kind.split(":", 1)[0]
            if base not in RETENTION_KINDS:
                raise UsageError(
                    f"--retention {item!r}: unknown kind {kind!r}; choose from "
                    f"{', '.join(RETENTION_KINDS)} (or candles:<tf>)"
                )
            per_kind[kind] = ns
    if max_entries is not None and max_entries < 0:
        raise UsageError("--max-entries must be zero or more")
    if default_ns is None and not per_kind and max_entries is None:
        raise UsageError("say what to keep: --retention 30d (per kind: book=5d) or --max-entries N")
    return Policy(default_ns, per_kind, max_entries)


def kind_of(key: str) -> str:
    """`stream:ticks:{X}` -> ticks, `stream:hist:ticks:{X}` -> hist:ticks, `stream:gaps` -> gaps."""
    parsed = keys.parse_stream_key(key)
    if parsed is not None:
        return parsed[0]
    for name, global_key in keys.GLOBAL_STREAMS.items():
        if key == global_key:
            return name
    return key.removeprefix(keys.STREAM_PREFIX)


@dataclass
class StreamReport:
    """One stream: what it held, what goes (or went), and the memory that frees."""

    key: str
    kind: str
    policy: str
    cutoff: str  # the MINID used ('' for a count policy)
    entries_before: int
    entries_after: int
    removed: int
    memory_before: int
    memory_after: int
    freed_bytes: int
    estimated: bool = False  # dry run on a huge stream: the count is estimated beyond count_limit
    late_index_removed: int = 0
    steps: int = 0


@dataclass
class CleanupReport:
    dry_run: bool
    pattern: str
    streams: list[StreamReport]
    seconds: float
    skipped: list[str]  # streams no policy applies to

    @property
    def removed(self) -> int:
        return sum(s.removed for s in self.streams)

    @property
    def freed_bytes(self) -> int:
        return sum(s.freed_bytes for s in self.streams)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "pattern": self.pattern,
            "streams": [asdict(s) for s in self.streams],
            "removed": self.removed,
            "freed_bytes": self.freed_bytes,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
        }


def find_streams(client: Any, pattern: str = DEFAULT_PATTERN) -> list[str]:
    """Stream keys matching `pattern`, found with SCAN … TYPE stream (never KEYS)."""
    found = {
        k.decode() if isinstance(k, bytes) else k
        for k in client.scan_iter(match=pattern, count=1000, _type="stream")
    }
    return sorted(found)


def _memory(client: Any, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def _count_older(client: Any, key: str, minid: str, total: int, limit: int) -> tuple[int, bool]:
    """Entries with an id below `minid`: counted in pages up to `limit`, then estimated."""
    counted = 0
    start = "-"
    end = "(" + minid
    while counted < limit:
        want = min(STEP_ENTRIES, limit - counted)
        page = client.xrange(key, start, end, count=want)
        if not page:
            return counted, False
        counted += len(page)
        start = "(" + page[-1][0].decode()
        if len(page) < want:
            return counted, False
    if not client.xrange(key, start, end, count=1):
        return counted, False
    # Estimate the rest from the share of the remaining id span that lies below the cutoff.
    first = parse_id(start[1:])[0]
    last = last_id(client, key)
    cutoff_ms = parse_id(minid)[0]
    if last is None or last[0] <= first:
        return counted, True
    share = min(1.0, max(0.0, (cutoff_ms - first) / (last[0] - first)))
    return counted + int((total - counted) * share), True


def _trim_in_steps(
    client: Any, key: str, *, minid: str | None, maxlen: int | None, step: int
) -> int:
    """XTRIM … ~ … LIMIT step until nothing goes, then one exact XTRIM; returns the call count."""
    calls = 0
    while True:
        removed = client.xtrim(key, maxlen=maxlen, minid=minid, approximate=True, limit=step)
        calls += 1
        if not removed:
            break
    client.xtrim(key, maxlen=maxlen, minid=minid, approximate=False)
    return calls + 1


def _clean_late_index(
    client: Any, hist_key: str, *, dry_run: bool, removed_ids_below: tuple[int, int] | None
) -> int:
    """Late-index members whose chunk id is gone (below the stream's first id, or all if empty)."""
    parsed = keys.parse_stream_key(hist_key)
    if parsed is None:
        return 0
    index = keys.late_index_key(parsed[0].split(":", 1)[1], parsed[1])
    members = client.zrange(index, 0, -1)
    if not members:
        return 0
    first = removed_ids_below
    stale = [m for m in members if first is None or parse_id(m) < first]
    if stale and not dry_run:
        for i in range(0, len(stale), 1000):
            client.zrem(index, *stale[i : i + 1000])
    return len(stale)


def cleanup(
    client: Any,
    policy: Policy,
    *,
    pattern: str = DEFAULT_PATTERN,
    dry_run: bool = False,
    now_ns: int | None = None,
    step: int = STEP_ENTRIES,
    count_limit: int = COUNT_LIMIT,
    progress: Callable[[int, int, str], None] | None = None,
) -> CleanupReport:
    """Trim every stream matching `pattern` by `policy`; `progress(done, total, key)` per stream."""
    started = time.perf_counter()
    now = time.time_ns() if now_ns is None else now_ns
    streams = find_streams(client, pattern)
    reports: list[StreamReport] = []
    skipped: list[str] = []
    for n, key in enumerate(streams):
        if progress is not None:
            progress(n, len(streams), key)
        kind = kind_of(key)
        retention = policy.retention_for(kind)
        if retention is None and policy.max_entries is None:
            skipped.append(key)
            continue
        reports.append(
            _clean_one(
                client, key, kind, retention, policy.max_entries, now, dry_run, step, count_limit
            )
        )
    if progress is not None:
        progress(len(streams), len(streams), "")
    return CleanupReport(dry_run, pattern, reports, time.perf_counter() - started, skipped)


def _clean_one(
    client: Any,
    key: str,
    kind: str,
    retention_ns: int | None,
    max_entries: int | None,
    now_ns: int,
    dry_run: bool,
    step: int,
    count_limit: int,
) -> StreamReport:
    before = int(client.xlen(key))
    memory_before = _memory(client, key)
    minid = ""
    described = []
    if retention_ns is not None:
        cutoff_ms = (now_ns - retention_ns) // NS_PER_MS
        minid = f"{max(0, cutoff_ms)}-0"
        described.append(f"older than {_days(retention_ns)}")
    if max_entries is not None:
        described.append(f"beyond the newest {max_entries:,}")
    estimated = False
    steps = 0
    if dry_run:
        old, estimated = (0, False)
        if minid:
            old, estimated = _count_older(client, key, minid, before, count_limit)
        keep = before - old
        if max_entries is not None:
            keep = min(keep, max_entries)
        after = keep
        memory_after = int(memory_before * after / before) if before else memory_before
        first_kept = None
    else:
        if minid:
            steps += _trim_in_steps(client, key, minid=minid, maxlen=None, step=step)
        if max_entries is not None:
            steps += _trim_in_steps(client, key, minid=None, maxlen=max_entries, step=step)
        after = int(client.xlen(key))
        memory_after = _memory(client, key)
        first_kept = first_id(client, key)
    late_removed = 0
    if kind.startswith("hist:"):
        if dry_run:
            first_kept = _first_kept_dry(client, key, before - after)
        late_removed = _clean_late_index(client, key, dry_run=dry_run, removed_ids_below=first_kept)
    return StreamReport(
        key=key,
        kind=kind,
        policy=" and ".join(described),
        cutoff=minid,
        entries_before=before,
        entries_after=after,
        removed=before - after,
        memory_before=memory_before,
        memory_after=memory_after,
        freed_bytes=max(0, memory_before - memory_after),
        estimated=estimated,
        late_index_removed=late_removed,
        steps=steps,
    )


def _first_kept_dry(client: Any, key: str, removed: int) -> tuple[int, int] | None:
    """The id that would be first after removing `removed` entries (history streams are small)."""
    page = client.xrange(key, "-", "+", count=removed + 1)
    return parse_id(page[removed][0]) if len(page) > removed else None


def _days(ns: int) -> str:
    seconds = ns // 1_000_000_000
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cleanup_journal(
    directory: Path | str,
    retention: Sequence[str],
    *,
    max_entries: int | None = None,
    dry_run: bool = False,
    now_ns: int | None = None,
) -> JournalTrimReport:
    """`qt cleanup --journal [DIR] --retention 7d`: remove the feed journal's old segments.

    The journal has one retention (a bare duration); what may go is `journal.trim_journal`'s rule.
    """
    from qt_cli.core.journal import parse_retention, trim_journal

    if max_entries is not None:
        raise UsageError("--max-entries applies to streams; the journal takes --retention only")
    if len(retention) != 1 or "=" in retention[0]:
        raise UsageError("--journal takes one --retention DURATION (e.g. 7d), without a KIND= part")
    retention_ns = parse_retention(retention[0], "--retention")
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise UsageError(f"--journal {path}: no such directory (the feed's --journal DIR)")
    return trim_journal(
        path, retention_ns, dry_run=dry_run, now_ns=now_ns, retention_text=retention[0].strip()
    )
