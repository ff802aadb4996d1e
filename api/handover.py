"""Handing an API process's serving over to a new gunicorn worker that loaded a newer snapshot.

hnswlib loads a graph holding the GIL, so a replica that loads the writer's snapshot itself
stalls every request of its process for the load (0.12 s at 20,000 items, 0.38 s at 60,000).
Instead, while requests come, the worker asks gunicorn's master for one more worker (SIGTTIN)
and goes on serving; the new worker loads the newest snapshot, follows the journal until it has
caught up, and only then starts accepting connections and asks the master for one worker fewer
(SIGTTOU): the master stops the oldest, which finishes the requests it holds. The two share the
listening socket, so no connection waits for a load.

They would share the cores meanwhile: at the normal priority the new worker's start, load and
catch-up slowed the queries more than the loads they replace (p99 2.9 s against 0.75 s during a
50k import, docs/benchmarks.md). So the new worker does all that at the idle scheduling priority
(SCHED_IDLE: it runs only when nothing else wants the core) and returns to the normal one when it
takes over; going back needs CAP_SYS_NICE (or RLIMIT_NICE of 20), and without it a replica loads
its snapshots itself as before.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from api.priority import can_restore_priority, idle_priority, normal_priority
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)
# The longest a new worker waits for its replica to catch up before it takes over anyway
# (gunicorn kills a worker that has not started within its --timeout, 120 s).
TAKE_OVER_WAIT = 60.0
# ... and the longest it loads at the idle priority: on a host whose cores are all busy (the
# writer beside two replicas) it was starved, handovers took 15-23 s instead of 1-4, and the
# serving worker meanwhile waited with its exact tail full.
IDLE_AT_MOST = 5.0


class Handover:
    """One gunicorn master's handovers; a file beside its workers says one was asked for."""

    def __init__(self, master_pid: int, directory: Path | None = None) -> None:
        self.master_pid = master_pid
        folder = directory or Path(tempfile.gettempdir())
        self.path = folder / f"lookalike-handover-{master_pid}"

    @classmethod
    def of(cls, worker: Any) -> Handover:
        """The handovers of a gunicorn worker's master, noted beside its workers."""
        tmp = worker.cfg.worker_tmp_dir
        return cls(worker.ppid, Path(tmp) if tmp else None)

    def request(self) -> None:
        """From the serving worker: have the master start a worker that takes over."""
        self.path.write_text(str(os.getpid()))
        try:
            os.kill(self.master_pid, signal.SIGTTIN)
        except OSError:
            self.path.unlink(missing_ok=True)  # no worker will come to take it
            raise

    def requested(self) -> bool:
        return self.path.exists()

    def take_over(
        self, settled: threading.Event, wait: float = TAKE_OVER_WAIT, idle: float = IDLE_AT_MOST
    ) -> float:
        """From a new worker, before it accepts connections: wait until its replica has settled
        (caught up with the journal, or waiting for the writer's next snapshot), at the normal
        priority after `idle` seconds, then have the master stop the oldest worker; the seconds
        waited."""
        started = time.monotonic()
        if not settled.wait(min(idle, wait)):
            log.info("replica: still loading after %.0fs; going on at the normal priority", idle)
            normal_priority()
            if not settled.wait(max(0.0, wait - idle)):
                log.warning("replica: not caught up after %.0fs; taking over anyway", wait)
        normal_priority()
        self.path.unlink(missing_ok=True)
        self.retire_oldest()
        return time.monotonic() - started

    def retire_oldest(self) -> None:
        """One worker fewer: the master stops the oldest (with one worker it ignores this)."""
        os.kill(self.master_pid, signal.SIGTTOU)


def enabled(settings: Settings, workers: int) -> bool:
    """Whether handovers replace loads: set so, one worker per gunicorn (more are the operator's
    own: each loads in its own process), and the new worker's priority can be restored."""
    return settings.replica_handover and workers == 1 and can_restore_priority()


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn's hook, in a new worker before it loads the app: one started for a handover
    starts at the idle priority."""
    if enabled(get_settings(), worker.cfg.workers) and Handover.of(worker).requested():
        idle_priority()


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's hook, in a worker that has answered its last request: what is left (freeing
    its index, Python's teardown) must not slow the worker that took over, which serves on the
    same cores from now on."""
    if enabled(get_settings(), worker.cfg.workers):
        idle_priority(every_thread=True)


def post_worker_init(worker: Any) -> None:
    """gunicorn's hook (api/gunicorn_conf.py): a worker started for a handover takes over once
    its replica has settled; any other starts serving at once (503 until its replica loads).
    Either, once it serves, follows at the idle priority after settings.replica_idle_after
    seconds without a request (api/traffic.py)."""
    services = worker.wsgi.extensions["lookalike"]
    replica = services.replica
    if enabled(services.settings, worker.cfg.workers):
        replica.handover = handover = Handover.of(worker)
        if handover.requested():
            take_over(handover, replica)
    if services.settings.replica_idle_after > 0 and can_restore_priority():
        replica.traffic.idle_when_quiet(services.settings.replica_idle_after)


def take_over(handover: Handover, replica: Any) -> None:
    """A new worker takes over from the serving one once its replica has settled."""
    try:
        waited = handover.take_over(replica.settled)
    except OSError:  # a hook that raises would stop gunicorn: serve, and say why not
        log.exception("replica: the handover failed; this worker serves as it is")
        return
    log.info(
        "replica took over from the previous worker: %d items at %s, ready in %.2fs",
        len(replica.catalog), replica.catalog.position, waited,
    )  # fmt: skip
