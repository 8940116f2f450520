"""Every eventlet-specific line of the project lives here, so moving off eventlet touches one file.

`patch()` must run before anything imports sockets or psycopg: psycopg's default C wait function
blocks the whole hub under eventlet, so we make it use `select`, which eventlet turns green.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

_patched = False


def patch() -> None:
    """Monkey-patch the standard library for nameko (idempotent)."""
    global _patched
    if _patched:
        return
    os.environ.setdefault("PSYCOPG_WAIT_FUNC", "wait_select")
    import warnings

    warnings.filterwarnings("ignore", message="(?s).*eventlet is deprecated")
    import eventlet

    eventlet.monkey_patch()
    _patched = True


class DeadlineExceeded(Exception):
    """A block did not finish within its deadline (e.g. a service did not answer an RPC)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block with DeadlineExceeded after `seconds` (any green wait inside ends)."""
    import eventlet

    timer = eventlet.Timeout(seconds, DeadlineExceeded(f"no answer within {seconds:g} s"))
    try:
        yield
    finally:
        timer.cancel()


def spawn(fn: Callable[..., Any], *args: Any) -> Any:
    import eventlet

    return eventlet.spawn(fn, *args)


def sleep(seconds: float) -> None:
    import eventlet

    eventlet.sleep(seconds)


class Wakeup:
    """A level-triggered signal: `set()` from a writer wakes a waiting loop at once.

    A plain threading.Event (green after patching) works, but resetting it races with a
    set() that happens between wait() and clear(); a counter does not lose that wakeup.
    """

    def __init__(self) -> None:
        import threading

        self._cond = threading.Condition()
        self._count = 0

    def set(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def wait(self, timeout: float, seen: int) -> int:
        """Wait until the counter moves past `seen` or the timeout ends; return the counter."""
        with self._cond:
            if self._count == seen:
                self._cond.wait(timeout)
            return self._count

    @property
    def count(self) -> int:
        return self._count
