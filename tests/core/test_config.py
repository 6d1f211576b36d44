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


def test_secrets_never_appear_in_reprs(tmp_path: Path) -> None:
    from qt_cli.core.bridge import BridgeConfig
    from qt_cli.core.endpoints import parse_endpoint

    secret = "s3cr3t-pw"
    settings = load_settings(
        environ={"QT_VALKEY_PASSWORD": secret, "QT_VALKEY_URL": f"valkey://u:{secret}@h:1/0"},
        dotenv=tmp_path / "missing.env",
    )
    endpoint = parse_endpoint(f"valkey://u:{secret}@h:1/0")
    config = BridgeConfig(inputs=("tcp://127.0.0.1:1",), output="valkey://h:1/0", password=secret)
    assert settings.valkey_password == secret
    assert endpoint.password == secret
    for shown in (repr(settings), str(settings), repr(endpoint), str(endpoint), repr(config)):
        assert secret not in shown, shown
    assert "valkey://u:***@h:1/0" in repr(settings)


@pytest.mark.parametrize(
    ("typ", "raw", "expected"),
    [
        (float, "2.5", 2.5),
        (float, "1e-3", 0.001),
        (bool, "true", True),
        (bool, "Yes", True),
        (bool, "0", False),
        (bool, "off", False),
        (int, "7", 7),
    ],
)
def test_settings_convert_numbers_and_flags(typ: type, raw: str, expected: object) -> None:
    from qt_cli.core.config import _coerce

    value = _coerce("QT_X", typ, raw)
    assert value == expected
    assert type(value) is typ


@pytest.mark.parametrize(("typ", "raw"), [(float, "fast"), (bool, "maybe"), (int, "1.5")])
def test_settings_refuse_values_of_the_wrong_kind(typ: type, raw: str) -> None:
    from qt_cli.core.config import _coerce

    with pytest.raises(ConfigError, match="QT_X"):
        _coerce("QT_X", typ, raw)
