"""A small readers-writer lock: many readers at once, or one writer alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    """Shared/exclusive lock, fair both ways: a waiting writer holds back new readers (writes
    are not starved), and the readers waiting when a writer lets go enter before the next
    writer (reads are not starved by a thread that writes chunk after chunk: the replica
    following a bulk import did, and a query waited for its whole journal read).

    Not reentrant: a thread holding either side must not acquire it again.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._readers_waiting = 0
        self._readers_due = 0  # readers admitted by the last writer's release, not yet in

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared for the duration of the block."""
        with self._cond:
            self._readers_waiting += 1
            try:
                while self._writer or (self._writers_waiting and not self._readers_due):
                    self._cond.wait()
            except BaseException:
                self._readers_waiting -= 1
                self._readers_due = min(self._readers_due, self._readers_waiting)
                self._cond.notify_all()  # a writer may be waiting for this reader's turn
                raise
            self._readers_waiting -= 1
            self._readers_due = max(0, self._readers_due - 1)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively for the duration of the block."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers or self._readers_due:
                    self._cond.wait()
            except BaseException:
                # Readers held back by this writer must be woken if it gives up.
                self._writers_waiting -= 1
                self._cond.notify_all()
                raise
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._readers_due = self._readers_waiting
                self._cond.notify_all()
