"""Changing the model without downtime: reindex beside the serving one, promote, roll back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from shared.keys import MAIN, Generation
from tests.support.client import post_product, product_image, similar, wait_task
from tests.support.stack import Stack, wait_until
from workers.weights import write_random_weights

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))
G2 = Generation("g2")
SLOW = {"batch_size": 1, "batch_wait": 0.3}  # so that a kill lands in the middle


@pytest.fixture(scope="module")
def stack(tmp_path_factory, weights_file) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("generations")
    other = write_random_weights(root / "other-weights.h5", seed=99)
    stack = Stack(root, weights_file, snapshot_interval=0.5)
    stack.other_weights = other  # type: ignore[attr-defined]
    stack.start_redis()
    stack.ensure_up()
    stack.wait_ready(stack.api_urls[-1])
    yield stack
    stack.stop_all()


def start_g2(stack: Stack, **extra: object) -> None:
    weights = stack.other_weights  # type: ignore[attr-defined]
    stack.start_worker("embed-g2", generation="g2", weights=weights, **extra)
    stack.start_writer("writer-g2", generation="g2")


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOOKALIKE, *args], env=stack.env, capture_output=True, text=True, timeout=300, check=False
    )


class Queries:
    """Similar-item queries in a loop until stopped; every answer kept, to find any failure."""

    def __init__(self, api: str, ids: list[str]) -> None:
        self.api, self.ids, self.statuses = api, ids, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                status = similar(self.api, self.ids[n % len(self.ids)], k=3).status_code
            except requests.RequestException:
                status = 0  # no answer at all: a failure too
            self.statuses.append(status)
            n += 1

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(10)
        return self.statuses


def journal_models(client: redis.Redis, gen: Generation) -> set[str]:
    return {
        fields[b"model"].decode()
        for _, fields in client.xrange(gen.journal)
        if fields.get(b"op") == b"upsert"
    }


def index_of(api: str) -> dict:
    return requests.get(f"{api}/api/v1/index", timeout=10).json()


def test_reindex_promote_and_roll_back_without_a_failed_request(stack):
    api = stack.api_urls[-1]
    ids = [f"m{n}" for n in range(10)]
    for n, product_id in enumerate(ids):
        post = post_product(api, product_id, product_image(n), {"n": n})
        assert wait_task(api, post.json()["task_id"])["state"] == "succeeded"
    first_model = index_of(api)["model_id"]
    queries = Queries(api, ids)

    start_g2(stack, **SLOW)
    reindex = subprocess.Popen(
        [LOOKALIKE, "reindex", "--generation", "g2", "-q"], env=stack.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    client = stack.redis.control_client()
    wait_until(lambda: client.scard(G2.indexed) >= 3, 120, "the reindex did not start")
    for name in ("embed-g2", "writer-g2"):  # both die in the middle of the reindex
        os.killpg(stack.processes.pop(name).pid, signal.SIGKILL)
    late = post_product(api, "late", product_image(50), {"n": 50})  # reaches both generations
    start_g2(stack)
    output, _ = reindex.communicate(timeout=300)
    assert reindex.returncode == 0, output
    assert "g2: 11 of 11 products indexed, 0 failed" in output
    assert wait_task(api, late.json()["task_id"])["state"] == "succeeded"
    wait_until(lambda: client.scard(G2.indexed) == 11, 60, "late not in g2")

    listing = {g["label"]: g for g in index_of(api)["generations"]}
    assert listing["main"]["role"] == "serving" and listing["g2"]["role"] == "building"
    second_model = listing["g2"]["model_id"]
    assert second_model != first_model and listing["g2"]["indexed"] == 11

    compared = cli(stack, "evaluate", "--compare", "main", "g2", "-k", "3")
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert lines[0] == "precision@3 of generations main and g2 over the same 11 queries"
    assert lines[-1].startswith("top-3 lists changed: ")

    promoted = cli(stack, "promote", "g2")
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == "generation g2 now serves (11 of 11 products); main kept"
    wait_until(lambda: index_of(api)["model_id"] == second_model, 30, "replica did not switch")
    assert index_of(api)["items"] == 11
    search = requests.post(
        f"{api}/api/v1/search", files={"image": ("q.jpg", product_image(4), "image/jpeg")},
        data={"k": 1}, timeout=60,
    )  # fmt: skip
    assert search.status_code == 200 and search.json()["results"][0]["product_id"] == "m4"

    rolled = cli(stack, "rollback")
    assert rolled.returncode == 0 and rolled.stdout.strip() == (
        "generation main serves again; g2 kept"
    )
    wait_until(lambda: index_of(api)["model_id"] == first_model, 30, "did not roll back")
    statuses = queries.stop()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    # Never two models in one index: each generation's journal holds one model's vectors.
    assert journal_models(client, MAIN) == {first_model}
    assert journal_models(client, G2) == {second_model}

    listed = cli(stack, "generations")
    assert listed.returncode == 0 and "g2" in listed.stdout and "serving" in listed.stdout
    refused = cli(stack, "generations", "remove", "main")
    assert refused.returncode == 2 and "serves: promote another first" in refused.stderr
    removed = cli(stack, "generations", "remove", "g2")
    assert removed.returncode == 0, removed.stderr
    assert client.exists(G2.journal) == 0
    assert [g["label"] for g in index_of(api)["generations"]] == ["main"]
