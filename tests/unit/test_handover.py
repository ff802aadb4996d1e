"""Handing a replica's serving over to a new gunicorn worker (api/handover.py), against a real
process in the master's place that records the signals it gets."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from api.handover import Handover, post_worker_init
from api.priority import can_restore_priority, idle_priority
from shared.follower import read_after
from shared.settings import Settings
from tests.support.replica import journal, on_a_first_snapshot, requests_coming
from tests.support.stack import wait_until

RECORDER = """
import signal, sys, time
out = open(sys.argv[1], "a", buffering=1)
for each in (signal.SIGTTIN, signal.SIGTTOU):
    signal.signal(each, lambda number, frame: out.write(signal.Signals(number).name + "\\n"))
print("ready", flush=True)
while True:
    time.sleep(1)
"""


@dataclass
class Master:
    """A process standing in for gunicorn's master: it records SIGTTIN and SIGTTOU."""

    pid: int
    log: Path

    def signals(self) -> list[str]:
        return self.log.read_text().split()


@pytest.fixture
def master(tmp_path) -> Iterator[Master]:
    log = tmp_path / "signals"
    log.touch()
    process = subprocess.Popen(
        [sys.executable, "-c", RECORDER, str(log)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    yield Master(process.pid, log)
    process.kill()
    process.wait()


@pytest.fixture
def handover(master, tmp_path) -> Handover:
    return Handover(master.pid, tmp_path)


@pytest.fixture
def redis_client(redis_server) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    return client


def test_a_handover_asks_the_master_for_one_more_worker_and_leaves_a_note(handover, master):
    assert not handover.requested()
    handover.request()
    assert handover.requested() and handover.path.read_text() == str(os.getpid())
    wait_until(lambda: master.signals() == ["SIGTTIN"], 5, "the master got no SIGTTIN")


def test_a_new_worker_takes_over_only_once_its_replica_has_settled(handover, master):
    handover.request()
    settled = threading.Event()
    threading.Timer(0.3, settled.set).start()
    waited = handover.take_over(settled, wait=10)
    assert 0.25 < waited < 5 and not handover.requested()
    wait_until(lambda: master.signals() == ["SIGTTIN", "SIGTTOU"], 5, "no SIGTTOU")


def test_a_new_worker_that_does_not_settle_takes_over_after_its_longest_wait(handover, master):
    handover.request()
    waited = handover.take_over(threading.Event(), wait=0.2)
    assert 0.15 < waited < 2 and not handover.requested()
    wait_until(lambda: master.signals() == ["SIGTTIN", "SIGTTOU"], 5, "no SIGTTOU")


def test_handovers_of_two_masters_leave_separate_notes(master, tmp_path):
    one, other = Handover(master.pid, tmp_path), Handover(master.pid + 1, tmp_path)
    one.request()
    assert one.requested() and not other.requested()


@pytest.fixture
def queried_settings(redis_server, tmp_path, monkeypatch) -> Settings:
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    monkeypatch.setattr("api.replica.QUERIED", 0.3)
    return Settings(data_dir=tmp_path, redis_url=redis_server.url)


def second_snapshot(client: redis.Redis, writer, store) -> str:
    """Ten more items journalled and a snapshot of all 60 saved; its position."""
    journal(client, 50, 10)
    writer.apply(read_after(client, writer.position, block_ms=None))
    saved = writer.save(store)
    assert saved is not None
    return saved.position


def test_a_queried_replica_hands_a_newer_snapshot_over_instead_of_loading_it(
    redis_client, queried_settings, master, tmp_path
):
    with on_a_first_snapshot(redis_client, queried_settings) as (replica, writer, store):
        first = replica.catalog.base_position
        replica.handover = Handover(master.pid, tmp_path)
        with requests_coming(replica):
            second_snapshot(redis_client, writer, store)
            wait_until(lambda: master.signals() == ["SIGTTIN"], 5, "no handover asked")
            time.sleep(1.0)  # many more looks (REBASE is 0): one request, and no load
            assert master.signals() == ["SIGTTIN"] and replica.handover.requested()
            assert replica.catalog.base_position == first and len(replica.catalog) == 60


def test_an_unqueried_replica_loads_a_newer_snapshot_itself(
    redis_client, queried_settings, master, tmp_path
):
    with on_a_first_snapshot(redis_client, queried_settings) as (replica, writer, store):
        replica.handover = Handover(master.pid, tmp_path)
        second = second_snapshot(redis_client, writer, store)
        wait_until(lambda: replica.catalog.base_position == second, 10, "no load")
        assert master.signals() == [] and not replica.handover.requested()


def test_a_handover_that_does_not_come_lets_the_replica_load_itself(
    redis_client, queried_settings, master, tmp_path, monkeypatch
):
    monkeypatch.setattr("api.replica.HANDOVER_RETRY", 0.5)
    with on_a_first_snapshot(redis_client, queried_settings) as (replica, writer, store):
        replica.handover = Handover(master.pid, tmp_path)
        with requests_coming(replica):
            second = second_snapshot(redis_client, writer, store)
            wait_until(lambda: replica.catalog.base_position == second, 10, "no load")
            assert master.signals() == ["SIGTTIN"]  # asked once; the note stays for the new one


def test_a_replica_settles_once_it_has_read_up_to_the_journal_head(redis_client, queried_settings):
    with on_a_first_snapshot(redis_client, queried_settings) as (replica, _, _):
        wait_until(replica.settled.is_set, 5, "the replica did not settle")


def policies_seen(work) -> dict[str, int]:
    """The scheduling policies work (run in a thread of its own, so that this process's other
    threads keep theirs) records with seen(name)."""
    found: dict[str, int] = {}

    def seen(name: str) -> None:
        found[name] = os.sched_getscheduler(0)

    thread = threading.Thread(target=work, args=(seen,))
    thread.start()
    thread.join()
    return found


def test_a_new_worker_starts_at_the_idle_priority_with_its_later_threads_and_takes_over_normal(
    handover,
):
    def work(seen) -> None:
        idle_priority()
        seen("starting")
        settled, took_over = threading.Event(), threading.Event()

        def its_thread() -> None:
            seen("its thread")
            settled.set()
            took_over.wait(5)
            seen("its thread, taken over")

        child = threading.Thread(target=its_thread)
        child.start()
        handover.take_over(settled, wait=5)
        seen("taken over")
        took_over.set()
        child.join()

    assert policies_seen(work) == {
        "starting": os.SCHED_IDLE,
        "its thread": os.SCHED_IDLE,
        "taken over": os.SCHED_OTHER,
        "its thread, taken over": os.SCHED_OTHER,
    }


@pytest.mark.parametrize(
    ("capabilities", "restorable"),
    [
        ("000001fffeffffff", True),  # root's, CAP_SYS_NICE among them
        ("0000000000800000", True),  # CAP_SYS_NICE alone
        ("00000000a80425fb", False),  # Docker's default set: no CAP_SYS_NICE
        ("0000000000000000", False),
    ],
)
def test_a_handover_needs_the_right_to_raise_the_priority_again(tmp_path, capabilities, restorable):
    if resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20:
        pytest.skip("RLIMIT_NICE alone allows it here")
    status = tmp_path / "status"
    status.write_text(f"Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{capabilities}\n")
    assert can_restore_priority(status) is restorable


@pytest.mark.parametrize("fault", ["no folder for the note", "no master"])
def test_a_replica_that_cannot_hand_over_loads_in_place_from_then_on(
    redis_client, queried_settings, master, tmp_path, fault
):
    folder, pid = tmp_path, master.pid
    if fault == "no folder for the note":
        folder = tmp_path / "missing"
    else:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        pid = gone.pid  # waited for: no such process any more
    with on_a_first_snapshot(redis_client, queried_settings) as (replica, writer, store):
        replica.handover = Handover(pid, folder)
        with requests_coming(replica):
            second = second_snapshot(redis_client, writer, store)
            wait_until(lambda: replica.catalog.base_position == second, 10, "no load")
        assert replica.handover is None and not Handover(pid, folder).requested()


def test_a_new_worker_still_loading_after_its_idle_time_goes_on_at_the_normal_priority(handover):
    """On a host whose cores are all busy the idle priority starves it."""

    def work(seen) -> None:
        idle_priority()
        settled, me = threading.Event(), threading.get_native_id()

        def look_then_settle() -> None:
            time.sleep(0.5)
            found["while still loading"] = os.sched_getscheduler(me)
            settled.set()

        found: dict[str, int] = {}
        watcher = threading.Thread(target=look_then_settle)
        watcher.start()
        waited = handover.take_over(settled, wait=5, idle=0.2)
        watcher.join()
        # Checked here, in the thread: seen only if it holds.
        if found == {"while still loading": os.SCHED_OTHER} and 0.45 < waited < 5:
            seen("taken over")

    assert policies_seen(work) == {"taken over": os.SCHED_OTHER}


@pytest.mark.parametrize("idle_after", [60.0, 0.0])
def test_a_serving_worker_idles_when_quiet_as_set(launch, tmp_path, idle_after):
    with launch(replica_idle_after=idle_after, replica_handover=False) as app:
        # gunicorn's worker as its hook sees it: the app, the worker count, the master.
        config = SimpleNamespace(workers=1, worker_tmp_dir=str(tmp_path))
        post_worker_init(SimpleNamespace(wsgi=app, cfg=config, ppid=os.getppid()))
        traffic = app.extensions["lookalike"].replica.traffic
        assert traffic.idles_when_quiet is (idle_after > 0 and can_restore_priority())
