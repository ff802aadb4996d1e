"""`lookalike up`: the one command, started, used, stopped with SIGTERM and started again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from cli.redis_server import RedisServer, free_port
from shared.errors import EXIT_CONFIG
from shared.model_id import RANDOM_MODEL_NOTICE, is_random_model
from shared.settings import Settings
from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.support.client import post_product, product_image, similar, wait_task
from tests.support.stack import wait_until

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def up_env(data_dir: Path, weights: Path | None, **extra: str) -> dict[str, str]:
    """Our environment without LOOKALIKE_* settings, then these; weights None: the default."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOKALIKE_")}
    env.update(
        LOOKALIKE_DATA_DIR=str(data_dir), LOOKALIKE_BATCH_WAIT="0.1", TF_CPP_MIN_LOG_LEVEL="2"
    )
    if weights is not None:
        env["LOOKALIKE_WEIGHTS"] = str(weights)
    return {**env, **extra}


def start_up(
    data_dir: Path, weights: Path | None, port: int, log: Path, *extra: str, **env: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [LOOKALIKE, "up", "--port", str(port), *extra],
        env=up_env(data_dir, weights, **env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=3).status_code == 200
    except requests.RequestException:
        return False


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=3).ok
    except requests.RequestException:
        return False


def test_up_runs_the_stack_and_a_restart_finds_everything(tmp_path, weights_file):
    port, log = free_port(), tmp_path / "up.log"
    url = f"http://127.0.0.1:{port}"
    flower = free_port()
    process = start_up(
        tmp_path / "data", weights_file, port, log, "--demo", "12", "--flower", str(flower)
    )
    try:
        wait_until(lambda: ready(url), 180, "lookalike up did not get ready")
        flower_url = f"http://127.0.0.1:{flower}/healthcheck"
        wait_until(lambda: answers(flower_url), 60, "flower did not answer")
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
    for name in ("embed", "writer", "api", "flower"):
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


def test_up_without_its_weights_file_fails_at_once_with_one_line(tmp_path):
    missing = tmp_path / "nope.h5"
    result = subprocess.run(
        [LOOKALIKE, "up", "--port", str(free_port())],
        env=up_env(tmp_path / "data", missing), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"error: weights file not found: {missing} (LOOKALIKE_WEIGHTS must be 'imagenet', "
        "'random' or the path to a Keras ResNet50 no-top weights file)\n"
    )
    assert not (tmp_path / "data" / "redis").exists()  # nothing was started


def test_up_whose_worker_cannot_load_the_model_stops_with_its_reason(tmp_path):
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"not a weights file")
    log = tmp_path / "up.log"
    started = time.monotonic()
    process = start_up(tmp_path / "data", bogus, free_port(), log)
    code = process.wait(120)
    text = log.read_text()
    assert code == EXIT_CONFIG, text
    assert time.monotonic() - started < 60
    assert f"the embed worker cannot start: could not load weights from {bogus}" in text
    assert "Traceback" not in text
    assert "supervisor | redis stopped" in text


def first_page_in_a_browser(url: str) -> tuple[str, int]:
    """The gallery's notice banner and how many catalog cards its first page shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/")
            return page.locator("#model-notice").inner_text(), page.locator(
                "#catalog .card"
            ).count()
        finally:
            browser.close()


def test_demo_without_imagenet_runs_on_random_weights_and_says_so(tmp_path):
    port, log = free_port(), tmp_path / "up.log"
    url = f"http://127.0.0.1:{port}"
    # An empty Keras cache: the ImageNet file must be downloaded, which this machine cannot do.
    process = start_up(tmp_path / "data", None, port, log, "--demo", "6", KERAS_HOME=str(tmp_path))
    try:
        wait_until(lambda: ready(url) or process.poll() is not None, 240, "not ready")
        if "the demo runs on a seeded random model" not in log.read_text():
            pytest.skip("this machine can download the ImageNet weights")
        wait_until(lambda: f"gallery: {url}/" in log.read_text(), 120, "no demo import")
        readyz = requests.get(f"{url}/readyz", timeout=5).json()
        gallery = requests.get(f"{url}/", timeout=5).text
        if CHROMIUM.exists():
            banner, cards = first_page_in_a_browser(url)
            assert banner == RANDOM_MODEL_NOTICE
            assert cards == len(list((tmp_path / "data/demo-catalog/images").iterdir()))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, log.read_text()
    notices = [line for line in log.read_text().splitlines() if "seeded random model" in line]
    assert len(notices) == 1 and "set LOOKALIKE_WEIGHTS to its path" in notices[0]
    assert is_random_model(readyz["model_id"]) and readyz["notice"] == RANDOM_MODEL_NOTICE
    assert 'id="model-notice"' in gallery and readyz["model_id"] in gallery


def metric(url: str, name: str) -> float:
    """The value of the unlabelled metric `name` in the API's /metrics."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    return float(re.findall(rf"^{name} (\S+)$", text, re.M)[0])


def started_pids(log: Path, name: str) -> list[int]:
    """The pids `lookalike up` started `name` with, in order."""
    return [int(pid) for pid in re.findall(rf"started {name} \(pid (\d+)\)", log.read_text())]


def kill_and_wait_for_the_restart(log: Path, name: str, url: str) -> None:
    pids = started_pids(log, name)
    os.kill(pids[-1], signal.SIGKILL)
    wait_until(lambda: len(started_pids(log, name)) > len(pids), 60, f"{name} not restarted")
    wait_until(lambda: ready(url), 180, f"not ready again after {name} was killed")


def test_up_restarts_a_killed_worker_api_and_redis(tmp_path, weights_file):
    port, log = free_port(), tmp_path / "up.log"
    url = f"http://127.0.0.1:{port}"
    process = start_up(tmp_path / "data", weights_file, port, log)
    try:
        wait_until(lambda: ready(url), 180, "lookalike up did not get ready")
        # INFO, which the API reads for its memory limit, is open to the stack's Redis user.
        assert metric(url, "lookalike_redis_maxmemory_bytes") == Settings().redis_maxmemory
        task = post_product(url, "before", product_image(1), {"n": 1}).json()["task_id"]
        assert wait_task(url, task)["state"] == "succeeded"
        time.sleep(1.5)  # appendfsync everysec: on disk by now
        others = {name: started_pids(log, name) for name in ("embed", "writer", "api")}
        kill_and_wait_for_the_restart(log, "redis", url)
        # Redis came back under the processes that use it: they reconnected, none restarted.
        assert {name: started_pids(log, name) for name in others} == others
        assert requests.get(f"{url}/api/v1/products/before", timeout=5).json()["indexed"]
        kill_and_wait_for_the_restart(log, "embed", url)
        kill_and_wait_for_the_restart(log, "api", url)
        task = post_product(url, "after", product_image(2), {"n": 2}).json()["task_id"]
        assert wait_task(url, task)["state"] == "succeeded"
        wait_until(lambda: similar(url, "after").ok, 10, "'after' is not in the replica")
        assert [hit["product_id"] for hit in similar(url, "after").json()["results"]] == ["before"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, log.read_text()
    password = (tmp_path / "data" / "redis" / "password").read_text().strip()
    assert password not in log.read_text()
    lines = log.read_text().splitlines()
    for name in ("redis", "embed", "api"):
        assert f"supervisor | {name} exited (killed by SIGKILL); restart 1 in 1.0s" in lines
    assert not any("writer exited" in line for line in lines)
    assert "supervisor | redis stopped (exit code 0)" in lines


def test_api_runs_one_gunicorn_on_an_existing_redis(tmp_path):
    port, log = free_port(), tmp_path / "api.log"
    url = f"http://127.0.0.1:{port}"
    with RedisServer(tmp_path / "redis", password="the-app-password") as server:
        env = up_env(tmp_path / "data", None, LOOKALIKE_REDIS_URL=server.url)
        process = subprocess.Popen(
            [LOOKALIKE, "api", "--port", str(port)],
            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until(lambda: answers(f"{url}/healthz"), 60, "lookalike api did not answer")
            # exec'd: the process we started is gunicorn's master, which gets our signals.
            assert b"gunicorn" in Path(f"/proc/{process.pid}/cmdline").read_bytes()
            assert post_product(url, "p1", product_image(3)).status_code == 202
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, log.read_text()
    assert "the-app-password" not in log.read_text()
