"""Random and hostile strings at every option and argument of every command (hypothesis, typer's
CliRunner): the exit code is one of ours, a failure is one `Error:` or usage line, and nothing
ever shows a traceback or an unexpected exception.

Each command runs with base arguments that bound it (a tiny simulation, a file input, `--print`,
a backtest of an empty store, `--dry-run`, a short `--duration`), so a value that happens to be
valid ends quickly; the option under test replaces its base value. Values that name absolute
paths, parent folders or ipc sockets are left out: the tests run as root in a shared machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qt_cli.app import app
from qt_cli.core.errors import ExitCode

EXAMPLES = int(os.environ.get("QT_FUZZ_OPTION_EXAMPLES", "4"))
EXIT_CODES = {int(code) for code in ExitCode}

hostile_values = st.one_of(
    st.text(max_size=24),
    st.sampled_from(
        [
            "",
            " ",
            "-",
            "--",
            "0",
            "-1",
            "1e309",
            "nan",
            "inf",
            "-inf",
            "9" * 40,
            "0x10",
            "\x00",
            "é",
            "a:b{c}",
            "WDO}Q25",
            "tcp://",
            "tcp://*:0",
            "valkey://",
            "valkey://:@:0",
            "1m,,",
            "5",
            "1s",
            "=",
            "k=",
            "=v",
            "ticks=-1",
            "%s%n",
            "{}",
            "[]",
            "null",
            "2025-13-45",
            "-999999d",
            "none",
            "--help",
            "-h",
            "\n",
            "x" * 300,
        ]
    ),  # fmt: skip
).filter(lambda v: not v.lstrip().startswith(("/", "~")) and ".." not in v and "ipc" not in v)


def bounded(target: str) -> st.SearchStrategy[str]:
    """The values for `target`; for the options that bound a run, none that is a long valid one
    (a `--duration 9999d` is the user's wish, not hostile input)."""
    if target in ("--duration", "--stop-after", "--refresh"):
        return hostile_values.filter(lambda v: not runs_long(v))
    return hostile_values


def runs_long(value: str) -> bool:
    from qt_cli.core.timeparse import parse_duration_s

    try:
        return parse_duration_s(value) > 2 or int(value) > 100
    except Exception:
        try:
            return int(value) > 100
        except ValueError:
            return False


def leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    subs = getattr(command, "commands", None)
    if subs:
        if getattr(command, "invoke_without_command", False) and path:
            yield path, command  # a group that runs by itself too (qt features)
        for name, sub in subs.items():
            yield from leaves(sub, (*path, name))
    else:
        yield path, command


ROOT = typer.main.get_command(app)
# (command path, option or argument name, takes a value): every one that takes a value.
TARGETS = [
    (path, param.opts[0] if param.param_type_name == "option" else param.name)
    for path, command in leaves(ROOT)
    for param in command.params
    if not getattr(param, "is_flag", False)
    and param.param_type_name in ("option", "argument")
    and param.opts[0] not in ("--help", "-h")
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.core.test_models_bundle import write

    return write(tmp_path_factory.mktemp("model"), "logreg")[0]


def base_args(path: tuple[str, ...], tmp: Path, url: str, bundle: Path) -> dict[str, list[str]]:
    """Option -> values that bound a run of `qt <path>` (an option given several times has a
    list), plus "" for the positional arguments."""
    ticks = tmp / "ticks.jsonl"
    if not ticks.exists():
        ticks.write_bytes(
            orjson.dumps(
                {
                    "type": "tick",
                    "symbol": "WDOQ25",
                    "ts_event": 1_754_654_400 * 10**9,
                    "price": 1.0,
                }
            )
            + b"\n"
        )
    return {
        ("up",): {"--print": [], "--duration": ["1s"]},
        ("feed",): {
            "--sim": [], "--rate": ["0"], "--stop-after": ["5"], "--duration": ["1s"],
            "--out": ["-"], "--journal": [str(tmp / "journal")], "--fsync": ["none"],
        },
        ("bridge",): {
            "--in": [str(ticks)], "--out": [url], "--duration": ["1s"], "--stop-after": ["5"],
            "--replay": ["none"],
        },
        ("query",): {"--symbol": ["WDOQ25"], "--from": ["-1h"]},
        ("train",): {"--symbol": ["WDOQ25"], "--from": ["-1h"], "--output": ["m.qtm"]},
        ("predict",): {"--model": [str(bundle)], "--symbol": ["WDOQ25"], "--from": ["-1h"]},
        ("cleanup",): {"--dry-run": [], "--max-entries": ["1000000"]},
        ("monitor",): {"--duration": ["0.3s"]},
        ("features",): {"--symbol": ["WDOQ25"], "--from": ["-1h"], "--output": ["f.parquet"]},
        ("models", "import"): {"--estimator": ["nothing.pkl"]},
    }.get(path, {})  # fmt: skip


def command_line(path: tuple[str, ...], target: str, value: str, base: dict) -> list[str]:
    args = list(path)
    for option, values in base.items():
        if option == target:
            continue
        args += [option, *values] if values else [option]
        if len(values) > 1:
            raise AssertionError("one value per base option")
    if target.startswith("-"):
        args += [target, value]
    else:
        args += ["--", value]  # a positional argument, even one that looks like an option
    return args


@pytest.mark.parametrize(
    ("path", "target"), TARGETS, ids=[f"{' '.join(p)} {t}" for p, t in TARGETS]
)
def test_a_hostile_value_is_an_error_line_or_a_run_never_a_traceback(
    path: tuple[str, ...],
    target: str,
    valkey_url: str,
    tmp_path: Path,
    bundle: Path,
) -> None:
    base = base_args(path, tmp_path, valkey_url, bundle)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(bounded(target))
    def run(value: str) -> None:
        runner = CliRunner()
        args = command_line(path, target, value, base)
        result = runner.invoke(app, args, catch_exceptions=True)
        shown = f"qt {args!r}\nexit {result.exit_code}\n{result.output}"
        assert result.exit_code in EXIT_CODES, shown
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            shown + f"\n{result.exception!r}"
        )
        assert "Traceback" not in result.output, shown
        assert "run with --log-level debug for details" not in result.output, shown  # a crash
        if result.exit_code != 0:
            assert "Error" in result.output or "Usage" in result.output, shown

    run()


def test_every_command_that_takes_values_is_fuzzed() -> None:
    commands = {path for path, _ in TARGETS}
    assert {("feed",), ("bridge",), ("features",), ("predict",), ("query",), ("up",)} <= commands
    assert len(TARGETS) >= 90


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (  # infinity made the batch wait overflow the clock ("unexpected OverflowError")
            ["bridge", "--in", "{ticks}", "--batch-ms", "inf"],
            "--batch-ms inf: give milliseconds from 0 to 60,000",
        ),
        (
            ["bridge", "--in", "{ticks}", "--batch-ms", "1e308"],
            "--batch-ms 1e+308: give milliseconds from 0 to 60,000",
        ),
        (  # a start before 1970 crashed the encoder ("Integer exceeds 64-bit range")
            ["feed", "--sim", "--start", "-130000d", "--stop-after", "1", "--out", "-"],
            "time '-130000d' is before 1970: give one from 1970 to 2200 (the event times qt "
            "stores)",
        ),
        (
            ["feed", "--sim", "--start", "2199-06-01", "--stop-after", "1", "--out", "-"],
            "--start in 2199: give a time from 2000 to 2198 (the times the stages store)",
        ),
        (
            ["feed", "--sim", "--start", "1999-06-01", "--stop-after", "1", "--out", "-"],
            "--start in 1999: give a time from 2000 to 2198 (the times the stages store)",
        ),
        (  # "unexpected ValueError: year 0 is out of range"
            ["train", "--symbol", "WDOQ25", "--from", "-1h", "--to", "-740000d", "-o", "m.qtm"],
            "time '-740000d' is before 1970: give one from 1970 to 2200 (the event times qt "
            "stores)",
        ),
        (
            ["query", "--symbol", "WDOQ25", "--from", "2300-01-01"],
            "time '2300-01-01' is after 2200: give one from 1970 to 2200 (the event times qt "
            "stores)",
        ),
        (  # NaN passed the `speed < 0` check
            ["feed", "--replay", "{ticks}", "--speed", "nan", "--out", "-"],
            "--speed nan: must be 0 (as fast as possible) or positive",
        ),
    ],
)
def test_values_that_used_to_crash_are_one_error_line(
    args: list[str], message: str, tmp_path: Path, valkey_url: str, bundle: Path
) -> None:
    ticks = base_args(("bridge",), tmp_path, valkey_url, bundle)["--in"][0]
    result = CliRunner().invoke(app, [a.replace("{ticks}", ticks) for a in args])
    assert result.exit_code in (ExitCode.USAGE, ExitCode.ERROR), result.output
    assert result.output.strip().splitlines()[-1] == f"Error: {message}", result.output


def test_an_empty_duration_is_an_error_not_forever(cli: CliRunner) -> None:
    """`--duration ''` was read as no duration: a monitor (or any stage) ran until killed."""
    result = cli.invoke(app, ["monitor", "--duration", ""])
    assert result.exit_code == ExitCode.USAGE
    assert "Invalid value for '--duration': is empty" in result.output
