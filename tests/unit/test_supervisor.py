"""The process supervisor, with real child processes."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cli.redis_server import RedisServer
from cli.supervisor import ProcessSpec, RestartPolicy, Supervisor
from shared.errors import EXIT_CONFIG

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


def test_children_share_our_session_each_in_a_process_group_of_its_own() -> None:
    # One session: Linux weighs niceness across its processes (autogroup scheduling), so the
    # writer's niceness counts against the API's queries.
    log = io.StringIO()
    specs = [ProcessSpec("one", _python(SLEEPER)), ProcessSpec("two", _python(SLEEPER))]
    supervisor = Supervisor(specs, log_stream=log)
    pids = _started(supervisor, log, ["one", "two"])
    try:
        for pid in pids.values():
            assert os.getsid(pid) == os.getsid(0)
            assert os.getpgid(pid) == pid
    finally:
        supervisor.stop()


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


FAST = RestartPolicy(first_delay=0.2, max_delay=0.4, reset_after=3.0)


@contextlib.contextmanager
def _tended(supervisor: Supervisor) -> Iterator[list[int]]:
    """`wait()` in a thread for the block; its result in the list; stopped afterwards."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(supervisor.wait()), daemon=True)
    thread.start()
    try:
        yield result
    finally:
        supervisor.request_stop()
        thread.join(30)
        supervisor.stop()


def _kill_and_wait_for_a_new_pid(log: io.StringIO, name: str) -> tuple[float, int]:
    """SIGKILL the newest `name`; how long its next pid took to appear, and that pid."""
    before = _pids(log, name)
    os.kill(before[-1], signal.SIGKILL)
    killed = time.monotonic()
    _eventually(lambda: len(_pids(log, name)) > len(before))
    return time.monotonic() - killed, _pids(log, name)[-1]


def test_a_killed_child_is_restarted_with_doubling_delays_and_logged() -> None:
    log = io.StringIO()
    specs = [ProcessSpec("steady", _python(SLEEPER)), ProcessSpec("flaky", _python(SLEEPER))]
    supervisor = Supervisor(specs, log_stream=log, policy=FAST)
    steady = _started(supervisor, log, ["steady", "flaky"])["steady"]
    with _tended(supervisor) as result:
        waits = [_kill_and_wait_for_a_new_pid(log, "flaky")[0] for _ in range(3)]
        assert not result
    assert result == [0]
    assert waits[0] >= 0.2 and waits[1] >= 0.4 and waits[2] >= 0.4
    assert [line for line in log.getvalue().splitlines() if "flaky exited" in line] == [
        "supervisor | flaky exited (killed by SIGKILL); restart 1 in 0.2s",
        "supervisor | flaky exited (killed by SIGKILL); restart 2 in 0.4s",
        "supervisor | flaky exited (killed by SIGKILL); restart 3 in 0.4s",
    ]
    assert len(re.findall(r"started flaky \(pid \d+\)", log.getvalue())) == 4
    assert "steady exited" not in log.getvalue()
    _assert_exited(steady)


def test_the_delays_double_up_to_their_cap_however_many_restarts() -> None:
    policy = RestartPolicy()
    delays = [policy.delay(restart) for restart in (1, 2, 3, 4, 5, 6, 7, 10_000)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_the_delay_starts_over_after_a_long_enough_run() -> None:
    log = io.StringIO()
    supervisor = Supervisor([ProcessSpec("flaky", _python(SLEEPER))], log_stream=log, policy=FAST)
    _started(supervisor, log, ["flaky"])
    with _tended(supervisor):
        _kill_and_wait_for_a_new_pid(log, "flaky")
        time.sleep(FAST.reset_after)
        _kill_and_wait_for_a_new_pid(log, "flaky")
    restarts = re.findall(r"restart \d+ in [\d.]+s", log.getvalue())
    assert restarts == ["restart 1 in 0.2s", "restart 1 in 0.2s"]


def test_what_a_crashed_child_left_in_its_group_is_killed_before_the_restart() -> None:
    log = io.StringIO()
    supervisor = Supervisor([ProcessSpec("forks", _python(FORKS))], log_stream=log, policy=FAST)
    _started(supervisor, log, ["forks"])
    grandchild = int(re.findall(r"grandchild (\d+)", log.getvalue())[0])
    with _tended(supervisor):
        _kill_and_wait_for_a_new_pid(log, "forks")
        assert _gone(grandchild)


def test_an_exit_with_exit_config_stops_the_stack_with_78() -> None:
    log = io.StringIO()
    misconfigured = "import sys, time; time.sleep(0.3); print('no model here'); sys.exit(78)"
    specs = [ProcessSpec("steady", _python(SLEEPER)), ProcessSpec("embed", _python(misconfigured))]
    supervisor = Supervisor(specs, log_stream=log, policy=FAST)
    pid = _started(supervisor, log, ["steady"])["steady"]
    assert supervisor.wait() == EXIT_CONFIG
    lines = log.getvalue().splitlines()
    assert "embed      | no model here" in lines
    assert (
        "supervisor | embed exited (exit code 78: it cannot run as configured), stopping" in lines
    )
    assert "restart" not in log.getvalue()
    _assert_exited(pid)


def test_a_child_that_keeps_crashing_at_start_stops_the_stack() -> None:
    log = io.StringIO()
    policy = RestartPolicy(first_delay=0.1, max_delay=0.2, crash_window=10, crash_limit=5)
    crashing = "import sys; print('bad luck'); sys.exit(3)"
    specs = [ProcessSpec("steady", _python(SLEEPER)), ProcessSpec("flaky", _python(crashing))]
    supervisor = Supervisor(specs, log_stream=log, policy=policy)
    pid = _started(supervisor, log, ["steady"])["steady"]
    assert supervisor.wait() == 3
    lines = log.getvalue().splitlines()
    assert [line for line in lines if "flaky exited" in line] == [
        "supervisor | flaky exited (exit code 3); restart 1 in 0.1s",
        "supervisor | flaky exited (exit code 3); restart 2 in 0.2s",
        "supervisor | flaky exited (exit code 3); restart 3 in 0.2s",
        "supervisor | flaky exited (exit code 3); restart 4 in 0.2s",
    ]
    assert lines.count("flaky      | bad luck") == 5
    assert (
        "supervisor | flaky keeps crashing: 5 exits in a row, each within 10s of its start "
        "(last: exit code 3), stopping"
    ) in lines
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


BACKOFF_SCRIPT = """
import sys
from cli.redis_server import RedisServer
from cli.supervisor import ProcessSpec, RestartPolicy, Supervisor
crash = [sys.executable, "-c", "print('crashed', flush=True)"]
supervisor = Supervisor([ProcessSpec("crash", crash)], policy=RestartPolicy(first_delay=30))
sys.exit(supervisor.run())
"""


@pytest.mark.timeout(60)
def test_a_stop_signal_during_a_restart_delay_exits_0_at_once(tmp_path: Path) -> None:
    script = tmp_path / "supervise.py"
    script.write_text(BACKOFF_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    lines = {process.stdout.readline() for _ in range(3)}
    assert {
        "crash      | crashed\n",
        "supervisor | crash exited (exit code 0); restart 1 in 30.0s\n",
    } < lines
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert rest == "supervisor | SIGTERM: stopping\n"
    assert time.monotonic() - began < 5


def test_a_service_that_cannot_start_again_is_retried_until_it_can(tmp_path: Path) -> None:
    log = io.StringIO()
    server = RedisServer(tmp_path / "redis", appendonly=False)
    policy = RestartPolicy(first_delay=0.5, max_delay=1.0)
    supervisor = Supervisor([server], log_stream=log, policy=policy)
    supervisor.start()
    with _tended(supervisor), socket.socket() as squatter:
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _eventually(lambda: server.poll() is not None)
        squatter.bind(("127.0.0.1", server.port))  # before the restart, 0.5 s later
        squatter.listen()
        _eventually(lambda: "could not start" in log.getvalue())
        squatter.close()
        _eventually(lambda: log.getvalue().count("started redis") == 2)
        assert server.running
    lines = log.getvalue().splitlines()
    assert "supervisor | redis exited (killed by SIGKILL); restart 1 in 0.5s" in lines
    failure = next(line for line in lines if "could not start" in line)
    assert failure.startswith(
        "supervisor | redis exited (could not start: redis-server exited with code 1"
    )
    assert "supervisor |   " in log.getvalue()  # the log's tail, one prefixed line each
    assert "Address already in use" in log.getvalue()
    assert "supervisor | redis stopped (exit code 0)" in lines
