"""What `qt up` runs: one pipeline description (flags or a TOML file) and the stage commands.

A `PipelineSpec` says which source feeds the pipeline, the symbols, the Valkey URL, the ZeroMQ
endpoints, the feature set and period, the model, and extra arguments per stage. `stage_commands`
turns it into the `qt` command lines of the stages, in pipeline order (feed, bridge, features,
predict): what `qt up` supervises and what `qt up --print` shows.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qt_cli.core.errors import UsageError

STAGES = ("feed", "bridge", "features", "predict")
SOURCES = ("sim", "dll", "replay")
ENDPOINT_NAMES = ("ticks", "book", "history", "replay", "signals", "features")
# Names the stages use for their stats hash when no --name is given (their own defaults).
DEFAULT_STAGE_NAMES = {"bridge": "default", "features": "features", "predict": "predict"}
PASSWORD_ENV = "QT_VALKEY_PASSWORD"
DEFAULT_LINGER = "2s"  # the feed keeps its replay endpoint up this long for a bridge still behind
FILE_KEYS = (
    "source",
    "dll",
    "replay",
    "symbols",
    "valkey",
    "set",
    "every",
    "model",
    "duration",
    "rate",
    "seed",
    "alpha",
    "endpoints",
    "args",
)


@dataclass(frozen=True)
class PipelineSpec:
    """One pipeline. Empty strings / None mean "the default" (settings, or the stage's own)."""

    source: str = "sim"
    path: str = ""  # --dll PATH or --replay FILE
    symbols: tuple[str, ...] = ()
    valkey: str = ""
    set_name: str = "qt"
    every: str = "1s"
    model: str = ""
    duration: str = ""
    rate: float | None = None
    seed: int | None = None
    alpha: float | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    origin: str = "flags"  # the file it came from, for messages

    def stages(self) -> tuple[str, ...]:
        return STAGES if self.model else STAGES[:3]


@dataclass(frozen=True)
class StageCommand:
    """One stage: its name, the `qt` arguments (after the program), and its stats hash name."""

    stage: str
    args: tuple[str, ...]
    stats_name: str = ""

    def argv(self, program: tuple[str, ...]) -> list[str]:
        return [*program, *self.args]

    def shell(self, env: str = "") -> str:
        return (env + " " if env else "") + shlex.join(["qt", *self.args])


def load_file(path: Path) -> dict[str, Any]:
    """A pipeline file's values (TOML, tomllib); UsageError names the file and the problem."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such pipeline file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    unknown = [key for key in data if key not in FILE_KEYS]
    if unknown:
        raise UsageError(
            f"{path}: unknown key {unknown[0]!r} (known: {', '.join(FILE_KEYS)}; see docs/up.md)"
        )
    return data


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return tuple(str(v) for v in value)
    raise UsageError(f"{where}: expected a list of strings, got {value!r}")


def spec_from_file(path: Path) -> PipelineSpec:
    """Read a pipeline file into a spec (docs/up.md describes the format)."""
    data = load_file(path)
    where = str(path)
    source = str(data.get("source", "sim"))
    if source not in SOURCES:
        raise UsageError(f"{where}: source {source!r}: choose one of {', '.join(SOURCES)}")
    source_path = str(data.get(source, "")) if source != "sim" else ""
    if source != "sim" and not source_path:
        raise UsageError(f'{where}: source "{source}" needs {source} = "PATH"')
    symbols = data.get("symbols", [])
    if isinstance(symbols, str):
        symbols = [symbols]
    endpoints = data.get("endpoints", {})
    if not isinstance(endpoints, dict):
        raise UsageError(f'{where}: [endpoints] must be a table of name = "URI"')
    for name, uri in endpoints.items():
        if name not in ENDPOINT_NAMES:
            raise UsageError(
                f"{where}: unknown endpoint {name!r} (known: {', '.join(ENDPOINT_NAMES)})"
            )
        if not isinstance(uri, str):
            raise UsageError(f"{where}: endpoint {name}: expected a string URI, got {uri!r}")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise UsageError(f'{where}: [args] must be a table of stage = ["--option", "value"]')
    extra: dict[str, tuple[str, ...]] = {}
    for stage, value in args.items():
        if stage not in STAGES:
            raise UsageError(f"{where}: [args] {stage!r}: choose among {', '.join(STAGES)}")
        extra[stage] = _strings(value, f"{where}: [args] {stage}")
    rate = data.get("rate")
    seed = data.get("seed")
    if rate is not None and not isinstance(rate, int | float):
        raise UsageError(f"{where}: rate: expected a number, got {rate!r}")
    if seed is not None and not isinstance(seed, int):
        raise UsageError(f"{where}: seed: expected a whole number, got {seed!r}")
    alpha = data.get("alpha")
    if alpha is not None and not isinstance(alpha, int | float):
        raise UsageError(f"{where}: alpha: expected a number, got {alpha!r}")
    duration = data.get("duration", "")
    return PipelineSpec(
        source=source,
        path=source_path,
        symbols=tuple(str(s) for s in symbols),
        valkey=str(data.get("valkey", "")),
        set_name=str(data.get("set", "qt")),
        every=str(data.get("every", "1s")),
        model=str(data.get("model", "")),
        duration=str(duration) if duration else "",
        rate=float(rate) if rate is not None else None,
        seed=seed,
        alpha=float(alpha) if alpha is not None else None,
        endpoints={k: str(v) for k, v in endpoints.items()},
        args=extra,
        origin=where,
    )


def override(spec: PipelineSpec, **flags: Any) -> PipelineSpec:
    """The spec with the flags given on the command line (None / empty: not given) on top."""
    given = {k: v for k, v in flags.items() if v not in (None, "", ())}
    if "symbols" in given:
        given["symbols"] = tuple(given["symbols"])
    return replace(spec, **given)


def resolved_endpoints(spec: PipelineSpec, settings: Any) -> dict[str, str]:
    """Every endpoint the stages use: the spec's, else the settings' (QT_*_ENDPOINT)."""
    out = {
        "ticks": settings.ticks_endpoint,
        "book": settings.book_endpoint,
        "history": settings.history_endpoint,
        "replay": settings.replay_endpoint,
        "signals": settings.signals_endpoint,
        "features": "",
    }
    out.update(spec.endpoints)
    return {
        k: ("" if v.strip().lower() in ("", "none", "off") else v.strip()) for k, v in out.items()
    }


def default_symbols(spec: PipelineSpec) -> tuple[str, ...]:
    """The symbols the stages compute: the spec's; for --sim without any, the simulator's."""
    if spec.symbols:
        return tuple(s.strip().upper() for s in spec.symbols)
    if spec.source == "sim":
        from qt_cli.core.sources.sim import SimConfig

        return SimConfig().symbols
    raise UsageError(
        f"--{spec.source} needs --symbol (the features stage computes the symbols it is given), "
        "e.g. qt up --replay ticks.jsonl --symbol WDOQ25"
    )


_SECRET_RE = re.compile(r"^(?P<scheme>[a-z]+://)(?P<user>[^:@/]*):(?P<secret>[^@/]*)@")


def split_password(url: str) -> tuple[str, str]:
    """(the URL without its password, the password): the password goes to the children's
    environment (QT_VALKEY_PASSWORD), never their argv."""
    found = _SECRET_RE.match(url)
    if not found:
        return url, ""
    from urllib.parse import unquote

    user = found["user"]
    rest = url[found.end() :]
    return f"{found['scheme']}{user + '@' if user else ''}{rest}", unquote(found["secret"])


def _stats_name(stage: str, extra: tuple[str, ...]) -> str:
    for i, arg in enumerate(extra):
        if arg == "--name" and i + 1 < len(extra):
            return extra[i + 1]
        if arg.startswith("--name="):
            return arg.split("=", 1)[1]
    return DEFAULT_STAGE_NAMES.get(stage, "")


def stage_commands(
    spec: PipelineSpec, url: str, settings: Any, *, as_json: bool = True
) -> list[StageCommand]:
    """The `qt` arguments of every stage, in pipeline order. `url` has no password in it."""
    ends = resolved_endpoints(spec, settings)
    symbols = default_symbols(spec)
    sym_args = [a for s in symbols for a in ("--symbol", s)]
    json_arg = ["--json"] if as_json else []
    head = ["--valkey", url]
    out: list[StageCommand] = []

    feed = [*head, "feed"]
    if spec.source == "sim":
        feed.append("--sim")
        if spec.rate is not None:
            feed += ["--rate", f"{spec.rate:g}"]
        if spec.seed is not None:
            feed += ["--seed", str(spec.seed)]
        if spec.alpha is not None:
            feed += ["--alpha", f"{spec.alpha:g}"]
    else:
        feed += [f"--{spec.source}", spec.path]
    if spec.symbols:
        feed += sym_args
    if spec.duration:
        feed += ["--duration", spec.duration]
    for kind in ("ticks", "book", "history", "replay"):
        feed += ["--out", f"{kind}={ends[kind] or 'none'}"]
    feed += ["--linger", DEFAULT_LINGER]
    extra = spec.args.get("feed", ())
    out.append(StageCommand("feed", (*feed, *extra, *json_arg), ""))

    bridge = [*head, "bridge"]
    for kind in ("ticks", "book", "history"):
        if ends[kind]:
            bridge += ["--in", ends[kind]]
    bridge += ["--replay", ends["replay"] or "none", "--out", url]
    extra = spec.args.get("bridge", ())
    out.append(StageCommand("bridge", (*bridge, *extra, *json_arg), _stats_name("bridge", extra)))

    features = [*head, "features", "--in", url, *sym_args, "--set", spec.set_name]
    features += ["--every", spec.every, "--out", url]
    if ends["features"]:
        features += ["--out", ends["features"]]
    extra = spec.args.get("features", ())
    out.append(
        StageCommand("features", (*features, *extra, *json_arg), _stats_name("features", extra))
    )

    if spec.model:
        predict = [*head, "predict", "--model", spec.model, "--in", url, *sym_args, "--out", url]
        if ends["signals"]:
            predict += ["--out", ends["signals"]]
        extra = spec.args.get("predict", ())
        out.append(
            StageCommand("predict", (*predict, *extra, *json_arg), _stats_name("predict", extra))
        )
    return out


def program() -> tuple[str, ...]:
    """How to run `qt` as a child: the entry point next to this interpreter, else `-m qt_cli`."""
    beside = Path(sys.executable).parent / ("qt.exe" if os.name == "nt" else "qt")
    if beside.is_file() and os.access(beside, os.X_OK):
        return (str(beside),)
    return (sys.executable, "-m", "qt_cli")
