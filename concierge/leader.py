"""Work that only one replica of a service may do at a time: the relay, the mailer.

`LeaderLoop.run(step)` holds the service's lock for that purpose (standing by while another
replica holds it), re-checks it now and then, and calls `step()` whenever a commit wakes it or the
idle timeout passes. `step` returns how long to wait before the next call (0: at once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from concierge.green import Wakeup
from concierge.locks import LeaderLock

log = logging.getLogger(__name__)


class LeaderLoop:
    def __init__(self, name: str, lock: LeaderLock, wakeup: Wakeup, idle_seconds: float,
                 lock_check_seconds: float = 5.0, failure_pause: float = 0.5) -> None:
        self.name = name
        self.lock = lock
        self.wakeup = wakeup
        self.idle_seconds = idle_seconds
        self.lock_check_seconds = lock_check_seconds
        self.failure_pause = failure_pause
        self.running = True

    def stop(self) -> None:
        self.running = False
        self.wakeup.set()

    def _stand_by(self) -> None:
        """Wait out the idle timeout before trying the lock again. Commits in this process
        wake the loop, which is for a leader: a standby that tried the lock at each (a query
        each) added a database round trip to every command of its replica."""
        until = time.monotonic() + self.idle_seconds
        while self.running and (left := until - time.monotonic()) > 0:
            self.wakeup.wait(left, self.wakeup.count)

    def run(self, step: Callable[[], float], on_lost: Callable[[], None] = lambda: None,
            last: Callable[[], None] | None = None) -> None:
        """`on_lost` runs when leadership was lost or a step failed (forget cached state);
        `last`, once stopped while leading, before the lock goes (another replica takes over
        the moment it is released)."""
        last_check = 0.0
        leading = False
        try:
            while self.running:
                if not self.lock.acquire():
                    leading = False
                    self._stand_by()
                    continue
                leading = True
                now = time.monotonic()
                if now - last_check > self.lock_check_seconds:
                    last_check = now
                    if not self.lock.held():
                        leading = False
                        on_lost()
                        continue
                seen = self.wakeup.count
                try:
                    wait = step()
                except Exception as exc:  # broker or database trouble: back off, keep leading
                    log.warning("%s failed a pass (%s); retrying", self.name, exc)
                    on_lost()
                    wait = self.failure_pause
                if wait > 0:
                    self.wakeup.wait(wait, seen)
            if leading and last is not None:
                try:
                    last()
                except Exception as exc:  # the next leader starts from what was saved
                    log.warning("%s could not finish before stopping (%s)", self.name, exc)
        finally:
            self.lock.release()


class LeaderTask:
    """A background loop (`Wiring.add_loop`) that runs `step` on one replica at a time: an
    offline detector, a sweeper. `step` returns the seconds to wait before the next pass."""

    def __init__(self, name: str, lock: LeaderLock, step: Callable[[], float],
                 idle_seconds: float = 1.0) -> None:
        self.step = step
        self.loop = LeaderLoop(name, lock, Wakeup(), idle_seconds, failure_pause=idle_seconds)

    def run(self) -> None:
        self.loop.run(self.step)

    def stop(self) -> None:
        self.loop.stop()
