"""A real Valkey Cluster on loopback for tests: N primaries (`valkey-server --cluster-enabled
yes`), joined with `valkey-cli --cluster create … --cluster-replicas 0`, torn down afterwards."""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import valkey
from valkey.cluster import ValkeyCluster

from qt_cli.core.store.managed import find_server
from tests.helpers import eventually, free_port


@dataclass
class LocalCluster:
    directory: Path
    ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The URL qt is given: any one node (qt finds the others)."""
        return f"valkey://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> valkey.Valkey:
        return valkey.Valkey(host="127.0.0.1", port=port)

    def client(self) -> ValkeyCluster:
        return ValkeyCluster(host="127.0.0.1", port=self.ports[0])

    def flush(self) -> None:
        """Every primary emptied of keys and functions (between tests)."""
        for port in self.ports:
            node = self.node(port)
            node.flushall()
            node.function_flush()
            node.close()

    def node_of(self, key: str) -> int:
        """The port of the primary holding `key`'s slot."""
        client = self.client()
        try:
            return int(client.get_node_from_key(key).port)
        finally:
            client.close()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()


def _ready(port: int) -> bool:
    node = valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        return bool(node.ping())
    except valkey.ConnectionError:
        return False
    finally:
        node.close()


def _cluster_ok(ports: list[int]) -> bool:
    for port in ports:
        node = valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=1)
        try:
            info = node.cluster("info")
        finally:
            node.close()
        if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(
            ports
        ):
            return False
    return True


def start_cluster(directory: Path, primaries: int = 3) -> LocalCluster:
    """Start `primaries` cluster-enabled servers in `directory` and join them (all 16384 slots
    spread over them, no replicas); returns once every node says cluster_state:ok."""
    server = find_server()
    cli = shutil.which("valkey-cli") or str(Path(server).with_name("valkey-cli"))
    directory.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(directory, [free_port() for _ in range(primaries)])
    try:
        for port in cluster.ports:
            with (directory / f"{port}.log").open("ab") as log:
                cluster.procs.append(
                    subprocess.Popen(
                        [
                            server,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-port",
                            str(free_port()),
                            "--cluster-config-file",
                            f"nodes-{port}.conf",
                            "--dir",
                            str(directory),
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--daemonize",
                            "no",
                        ],  # fmt: skip
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        for port in cluster.ports:
            eventually(lambda p=port: _ready(p), timeout=20, message=f"node {port} up")
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in cluster.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        eventually(lambda: _cluster_ok(cluster.ports), timeout=30, message="cluster_state:ok")
    except BaseException:
        cluster.stop()
        raise
    return cluster
