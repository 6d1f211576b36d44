"""Settings, resolved in one place: flags > environment (QT_*) > .env file > defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from qt_cli.core.errors import ConfigError
from qt_cli.core.timeparse import EXCHANGE_TZ_NAME

ENV_PREFIX = "QT_"
LOG_LEVELS = ("debug", "info", "warning", "error")
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("qt", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Every setting a command may read. Env names are QT_ + the field name upper-cased."""

    valkey_url: str = ""  # empty: localhost:6379, else the managed server (see store.resolve_url)
    valkey_password: str = ""
    log_level: str = "warning"
    data_dir: Path = Path()  # filled from platformdirs when empty
    ticks_endpoint: str = "tcp://127.0.0.1:5555"
    book_endpoint: str = "tcp://127.0.0.1:5556"
    history_endpoint: str = "tcp://127.0.0.1:5557"
    signals_endpoint: str = "tcp://127.0.0.1:5558"
    replay_endpoint: str = "tcp://127.0.0.1:5559"
    maxlen: int = 100_000
    timezone: str = EXCHANGE_TZ_NAME
    # security (docs/SECURITY.md): paths only, never a key or a password itself
    valkey_ca: str = ""  # CA bundle that signed the valkeys:// server's certificate
    curve_secret_key: str = ""  # this process's CURVE key pair (*.key_secret)
    curve_server_key: str = ""  # the ZeroMQ servers' public key (*.key)
    curve_clients: str = ""  # directory of the public keys a CURVE server accepts
    insecure: bool = False  # allow binding plain TCP on a non-loopback address

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    @property
    def valkey_dir(self) -> Path:
        return self.data_dir / "valkey"

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.describe().items())
        return f"Settings({shown})"

    def describe(self) -> dict[str, Any]:
        """Settings as shown to a user: secrets masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "valkey_password" and value:
                value = "***"
            elif f.name == "valkey_url":
                value = mask_url(value)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def mask_url(url: str) -> str:
    """Hide the password of a `scheme://user:pass@host` URL."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0] if ":" in creds else ""
    # `user@host` names an ACL user only (its password comes from QT_VALKEY_PASSWORD)
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments, blanks, `export ` and quotes handled)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        if "=" not in line:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw.strip()!r}")
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _coerce(name: str, typ: Any, raw: Any) -> Any:
    if raw is None:
        return None
    if typ in (int, "int"):
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {name}: expected a whole number, got {raw!r}") from None
    if typ in (float, "float"):
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {name}: expected a number, got {raw!r}") from None
    if typ in (bool, "bool"):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
        raise ConfigError(f"setting {name}: expected true or false, got {raw!r}")
    if typ in (Path, "Path"):
        return Path(raw).expanduser()
    return str(raw)


def load_settings(
    overrides: dict[str, Any] | None = None,
    *,
    environ: dict[str, str] | None = None,
    dotenv: Path | None = None,
) -> Settings:
    """Resolve settings: `overrides` (flags; None means not given) > env > .env > defaults."""
    env = os.environ if environ is None else environ
    file_values = read_dotenv(dotenv if dotenv is not None else Path.cwd() / ".env")
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env_name = ENV_PREFIX + f.name.upper()
        raw: Any = None
        if overrides and overrides.get(f.name) is not None:
            raw = overrides[f.name]
        elif env_name in env:
            raw = env[env_name]
        elif env_name in file_values:
            raw = file_values[env_name]
        if raw is not None:
            values[f.name] = _coerce(env_name, f.type, raw)
    settings = replace(Settings(), **values)
    if settings.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"log level {settings.log_level!r}: choose one of {', '.join(LOG_LEVELS)}"
        )
    if settings.data_dir == Path():
        settings = replace(settings, data_dir=default_data_dir())
    return settings


_current: Settings | None = None


def set_current(settings: Settings) -> None:
    """The settings the running command resolved (set once by the CLI's entry point)."""
    global _current
    _current = settings


def current() -> Settings:
    global _current
    if _current is None:
        _current = load_settings()
    return _current
