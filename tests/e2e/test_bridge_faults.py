"""Faults with real processes (`qt feed --sim` -> `qt bridge` -> a valkey-server of the test's own):
a Valkey that comes back with less than it acknowledged, and a full spill disk (issue 12)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import valkey

from qt_cli.core.store.managed import ManagedValkey
from tests.e2e import test_bridge as base
from tests.e2e.test_bridge import (
    N,
    Pipeline,
    assert_candles_and_chunks_match,
    expected_pairs,
    stored_count,
    stored_pairs,
)
from tests.helpers import (
    QtProcesses,
    eventually,
    free_port,
    kill_valkey,
    last_incr_aof,
    mount_small_tmpfs,
)

pytestmark = pytest.mark.e2e

pipeline = base.pipeline  # the fixture: endpoints, journal and replay endpoint of one run


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ManagedValkey]:
    server = ManagedValkey(tmp_path / "own-valkey", port=free_port())
    server.start()
    yield server
    server.stop()


def test_valkey_killed_with_the_tail_of_its_aof_cut_comes_back_exact_from_the_journal(
    qt: QtProcesses, pipeline: Pipeline, own_server: ManagedValkey
) -> None:
    status = own_server.status()
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    try:
        bridge = qt.start(*pipeline.bridge_args(status.url))
        feed_proc = qt.start(*pipeline.feed_args(rate=5_000))
        eventually(lambda: stored_count(client) >= 3_000, timeout=30, message="some stored")
        aof = last_incr_aof(own_server)
        kept = aof.stat().st_size
        eventually(lambda: stored_count(client) >= 8_000, timeout=30, message="~1 s more stored")
        acknowledged = stored_count(client)
        kill_valkey(own_server)
        with aof.open("r+b") as handle:  # the last second never reached the disk
            handle.truncate(kept)
        own_server.start()
        after_restart = stored_count(client)
        print(f"measured: acknowledged {acknowledged}, after restart {after_restart}")  # noqa: T201 - docs/RELIABILITY.md
        assert 0 < after_restart < acknowledged
        feed_out, feed_err = feed_proc.communicate(timeout=60)
        assert feed_proc.returncode == 0, feed_err
        feed = json.loads(feed_out)
        eventually(lambda: stored_count(client) == N, timeout=60, message="all stored")
        finished = qt.stop(bridge, signal.SIGTERM)
        assert finished.returncode == 0, finished.output
        totals = json.loads(finished.stdout)
        assert "no longer holds what it acknowledged" in finished.stderr
        assert totals["gaps_lost"] == 0 and totals["outages"] >= 1
        assert stored_pairs(client) == expected_pairs(feed)  # none lost, none twice
        assert_candles_and_chunks_match(client)
    finally:
        client.close()


def test_a_full_spill_disk_keeps_the_bridge_running_and_a_restart_works(
    qt: QtProcesses, pipeline: Pipeline, own_server: ManagedValkey, isolated_settings: Path
) -> None:
    spill_dir = isolated_settings / "bridge"  # <data dir>/bridge: on a 2 MiB tmpfs
    unmount = mount_small_tmpfs(spill_dir)
    status = own_server.status()
    client = valkey.Valkey(host="127.0.0.1", port=status.port)
    try:
        bridge = qt.start(*pipeline.bridge_args(status.url, "--buffer", "1000"))
        feed_proc = qt.start(*pipeline.feed_args(rate=5_000))
        eventually(lambda: stored_count(client) >= 2_000, timeout=30, message="some stored")
        own_server.stop()
        feed_out, feed_err = feed_proc.communicate(timeout=60)
        assert feed_proc.returncode == 0, feed_err
        feed = json.loads(feed_out)
        assert bridge.poll() is None, "the bridge died on the full disk"
        finished = qt.stop(bridge, signal.SIGTERM)
        assert finished.returncode == 0, finished.output
        totals = json.loads(finished.stdout)  # the totals, even so
        spill = spill_dir / "default.spill"
        full = [line for line in finished.stderr.splitlines() if "No space left" in line]
        assert len(full) == 1 and str(spill) in full[0], finished.stderr  # once, with the path
        assert totals["spill_dropped"] > 0 and spill.exists()
        print(f"measured: spill_dropped {totals['spill_dropped']}, spilled {totals['spilled']}")  # noqa: T201 - docs/RELIABILITY.md
        own_server.start()
        second = qt.start(*pipeline.bridge_args(status.url))  # the spill file is still full
        eventually(lambda: stored_count(client) == N, timeout=60, message="all stored")
        finished = qt.stop(second, signal.SIGTERM)
        assert finished.returncode == 0, finished.output
        assert json.loads(finished.stdout)["gaps_lost"] == 0
        assert stored_pairs(client) == expected_pairs(feed)
        assert not spill.exists()
    finally:
        client.close()
        unmount()
