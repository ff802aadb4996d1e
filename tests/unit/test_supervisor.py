"""The process supervisor, with real child processes."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.supervisor import ProcessSpec, Supervisor

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(60)"
IGNORES_SIGTERM = (
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('pid', os.getpid(), flush=True); time.sleep(60)"
)
FORKS = (
    "import os, subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print('pid', os.getpid(), 'grandchild', child.pid, flush=True); time.sleep(60)"
)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _eventually(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _pids(log: io.StringIO, name: str) -> list[int]:
    return [int(pid) for pid in re.findall(rf"^{name} +\| pid (\d+)", log.getvalue(), re.M)]


def _started(supervisor: Supervisor, log: io.StringIO, names: list[str]) -> dict[str, int]:
    """Start, and wait until every child printed its pid (so its signal handlers are set)."""
    supervisor.start()
    _eventually(lambda: all(_pids(log, name) for name in names))
    return {name: _pids(log, name)[0] for name in names}


def _gone(pid: int) -> bool:
    """Whether `pid` has exited; a zombie not yet reaped by init counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _assert_exited(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_output_lines_are_prefixed_by_padded_name() -> None:
    log = io.StringIO()
    code = "import sys; print('to stdout', flush=True); print('to stderr', file=sys.stderr)"
    specs = [ProcessSpec("api", _python(code)), ProcessSpec("writer", _python(code))]
    supervisor = Supervisor(specs, log_stream=log)
    supervisor.start()
    _eventually(lambda: log.getvalue().count("to std") == 4)
    supervisor.stop()
    lines = log.getvalue().splitlines()
    for name in ("api", "writer"):
        assert f"{name:<10} | to stdout" in lines
        assert f"{name:<10} | to stderr" in lines
    assert {line.index("|") for line in lines} == {11}


def test_stop_ends_every_child_and_its_group() -> None:
    log = io.StringIO()
    specs = [ProcessSpec("one", _python(SLEEPER)), ProcessSpec("two", _python(FORKS))]
    supervisor = Supervisor(specs, log_stream=log)
    pids = _started(supervisor, log, ["one", "two"])
    grandchild = int(re.findall(r"grandchild (\d+)", log.getvalue())[0])
    supervisor.stop()
    supervisor.stop()
    for pid in pids.values():
        _assert_exited(pid)
    _eventually(lambda: _gone(grandchild))
    assert log.getvalue().index("stopping two") < log.getvalue().index("stopping one")


def test_a_child_ignoring_its_stop_signal_is_killed_after_its_timeout() -> None:
    log = io.StringIO()
    spec = ProcessSpec("stubborn", _python(IGNORES_SIGTERM), stop_timeout=0.5)
    supervisor = Supervisor([spec], log_stream=log)
    pid = _started(supervisor, log, ["stubborn"])["stubborn"]
    began = time.monotonic()
    supervisor.stop()
    assert 0.5 <= time.monotonic() - began < 5
    _assert_exited(pid)
    assert "stubborn did not stop in time: SIGKILL" in log.getvalue()


def test_an_unexpected_exit_is_reported_and_stops_the_others() -> None:
    log = io.StringIO()
    failing = "import sys, time; time.sleep(0.3); sys.exit(3)"
    specs = [ProcessSpec("steady", _python(SLEEPER)), ProcessSpec("flaky", _python(failing))]
    supervisor = Supervisor(specs, log_stream=log)
    pid = _started(supervisor, log, ["steady"])["steady"]
    assert supervisor.wait() == 3
    assert "flaky exited (exit code 3), stopping" in log.getvalue()
    _assert_exited(pid)


def test_a_child_that_cannot_start_stops_those_already_started() -> None:
    log = io.StringIO()
    specs = [ProcessSpec("fine", _python(SLEEPER)), ProcessSpec("bad", ["/nonexistent/program"])]
    supervisor = Supervisor(specs, log_stream=log)
    with pytest.raises(FileNotFoundError):
        supervisor.start()
    for pid in re.findall(r"started fine \(pid (\d+)\)", log.getvalue()):
        _assert_exited(int(pid))


SCRIPT = """
import sys
from cli.supervisor import ProcessSpec, Supervisor
child = [sys.executable, "-c", {sleeper!r}]
supervisor = Supervisor([ProcessSpec("one", child), ProcessSpec("two", child)])
sys.exit(supervisor.run(on_started=lambda: supervisor.log("test", "all started")))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_run_exits_0_on_a_stop_signal_with_every_child_gone(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    script = tmp_path / "supervise.py"
    script.write_text(SCRIPT.format(sleeper=SLEEPER))
    process = subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    output = io.StringIO()
    while len(re.findall(r"\| pid \d+", output.getvalue())) < 2:
        line = process.stdout.readline()
        assert line, f"supervisor ended early: {output.getvalue()}"
        output.write(line)
    process.send_signal(stop_signal)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output.getvalue() + rest
    assert f"{stop_signal.name}: stopping" in rest
    for pid in _pids(output, "one") + _pids(output, "two"):
        _assert_exited(pid)
