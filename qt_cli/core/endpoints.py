"""The endpoint URI grammar shared by every command's --in/--out, and the Source/Sink interface.

| URI                                              | kind   | as output            | as input         |
|--------------------------------------------------|--------|----------------------|------------------|
| tcp://host:port, ipc:///path                     | zmq    | bind a PUB socket    | connect a SUB    |
| valkey://[user:pass@]host[:port][/db], valkeys:// | valkey | XADD to streams      | XREAD streams    |
| valkeys://user@host:port/0?ca=/path/ca.pem       | valkey | (same, TLS; the CA)  |                  |
| unix:///path/valkey.sock[?db=N]                  | valkey | (same, unix socket)  |                  |
| -                                                | stdio  | JSON lines to stdout | from stdin       |
| file.jsonl, file.csv, file.parquet               | file   | record to the file   | replay the file  |

A valkey:// URL may name a single server or any node of a Valkey Cluster: `store.connect` asks
the server (INFO cluster) and returns a cluster client for a cluster node (docs/SCALING.md).

Parsing is pure and this module knows no implementation: `qt_cli.core.io` opens a Source or
Sink, through the module that owns the external system (zmq_io, store, files).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import parse_qs, unquote

from qt_cli.core.errors import EndpointError
from qt_cli.core.events import Event

Kind = Literal["zmq", "valkey", "stdio", "file"]
# One meaning per file suffix everywhere (`--out`, `--replay`, `qt query --output`): .jsonl,
# .ndjson and `-` are JSON lines, .json is one JSON array. A stream of events is written and read
# line by line, so endpoints take the streaming formats only and refuse .json, naming .jsonl.
SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
OUTPUT_FORMATS = ("csv", "jsonl", "json", "parquet")
STREAM_FORMATS = ("jsonl", "csv", "parquet")
FILE_FORMATS = {suffix: fmt for suffix, fmt in SUFFIX_FORMATS.items() if fmt in STREAM_FORMATS}
DEFAULT_VALKEY_PORT = 6379

_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+|\*)$")


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint. `uri` is the text as given, with any password masked."""

    kind: Kind
    scheme: str
    uri: str
    host: str = ""
    port: int = 0
    path: str = ""
    db: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    format: str = ""
    ca: str = ""  # valkeys://: the CA bundle to verify the server with (?ca=PATH)

    @property
    def zmq_address(self) -> str:
        if self.scheme == "ipc":
            return f"ipc://{self.path}"
        return f"tcp://{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.uri


class Sink(Protocol):
    """Where events go: `send` a batch, `flush`, `close`."""

    def send(self, events: Sequence[Event]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Source(Protocol):
    """Where events come from: `read` a batch (empty on timeout), `finished` at the end, `close`."""

    def read(self, timeout_s: float) -> list[Event]: ...

    @property
    def finished(self) -> bool: ...

    def close(self) -> None: ...


def _port(text: str, uri: str) -> int:
    if not text.isdigit():
        raise EndpointError(f"endpoint {uri!r}: port {text!r} is not a number")
    port = int(text)
    if not 0 < port < 65536:
        raise EndpointError(f"endpoint {uri!r}: port {port} is out of range (1-65535)")
    return port


def _split_host_port(netloc: str, uri: str, *, default_port: int | None) -> tuple[str, int]:
    if netloc.startswith("["):  # [ipv6]:port
        host, sep, rest = netloc.partition("]")
        host += "]"
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise EndpointError(f"endpoint {uri!r}: cannot read host {netloc!r}")
    else:
        host, _, port_text = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    if not host:
        raise EndpointError(f"endpoint {uri!r}: the host is missing")
    if not _HOST_RE.match(host):
        raise EndpointError(f"endpoint {uri!r}: {host!r} is not a valid host")
    if not port_text:
        if default_port is None:
            raise EndpointError(
                f"endpoint {uri!r}: the port is missing (e.g. tcp://127.0.0.1:5555)"
            )
        return host, default_port
    return host, _port(port_text, uri)


def parse_endpoint(uri: str) -> Endpoint:
    """Parse one endpoint URI; EndpointError names the bad part."""
    text = uri.strip()
    if not text:
        raise EndpointError("endpoint is empty")
    if text == "-":
        return Endpoint(kind="stdio", scheme="-", uri="-", format="jsonl")
    if "://" not in text:
        return _parse_file(text)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "tcp":
        host, port = _split_host_port(rest.rstrip("/"), text, default_port=None)
        return Endpoint(kind="zmq", scheme="tcp", uri=text, host=host, port=port)
    if scheme == "ipc":
        if not rest or rest == "/":
            raise EndpointError(
                f"endpoint {text!r}: the ipc path is missing (e.g. ipc:///tmp/qt-ticks)"
            )
        return Endpoint(kind="zmq", scheme="ipc", uri=text, path=rest)
    if scheme in ("valkey", "valkeys", "redis", "rediss"):
        return _parse_valkey(scheme, rest, text)
    if scheme == "unix":
        path, _, query = rest.partition("?")
        if not path.startswith("/"):
            raise EndpointError(
                f"endpoint {text!r}: a unix socket needs an absolute path (unix:///path/valkey.sock)"
            )
        db = _db_from_query(query, text)
        return Endpoint(kind="valkey", scheme="unix", uri=text, path=path, db=db)
    if scheme == "file":
        return _parse_file(rest)
    raise EndpointError(
        f"endpoint {text!r}: unknown scheme {scheme!r} "
        "(use tcp://, ipc://, valkey://, valkeys://, unix://, '-', or a .jsonl/.csv/.parquet file)"
    )


def _db_from_query(query: str, uri: str) -> int:
    if not query:
        return 0
    values = parse_qs(query).get("db")
    if not values or not values[0].isdigit():
        raise EndpointError(f"endpoint {uri!r}: db must be a number (?db=0)")
    return int(values[0])


def _parse_valkey(scheme: str, rest: str, uri: str) -> Endpoint:
    rest, _, query = rest.partition("?")
    netloc, _, path_db = rest.partition("/")
    username = password = ""
    if "@" in netloc:
        creds, netloc = netloc.rsplit("@", 1)
        if ":" in creds:
            username, password = (unquote(p) for p in creds.split(":", 1))
        else:
            username = unquote(creds)  # user@host: an ACL user, its password from the env
    ca = (parse_qs(query).get("ca") or [""])[0]
    host, port = _split_host_port(netloc, uri, default_port=DEFAULT_VALKEY_PORT)
    db = 0
    if path_db:
        if not path_db.isdigit():
            raise EndpointError(f"endpoint {_mask(uri)!r}: database {path_db!r} is not a number")
        db = int(path_db)
    tls = scheme in ("valkeys", "rediss")
    return Endpoint(
        kind="valkey",
        scheme="valkeys" if tls else "valkey",
        uri=_mask(uri),
        host=host.strip("[]"),
        port=port,
        db=db,
        username=username,
        password=password,
        ca=ca,
    )


def _mask(uri: str) -> str:
    from qt_cli.core.config import mask_url

    return mask_url(uri)


def _parse_file(text: str) -> Endpoint:
    path = Path(text)
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if SUFFIX_FORMATS.get(path.suffix.lower()) == "json":
        raise EndpointError(
            f"endpoint {text!r}: .json means one JSON array (as `qt query --output` writes it); "
            "events stream as JSON lines: name the file .jsonl"
        )
    if fmt is None:
        raise EndpointError(
            f"endpoint {text!r}: not a URI and not a known file type (.jsonl, .csv, .parquet)"
        )
    return Endpoint(kind="file", scheme="file", uri=text, path=str(path), format=fmt)


def parse_endpoints(uris: Sequence[str]) -> list[Endpoint]:
    return [parse_endpoint(u) for u in uris]
