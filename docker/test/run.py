"""`make compose-test`: build the images, run docker-compose.yml in a real Docker engine, use it.

Phases (each timed): a Debian base image made with debootstrap (no image can be pulled here),
the application, GPU and test object-store images built from the repository's Dockerfiles, the
stack up until /readyz, products posted, polled, queried, searched and deleted over HTTP, the stack
scaled to two embed workers and two API replicas, one embed container killed mid-batch with every
accepted task still succeeding, the GPU image importing the project, and everything it made
removed. Without a Docker engine (none running and none can be started) it says so and exits 0.

Builds use the machine's package-index configuration only while they run: `--network host`, its
/etc/hosts entries as `--add-host`, and its CA bundle served on the loopback for the build's pip
(docker/pip-install.sh removes it in the same step), so no image holds any of it.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the tests' images and weights, from the repository

PROJECT = "lookalike-compose-test"
BASE = "lookalike-compose-base:bookworm"
IMAGES = {
    "app": ("lookalike:compose-test", "docker/Dockerfile"),
    "gpu": ("lookalike-gpu:compose-test", "docker/Dockerfile.gpu"),
    "s3": ("lookalike-compose-s3:test", "docker/test/Dockerfile.s3"),
}
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates,libgomp1,passwd"
BASE_PACKAGES += ",redis-server,redis-tools"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class Skip(Exception):
    """No Docker engine here: the test cannot run, and says why."""


def say(line: str) -> None:
    print(f"compose-test | {line}", flush=True)


def run(*argv: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, text=True, capture_output=True, check=check, **kwargs)  # type: ignore[call-overload]


@contextmanager
def phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    say(f"{name} ...")
    started = time.monotonic()
    yield
    timings[name] = time.monotonic() - started
    say(f"{name}: {timings[name]:.1f}s")


# --- the engine and the compose CLI ---------------------------------------------------------


def engine(log: Path) -> None:
    """A running Docker engine: the one there is, or dockerd started here when we are root."""
    if shutil.which("docker") is None:
        raise Skip("no docker client (install Debian's docker.io)")
    if run("docker", "info", check=False).returncode == 0:
        return
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        raise Skip("no Docker engine answers, and this user cannot start dockerd")
    say("starting dockerd")
    subprocess.Popen(["dockerd"], stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while run("docker", "info", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise Skip(f"dockerd did not start in 60s (see {log})")
        time.sleep(1)


def compose_cli() -> list[str]:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) and run(*argv, "version", check=False).returncode == 0:
            return argv
    raise Skip("no `docker compose` or `docker-compose` (install Debian's docker-compose)")


# --- images ---------------------------------------------------------------------------------


def machine_hosts() -> list[str]:
    """The machine's /etc/hosts entries that are not loopback: how it reaches its registries."""
    hosts = []
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and not fields[0].startswith(("127.", "::1", "fe00", "ff0")):
            hosts += [f"--add-host={name}:{fields[0]}" for name in fields[1:]]
    return hosts


@contextmanager
def ca_server() -> Iterator[str]:
    """The machine's CA bundle on a loopback URL, for the duration of the builds."""
    directory = tempfile.mkdtemp()
    shutil.copy(CA_BUNDLE, Path(directory) / "ca.pem")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ca.pem"
    finally:
        server.shutdown()
        shutil.rmtree(directory, ignore_errors=True)


def base_image(workdir: Path) -> None:
    if run("docker", "image", "inspect", BASE, check=False).returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        raise Skip("no debootstrap to make a base image (install Debian's debootstrap)")
    rootfs = workdir / "rootfs"
    run("debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs),
        "http://deb.debian.org/debian")  # fmt: skip
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run("docker", "import", "-", BASE, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)


def build(tag: str, dockerfile: str, cert_url: str) -> None:
    argv = ["docker", "build", "--network", "host", *machine_hosts(), "-f", dockerfile, "-t", tag]
    argv += [f"--build-arg=PYTHON_IMAGE={BASE}", f"--build-arg=BASE_IMAGE={BASE}"]
    argv += [f"--build-arg=PIP_CERT_URL={cert_url}", "."]
    result = run(*argv, check=False, cwd=ROOT, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    if result.returncode != 0:
        raise RuntimeError(
            f"building {tag} failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )


# --- the stack ------------------------------------------------------------------------------


class Stack:
    """docker-compose.yml plus the test's override, as project PROJECT."""

    def __init__(self, workdir: Path) -> None:
        self.cli = compose_cli()
        self.key = secrets.token_urlsafe(16)
        weights = workdir / "weights"
        weights.mkdir()
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "LOOKALIKE_API_KEY": self.key,
            "S3_ACCESS_KEY": secrets.token_hex(8),
            "S3_SECRET_KEY": secrets.token_hex(16),
            "REDIS_PASSWORD": secrets.token_hex(16),
            "REDIS_IMAGE": BASE,
            "S3_IMAGE": IMAGES["s3"][0],
            "API_PORT": "0",  # a free port per replica, so the API can be scaled
            "WEIGHTS_DIR": str(weights),
            "LOOKALIKE_WEIGHTS": "/weights/resnet50-random.h5",
        }
        from workers.weights import write_random_weights

        write_random_weights(weights / "resnet50-random.h5", seed=7).chmod(0o644)

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = ["-f", "docker-compose.yml", "-f", "docker/test/compose.test.yml"]
        return run(*self.cli, *files, *args, check=check, cwd=ROOT, env=self.env)

    def api_urls(self) -> list[str]:
        ids = self.compose("ps", "-q", "api").stdout.split()
        urls = []
        for container in ids:
            ports = run("docker", "port", container, "8000/tcp", check=False).stdout.split()
            urls += [f"http://127.0.0.1:{ports[0].rsplit(':', 1)[1]}"] if ports else []
        return urls

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False).stdout


def wait(condition: object, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(message)


def ready(url: str) -> bool:
    return requests.get(f"{url}/readyz", timeout=5).status_code == 200


def jpeg(seed: int) -> bytes:
    from tests.support.images import encode, pattern

    return encode(pattern(240, 320, seed=seed), "JPEG", quality=90)


def post(url: str, key: str, product_id: str, seed: int) -> str:
    files = {"image": (f"{product_id}.jpg", io.BytesIO(jpeg(seed)), "image/jpeg")}
    data = {"product_id": product_id, "metadata": json.dumps({"seed": seed})}
    response = requests.post(
        f"{url}/api/v1/products", files=files, data=data, headers={"X-API-Key": key}, timeout=30
    )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def states(url: str, tasks: list[str]) -> list[str]:
    return [requests.get(f"{url}/api/v1/tasks/{t}", timeout=10).json()["state"] for t in tasks]


def all_succeed(url: str, tasks: list[str], timeout: float) -> None:
    wait(lambda: set(states(url, tasks)) == {"succeeded"}, timeout, "not every task succeeded")


def use_it(stack: Stack) -> None:
    """Post, poll, query, search and delete over HTTP."""
    (url,) = stack.api_urls()
    tasks = [post(url, stack.key, f"p{n}", n) for n in range(12)]
    all_succeed(url, tasks, 180)
    wait(lambda: requests.get(f"{url}/api/v1/products/p0/similar", timeout=10).ok, 10, "similar")
    hits = requests.get(f"{url}/api/v1/products/p0/similar?k=5", timeout=10).json()["results"]
    assert len(hits) == 5 and "p0" not in [hit["product_id"] for hit in hits]
    files = {"image": ("q.jpg", io.BytesIO(jpeg(3)), "image/jpeg")}
    found = requests.post(
        f"{url}/api/v1/search", files=files, data={"k": 1}, headers={"X-API-Key": stack.key},
        timeout=60,
    ).json()  # fmt: skip
    assert found["results"][0]["product_id"] == "p3", found
    gone = requests.delete(
        f"{url}/api/v1/products/p11", headers={"X-API-Key": stack.key}, timeout=10
    )
    assert gone.status_code == 204
    assert requests.get(f"{url}/api/v1/products/p11", timeout=10).status_code == 404


def scale_and_kill(stack: Stack) -> None:
    """Two embed workers and two API replicas; one worker killed mid-batch loses nothing."""
    stack.compose("up", "-d", "--no-build", "--scale", "embed=2", "--scale", "api=2")
    wait(lambda: len(stack.api_urls()) == 2 and all(map(ready, stack.api_urls())), 300, "scale")
    first, second = stack.api_urls()
    tasks = [post(first, stack.key, f"s{n}", 100 + n) for n in range(24)]
    wait(lambda: "running" in states(first, tasks), 120, "no task started")
    victim = stack.containers("embed")[0]
    run("docker", "kill", "--signal", "KILL", victim)
    all_succeed(first, tasks, 300)
    for url in (first, second):
        wait(
            lambda u=url: all(
                requests.get(f"{u}/api/v1/products/s{n}/similar", timeout=10).ok for n in range(24)
            ),
            30, f"{url} does not serve every item",
        )  # fmt: skip


def gpu_image_imports() -> None:
    # The JAX backend and the GPU decoder import (no GPU here: nothing is run on one).
    code = (
        "import jax, keras, nvidia.nvimgcodec, workers.embedder, workers.embedding, api.app; "
        "assert keras.backend.backend() == 'jax', keras.backend.backend(); print('ok')"
    )
    result = run("docker", "run", "--rm", "-e", "LOOKALIKE_REDIS_URL=redis://none:6379/0",
                 IMAGES["gpu"][0], "python", "-c", code, check=False)  # fmt: skip
    assert result.stdout.strip().endswith("ok"), result.stdout + result.stderr


def clean(stack: Stack | None, keep_images: bool) -> None:
    if stack is not None:
        stack.compose("down", "--volumes", "--remove-orphans", check=False)
    if not keep_images:
        tags = [tag for tag, _ in IMAGES.values()] + [BASE]
        run("docker", "rmi", "--force", *tags, check=False)
        run("docker", "image", "prune", "--force", check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep-images", action="store_true", help="keep the images it built")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU image")
    args = parser.parse_args()
    timings: dict[str, float] = {}
    stack: Stack | None = None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        try:
            engine(workdir / "dockerd.log")
            stack = Stack(workdir)
        except Skip as reason:
            say(f"SKIPPED: {reason}")
            return 0
        try:
            with phase("base image (debootstrap)", timings):
                base_image(workdir)
            with ca_server() as cert_url:
                for name in ("app", "s3") if args.no_gpu else ("app", "s3", "gpu"):
                    tag, dockerfile = IMAGES[name]
                    with phase(f"build {tag}", timings):
                        build(tag, dockerfile, cert_url)
            with phase("up until /readyz", timings):
                stack.compose("up", "-d", "--no-build")
                wait(lambda: stack.api_urls() and ready(stack.api_urls()[0]), 300, "not ready")
            with phase("post, poll, similar, search, delete", timings):
                use_it(stack)
            with phase("scale to 2 workers and 2 APIs, kill a worker mid-batch", timings):
                scale_and_kill(stack)
            if not args.no_gpu:
                with phase("GPU image imports the project", timings):
                    gpu_image_imports()
        except Exception:
            if stack is not None:
                print(stack.logs(), file=sys.stderr)
            raise
        finally:
            with phase("down, remove containers, volumes and images", timings):
                clean(stack, args.keep_images)
    say("passed; phases: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
