"""`lookalike up`: the processes it runs and the Redis it embeds."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import redis

from cli import stack
from cli.redis_server import port_is_free
from cli.stack import run_stack, stack_specs, start_embedded_redis
from cli.supervisor import ProcessSpec
from shared.settings import Settings

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
    "import os, redis; "
    "redis.Redis.from_url(os.environ['LOOKALIKE_REDIS_URL'])"
    ".set('seen', os.environ['LOOKALIKE_DATA_DIR'])"
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
    assert run_stack(settings, "127.0.0.1", 8123) == 1  # the child's exit was unexpected
    output = capsys.readouterr().out
    assert "API on http://127.0.0.1:8123/" in output
    assert "child exited (exit code 0)" in output
    port = int((tmp_path / "redis" / "port").read_text())
    assert port_is_free(port)
    with start_embedded_redis(settings) as server, redis.Redis.from_url(server.url) as client:
        assert client.get("seen") == str(tmp_path.resolve()).encode()


def test_run_stack_uses_an_external_redis_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "stack_specs", _one_short_lived_child)
    with start_embedded_redis(Settings(data_dir=tmp_path / "external", redis_url=None)) as server:
        settings = Settings(
            data_dir=tmp_path / "data", redis_url=server.url, weights=weights_path(tmp_path)
        )
        assert run_stack(settings, "127.0.0.1", 8123) == 1
        assert not (tmp_path / "data" / "redis").exists()
        assert server.running
        with redis.Redis.from_url(server.url) as client:
            assert client.get("seen") == str((tmp_path / "data").resolve()).encode()
