"""The index's readers-writer lock: shared reads, exclusive writes, neither side starved."""

from __future__ import annotations

import threading
import time

from shared.rwlock import RWLock
from tests.support.stack import wait_until


def waiting(lock: RWLock, side: str, count: int = 1) -> None:
    attribute = "_readers_waiting" if side == "read" else "_writers_waiting"
    wait_until(lambda: getattr(lock, attribute) == count, 5, f"no {side} waited")


def test_readers_waiting_on_a_writer_enter_before_its_next_write():
    """A thread writing chunk after chunk lets the queries waiting meanwhile in between."""
    lock, order = RWLock(), []

    def reader(name: str) -> None:
        with lock.read():
            order.append(name)

    readers = [threading.Thread(target=reader, args=(f"read{n}",)) for n in range(3)]
    with lock.write():
        for thread in readers:
            thread.start()
        waiting(lock, "read", 3)
    with lock.write():  # at once, without giving up the processor
        order.append("write")
    for thread in readers:
        thread.join(5)
    assert sorted(order[:3]) == ["read0", "read1", "read2"] and order[3] == "write"


def test_a_waiting_writer_holds_back_new_readers():
    lock, order = RWLock(), []

    def writer() -> None:
        with lock.write():
            order.append("write")

    def late_reader() -> None:
        with lock.read():
            order.append("late read")

    with lock.read():
        first = threading.Thread(target=writer)
        first.start()
        waiting(lock, "write")
        second = threading.Thread(target=late_reader)
        second.start()
        waiting(lock, "read")
    first.join(5)
    second.join(5)
    assert order == ["write", "late read"]


def test_readers_share_and_a_writer_is_alone():
    lock, inside, most, clash = RWLock(), [0], [0], []
    count = threading.Lock()

    def read() -> None:
        for _ in range(50):
            with lock.read():
                with count:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.0005)
                with count:
                    inside[0] -= 1

    def write() -> None:
        for _ in range(50):
            with lock.write():
                if inside[0]:
                    clash.append(inside[0])
                time.sleep(0.0002)

    threads = [threading.Thread(target=read) for _ in range(4)] + [threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)  # nobody starved or deadlocked
    assert not clash and most[0] > 1
