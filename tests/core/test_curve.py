"""ZeroMQ CURVE on real sockets: keys from `qt keys generate`, encryption, authentication, and
the refusal to bind plain TCP beyond loopback."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from qt_cli.core import config
from qt_cli.core.errors import UsageError
from qt_cli.core.events import Trade
from qt_cli.core.zmq_io import PubSink, SubSource, curve
from tests.helpers import eventually, free_port, tcp_endpoint


def trade(i: int) -> Trade:
    return Trade(
        symbol="WDOQ25", ts_event=1_750_000_000_000_000_000 + i, price=5000.0 + i, quantity=1
    )


def keypair(directory: Path, name: str = "qt") -> tuple[Path, Path]:
    return curve.generate(directory, name)


def test_generate_writes_a_loadable_pair_secret_0600(tmp_path: Path) -> None:
    public, secret = keypair(tmp_path / "keys")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pub_key, none = zmq.auth.load_certificate(public)
    pub_again, sec_key = zmq.auth.load_certificate(secret)
    assert none is None and pub_key == pub_again and len(sec_key) == 40
    assert zmq.curve_public(sec_key) == pub_key
    with pytest.raises(UsageError, match="never overwritten"):
        keypair(tmp_path / "keys")


def test_keys_generate_command_json(qt, tmp_path: Path) -> None:
    result = qt.run("keys", "generate", "--out", str(tmp_path / "k"), "--name", "host1", "--json")
    assert result.returncode == 0, result.output
    files = json.loads(result.stdout)
    assert files["secret_key_file"].endswith("host1.key_secret")
    assert stat.S_IMODE(Path(files["secret_key_file"]).stat().st_mode) == 0o600
    secret = zmq.auth.load_certificate(files["secret_key_file"])[1]
    assert secret.decode() not in result.stdout + result.stderr


def test_a_key_path_the_system_cannot_look_at_is_an_error_line(tmp_path: Path) -> None:
    """A path too long for the file system (or any OSError looking at it) is a usage error, not
    an unexpected OSError."""
    too_long = "x" * 5000
    for kwargs in ({"secret_key": too_long}, {"server_key": too_long}):
        with pytest.raises(UsageError, match="cannot read it"):
            curve.load(**kwargs)
    with pytest.raises(UsageError, match="--curve-clients"):
        curve.load(str(keypair(tmp_path / "k")[1]), clients=too_long)


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    _, secret = keypair(tmp_path)
    secret.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        curve.load(str(secret))
    with pytest.raises(UsageError, match="qt keys generate"):
        curve.load(str(tmp_path / "missing.key_secret"))


def use(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """The keys of these QT_* variables installed, as a command does from its settings."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = config.load_settings()
    curve.use(
        curve.load(s.curve_secret_key, s.curve_server_key, s.curve_clients, insecure=s.insecure)
    )


def received_by(sock: zmq.Socket[Any], seconds: float) -> int:
    got = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sock.poll(50):
            sock.recv_multipart()
            got += 1
    return got


def test_curve_pub_sub_delivers_and_strangers_receive_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secret = keypair(tmp_path)
    other_public, _ = keypair(tmp_path, "other")
    use(monkeypatch, QT_CURVE_SECRET_KEY=str(secret))
    endpoint = tcp_endpoint()
    pub = PubSink(endpoint, channel="ticks")
    good = SubSource(endpoint)  # same settings: a CURVE client of the process's own pair
    context = zmq.Context.instance()
    strangers = []
    for keys in (curve.CurveKeys(), curve.load(server_key=str(other_public))):
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        curve.connect(sock, keys)  # no key at all; a wrong server key
        sock.connect(endpoint)
        strangers.append(sock)
    try:
        got: list[Any] = []

        def delivered() -> bool:
            pub.send([trade(len(got))])
            got.extend(good.read(0.05))
            return len(got) >= 3

        eventually(delivered, message="CURVE subscriber got the trades")
        for _ in range(20):
            pub.send([trade(0)])
        assert [received_by(s, 0.5) for s in strangers] == [0, 0]
    finally:
        for sock in strangers:
            sock.close(linger=0)
        good.close()
        pub.close()


def test_curve_clients_directory_admits_only_listed_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_public, server_secret = keypair(tmp_path / "server", "server")
    clients = tmp_path / "clients"
    listed_public, listed_secret = keypair(tmp_path / "listed", "listed")
    clients.mkdir()
    (clients / "listed.key").write_bytes(listed_public.read_bytes())
    _, unlisted_secret = keypair(tmp_path / "unlisted", "unlisted")
    use(monkeypatch, QT_CURVE_SECRET_KEY=str(server_secret), QT_CURVE_CLIENTS=str(clients))
    endpoint = tcp_endpoint()
    pub = PubSink(endpoint, channel="ticks")
    context = zmq.Context.instance()
    socks = {}
    for name, secret in (("listed", listed_secret), ("unlisted", unlisted_secret)):
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        curve.connect(sock, curve.load(str(secret), str(server_public)))
        sock.connect(endpoint)
        socks[name] = sock
    try:

        def listed_gets() -> bool:
            pub.send([trade(1)])
            return bool(socks["listed"].poll(50))

        eventually(listed_gets, message="the listed client is admitted")
        for _ in range(20):
            pub.send([trade(2)])
        assert received_by(socks["unlisted"], 0.5) == 0
    finally:
        for sock in socks.values():
            sock.close(linger=0)
        pub.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "*"])
def test_plain_tcp_beyond_loopback_is_refused_unless_insecure(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"tcp://{host}:{free_port()}"
    with pytest.raises(UsageError, match="refusing to bind plain TCP.*--insecure"):
        PubSink(endpoint)
    use(monkeypatch, QT_INSECURE="1")
    PubSink(endpoint).close()


def test_loopback_and_ipc_bind_as_before(tmp_path: Path) -> None:
    for endpoint in (tcp_endpoint(), f"tcp://localhost:{free_port()}", f"ipc://{tmp_path}/s"):
        PubSink(endpoint).close()
    assert curve.is_loopback("127.0.0.2") and curve.is_loopback("[::1]")
    assert not curve.is_loopback("10.1.2.3") and not curve.is_loopback("0.0.0.0")
