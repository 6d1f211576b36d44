"""Rewrite history chunks written by an older codec version to the current one (in place).

Stream entries cannot be changed, and a chunk's id (`<t_min ms>-<n>`) must stay, so a history
stream holding older chunks is copied, entry by entry with the same ids, to a scratch key
(`keys.rewrite_key`), old chunks re-encoded and the others copied as they are; then one script
swaps the copy in (RENAME), keeping the stream's last generated id, but only if the stream did
not change meanwhile (same last generated id and length). If the bridge appended chunks during
the copy, those are copied too and the swap is tried again. Readers see either the old stream or
the new one, never a mix; the late index and the `hwm:` hash refer to ids that stay the same.

Memory: while a stream is copied, its copy takes about as much again (chunks are ~10 bytes per
tick). Dry run: the old chunks are counted, nothing is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from qt_cli.core import keys
from qt_cli.core.chunks import CODEC_VERSION, decode_tick_columns, encode_columns
from qt_cli.core.errors import DecodeError, QtError
from qt_cli.core.store.reader import xrange_pages

PAGE = 256  # chunks per XRANGE / pipeline
SWAP_ATTEMPTS = 5

# KEYS: stream, its copy; ARGV: last generated id and length seen when the copy was complete.
_SWAP = """
local info = server.call('XINFO', 'STREAM', KEYS[1])
local last = nil
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
if last ~= ARGV[1] or tostring(server.call('XLEN', KEYS[1])) ~= ARGV[2] then
  return 0
end
server.call('XSETID', KEYS[2], last)
server.call('RENAME', KEYS[2], KEYS[1])
return 1
"""

Progress = Callable[[int, int, str], None]


@dataclass
class StreamRewrite:
    key: str
    chunks: int  # entries in the stream
    old: int  # chunks of an older codec version (rewritten, or to rewrite in a dry run)
    unreadable: list[str] = field(default_factory=list)  # ids copied as they were
    memory_before: int = 0
    memory_after: int = 0


@dataclass
class RewriteReport:
    dry_run: bool
    streams: list[StreamRewrite]
    seconds: float

    @property
    def rewritten(self) -> int:
        return sum(s.old for s in self.streams)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "codec_version": CODEC_VERSION,
            "streams": [asdict(s) for s in self.streams],
            "rewritten": self.rewritten,
            "seconds": round(self.seconds, 3),
        }


def _version(fields: dict[bytes, bytes]) -> bytes:
    return fields.get(b"v", b"")


def _recoded(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The chunk in the current codec, every other field (src, …) kept."""
    new = encode_columns(decode_tick_columns(fields))
    out = dict(fields)
    out.update({k.encode(): v for k, v in new.items()})
    return out


def history_streams(client: Any) -> list[str]:
    found = {
        k.decode() if isinstance(k, bytes) else k
        for k in client.scan_iter(match=keys.history_key("ticks", "*"), count=1000, _type="stream")
    }
    return sorted(found)


def _memory(client: Any, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def rewrite_chunks(
    client: Any, *, dry_run: bool = False, progress: Progress | None = None
) -> RewriteReport:
    """Rewrite every history stream holding chunks older than CODEC_VERSION (see module doc)."""
    started = time.perf_counter()
    current = str(CODEC_VERSION).encode()
    reports: list[StreamRewrite] = []
    streams = history_streams(client)
    counted: list[tuple[str, int, int]] = []
    for key in streams:
        total = old = 0
        for page in xrange_pages(client, key, count=PAGE):
            total += len(page)
            old += sum(1 for _, f in page if _version(f) != current)
        counted.append((key, total, old))
    todo = sum(old for _, _, old in counted)
    done = 0
    for key, total, old in counted:
        report = StreamRewrite(key, total, old, memory_before=_memory(client, key))
        reports.append(report)
        if dry_run or not old:
            report.memory_after = report.memory_before
            continue

        def step(n: int, key: str = key) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, todo, key)

        _rewrite_one(client, key, report, step)
        report.memory_after = _memory(client, key)
    return RewriteReport(dry_run, reports, time.perf_counter() - started)


def _rewrite_one(client: Any, key: str, report: StreamRewrite, step: Callable[[int], None]) -> None:
    copy = keys.rewrite_key(key)
    client.delete(copy)
    current = str(CODEC_VERSION).encode()
    start = "-"
    old = 0
    try:
        for _ in range(SWAP_ATTEMPTS):
            info = client.xinfo_stream(key)
            seen_last = info["last-generated-id"]
            seen_last = seen_last.decode() if isinstance(seen_last, bytes) else str(seen_last)
            length = int(info["length"])
            for page in xrange_pages(client, key, start, seen_last, count=PAGE):
                pipe = client.pipeline(transaction=False)
                recoded = 0
                for entry_id, fields in page:
                    if _version(fields) != current:
                        try:
                            fields = _recoded(fields)
                            recoded += 1
                        except DecodeError as exc:
                            report.unreadable.append(f"{entry_id.decode()}: {exc}")
                    pipe.xadd(copy, fields, id=entry_id)
                pipe.execute()
                old += recoded
                step(recoded)
                start = "(" + page[-1][0].decode()
            if client.eval(_SWAP, 2, key, copy, seen_last, str(length)) == 1:
                report.old = old
                return
            # The bridge appended (or something trimmed) meanwhile: copy what is new, retry.
            if client.xlen(key) < length:
                client.delete(copy)
                start, old = "-", 0
        raise QtError(
            f"{key} kept changing while its chunks were rewritten ({SWAP_ATTEMPTS} attempts): "
            "run `qt cleanup --rewrite-chunks` again when the bridge is quieter, or stop "
            "retention trimming of hist streams meanwhile"
        )
    finally:
        client.delete(copy)
