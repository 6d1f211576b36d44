"""`qt up`'s pipeline description: the example file, the stage command lines, the password kept
out of argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from qt_cli.core import config
from qt_cli.core.errors import UsageError
from qt_cli.core.pipeline.spec import (
    override,
    spec_from_file,
    split_password,
    stage_commands,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_pipeline_file_reads_into_the_stage_commands() -> None:
    spec = spec_from_file(ROOT / "examples" / "pipeline.toml")
    assert spec.symbols == ("WDOQ25", "WINQ25") and spec.rate == 2000 and spec.seed == 7
    commands = stage_commands(spec, spec.valkey, config.load_settings(environ={}))
    assert [c.stage for c in commands] == ["feed", "bridge", "features"]
    feed, bridge, features = (c.args for c in commands)
    assert feed[:3] == ("--valkey", "valkey://127.0.0.1:6379/0", "feed")
    assert ("--fsync", "none") == feed[-3:-1] and feed[-1] == "--json"
    assert "--timeframe" in bridge and bridge[bridge.index("--replay") + 1] == (
        "tcp://127.0.0.1:5559"
    )
    assert features.count("--symbol") == 2
    with_model = override(spec, model="m.qtm", symbols=["X1"])
    predict = stage_commands(with_model, "valkey://h:1/0", config.load_settings(environ={}))[-1]
    assert predict.stage == "predict" and predict.stats_name == "predict"
    assert predict.args[3:] == (
        "--model", "m.qtm", "--in", "valkey://h:1/0", "--symbol", "X1",
        "--out", "valkey://h:1/0", "--out", "tcp://127.0.0.1:5558", "--json",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "bare", "secret"),
    [
        ("valkey://u:p%40ss@h:6379/0", "valkey://u@h:6379/0", "p@ss"),
        ("valkey://:pw@h:1/2", "valkey://h:1/2", "pw"),
        ("valkeys://h:1/0", "valkeys://h:1/0", ""),
        ("unix:///run/v.sock?db=1", "unix:///run/v.sock?db=1", ""),
    ],
)
def test_the_password_is_split_off_the_url(url: str, bare: str, secret: str) -> None:
    assert split_password(url) == (bare, secret)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('source = "tape"\n', "source 'tape': choose one of sim, dll, replay"),
        ('source = "replay"\n', 'source "replay" needs replay = "PATH"'),
        ("[endpoints]\nticks = 5555\n", "endpoint ticks: expected a string URI"),
        ("[endpoints]\nsignal = 'tcp://x:1'\n", "unknown endpoint 'signal'"),
        ("[args]\nmonitor = []\n", "[args] 'monitor': choose among feed, bridge"),
        ("rate = 'fast'\n", "rate: expected a number"),
    ],
)
def test_a_bad_file_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        spec_from_file(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_stage_lines_are_prefixed_coloured_on_a_terminal_and_filed_under_monitor(
    tmp_path: Path,
) -> None:
    import io

    from qt_cli.core.pipeline import LineSink

    plain, coloured = io.StringIO(), io.StringIO()
    LineSink(plain, colour=False)("bridge", "received 10")
    LineSink(coloured, colour=True)("bridge", "received 10")
    assert plain.getvalue() == "[bridge] received 10\n"
    assert coloured.getvalue() == "\x1b[33m[bridge]\x1b[0m received 10\n"
    filed = io.StringIO()
    sink = LineSink(filed, colour=True, log_dir=tmp_path / "logs")
    sink("feed", "published 5")
    sink("up", "started feed pid 1")
    sink.close()
    assert filed.getvalue() == ""
    assert (tmp_path / "logs" / "feed.log").read_text().endswith(" [feed] published 5\n")
    assert (tmp_path / "logs" / "up.log").read_text().endswith(" [up] started feed pid 1\n")
