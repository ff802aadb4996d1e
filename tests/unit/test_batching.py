"""When a partial batch of embed messages stops waiting for more (workers/batching.py)."""

from __future__ import annotations

import pytest

from workers.batching import MAX_FILL_INTERVALS, FillingBatches

INTERVAL = 0.05


def batches_holding(buffered: int, since_first: float, since_last: float) -> FillingBatches:
    task = FillingBatches()
    task.flush_every, task.flush_interval = 8, INTERVAL
    for n in range(buffered):
        task._buffer.put(n)
    task._first_arrival, task._last_arrival = 100.0 - since_first, 100.0 - since_last
    return task


@pytest.mark.parametrize(
    ("buffered", "since_first", "since_last", "waits"),
    [
        (0, 0.0, 0.0, False),  # nothing to flush: Batches stops its timer
        (8, 0.0, 0.0, False),  # a full batch goes at once
        (12, 0.0, 0.0, False),
        (3, 0.01, 0.01, True),  # messages are still coming: wait for more
        (3, 0.9, 0.01, True),
        (3, 0.2, 1.01 * INTERVAL, False),  # quiet for an interval: the queue is empty
        (1, 0.06, 0.06, False),  # one search alone waits one interval, as before
        (7, 1.01 * MAX_FILL_INTERVALS * INTERVAL, 0.0, False),  # waited long enough, however busy
    ],
)
def test_a_partial_batch_waits_only_while_messages_keep_coming(
    buffered, since_first, since_last, waits
):
    assert batches_holding(buffered, since_first, since_last)._filling(100.0) is waits
