"""What the benches read about processes from /proc."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of pid and of its descendants (gunicorn's master and worker), those that
    have exited and been waited for included (cutime + cstime: a worker that handed over)."""
    total = 0.0
    for current in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(ticks) for ticks in fields[11:15]) / TICKS
    return total


def run_queue(pid: int | None) -> dict[int, tuple[int, int]]:
    """Each thread of pid and its descendants on the normal policy: the nanoseconds it has
    waited on a run queue and the timeslices it has had (/proc/<tid>/schedstat). SCHED_IDLE
    threads (a handover's loading worker, a quiet replica's following) wait by design: left out."""
    found = {}
    for current in tree(pid):
        for thread in threads(current):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if os.sched_getscheduler(thread) == os.SCHED_IDLE:
                    continue
                _, waited, slices = Path(f"/proc/{thread}/schedstat").read_text().split()[:3]
                found[thread] = (int(waited), int(slices))
    return found


def threads(pid: int) -> list[int]:
    """The native ids of process pid's live threads (none once it has exited)."""
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def tree(pid: int | None) -> Iterator[int]:
    """pid and its live descendants."""
    todo = [] if pid is None else [pid]
    while todo:
        current = todo.pop()
        yield current
        for thread in threads(current):
            with contextlib.suppress(OSError, ValueError):
                children = Path(f"/proc/{current}/task/{thread}/children").read_text()
                todo += [int(child) for child in children.split()]
