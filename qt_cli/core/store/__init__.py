"""Valkey: connections, the managed local server, and (in submodules) stream writes and reads.

Every Valkey call in qt goes through this package. `connect()` turns an endpoint into a client;
`resolve()` decides which server a command uses when none was configured. A server that is a
Valkey Cluster node gives a cluster client (`store.cluster`): nothing to configure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import valkey

from qt_cli.core.config import Settings, mask_url
from qt_cli.core.endpoints import Endpoint, parse_endpoint
from qt_cli.core.errors import EndpointError, StoreUnavailable

DEFAULT_URL = "valkey://127.0.0.1:6379/0"
CONNECT_TIMEOUT_S = 2.0

if TYPE_CHECKING:
    # valkey types every reply of its sync client `Awaitable[Any] | Any` (one stub serves the
    # sync and asyncio clients), which only says "Any" wrongly; so for the checker a client is
    # Any, decided here once rather than with an ignore at every call.
    Client: TypeAlias = Any
else:
    Client = valkey.Valkey
ValkeyError = valkey.ValkeyError
ConnectionFailure = (valkey.ConnectionError, valkey.TimeoutError, OSError)


def client_for(endpoint: Endpoint, *, password: str = "", timeout_s: float | None = None) -> Client:
    """A client for a parsed valkey endpoint; the password comes from the URL or `password`."""
    if endpoint.kind != "valkey":
        raise EndpointError(f"endpoint {endpoint.uri!r} is not a Valkey endpoint")
    secret = endpoint.password or password or _managed_password(endpoint) or None
    common: dict[str, Any] = {
        "db": endpoint.db,
        "password": secret,
        "username": endpoint.username or None,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "decode_responses": False,
    }
    if endpoint.scheme == "unix":
        return valkey.Valkey(unix_socket_path=endpoint.path, **common)
    if endpoint.scheme == "valkeys":
        common.update(_tls_options(endpoint))
    return valkey.Valkey(host=endpoint.host, port=endpoint.port, **common)


_access: dict[str, Any] = {"ca": "", "managed_dir": None}


def use_access(*, ca: str = "", managed_dir: Path | None = None) -> None:
    """What this process's clients use when a URL does not say (the command layer installs it
    from its settings): the CA bundle for valkeys:// (QT_VALKEY_CA) and the managed server's
    directory, whose generated password a client of that server then sends."""
    _access.update(ca=ca, managed_dir=managed_dir)


def _tls_options(endpoint: Endpoint) -> dict[str, Any]:
    """valkeys://: verify the server's certificate and host name against the CA of `?ca=` or
    QT_VALKEY_CA (else the system's CAs)."""
    ca = endpoint.ca or _access["ca"]
    if ca and not Path(ca).expanduser().is_file():
        raise EndpointError(f"Valkey CA {ca}: no such file (?ca= or QT_VALKEY_CA)")
    return {
        "ssl": True,
        "ssl_ca_certs": str(Path(ca).expanduser()) if ca else None,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
    }


def _managed_password(endpoint: Endpoint) -> str:
    """The managed server's generated password, when `endpoint` is that server."""
    directory = _access["managed_dir"]
    if directory is None or endpoint.scheme != "valkey":
        return ""
    if endpoint.host not in ("127.0.0.1", "localhost"):
        return ""
    from qt_cli.core.store.managed import password_for

    return password_for(directory, endpoint.port)


def connect(
    target: Endpoint | str, *, password: str | None = None, timeout_s: float | None = None
) -> Client:
    """Connect and check the server answers; StoreUnavailable says where and how to fix it.
    The password comes from the URL or `password` (the command passes QT_VALKEY_PASSWORD)."""
    endpoint = parse_endpoint(target) if isinstance(target, str) else target
    password = password or ""
    client = client_for(endpoint, password=password, timeout_s=timeout_s)
    try:
        client.ping()
    except valkey.AuthenticationError:
        if not secret_given(endpoint, password):
            raise StoreUnavailable(
                f"Valkey at {endpoint.uri} needs a password: set QT_VALKEY_PASSWORD"
            ) from None
        raise StoreUnavailable(
            f"Valkey at {endpoint.uri} refused the credentials: check the URL's user and "
            "QT_VALKEY_PASSWORD"
        ) from None
    except valkey.ResponseError as exc:
        if "NOAUTH" in str(exc):
            raise StoreUnavailable(
                f"Valkey at {endpoint.uri} needs a password: set QT_VALKEY_PASSWORD"
            ) from None
        if "SELECT is not allowed in cluster mode" in str(exc):
            raise EndpointError(_CLUSTER_DB0.format(uri=endpoint.uri)) from None
        raise
    except ConnectionFailure as exc:
        if "certificate verify failed" in str(exc).lower():
            raise StoreUnavailable(
                f"Valkey at {endpoint.uri}: its TLS certificate is not trusted ({_reason(exc)}); "
                "give the CA that signed it with ?ca=PATH in the URL or QT_VALKEY_CA"
            ) from None
        raise StoreUnavailable(
            f"cannot reach Valkey at {endpoint.uri} ({_reason(exc)}); start one with "
            "'qt valkey start' or point --valkey / QT_VALKEY_URL at a running server"
        ) from None
    from qt_cli.core.store import cluster

    if cluster.cluster_enabled(client):
        client.close()
        return _cluster_client(endpoint, password=password, timeout_s=timeout_s)
    return client


_CLUSTER_DB0 = (
    "{uri} is a Valkey Cluster node: a cluster has only database 0 and is reached over TCP "
    "(valkey://host:port/0)"
)


def _cluster_client(endpoint: Endpoint, *, password: str, timeout_s: float | None) -> Client:
    """A cluster client started from the node `endpoint` names (it finds the others)."""
    from qt_cli.core.store.cluster import ClusterClient

    if endpoint.scheme == "unix" or endpoint.db != 0:
        raise EndpointError(_CLUSTER_DB0.format(uri=endpoint.uri))
    try:
        return ClusterClient(
            host=endpoint.host,
            port=endpoint.port,
            password=endpoint.password or password or None,
            username=endpoint.username or None,
            ssl=endpoint.scheme == "valkeys",
            socket_timeout=timeout_s,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            decode_responses=False,
        )
    except (valkey.ValkeyError, valkey.exceptions.ValkeyClusterException, OSError) as exc:
        raise StoreUnavailable(
            f"Valkey at {endpoint.uri} is a cluster node but the cluster is not usable "
            f"({_reason(exc)}); check `valkey-cli -p {endpoint.port} cluster info` shows "
            "cluster_state:ok"
        ) from None


def secret_given(endpoint: Endpoint, password: str) -> bool:
    return bool(endpoint.password or password)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].rstrip(".")


def answers(url: str, *, timeout_s: float = 0.3) -> bool:
    """True when a Valkey server answers PING at `url` (no exception, no waiting)."""
    endpoint = parse_endpoint(url)
    client = client_for(endpoint, timeout_s=timeout_s)
    try:
        return bool(client.ping())
    except (valkey.ValkeyError, OSError):
        return False
    finally:
        client.close()


def resolve_url(settings: Settings, *, say: Callable[[str], None] | None = None) -> str:
    """The Valkey URL a command uses.

    A configured URL (--valkey, QT_VALKEY_URL, .env) wins. Otherwise localhost:6379 if something
    answers there; otherwise the managed server, started on the spot (and `say` tells the user).
    """
    if settings.valkey_url:
        return settings.valkey_url
    if answers(DEFAULT_URL):
        return DEFAULT_URL
    from qt_cli.core.store.managed import ManagedValkey

    managed = ManagedValkey(settings.valkey_dir, require_password=True)
    status = managed.status()
    if not status.running:
        if say:
            say(
                f"no Valkey configured and none on localhost:6379; starting the managed server in {settings.valkey_dir}"
            )
        status = managed.start()
    return status.url


def find_url(settings: Settings) -> str | None:
    """The Valkey URL `resolve_url` would give, without starting anything: None when none is
    configured, nothing answers on localhost:6379 and the managed server is not running."""
    if settings.valkey_url:
        return settings.valkey_url
    if answers(DEFAULT_URL):
        return DEFAULT_URL
    from qt_cli.core.store.managed import ManagedValkey

    status = ManagedValkey(settings.valkey_dir).status()
    return status.url if status.running else None


def connect_settings(
    settings: Settings, *, say: Callable[[str], None] | None = None, timeout_s: float | None = None
) -> Client:
    """Connect to the server the settings name (or the managed default)."""
    url = resolve_url(settings, say=say)
    return connect(url, password=settings.valkey_password, timeout_s=timeout_s)


__all__ = [
    "Client",
    "ConnectionFailure",
    "DEFAULT_URL",
    "ValkeyError",
    "answers",
    "client_for",
    "connect",
    "connect_settings",
    "find_url",
    "mask_url",
    "resolve_url",
]
