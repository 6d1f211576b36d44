"""Fixtures: a real valkey-server, isolated settings, CliRunner and real `qt` processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import valkey as valkey_lib
import zmq
from typer.testing import CliRunner

from qt_cli.core import config, store
from qt_cli.core.store.managed import INSTALL_HINT, ManagedValkey, find_server
from qt_cli.core.zmq_io import curve
from tests.helpers import QtProcesses, free_port
from tests.valkey_cluster import LocalCluster, start_cluster


@dataclass
class ValkeyServer:
    url: str
    port: int
    directory: Path
    managed: ManagedValkey

    def client(self) -> valkey_lib.Valkey:
        return valkey_lib.Valkey(host="127.0.0.1", port=self.port)


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    """A real valkey-server on a free loopback port with its own directory, for the whole run."""
    try:
        find_server()
    except Exception:
        pytest.fail(f"valkey-server is required for these tests. {INSTALL_HINT}")
    directory = tmp_path_factory.mktemp("valkey")
    port = free_port()
    managed = ManagedValkey(directory, port=port)
    status = managed.start()
    yield ValkeyServer(url=status.url, port=port, directory=directory, managed=managed)
    managed.stop()


@pytest.fixture
def valkey_url(valkey_server: ValkeyServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test server's URL, flushed before the test and exported as QT_VALKEY_URL."""
    client = valkey_server.client()
    client.flushall()
    client.function_flush()
    client.close()
    monkeypatch.setenv("QT_VALKEY_URL", valkey_server.url)
    config.set_current(config.load_settings())
    return valkey_server.url


@pytest.fixture
def vk(valkey_url: str, valkey_server: ValkeyServer) -> Iterator[valkey_lib.Valkey]:
    """A client on the flushed test server."""
    client = valkey_server.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real 3-primary Valkey Cluster on loopback ports, for the whole run (started when a test
    first asks for it)."""
    try:
        find_server()
    except Exception:
        pytest.fail(f"valkey-server is required for these tests. {INSTALL_HINT}")
    cluster = start_cluster(tmp_path_factory.mktemp("valkey-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(valkey_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> str:
    """One node's URL of the flushed cluster, exported as QT_VALKEY_URL."""
    valkey_cluster.flush()
    monkeypatch.setenv("QT_VALKEY_URL", valkey_cluster.url)
    config.set_current(config.load_settings())
    return valkey_cluster.url


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No test sees the user's QT_* environment, .env or data directory."""
    for name in list(os.environ):
        if name.startswith("QT_") or name == "PROFIT_ACTIVATION_KEY" or name.startswith("PROFIT_"):
            monkeypatch.delenv(name)
    data_dir = tmp_path / "qt-data"
    monkeypatch.setenv("QT_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    config.set_current(config.load_settings())
    yield data_dir
    config._current = None
    store.use_access()  # what a command installed (app._install_access) ends with its test
    curve.use(None)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture
def qt(tmp_path: Path) -> Iterator[QtProcesses]:
    """Runs real `qt` processes with the test's environment; kills leftovers at teardown."""
    procs = QtProcesses(tmp_path)
    yield procs
    procs.cleanup()
