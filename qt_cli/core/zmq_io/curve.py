"""ZeroMQ security: CURVE keys, applied to every socket qt binds or connects, and the refusal to
bind plain TCP beyond loopback.

Settings (flags on the commands that use ZeroMQ, else the environment, else .env):

| setting               | env                  | meaning                                              |
|-----------------------|----------------------|------------------------------------------------------|
| `--curve-secret-key`  | QT_CURVE_SECRET_KEY  | this process's key pair: a `*.key_secret` file       |
| `--curve-server-key`  | QT_CURVE_SERVER_KEY  | the servers' public key: a `*.key` file              |
| `--curve-clients`     | QT_CURVE_CLIENTS     | a directory of the clients' public keys (`*.key`)    |
| `--insecure`          | QT_INSECURE          | allow plain TCP on a non-loopback address            |

With a secret key, every socket qt binds is a CURVE server and every socket it connects a CURVE
client; the servers' public key defaults to the process's own (one key pair shared by every host
of a deployment). With `--curve-clients` a server accepts only the clients whose public keys are
in that directory (ZAP authentication); without it any client that knows the server's public key
connects. Key files are the ZeroMQ certificate format (`zmq.auth.load_certificate`); only paths
travel on command lines and in the environment, never a key.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from qt_cli.core.endpoints import Endpoint
from qt_cli.core.errors import UsageError

SECRET_SUFFIX = ".key_secret"
PUBLIC_SUFFIX = ".key"
GUIDE = "docs/SECURITY.md"


@dataclass(frozen=True)
class CurveKeys:
    """The keys one process uses: its own pair, the servers' public key, allowed clients."""

    public: bytes = b""
    secret: bytes = b""
    server_public: bytes = b""
    clients_dir: str = ""
    insecure: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.secret or self.server_public)


def generate(directory: Path | str, name: str = "qt") -> tuple[Path, Path]:
    """Write a new key pair: `<name>.key` (public, 0644) and `<name>.key_secret` (0600).

    Refuses to overwrite an existing pair (the old one may be in use)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    secret_path = directory / f"{name}{SECRET_SUFFIX}"
    for path in (public_path, secret_path):
        if path.exists():
            raise UsageError(
                f"{path} exists: remove it or choose another --name (keys are never overwritten)"
            )
    public, secret = zmq.curve_keypair()
    header = "#   ZeroMQ CURVE key written by qt keys generate (docs/SECURITY.md)\n"
    body = f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
    _write(public_path, header + body, 0o644)
    secret_body = body + f'    secret-key = "{secret.decode()}"\n'
    _write(
        secret_path,
        header + "#   secret: keep this file 0600, never share it\n" + secret_body,
        0o600,
    )
    return public_path, secret_path


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)  # whatever the umask


def _load(path: str, what: str, *, secret: bool) -> tuple[bytes, bytes]:
    file = Path(path).expanduser()
    try:
        if not file.is_file():
            raise UsageError(f"{what} {file}: no such file (make one with 'qt keys generate')")
        mode = file.stat().st_mode
    except OSError as exc:  # a name too long, a directory we may not enter, ...
        raise UsageError(f"{what} {path[:200]}: cannot read it ({exc.strerror})") from None
    if secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"{what} {file} is readable by others: chmod 600 {file}")
    try:
        public, secret_key = zmq.auth.load_certificate(file)
    except (ValueError, OSError) as exc:
        raise UsageError(f"{what} {file} is not a ZeroMQ key file ({exc})") from None
    if secret and not secret_key:
        raise UsageError(
            f"{what} {file} holds no secret key: give the {SECRET_SUFFIX} file of the pair"
        )
    return public or b"", secret_key or b""


def load(
    secret_key: str = "", server_key: str = "", clients: str = "", *, insecure: bool = False
) -> CurveKeys:
    """Read the key files the settings name (paths; empty: not set)."""
    public = secret = server_public = b""
    if secret_key:
        public, secret = _load(secret_key, "--curve-secret-key", secret=True)
    if server_key:
        server_public, _ = _load(server_key, "--curve-server-key", secret=False)
    elif secret:
        server_public = public
    if clients:
        try:
            is_dir = Path(clients).expanduser().is_dir()
        except OSError as exc:
            raise UsageError(f"--curve-clients {clients[:200]}: {exc.strerror}") from None
        if not is_dir:
            raise UsageError(f"--curve-clients {clients}: not a directory of public *.key files")
        if not secret:
            raise UsageError("--curve-clients needs --curve-secret-key (the server's own key pair)")
    return CurveKeys(
        public, secret, server_public, str(Path(clients).expanduser()) if clients else "", insecure
    )


_PLAIN = CurveKeys()
_installed: CurveKeys | None = None


def use(keys: CurveKeys | None) -> None:
    """Install the keys this process's sockets use when none are passed (the command layer
    does, from its settings: flags > QT_* env > .env); None: plain sockets again."""
    global _installed
    _installed = keys


def installed() -> CurveKeys:
    """The installed keys; none: plain sockets, binding loopback only."""
    return _installed if _installed is not None else _PLAIN


# --- applying them to sockets -------------------------------------------------------------------

_auth_lock = threading.Lock()
_authenticators: dict[int, Any] = {}


def _authenticate(context: zmq.Context[Any], clients_dir: str) -> None:
    """One ZAP handler per context, accepting the public keys in `clients_dir`."""
    from zmq.auth.thread import ThreadAuthenticator

    with _auth_lock:
        auth = _authenticators.get(id(context))
        if auth is None:
            auth = ThreadAuthenticator(context)
            auth.start()
            _authenticators[id(context)] = auth
        auth.configure_curve(domain="*", location=clients_dir)


def serve(sock: zmq.Socket[Any], ep: Endpoint, keys: CurveKeys | None = None) -> None:
    """Before binding `sock` at `ep`: make it a CURVE server, or refuse plain TCP beyond
    loopback unless insecure was asked for."""
    keys = installed() if keys is None else keys
    check_bind(ep, keys)
    if keys.secret:
        if keys.clients_dir:
            _authenticate(sock.context, keys.clients_dir)
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
        sock.curve_server = True


def check_bind(ep: Endpoint, keys: CurveKeys | None = None) -> None:
    """UsageError when binding `ep` would expose plain TCP beyond loopback (no CURVE key pair,
    no --insecure); `qt up --check` asks too."""
    keys = installed() if keys is None else keys
    if keys.secret or keys.insecure or ep.scheme != "tcp":
        return
    if not is_loopback(ep.host):
        raise UsageError(
            f"refusing to bind plain TCP on {ep.uri}, which other hosts can reach: give CURVE "
            f"keys (--curve-secret-key, made by 'qt keys generate'; {GUIDE}), bind 127.0.0.1, "
            "or pass --insecure"
        )


def connect(sock: zmq.Socket[Any], keys: CurveKeys | None = None) -> None:
    """Before connecting `sock`: make it a CURVE client when a server key is known."""
    keys = installed() if keys is None else keys
    if not keys.server_public:
        return
    if keys.secret:
        public, secret = keys.public, keys.secret
    else:
        public, secret = zmq.curve_keypair()  # a throw-away pair: the server does not check it
    sock.curve_serverkey = keys.server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def is_loopback(host: str) -> bool:
    """True when `host` (an IP, a name or an interface) is reachable from this machine only."""
    name = host.strip("[]")
    if name in ("localhost", "lo"):
        return True
    if name in ("*", "0.0.0.0", "::", ""):
        return False
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


__all__ = [
    "CurveKeys",
    "check_bind",
    "connect",
    "generate",
    "installed",
    "is_loopback",
    "load",
    "serve",
    "use",
]
