from __future__ import annotations

from pathlib import Path

import pytest

from qt_cli.core.config import load_settings, mask_url, read_dotenv
from qt_cli.core.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={}, dotenv=tmp_path / "missing.env")
    assert settings.ticks_endpoint == "tcp://127.0.0.1:5555"
    assert settings.book_endpoint == "tcp://127.0.0.1:5556"
    assert settings.history_endpoint == "tcp://127.0.0.1:5557"
    assert settings.maxlen == 100_000
    assert settings.valkey_url == ""
    assert settings.data_dir.name == "qt"


def test_precedence_flag_over_env_over_dotenv_over_default(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\nexport QT_VALKEY_URL=valkey://dotenv:1/0\nQT_MAXLEN='5'\nQT_LOG_LEVEL=\"info\"\n"
    )
    env = {"QT_VALKEY_URL": "valkey://env:2/0", "QT_MAXLEN": "7"}

    only_file = load_settings(environ={}, dotenv=dotenv)
    assert (only_file.valkey_url, only_file.maxlen, only_file.log_level) == (
        "valkey://dotenv:1/0",
        5,
        "info",
    )

    env_wins = load_settings(environ=env, dotenv=dotenv)
    assert (env_wins.valkey_url, env_wins.maxlen, env_wins.log_level) == (
        "valkey://env:2/0",
        7,
        "info",
    )

    flag_wins = load_settings(
        {"valkey_url": "valkey://flag:3/0", "maxlen": None}, environ=env, dotenv=dotenv
    )
    assert (flag_wins.valkey_url, flag_wins.maxlen) == ("valkey://flag:3/0", 7)


def test_bad_values_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="QT_MAXLEN: expected a whole number, got 'lots'"):
        load_settings(environ={"QT_MAXLEN": "lots"}, dotenv=tmp_path / "x")
    with pytest.raises(ConfigError, match="log level 'loud'"):
        load_settings({"log_level": "loud"}, environ={}, dotenv=tmp_path / "x")
    bad = tmp_path / ".env"
    bad.write_text("QT_MAXLEN=1\njust words\n")
    with pytest.raises(ConfigError, match=r"\.env:2: expected KEY=VALUE"):
        read_dotenv(bad)


def test_secrets_are_masked(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"QT_VALKEY_URL": "valkey://u:hunter2@h:6379/0", "QT_VALKEY_PASSWORD": "pw"},
        dotenv=tmp_path / "x",
    )
    shown = settings.describe()
    assert "hunter2" not in str(shown) and shown["valkey_password"] == "***"
    assert mask_url("valkey://:pw@h:1/0") == "valkey://:***@h:1/0"
    assert mask_url("valkey://h:1/0") == "valkey://h:1/0"
