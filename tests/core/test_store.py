"""The managed server and connections, against the real valkey-server binary."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qt_cli.core import store
from qt_cli.core.config import load_settings
from qt_cli.core.errors import StoreUnavailable, UnavailableError
from qt_cli.core.store.managed import ManagedValkey, _is_zombie, _pid_alive
from tests.helpers import free_port


def test_managed_lifecycle_keeps_data(tmp_path: Path) -> None:
    managed = ManagedValkey(tmp_path / "valkey", port=free_port())
    assert not managed.status().running

    status = managed.start()
    try:
        assert status.running and status.aof_enabled and status.appendfsync == "everysec"
        assert status.version.startswith(("7.", "8.", "9."))
        assert stat.S_IMODE(os.stat(managed.run_dir).st_mode) == 0o700
        assert Path(status.socket).is_socket()
        assert managed.start().pid == status.pid  # starting twice reuses the running server

        client = store.connect(status.url)
        client.xadd("stream:ticks:{T}", {"price": "1"})
        client.close()
        # And over the unix socket.
        unix = store.connect(f"unix://{status.socket}")
        assert unix.xlen("stream:ticks:{T}") == 1
        unix.close()
    finally:
        stopped = managed.stop()
    assert not stopped.running
    assert any((managed.data_dir).rglob("*.aof")), "AOF files stay after stop"

    again = managed.start()
    try:
        client = store.connect(again.url)
        assert client.xlen("stream:ticks:{T}") == 1, "data survives a restart"
        client.close()
    finally:
        managed.stop()


def test_stop_when_not_running_is_not_an_error(tmp_path: Path) -> None:
    assert not ManagedValkey(tmp_path).stop().running


def test_missing_binary_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UnavailableError, match="bookworm-backports") as info:
        ManagedValkey(tmp_path / "v").start()
    assert "brew install valkey" in str(info.value)
    assert "docker compose -f docker-compose.valkey.yml" in str(info.value)


def test_unreachable_valkey_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(
        StoreUnavailable, match=f"cannot reach Valkey at valkey://127.0.0.1:{port}/0"
    ) as info:
        store.connect(f"valkey://127.0.0.1:{port}/0")
    assert "qt valkey start" in str(info.value)


def test_wrong_password_is_reported_without_the_password(tmp_path: Path) -> None:
    managed = ManagedValkey(tmp_path / "valkey", port=free_port())
    url = managed.start().url
    try:
        client = store.connect(url)
        client.config_set("requirepass", "right-one")
        client.close()
        with pytest.raises(StoreUnavailable, match="refused the credentials") as info:
            store.connect(url.replace("//", "//:wrong-one@"))
        assert "wrong-one" not in str(info.value)
        with pytest.raises(StoreUnavailable, match="needs a password"):
            store.connect(url, password="")
        ok = store.connect(url, password="right-one")
        assert ok.ping()
        ok.close()
    finally:
        pid = managed._pid()
        managed.stop()  # stops it even though status() cannot log in
    assert pid > 0
    assert not _pid_alive(pid) or _is_zombie(pid)


def test_resolve_prefers_configured_url(tmp_path: Path) -> None:
    settings = load_settings(
        {"valkey_url": "valkey://10.1.2.3:6379/0"}, environ={}, dotenv=tmp_path / "x"
    )
    assert store.resolve_url(settings) == "valkey://10.1.2.3:6379/0"


def test_resolve_starts_managed_server_when_nothing_answers(tmp_path: Path) -> None:
    if store.answers(store.DEFAULT_URL):
        pytest.fail("something listens on localhost:6379; this test needs it free (stop it)")
    settings = load_settings(
        {"data_dir": str(tmp_path / "data")}, environ={}, dotenv=tmp_path / "x"
    )
    said: list[str] = []
    url = store.resolve_url(settings, say=said.append)
    managed = ManagedValkey(settings.valkey_dir)
    try:
        assert managed.status().running
        assert url == managed.status().url
        assert said and "starting the managed server" in said[0]
        assert store.resolve_url(settings, say=said.append) == url and len(said) == 1
    finally:
        managed.stop()
