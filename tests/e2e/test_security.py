"""Security with real processes: a CURVE-encrypted feed -> bridge across a non-loopback bind,
strangers without the key get nothing, plain TCP beyond loopback is refused; and a whole
pipeline over TLS + ACL Valkey and CURVE leaves no secret in any argv, process title, log,
output, stored stream or file."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import valkey
import zmq
import zmq.auth

from qt_cli.core import keys
from tests.helpers import QtProcesses, eventually, free_port
from tests.secure_valkey import SecureValkey, start_secure_valkey

pytestmark = pytest.mark.e2e

SYMBOL = "WDOQ25"


def generate_keys(qt: QtProcesses, directory: Path, name: str = "qt") -> Path:
    result = qt.run("keys", "generate", "--out", str(directory), "--name", name, "--json")
    assert result.returncode == 0, result.output
    return Path(json.loads(result.stdout)["secret_key_file"])


class Ports:
    def __init__(self) -> None:
        self.ticks, self.book, self.history, self.replay = (free_port() for _ in range(4))

    def feed_outs(self, host: str) -> list[str]:
        return [
            "--out", f"ticks=tcp://{host}:{self.ticks}", "--out", f"book=tcp://{host}:{self.book}",
            "--out", f"history=tcp://{host}:{self.history}",
            "--out", f"replay=tcp://{host}:{self.replay}",
        ]  # fmt: skip

    def bridge_ins(self) -> list[str]:
        return [
            "--in", f"tcp://127.0.0.1:{self.ticks}", "--in", f"tcp://127.0.0.1:{self.book}",
            "--in", f"tcp://127.0.0.1:{self.history}", "--replay", f"tcp://127.0.0.1:{self.replay}",
        ]  # fmt: skip


def stream_events(client: valkey.Valkey) -> int:
    total = 0
    for raw in client.scan_iter(match="stream:*", _type="stream"):
        parsed = keys.parse_stream_key(raw.decode())
        if parsed and not parsed[0].startswith(("candles", "hist", "features")):
            total += client.xlen(raw)
    return total


def test_plain_tcp_on_every_interface_needs_insecure(qt: QtProcesses, tmp_path: Path) -> None:
    ports = Ports()
    args = ["feed", "--sim", "--stop-after", "5", "--rate", "0", "--journal", str(tmp_path / "j")]
    refused = qt.run(*args, *ports.feed_outs("0.0.0.0"))
    assert refused.returncode == 2, refused.output
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in refused.stderr
    assert "refusing to bind plain TCP" in errors[0] and "--insecure" in errors[0]
    allowed = qt.run(*args, *ports.feed_outs("0.0.0.0"), "--insecure")
    assert allowed.returncode == 0, allowed.output


def test_curve_feed_to_bridge_delivers_and_a_wrong_key_gets_nothing(
    qt: QtProcesses, tmp_path: Path, vk: valkey.Valkey, valkey_url: str
) -> None:
    secret = generate_keys(qt, tmp_path / "keys")
    wrong = generate_keys(qt, tmp_path / "wrong", "wrong")
    ports = Ports()
    good = qt.start(
        "bridge", *ports.bridge_ins(), "--out", valkey_url, "--json",
        "--curve-secret-key", str(secret),
    )  # fmt: skip
    stranger = qt.start(
        "bridge", *ports.bridge_ins(), "--out", valkey_url.rsplit("/", 1)[0] + "/1", "--json",
        "--name", "stranger", env={"QT_CURVE_SECRET_KEY": str(wrong)},
    )  # fmt: skip
    # a plain subscriber in the test, too
    plain = zmq.Context.instance().socket(zmq.SUB)
    plain.setsockopt(zmq.LINGER, 0)
    plain.setsockopt(zmq.SUBSCRIBE, b"")
    plain.connect(f"tcp://127.0.0.1:{ports.ticks}")
    try:
        eventually(lambda: vk.exists(keys.stats_key("bridge", "default")), timeout=60)
        feed = qt.run(
            "feed", "--sim", "--rate", "2000", "--stop-after", "1000", "--seed", "4",
            "--symbol", SYMBOL, "--journal", str(tmp_path / "journal"), "--linger", "3s",
            *ports.feed_outs("0.0.0.0"), "--json", env={"QT_CURVE_SECRET_KEY": str(secret)},
        )  # fmt: skip
        assert feed.returncode == 0, feed.output
        events = json.loads(feed.stdout)["events"]
        assert events == 1000
        eventually(lambda: stream_events(vk) == events, timeout=60, message="all stored")
        assert plain.poll(200) == 0
    finally:
        plain.close(linger=0)
        qt.stop(good, signal.SIGTERM)
        stranger_done = qt.stop(stranger, signal.SIGTERM)
    vk.select(1)
    assert stream_events(vk) == 0, stranger_done.output
    vk.select(0)


def test_bridge_without_the_key_option_file_is_one_clear_error(
    qt: QtProcesses, tmp_path: Path
) -> None:
    result = qt.run(
        "bridge", "--in", "tcp://127.0.0.1:1", "--curve-secret-key", str(tmp_path / "nope")
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("Error: --curve-secret-key")
    assert "qt keys generate" in result.stderr


# --- no secret anywhere -------------------------------------------------------------------------


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureValkey]:
    server = start_secure_valkey(tmp_path / "secure-valkey")
    yield server
    server.stop()


def argv_and_title(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    title = subprocess.run(
        ["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    comm = Path(f"/proc/{pid}/comm").read_text()
    return f"{cmdline}\n{title}\n{comm}"


def dump_everything(client: valkey.Valkey) -> str:
    """Every key of every database, whatever its type, as text."""
    parts: list[str] = []
    for db in range(16):
        client.select(db)
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            if kind == "stream":
                value: object = client.xrange(key)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "string":
                value = client.get(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "set":
                value = client.smembers(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            else:
                value = kind
            parts.append(f"{key!r} {value!r}")
    client.select(0)
    return "\n".join(parts)


def test_a_whole_secured_run_leaks_no_secret(
    qt: QtProcesses, tmp_path: Path, secure: SecureValkey
) -> None:
    secret_file = generate_keys(qt, tmp_path / "keys")
    curve_secret = zmq.auth.load_certificate(secret_file)[1].decode()
    secrets = {"valkey password": secure.password, "CURVE secret key": curve_secret}
    url = secure.url()
    env = {
        **secure.env(),
        "QT_CURVE_SECRET_KEY": str(secret_file),
        "QT_LOG_LEVEL": "debug",
        "QT_DATA_DIR": str(tmp_path / "data"),
    }
    ports = Ports()
    features_port = free_port()
    client = secure.client()
    bridge = qt.start("bridge", *ports.bridge_ins(), "--out", url, "--json", env=env)
    features = qt.start(
        "features", "--in", url, "--symbol", SYMBOL, "--every", "1s",
        "--out", url, "--out", f"tcp://0.0.0.0:{features_port}", "--json", env=env,
    )  # fmt: skip
    seen: list[str] = []
    outputs: list[str] = []
    try:
        eventually(lambda: client.exists(keys.stats_key("bridge", "default")), timeout=60)
        eventually(lambda: client.exists(keys.stats_key("features", "features")), timeout=60)
        feed = qt.start(
            "feed", "--sim", "--rate", "2000", "--stop-after", "1500", "--seed", "8",
            "--start", "2025-08-04",  # a past session: `--to now` holds it at any hour
            "--symbol", SYMBOL, "--journal", str(tmp_path / "journal"), "--linger", "2s",
            *ports.feed_outs("0.0.0.0"), "--json", env=env,
        )  # fmt: skip
        for proc in (bridge, features, feed):
            seen.append(argv_and_title(proc.pid))
        out, err = feed.communicate(timeout=90)
        outputs.append(out.decode() + err.decode())
        assert feed.returncode == 0, err.decode()
        events = json.loads(out)["events"]
        eventually(lambda: stream_events(client) == events, timeout=60, message="all stored")
        eventually(lambda: client.xlen(keys.stream_key("features", SYMBOL)) > 0, message="vectors")
        query = qt.run(
            "query", "--symbol", SYMBOL, "--from", "2000-01-01", "--to", "now",
            env={**env, "QT_VALKEY_URL": url},
        )  # fmt: skip
        assert query.returncode == 0 and query.stdout.count('"type":"tick"') > 0, query.output
        outputs.append(query.stdout + query.stderr)
    finally:
        for proc in (bridge, features):
            done = qt.stop(proc, signal.SIGTERM)
            outputs.append(done.stdout + done.stderr)
    stored = dump_everything(client)
    client.close()
    files = []
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.parent.name not in ("keys", "certs", "other"):
            if path.name in ("users.acl",):
                continue
            files.append((path, path.read_bytes()))
    assert any(p.suffix for p, _ in files)  # the journal and the server's files were read
    for what, secret in secrets.items():
        for text in seen:
            assert secret not in text, f"{what} in a process's argv or title"
        for text in outputs:
            assert secret not in text, f"{what} in a command's output or log"
        assert secret not in stored, f"{what} stored in Valkey"
        for path, data in files:
            assert secret.encode() not in data, f"{what} in {path}"
    assert "Traceback" not in "\n".join(outputs)


# --- qt up --------------------------------------------------------------------------------------


def every_interface_env() -> dict[str, str]:
    return {
        f"QT_{name}_ENDPOINT": f"tcp://0.0.0.0:{free_port()}"
        for name in ("TICKS", "BOOK", "HISTORY", "REPLAY", "SIGNALS")
    }


def test_up_passes_its_curve_key_to_every_stage(
    qt: QtProcesses, tmp_path: Path, vk: valkey.Valkey, valkey_url: str
) -> None:
    env = every_interface_env()
    args = ["up", "--sim", "--symbol", SYMBOL, "--rate", "1000", "--seed", "2"]
    check = qt.run(*args, "--check", env=env)
    assert check.returncode == 2, check.output
    assert "refusing to bind plain TCP" in check.stderr and "--insecure" in check.stderr
    secret = generate_keys(qt, tmp_path / "keys")
    finished = qt.run(
        *args, "--duration", "3s", "--json", "--curve-secret-key", str(secret), env=env, timeout=90
    )
    assert finished.returncode == 0, finished.output
    summary = json.loads(finished.stdout)
    feed = summary["stages"]["feed"]["totals"]
    assert feed["events"] > 0
    assert stream_events(vk) == feed["events"]  # the bridge heard the CURVE feed: every event
