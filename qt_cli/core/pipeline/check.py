"""`qt up --check`: validate a pipeline and every endpoint without starting anything.

Each problem is one line that says what is wrong and what to do; the checks are independent, so
one run lists all of them: the source (the file or library exists), the symbols, every endpoint's
grammar (`endpoints.parse_endpoint`), the ports the stages bind are free, Valkey answers, the
model bundle verifies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qt_cli.core import keys
from qt_cli.core.errors import ExitCode, QtError
from qt_cli.core.features.backfill import every_ns
from qt_cli.core.features.catalog import feature_set
from qt_cli.core.pipeline.spec import PipelineSpec, resolved_endpoints, split_password

CHECK_TIMEOUT_S = 2.0
# The endpoints a stage binds (a PUB socket), and the stage that binds each.
BOUND = {"ticks": "feed", "book": "feed", "history": "feed", "replay": "feed"}


@dataclass(frozen=True)
class Problem:
    message: str
    exit_code: int = int(ExitCode.USAGE)


def check(spec: PipelineSpec, settings: Any, url: str | None) -> tuple[list[str], list[Problem]]:
    """(what was checked and is fine, the problems). `url`: the Valkey URL the pipeline would
    use, None when none is configured or running (qt up would start the managed server)."""
    ok: list[str] = []
    problems: list[Problem] = []

    def run(label: str, step: Any) -> None:
        try:
            note = step()
        except QtError as exc:
            problems.append(Problem(f"{label}: {exc}", int(exc.exit_code)))
        else:
            ok.append(f"{label}: {note}" if note else label)

    run("source", lambda: _source(spec))
    run("symbols", lambda: checked_symbols(spec))
    run("feature set", lambda: f"{spec.set_name} ({len(feature_set(spec.set_name))} features)")
    run("every", lambda: (every_ns(spec.every), spec.every)[1])
    ends = resolved_endpoints(spec, settings)
    bound = dict(BOUND)
    if spec.model:
        bound["signals"] = "predict"
    if ends.get("features"):
        bound["features"] = "features"
    for name, uri in ends.items():
        if not uri or (name == "signals" and not spec.model):
            continue
        run(f"endpoint {name} {uri}", lambda uri=uri, name=name: _endpoint(uri, name in bound))
    run("valkey", lambda: _valkey(url, settings))
    if spec.model:
        run(f"model {spec.model}", lambda: _model(spec.model))
    return ok, problems


def _source(spec: PipelineSpec) -> str:
    from qt_cli.core.errors import UsageError

    if spec.source == "sim":
        return "simulated market"
    path = Path(spec.path).expanduser()
    if not path.is_file():
        raise UsageError(f"--{spec.source} {spec.path}: no such file")
    return str(path)


def checked_symbols(spec: PipelineSpec) -> str:
    """The pipeline's symbols, comma-separated; UsageError naming the first that is not a
    ticker symbol (a check that needs no host: `--print` and a run make it before anything)."""
    from qt_cli.core.errors import UsageError
    from qt_cli.core.pipeline.spec import default_symbols

    symbols = default_symbols(spec)
    bad = [s for s in symbols if not keys.valid_symbol(s)]
    if bad:
        raise UsageError(f"{bad[0]!r} is not a ticker symbol (e.g. WDOQ25)")
    return ", ".join(symbols)


def _endpoint(uri: str, binds: bool) -> str:
    from qt_cli.core.endpoints import parse_endpoint
    from qt_cli.core.errors import EndpointError
    from qt_cli.core.store.managed import port_is_free

    endpoint = parse_endpoint(uri)
    if endpoint.kind != "zmq":
        raise EndpointError("expected a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)")
    if binds:
        from qt_cli.core.zmq_io import curve

        curve.check_bind(endpoint)  # plain TCP beyond loopback needs CURVE keys or --insecure
    if binds and endpoint.scheme == "tcp":
        host = "0.0.0.0" if endpoint.host in ("*", "0.0.0.0") else endpoint.host.strip("[]")
        if not port_is_free(endpoint.port, host):
            raise EndpointError(
                f"port {endpoint.port} is in use (another feed or qt up running?): stop it or "
                "choose another port in [endpoints]"
            )
        return "free to bind"
    return "ok"


def _valkey(url: str | None, settings: Any) -> str:
    from qt_cli.core import store
    from qt_cli.core.config import mask_url

    if url is None:
        return f"none running: qt up would start the managed server in {settings.valkey_dir}"
    bare, secret = split_password(url)
    client = store.connect(
        bare, password=secret or settings.valkey_password, timeout_s=CHECK_TIMEOUT_S
    )
    client.close()
    return f"{mask_url(url)} answers"


def _model(path: str) -> str:
    from qt_cli.core.errors import UsageError
    from qt_cli.core.models import bundle

    if not Path(path).expanduser().is_file():
        raise UsageError("no such model bundle (train one with qt train, or see qt models list)")
    report = bundle.verify(Path(path).expanduser())
    return f"verified ({', '.join(report['checks'])})"
