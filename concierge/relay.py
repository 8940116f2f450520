"""The outbox relay: the store's notification log, published to the bus at least once, in order.

Only the holder of the service's leader lock publishes. The position moves only after the
broker confirmed the batch, so a crash re-publishes (subscribers drop the duplicates) and nothing
committed is ever skipped. The confirmed position is written to the database at most every
`save_seconds` (and when the relay goes idle or stops), not after every batch: under a stream of
single-event commits that write was most of the relay's cost, and what a crash can cost instead
is re-publishing those few seconds, which subscribers drop. A commit in this process wakes the
relay at once and hands it the records it stored, so the relay publishes them without reading
them back when they follow on from its position; anything else (a gap, a commit of another
replica, a relay that just took the lead) is read from the log. The idle timeout only matters
for commits made by other replicas.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.engine import Engine

from concierge import envelope
from concierge.bus import CONNECTION_ERRORS, Publisher, PublishFailed
from concierge.database import relay_position
from concierge.green import Wakeup
from concierge.leader import LeaderLoop
from concierge.locks import LeaderLock
from concierge.records import StoredRecord
from concierge.store import ServiceApplication

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self,
        service: str,
        app: ServiceApplication,
        engine: Engine,
        publisher_factory: Callable[[], Publisher],
        lock: LeaderLock,
        batch_size: int = 1000,
        window: int = 3,
        idle_seconds: float = 1.0,
        lock_check_seconds: float = 5.0,
        publishable: envelope.Publishable = envelope.EVERYTHING,
        save_seconds: float = 0.5,
    ) -> None:
        self.service = service
        self.app = app
        self.engine = engine
        self.publisher_factory = publisher_factory
        self.lock = lock
        self.batch_size = batch_size
        self.window = window
        self.idle_seconds = idle_seconds
        self.lock_check_seconds = lock_check_seconds
        self.publishable = publishable
        self.wakeup = Wakeup()
        self.running = True
        self.loop = LeaderLoop(f"relay of {service}", lock, self.wakeup, idle_seconds,
                               lock_check_seconds)
        self.published = 0
        self._publisher: Publisher | None = None
        self._position: int | None = None
        self._saved: int | None = None
        self._saved_at = 0.0
        self.save_seconds = save_seconds
        # Records this process committed since the last pass, oldest first; a hint only.
        self._handed: list[StoredRecord] = []
        self._caught_up = False
        app.on_recorded(self._hand_over)

    def _hand_over(self, records: list[StoredRecord]) -> None:
        """A commit here: keep its records for the next pass (while leading, and only so many:
        what is dropped is read from the log) and wake the relay."""
        if self._position is not None and len(self._handed) < self.batch_size:
            self._handed.extend(records)
        self.wakeup.set()

    def _next_batch(self, after: int) -> list[StoredRecord]:
        """What follows `after`: the handed-over records when they follow on without a gap,
        else a read of the log. Right after a hand-over the log is not read again: every
        commit of this process hands its records over, and the idle timeout reads the log for
        the commits of other replicas."""
        handed = [r for r in self._handed if r.position > after]
        self._handed = []
        if handed and all(r.position == after + 1 + i for i, r in enumerate(handed)):
            self._handed = handed[self.batch_size:]
            self._caught_up = not self._handed
            return handed[:self.batch_size]
        if handed:  # a gap before them: someone else committed too
            self._caught_up = False
        if self._caught_up:
            return []
        return self.app.read(after=after, limit=self.batch_size)

    # -- position ----------------------------------------------------------------------------
    def position(self) -> int:
        if self._position is None:
            with self.engine.connect() as conn:
                value = conn.execute(
                    select(relay_position.c.position).where(
                        relay_position.c.service == self.service
                    )
                ).scalar()
            self._position = self._saved = int(value or 0)
        return self._position

    def _confirmed(self, position: int) -> None:
        """The broker holds everything up to `position`; persist it when it is time."""
        self._position = position
        if time.monotonic() - self._saved_at >= self.save_seconds:
            self.save_position()

    def save_position(self) -> None:
        """Write the confirmed position if it moved since the last write."""
        if self._position is None or self._position == self._saved:
            return
        self._save_position(self._position)

    def _save_position(self, position: int) -> None:
        with self.engine.begin() as conn:
            updated = conn.execute(
                relay_position.update()
                .where(relay_position.c.service == self.service)
                .values(position=position)
            ).rowcount
            if not updated:
                conn.execute(relay_position.insert().values(service=self.service,
                                                            position=position))
        self._saved = position
        self._saved_at = time.monotonic()

    # -- publishing --------------------------------------------------------------------------
    def _publisher_(self) -> Publisher:
        if self._publisher is None:
            self._publisher = self.publisher_factory()
        return self._publisher

    def publish_pending(self) -> int:
        """Publish everything past the recorded position; return how many went out.

        Up to `window` batches are in flight: the next batch is read and sent while the broker
        persists and confirms the previous one. The position only ever moves to the end of a
        confirmed prefix, so a failure re-sends from there (at least once, never a gap).
        """
        publisher = self._publisher_()
        in_flight: list[tuple[int, int, int]] = []  # (ticket, last position, count)
        after = self.position()
        total = 0
        self._caught_up = False
        try:
            while True:
                records = self._next_batch(after)
                if records:
                    store = self.app.store_id()
                    envelopes = [envelope.build(self.service, r, publishable=self.publishable,
                                                store=store) for r in records]
                    ticket = publisher.send(envelopes)
                    after = records[-1].position
                    in_flight.append((ticket, after, len(records)))
                if in_flight and (not records or len(in_flight) >= self.window):
                    ticket, last, count = in_flight.pop(0)
                    publisher.wait(ticket)
                    self._confirmed(last)
                    self.published += count
                    total += count
                if not records and not in_flight:
                    return total
        except (PublishFailed, *CONNECTION_ERRORS):
            self._drop_publisher()
            raise

    def replay(self, after: int = 0, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-publish the log from `after` without moving the relay's own position."""
        total, last = 0, self.app.max_position()
        after = max(after, 0)
        while True:
            records = self.app.read(after=after, limit=self.batch_size)
            if not records:
                return total
            store = self.app.store_id()
            self._publisher_().publish_batch(
                [envelope.build(self.service, r, publishable=self.publishable, store=store)
                 for r in records]
            )
            total += len(records)
            after = records[-1].position
            if progress:
                progress(after, last)

    def _drop_publisher(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    # -- the loop -------------------------------------------------------------------------------
    def stop(self) -> None:
        self.running = False
        self.loop.stop()

    def run(self) -> None:
        """Lead or stand by; while leading, publish whenever the log grows."""

        def step() -> float:
            published = self.publish_pending()
            if published and self.running and not self._caught_up:
                return 0  # the log may hold more
            if time.monotonic() - self._saved_at >= self.save_seconds:
                self.save_position()  # caught up, and the last write is old enough
            return self.idle_seconds

        def forget() -> None:
            self._position = self._saved = None
            self._handed = []
            self._drop_publisher()

        def last() -> None:
            """Stopping while leading: publish what was committed (the commands drained at
            shutdown included) and save the position, before the lead goes to another
            replica, which then starts where this one ended."""
            self.publish_pending()
            self.save_position()

        try:
            self.loop.run(step, on_lost=forget, last=last)
        finally:
            self._drop_publisher()
