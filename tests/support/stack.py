"""The real stack for end-to-end tests: redis-server, celery workers, the writer, gunicorn."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from cli import processes
from cli.redis_server import RedisServer, free_port
from shared.keys import Generation

ROOT = Path(__file__).resolve().parents[2]


class Stack:
    """Owns every process of one test stack; each can be stopped, killed and started again."""

    def __init__(self, root: Path, weights: Path, **settings: Any) -> None:
        self.root = root
        # With a password, as `lookalike up` runs it: the stack works as Redis' restricted user.
        self.redis = RedisServer(root / "redis", password=secrets.token_urlsafe(16))
        self.env = {
            **os.environ,
            "LOOKALIKE_WEIGHTS": str(weights),
            "LOOKALIKE_DATA_DIR": str(root / "data"),
            "LOOKALIKE_BATCH_SIZE": "8",
            "LOOKALIKE_BATCH_WAIT": "0.2",
            "LOOKALIKE_VISIBILITY_TIMEOUT": "6",
            # A search must be answered even when it lands on a worker that is still building
            # its model after a restart, on a loaded 2-core machine (over 20 s seen in CI runs).
            "LOOKALIKE_SEARCH_WAIT": "45",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
            **{f"LOOKALIKE_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.api_urls: list[str] = []

    def start_redis(self) -> None:
        self.redis.start()
        self.env["LOOKALIKE_REDIS_URL"] = self.redis.url

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv, env={**self.env, **(env or {})}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            process_group=0,
        )  # fmt: skip
        self.processes[name] = process
        return process

    def start_worker(self, name: str = "embed", **settings: Any) -> subprocess.Popen[bytes]:
        """An embed worker; keyword arguments override its settings (LOOKALIKE_<NAME>)."""
        env = {f"LOOKALIKE_{key.upper()}": str(value) for key, value in settings.items()}
        queue = Generation.named(str(settings.get("generation", ""))).queue
        return self._spawn(name, processes.embed_worker(name, queue=queue), env)

    def start_writer(self, name: str = "writer", **settings: Any) -> subprocess.Popen[bytes]:
        """An index writer; keyword arguments override its settings (LOOKALIKE_<NAME>)."""
        env = {f"LOOKALIKE_{key.upper()}": str(value) for key, value in settings.items()}
        return self._spawn(name, processes.index_writer(), env)

    def start_api(self, name: str = "api", **settings: Any) -> str:
        """An API process; keyword arguments override its settings (LOOKALIKE_<NAME>)."""
        port = free_port()
        env = {f"LOOKALIKE_{key.upper()}": str(value) for key, value in settings.items()}
        self._spawn(name, processes.api_server(f"127.0.0.1:{port}"), env)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(url + "/healthz"), 60, f"{name} did not start")
        self.api_urls.append(url)
        return url

    def running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def ensure_up(self, worker: bool = True) -> str:
        """Start whatever an earlier test stopped (Redis, writer, API, worker); the API's URL."""
        if not self.redis.running:
            self.start_redis()
        if not self.running("writer"):
            self.processes.pop("writer", None)
            self.start_writer()
        if not self.running("api"):
            self.processes.pop("api", None)
            self.api_urls.clear()
            self.start_api()
        if worker and not self.running("embed"):
            self.processes.pop("embed", None)
            self.start_worker()
        return self.api_urls[-1]

    def stop_if_running(self, name: str) -> None:
        if name in self.processes:
            self.stop(name)

    def wait_ready(self, url: str, timeout: float = 120) -> None:
        wait_until(lambda: answers(url + "/readyz"), timeout, "the stack did not get ready")

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)
        self.api_urls.clear()
        self.redis.stop()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")


def answers(url: str) -> bool:
    """Whether url answers 200 now."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_until(condition: Any, timeout: float, message: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(message)
