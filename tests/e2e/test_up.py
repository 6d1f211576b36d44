"""`qt up` with real processes and a real Valkey: the pipeline ends by itself with every tick
stored once, a SIGKILLed stage is restarted without duplicates, SIGTERM stops the stages in order;
`--print` and `--check`."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import time
from pathlib import Path

import pytest
import valkey

from qt_cli.core import keys
from tests.core.test_models_bundle import write as write_model
from tests.e2e.test_bridge import event_streams, expected_pairs
from tests.helpers import Finished, QtProcesses, eventually, free_port, tcp_endpoint

pytestmark = pytest.mark.e2e

SYMBOLS = ("AAAA3", "BBBB4")
STAGES = ["feed", "bridge", "features"]


def endpoints_env() -> dict[str, str]:
    """Free ports for the feed's channels, so runs never meet another feed."""
    return {
        "QT_TICKS_ENDPOINT": tcp_endpoint(),
        "QT_BOOK_ENDPOINT": tcp_endpoint(),
        "QT_HISTORY_ENDPOINT": tcp_endpoint(),
        "QT_REPLAY_ENDPOINT": tcp_endpoint(),
        "QT_SIGNALS_ENDPOINT": tcp_endpoint(),
    }


def up_args(*extra: str, duration: str | None = "8s", rate: int = 2000) -> list[str]:
    args = ["up", "--sim", "--rate", str(rate), "--seed", "3", "--json"]
    for symbol in SYMBOLS:
        args += ["--symbol", symbol]
    if duration:
        args += ["--duration", duration]
    return [*args, *extra]


def stored_feed_pairs(vk: valkey.Valkey, feed: dict) -> list[tuple[str, int]]:
    """(session, seq) of every stored event of this feed run (the derived streams excluded)."""
    sessions = {ch["session"] for ch in feed["channels"].values()}
    pairs = []
    for key in event_streams(vk):
        for _, fields in vk.xrange(key):
            session = fields[b"session"].decode()
            if session in sessions:
                pairs.append((session, int(fields[b"seq"])))
    return sorted(pairs)


def assert_every_event_once(vk: valkey.Valkey, feed: dict) -> None:
    stored = stored_feed_pairs(vk, feed)
    assert len(stored) == len(set(stored)), "an event stored twice"
    assert stored == expected_pairs(feed), "an event missing"
    assert len(stored) == feed["events"]


def assert_outputs_for_every_symbol(vk: valkey.Valkey) -> None:
    for symbol in SYMBOLS:
        assert vk.xlen(keys.stream_key("ticks", symbol)) > 0, symbol
        assert vk.xlen(keys.stream_key(keys.candle_kind("1m"), symbol)) > 0, symbol
        assert vk.xlen(keys.stream_key("features", symbol)) > 0, symbol


def summary_of(finished) -> dict:
    assert finished.returncode == 0, finished.output
    assert "Traceback" not in finished.stderr, finished.stderr
    return json.loads(finished.stdout)


def test_up_runs_the_pipeline_and_ends_by_itself_with_every_tick_stored_once(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str
) -> None:
    finished = qt.run(*up_args(), env=endpoints_env(), timeout=60)
    summary = summary_of(finished)
    assert summary["stopped_by"] == "feed ended"
    assert summary["stop_order"] == STAGES
    stages = summary["stages"]
    assert list(stages) == STAGES
    for stage in STAGES:
        assert stages[stage]["exit_code"] == 0 and stages[stage]["restarts"] == 0, stage
    feed = stages["feed"]["totals"]
    assert feed["stopped_by"] == "duration" and feed["events"] > 5_000
    assert_every_event_once(vk, feed)
    assert stages["bridge"]["drained"] is True and stages["features"]["drained"] is True
    assert stages["bridge"]["totals"]["written"] == feed["events"]
    assert_outputs_for_every_symbol(vk)
    assert stages["features"]["totals"]["written"] == sum(
        vk.xlen(keys.stream_key("features", s)) for s in SYMBOLS
    )
    # Every child line is prefixed with its stage; qt up says which pid each stage got.
    for stage in STAGES:
        pid = stages[stage]["pid"]
        assert f"[up] started {stage} pid {pid}" in finished.stderr
    assert "[bridge] bridge default:" in finished.stderr
    assert "[features] features features:" in finished.stderr


def test_a_stage_killed_by_sigkill_is_restarted_and_ticks_stay_exactly_once(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str
) -> None:
    proc = qt.start(*up_args(duration="9s"), env=endpoints_env())
    stats = keys.stats_key("bridge", "default")
    eventually(lambda: int(vk.hget(stats, "written") or 0) > 500, timeout=30, message="stored")
    first_pid = int(vk.hget(stats, "pid"))
    os.kill(first_pid, signal.SIGKILL)
    eventually(
        lambda: int(vk.hget(stats, "pid") or 0) not in (0, first_pid),
        timeout=20,
        message="bridge restarted",
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    bridge = summary["stages"]["bridge"]
    assert bridge["restarts"] == 1 and bridge["pids"][0] == first_pid, bridge
    assert bridge["exit_code"] == 0
    assert "[up] bridge crashed (killed by SIGKILL)" in err.decode()
    assert summary["stages"]["feed"]["restarts"] == 0
    assert summary["stop_order"] == STAGES
    assert_every_event_once(vk, summary["stages"]["feed"]["totals"])
    assert_outputs_for_every_symbol(vk)


def test_sigterm_stops_the_stages_in_order_feed_first(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str
) -> None:
    proc = qt.start(*up_args(duration=None, rate=1000), env=endpoints_env())
    stats = keys.stats_key("features", "features")
    eventually(lambda: int(vk.hget(stats, "written") or 0) > 0, timeout=30, message="vectors")
    finished = qt.stop(proc, signal.SIGTERM, timeout=60)
    summary = summary_of(finished)
    assert summary["stopped_by"] == "SIGTERM"
    assert summary["stop_order"] == STAGES
    stages = summary["stages"]
    stopped = [stages[s]["stopped_ns"] for s in STAGES]
    assert stopped == sorted(stopped)
    assert stages["feed"]["totals"]["stopped_by"] == "signal"  # SIGINT from qt up
    for stage in STAGES:
        assert stages[stage]["exit_code"] == 0, stage
    assert stages["bridge"]["drained"] is True
    lines = [line for line in finished.stderr.splitlines() if line.startswith("[up] stopped")]
    assert [line.split()[2] for line in lines] == STAGES
    assert_every_event_once(vk, stages["feed"]["totals"])


def test_print_shows_one_shell_command_per_stage_and_starts_nothing(
    qt: QtProcesses, tmp_path: Path
) -> None:
    env = {**endpoints_env(), "QT_VALKEY_URL": "valkey://qt:s3cret@127.0.0.1:1/0"}
    model = tmp_path / "my model.qtm"
    finished = qt.run(*up_args("--print", "--model", str(model), "--alpha", "0.3"), env=env)
    assert finished.returncode == 0, finished.output
    lines = finished.stdout.splitlines()
    assert lines[0] == "# every stage needs QT_VALKEY_PASSWORD in its environment"
    commands = [shlex.split(line) for line in lines[1:]]
    assert [c[3] for c in commands] == ["feed", "bridge", "features", "predict"]
    assert all(c[:3] == ["qt", "--valkey", "valkey://qt@127.0.0.1:1/0"] for c in commands)
    assert "s3cret" not in finished.stdout + finished.stderr
    feed, bridge, features, predict = commands
    assert feed[4:12] == ["--sim", "--rate", "2000", "--seed", "3", "--alpha", "0.3", "--symbol"]
    assert f"ticks={env['QT_TICKS_ENDPOINT']}" in feed
    assert bridge[bridge.index("--replay") + 1] == env["QT_REPLAY_ENDPOINT"]
    assert features[features.index("--in") + 1] == "valkey://qt@127.0.0.1:1/0"
    assert predict[predict.index("--model") + 1] == str(model)
    assert predict[-2:] == ["--out", env["QT_SIGNALS_ENDPOINT"]]
    assert "--json" not in finished.stdout


@pytest.mark.parametrize("mode", ["--print", "run"])
def test_a_bad_symbol_is_refused_before_anything_starts(
    qt: QtProcesses, tmp_path: Path, mode: str
) -> None:
    env = {**endpoints_env(), "QT_DATA_DIR": str(tmp_path)}
    extra = ("--print",) if mode == "--print" else ()
    finished = qt.run(*up_args(*extra, "--symbol", "WDO Q25"), env=env)
    assert finished.returncode == 2, finished.output
    assert "'WDO Q25' is not a ticker symbol" in finished.stderr
    assert finished.stdout == ""  # no command printed
    assert "[up] started" not in finished.stderr  # no stage, no managed Valkey
    assert not (tmp_path / "valkey").exists()


def write_pipeline(path: Path, valkey_url: str, model: str = "", **endpoints: str) -> Path:
    ends = {
        "ticks": tcp_endpoint(),
        "book": tcp_endpoint(),
        "history": tcp_endpoint(),
        "replay": tcp_endpoint(),
        **endpoints,
    }
    table = "\n".join(f'{name} = "{uri}"' for name, uri in ends.items())
    path.write_text(
        f"""source = "sim"
symbols = ["AAAA3", "BBBB4"]
valkey = "{valkey_url}"
set = "qt"
every = "1s"
rate = 500
{f'model = "{model}"' if model else ""}

[endpoints]
{table}

[args]
bridge = ["--timeframe", "1m,5m"]
"""
    )
    return path


def test_check_accepts_a_good_file(qt: QtProcesses, tmp_path: Path, valkey_url: str) -> None:
    model, _, _ = write_model(tmp_path, "logreg")
    path = write_pipeline(tmp_path / "pipeline.toml", valkey_url, model=str(model))
    finished = qt.run("up", "-f", str(path), "--check")
    assert finished.returncode == 0, finished.output
    assert "ready to start" in finished.stderr
    assert "ok: valkey" in finished.stderr and "Error" not in finished.stderr
    assert f"ok: model {model}: verified" in finished.stderr
    assert "ok: endpoint signals" in finished.stderr  # predict binds it: checked free
    printed = qt.run("up", "-f", str(path), "--print")
    assert "--timeframe 1m,5m" in printed.stdout and "--rate 500" in printed.stdout
    assert f"predict --model {model}" in printed.stdout


def test_check_names_each_problem_on_one_line(qt: QtProcesses, tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    try:
        nobody = f"valkey://127.0.0.1:{free_port()}/0"
        junk = tmp_path / "junk.qtm"
        junk.write_bytes(b"not a bundle")
        path = write_pipeline(
            tmp_path / "bad.toml",
            nobody,
            model=str(junk),
            ticks="tcp://127.0.0.1:notaport",
            book=f"tcp://127.0.0.1:{busy_port}",
        )
        path.write_text(path.read_text().replace('set = "qt"', 'set = "qt9"'))
        started = time.monotonic()
        finished = qt.run("up", "-f", str(path), "--check")
        assert time.monotonic() - started < 20
    finally:
        busy.close()
    assert finished.returncode != 0
    errors = [line for line in finished.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 5, finished.stderr
    assert errors[0].startswith("Error: feature set: unknown feature set 'qt9'")
    assert "port 'notaport' is not a number" in errors[1]
    assert f"port {busy_port} is in use" in errors[2]
    assert "cannot reach Valkey" in errors[3]
    assert errors[4].startswith(f"Error: model {junk}: ")
    assert not (tmp_path / "qt-data" / "journal").exists()  # nothing was started


def test_a_bad_pipeline_file_is_one_line(qt: QtProcesses, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('source = "sim"\nsymbol = ["X"]\n')
    finished = qt.run("up", "-f", str(path), "--check")
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == [
        f"Error: {path}: unknown key 'symbol' (known: source, dll, replay, symbols, valkey, set, "
        "every, model, duration, rate, seed, alpha, endpoints, args; see docs/up.md)"
    ]
    path.write_text("source = \n")
    finished = qt.run("up", "-f", str(path), "--print")
    assert finished.returncode == 2
    assert finished.stderr.startswith(f"Error: {path}: not valid TOML")
    assert len(finished.stderr.strip().splitlines()) == 1


def test_monitor_runs_in_the_foreground_and_the_stage_logs_go_to_files(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, isolated_settings: Path
) -> None:
    args = [a for a in up_args(duration="3s", rate=1000) if a != "--json"]
    finished = qt.run(*args, "--monitor", env=endpoints_env(), timeout=60)
    assert finished.returncode == 0, finished.output
    log_dir = isolated_settings / "up" / "logs"
    assert f"stage logs: {log_dir}/<stage>.log" in finished.stderr
    assert "qt monitor" in finished.stdout and "Pipeline" in finished.stdout  # its frames
    for stage in STAGES:
        text = (log_dir / f"{stage}.log").read_text()
        assert f"[{stage}] " in text, stage
        assert f"[{stage}] " not in finished.stderr  # in the file, not over the dashboard
    assert "[up] started bridge pid" in (log_dir / "up.log").read_text()
    assert "[up] bridge: exit 0, restarts 0" in finished.stderr  # the summary after it
    refused = qt.run(*up_args(), "--monitor")
    assert refused.returncode == 2 and "choose one" in refused.stderr


def test_a_stage_failing_on_its_arguments_is_not_restarted_and_stops_the_pipeline(
    qt: QtProcesses, tmp_path: Path, vk: valkey.Valkey, valkey_url: str
) -> None:
    path = write_pipeline(tmp_path / "p.toml", valkey_url)
    path.write_text(path.read_text().replace('"1m,5m"', '"7parsecs"'))
    finished = qt.run("up", "-f", str(path), "--json", env=endpoints_env(), timeout=60)
    assert finished.returncode == 2, finished.output
    summary = json.loads(finished.stdout)
    assert summary["stopped_by"] == "bridge failed" and summary["exit_code"] == 2
    bridge = summary["stages"]["bridge"]
    assert bridge["exit_code"] == 2 and bridge["restarts"] == 0
    assert "[bridge] Error:" in finished.stderr
    assert "[up] bridge failed (exit 2); a restart would too" in finished.stderr
    assert summary["stages"]["feed"]["pids"] == []  # the feed is started once the others run
    assert summary["stages"]["features"]["exit_code"] == 0  # stopped cleanly all the same


def test_no_stage_outlives_a_killed_qt_up(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str
) -> None:
    proc = qt.start(*up_args(duration=None, rate=500), env=endpoints_env())
    stats = keys.stats_key("bridge", "default")
    eventually(lambda: int(vk.hget(stats, "written") or 0) > 0, timeout=30, message="flowing")
    proc.send_signal(signal.SIGKILL)  # no ordered stop: the stages must not be left running
    _, err = proc.communicate(timeout=10)
    pids = [int(line.split()[-1]) for line in err.decode().splitlines() if " pid " in line]
    assert len(pids) == 3, err.decode()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    try:
        eventually(lambda: all(gone(p) for p in pids), timeout=20, message="stages ended")
    finally:
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_pipeline_file_replaying_a_recording_ends_at_its_end(
    qt: QtProcesses, tmp_path: Path, vk: valkey.Valkey, valkey_url: str
) -> None:
    recording = tmp_path / "recorded.jsonl"
    made = qt.run(
        "feed", "--sim", "--symbol", "AAAA3", "--rate", "0", "--stop-after", "3000",
        "--seed", "5", "--out", str(recording), "--out", "replay=none",
    )  # fmt: skip
    assert made.returncode == 0, made.output
    path = tmp_path / "replay.toml"
    ends = "\n".join(f'{k} = "{tcp_endpoint()}"' for k in ("ticks", "book", "history", "replay"))
    path.write_text(
        f'source = "replay"\nreplay = "{recording}"\nsymbols = ["AAAA3"]\n'
        f'valkey = "{valkey_url}"\n\n[endpoints]\n{ends}\n\n'
        '[args]\nfeed = "--speed 10 --fsync none"\n'  # 30 s of recorded market in 3 s
    )
    summary = summary_of(qt.run("up", "-f", str(path), "--json", timeout=60))
    assert summary["stopped_by"] == "feed ended" and summary["stop_order"] == STAGES
    feed = summary["stages"]["feed"]["totals"]
    assert feed["source"] == "replay" and feed["events"] == 3000
    # Replayed records are stored under their own identities (not the feed run's sessions).
    stored = []
    for key in event_streams(vk):
        if keys.parse_stream_key(key)[0] != "features":
            stored += [(f[b"session"], f[b"seq"]) for _, f in vk.xrange(key)]
    assert len(stored) == len(set(stored)) == 3000
    assert summary["stages"]["bridge"]["drained"] is True
    assert vk.xlen(keys.stream_key("features", "AAAA3")) > 0


def test_with_a_model_predict_scores_every_warm_vector_once_across_a_sigkill(
    qt: QtProcesses, tmp_path: Path, vk: valkey.Valkey, valkey_url: str
) -> None:
    model, _, _ = write_model(tmp_path, "logreg")
    proc = qt.start(
        *up_args("--model", str(model), "--every", "250ms", duration="8s"), env=endpoints_env()
    )
    stats = keys.stats_key("predict", "predict")
    eventually(lambda: int(vk.hget(stats, "written") or 0) > 5, timeout=30, message="signals")
    first_pid = int(vk.hget(stats, "pid"))
    os.kill(first_pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    finished = Finished([], proc.returncode, out.decode(), err.decode())
    summary = summary_of(finished)
    stages = summary["stages"]
    assert summary["stopped_by"] == "feed ended"
    assert summary["stop_order"] == [*STAGES, "predict"] == list(stages)
    assert all(s["exit_code"] == 0 for s in stages.values()), stages
    assert stages["predict"]["restarts"] == 1 and stages["predict"]["pids"][0] == first_pid
    assert "[up] predict crashed (killed by SIGKILL)" in finished.stderr
    assert stages["predict"]["drained"] is True
    assert_every_event_once(vk, stages["feed"]["totals"])
    predict = stages["predict"]["totals"]
    vectors = sum(vk.xlen(keys.stream_key("features", s)) for s in SYMBOLS)
    signals = sum(vk.xlen(keys.stream_key("signals", s)) for s in SYMBOLS)
    warm = 0
    for symbol in SYMBOLS:
        for _, fields in vk.xrange(keys.stream_key("features", symbol)):
            warm += fields[b"warm"] in (b"1", b"true", b"True")
    assert 0 < predict["vectors"] <= vectors  # the totals are the restarted run's
    assert signals == warm > 0  # every warm vector scored, once, across the kill
    for symbol in SYMBOLS:
        ids = [(f[b"session"], f[b"seq"]) for _, f in vk.xrange(keys.stream_key("signals", symbol))]
        assert len(ids) == len(set(ids)), symbol
    for symbol in SYMBOLS:
        assert vk.xlen(keys.stream_key("predictions", symbol)) > 0, symbol
    assert "[predict] " in finished.stderr
    latencies = assert_lineage(vk)
    assert len(latencies) == signals
    # Every signal comes after its tick; half within a few seconds, though the predict stage
    # was killed and restarted (0.5 s backoff, a second of start-up) and vectors close every
    # 250 ms of event time.
    assert min(latencies) > 0 and sorted(latencies)[len(latencies) // 2] < 5_000


def assert_lineage(vk: valkey.Valkey) -> list[float]:
    """Each signal traces back to its feature vector and its tick, every derived stream is in
    event-time order; returns each signal's tick -> signal latency in ms (signal ts_init - tick
    ts_init, both stamped on this host)."""
    from qt_cli.core.events import decode_fields

    out = []
    for symbol in SYMBOLS:
        for kind in ("candles:1m", "features", "predictions", "signals"):
            times = [int(f[b"ts_event"]) for _, f in vk.xrange(keys.stream_key(kind, symbol))]
            assert times == sorted(times), (kind, symbol)
        ticks = {}
        for _, f in vk.xrange(keys.stream_key("ticks", symbol)):
            tick = decode_fields(f)
            ticks[(tick.session, tick.seq)] = tick
        vectors = {}
        for _, f in vk.xrange(keys.stream_key("features", symbol)):
            vector = decode_fields(f)
            vectors[(vector.session, vector.seq)] = vector
        for _, f in vk.xrange(keys.stream_key("signals", symbol)):
            sig = decode_fields(f)
            vector_session, rest = sig.session.rsplit("/", 1)  # <vector session>/<model>.signal
            assert rest.endswith(".signal"), sig.session
            vector = vectors[(vector_session, sig.seq)]
            assert vector.warm and vector.ts_event == sig.ts_event
            tick = ticks[(vector_session.removeprefix("features."), sig.seq)]
            assert tick.ts_event == vector.ts_event and tick.symbol == symbol
            out.append((sig.ts_init - tick.ts_init) / 1e6)
    return out


def test_the_valkey_password_reaches_the_stages_through_the_environment_only(
    qt: QtProcesses, vk: valkey.Valkey, valkey_url: str, valkey_server
) -> None:
    secret = "pw-9f1c"
    vk.config_set("requirepass", secret)
    authed = valkey.Valkey(host="127.0.0.1", port=valkey_server.port, password=secret)
    try:
        env = {
            **endpoints_env(),
            "QT_VALKEY_URL": f"valkey://:{secret}@127.0.0.1:{valkey_server.port}/0",
        }
        proc = qt.start(*up_args(duration=None, rate=500), env=env)
        stats = keys.stats_key("features", "features")
        eventually(lambda: int(authed.hget(stats, "written") or 0) > 0, timeout=30, message="up")
        pids = [int(authed.hget(keys.stats_key(s, n), "pid")) for s, n in
                (("bridge", "default"), ("features", "features"))]  # fmt: skip
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"--valkey" in argv and not any(secret.encode() in a for a in argv), argv
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"QT_VALKEY_PASSWORD={secret}".encode() in environ
        finished = qt.stop(proc, signal.SIGTERM, timeout=60)
        summary = summary_of(finished)
        assert secret not in finished.stderr + finished.stdout
        assert summary["stop_order"] == STAGES
    finally:
        authed.config_set("requirepass", "")
        authed.close()
