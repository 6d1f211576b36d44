"""`qt up`: the whole pipeline in one command (docs/up.md).

`spec` describes a pipeline (flags or a TOML file) and builds the stage command lines; `check`
validates one without starting anything; `supervisor` runs the stages as supervised children.
This module ties them together for the command: resolve the Valkey URL once, print, check, run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from qt_cli.core.pipeline.check import Problem, check, checked_symbols
from qt_cli.core.pipeline.spec import (
    PASSWORD_ENV,
    PipelineSpec,
    StageCommand,
    default_symbols,
    override,
    program,
    spec_from_file,
    split_password,
    stage_commands,
)
from qt_cli.core.pipeline.supervisor import Supervisor, child_env

# Prefix colours per stage on a terminal (ANSI), `up` for qt up's own lines.
COLOURS = {"up": "1", "feed": "36", "bridge": "33", "features": "35", "predict": "32"}


def load_spec(file: Path | None, **flags: Any) -> PipelineSpec:
    """The pipeline: the file's description (when given) with the flags on top."""
    base = spec_from_file(file) if file is not None else PipelineSpec()
    return override(base, **flags)


def valkey_url(spec: PipelineSpec, settings: Any, *, start: bool, say: Any = None) -> str | None:
    """The one Valkey URL every stage gets: the spec's, else the settings' (--valkey,
    QT_VALKEY_URL), else localhost:6379 or the managed server (started when `start`)."""
    from dataclasses import replace

    from qt_cli.core import store

    if spec.valkey:
        settings = replace(settings, valkey_url=spec.valkey)
    if start:
        return store.resolve_url(settings, say=say)
    return store.find_url(settings)


def shell_lines(spec: PipelineSpec, settings: Any) -> list[str]:
    """`qt up --print`: one shell command per stage (the Valkey URL resolved without starting
    anything; its password left to QT_VALKEY_PASSWORD in each stage's environment)."""
    from qt_cli.core.store import DEFAULT_URL

    url = valkey_url(spec, settings, start=False) or DEFAULT_URL
    bare, secret = split_password(url)
    lines = []
    if secret or settings.valkey_password:
        lines.append(f"# every stage needs {PASSWORD_ENV} in its environment")
    if spec.source == "dll":
        lines.append(
            "# the feed needs PROFIT_ACTIVATION_KEY, PROFIT_USER and PROFIT_PASSWORD in its "
            "environment (or a terminal to be prompted)"
        )
    for command in stage_commands(spec, bare, settings, as_json=False):
        lines.append(command.shell())
    return lines


class LineSink:
    """Prefixed lines: `[stage] text`, coloured on a terminal, to one stream (thread-safe); or,
    with `log_dir`, each stage to its own file there (`qt up --monitor`)."""

    def __init__(self, stream: IO[str], *, colour: bool, log_dir: Path | None = None) -> None:
        self.stream = stream
        self.colour = colour
        self.log_dir = log_dir
        self._files: dict[str, IO[str]] = {}
        self._lock = threading.RLock()  # re-entrant: qt up's signal handler may write a line
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def prefix(self, stage: str) -> str:
        if self.colour and self.log_dir is None:
            return f"\x1b[{COLOURS.get(stage, '34')}m[{stage}]\x1b[0m"
        return f"[{stage}]"

    def __call__(self, stage: str, line: str) -> None:
        text = f"{self.prefix(stage)} {line}\n"
        with self._lock:
            if self.log_dir is None:
                self.stream.write(text)
                self.stream.flush()
                return
            handle = self._files.get(stage)
            if handle is None:
                handle = (self.log_dir / f"{stage}.log").open("a", encoding="utf-8")
                self._files[stage] = handle
            stamp = time.strftime("%H:%M:%S")
            handle.write(f"{stamp} {text}")
            handle.flush()

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()


def run(
    spec: PipelineSpec,
    settings: Any,
    *,
    emit: Callable[[str, str], None],
    monitor: bool = False,
    say: Any = None,
) -> dict[str, Any]:
    """Start the stages, supervise them until stopped (or the feed ends), stop them in order;
    the summary (each stage's restarts, exit code and totals)."""
    from qt_cli.core import store
    from qt_cli.core.config import mask_url

    url = valkey_url(spec, settings, start=True, say=say)
    assert url is not None
    bare, secret = split_password(url)
    password = secret or settings.valkey_password or ""
    client = store.connect(bare, password=password, timeout_s=5.0)
    commands = stage_commands(spec, bare, settings)
    exe = program()
    watch = [a for s in default_symbols(spec) for a in ("--symbol", s)]
    monitor_argv = [*exe, "--valkey", bare, "monitor", *watch] if monitor else None
    supervisor = Supervisor(
        commands,
        program=exe,
        env=child_env(password, settings),
        emit=emit,
        client=client,
        monitor=monitor_argv,
    )
    emit("up", f"pipeline {', '.join(c.stage for c in commands)} on {mask_url(bare)}")
    try:
        summary = supervisor.run()
    finally:
        client.close()
    summary["valkey"] = mask_url(bare)
    return summary


__all__ = [
    "LineSink",
    "PipelineSpec",
    "Problem",
    "StageCommand",
    "check",
    "checked_symbols",
    "load_spec",
    "run",
    "shell_lines",
    "valkey_url",
]
