"""Each process of the stack, as one command line: `lookalike up`, the test harness and the
benchmarks run these, and a test holds docker-compose.yml and the Dockerfiles to them."""

from __future__ import annotations

import sys

from shared.keys import EMBED_QUEUE

API_APP = "api.app:create_app()"
API_CONFIG = "python:api.gunicorn_conf"  # its hooks: api/handover.py


def embed_worker(
    name: str = "embed", python: str = sys.executable, queue: str = EMBED_QUEUE
) -> list[str]:
    """A model worker on an embed queue (a generation's); solo pool: one process, one model."""
    argv = [python, "-m", "celery", "-A", "workers.app", "worker", "-Q", queue, "-P", "solo"]
    return [*argv, "-n", f"{name}@%h", "--loglevel", "INFO"]


def index_writer(python: str = sys.executable) -> list[str]:
    return [python, "-m", "workers.writer"]


def api_server(bind: str, python: str = sys.executable) -> list[str]:
    """One gunicorn process with threads: each process holds its own index replica (one worker,
    and a second while it hands over to a new one, api/handover.py)."""
    argv = [python, "-m", "gunicorn", "--bind", bind, "--workers", "1", "--threads", "8"]
    return [*argv, "--timeout", "120", "--config", API_CONFIG, API_APP]


def flower(host: str, port: int, python: str = sys.executable) -> list[str]:
    """Celery's monitoring UI for the embed queue; it needs only the broker, no project code.

    The broker comes from CELERY_BROKER_URL in its environment: it may hold a password.
    """
    argv = [python, "-m", "celery", "flower"]
    return [*argv, f"--address={host}", f"--port={port}"]
