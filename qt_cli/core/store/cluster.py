"""Valkey Cluster: the cluster-aware client and the few places where a cluster differs.

`store.connect` asks the server it is given (`INFO cluster`); a cluster node yields a
`ClusterClient` (valkey-py's `ValkeyCluster`), which finds the other nodes and sends every
command to the primary of its key's slot. Every key of one symbol carries the symbol as its hash
tag (`stream:ticks:{WDOQ25}`, `hwm:stream:ticks:{WDOQ25}`, …: keys.py), so a function call, a
script or a read over one symbol's keys stays in one slot. What spans symbols is split here:

- multi-stream XREAD / XREADGROUP: one command per slot (`by_slot`);
- the writers' packed `qt_append` calls: `RoutedConnection`, one connection per primary used
  like one connection (commands go to their slot's node, replies come back in the order sent);
- the function library: loaded on, and checked on, every primary (`on_primaries`);
- SCAN: every primary (valkey-py's `scan_iter` on a cluster client does it);
- the server identity the bridge watches for restarts: the run ids of all primaries;
- the health `qt monitor` shows: every primary's INFO together (`merged_info`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import valkey
from valkey._parsers import CommandsParser
from valkey.cluster import ValkeyCluster

POLL_S = 0.01  # a multi-slot read with nothing new waits this long before the next look


def _name(arg: Any) -> str:
    return (arg.decode() if isinstance(arg, bytes) else str(arg)).upper()


def command_keys(args: Sequence[Any]) -> list[Any] | None:
    """The keys of the commands qt sends whose keys move (FCALL, XREAD[GROUP]), read from the
    arguments; None for any other command (then the server's key specs say)."""
    name = _name(args[0])
    if name in ("FCALL", "FCALL_RO"):
        return list(args[3 : 3 + int(args[2])])
    if name in ("XREAD", "XREADGROUP"):
        for i, arg in enumerate(args):
            if _name(arg) == "STREAMS":
                rest = args[i + 1 :]
                return list(rest[: len(rest) // 2])
    return None


class _KeysParser(CommandsParser):
    """valkey-py asks the server (`COMMAND GETKEYS`, one more round trip per call) for the keys
    of commands whose key positions move; qt's are read from the arguments instead."""

    def get_keys(self, valkey_conn: Any, *args: Any) -> Any:
        found = command_keys(args)
        return found if found is not None else super().get_keys(valkey_conn, *args)


class ClusterClient(ValkeyCluster):
    """valkey-py's cluster client, with the keys of FCALL and XREAD[GROUP] read locally."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands_parser.__class__ = _KeysParser  # same state, local key lookup


def is_cluster(client: Any) -> bool:
    return isinstance(client, ValkeyCluster)


def cluster_enabled(client: Any) -> bool:
    """True when the server `client` talks to is a cluster node (`INFO cluster`); False when
    it is not, or may not say (a user without INFO)."""
    try:
        return bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except valkey.ResponseError:
        return False


def by_slot(client: Any, positions: Mapping[str, str]) -> list[dict[str, str]]:
    """`positions` (stream -> id) split into one dict per slot (one dict for one server)."""
    if not is_cluster(client):
        return [dict(positions)]
    parts: dict[int, dict[str, str]] = {}
    for key, position in positions.items():
        parts.setdefault(client.keyslot(key), {})[key] = position
    return list(parts.values())


def on_primaries(client: Any, *args: Any) -> list[Any]:
    """A keyless command's reply from every primary (one reply for one server)."""
    if not is_cluster(client):
        return [client.execute_command(*args)]
    replies = client.execute_command(*args, target_nodes=ValkeyCluster.PRIMARIES)
    return list(replies.values()) if isinstance(replies, dict) else [replies]


def server_identity(client: Any) -> str:
    """The `run_id` of the server (new at each start); of a cluster, those of all primaries."""
    if not is_cluster(client):
        return _text(client.info("server").get("run_id", ""))
    infos = client.info("server", target_nodes=ValkeyCluster.PRIMARIES)
    return ",".join(sorted(_text(info.get("run_id", "")) for info in infos.values()))


_SUMMED = ("used_memory", "connected_clients", "instantaneous_ops_per_sec")


def merged_info(client: Any) -> dict[str, Any]:
    """`INFO` of the server; of a cluster, its primaries' together: memory, clients and ops
    summed, maxmemory summed (0, no limit, when any primary has none), the AOF on only when on
    everywhere and its status the first one not ok, `cluster_primaries` their count."""
    if not is_cluster(client):
        return dict(client.info())
    infos = list(client.info(target_nodes=ValkeyCluster.PRIMARIES).values())
    merged = dict(infos[0])
    for name in _SUMMED:
        merged[name] = sum(int(info.get(name, 0) or 0) for info in infos)
    limits = [int(info.get("maxmemory", 0) or 0) for info in infos]
    merged["maxmemory"] = sum(limits) if all(limits) else 0
    merged["used_memory_human"] = ""  # of one node: the sum is formatted where it is shown
    merged["aof_enabled"] = min(int(info.get("aof_enabled", 0) or 0) for info in infos)
    for name in ("aof_last_write_status", "aof_last_bgrewrite_status"):
        failing = [info[name] for info in infos if info.get(name, "ok") != "ok"]
        if failing:
            merged[name] = failing[0]
    merged["cluster_primaries"] = len(infos)
    return merged


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- packed calls on one connection per primary ----------------------------------------------


def _routing_key(command: Sequence[Any]) -> Any:
    keys = command_keys(command)
    if keys is not None:
        return keys[0] if keys else None
    return command[1] if len(command) > 1 else None


class RoutedPacker:
    """`pack_commands` for a `RoutedConnection`: each command packed alone, with its slot."""

    def __init__(self, client: ValkeyCluster) -> None:
        self.client = client
        self._packer = valkey.connection.Connection()  # never connected: it only encodes

    def pack_commands(self, commands: Sequence[Sequence[Any]]) -> list[tuple[int, bytes]]:
        out = []
        for command in commands:
            key = _routing_key(command)
            slot = self.client.keyslot(key) if key is not None else 0
            out.append((slot, b"".join(self._packer.pack_command(*command))))
        return out


class RoutedConnection:
    """A connection to each primary used like one connection: `send_packed_command` sends each
    packed command (`RoutedPacker`) to the primary of its slot, on that primary's connection
    (all the primaries' parts on the wire before any reply is read); `read_response` returns the
    replies in the order the commands were sent. `disconnect` drops every connection and reads
    the slot map again (a node went away or slots moved)."""

    def __init__(self, client: ValkeyCluster) -> None:
        self.client = client
        self._held: dict[str, tuple[Any, Any]] = {}  # node name -> (pool, connection)
        self._order: deque[Any] = deque()  # the connection of each reply still to read

    def _connection(self, slot: int) -> Any:
        node = self.client.nodes_manager.get_node_from_slot(slot)
        held = self._held.get(node.name)
        if held is None:
            pool = self.client.get_valkey_connection(node).connection_pool
            held = self._held[node.name] = (pool, pool.get_connection("FCALL"))
        return held[1]

    def send_packed_command(
        self, packed: Sequence[tuple[int, bytes]], check_health: bool = True
    ) -> None:
        parts: dict[int, tuple[Any, list[bytes]]] = {}
        for slot, data in packed:
            conn = self._connection(slot)
            parts.setdefault(id(conn), (conn, []))[1].append(data)
            self._order.append(conn)
        for conn, chunks in parts.values():
            conn.send_packed_command(chunks, check_health=check_health)

    def read_response(self) -> Any:
        return self._order.popleft().read_response()

    def disconnect(self) -> None:
        for pool, conn in self._held.values():
            conn.disconnect()
            pool.release(conn)
        self._held.clear()
        self._order.clear()
        try:
            self.client.nodes_manager.initialize()
        except (valkey.ValkeyError, OSError):
            pass  # still down: the next send fails and the caller retries

    def release(self) -> None:
        for pool, conn in self._held.values():
            pool.release(conn)
        self._held.clear()
        self._order.clear()


def packer(client: Any) -> Any:
    """What packs commands for `connection(client)`'s `send_packed_command`."""
    if is_cluster(client):
        return RoutedPacker(client)
    pool = client.connection_pool
    return pool.connection_class(**pool.connection_kwargs)


def connection(client: Any) -> Any:
    """A connection taken from the client's pool (one per primary, routed, for a cluster)."""
    if is_cluster(client):
        return RoutedConnection(client)
    return client.connection_pool.get_connection("FCALL")


def release(client: Any, conn: Any) -> None:
    """Give `connection(client)` back."""
    if isinstance(conn, RoutedConnection):
        conn.release()
    else:
        client.connection_pool.release(conn)


__all__ = [
    "ClusterClient",
    "RoutedConnection",
    "RoutedPacker",
    "by_slot",
    "cluster_enabled",
    "command_keys",
    "connection",
    "is_cluster",
    "merged_info",
    "on_primaries",
    "packer",
    "release",
    "server_identity",
]
