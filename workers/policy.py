"""When the index writer snapshots: the total cost of snapshots linear in the catalog's size, the
journal (and so Redis' memory) bounded while it grows and back near nothing once it is idle."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.settings import Settings

# A snapshot never takes more than 1/SIZE_DUTY of the writer's time when entries pour in, nor
# 1/TIME_DUTY when a few trickle in: the pause between two is a multiple of the last one's length.
SIZE_DUTY = 4
TIME_DUTY = 10
# Once the writer has caught up with the journal (a burst is over) it has nothing else to do: a
# snapshot is due by size at this share of the usual threshold, so that the end of a bulk import
# is saved (and the journal behind it trimmed) without waiting out the time rule.
CAUGHT_UP_SHARE = 1 / SIZE_DUTY
# A replica that waits for a snapshot (api/replica.py) serves the newest items only once it has
# loaded one: when the writer has caught up and a replica waits, the pause before the next
# snapshot is as long as the last one took (at most half the writer's time, when it has nothing
# else to do), not SIZE_DUTY times it (unpinned, the import's last items reached the replicas
# 21-23 s after the writer had them).
WAITED_DUTY = 1


@dataclass
class SnapshotPolicy:
    """Due when the entries since the last snapshot reach a share of the index (at least
    snapshot_every; a quarter of that share once the writer has caught up, and any once it has
    caught up while a replica waits for it), or by time while anything changed, or, once idle,
    to let the journal be trimmed up to the newest snapshot (the two kept ones then hold the
    same position)."""

    settings: Settings
    last_at: float = field(default_factory=time.monotonic)
    last_seconds: float = 0.0
    trim_pending: bool = False  # the journal still holds entries the newest snapshot covers

    def due(
        self,
        unsaved: int,
        items: int,
        now: float | None = None,
        caught_up: bool = False,
        waited_for: bool = False,
    ) -> bool:
        """waited_for: an API replica waits for the next snapshot (its exact tail full during a
        bulk import); once the burst is over it is due after a shorter pause (WAITED_DUTY)."""
        elapsed = (time.monotonic() if now is None else now) - self.last_at
        share = self.settings.snapshot_fraction * (CAUGHT_UP_SHARE if caught_up else 1.0)
        waited = caught_up and waited_for and unsaved > 0
        if waited or unsaved >= max(self.settings.snapshot_every, share * items):
            return elapsed >= (WAITED_DUTY if waited else SIZE_DUTY) * self.last_seconds
        gap = max(self.settings.snapshot_interval, TIME_DUTY * self.last_seconds)
        return (unsaved > 0 or self.trim_pending) and elapsed >= gap

    def done(self, seconds: float, trim_pending: bool, now: float | None = None) -> None:
        self.last_at = time.monotonic() if now is None else now
        self.last_seconds, self.trim_pending = seconds, trim_pending
