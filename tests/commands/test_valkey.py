"""`qt valkey start|status|stop` against the real valkey-server binary."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qt_cli.app import app
from qt_cli.core import store


def test_start_status_stop_with_cli_runner(
    cli: CliRunner, isolated_settings: Path, monkeypatch
) -> None:
    # Use a free port so the test never collides with a server on 6379.
    from qt_cli.core.store import managed as managed_module
    from tests.helpers import free_port

    monkeypatch.setattr(managed_module, "DEFAULT_PORT", free_port())
    started = cli.invoke(app, ["valkey", "start", "--json"])
    assert started.exit_code == 0, started.output
    info = json.loads(started.stdout)
    try:
        assert info["running"] and info["aof_enabled"] and info["appendfsync"] == "everysec"
        assert info["directory"] == str(isolated_settings / "valkey")

        status = cli.invoke(app, ["valkey", "status"])
        assert status.exit_code == 0
        assert "running" in status.stdout and "AOF on" in status.stdout

        client = store.connect(info["url"])
        client.set("kept", "yes")
        client.close()
    finally:
        stopped = cli.invoke(app, ["valkey", "stop"])
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stderr.strip() == "stopped"
    assert json.loads(cli.invoke(app, ["valkey", "status", "--json"]).stdout)["running"] is False
    assert (isolated_settings / "valkey" / "data").is_dir()

    again = json.loads(cli.invoke(app, ["valkey", "start", "--json"]).stdout)
    try:
        client = store.connect(again["url"])
        assert client.get("kept") == b"yes"
        client.close()
    finally:
        cli.invoke(app, ["valkey", "stop"])


def test_real_process_lifecycle(qt, isolated_settings: Path) -> None:
    start = qt.run("valkey", "start")
    try:
        assert start.returncode == 0, start.output
        assert start.stderr.strip() == "started"
        status = qt.run("valkey", "status", "--json")
        assert json.loads(status.stdout)["aof_enabled"] is True
    finally:
        stop = qt.run("valkey", "stop")
    assert stop.returncode == 0, stop.output
    assert json.loads(qt.run("valkey", "status", "--json").stdout)["running"] is False


def test_missing_binary_message(cli: CliRunner, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = cli.invoke(app, ["valkey", "start"])
    assert result.exit_code == 3
    assert result.stderr.startswith(
        "Error: valkey-server is not installed. Debian 12: add bookworm-backports"
    )
