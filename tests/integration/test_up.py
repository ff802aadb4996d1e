"""`lookalike up`: the one command, started, used, stopped with SIGTERM and started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from cli.redis_server import free_port
from tests.support.client import post_product, product_image, wait_task
from tests.support.stack import wait_until

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def start_up(
    data_dir: Path, weights: Path, port: int, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOKALIKE_")}
    env.update(
        LOOKALIKE_DATA_DIR=str(data_dir),
        LOOKALIKE_WEIGHTS=str(weights),
        LOOKALIKE_BATCH_WAIT="0.1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return subprocess.Popen(
        [LOOKALIKE, "up", "--port", str(port), *extra],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=3).status_code == 200
    except requests.RequestException:
        return False


def test_up_runs_the_stack_and_a_restart_finds_everything(tmp_path, weights_file):
    port, log = free_port(), tmp_path / "up.log"
    url = f"http://127.0.0.1:{port}"
    process = start_up(tmp_path / "data", weights_file, port, log, "--demo", "12")
    try:
        wait_until(lambda: ready(url), 180, "lookalike up did not get ready")
        wait_until(lambda: f"gallery: {url}/" in log.read_text(), 120, "no demo import")
        listing = requests.get(f"{url}/api/v1/products", timeout=5).json()
        assert listing["total"] == len(list((tmp_path / "data/demo-catalog/images").iterdir()))
        for n in range(3):
            task = post_product(url, f"u{n}", product_image(n), {"n": n}).json()["task_id"]
            assert wait_task(url, task)["state"] == "succeeded"
        wait_until(lambda: requests.get(f"{url}/api/v1/products/u0/similar", timeout=5).ok, 5, "u0")
        before = requests.get(f"{url}/api/v1/products/u0/similar", timeout=5).json()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, log.read_text()
    text = log.read_text()
    for name in ("embed", "writer", "api"):
        assert any(line.startswith(f"{name} ") for line in text.splitlines()), name
    assert "supervisor | redis stopped" in text

    process = start_up(tmp_path / "data", weights_file, port, log)
    try:
        wait_until(lambda: ready(url), 180, "lookalike up did not restart")
        after = requests.get(f"{url}/api/v1/products/u0/similar", timeout=5).json()
        assert after["results"] == before["results"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0
