"""A small process supervisor for `lookalike up`: start children, prefix their output, restart
those that exit, and stop them all on a signal, a configuration error or a crash loop.

Our own because honcho stops every process when one exits and supervisord is a separate daemon
that can neither wait for our Redis to answer before starting the rest nor stop it last.
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
from dataclasses import dataclass
from types import FrameType
from typing import IO, Protocol, TextIO

from shared.errors import EXIT_CONFIG, LookalikeError

OWN_LABEL = "supervisor"
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class ProcessSpec:
    """One child: its argv, its whole environment (None: ours) and how to stop it."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 20.0


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited starts again, and when the stack gives up on it instead."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    # A run this long makes the next restart wait first_delay again.
    reset_after: float = 60.0
    # crash_limit exits in a row, each this soon after its start, stop the stack.
    crash_window: float = 10.0
    crash_limit: int = 5

    def delay(self, restart: int) -> float:
        """Seconds before restart number `restart` (1, 2, ...) of a streak: doubling, capped."""
        # The exponent capped: a child that fails every minute for days must not overflow it.
        return float(min(self.first_delay * 2 ** min(restart - 1, 64), self.max_delay))


class Service(Protocol):
    """A child that starts and stops itself, such as the embedded Redis (cli.redis_server)."""

    name: str

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def poll(self) -> int | None: ...

    def stop(self) -> int | None: ...


class _Spawned:
    """A ProcessSpec's process, in a process group of its own, its output pumped into the log."""

    def __init__(self, spec: ProcessSpec, owner: Supervisor) -> None:
        self.spec = spec
        self.name = spec.name
        self._owner = owner
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        # A process group of its own: a terminal's Ctrl-C reaches only us, and we stop children in
        # order. Not a session of its own: Linux schedules each session as one group (autogroup),
        # and the writer's niceness must weigh against the other processes, not only within it.
        self._process = process = subprocess.Popen(
            self.spec.argv,
            env=self.spec.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        assert process.stdout is not None
        self._reader = threading.Thread(
            target=self._pump, args=(process.stdout,), name=f"log-{self.name}", daemon=True
        )
        self._reader.start()

    def poll(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def stop(self) -> int | None:
        """The stop signal, then SIGKILL after the spec's timeout; the exit code."""
        process, spec = self._process, self.spec
        if process is None:
            return None
        _signal_group(process.pid, spec.stop_signal)
        if not self._wait_exit(process, spec.stop_timeout):
            self._owner.log(OWN_LABEL, f"{self.name} did not stop in time: SIGKILL")
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        return process.returncode

    def kill_leftovers(self) -> None:
        """SIGKILL whatever the process started and left behind in its group."""
        if self._process is not None:
            _signal_group(self._process.pid, signal.SIGKILL)

    def join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=1.0)

    def _pump(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                self._owner.log(self.name, raw.decode("utf-8", errors="replace"))

    def _wait_exit(self, process: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._owner.hurried:
            try:
                process.wait(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
                return True
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    return False
        return process.poll() is not None


@dataclass
class _Slot:
    """A child and its restart state."""

    child: _Spawned | Service
    started_at: float = 0.0
    restarts: int = 0  # in the current streak
    quick_exits: int = 0  # in a row, each within the crash window of its start
    due: float | None = None  # when a restart is due; None while it runs


class Supervisor:
    """Runs children, each in its own process group, restarting those that exit, until a stop
    signal, a child exiting with EXIT_CONFIG, or a child that keeps crashing at start."""

    def __init__(
        self,
        children: Sequence[ProcessSpec | Service],
        log_stream: TextIO | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        names = [child.name for child in children]
        if len(set(names)) != len(names):
            raise ValueError(f"process names must be unique: {names}")
        self.policy = policy or RestartPolicy()
        self.log_stream = log_stream if log_stream is not None else sys.stdout
        self._width = max(len(name) for name in [*names, OWN_LABEL])
        self._slots = [
            _Slot(_Spawned(child, self) if isinstance(child, ProcessSpec) else child)
            for child in children
        ]
        self._started: list[_Slot] = []
        self._write_lock = threading.Lock()
        self._stop_lock = threading.Lock()
        # Plain attributes, not Events: signal handlers set them, and an Event's lock could
        # deadlock a handler that interrupts its own thread inside that lock.
        self._stop_requested = False
        self.hurried = False
        self._signal: int | None = None
        self._stopped = False

    def start(self) -> None:
        """Start every child in order; if one cannot start, stop those already started."""
        try:
            for slot in self._slots:
                self._launch(slot)
                self._started.append(slot)
        except BaseException:
            self.stop()
            raise

    def wait(self) -> int:
        """Tend the children until a stop is requested (0) or one makes the stack stop (non-0)."""
        while not self._stop_requested:
            for slot in self._started:
                code = self._tend(slot)
                if code is not None:
                    self.stop()
                    return code
            time.sleep(POLL_SECONDS)
        if self._signal is not None:
            self.log(OWN_LABEL, f"{_signal_name(self._signal)}: stopping")
        return 0

    def stop(self) -> None:
        """Stop the children in reverse start order: stop signal, then SIGKILL after a timeout."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            for slot in reversed(self._started):
                self._stop_slot(slot)
            for slot in self._started:
                if isinstance(slot.child, _Spawned):
                    slot.child.join_reader()

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """Start, tend the children until a stop, stop; the exit code (0: stopped by a signal)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            self.start()
            if on_started is not None:
                on_started()
            return self.wait()
        finally:
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def request_stop(self) -> None:
        """Make `wait()` return 0 (a signal handler does this); a second call hurries the stop."""
        self.hurried = self._stop_requested
        self._stop_requested = True

    def log(self, name: str, text: str) -> None:
        """Write each line of `text` prefixed with `name`, padded so that the bars line up."""
        lines = text.rstrip().splitlines() or [""]
        with self._write_lock:
            for line in lines:
                self.log_stream.write(f"{name:<{self._width}} | {line.rstrip()}\n")
            self.log_stream.flush()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No output here: the interrupted code may be in the middle of writing to the stream.
        self._signal = signum
        self.request_stop()

    def _launch(self, slot: _Slot) -> None:
        slot.child.start()
        slot.started_at, slot.due = time.monotonic(), None
        self.log(OWN_LABEL, f"started {slot.child.name} (pid {slot.child.pid})")

    def _tend(self, slot: _Slot) -> int | None:
        """Restart `slot` when due, or notice that it exited; an exit code stops the stack."""
        if slot.due is not None:
            if time.monotonic() < slot.due or self._stop_requested:
                return None
            slot.started_at = time.monotonic()
            try:
                self._launch(slot)
            except (OSError, LookalikeError) as exc:
                return self._exited(slot, 1, f"could not start: {exc}")
            return None
        code = slot.child.poll()
        if code is None:
            return None
        if isinstance(slot.child, _Spawned):
            slot.child.kill_leftovers()  # e.g. gunicorn's worker, orphaned by its master
        return self._exited(slot, code, _describe(code))

    def _exited(self, slot: _Slot, code: int, what: str) -> int | None:
        """Schedule the restart of a child that exited, or the exit code that stops the stack."""
        name, policy, now = slot.child.name, self.policy, time.monotonic()
        ran = now - slot.started_at
        if code == EXIT_CONFIG:
            self.log(OWN_LABEL, f"{name} exited ({what}: it cannot run as configured), stopping")
            return EXIT_CONFIG
        slot.quick_exits = slot.quick_exits + 1 if ran < policy.crash_window else 0
        if slot.quick_exits >= policy.crash_limit:
            self.log(
                OWN_LABEL,
                f"{name} keeps crashing: {slot.quick_exits} exits in a row, each within "
                f"{policy.crash_window:g}s of its start (last: {what}), stopping",
            )
            return _exit_status(code)
        slot.restarts = 1 if ran >= policy.reset_after else slot.restarts + 1
        delay = policy.delay(slot.restarts)
        self.log(OWN_LABEL, f"{name} exited ({what}); restart {slot.restarts} in {delay:.1f}s")
        slot.due = now + delay
        return None

    def _stop_slot(self, slot: _Slot) -> None:
        child = slot.child
        if slot.due is None and child.poll() is None:
            how = f" ({child.spec.stop_signal.name})" if isinstance(child, _Spawned) else ""
            self.log(OWN_LABEL, f"stopping {child.name}{how}")
            code = child.stop()
            self.log(OWN_LABEL, f"{child.name} stopped ({_describe(code)})")
        if isinstance(child, _Spawned):
            child.kill_leftovers()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _signal_group(pgid: int, sig: int) -> None:
    # Gone already (or its id reused by someone else's process, which we may not signal).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _describe(code: int | None) -> str:
    if code is None:
        return "not running"
    return f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"


def _exit_status(code: int) -> int:
    """A non-zero status for a child that ended on its own: its code, or 128 + the signal."""
    if code < 0:
        return 128 - code
    return code or 1
