"""When the writer snapshots: linear total cost, bounded journal, trimmed to nothing when idle."""

from __future__ import annotations

import pytest

from shared.settings import Settings
from workers.policy import CAUGHT_UP_SHARE, SIZE_DUTY, TIME_DUTY, WAITED_DUTY, SnapshotPolicy

SETTINGS = Settings(snapshot_every=100, snapshot_fraction=0.1, snapshot_interval=60)


def policy(**state: object) -> SnapshotPolicy:
    return SnapshotPolicy(SETTINGS, last_at=0.0, **state)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("unsaved", "items", "now", "due"),
    [
        (99, 0, 1, False),  # below snapshot_every
        (100, 0, 1, True),  # small index: snapshot_every decides
        (100, 10_000, 1, False),  # large index: 10% of it, 1000, decides
        (1_000, 10_000, 1, True),
        (99_999, 1_000_000, 1, False),
        (100_000, 1_000_000, 1, True),
        (1, 10_000, 59, False),  # a trickle: only by time
        (1, 10_000, 60, True),
        (0, 10_000, 3600, False),  # nothing changed, nothing to trim
    ],
)
def test_due_by_a_share_of_the_index_or_by_time(unsaved, items, now, due):
    assert policy().due(unsaved, items, now=now) is due


@pytest.mark.parametrize(
    ("unsaved", "items", "due"),
    [
        (99, 0, False),  # snapshot_every still the least
        (100, 0, True),
        (2_499, 100_000, False),  # a quarter of 10% of the index
        (2_500, 100_000, True),
        (1, 100_000, False),  # a trickle after a burst: still by time
    ],
)
def test_a_writer_that_caught_up_snapshots_at_a_quarter_of_the_share(unsaved, items, due):
    assert policy().due(unsaved, items, now=1, caught_up=True) is due


def test_a_caught_up_snapshot_still_waits_for_the_size_duty():
    slow = policy(last_seconds=4.0)
    assert not slow.due(5_000, 100_000, now=SIZE_DUTY * 4 - 1, caught_up=True)
    assert slow.due(5_000, 100_000, now=SIZE_DUTY * 4, caught_up=True)


@pytest.mark.parametrize(
    ("unsaved", "caught_up", "waited_for", "due"),
    [
        (1, True, True, True),  # the burst is over and a replica waits: at once
        (1, False, True, False),  # still in the burst: by size, as ever
        (1, True, False, False),  # nobody waits: by time
        (0, True, True, False),  # nothing to save
    ],
)
def test_a_writer_that_caught_up_snapshots_for_a_waiting_replica(
    unsaved, caught_up, waited_for, due
):
    assert policy().due(unsaved, 100_000, 1, caught_up, waited_for) is due


@pytest.mark.parametrize("unsaved", [1, 5_000, 100_000])
def test_a_snapshot_for_a_waiting_replica_waits_only_as_long_as_the_last_took(unsaved):
    slow = policy(last_seconds=4.0)
    assert WAITED_DUTY < SIZE_DUTY
    assert not slow.due(unsaved, 100_000, WAITED_DUTY * 4 - 0.1, caught_up=True, waited_for=True)
    assert slow.due(unsaved, 100_000, WAITED_DUTY * 4, caught_up=True, waited_for=True)


def test_a_waiting_replica_does_not_shorten_the_pause_during_a_burst():
    slow = policy(last_seconds=4.0)
    assert not slow.due(100_000, 100_000, SIZE_DUTY * 4 - 1, caught_up=False, waited_for=True)
    assert slow.due(100_000, 100_000, SIZE_DUTY * 4, caught_up=False, waited_for=True)


def test_a_long_snapshot_spaces_out_the_next_one():
    slow = policy(last_seconds=30.0)
    assert not slow.due(10**6, 10**6, now=SIZE_DUTY * 30 - 1)
    assert slow.due(10**6, 10**6, now=SIZE_DUTY * 30)
    assert not slow.due(1, 10**6, now=TIME_DUTY * 30 - 1)
    assert slow.due(1, 10**6, now=TIME_DUTY * 30)


def test_an_idle_writer_snapshots_once_more_so_the_journal_can_be_trimmed():
    idle = policy(trim_pending=True)
    assert not idle.due(0, 5_000, now=59)
    assert idle.due(0, 5_000, now=60)
    idle.done(0.5, trim_pending=False, now=60)
    assert not idle.due(0, 5_000, now=10**6)


@pytest.mark.parametrize("caught_up", [False, True])
@pytest.mark.parametrize("rate", [10, 1_000, 10_000])  # entries a second
def test_total_snapshot_work_is_linear_in_the_catalog(rate, caught_up):
    """Items written by all snapshots while a catalog grows to N: about (1 + 1/share) x N (share
    0.1, or 0.025 for a writer always caught up), plus one snapshot of at most N per interval:
    O(N) for any N, not O(N^2)."""
    share = SETTINGS.snapshot_fraction * (CAUGHT_UP_SHARE if caught_up else 1.0)
    for final in (10_000, 100_000, 1_000_000):
        rule, items, unsaved, written, now = policy(), 0, 0, 0, 0.0
        while items < final:
            now += 1.0
            items, unsaved = items + rate, unsaved + rate
            if rule.due(unsaved, items, now=now, caught_up=caught_up):
                written, unsaved = written + items, 0
                rule.done(0.0, trim_pending=True, now=now)
        by_time = final / rate / SETTINGS.snapshot_interval  # snapshots the interval forces
        assert written <= (1 + 1 / share) * final + by_time * final
