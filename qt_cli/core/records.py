"""What the pipeline records about itself: one `stream:gaps` entry (`Gap`) and one
`stream:deadletter` entry (`DeadLetter`), made by the sources (ZeroMQ, files, replays) and
written by the bridge (docs/contracts.md)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_RAW_BYTES = 64 * 1024  # the most of a rejected payload a dead letter keeps
# The largest message a subscriber decodes (`--max-message-bytes`); a larger one is a dead letter.
# A full offer book of thousands of orders is a few hundred KiB.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Gap:
    """A range of seqs a subscriber did not receive live: recovered from replay or lost.

    Fields match one `stream:gaps` entry (docs/contracts.md).
    """

    session: str
    from_seq: int
    to_seq: int
    recovered: bool
    reason: str
    endpoint: str
    ts_init: int

    @property
    def size(self) -> int:
        return self.to_seq - self.from_seq + 1

    def to_fields(self) -> dict[str, str]:
        return {
            "session": self.session,
            "from_seq": str(self.from_seq),
            "to_seq": str(self.to_seq),
            "recovered": "1" if self.recovered else "0",
            "reason": self.reason,
            "endpoint": self.endpoint,
            "ts_init": str(self.ts_init),
        }


@dataclass(frozen=True)
class DeadLetter:
    """Input that did not decode to an event (or cannot be stored as one): the fields of one
    `stream:deadletter` entry. `raw` is the payload or line as received (at most
    MAX_RAW_BYTES are stored), `topic` the ZeroMQ topic ("" for files and stdin), `field` the
    bad field when known, `source` the endpoint URI or file path ("-" for stdin)."""

    reason: str
    raw: bytes
    source: str
    topic: str = ""
    field: str = ""
    ts_init: int = 0

    def to_fields(self) -> dict[str, str | bytes]:
        return {
            "reason": self.reason,
            "field": self.field,
            "raw": self.raw[:MAX_RAW_BYTES],
            "source": self.source,
            "topic": self.topic,
            "ts_init": str(self.ts_init),
        }
