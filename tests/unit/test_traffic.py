"""Requests in flight, and the replica's following waiting for a lull in them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from api.traffic import Traffic


def blocking_app(release: threading.Event, entered: threading.Event) -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        entered.set()
        release.wait(10)
        start_response("200 OK", [])
        return [b"ok"]

    return app


def in_thread(app: Any) -> threading.Thread:
    thread = threading.Thread(target=app, args=({}, lambda *args: None), daemon=True)
    thread.start()
    return thread


def test_a_lull_comes_at_once_without_requests():
    assert Traffic(longest_wait=10).lull() < 1


def test_following_waits_until_the_request_in_flight_is_answered():
    traffic, release, entered = Traffic(longest_wait=10), threading.Event(), threading.Event()
    request = in_thread(traffic.middleware(blocking_app(release, entered)))
    entered.wait(5)
    assert traffic.in_flight == 1
    finished: list[bool] = []
    follower = threading.Thread(target=lambda: finished.append(traffic.lull() < 10))
    follower.start()
    follower.join(0.2)
    assert follower.is_alive()  # still waiting: the request is in flight
    release.set()
    request.join(5)
    follower.join(5)
    assert finished == [True] and traffic.in_flight == 0


def test_a_request_that_never_ends_delays_following_at_most_the_longest_wait():
    traffic, release, entered = Traffic(longest_wait=0.05), threading.Event(), threading.Event()
    request = in_thread(traffic.middleware(blocking_app(release, entered)))
    entered.wait(5)
    assert 0.05 <= traffic.lull() < 5
    assert traffic.in_flight == 1
    release.set()
    request.join(5)


def test_a_request_that_only_waits_aside_does_not_hold_following():
    traffic, release, entered = Traffic(longest_wait=10), threading.Event(), threading.Event()

    def waiting(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with traffic.aside():
            return blocking_app(release, entered)(environ, start_response)

    request = in_thread(traffic.middleware(waiting))
    entered.wait(5)
    assert traffic.in_flight == 0 and traffic.lull() < 1
    release.set()
    request.join(5)
    assert traffic.in_flight == 0


def test_a_request_that_fails_is_no_longer_counted():
    traffic = Traffic(longest_wait=10)

    def failing(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        traffic.middleware(failing)({}, lambda *args: None)
    assert traffic.in_flight == 0
