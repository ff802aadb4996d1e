"""Requests in flight in this API process, so that the replica's following waits for a lull."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Traffic:
    """Counts requests in flight; `lull` waits (a bounded time) until there are none."""

    def __init__(self, longest_wait: float) -> None:
        self.longest_wait = longest_wait
        self._in_flight = 0
        self._changed = threading.Condition()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def middleware(self, app: WSGIApp) -> WSGIApp:
        """Wrap a WSGI app so that every request is counted while the app handles it."""

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self._add(1)
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
        """Wait until no request is in flight, at most longest_wait; the seconds waited."""
        started = time.perf_counter()
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight <= 0, self.longest_wait)
        return time.perf_counter() - started

    def _add(self, change: int) -> None:
        with self._changed:
            self._in_flight += change
            if self._in_flight <= 0:
                self._changed.notify_all()
