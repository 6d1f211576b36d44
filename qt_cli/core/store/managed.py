"""The managed local `valkey-server`: started, checked and stopped by qt.

Data lives in `<data dir>/valkey/data` (AOF on, appendfsync everysec); the server binds
127.0.0.1 and a unix socket in a 0700 directory. Stopping shuts the server down cleanly (the
AOF is flushed) and leaves the data.

`qt valkey start` (and a command that starts the server on its own) gives it a generated
password (`requirepass`), kept in `<data dir>/valkey/password` (0600; the config file that holds
it too is 0600). qt reads that file whenever it talks to the managed server (`password_for`), so
no command needs it on its command line or in its environment.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from qt_cli.core.errors import QtError, UnavailableError
from qt_cli.core.store import Client

INSTALL_HINT = (
    "valkey-server is not installed. Debian 12: add bookworm-backports and "
    "'apt-get install -t bookworm-backports valkey-server' (or run 'make valkey'); "
    "newer Debian/Ubuntu: 'apt install valkey-server'; macOS: 'brew install valkey'; "
    "anywhere with Docker: 'docker compose -f docker-compose.valkey.yml up -d'"
)
DEFAULT_PORT = 6379
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 15.0


def find_server() -> str:
    """Path of the valkey-server binary (QT_VALKEY_SERVER overrides the PATH lookup)."""
    explicit = os.environ.get("QT_VALKEY_SERVER")
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise UnavailableError(f"QT_VALKEY_SERVER={explicit} is not an executable file")
        return explicit
    found = shutil.which("valkey-server")
    if not found:
        raise UnavailableError(INSTALL_HINT)
    return found


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ManagedStatus:
    running: bool
    directory: str
    pid: int = 0
    port: int = 0
    socket: str = ""
    version: str = ""
    aof_enabled: bool = False
    appendfsync: str = ""
    used_memory_human: str = ""
    keys: int = 0
    password_file: str = ""  # the generated password's file (0600); empty: no password

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}/0"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "url": self.url if self.running else ""}


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ManagedValkey:
    """A valkey-server whose config, data, socket and pid live under one directory."""

    def __init__(
        self, directory: Path, *, port: int | None = None, require_password: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.requested_port = port
        self.require_password = require_password  # on start: generate (or keep) the password

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def run_dir(self) -> Path:
        return self.directory / "run"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "valkey.sock"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "valkey.pid"

    @property
    def state_path(self) -> Path:
        return self.directory / "state.json"

    @property
    def log_path(self) -> Path:
        return self.directory / "valkey.log"

    @property
    def password_path(self) -> Path:
        return self.directory / "password"

    def password(self) -> str:
        """The server's generated password ("" when it runs without one)."""
        try:
            return self.password_path.read_text().strip()
        except OSError:
            return ""

    def _ensure_password(self) -> str:
        """Keep the existing password (clients may hold it), or write a new one, 0600."""
        current = self.password()
        if current:
            self.password_path.chmod(0o600)
            return current
        fresh = secrets.token_urlsafe(32)
        _write_private(self.password_path, fresh + "\n")
        return fresh

    def _state(self) -> dict[str, int | str]:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _pid(self) -> int:
        try:
            return int(self.pid_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _choose_port(self) -> int:
        if self.requested_port:
            return self.requested_port
        previous = int(self._state().get("port", 0) or 0)
        for candidate in (previous, DEFAULT_PORT):
            if candidate and port_is_free(candidate):
                return candidate
        return free_port()

    def _write_config(self, port: int) -> Path:
        for path in (self.directory, self.data_dir, self.run_dir):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o700)
        auth: list[str] = []
        if self.require_password:
            auth = [f"requirepass {self._ensure_password()}"]
        else:
            self.password_path.unlink(missing_ok=True)
        config = self.directory / "valkey.conf"
        _write_private(
            config,
            "\n".join(
                [
                    "# written by qt; edits are replaced on the next 'qt valkey start'",
                    "bind 127.0.0.1",
                    f"port {port}",
                    f"unixsocket {self.socket_path}",
                    "unixsocketperm 700",
                    f"dir {self.data_dir}",
                    f"pidfile {self.pid_path}",
                    f"logfile {self.log_path}",
                    "daemonize yes",
                    "protected-mode yes",
                    "appendonly yes",
                    "appendfsync everysec",
                    "maxmemory-policy noeviction",
                    "save 3600 1 300 100 60 10000",
                    *auth,
                    "",
                ]
            ),
        )
        return config

    def start(self) -> ManagedStatus:
        """Start the server (or return the status of the one already running)."""
        current = self.status()
        if current.running:
            return current
        binary = find_server()
        port = self._choose_port()
        config = self._write_config(port)
        self.pid_path.unlink(missing_ok=True)
        result = subprocess.run(
            [binary, str(config)],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UnavailableError(
                f"valkey-server did not start: {detail[0]} (log: {self.log_path})"
            )
        self.state_path.write_text(json.dumps({"port": port, "socket": str(self.socket_path)}))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            status = self.status()
            if status.running:
                return status
            time.sleep(0.02)
        raise UnavailableError(
            f"valkey-server did not answer within {START_TIMEOUT_S:.0f}s on port {port}; "
            f"see {self.log_path}"
        )

    def status(self) -> ManagedStatus:
        """Whether the managed server runs, and what it reports about itself."""
        import valkey

        state = self._state()
        port = int(state.get("port", 0) or 0)
        pid = self._pid()
        base = ManagedStatus(running=False, directory=str(self.directory), port=port)
        if not port or not _pid_alive(pid):
            return base
        password = self.password()
        client: Client = valkey.Valkey(
            host="127.0.0.1",
            port=port,
            password=password or None,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
        )
        try:
            info = client.info()
            appendfsync = client.config_get("appendfsync").get("appendfsync", "")
            keys = int(client.dbsize())
        except (valkey.ValkeyError, OSError):
            return base
        finally:
            client.close()
        if int(info.get("process_id", 0)) != pid:
            return base  # the port answers, but not with our server
        return ManagedStatus(
            running=True,
            directory=str(self.directory),
            pid=pid,
            port=port,
            socket=str(self.socket_path),
            version=str(info.get("valkey_version") or info.get("redis_version", "")),
            aof_enabled=bool(int(info.get("aof_enabled", 0))),
            appendfsync=str(appendfsync),
            used_memory_human=str(info.get("used_memory_human", "")),
            keys=keys,
            password_file=str(self.password_path) if password else "",
        )

    def stop(self) -> ManagedStatus:
        """Shut the server down cleanly, keeping its data. A stopped server is not an error."""
        status = self.status()
        pid = self._pid()
        # A server we cannot talk to (a password set later, a hung client port) is still ours
        # when the pid file names a live valkey-server.
        if not status.running and not (_pid_alive(pid) and _is_valkey(pid)):
            return status
        os.kill(pid, signal.SIGTERM)  # valkey flushes the AOF and exits on SIGTERM
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _pid_alive(pid) or _is_zombie(pid):
                return self.status()
            time.sleep(0.02)
        raise QtError(f"valkey-server (pid {pid}) did not stop within {STOP_TIMEOUT_S:.0f}s")


def password_for(directory: Path, port: int) -> str:
    """The generated password of the managed server kept in `directory`, when it is the one
    listening on `port` ("" otherwise)."""
    managed = ManagedValkey(directory)
    if not port or int(managed._state().get("port", 0) or 0) != port:
        return ""
    return managed.password()


def _write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only, from the first byte (no window at 0644)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _is_valkey(pid: int) -> bool:
    try:
        return b"valkey-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (OSError, IndexError):
        return False
