"""qt against a Valkey that only speaks TLS and only knows an ACL user with a password
(tests/secure_valkey.py): `qt bridge` and `qt query` work over valkeys://user@host with the
password from QT_VALKEY_PASSWORD and the CA from QT_VALKEY_CA or ?ca=; a wrong password, no
password or a wrong CA each end in one clear line. And the managed server's generated password."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import valkey
from typer.testing import CliRunner

from qt_cli.app import app
from qt_cli.core import keys, store
from tests.secure_valkey import SecureValkey, start_secure_valkey

pytestmark = pytest.mark.e2e

DAY = ["--from", "2025-08-08T08:00", "--to", "2025-08-08T20:00"]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureValkey]:
    server = start_secure_valkey(tmp_path_factory.mktemp("secure-valkey"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers import QtProcesses

    directory = tmp_path_factory.mktemp("events")
    procs = QtProcesses(directory)
    path = directory / "events.jsonl"
    result = procs.run(
        "feed", "--sim", "--rate", "0", "--stop-after", "300", "--seed", "5",
        "--symbol", "WDOQ25", "--start", "2025-08-08", "--out", str(path), "--out", "replay=none",
        env={"QT_DATA_DIR": str(directory / "data")},
    )  # fmt: skip
    procs.cleanup()
    assert result.returncode == 0, result.output
    return path


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.output
    return errors[0]


def test_bridge_and_query_over_tls_with_an_acl_user(qt, secure: SecureValkey, events: Path) -> None:
    secure.client().flushall()
    bridged = qt.run(
        "bridge", "--in", str(events), "--out", secure.url(), "--json", env=secure.env()
    )
    assert bridged.returncode == 0, bridged.output
    client = secure.client()
    ticks = client.xlen(keys.stream_key("ticks", "WDOQ25"))
    assert ticks > 0
    # ?ca= in the URL instead of QT_VALKEY_CA
    query = qt.run(
        "--valkey", f"{secure.url()}?ca={secure.ca}", "query", "--symbol", "WDOQ25", *DAY,
        env={"QT_VALKEY_PASSWORD": secure.password},
    )  # fmt: skip
    assert query.returncode == 0, query.output
    rows = [json.loads(line) for line in query.stdout.splitlines()]
    assert len([r for r in rows if r["type"] == "tick"]) == ticks
    assert secure.password not in bridged.output + query.output


def test_the_server_refuses_plain_and_anonymous_clients(secure: SecureValkey) -> None:
    anonymous = valkey.Valkey(
        host="127.0.0.1", port=secure.port, ssl=True, ssl_ca_certs=str(secure.ca)
    )
    with pytest.raises(valkey.ValkeyError, match="NOAUTH|Authentication"):
        anonymous.ping()


def test_wrong_password_no_password_and_wrong_ca_say_so_in_one_line(
    qt, secure: SecureValkey
) -> None:
    url = secure.url()
    wrong = qt.run(
        "query", "--symbol", "WDOQ25", *DAY,
        env={"QT_VALKEY_URL": url, "QT_VALKEY_CA": str(secure.ca), "QT_VALKEY_PASSWORD": "nope"},
    )  # fmt: skip
    assert wrong.returncode == 3
    assert "refused the credentials" in one_error_line(wrong)
    missing = qt.run(
        "query", "--symbol", "WDOQ25", *DAY,
        env={"QT_VALKEY_URL": url, "QT_VALKEY_CA": str(secure.ca)},
    )  # fmt: skip
    assert missing.returncode == 3
    assert "needs a password: set QT_VALKEY_PASSWORD" in one_error_line(missing)
    untrusted = qt.run(
        "query", "--symbol", "WDOQ25", *DAY,
        env={**secure.env(), "QT_VALKEY_URL": url, "QT_VALKEY_CA": str(secure.other_ca)},
    )  # fmt: skip
    assert untrusted.returncode == 3
    line = one_error_line(untrusted)
    assert "certificate" in line and "QT_VALKEY_CA" in line
    for result in (wrong, missing, untrusted):
        assert secure.password not in result.output


def test_managed_server_gets_a_generated_password_0600(
    cli: CliRunner, isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qt_cli.core.store import managed as managed_module
    from tests.helpers import free_port

    monkeypatch.setattr(managed_module, "DEFAULT_PORT", free_port())
    started = cli.invoke(app, ["valkey", "start", "--json"])
    assert started.exit_code == 0, started.output
    info = json.loads(started.stdout)
    try:
        password_file = Path(info["password_file"])
        assert password_file == isolated_settings / "valkey" / "password"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((isolated_settings / "valkey" / "valkey.conf").stat().st_mode) == 0o600
        password = password_file.read_text().strip()
        assert len(password) >= 32 and password not in started.output
        anonymous = valkey.Valkey(host="127.0.0.1", port=info["port"])
        with pytest.raises(valkey.ValkeyError, match="NOAUTH|Authentication"):
            anonymous.ping()
        anonymous.close()
        client = store.connect(info["url"])  # qt finds the password by itself
        client.set("k", "v")
        client.close()
        status = cli.invoke(app, ["valkey", "status"])
        assert f"password in {password_file} (0600)" in status.stdout.replace("\n", "")
        assert password not in status.output
    finally:
        cli.invoke(app, ["valkey", "stop"])
    again = json.loads(cli.invoke(app, ["valkey", "start", "--json"]).stdout)
    try:
        assert Path(again["password_file"]).read_text().strip() == password  # kept over restarts
        assert store.connect(again["url"]).get("k") == b"v"
    finally:
        cli.invoke(app, ["valkey", "stop"])


def test_qt_commands_use_the_managed_password_by_themselves(
    qt, events: Path, isolated_settings: Path
) -> None:
    from qt_cli.core.store.managed import ManagedValkey
    from tests.helpers import free_port

    # the port a previous run used is taken first: a free one, never the shared 6379
    (isolated_settings / "valkey").mkdir(parents=True)
    (isolated_settings / "valkey" / "state.json").write_text(json.dumps({"port": free_port()}))
    started = qt.run("valkey", "start", "--json")  # the CLI default: a password
    assert started.returncode == 0, started.output
    info = json.loads(started.stdout)
    try:
        url = info["url"]
        bridged = qt.run("--valkey", url, "bridge", "--in", str(events), "--out", url)
        assert bridged.returncode == 0, bridged.output
        query = qt.run("--valkey", url, "query", "--symbol", "WDOQ25", *DAY)
        assert query.returncode == 0, query.output
        assert query.stdout.count('"type":"tick"') > 0
        managed = ManagedValkey(isolated_settings / "valkey")
        assert managed.password() and managed.password() not in bridged.output + query.output
    finally:
        qt.run("valkey", "stop")
