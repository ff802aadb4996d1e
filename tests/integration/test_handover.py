"""A gunicorn API process hands a newer snapshot over to a new worker while it is queried
(api/handover.py): real redis-server, writer and gunicorn processes, real HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from api.priority import can_restore_priority, is_idle
from shared import keys
from tests.support.procs import threads
from tests.support.replica import journal
from tests.support.stack import Stack, wait_until

MODEL = "resnet50-handover-test"


def workers_of(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(child) for child in children]


def items_served(url: str) -> float:
    found = re.search(r"^lookalike_index_items (\S+)$", requests.get(f"{url}/metrics").text, re.M)
    return float(found.group(1)) if found else -1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory, weights_file) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("handover"), weights_file,
        snapshot_every=50, snapshot_interval=1, replica_exact_items=16,
    )  # fmt: skip
    stack.start_redis()
    redis.Redis.from_url(stack.redis.url).set(keys.INDEX_MODEL, MODEL)
    stack.start_writer()
    stack.start_api()
    yield stack
    stack.stop_all()


@pytest.fixture
def queried(stack) -> Iterator[list[tuple[int, str]]]:
    """Once the first 20 products are served, a client asking for p0's neighbours every 20 ms
    over one kept-alive connection; the status and error code of every answer that was not
    200 (before p0 is served, a 404 or 409 would be right: it did not ask then)."""
    url, failures, stop = stack.api_urls[-1], [], threading.Event()
    before = items_served(url)  # another test's products, when it ran first
    journal(redis.Redis.from_url(stack.redis.url), 0, 20, MODEL, recorded=True)
    wait_until(lambda: items_served(url) == before + 20, 30, "not served")

    def ask() -> None:
        session = requests.Session()
        while not stop.wait(0.02):
            try:
                answer = session.get(f"{url}/api/v1/products/p0/similar?k=5", timeout=30)
            except requests.RequestException as exc:
                failures.append((0, type(exc).__name__))
                continue
            if answer.status_code != 200:
                failures.append((answer.status_code, answer.text))

    client = threading.Thread(target=ask)
    client.start()
    yield failures
    stop.set()
    client.join()


def test_a_queried_api_hands_newer_snapshots_over_to_a_new_worker_and_loses_nothing(stack, queried):
    client = redis.Redis.from_url(stack.redis.url)
    url, master = stack.api_urls[-1], stack.processes["api"].pid
    first, before = workers_of(master), items_served(url)
    # the writer snapshots every 50; the replica's tail holds 16
    journal(client, 20, 400, MODEL, recorded=True)
    wait_until(lambda: "replica took over" in stack.log("api"), 60, "no handover")
    wait_until(lambda: len(workers_of(master)) == 1 and workers_of(master) != first, 30, "two")
    wait_until(lambda: items_served(url) == before + 400, 30, "not all served")
    for n in (0, 219, 419):
        answer = requests.get(f"{url}/api/v1/products/p{n}/similar?k=5", timeout=10)
        assert answer.status_code == 200, answer.text
    assert queried == []


def files_written(pid: int) -> dict[int, str]:
    """Process pid's descriptors open for writing on regular files, but for its stdout and
    stderr (which its parent chose): descriptor -> path."""
    found = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # one closed meanwhile
            target = os.readlink(fd)
            info = (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text()
            flags = int(info.split("flags:", 1)[1].split()[0], 8)
            if int(fd.name) > 2 and target.startswith("/") and flags & os.O_ACCMODE:
                found[int(fd.name)] = target
    return found


def test_an_api_worker_writes_no_file_on_a_disk_while_it_serves(stack):
    """gunicorn's heartbeat (a file's timestamps, changed each time round the loop that
    dispatches requests) and anything else a worker keeps open for writing lie on a memory
    filesystem: on a disk's, a change can wait for the journal's commit behind a snapshot."""
    url, client = stack.api_urls[-1], redis.Redis.from_url(stack.redis.url)
    before = items_served(url)
    journal(client, 2000, 5, MODEL, recorded=True)
    wait_until(lambda: items_served(url) == before + 5, 30, "not served")
    (worker,) = workers_of(stack.processes["api"].pid)
    answer = requests.get(f"{url}/api/v1/products/p2000/similar?k=3", timeout=10)
    assert answer.status_code == 200, answer.text

    written = files_written(worker)

    assert written, "the worker's heartbeat file is not open"
    assert all(path.startswith("/dev/shm/") for path in written.values()), written


def idle_threads(pid: int) -> set[int]:
    """The threads of process pid at the idle scheduling priority."""
    found = set()
    for thread in threads(pid):
        with contextlib.suppress(ProcessLookupError):  # one that ended meanwhile
            if is_idle(thread):
                found.add(thread)
    return found


@pytest.mark.skipif(not can_restore_priority(), reason="needs CAP_SYS_NICE or RLIMIT_NICE 20")
def test_a_quiet_api_follows_at_the_idle_priority_until_a_request_comes(stack):
    """A real gunicorn process through a quiet spell (LOOKALIKE_REPLICA_IDLE_AFTER): what it
    follows meanwhile it follows at the idle priority, and a request puts it back."""
    client = redis.Redis.from_url(stack.redis.url)
    url = stack.start_api("quiet", replica_idle_after=1, replica_handover=False)
    try:
        (worker,) = workers_of(stack.processes["quiet"].pid)
        # A monitor's polls (/metrics) do not count as requests.
        served = client.scard(keys.PRODUCTS)  # what another test journalled, when it ran first
        wait_until(lambda: items_served(url) == served, 30, "quiet API did not catch up")
        time.sleep(1.5)
        journal(client, 1000, 30, MODEL, recorded=True)
        wait_until(lambda: items_served(url) == served + 30, 30, "quiet API did not follow")
        wait_until(lambda: "following at the idle priority" in stack.log("quiet"), 10, "no idle")
        (follower,) = idle_threads(worker)

        answer = requests.get(f"{url}/api/v1/products/p1000/similar?k=3", timeout=10)

        assert answer.status_code == 200, answer.text
        assert os.sched_getscheduler(follower) == os.SCHED_OTHER
        assert idle_threads(worker) == set()
        journal(client, 1030, 5, MODEL, recorded=True)
        wait_until(lambda: items_served(url) == served + 35, 30, "did not follow after")
        assert "following at the idle priority: no request for 1s" in stack.log("quiet")
    finally:
        stack.stop("quiet")
        stack.api_urls.remove(url)
