"""What every ZeroMQ socket of qt shares: the context, run ids, binding, the protocol tag."""

from __future__ import annotations

import logging
import secrets
import struct
from typing import Any

import zmq

from qt_cli.core.endpoints import Endpoint, parse_endpoint
from qt_cli.core.errors import EndpointError, QtError, UnavailableError

log = logging.getLogger(__name__)


PROTOCOL = b"QTR1"
DEFAULT_SNDHWM = 200_000  # about 2 s at 100k msgs/s; a slower subscriber recovers via replay
DEFAULT_RCVHWM = 200_000
_SEQ = struct.Struct("<Q")


_RUN_ID = secrets.token_hex(4)


def new_run_id() -> str:
    """A fresh random run id (8 hex digits)."""
    return secrets.token_hex(4)


def process_run_id() -> str:
    """The run id shared by every publisher of this process that is not given one."""
    return _RUN_ID


def _context() -> zmq.Context[Any]:
    return zmq.Context.instance()


def _endpoint(value: Endpoint | str) -> Endpoint:
    ep = parse_endpoint(value) if isinstance(value, str) else value
    if ep.kind != "zmq":
        raise EndpointError(f"endpoint {ep.uri!r} is not a ZeroMQ endpoint (tcp://… or ipc://…)")
    return ep


def _bind(sock: zmq.Socket[Any], ep: Endpoint, what: str) -> None:
    from qt_cli.core.zmq_io import curve

    try:
        curve.serve(sock, ep)  # CURVE server, or refuse plain TCP beyond loopback
    except QtError:
        sock.close(linger=0)
        raise
    try:
        sock.bind(ep.zmq_address)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        hint = (
            " (another qt feed running? choose another port)" if exc.errno == zmq.EADDRINUSE else ""
        )
        raise UnavailableError(f"cannot bind {what} {ep.uri}: {exc.strerror}{hint}") from None
