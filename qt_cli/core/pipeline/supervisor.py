"""Supervise the stages of `qt up` as child processes: start, prefix, restart, drain, stop in order.

Each stage is a real `qt` process in its own process group (a Ctrl+C on the terminal reaches only
`qt up`, which then stops the stages in order). Its stderr lines go to `emit(stage, line)`; its
stdout (the stage's `--json` totals) is kept and parsed when it exits.

A stage that crashes (non-zero exit, or killed by a signal) while it should run is started again
after a backoff (0.5 s doubling to 10 s, back to 0.5 s once a run stayed up 30 s): the stages'
exactly-once identities make a restart harmless. Exit codes 2 (usage) and 4 (bad data) are not
crashes: a restart would fail the same way, so `qt up` stops everything and exits with that code.

The feed starts last, once the other stages run their loops, so they listen before it publishes.

Stopping (Ctrl+C, SIGTERM, the feed ending by itself, the monitor closing) goes in pipeline order:
the feed first; then each later stage once it has drained what its upstream produced — the bridge
when its watermark (`keys.watermark_key`) covers the last seq of every channel a live feed
published (or it idles short of it: reported), the derived stages when their stats hash
(`qt:stats:<stage>:<name>`) shows `received`/`written` unchanged over two publishes after their
upstream stopped — then SIGINT, SIGTERM after `stop_timeout_s`, SIGKILL after `KILL_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import orjson

from qt_cli.core import keys
from qt_cli.core.errors import ExitCode
from qt_cli.core.pipeline.spec import StageCommand
from qt_cli.core.stage.lifecycle import STOP_SIGNALS

if TYPE_CHECKING:
    from qt_cli.core.config import Settings

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
BACKOFF_RESET_AFTER_S = 30.0
DRAIN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
KILL_AFTER_S = 5.0
QUIET_PUBLISHES = 2  # a derived stage is drained when two stats publishes show no new work
BRIDGE_QUIET_PUBLISHES = 3  # a bridge short of the feed's last seq: given up on after three
POLL_S = 0.1
PR_SET_PDEATHSIG = 1
READY_TIMEOUT_S = 15.0
FATAL_CODES = (int(ExitCode.USAGE), int(ExitCode.DATA))

Emit = Callable[[str, str], None]


@dataclass
class Child:
    """One supervised stage and what happened to it."""

    command: StageCommand
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff_s: float = BACKOFF_START_S
    started_mono: float = 0.0
    restart_at: float | None = None
    state: str = "new"  # new, running, waiting (to restart), stopping, stopped, failed
    exit_code: int | None = None
    pids: list[int] = field(default_factory=list)
    totals: Any = None
    drained: bool | None = None
    stopped_ns: int = 0
    _out: bytearray = field(default_factory=bytearray)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.command.stage

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def summary(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "pid": self.pids[-1] if self.pids else None,
            "pids": list(self.pids),
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "drained": self.drained,
            "stopped_ns": self.stopped_ns,
            "totals": self.totals,
        }


def exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit {code}"


class Supervisor:
    """Runs the stages until asked to stop (or the feed ends), then stops them in order."""

    def __init__(
        self,
        commands: Sequence[StageCommand],
        *,
        program: Sequence[str],
        env: dict[str, str],
        emit: Emit,
        client: Any = None,
        monitor: Sequence[str] | None = None,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.children = [Child(command) for command in commands]
        self.program = tuple(program)
        self.env = env
        self.emit = emit
        self.client = client
        self.monitor_argv = list(monitor) if monitor else None
        self.monitor: subprocess.Popen[bytes] | None = None
        self.drain_timeout_s = drain_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.stopped_by = ""
        self.exit_code = 0
        self.stop_order: list[str] = []
        self._wake = threading.Event()
        self._hurry = False

    # -- the run --

    def request_stop(self, reason: str) -> None:
        """Ask for an ordered stop (safe from a signal handler)."""
        if not self.stopped_by:
            self.stopped_by = reason
        self._wake.set()

    @contextlib.contextmanager
    def _signals(self) -> Any:
        """SIGINT/SIGTERM: the first asks for the ordered stop; one more while stopping skips the
        drains; a third interrupts (every stage is then terminated at once)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if not self.stopped_by:
                self.request_stop(name)
            elif not self._hurry:
                self._hurry = True
                self.emit("up", f"{name} again: stopping without waiting for the stages to drain")
            else:
                raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self) -> dict[str, Any]:
        with self._signals():
            try:
                # Downstream first, the feed last: every stage listens before anything flows.
                for child in reversed(self.children[1:]):
                    self._start(child)
                self._wait_ready(self.children[1:])
                if not self.stopped_by:  # a stage failed on its arguments: no feed at all
                    self._start(self.children[0])
                if self.monitor_argv:
                    self.monitor = subprocess.Popen(self.monitor_argv, env=self.env)
                while not self.stopped_by:
                    self._supervise()
                    if self.monitor is not None and self.monitor.poll() is not None:
                        self.request_stop("monitor closed")
                    self._wake.wait(POLL_S)
                self.emit(
                    "up", f"stopping ({self.stopped_by}): feed first, then each stage once drained"
                )
                self._shutdown()
            except BaseException:
                self._kill_all()
                raise
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {
            "stopped_by": self.stopped_by,
            "exit_code": self.exit_code,
            "stop_order": list(self.stop_order),
            "stages": {child.stage: child.summary() for child in self.children},
        }

    # -- starting, reaping, restarting --

    def _wait_ready(self, children: Sequence[Child]) -> None:
        """Until each stage runs its loop (its stats hash names its pid), so the bridge is
        subscribed before the feed publishes: a short replay at --speed 0 could otherwise be over
        before the bridge hears a single message (and it catches up only sessions it heard)."""
        if self.client is None:
            return
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = list(children)
        while waiting and time.monotonic() < deadline and not self.stopped_by:
            self._supervise()
            for child in list(waiting):
                key = keys.stats_key(child.stage, child.command.stats_name or child.stage)
                try:
                    pid = self.client.hget(key, "pid")
                except Exception:  # noqa: BLE001 - Valkey down: the stages will say so
                    return
                if child.state != "running" or (pid and int(pid) == child.pids[-1]):
                    waiting.remove(child)
            self._wake.wait(0.05)
        if waiting and not self.stopped_by:
            self.emit("up", f"{', '.join(c.stage for c in waiting)} not ready; starting the feed")

    def _start(self, child: Child) -> None:
        child._out = bytearray()
        proc = subprocess.Popen(
            child.command.argv(self.program),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # one prctl call before exec
        )
        child.proc = proc
        child.pids.append(proc.pid)
        child.state = "running"
        child.started_mono = time.monotonic()
        child.restart_at = None
        again = f" (restart {child.restarts})" if child.restarts else ""
        self.emit("up", f"started {child.stage} pid {proc.pid}{again}")
        err = threading.Thread(
            target=self._pump_lines, args=(child.stage, proc.stderr), daemon=True
        )
        out = threading.Thread(target=self._pump_bytes, args=(child._out, proc.stdout), daemon=True)
        child._threads = [err, out]
        err.start()
        out.start()

    def _pump_lines(self, stage: str, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with stream:
            for raw in iter(stream.readline, b""):
                text = raw.decode(errors="replace").rstrip("\r\n")
                # A terminal status line rewrites itself with \r: keep the last state of it.
                self.emit(stage, text.rsplit("\r", 1)[-1])

    @staticmethod
    def _pump_bytes(buffer: bytearray, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with stream:
            for chunk in iter(lambda: stream.read(65536), b""):
                buffer.extend(chunk)

    def _collect(self, child: Child, code: int) -> None:
        """The exited run's code and totals (its --json stdout), once its pipes are drained."""
        for thread in child._threads:
            thread.join(timeout=5)
        child.exit_code = code
        text = bytes(child._out).strip()
        if text:
            try:
                child.totals = orjson.loads(text)
            except orjson.JSONDecodeError:
                for line in text.decode(errors="replace").splitlines():
                    self.emit(child.stage, line)

    def _supervise(self) -> None:
        """Reap exited stages; restart crashed ones when their backoff is over."""
        now = time.monotonic()
        for child in self.children:
            if (
                child.state == "waiting"
                and child.restart_at is not None
                and now >= child.restart_at
            ):
                child.restarts += 1
                self._start(child)
                continue
            if child.state != "running" or child.proc is None:
                continue
            code = child.proc.poll()
            if code is None:
                continue
            self._collect(child, code)
            if code == 0:
                child.state = "stopped"
                child.stopped_ns = time.time_ns()
                self.stop_order.append(child.stage)
                self.emit("up", f"{child.stage} ended (exit 0)")
                if child.stage == "feed":
                    self.request_stop("feed ended")
                continue
            if code in FATAL_CODES:
                child.state = "failed"
                child.stopped_ns = time.time_ns()
                self.stop_order.append(child.stage)
                self.emit("up", f"{child.stage} failed ({exit_text(code)}); a restart would too")
                self.exit_code = code
                self.request_stop(f"{child.stage} failed")
                continue
            up_for = now - child.started_mono
            if up_for >= BACKOFF_RESET_AFTER_S:
                child.backoff_s = BACKOFF_START_S
            delay = child.backoff_s
            child.backoff_s = min(child.backoff_s * 2, BACKOFF_MAX_S)
            child.state = "waiting"
            child.restart_at = now + delay
            self.emit(
                "up",
                f"{child.stage} crashed ({exit_text(code)}) after {up_for:.1f}s; "
                f"restarting in {delay:g}s",
            )

    # -- stopping in order --

    def _shutdown(self) -> None:
        upstream_stopped_ns = 0
        for index, child in enumerate(self.children):
            if index > 0 and child.state in ("running", "waiting"):
                child.drained = self._drain(child, self.children[index - 1], upstream_stopped_ns)
            self._stop(child)
            upstream_stopped_ns = child.stopped_ns or time.time_ns()
        if self.monitor is not None and self.monitor.poll() is None:
            self.monitor.send_signal(signal.SIGINT)
            try:
                self.monitor.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.monitor.kill()
                self.monitor.wait()
        if not self.exit_code and any(c.exit_code for c in self.children):
            self.exit_code = int(ExitCode.ERROR)

    def _stop(self, child: Child) -> None:
        if child.state in ("stopped", "failed"):
            return
        proc = child.proc
        if child.state == "waiting" or proc is None:
            child.state = "stopped"
            child.stopped_ns = time.time_ns()
            self.stop_order.append(child.stage)
            return
        child.state = "stopping"
        steps = (
            (signal.SIGINT, self.stop_timeout_s),
            (signal.SIGTERM, KILL_AFTER_S),
            (signal.SIGKILL, KILL_AFTER_S),
        )
        for sig, wait_s in steps:
            if proc.poll() is not None:
                break
            if sig != signal.SIGINT:
                self.emit("up", f"{child.stage} still running; sending {sig.name}")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait_s)
        code = proc.wait()
        self._collect(child, code)
        child.state = "stopped"
        child.stopped_ns = time.time_ns()
        self.stop_order.append(child.stage)
        self.emit("up", f"stopped {child.stage} ({exit_text(code)})")

    def _drain(self, child: Child, upstream: Child, since_ns: int) -> bool:
        """Wait until `child` has done what its upstream produced (or the drain timeout)."""
        if self.client is None:
            return False
        deadline = time.monotonic() + self.drain_timeout_s
        feed_totals = upstream.totals if upstream.stage == "feed" else None
        # A replayed file's records keep the sessions they were recorded with, so the bridge's
        # watermark is comparable with the feed's channels only for live sources (sim, dll).
        if (
            child.stage == "bridge"
            and isinstance(feed_totals, dict)
            and feed_totals.get("source") != "replay"
        ):
            done = self._bridge_caught_up(child, feed_totals, since_ns, deadline)
        else:
            done = self._quiet(child, since_ns, deadline)
        if done:
            self.emit("up", f"{child.stage} drained")
        elif child.running() and not self._hurry and time.monotonic() >= deadline:
            self.emit(
                "up", f"{child.stage} not drained after {self.drain_timeout_s:g}s; stopping it"
            )
        return done

    def _keep_alive(self, child: Child) -> bool:
        """While draining, a stage that crashes is still restarted; False once it is gone."""
        self._supervise()
        return not self._hurry and child.state in ("running", "waiting")

    def _bridge_caught_up(
        self, child: Child, feed: dict[str, Any], since_ns: int, deadline: float
    ) -> bool:
        """The bridge's watermark covers the feed's last seq of every channel. A bridge idle
        short of it (the feed is gone: nothing more can arrive or be replayed) is reported."""
        targets = {
            str(ch["session"]): int(ch["last_seq"])
            for ch in (feed.get("channels") or {}).values()
            if int(ch.get("published") or 0) > 0
        }
        key = keys.watermark_key(child.command.stats_name or "default")
        idle = _Quiet(self, child, since_ns=since_ns, publishes=BRIDGE_QUIET_PUBLISHES)
        marks = [0] * len(targets)
        while time.monotonic() < deadline and self._keep_alive(child):
            try:
                raw = self.client.hmget(key, list(targets)) if targets else []
                marks = [int(v) if v else 0 for v in raw]
            except Exception:  # noqa: BLE001 - Valkey down: keep waiting until the deadline
                pass
            if all(mark >= targets[s] for s, mark in zip(targets, marks, strict=True)):
                return True
            if idle.step():
                missing = sum(max(targets[s] - m, 0) for s, m in zip(targets, marks, strict=True))
                self.emit(
                    "up",
                    f"bridge idle short of what the feed published: {missing:,} events not "
                    "stored (published before the bridge subscribed, and the feed's replay "
                    "endpoint is gone)",
                )
                return False
            time.sleep(0.1)
        return False

    def _quiet(self, child: Child, since_ns: int, deadline: float) -> bool:
        idle = _Quiet(self, child, since_ns=since_ns, publishes=QUIET_PUBLISHES)
        while time.monotonic() < deadline and self._keep_alive(child):
            if idle.step():
                return True
            time.sleep(0.1)
        return False

    def _kill_all(self) -> None:
        """Interrupted while stopping (a second Ctrl+C): end every stage now."""
        procs = [c.proc for c in self.children if c.proc is not None]
        if self.monitor is not None:
            procs.append(self.monitor)
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: a stage gets SIGTERM when `qt up` dies without stopping it (SIGKILL, a crash), so
    no stage outlives its supervisor. The libc function is looked up here, in the parent: the
    child only makes the one system call before exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: act as the signal would
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


class _Quiet:
    """Whether a stage's stats hash showed `received`/`written` unchanged over `publishes`
    successive publishes made after `since_ns` (its upstream stopped): it has nothing left."""

    def __init__(self, owner: Supervisor, child: Child, *, since_ns: int, publishes: int) -> None:
        self.client = owner.client
        self.key = keys.stats_key(child.stage, child.command.stats_name or child.stage)
        self.since_ns = since_ns
        self.publishes = publishes
        self.last_update: bytes = b""
        self.last_counts: tuple[Any, Any] | None = None
        self.quiet = 0

    def step(self) -> bool:
        try:
            updated, received, written = self.client.hmget(
                self.key, ["updated_ns", "received", "written"]
            )
        except Exception:  # noqa: BLE001 - Valkey down: not quiet as far as we know
            return False
        if updated and updated != self.last_update and int(updated) > self.since_ns:
            counts = (received, written)
            self.quiet = self.quiet + 1 if counts == self.last_counts else 0
            self.last_update, self.last_counts = updated, counts
        return self.quiet >= self.publishes


def child_env(password: str, settings: Settings) -> dict[str, str]:
    """The children's environment: ours, unbuffered output, the Valkey password (never argv) and
    `settings`' security options (paths only)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if password:
        env["QT_VALKEY_PASSWORD"] = password
    from qt_cli.core import config

    for name in SECURITY_SETTINGS:  # the security flags of qt up reach every stage (paths only)
        value = getattr(settings, name)
        if value:
            env[config.ENV_PREFIX + name.upper()] = "1" if value is True else str(value)
    return env


SECURITY_SETTINGS = (
    "curve_secret_key",
    "curve_server_key",
    "curve_clients",
    "insecure",
    "valkey_ca",
)
