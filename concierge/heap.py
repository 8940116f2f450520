"""The pace of Python's cyclic garbage collector, for services and for long runs.

Reference counting frees the short-lived objects of a request or an event; the cyclic collector
only finds cycles, and by default it runs a young collection every 700 net allocations of
containers, re-scanning on each older collection everything that survived. A service's start-up
objects and a rebuild's rows survive in the tens of thousands, so that pace was paid for in
re-scans (figures in docs/chassis.md).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# A young collection every 10,000 net container allocations instead of 700, and older ones as
# rarely; short-lived request objects die by reference counting long before either.
THRESHOLDS = (10_000, 20, 20)


def settle() -> None:
    """Keep the collector off what a service built at start (modules, schemas, routes,
    statements) and run it less often: at 20 clients it took 8% of the gateway's CPU and 4% of
    topology's, mostly re-scanning those long-lived objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


@contextlib.contextmanager
def collecting_less() -> Iterator[None]:
    """The settled pace for a long run inside a process that has not settled (the `rebuild`
    command): a rebuild keeps a section's rows while it allocates the next ones, and the
    default pace spent a fifth of its CPU re-scanning them. The previous pace comes back after."""
    before = gc.get_threshold()
    gc.set_threshold(*(max(now, settled) for now, settled in zip(before, THRESHOLDS,
                                                                  strict=True)))
    try:
        yield
    finally:
        gc.set_threshold(*before)
