from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qt_cli import __version__
from qt_cli.app import app
from qt_cli.commands import COMMANDS


def test_help_lists_every_subcommand_with_a_description(cli: CliRunner) -> None:
    result = cli.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name, _, summary in COMMANDS:
        assert name in result.stdout
        assert summary.split()[0] in result.stdout


def test_every_command_help_has_an_example(cli: CliRunner) -> None:
    import typer

    root = typer.main.get_command(app)

    def leaves(cmd, path):
        subs = getattr(cmd, "commands", None)
        if not subs:
            yield path
            return
        for name, sub in subs.items():
            yield from leaves(sub, [*path, name])

    paths = list(leaves(root, []))
    assert len(paths) >= len(COMMANDS)
    for path in paths:
        result = cli.invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        assert "Example" in result.stdout and "qt " in result.stdout, (
            f"qt {' '.join(path)} --help has no example"
        )


def test_version(cli: CliRunner) -> None:
    result = cli.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"qt {__version__}"


def test_settings_precedence_through_the_cli(cli: CliRunner, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / ".env").write_text("QT_VALKEY_URL=valkey://from-dotenv:1/0\nQT_MAXLEN=11\n")
    result = cli.invoke(app, ["config", "--json"])
    shown = json.loads(result.stdout)
    assert (shown["valkey_url"], shown["maxlen"]) == ("valkey://from-dotenv:1/0", 11)

    monkeypatch.setenv("QT_VALKEY_URL", "valkey://from-env:2/0")
    shown = json.loads(cli.invoke(app, ["config", "--json"]).stdout)
    assert (shown["valkey_url"], shown["maxlen"]) == ("valkey://from-env:2/0", 11)

    shown = json.loads(
        cli.invoke(app, ["--valkey", "valkey://from-flag:3/0", "config", "--json"]).stdout
    )
    assert shown["valkey_url"] == "valkey://from-flag:3/0"


def test_bad_setting_is_one_line_on_stderr(cli: CliRunner) -> None:
    result = cli.invoke(app, ["--log-level", "loud", "config"])
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "Error: log level 'loud': choose one of debug, info, warning, error"
    )
    assert "Traceback" not in result.output


def test_unknown_command_is_a_usage_error(cli: CliRunner) -> None:
    result = cli.invoke(app, ["fly"])
    assert result.exit_code == 2
    assert "No such command 'fly'" in result.stderr


def test_error_from_a_real_process_has_no_traceback(qt, tmp_path: Path) -> None:
    bad = qt.run("--log-level", "loud", "config")
    assert bad.returncode == 2, bad.output
    assert (
        bad.stderr.strip() == "Error: log level 'loud': choose one of debug, info, warning, error"
    )
    assert "Traceback" not in bad.stderr


def test_a_path_the_system_refuses_is_an_error_line_not_a_crash(cli: CliRunner) -> None:
    """A path argument the file system refuses (a name too long, ...) is said as such: the path
    and the system's reason, exit 1; not an 'unexpected OSError' (a crash)."""
    too_long = "x" * 300
    for args in (["models", "list", too_long], ["models", "show", too_long]):
        result = cli.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "File name too long" in result.output, result.output
        assert "unexpected" not in result.output and "Traceback" not in result.output
