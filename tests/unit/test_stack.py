"""`lookalike up`: the processes it runs and the Redis it embeds."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from cli import stack
from cli.redis_server import port_is_free
from cli.stack import (
    check_exposure,
    exposure_warning,
    is_loopback,
    mask_url,
    run_stack,
    stack_specs,
    start_embedded_redis,
)
from cli.supervisor import ProcessSpec
from shared.errors import EXIT_CONFIG, LookalikeError
from shared.settings import Settings
from tests.support.stack import wait_until

ROOT = Path(__file__).resolve().parents[2]
LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))

URL = "redis://127.0.0.1:6390/0"


def test_stack_specs_point_three_processes_at_redis() -> None:
    settings = Settings(data_dir=Path("relative/data"), redis_url=None)
    specs = stack_specs(settings, URL, "127.0.0.1", 8123)
    assert [spec.name for spec in specs] == ["embed", "writer", "api"]
    for spec in specs:
        assert spec.argv[:2] == [sys.executable, "-m"]
        assert spec.env is not None
        assert spec.env["LOOKALIKE_REDIS_URL"] == URL
        assert spec.env["LOOKALIKE_DATA_DIR"] == str(Path("relative/data").resolve())
        assert spec.env["PATH"].startswith(str(Path(sys.executable).parent))
    embed, writer, api = (spec.argv[2:] for spec in specs)
    assert embed[:2] == ["celery", "-A"] and "embed@%h" in embed
    assert embed[embed.index("-Q") + 1] == "embed" and embed[embed.index("-P") + 1] == "solo"
    assert writer == ["workers.writer"]
    assert api[0] == "gunicorn" and api[-1] == "api.app:create_app()"
    assert api[api.index("--bind") + 1] == "127.0.0.1:8123"


def test_an_ipv6_host_is_bracketed() -> None:
    specs = stack_specs(Settings(redis_url=None), URL, "::", 8123)
    assert "[::]:8123" in specs[-1].argv


def test_embedded_redis_keeps_its_port_and_data(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", redis_url=None)
    port_file = tmp_path / "data" / "redis" / "port"
    with start_embedded_redis(settings) as first, redis.Redis.from_url(first.url) as client:
        client.set("key", "value")
    assert port_file.read_text().strip() == str(first.port)
    with start_embedded_redis(settings) as second, redis.Redis.from_url(second.url) as client:
        assert second.port == first.port
        assert client.get("key") == b"value"


def test_a_taken_port_is_replaced_and_rewritten(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "redis").mkdir()
        (tmp_path / "redis" / "port").write_text(f"{port}\n")
        with start_embedded_redis(settings) as server:
            assert server.port != port
            assert (tmp_path / "redis" / "port").read_text().strip() == str(server.port)


WRITE_AND_EXIT = (
    "import os, redis, sys; "
    "redis.Redis.from_url(os.environ['LOOKALIKE_REDIS_URL'])"
    ".set('seen', os.environ['LOOKALIKE_DATA_DIR']); "
    "print('cannot run like this'); sys.exit(78)"
)


def _one_short_lived_child(
    settings: Settings, redis_url: str, host: str, port: int
) -> list[ProcessSpec]:
    """In place of the real stack: one real process that uses the URL and data dir it is given."""
    real = stack_specs(settings, redis_url, host, port)[0]
    return [ProcessSpec("child", [sys.executable, "-c", WRITE_AND_EXIT], real.env)]


def weights_path(directory: Path) -> str:
    """A weights file that exists: enough for `up` to start (the children here load no model)."""
    path = directory / "weights.h5"
    path.touch()
    return str(path)


def test_run_stack_serves_redis_to_children_and_shuts_it_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stack, "stack_specs", _one_short_lived_child)
    settings = Settings(data_dir=tmp_path, redis_url=None, weights=weights_path(tmp_path))
    assert run_stack(settings, "127.0.0.1", 8123) == EXIT_CONFIG
    output = capsys.readouterr().out
    port = int((tmp_path / "redis" / "port").read_text())
    password = (tmp_path / "redis" / "password").read_text().strip()
    redis_dir = tmp_path.resolve() / "redis"
    assert (
        f"supervisor | API on http://127.0.0.1:8123/, Redis redis://:****@127.0.0.1:{port}/0 "
        f"(ours, data in {redis_dir}, password in {redis_dir / 'password'})"
    ) in output.splitlines()
    assert password not in output
    assert "child exited (exit code 78: it cannot run as configured), stopping" in output
    assert output.rstrip().endswith("supervisor | redis stopped (exit code 0)")
    assert port_is_free(port)
    with start_embedded_redis(settings) as server, redis.Redis.from_url(server.url) as client:
        assert client.get("seen") == str(tmp_path.resolve()).encode()


def test_run_stack_uses_an_external_redis_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stack, "stack_specs", _one_short_lived_child)
    with start_embedded_redis(Settings(data_dir=tmp_path / "external", redis_url=None)) as server:
        settings = Settings(
            data_dir=tmp_path / "data", redis_url=server.url, weights=weights_path(tmp_path)
        )
        assert run_stack(settings, "127.0.0.1", 8123) == EXIT_CONFIG
        assert not (tmp_path / "data" / "redis").exists()
        assert server.running
        with redis.Redis.from_url(server.url) as client:
            assert client.get("seen") == str((tmp_path / "data").resolve()).encode()
    output = capsys.readouterr().out
    assert f"Redis redis://:****@127.0.0.1:{server.port}/0\n" in output
    assert "redis stopped" not in output


def test_embedded_redis_has_the_settings_limits(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, redis_url=None, appendfsync="always", redis_maxmemory=200 * 2**20
    )
    with start_embedded_redis(settings) as server, server.control_client() as control:
        assert control.config_get("appendonly") == {"appendonly": "yes"}
        assert control.config_get("appendfsync") == {"appendfsync": "always"}
        assert control.config_get("maxmemory") == {"maxmemory": str(200 * 2**20)}
        assert control.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    password = tmp_path / "redis" / "password"
    assert server.url.startswith(f"redis://:{password.read_text().strip()}@")
    assert stat.S_IMODE(password.stat().st_mode) == 0o600
    with start_embedded_redis(settings) as again:
        assert again.url == server.url


BEAT = """
import os, time, redis
client = redis.Redis.from_url(os.environ["LOOKALIKE_REDIS_URL"], socket_timeout=1)
print("pid", os.getpid(), flush=True)
while True:
    try:
        client.incr("beats")
    except redis.ConnectionError:
        pass  # reconnects on the next command
    time.sleep(0.05)
"""

BEATING_STACK = """
import sys
from pathlib import Path
from cli import stack
from cli.supervisor import ProcessSpec
from shared.settings import Settings

def beating(settings, redis_url, host, port):
    env = stack.child_env(settings, redis_url)
    return [ProcessSpec("beat", [sys.executable, "-c", {beat!r}], env)]

stack.stack_specs = beating
settings = Settings(data_dir=Path(sys.argv[1]), redis_url=None, weights=sys.argv[2])
sys.exit(stack.run_stack(settings, "127.0.0.1", 8123))
"""


@pytest.mark.timeout(90)
def test_a_killed_embedded_redis_comes_back_on_its_port_for_running_children(
    tmp_path: Path,
) -> None:
    script = tmp_path / "up.py"
    script.write_text(BEATING_STACK.format(beat=BEAT))
    log = tmp_path / "up.log"
    argv = [sys.executable, str(script), str(tmp_path / "data"), weights_path(tmp_path)]
    with log.open("w") as out:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "beat       | pid" in log.read_text(), 30, "beat did not start")
        redis_pid = int(re.findall(r"started redis \(pid (\d+)\)", log.read_text())[0])
        port = (tmp_path / "data" / "redis" / "port").read_text().strip()
        password = (tmp_path / "data" / "redis" / "password").read_text().strip()
        with redis.Redis(port=int(port), password=password) as client:
            wait_until(lambda: int(client.get("beats") or 0) > 5, 10, "no beats")
            os.kill(redis_pid, signal.SIGKILL)
            wait_until(lambda: log.read_text().count("started redis") == 2, 30, "no restart")
            beats = int(client.get("beats") or 0)
            wait_until(lambda: int(client.get("beats") or 0) > beats + 5, 10, "no beats after")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    text = log.read_text()
    assert "supervisor | redis exited (killed by SIGKILL); restart 1 in 1.0s" in text
    assert text.count("started beat") == 1 and "beat exited" not in text
    assert "supervisor | redis stopped (exit code 0)" in text


@pytest.mark.parametrize("command", ["up", "api"])
def test_listening_beyond_loopback_without_a_key_is_refused(tmp_path: Path, command: str) -> None:
    result = _lookalike(tmp_path, command, "--host", "0.0.0.0")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: refusing to serve the API on 0.0.0.0 without an API key: anyone who can reach "
        "it could add and delete products. Set LOOKALIKE_API_KEY, use --host 127.0.0.1, or "
        "pass --insecure\n"
    )
    assert not (tmp_path / "data").exists()  # nothing was started


def test_flower_beyond_loopback_is_refused_even_with_a_key(tmp_path: Path) -> None:
    result = _lookalike(
        tmp_path, "up", "--host", "192.0.2.1", "--flower", LOOKALIKE_API_KEY="k1,k2"
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: refusing to serve Flower on 192.0.2.1: it has no authentication, and anyone "
        "who can reach it could control the workers. Use --host 127.0.0.1, or pass --insecure\n"
    )


def test_api_needs_a_redis_url(tmp_path: Path) -> None:
    result = _lookalike(tmp_path, "api", "--insecure", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert result.stderr == (
        "error: LOOKALIKE_REDIS_URL is not set: `lookalike api` serves the data of a Redis that "
        "runs already (`lookalike up` starts its own)\n"
    )


def _lookalike(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("LOOKALIKE_")}
    clean.update(LOOKALIKE_DATA_DIR=str(tmp_path / "data"), **env)
    return subprocess.run(
        [LOOKALIKE, *args], env=clean, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
        ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False), ("::", False),
        ("", False), ("192.168.1.10", False), ("example.com", False),
    ],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_check_exposure_allows_loopback_a_key_or_insecure() -> None:
    open_settings, keyed = Settings(redis_url=None), Settings(redis_url=None, api_key="k")
    check_exposure(open_settings, "::1", insecure=False, flower=5555)
    check_exposure(keyed, "0.0.0.0", insecure=False)
    check_exposure(open_settings, "0.0.0.0", insecure=True, flower=5555)
    with pytest.raises(LookalikeError, match=r"^refusing to serve the API on :: without"):
        check_exposure(open_settings, "::", insecure=False)
    assert exposure_warning(open_settings, "0.0.0.0") == (
        "warning: --insecure: anyone who can reach 0.0.0.0 can add and delete products"
    )
    assert exposure_warning(keyed, "0.0.0.0") is None
    assert exposure_warning(open_settings, "127.0.0.1") is None


def test_insecure_up_says_so_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stack, "stack_specs", _one_short_lived_child)
    settings = Settings(data_dir=tmp_path, redis_url=None, weights=weights_path(tmp_path))
    assert run_stack(settings, "0.0.0.0", 8123, insecure=True) == EXIT_CONFIG
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        "supervisor | warning: --insecure: anyone who can reach 0.0.0.0 can add and delete products"
    )


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:****@127.0.0.1:6379/0"),
        ("redis://app:s3cret@redis:6379/1", "redis://app:****@redis:6379/1"),
        ("rediss://:a%40b@[::1]:6380/0", "rediss://:****@[::1]:6380/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked
