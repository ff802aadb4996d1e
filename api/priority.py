"""Scheduling policies for an API process's background work (a handover's new worker, a quiet
replica's following): SCHED_IDLE runs a thread only when a core has nothing else to do, and
going back to the normal policy needs CAP_SYS_NICE or an RLIMIT_NICE of 20."""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path

CAP_SYS_NICE = 23  # its bit in /proc/<pid>/status's CapEff


def can_restore_priority(status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process may go back from SCHED_IDLE to the normal scheduling policy."""
    if not hasattr(os, "SCHED_IDLE"):
        return False  # not Linux
    if resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20:
        return True
    found = re.search(r"^CapEff:\s*([0-9a-f]+)$", status.read_text(), re.MULTILINE)
    return found is not None and bool(int(found.group(1), 16) >> CAP_SYS_NICE & 1)


def idle_priority(every_thread: bool = False) -> None:
    """This thread (or every thread of the process), and the threads it starts later, run only
    when a core has nothing else to do."""
    set_policy(os.SCHED_IDLE, _threads(every_thread))


def normal_priority(thread: int | None = None) -> None:
    """Every thread of this process (or the one with native id `thread`) on the normal policy."""
    set_policy(os.SCHED_OTHER, _threads(True) if thread is None else [thread])


def is_idle(thread: int = 0) -> bool:
    """Whether the thread with native id `thread` (0: the calling one) is at SCHED_IDLE."""
    return os.sched_getscheduler(thread) == os.SCHED_IDLE


def set_policy(policy: int, threads: list[int]) -> None:
    for thread in threads:
        try:
            os.sched_setscheduler(thread, policy, os.sched_param(0))
        except ProcessLookupError:
            continue  # a thread that ended meanwhile


def _threads(every_thread: bool) -> list[int]:
    if not every_thread:
        return [0]  # the calling thread
    return [int(task.name) for task in Path("/proc/self/task").iterdir()]
