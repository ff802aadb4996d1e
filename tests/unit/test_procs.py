"""tests.support.procs: what the benches read about processes from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tests.support.procs import cpu_seconds, run_queue, tree

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling")


def test_run_queue_reads_every_thread_of_the_tree_but_the_idle_ones():
    idle_thread: list[int] = []
    started, done = threading.Event(), threading.Event()

    def at_idle() -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        idle_thread.append(threading.get_native_id())
        started.set()
        done.wait(10)

    thread = threading.Thread(target=at_idle)
    thread.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started.wait(10)
        found = run_queue(os.getpid())
        assert threading.get_native_id() in found
        assert child.pid in found and child.pid in list(tree(os.getpid()))
        assert idle_thread[0] not in found
        waited, slices = found[threading.get_native_id()]
        assert waited >= 0 and slices > 0
    finally:
        done.set()
        thread.join()
        child.kill()
        child.wait()


def test_the_tree_of_no_process_is_empty():
    assert run_queue(None) == {} and cpu_seconds(None) == 0.0 and list(tree(None)) == []
