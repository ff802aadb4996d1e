"""Requests in flight in this API process, so that the replica's following waits for a lull in
them and, while they come, takes only a share of a core."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from api.priority import idle_priority, normal_priority

log = logging.getLogger(__name__)
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# The longest one rest lasts, whatever the work before it took: the work still goes on.
MAX_REST = 0.1
# Requests come while one is in flight or began at most this long ago: a client that sends one
# after another leaves gaps between them, and work in the gaps still delays the next. Rarer
# requests (a monitor polling /metrics) do not slow following down: each waits for one insert
# at most.
RECENT = 0.05


class Traffic:
    """Counts requests in flight; `lull` waits (a bounded time) until there are none.

    Background work calls `lull` (or `pace`) between two small pieces. While requests come, it
    rests after each piece so that the work takes at most `share` of a core (its thread's CPU
    time): the requests, sharing a core with it, then wait for it rarely and briefly. Without
    requests it goes on at full speed.
    """

    def __init__(self, longest_wait: float, share: float = 1.0) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.longest_wait = longest_wait
        self.share = share
        self._in_flight = 0
        self._last_began = -RECENT  # time.monotonic() when the newest request began
        self._changed = threading.Condition()
        # When the work last went on: its thread, and that thread's CPU time then.
        self._went_on: tuple[int, float] | None = None
        self._quiet_idle_since: float | None = None  # monotonic; None: idle_when_quiet is off
        self._quiet_after = 0.0  # seconds without a request before the work goes idle
        self._idled: int | None = None  # the native id of the work's thread while it is idle

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def queried_within(self, seconds: float) -> bool:
        """Whether a request is in flight or began at most `seconds` ago."""
        return self._in_flight > 0 or time.monotonic() - self._last_began <= seconds

    @property
    def idles_when_quiet(self) -> bool:
        return self._quiet_idle_since is not None

    def idle_when_quiet(self, after: float) -> None:
        """From now on the thread that calls lull or pace drops to the idle priority once no
        request has come for `after` seconds, and each request puts it back at once. Only for a
        process that may restore a thread's priority (api.priority.can_restore_priority).

        Idle, it no longer slows what other processes on its cores serve; but the first request
        after it may wait for it to give up the GIL, which on cores that other work keeps busy
        an idle thread gets to do late (bench/quiet_wake.py, docs/benchmarks.md)."""
        self._quiet_after = after
        self._quiet_idle_since = time.monotonic()

    def middleware(self, app: WSGIApp, uncounted: frozenset[str] = frozenset()) -> WSGIApp:
        """Wrap a WSGI app so that every request is counted while it is handled, but those to
        the `uncounted` paths: a monitor's polls (counted, a /metrics poll every second made an
        API process that no client asked hand over each snapshot as if it were serving)."""

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if environ.get("PATH_INFO") in uncounted:
                return app(environ, start_response)
            self._last_began = time.monotonic()  # a request resuming from aside() is no new one
            self._add(1)
            self._wake()
            try:
                return app(environ, start_response)
            finally:
                self._add(-1)

        return counted

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Not counted meanwhile: a request that only waits (for a search's vector, say)."""
        self._add(-1)
        try:
            yield
        finally:
            self._add(1)

    def lull(self) -> float:
        """Rest (see pace), then wait until no request is in flight, at most longest_wait; the
        seconds waited."""
        started = time.perf_counter()
        self._rest()
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight <= 0, self.longest_wait)
        self._go_on()
        return time.perf_counter() - started

    def pace(self) -> float:
        """While requests come, rest so that the calling thread's work since its last pace or
        lull takes at most `share` of the time; the seconds rested."""
        started = time.perf_counter()
        self._rest()
        self._go_on()
        return time.perf_counter() - started

    def _rest(self) -> None:
        went_on = self._went_on
        if self.share >= 1 or went_on is None or went_on[0] != threading.get_ident():
            return
        if self._in_flight <= 0 and time.monotonic() - self._last_began > RECENT:
            return  # no requests lately: nothing to make room for
        worked = time.thread_time() - went_on[1]
        time.sleep(min(MAX_REST, worked * (1 - self.share) / self.share))

    def _go_on(self) -> None:
        self._went_on = (threading.get_ident(), time.thread_time())
        self._idle_if_quiet()

    def _idle_if_quiet(self) -> None:
        """From the work's thread: idle while quiet (idle_when_quiet), normal once queried."""
        since = self._quiet_idle_since
        if since is None:
            return
        now = time.monotonic()
        after = self._quiet_after
        queried = self.queried_within(after) or now - since <= after
        if not queried and self._idled is None:
            # Published before it drops: a request that begins from here on finds it and wakes
            # it; one that began before, the check below finds.
            self._idled = threading.get_native_id()
            idle_priority()
            queried = self.queried_within(after)
            log.info("following at the idle priority: no request for %gs", after)
        idled = self._idled
        if queried and idled is not None:
            self._normal_again(idled)
            self._idled = None  # after: while it is idle, a request can find it
            log.info("following at the normal priority again: requests come")

    def _wake(self) -> None:
        """From a request: the work's thread back at the normal priority if it is idle (it
        forgets that it was once it sees the request)."""
        thread = self._idled
        if thread is not None:
            self._normal_again(thread)

    def _normal_again(self, thread: int) -> None:
        try:
            normal_priority(thread)
        except PermissionError:  # the right was taken away since: said once, not tried again
            log.warning("cannot restore the following's priority: it stays idle")
            self._quiet_idle_since = self._idled = None

    def _add(self, change: int) -> None:
        with self._changed:
            self._in_flight += change
            if self._in_flight <= 0:
                self._changed.notify_all()
