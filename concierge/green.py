"""Every eventlet-specific line of the project lives here, so moving off eventlet touches one file.

`patch()` must run before anything imports sockets or psycopg: psycopg's default C wait function
blocks the whole hub under eventlet, so we make it use `select`, which eventlet turns green.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
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
    _install_psycopg_wait()
    _patched = True


def _install_psycopg_wait() -> None:
    """psycopg waits on its socket through this: a non-blocking check first (most waits in a
    pipeline are already satisfied), then eventlet's trampoline for one direction.

    `wait_select` goes through eventlet's green `select`, which registers and unregisters
    listeners on every call: with a few dozen waits per transaction that was a large share of
    each service's CPU.
    """
    try:
        import psycopg.waiting as waiting
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return
    import select as green_select

    from eventlet import patcher
    from eventlet.hubs import trampoline

    real_select = patcher.original("select").select
    wait_r, wait_w = waiting.WAIT_R, waiting.WAIT_W
    ready_r, ready_w = waiting.READY_R, waiting.READY_W
    monotonic = patcher.original("time").monotonic

    def green_wait(gen: Any, fileno: int, interval: float = 0.0,
                   timeout: float | None = None) -> Any:
        deadline = monotonic() + timeout if timeout is not None else None
        fds = (fileno,)
        try:
            s = next(gen)
            while True:
                readable, writable, _ = real_select(fds if s & wait_r else (),
                                                    fds if s & wait_w else (), (), 0)
                if not readable and not writable:
                    left = None if deadline is None else max(0.0, deadline - monotonic())
                    if s in (wait_r, wait_w):
                        try:
                            trampoline(fileno, read=s == wait_r, write=s == wait_w,
                                       timeout=left, timeout_exc=TimeoutError)
                        except TimeoutError:
                            raise waiting.e._WaitTimeout("wait timeout expired") from None
                        readable, writable = ((fds, ()) if s == wait_r else ((), fds))
                    else:
                        readable, writable, _ = green_select.select(
                            fds if s & wait_r else (), fds if s & wait_w else (), (), left)
                ready = (ready_r if readable else 0) | (ready_w if writable else 0)
                s = gen.send(ready)
                if deadline is not None and monotonic() >= deadline:
                    raise waiting.e._WaitTimeout("wait timeout expired")
        except StopIteration as ex:
            return ex.value

    waiting.wait = green_wait


class DeadlineExceeded(Exception):
    """A block did not finish within its deadline (e.g. a service did not answer an RPC)."""


# When the innermost `deadline` block of this green thread ends (time.monotonic()).
_deadline_at: ContextVar[float | None] = ContextVar("concierge_deadline_at", default=None)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block with DeadlineExceeded after `seconds` (any green wait inside ends).

    RPC requests sent inside carry what is left of it (`time_left`), so a service never runs
    one after its caller has been told it failed.
    """
    import eventlet

    ends = time.monotonic() + seconds
    outer = _deadline_at.get()
    token = _deadline_at.set(ends if outer is None else min(ends, outer))
    timer = eventlet.Timeout(seconds, DeadlineExceeded(f"no answer within {seconds:g} s"))
    try:
        yield
    finally:
        timer.cancel()
        _deadline_at.reset(token)


@contextlib.contextmanager
def time_limit(seconds: float, error: Exception) -> Iterator[None]:
    """Interrupt the block with `error` after `seconds`: a wait on a client (its body, a
    drain), not a deadline RPC requests sent inside would carry (`time_left`)."""
    import eventlet

    timer = eventlet.Timeout(seconds, error)
    try:
        yield
    finally:
        timer.cancel()


def time_left() -> float | None:
    """Seconds left before the current `deadline` block ends, or None outside one."""
    ends = _deadline_at.get()
    return None if ends is None else ends - time.monotonic()


def spawn(fn: Callable[..., Any], *args: Any) -> Any:
    import eventlet

    return eventlet.spawn(fn, *args)


def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a call that blocks in the kernel (file writes, fsync) in an OS thread, so the other
    green threads of the process go on meanwhile; a plain call when nothing is patched."""
    import eventlet.patcher

    if not eventlet.patcher.is_monkey_patched("thread"):
        return fn(*args)
    from eventlet import tpool

    return tpool.execute(fn, *args)


class Saturated(Exception):
    """A Throttle refused a call: as many run as may, and as many wait as may."""


class Throttle:
    """At most `running` calls at once in OS threads (`blocking`), at most `waiting` more queued
    for a turn; any further call is refused at once with Saturated.

    For CPU-bound work that releases the GIL (argon2): in threads it leaves the event loop free,
    the bound keeps a flood from taking every core and every worker of the service, and a
    refusal in time beats a queue that only grows.
    """

    def __init__(self, running: int, waiting: int) -> None:
        import threading

        self.running = running
        self.waiting = waiting
        self._cond = threading.Condition()
        self._busy = 0
        self._queued = 0

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._cond:
            if self._busy >= self.running:
                if self._queued >= self.waiting:
                    raise Saturated(f"{self._busy} running and {self._queued} waiting")
                self._queued += 1
                try:
                    while self._busy >= self.running:
                        self._cond.wait()
                finally:
                    self._queued -= 1
            self._busy += 1
        try:
            return blocking(fn, *args)
        finally:
            with self._cond:
                self._busy -= 1
                # All, not one: a waiter woken and then killed would leave the turn unused.
                self._cond.notify_all()

    @property
    def busy(self) -> int:
        return self._busy


def sleep(seconds: float) -> None:
    import eventlet

    eventlet.sleep(seconds)


def join(threads: list[Any], until: float) -> list[Any]:
    """Wait for green threads to end, until the monotonic time `until`; return those still
    running then. A thread that ended with an error counts as ended (its spawner logs it)."""
    import time

    import eventlet

    left = []
    for thread in threads:
        remaining = until - time.monotonic()
        if thread.dead:
            continue
        if remaining <= 0:
            left.append(thread)
            continue
        timer = eventlet.Timeout(remaining)
        try:
            thread.wait()
        except eventlet.Timeout as exc:
            if exc is not timer:
                raise
            left.append(thread)
        except BaseException:  # its end is all that is waited for here
            pass
        finally:
            timer.cancel()
    return left


def kill(thread: Any) -> None:
    """End a green thread now: GreenletExit is raised where it waits, so its `finally` blocks
    and transactions unwind (a transaction rolls back, an unacked message goes back)."""
    thread.kill()


def write_now(fd: int, data: bytes) -> None:
    """Write without the hub: eventlet's green `os.write` waits on it for a pipe, which a
    signal handler (it runs on the hub) must not do."""
    from eventlet import patcher

    patcher.original("os").write(fd, data)


def stacks() -> str:
    """Every green thread's stack, for a process that does not stop (the shutdown watchdog)."""
    import gc
    import traceback

    import greenlet

    parts = []
    for obj in gc.get_objects():
        try:  # a weak proxy among the objects raises when what it pointed to is gone
            if isinstance(obj, greenlet.greenlet) and obj.gr_frame is not None:
                parts.append(f"green thread {obj!r}:\n"
                             + "".join(traceback.format_stack(obj.gr_frame)))
        except ReferenceError:
            continue
    return "\n".join(parts)


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
