"""The error types core raises and the exit codes the CLI turns them into."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, one place for every command."""

    OK = 0
    ERROR = 1
    USAGE = 2
    UNAVAILABLE = 3  # an external system (Valkey, ZeroMQ peer, the DLL) cannot be reached
    DATA = 4  # bad input data under --strict
    INTERRUPTED = 130


class QtError(Exception):
    """An error with a message for the user that says what went wrong and what to do."""

    exit_code: ExitCode = ExitCode.ERROR


class UsageError(QtError):
    """A bad option value or argument."""

    exit_code = ExitCode.USAGE


class EndpointError(UsageError):
    """An endpoint URI that cannot be parsed or used."""


class TimeParseError(UsageError):
    """A time expression that cannot be parsed."""


class ConfigError(UsageError):
    """A setting with a bad value."""


class UnavailableError(QtError):
    """An external system is not reachable or not installed."""

    exit_code = ExitCode.UNAVAILABLE


class StoreUnavailable(UnavailableError):
    """Valkey cannot be reached."""


class DllError(UnavailableError):
    """The ProfitDLL cannot be loaded, lacks an export or refused the login."""


class DataError(QtError):
    """Input data is malformed (raised only where the user asked for strictness)."""

    exit_code = ExitCode.DATA


class DecodeError(DataError):
    """A message or record that does not decode to a valid event; names the bad field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
