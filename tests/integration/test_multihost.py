"""API replicas that share nothing with the writer but Redis and an S3 bucket (moto's server)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from shared.index import INDEX_FILE
from shared.s3_snapshots import S3SnapshotStore
from tests.support.client import post_product, product_image, similar, wait_task
from tests.support.s3 import S3Server
from tests.support.stack import Stack, wait_until


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, weights_file, s3) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    url = f"s3://{s3.bucket('lookalike')}/snapshots"
    stack = Stack(root, weights_file, snapshot_url=url, snapshot_every=4, snapshot_interval=0.5)
    stack.env.update(s3.env)
    stack.env["LOOKALIKE_DATA_DIR"] = str(root / "writer-host")  # each process: its own dir
    stack.start_redis()
    stack.start_writer()
    stack.start_worker()
    yield stack
    stack.stop_all()


def replica(stack: Stack, name: str) -> str:
    """An API process with an empty data directory of its own, as on another host."""
    url = stack.start_api(name, data_dir=stack.root / f"{name}-host")
    stack.wait_ready(url)
    return url


def post(api: str, product_id: str, seed: int) -> None:
    response = post_product(api, product_id, product_image(seed), {"seed": seed})
    assert wait_task(api, response.json()["task_id"])["state"] == "succeeded"


def store_of(stack: Stack, s3: S3Server) -> S3SnapshotStore:
    url = stack.env["LOOKALIKE_SNAPSHOT_URL"]
    return S3SnapshotStore(url, stack.root / "probe", client=s3.client())


def test_replicas_on_other_hosts_serve_every_item_across_trims(stack, s3):
    first = replica(stack, "api-a")
    ids = []
    for n in range(14):  # several snapshots (every 4 entries), so several trims
        post(first, f"m{n}", n)
        ids.append(f"m{n}")
    store = store_of(stack, s3)
    wait_until(lambda: len(store.snapshots()) >= 2, 30, "snapshots not in the bucket")
    late = replica(stack, "api-b")  # starts after the journal was trimmed: needs the bucket
    for api in (first, late):
        wait_until(lambda a=api: all(similar(a, i).status_code == 200 for i in ids), 10, api)
    assert not (stack.root / "api-b-host" / "index").exists()  # nothing local but its copy
    post(first, "fresh", 99)
    posted = time.monotonic()
    wait_until(lambda: similar(late, "fresh").status_code == 200, 2, "not on the other host")
    assert time.monotonic() - posted <= 2


def test_a_replica_refuses_a_corrupt_snapshot_in_the_bucket_and_uses_the_previous(stack, s3):
    api = replica(stack, "api-c")
    for n in range(8):
        post(api, f"c{n}", 50 + n)
    store = store_of(stack, s3)
    wait_until(lambda: len(store.snapshots()) >= 2, 30, "two snapshots")
    stack.stop("writer")  # no new snapshot while we look
    newest = store.snapshots()[0]
    key = f"snapshots/{newest.name}/{INDEX_FILE}"
    client = s3.client()
    data = client.get_object(Bucket="lookalike", Key=key)["Body"].read()
    client.put_object(Bucket="lookalike", Key=key, Body=data[: len(data) // 2])
    try:
        other = replica(stack, "api-d")
        wait_until(
            lambda: all(similar(other, f"c{n}").status_code == 200 for n in range(8)), 10, "items"
        )
        assert f"snapshot {newest.name} refused" in stack.log("api-d")
    finally:
        stack.start_writer()
