"""Subscribers: every event of a source applied once, in the source's log order.

A subscription keeps the last position it has applied. A message at or below it is a duplicate
and changes nothing. A message past the next position means something is missing (lost, late,
or this subscriber started after events were published): the subscription reads the source's
log from where it stands and applies what it finds in order, so a later copy of those events is
a duplicate too. Handlers record the position in the same transaction as their effect.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from eventsourcing.persistence import IntegrityError, Tracking
from sqlalchemy import and_, select, text
from sqlalchemy.engine import Connection, Engine

from concierge import context
from concierge.database import projection_tracking
from concierge.store import ServiceApplication

log = logging.getLogger(__name__)

Envelope = dict[str, Any]
LogReader = Callable[[str, int, int], list[Envelope]]


class Handler(Protocol):
    name: str

    def interested(self, event_type: str) -> bool: ...
    def tracked(self, source: str) -> int: ...
    def apply(self, envelope: Envelope) -> bool:
        """Apply the effect and record the position atomically; False if already applied."""
        ...


class Subscription:
    def __init__(self, source: str, handler: Handler, read_log: LogReader,
                 batch_size: int = 500) -> None:
        self.source = source
        self.handler = handler
        self.read_log = read_log
        self.batch_size = batch_size
        self.applied = 0
        self._position: int | None = None
        self._lock = threading.RLock()

    @property
    def position(self) -> int:
        if self._position is None:
            self._position = self.handler.tracked(self.source)
        return self._position

    def forget_position(self) -> None:
        """Re-read the persisted position next time (after a rebuild or a failed apply)."""
        with self._lock:
            self._position = None

    def deliver(self, message: Envelope) -> None:
        with self._lock:
            position = int(message["position"])
            if position <= self.position:
                return
            if position > self.position + 1:
                self._catch_up(until=position)
                if position > self.position:
                    # Not in the source's log even after reading it to the end: a message
                    # left in a durable queue by an earlier store (a wiped data folder, a
                    # recreated schema). Applying it would skip every real event below it.
                    log.warning("%s ignores %s %s at position %s: the log of %s ends at %s",
                                self.handler.name, message.get("type"),
                                message.get("event_id"), position, self.source, self.position)
                return
            self._apply(message)

    def catch_up(self) -> int:
        """Apply everything the source's log holds past our position; return how many."""
        with self._lock:
            return self._catch_up(until=None)

    def _catch_up(self, until: int | None) -> int:
        count = 0
        apply_batch = getattr(self.handler, "apply_batch", None)
        while True:
            batch = self.read_log(self.source, self.position, self.batch_size)
            fresh = [m for m in batch if int(m["position"]) > self.position]
            if apply_batch is not None and fresh:
                # Read models take a whole section in one transaction (rebuilds, late starts).
                try:
                    self.applied += apply_batch(fresh)
                except Exception:
                    self._position = None
                    raise
                self._position = int(fresh[-1]["position"])
                count += len(fresh)
            else:
                for message in fresh:
                    self._apply(message)
                    count += 1
            if len(batch) < self.batch_size:
                return count
            if until is not None and self.position >= until:
                return count

    def _apply(self, message: Envelope) -> None:
        try:
            if self.handler.interested(message["type"]):
                self.handler.apply(message)
                self.applied += 1
        except Exception:
            self._position = None
            raise
        self._position = int(message["position"])


class ProcessHandler:
    """A policy that turns a source's event into this service's events, tracked atomically.

    `policy(envelope)` returns the aggregates whose pending events are the effect (or none). A
    unique-position violation means the event was applied before (a duplicate); any other
    conflict (a concurrent write to the same aggregate) is raised so the delivery is retried.
    """

    def __init__(self, name: str, app: ServiceApplication, types: set[str],
                 policy: Callable[[Envelope], list[Any]]) -> None:
        self.name = name
        self.app = app
        self.types = types
        self.policy = policy

    def interested(self, event_type: str) -> bool:
        return event_type in self.types

    def tracked(self, source: str) -> int:
        return self.app.tracked_position(source)

    def apply(self, envelope: Envelope) -> bool:
        source, position = envelope["source"], int(envelope["position"])
        ctx = {"actor": f"{source}:{envelope.get('actor', 'system')}",
               "correlation_id": envelope.get("correlation_id") or envelope["event_id"]}
        with context.acting(ctx), self.app.serialised():
            if self.app.tracked_position(source) >= position:
                return False
            aggregates = self.policy(envelope)
            try:
                self.app.record(*aggregates, tracking=Tracking(source, position))
            except IntegrityError:
                if self.app.tracked_position(source) >= position:
                    return False
                raise
        return True


ProjectFn = Callable[[Connection, Envelope], None]


_MODEL_LOCKS: dict[tuple[int, str], threading.RLock] = {}


def _model_lock(engine: Engine, name: str) -> threading.RLock:
    return _MODEL_LOCKS.setdefault((id(engine), name), threading.RLock())


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"read-model:{name}".encode()).digest()[:8], "big",
                          signed=True)


class ProjectionHandler:
    """Feeds a SQLAlchemy read model; rows and position commit together.

    A read model fed by several sources (its own log and another service's events) has one
    writer at a time, in this process (a lock) and across replicas (a transaction-scoped
    advisory lock on PostgreSQL): otherwise two transactions could each miss the other's
    uncommitted row and leave the model inconsistent.
    """

    def __init__(self, name: str, engine: Engine, handlers: dict[str, ProjectFn]) -> None:
        self.name = name
        self.engine = engine
        self.handlers = handlers

    def interested(self, event_type: str) -> bool:
        return event_type in self.handlers

    def tracked(self, source: str) -> int:
        with self.engine.connect() as conn:
            return _tracked(conn, self.name, source)

    def apply(self, envelope: Envelope) -> bool:
        return self.apply_batch([envelope]) == 1

    def apply_batch(self, envelopes: list[Envelope]) -> int:
        """Apply the events past the recorded position, in order, in one transaction."""
        source = envelopes[0]["source"]
        with _model_lock(self.engine, self.name), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                             {"k": _advisory_key(self.name)})
            current = _tracked(conn, self.name, source)
            applied, last = 0, current
            for envelope in envelopes:
                position = int(envelope["position"])
                if position <= last:
                    continue
                handler = self.handlers.get(envelope["type"])
                if handler is not None:
                    handler(conn, envelope)
                    applied += 1
                last = position
            if last > current:
                _set_tracked(conn, self.name, source, current, last)
        return applied


def _tracked(conn: Connection, projection: str, source: str) -> int:
    query = select(projection_tracking.c.position).where(
        and_(projection_tracking.c.projection == projection,
             projection_tracking.c.source == source)
    )
    return int(conn.execute(query).scalar() or 0)


def _set_tracked(conn: Connection, projection: str, source: str, current: int,
                 position: int) -> None:
    if current:
        conn.execute(
            projection_tracking.update()
            .where(and_(projection_tracking.c.projection == projection,
                        projection_tracking.c.source == source))
            .values(position=position)
        )
    else:
        conn.execute(projection_tracking.insert().values(projection=projection, source=source,
                                                         position=position))
