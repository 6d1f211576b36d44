"""The stage runtime with real processes: consumer-group workers over Valkey, killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import valkey

from qt_cli.core import keys
from qt_cli.core.events import NS_PER_MS, Trade
from qt_cli.core.stage.derived import derived_session
from qt_cli.core.store.writer import StreamWriter
from tests.helpers import eventually

WORKER = Path(__file__).resolve().parents[1] / "stage" / "worker.py"
ROOT = Path(__file__).resolve().parents[2]
SYMBOL = "WDOQ25"
IN_KEY = keys.stream_key("ticks", SYMBOL)
OUT_KEY = keys.stream_key("test", SYMBOL)
BASE_MS = 1_751_374_800_000  # 2025-07-01 13:00 UTC


def seed_ticks(vk: valkey.Valkey, n: int) -> list[str]:
    """n ticks in stream:ticks:{SYM}, several per ms (ids <ms>-<k>); their entry ids."""
    trades = [
        Trade(
            symbol=SYMBOL,
            ts_event=(BASE_MS + i // 3) * NS_PER_MS,
            price=5000.0 + i % 50,
            quantity=1,
            session="seed.ticks",
            seq=i + 1,
        )
        for i in range(n)
    ]
    results = StreamWriter(vk, maxlen=0).append_events(trades)
    assert sum(r.written for r in results) == n
    return [e[0].decode() for e in vk.xrange(IN_KEY)]


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


def start_worker(
    procs: list, url: str, consumer: str, delay_ms: float = 1.0
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), url, SYMBOL, "g", consumer, str(delay_ms)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    procs.append(proc)
    return proc


def stop_worker(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> dict:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()
    return orjson.loads(out.splitlines()[-1])


def assert_derived_exactly_once(vk: valkey.Valkey, input_ids: list[str]) -> None:
    """One derived entry per input entry, none twice, written in input order."""
    out = vk.xrange(OUT_KEY)
    srcs = [fields[b"src"].decode() for _, fields in out]
    assert len(srcs) == len(set(srcs)), "an input entry was derived twice"
    assert set(srcs) == set(input_ids), f"missing: {sorted(set(input_ids) - set(srcs))[:5]}"
    assert srcs == input_ids  # in input order: the high-water mark skipped nothing
    session = derived_session("test", "seed.ticks")  # the input's own identity
    seqs = [int(fields[b"seq"]) for _, fields in out]
    assert seqs == list(range(1, len(input_ids) + 1))
    assert {fields[b"session"].decode() for _, fields in out} == {session}
    assert vk.hget(keys.hwm_key(OUT_KEY), session) == str(seqs[-1]).encode()


def wait_until_done(vk: valkey.Valkey, n: int) -> None:
    """Every input entry derived and acknowledged (the state is in the message otherwise)."""
    state: dict = {}

    def done() -> bool:
        state.update(
            output=vk.xlen(OUT_KEY),
            pending=vk.xpending(IN_KEY, "g"),
            consumers=vk.xinfo_consumers(IN_KEY, "g"),
        )
        return state["output"] == n and state["pending"]["pending"] == 0

    try:
        eventually(done, timeout=60, message="all entries derived and acked")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {state}") from None


def test_three_group_consumers_one_killed_every_entry_derived_once(
    vk: valkey.Valkey, valkey_url: str, workers: list
) -> None:
    ids = seed_ticks(vk, 3000)
    a = start_worker(workers, valkey_url, "a")
    b = start_worker(workers, valkey_url, "b")
    c = start_worker(workers, valkey_url, "c")
    # a has taken entries and stored some of their results: kill it mid-run.
    eventually(
        lambda: (
            vk.xlen(OUT_KEY) >= 300
            and any(x["name"] == b"a" and x["pending"] for x in vk.xinfo_consumers(IN_KEY, "g"))
        ),
        timeout=30,
        message="worker a holds entries mid-run",
    )
    os.killpg(a.pid, signal.SIGKILL)
    a.communicate(timeout=10)
    assert vk.xlen(OUT_KEY) < 3000, "the run was over before the kill"
    wait_until_done(vk, 3000)
    totals = [stop_worker(p) for p in (b, c)]
    assert all(t["stopped_by"] == "SIGINT" for t in totals)
    assert sum(t["claimed"] for t in totals) > 0, "a's entries were taken over"
    assert_derived_exactly_once(vk, ids)


def test_a_derived_stage_killed_and_restarted_writes_no_duplicate_and_no_gap(
    vk: valkey.Valkey, valkey_url: str, workers: list
) -> None:
    ids = seed_ticks(vk, 2000)
    first = start_worker(workers, valkey_url, "solo")
    eventually(lambda: vk.xlen(OUT_KEY) >= 200, timeout=30, message="some output")
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=10)
    assert vk.xlen(OUT_KEY) < 2000, "the run was over before the kill"
    again = start_worker(workers, valkey_url, "solo", delay_ms=0)
    wait_until_done(vk, 2000)
    totals = stop_worker(again, signal.SIGTERM)
    assert totals["stopped_by"] == "SIGTERM"
    assert 0 < totals["acked"] < 2000  # what the first run had not acknowledged
    assert_derived_exactly_once(vk, ids)
    stats = vk.hgetall(keys.stats_key("test", "solo"))
    assert stats[b"stage"] == b"test" and stats[b"group"] == b"g"
