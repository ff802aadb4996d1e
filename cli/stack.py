"""`lookalike up`: Redis (our own unless LOOKALIKE_REDIS_URL is set), the workers and the API."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cli import processes
from cli.redis_server import RedisServer, free_port, port_is_free
from cli.supervisor import OWN_LABEL, ProcessSpec, Supervisor
from shared.errors import LookalikeError, WeightsUnavailable
from shared.model_id import IMAGENET_NOTOP_FILE
from shared.settings import Settings

PORT_FILE = "port"


def start_embedded_redis(settings: Settings) -> RedisServer:
    """Start the appendonly Redis in data_dir/redis, on the port it had last time if still free."""
    directory = settings.data_dir.resolve() / "redis"
    port_file = directory / PORT_FILE
    stored = _read_port(port_file)
    port = stored if stored is not None and port_is_free(stored) else free_port()
    if port != stored:
        _write_port(port_file, port)
    server = RedisServer(directory, port=port, appendonly=True)
    server.start()
    return server


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
        ProcessSpec("api", processes.api_server(_address(host, port), python), env),
    ]


def choose_weights(settings: Settings, demo: bool) -> tuple[Settings, str | None]:
    """The settings the stack runs with, and a notice when the demo falls back to random weights.

    The weights are fetched (or found) here, before anything starts, so that a stack without its
    model fails at once with one message instead of leaving a worker that cannot start.
    """
    from workers.weights import resolve_weights

    try:
        resolve_weights(settings)
        return settings, None
    except WeightsUnavailable as exc:
        if not (demo and settings.weights == "imagenet"):
            raise
        reason = exc.message.split(". ", 1)[0]
    fallback = settings.model_copy(update={"weights": "random"})
    resolve_weights(fallback)
    return fallback, (
        f"{reason}: the demo runs on a seeded random model instead. "
        f"For real recommendations copy {IMAGENET_NOTOP_FILE} to this machine, set "
        "LOOKALIKE_WEIGHTS to its path and use a new LOOKALIKE_DATA_DIR."
    )


def run_stack(
    settings: Settings, host: str, port: int, demo: int = 0, flower: int | None = None
) -> int:
    """Run the whole stack until SIGINT/SIGTERM or a process fails; the exit code.

    With demo > 0, once the stack is ready a demo catalog of that many items is written (once)
    into the data directory and imported, and the gallery's address is printed. With a flower
    port, Celery's Flower UI runs too.
    """
    settings, notice = choose_weights(settings, demo > 0)
    if notice:
        print(f"{OWN_LABEL} | {notice}", flush=True)
    server: RedisServer | None = None
    if settings.redis_url is None:
        server = start_embedded_redis(settings)
        redis_url = server.url
        redis_note = f"{redis_url} (ours, data in {server.directory})"
    else:
        redis_url = redis_note = settings.redis_url
    try:
        specs = stack_specs(settings, redis_url, host, port)
        if flower is not None:
            argv = processes.flower(redis_url, host, flower)
            specs.append(ProcessSpec("flower", argv, child_env(settings, redis_url)))
        supervisor = Supervisor(specs)

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
    finally:
        if server is not None:
            # After the children, so nothing writes any more; SHUTDOWN fsyncs the append-only file.
            server.stop()
            print(f"{OWN_LABEL} | redis stopped", flush=True)


def import_demo(settings: Settings, url: str, n: int, supervisor: Supervisor) -> None:
    """Write the demo catalog once, import it through the API, then point at the gallery."""
    from cli.client import ApiClient
    from cli.demo_catalog import write_demo_catalog
    from cli.importer import CatalogImporter

    def say(line: str) -> None:
        supervisor.log("demo", line)

    client = ApiClient(url, settings.client_api_key)
    deadline = time.monotonic() + 600
    while not _ready(client):
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
