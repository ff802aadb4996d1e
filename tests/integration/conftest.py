"""The end-to-end stack: real redis-server, celery worker, writer and gunicorn processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, weights_file) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stack"), weights_file)
    stack.start_redis()
    stack.start_worker()
    stack.start_writer()
    url = stack.start_api()
    stack.wait_ready(url)
    yield stack
    stack.stop_all()
