"""Unit tests: no model and no process of the stack; the app against a real redis-server."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from cli.redis_server import RedisServer
from shared.settings import Settings

Launch = Callable[..., AbstractContextManager[Flask]]
MODEL_MODULES = ("tensorflow", "keras")


@pytest.fixture(autouse=True)
def without_the_model() -> Iterator[None]:
    """Fail a unit test that loads TensorFlow or Keras: it belongs in tests/integration."""
    before = {name for name in MODEL_MODULES if name in sys.modules}
    yield
    loaded = {name for name in MODEL_MODULES if name in sys.modules} - before
    assert not loaded, f"a unit test imported {', '.join(sorted(loaded))}: use tests/integration"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server


@contextmanager
def running_app(redis_url: str, data_dir: Path, **overrides: Any) -> Iterator[Flask]:
    """An app on an empty Redis with small image limits, its replica stopped afterwards."""
    redis.Redis.from_url(redis_url).flushall()
    limits = {"max_image_bytes": 50_000, "max_image_pixels": 1_000_000, "search_wait": 0.2}
    settings = Settings(redis_url=redis_url, data_dir=data_dir, **{**limits, **overrides})
    app = create_app(settings)
    # As /readyz waits for it: until the replica has loaded, /similar and /search are 503s.
    assert app.extensions["lookalike"].replica.loaded.wait(10), "the replica did not load"
    try:
        yield app
    finally:
        app.extensions["lookalike"].replica.stop()


@pytest.fixture(scope="module")
def launch(redis_server, tmp_path_factory) -> Launch:
    """Start an app with settings overridden: `with launch(api_key="k") as app: ...`."""
    return lambda **overrides: running_app(
        redis_server.url, tmp_path_factory.mktemp("data"), **overrides
    )


@pytest.fixture
def app(launch) -> Iterator[Flask]:
    with launch() as app:
        yield app


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()
