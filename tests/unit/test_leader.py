"""A standby replica's leader loop tries the lock when idle, not at each commit."""

from __future__ import annotations

from concierge import green
from concierge.leader import LeaderLoop
from tests.support.harness import eventually


class TakenLock:
    """Another replica holds it; counts the tries."""

    def __init__(self) -> None:
        self.tries = 0

    def acquire(self) -> bool:
        self.tries += 1
        return False

    def held(self) -> bool:
        return False

    def release(self) -> None:
        return None


def test_a_standby_tries_the_lock_once_per_idle_period_whatever_wakes_it() -> None:
    lock = TakenLock()
    wakeup = green.Wakeup()
    loop = LeaderLoop("relay", lock, wakeup, idle_seconds=0.5)
    thread = green.spawn(loop.run, lambda: 0.0)
    for _ in range(100):  # a hundred commits in this process during one idle period
        wakeup.set()
        green.sleep(0.001)
    tries = lock.tries
    loop.stop()
    thread.wait()

    assert tries == 1


def test_a_standby_stops_at_once() -> None:
    lock = TakenLock()
    loop = LeaderLoop("relay", lock, green.Wakeup(), idle_seconds=60)
    thread = green.spawn(loop.run, lambda: 0.0)
    green.sleep(0.01)
    loop.stop()

    eventually(lambda: thread.dead, timeout=5)  # not after its minute of standing by
    assert lock.tries == 1
