"""A small process supervisor for `lookalike up`: start children, prefix their output, stop them."""

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
from typing import IO, TextIO

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


@dataclass
class _Child:
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    reader: threading.Thread


class Supervisor:
    """Runs `specs` as children, each in its own process group, until a signal or a failure."""

    def __init__(self, specs: Sequence[ProcessSpec], log_stream: TextIO | None = None) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"process names must be unique: {names}")
        self.specs = list(specs)
        self.log_stream = log_stream if log_stream is not None else sys.stdout
        self._width = max(len(name) for name in [*names, OWN_LABEL])
        self._children: list[_Child] = []
        self._write_lock = threading.Lock()
        self._stop_lock = threading.Lock()
        # Plain attributes, not Events: signal handlers set them, and an Event's lock could
        # deadlock a handler that interrupts its own thread inside that lock.
        self._stop_requested = False
        self._force = False
        self._signal: int | None = None
        self._stopped = False

    def start(self) -> None:
        """Start every child in order; if one cannot start, stop those already started."""
        try:
            for spec in self.specs:
                self._children.append(self._spawn(spec))
        except BaseException:
            self.stop()
            raise

    def wait(self) -> int:
        """Block until a stop is requested (0) or a child exits (its code, others stopped)."""
        while not self._stop_requested:
            for child in self._children:
                code = child.process.poll()
                if code is not None:
                    self.log(OWN_LABEL, f"{child.spec.name} exited ({_describe(code)}), stopping")
                    self.stop()
                    return _exit_status(code)
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
            for child in reversed(self._children):
                self._stop_child(child)
            for child in self._children:
                child.reader.join(timeout=1.0)

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """Start, wait for SIGINT/SIGTERM or a failed child, stop; the exit code (0: clean)."""
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
        self._force = self._stop_requested
        self._stop_requested = True

    def log(self, name: str, line: str) -> None:
        """Write one line prefixed with `name`, padded so that the bars line up."""
        with self._write_lock:
            self.log_stream.write(f"{name:<{self._width}} | {line.rstrip()}\n")
            self.log_stream.flush()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No output here: the interrupted code may be in the middle of writing to the stream.
        self._signal = signum
        self.request_stop()

    def _spawn(self, spec: ProcessSpec) -> _Child:
        # A session of its own: a terminal's Ctrl-C reaches only us, and we stop children in order.
        process = subprocess.Popen(
            spec.argv,
            env=spec.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        reader = threading.Thread(
            target=self._pump,
            args=(spec.name, process.stdout),
            name=f"log-{spec.name}",
            daemon=True,
        )
        reader.start()
        self.log(OWN_LABEL, f"started {spec.name} (pid {process.pid})")
        return _Child(spec, process, reader)

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                self.log(name, raw.decode("utf-8", errors="replace"))

    def _stop_child(self, child: _Child) -> None:
        process, spec = child.process, child.spec
        if process.poll() is None:
            self.log(OWN_LABEL, f"stopping {spec.name} ({_signal_name(spec.stop_signal)})")
            _signal_group(process.pid, spec.stop_signal)
            if not self._wait_exit(process, spec.stop_timeout):
                self.log(OWN_LABEL, f"{spec.name} did not stop in time: SIGKILL")
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
            self.log(OWN_LABEL, f"{spec.name} stopped ({_describe(process.returncode)})")
        # Whatever it started and left behind in its group goes too.
        _signal_group(process.pid, signal.SIGKILL)

    def _wait_exit(self, process: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._force:
            try:
                process.wait(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
                return True
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    return False
        return process.poll() is not None


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


def _describe(code: int) -> str:
    return f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"


def _exit_status(code: int) -> int:
    """A non-zero status for a child that ended on its own: its code, or 128 + the signal."""
    if code < 0:
        return 128 - code
    return code or 1
