"""`lookalike up`: Redis (our own unless LOOKALIKE_REDIS_URL is set), the workers and the API."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from cli import processes
from cli.redis_server import (
    PASSWORD_FILE,
    RedisServer,
    free_port,
    port_is_free,
    read_or_create_password,
)
from cli.supervisor import OWN_LABEL, ProcessSpec, Service, Supervisor
from shared.errors import LookalikeError, WeightsUnavailable
from shared.model_id import IMAGENET_NOTOP_FILE
from shared.settings import Settings

RANDOM_NEAR_DUPLICATE = 0.9995
PORT_FILE = "port"


def embedded_redis(settings: Settings) -> RedisServer:
    """The appendonly Redis of data_dir/redis, not started: its password (made once), the port
    it had last time if still free, and the settings' fsync policy and memory limit."""
    directory = settings.data_dir.resolve() / "redis"
    port_file = directory / PORT_FILE
    stored = _read_port(port_file)
    port = stored if stored is not None and port_is_free(stored) else free_port()
    if port != stored:
        _write_port(port_file, port)
    return RedisServer(
        directory,
        port=port,
        appendonly=True,
        password=read_or_create_password(directory / PASSWORD_FILE),
        appendfsync=settings.appendfsync,
        maxmemory=settings.redis_maxmemory,
    )


def start_embedded_redis(settings: Settings) -> RedisServer:
    """The embedded Redis (see `embedded_redis`), started."""
    server = embedded_redis(settings)
    server.start()
    return server


def check_exposure(
    settings: Settings, host: str, insecure: bool, flower: int | None = None
) -> None:
    """Refuse to listen beyond loopback without an API key (or at all, for Flower), unless
    `insecure`: anyone who reaches an open API can add and delete products."""
    if insecure or is_loopback(host):
        return
    if not settings.api_keys:
        raise LookalikeError(
            f"refusing to serve the API on {host} without an API key: anyone who can reach it "
            "could add and delete products. Set LOOKALIKE_API_KEY, use --host 127.0.0.1, or "
            "pass --insecure"
        )
    if flower is not None:
        raise LookalikeError(
            f"refusing to serve Flower on {host}: it has no authentication, and anyone who can "
            "reach it could control the workers. Use --host 127.0.0.1, or pass --insecure"
        )


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1) or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(settings: Settings, host: str) -> str | None:
    """The warning for an API that `--insecure` lets listen beyond loopback without a key."""
    if is_loopback(host) or settings.api_keys:
        return None
    return f"warning: --insecure: anyone who can reach {host} can add and delete products"


def mask_url(url: str) -> str:
    """`url` with its password, if any, replaced by ****."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:****@{host}"))


def child_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """The environment of every child: ours, with the stack's Redis, data dir and weights."""
    # Not resolved: the venv's python is a symlink, and resolving it would leave the venv.
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "LOOKALIKE_REDIS_URL": redis_url,
        "LOOKALIKE_DATA_DIR": str(settings.data_dir.resolve()),
        "LOOKALIKE_WEIGHTS": settings.weights,
        "LOOKALIKE_NEAR_DUPLICATE_THRESHOLD": str(settings.near_duplicate_threshold),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }


def stack_specs(settings: Settings, redis_url: str, host: str, port: int) -> list[ProcessSpec]:
    """The embed worker, the index writer and the API, all pointed at `redis_url`."""
    python = sys.executable
    env = child_env(settings, redis_url)
    return [
        # Celery's warm shutdown finishes the batch in hand; a SIGKILL only gets it redelivered.
        ProcessSpec("embed", processes.embed_worker(python=python), env, stop_timeout=30),
        ProcessSpec("writer", processes.index_writer(python), env),
        ProcessSpec("api", api_argv(host, port, python), env),
    ]


def api_argv(host: str, port: int, python: str = sys.executable) -> list[str]:
    """The API process listening on host:port."""
    return processes.api_server(_address(host, port), python)


def flower_spec(settings: Settings, redis_url: str, host: str, port: int) -> ProcessSpec:
    """Flower, given the broker in its environment: a command line is readable by every user."""
    env = {**child_env(settings, redis_url), "CELERY_BROKER_URL": redis_url}
    return ProcessSpec("flower", processes.flower(host, port), env)


def serve_api(settings: Settings, host: str, port: int, insecure: bool) -> NoReturn:
    """`lookalike api`: become one API process (gunicorn) on LOOKALIKE_REDIS_URL."""
    check_exposure(settings, host, insecure)
    if settings.redis_url is None:
        raise LookalikeError(
            "LOOKALIKE_REDIS_URL is not set: `lookalike api` serves the data of a Redis that "
            "runs already (`lookalike up` starts its own)"
        )
    warning = exposure_warning(settings, host)
    if warning:
        print(f"{OWN_LABEL} | {warning}", flush=True)
    argv = api_argv(host, port)
    # exec, not a child: in a container gunicorn is then the process that gets the stop signal.
    os.execv(argv[0], argv)


def choose_weights(settings: Settings, demo: bool) -> tuple[Settings, str | None]:
    """The settings the stack runs with, and a notice when the demo falls back to random weights.

    The weights are fetched (or found) here, before anything starts, so that a stack without its
    model fails at once with one message instead of leaving a worker that cannot start.
    """
    from workers.weights import resolve_weights

    try:
        with _native_stderr_silenced():  # TensorFlow's start-up lines, from C++, on fd 2
            resolve_weights(settings)
        return settings, None
    except WeightsUnavailable as exc:
        if not (demo and settings.weights == "imagenet"):
            raise
        reason = exc.message.split(". ", 1)[0]
    # A random model's vectors all lie close together (cosines of 0.986 to 0.999 on the demo
    # catalog): only copies of one image reach this, so they alone are reported as duplicates.
    update = {"weights": "random", "near_duplicate_threshold": RANDOM_NEAR_DUPLICATE}
    fallback = settings.model_copy(update=update)
    with _native_stderr_silenced():
        resolve_weights(fallback)
    return fallback, (
        f"{reason}: the demo runs on a seeded random model instead. "
        f"For real recommendations copy {IMAGENET_NOTOP_FILE} to this machine, set "
        "LOOKALIKE_WEIGHTS to its path and use a new LOOKALIKE_DATA_DIR."
    )


def run_stack(
    settings: Settings,
    host: str,
    port: int,
    demo: int = 0,
    flower: int | None = None,
    insecure: bool = False,
) -> int:
    """Run the whole stack, restarting what exits, until SIGINT/SIGTERM, a process that cannot
    run as configured or one that keeps crashing; the exit code.

    With demo > 0, once the stack is ready a demo catalog of that many items is written (once)
    into the data directory and imported, and the gallery's address is printed. With a flower
    port, Celery's Flower UI runs too.
    """
    check_exposure(settings, host, insecure, flower)
    settings, notice = choose_weights(settings, demo > 0)
    for line in (notice, exposure_warning(settings, host)):
        if line:
            print(f"{OWN_LABEL} | {line}", flush=True)
    server, redis_url, redis_note = _redis(settings)
    # Our Redis starts first and stops last, after every process that writes to it.
    children: list[ProcessSpec | Service] = [server] if server is not None else []
    children += stack_specs(settings, redis_url, host, port)
    if flower is not None:
        children.append(flower_spec(settings, redis_url, host, flower))
    supervisor = Supervisor(children)
    url = f"http://{_address(_reachable(host), port)}"

    def announce() -> None:
        supervisor.log(OWN_LABEL, f"API on {url}/, Redis {redis_note}")
        if flower is not None:
            supervisor.log(OWN_LABEL, f"Flower on http://{_address(_reachable(host), flower)}/")
        supervisor.log(OWN_LABEL, "Ctrl-C stops everything")
        if demo > 0:
            threading.Thread(
                target=import_demo, args=(settings, url, demo, supervisor), daemon=True
            ).start()

    return supervisor.run(on_started=announce)


def _redis(settings: Settings) -> tuple[RedisServer | None, str, str]:
    """Our own Redis (not started) unless LOOKALIKE_REDIS_URL is set, its URL, and a line that
    says where it is without its password."""
    if settings.redis_url is not None:
        return None, settings.redis_url, mask_url(settings.redis_url)
    server = embedded_redis(settings)
    where = f"data in {server.directory}, password in {server.directory / PASSWORD_FILE}"
    return server, server.url, f"{mask_url(server.url)} (ours, {where})"


def import_demo(settings: Settings, url: str, n: int, supervisor: Supervisor) -> None:
    """Write the demo catalog once, import it through the API, then point at the gallery."""
    from cli.client import ApiClient
    from cli.demo_catalog import write_demo_catalog
    from cli.importer import CatalogImporter

    def say(line: str) -> None:
        supervisor.log("demo", line)

    client = ApiClient(url, settings.client_api_key)
    probe = ApiClient(url, settings.client_api_key, retries=0)  # no retry warnings while waiting
    deadline = time.monotonic() + 600
    while not _ready(probe):
        if time.monotonic() > deadline:
            say("the stack did not get ready in 10 minutes; no demo import")
            return
        time.sleep(1)
    directory = settings.data_dir / "demo-catalog"
    if not (directory / "styles.csv").exists():
        say(f"writing a demo catalog of {n} items to {directory}")
        write_demo_catalog(directory, n)
    say("importing it (items already indexed are skipped)")
    report = CatalogImporter(client).run(directory, progress=False)
    for line in report.summary().splitlines():
        say(line)
    say(f"gallery: {url}/")


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a while (Python's own errors still raise)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _ready(client: Any) -> bool:
    try:
        client.request("GET", "/readyz")
    except LookalikeError:
        return False
    return True


def _reachable(host: str) -> str:
    """An address a local client can use for the bind address host."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _address(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _read_port(path: Path) -> int | None:
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _write_port(path: Path, port: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(f"{port}\n")
    partial.replace(path)
