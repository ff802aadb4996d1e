"""Requests in flight, and the replica's following waiting for a lull in them and keeping to
its share of a core while they come."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from api.priority import can_restore_priority, idle_priority, is_idle
from api.traffic import MAX_REST, Traffic
from tests.support.stack import wait_until

MONITORS = frozenset({"/healthz", "/readyz", "/metrics"})  # as api/app.py passes them


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


def burn(cpu_seconds: float) -> float:
    """Work until this thread has used cpu_seconds of CPU time; the CPU time it used."""
    start = time.thread_time()
    while time.thread_time() - start < cpu_seconds:
        pass
    return time.thread_time() - start


def answer_one(traffic: Traffic) -> None:
    traffic.middleware(lambda environ, start_response: [b"ok"])({}, lambda *args: None)


@pytest.fixture
def recent_is_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request answered in the test still counts as recent however slow the host is."""
    monkeypatch.setattr("api.traffic.RECENT", 60.0)


@pytest.mark.parametrize("share", [0.5, 0.25, 0.1])
@pytest.mark.parametrize("step", ["pace", "lull"])
def test_while_requests_come_following_rests_to_keep_to_its_share(
    share: float, step: str, recent_is_long: None
):
    traffic = Traffic(longest_wait=10, share=share)
    traffic.pace()  # following goes on from here
    worked = burn(0.005)  # rests up to 0.045 s: under MAX_REST
    answer_one(traffic)  # answered already: the next one may come at any moment
    rested = getattr(traffic, step)()
    assert worked * (1 - share) / share <= rested < MAX_REST + 1


def test_a_request_in_flight_makes_following_rest():
    traffic, release, entered = (
        Traffic(longest_wait=0.01, share=0.5),
        threading.Event(),
        threading.Event(),
    )
    request = in_thread(traffic.middleware(blocking_app(release, entered)))
    entered.wait(5)
    traffic.pace()
    worked = burn(0.02)
    assert traffic.pace() >= worked
    release.set()
    request.join(5)


@pytest.mark.parametrize(
    ("share", "requests_lately"),
    [(1.0, True), (0.1, False)],
    ids=["no limit", "no requests"],
)
def test_following_goes_on_at_full_speed(share: float, requests_lately: bool, recent_is_long: None):
    traffic = Traffic(longest_wait=10, share=share)
    traffic.pace()
    burn(0.02)  # a rest at share 0.1 would last 0.18 s
    if requests_lately:
        answer_one(traffic)
    assert traffic.pace() < 0.05


def test_requests_long_ago_no_longer_make_following_rest(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("api.traffic.RECENT", 0.05)
    traffic = Traffic(longest_wait=10, share=0.1)
    answer_one(traffic)
    time.sleep(0.1)
    traffic.pace()
    burn(0.02)
    assert traffic.pace() < 0.05


def test_a_rest_lasts_at_most_max_rest(monkeypatch: pytest.MonkeyPatch, recent_is_long: None):
    monkeypatch.setattr("api.traffic.MAX_REST", 0.05)
    traffic = Traffic(longest_wait=10, share=0.01)
    traffic.pace()
    burn(0.02)  # uncapped, the rest would last 1.98 s
    answer_one(traffic)
    assert 0.05 <= traffic.pace() < 1


def test_only_work_since_the_same_thread_went_on_is_weighed(recent_is_long: None):
    traffic = Traffic(longest_wait=10, share=0.1)
    traffic.pace()
    burn(0.02)
    answer_one(traffic)
    rested: list[float] = []
    other = threading.Thread(target=lambda: rested.append(traffic.pace()))
    other.start()
    other.join(5)
    assert rested and rested[0] < 0.05  # its first pace: it has done nothing yet


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share: float):
    with pytest.raises(ValueError, match=re.escape(f"share must be in (0, 1], got {share}")):
        Traffic(longest_wait=10, share=share)


@pytest.mark.parametrize(
    ("path", "counted"),
    [
        ("/metrics", False),
        ("/healthz", False),
        ("/readyz", False),
        ("/api/v1/products/p1/similar", True),
        ("/api/v1/search", True),
        ("/", True),
        ("/metrics/", True),  # not a monitor's path: Flask answers it 404 like any other
        ("/api/v1/metrics", True),
    ],
)
def test_only_requests_to_the_uncounted_paths_go_uncounted(path: str, counted: bool):
    traffic, seen = Traffic(longest_wait=10), []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(traffic.in_flight)
        return [b"ok"]

    traffic.middleware(app, uncounted=MONITORS)({"PATH_INFO": path}, lambda *args: None)
    assert seen == [1 if counted else 0]
    assert traffic.queried_within(60) is counted


restorable = pytest.mark.skipif(
    not can_restore_priority(), reason="restoring a thread's priority needs CAP_SYS_NICE here"
)


@pytest.fixture
def quiet_is_short() -> float:
    """Seconds without a request before following goes idle, short for the tests."""
    return 0.05


@contextmanager
def following(traffic: Traffic) -> Iterator[int]:
    """A thread pacing small pieces of work, as a replica's following does; its native id."""
    started, stop, ids = threading.Event(), threading.Event(), []

    def work() -> None:
        ids.append(threading.get_native_id())
        started.set()
        while not stop.is_set():
            traffic.pace()
            time.sleep(0.001)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    started.wait(5)
    try:
        yield ids[0]
    finally:
        stop.set()
        thread.join(5)


def request(traffic: Traffic, path: str = "/api/v1/index", inside: Callable[[], Any] = list) -> Any:
    """One request through the middleware; what `inside` returned while it was in flight."""
    seen = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(inside())
        return [b"ok"]

    traffic.middleware(app, uncounted=MONITORS)({"PATH_INFO": path}, lambda *args: None)
    return seen[0]


@restorable
def test_quiet_following_drops_to_the_idle_priority_and_a_request_wakes_it_at_once(
    quiet_is_short: float, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("INFO", logger="api.traffic")
    traffic = Traffic(longest_wait=10)
    traffic.idle_when_quiet(quiet_is_short)
    with following(traffic) as thread:
        wait_until(lambda: is_idle(thread), 5, "following never went idle", interval=0.01)
        assert request(traffic, inside=lambda: is_idle(thread)) is False
        wait_until(lambda: is_idle(thread), 5, "not idle again once quiet", interval=0.01)
    said = [r.getMessage() for r in caplog.records if r.name == "api.traffic"]
    assert said[:3] == [
        "following at the idle priority: no request for 0.05s",
        "following at the normal priority again: requests come",
        "following at the idle priority: no request for 0.05s",
    ]


@restorable
def test_a_monitors_poll_leaves_quiet_following_idle(quiet_is_short: float):
    traffic = Traffic(longest_wait=10)
    traffic.idle_when_quiet(quiet_is_short)
    with following(traffic) as thread:
        wait_until(lambda: is_idle(thread), 5, "following never went idle", interval=0.01)
        assert request(traffic, "/metrics", inside=lambda: is_idle(thread)) is True


@pytest.mark.parametrize("case", ["not asked to", "requests keep coming", "just asked to"])
def test_following_stays_at_the_normal_priority(case: str, quiet_is_short: float):
    traffic = Traffic(longest_wait=10)
    if case != "not asked to":
        traffic.idle_when_quiet(quiet_is_short)
    with following(traffic) as thread:
        deadline = time.monotonic() + (quiet_is_short * 0.5 if case == "just asked to" else 0.5)
        while time.monotonic() < deadline:
            if case == "requests keep coming":
                request(traffic)
            assert not is_idle(thread)
            time.sleep(quiet_is_short / 10)


@restorable
@pytest.mark.parametrize("dropping", [0.0, 0.002])
def test_a_request_beginning_as_following_drops_always_wakes_it(
    monkeypatch: pytest.MonkeyPatch, dropping: float
):
    """Requests racing the drop to the idle priority: each finds following awake while it is in
    flight (at once, or once following has seen it); `dropping` widens the moment between the
    decision to drop and the drop."""

    def slowly_idle() -> None:
        time.sleep(dropping)
        idle_priority()

    monkeypatch.setattr("api.traffic.idle_priority", slowly_idle)
    traffic = Traffic(longest_wait=10)
    traffic.idle_when_quiet(0.0005)

    def awake_soon(thread: int) -> bool:
        deadline = time.monotonic() + 2
        while is_idle(thread) and time.monotonic() < deadline:
            time.sleep(0.0005)
        return not is_idle(thread)

    with following(traffic) as thread:
        answers = []
        for _ in range(200):
            answers.append(request(traffic, inside=lambda: awake_soon(thread)))
            time.sleep(0.001 * (len(answers) % 3))
    assert answers == [True] * 200


@restorable
def test_following_that_may_not_be_woken_is_left_idle_and_said_once(
    quiet_is_short: float, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    traffic = Traffic(longest_wait=10)
    traffic.idle_when_quiet(quiet_is_short)
    with following(traffic) as thread:
        wait_until(lambda: is_idle(thread), 5, "following never went idle", interval=0.01)

        def refused(thread: int | None = None) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr("api.traffic.normal_priority", refused)
        for _ in range(3):
            request(traffic)
            time.sleep(quiet_is_short)
        assert is_idle(thread) and not traffic.idles_when_quiet
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "api.traffic" and r.levelname == "WARNING"
    ]
    assert warnings == ["cannot restore the following's priority: it stays idle"]
