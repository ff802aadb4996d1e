"""When the writer snapshots: linear total cost, bounded journal, trimmed to nothing when idle."""

from __future__ import annotations

import pytest

from shared.settings import Settings
from workers.policy import SIZE_DUTY, TIME_DUTY, SnapshotPolicy

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


@pytest.mark.parametrize("rate", [10, 1_000, 10_000])  # entries a second
def test_total_snapshot_work_is_linear_in_the_catalog(rate):
    """Items written by all snapshots while a catalog grows to N: about (1 + 1/0.1) x N, plus
    one snapshot of at most N per interval: O(N) for any N, not O(N^2)."""
    for final in (10_000, 100_000, 1_000_000):
        rule, items, unsaved, written, now = policy(), 0, 0, 0, 0.0
        while items < final:
            now += 1.0
            items, unsaved = items + rate, unsaved + rate
            if rule.due(unsaved, items, now=now):
                written, unsaved = written + items, 0
                rule.done(0.0, trim_pending=True, now=now)
        by_time = final / rate / SETTINGS.snapshot_interval  # snapshots the interval forces
        assert written <= 11 * final + by_time * final
