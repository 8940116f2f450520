"""Subscribers: every event of a source applied once, in the source's log order.

A subscription keeps the last position it has applied. A message at or below it is a duplicate
and changes nothing. A message past the next position means something is missing (lost, late,
or this subscriber started after events were published): the subscription reads the source's
log from where it stands and applies what it finds in order, so a later copy of those events is
a duplicate too. Handlers record the position in the same transaction as their effect.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from eventsourcing.persistence import IntegrityError, Tracking
from marshmallow import ValidationError
from sqlalchemy import and_, bindparam, select
from sqlalchemy.engine import Connection, Engine

from concierge import context, green
from concierge.database import projection_tracking
from concierge.projection import ProjectFn, ReadModel, Rows, advisory_key, lock_namespace
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
    default_batch_size = 1000

    def __init__(self, source: str, handler: Handler, read_log: LogReader,
                 batch_size: int = default_batch_size) -> None:
        self.source = source
        self.handler = handler
        self.read_log = read_log
        self.batch_size = batch_size
        self.applied = 0
        self._position: int | None = None
        self._lock = threading.RLock()
        # The source store incarnation the log holds now (envelope "store"), once learnt.
        self._store: str | None = None
        # Tickets of `sync`: the last catch-up that completed began at `_synced_from`.
        self._tickets = itertools.count(1)
        self._synced_from = 0

    @property
    def position(self) -> int:
        if self._position is None:
            self._position = self.handler.tracked(self.source)
        return self._position

    def locked(self) -> threading.RLock:
        """Held while a caller applies events to this subscription's handler itself."""
        return self._lock

    def advanced(self, position: int, applied: int) -> None:
        """The caller applied events up to `position` (committed with its transaction)."""
        self._position = position
        self.applied += applied

    def forget_position(self) -> None:
        """Re-read the persisted position next time (after a rebuild or a failed apply)."""
        with self._lock:
            self._position = None

    def deliver(self, message: Envelope) -> None:
        with self._lock:
            position = int(message["position"])
            if position <= self.position:
                return
            if not self.from_current_store(message):
                log.warning("%s ignores %s %s at position %s: it comes from an earlier store "
                            "of %s", self.handler.name, message.get("type"),
                            message.get("event_id"), position, self.source)
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

    def deliver_many(self, messages: list[Envelope]) -> None:
        """A batch from the bus: the run that follows on from our position goes to a read
        model in one transaction; anything else (a gap, a stale or repeated message) takes the
        one-by-one path, which repairs gaps from the log."""
        with self._lock:
            apply_batch = getattr(self.handler, "apply_batch", None)
            run: list[Envelope] = []
            if apply_batch is not None and len(messages) > 1:
                expected = self.position + 1
                for message in messages:
                    if (int(message["position"]) != expected
                            or not self.from_current_store(message)):
                        break
                    run.append(message)
                    expected += 1
            if len(run) > 1:
                try:
                    self.applied += apply_batch(run)
                except Exception:
                    self._position = None
                    raise
                self._position = int(run[-1]["position"])
            for message in messages[len(run) if len(run) > 1 else 0:]:
                self.deliver(message)

    def from_current_store(self, message: Envelope) -> bool:
        """False for a message written by an earlier incarnation of the source's store (a
        wiped data folder, a recreated schema) that was still waiting in a durable queue.

        The current incarnation is learnt from the source's log (its first entry); on a
        mismatch it is learnt again, since the source may have been recreated since.
        """
        store = message.get("store")
        if store is None:
            return True  # a producer from before store ids: nothing to compare
        if store == self._store:
            return True
        try:
            first = self.read_log(self.source, 0, 1)
        except Exception as exc:
            # The source cannot be asked now; positions still guard against most stale messages.
            log.info("%s cannot read %s's log to check a message's store (%s)",
                     self.handler.name, self.source, type(exc).__name__)
            return True
        self._store = first[0].get("store") if first else None
        return self._store is None or store == self._store

    def sync(self) -> int:
        """Apply everything the source had committed when this call began: a read that must
        not answer from before a write the caller has already seen acknowledged (a site deleted
        in another context). Concurrent callers share one read of the log: a caller that finds
        a catch-up began after it arrived and has finished reads nothing itself."""
        arrived = next(self._tickets)
        with self._lock:
            if self._synced_from > arrived:
                return 0
            began = next(self._tickets)
            count = self._catch_up(until=None)
            self._synced_from = began
            return count

    def catch_up(self, conn: Connection | None = None,
                 known: list[Envelope] | None = None) -> int:
        """Apply everything the source's log holds past our position; return how many.

        `known`: events just recorded, applied without reading the log when they follow on
        from our position. `conn`: a transaction shared with other read models (the caller
        forgets every position if it does not commit).
        """
        with self._lock:
            apply_batch = getattr(self.handler, "apply_batch", None)
            if (known and apply_batch is not None
                    and int(known[0]["position"]) == self.position + 1):
                try:
                    self.applied += apply_batch(known, conn=conn)
                except Exception:
                    self._position = None
                    raise
                self._position = int(known[-1]["position"])
                return len(known)
            return self._catch_up(until=None, conn=conn)

    def _catch_up(self, until: int | None, conn: Connection | None = None) -> int:
        count = 0
        apply_batch = getattr(self.handler, "apply_batch", None)
        ahead: Any = None
        try:
            while True:
                if ahead is not None:
                    batch, ahead = ahead.wait(), None
                else:
                    batch = self.read_log(self.source, self.position, self.batch_size)
                more = len(batch) >= self.batch_size and (until is None or
                                                          int(batch[-1]["position"]) < until)
                if more and apply_batch is not None:
                    # Read the next section while this one is written: the database works
                    # on one while Python decodes the other.
                    ahead = green.spawn(self.read_log, self.source, int(batch[-1]["position"]),
                                        self.batch_size)
                known = self.position
                fresh = [m for m in batch if int(m["position"]) > known]
                if apply_batch is not None and fresh:
                    # Read models take a whole section in one transaction.
                    try:
                        self.applied += apply_batch(fresh, conn=conn)
                    except Exception:
                        self._position = None
                        raise
                    self._position = int(fresh[-1]["position"])
                    count += len(fresh)
                else:
                    for message in fresh:
                        self._apply(message)
                        count += 1
                if not more:
                    return count
        finally:
            if ahead is not None:
                with contextlib.suppress(Exception):
                    ahead.wait()

    def _apply(self, message: Envelope) -> None:
        try:
            if self.handler.interested(message["type"]):
                self.handler.apply(message)
                self.applied += 1
        except Exception:
            self._position = None
            raise
        self._position = int(message["position"])


# The type an event whose data breaks its contract is handed on as: no policy is interested in
# it, so it only carries its position past the policy.
_BROKEN = "concierge.broken-contract"


class ProcessHandler:
    """A policy that turns a source's event into this service's events, tracked atomically.

    `policy(envelope)` returns the aggregates whose pending events are the effect (or none). A
    unique-position violation means the event was applied before (a duplicate); any other
    conflict (a concurrent write to the same aggregate) is raised so the delivery is retried.
    """

    def __init__(self, name: str, app: ServiceApplication, types: set[str],
                 policy: Callable[[Envelope], list[Any]],
                 alone: set[str] | frozenset[str] = frozenset(),
                 lookups: Callable[[list[Envelope]], list[Any]] | None = None,
                 schemas: Mapping[str, Any] | None = None) -> None:
        """`alone`: event types whose policy reads something a unit of work does not show
        (a read model), so each is applied in a transaction of its own, after what precedes
        it has committed. `lookups(envelopes)`: the aggregate ids the policy will look for,
        checked in one query per unit. `schemas`: per event type, the contract schema its
        `data` is loaded with, once per event, before `lookups` and the policy see it; an
        event whose data breaks its contract is logged and skipped (a producer's bug must
        not hold back every later event)."""
        self.name = name
        self.app = app
        self.types = types
        self.policy = policy
        self.alone = alone
        self.lookups = lookups
        self.schemas = {kind: schema() if isinstance(schema, type) else schema
                        for kind, schema in (schemas or {}).items()}
        self.units = 0

    def _loaded(self, envelopes: list[Envelope]) -> list[Envelope]:
        """The envelopes with their `data` loaded through its contract schema (copies), those
        whose data breaks it left out."""
        if not self.schemas:
            return envelopes
        loaded = []
        for envelope in envelopes:
            schema = self.schemas.get(envelope["type"])
            if schema is None:
                loaded.append(envelope)
                continue
            try:
                loaded.append({**envelope, "data": schema.load(envelope["data"])})
            except ValidationError as exc:
                log.error("%s: %s %s of %s breaks its contract (%s); skipped", self.name,
                          envelope["type"], envelope.get("event_id"), envelope.get("source"),
                          exc.messages)
                loaded.append({**envelope, "type": _BROKEN})
        return loaded

    def apply_batch(self, envelopes: list[Envelope], conn: Any = None) -> int:
        """A run of the source's events past our position, in order: applied in as few units
        of work as the `alone` types allow, each with the position of its last event. The
        policy sees the effect of the events before it in the same unit.

        A unit that fails is applied again one event at a time (`apply`), which tells a
        duplicate from a conflict and gives each event its own outcome.
        """
        assert conn is None, "a policy records in its own store, not in a read model's"
        applied = 0
        group: list[Envelope] = []
        for envelope in self._loaded(envelopes):
            if envelope["type"] in self.alone:
                applied += self._apply_group(group)
                group = []
                applied += self._apply_one(envelope) if self.interested(envelope["type"]) else 0
            else:
                group.append(envelope)
        return applied + self._apply_group(group)

    def _apply_group(self, envelopes: list[Envelope]) -> int:
        if not envelopes:
            return 0
        if len(envelopes) == 1:
            envelope = envelopes[0]
            return 1 if self.interested(envelope["type"]) and self._apply_one(envelope) else 0
        source, last = envelopes[0]["source"], int(envelopes[-1]["position"])
        parts = [(context.CallContext.from_dict(self._context(envelope)),
                  self._part(envelope)) for envelope in envelopes]
        try:
            with self.app.serialised():
                self.app.run_unit(parts, tracking=Tracking(source, last),
                                  lookups=self.lookups(envelopes) if self.lookups else ())
        except Exception as exc:
            log.info("%s applies %d events of %s one by one (%s: %s)", self.name,
                     len(envelopes), source, type(exc).__name__, exc)
            return sum(1 for envelope in envelopes if self._apply_one(envelope))
        self.units += 1
        return sum(1 for envelope in envelopes if self.interested(envelope["type"]))

    def _part(self, envelope: Envelope) -> Callable[[], tuple[None, list[Any]]]:
        def part() -> tuple[None, list[Any]]:
            if not self.interested(envelope["type"]):
                return None, []
            return None, self.policy(envelope)

        return part

    @staticmethod
    def _context(envelope: Envelope) -> dict[str, Any]:
        return {"actor": f"{envelope['source']}:{envelope.get('actor', 'system')}",
                "correlation_id": envelope.get("correlation_id") or envelope["event_id"]}

    def interested(self, event_type: str) -> bool:
        return event_type in self.types

    def tracked(self, source: str) -> int:
        return self.app.tracked_position(source)

    def apply(self, envelope: Envelope) -> bool:
        """One event of the source, applied alone (with its tracking position)."""
        return self._apply_one(self._loaded([envelope])[0])

    def _apply_one(self, envelope: Envelope) -> bool:
        source, position = envelope["source"], int(envelope["position"])
        tracking = Tracking(source, position)
        # No read of the tracked position first: the subscription only hands over events
        # past it, and a replica that applied this one meanwhile makes the tracking insert
        # fail below, which is then told apart from a real conflict.
        try:
            with self.app.serialised():
                if self.lookups is None:
                    with context.acting(self._context(envelope)):
                        self.app.record(*self.policy(envelope), tracking=tracking)
                else:  # a unit of one: what the policy looks for is checked in one query
                    self.app.run_unit(
                        [(context.CallContext.from_dict(self._context(envelope)),
                          self._part(envelope))],
                        tracking=tracking, lookups=self.lookups([envelope]))
        except IntegrityError:
            if self.app.tracked_position(source) >= position:
                return False
            raise
        return True


_MODEL_LOCKS: dict[tuple[int, str], threading.RLock] = {}


def _model_lock(engine: Engine, name: str) -> threading.RLock:
    return _MODEL_LOCKS.setdefault((id(engine), name), threading.RLock())


@contextlib.contextmanager
def models_locked(handlers: Iterable[Any]) -> Iterator[None]:
    """The in-process locks of these read models, taken in one order (by name) by every caller.

    The rule that keeps replicas free of deadlock: a transaction takes the in-process locks of
    every model it will write before its first PostgreSQL lock, and holds them until it has
    stopped waiting for anything. PostgreSQL sees and breaks a cycle among its own locks; it
    cannot see a green thread that waits for an in-process lock while its transaction holds an
    advisory lock that the lock's holder waits for (two replicas stopped every topology
    request that way).
    """
    with contextlib.ExitStack() as held:
        models = {(h.engine, h.name) for h in handlers if isinstance(h, ProjectionHandler)}
        for engine, name in sorted(models,
                                   key=lambda pair: (pair[1], id(pair[0]))):
            held.enter_context(_model_lock(engine, name))
        yield


class ProjectionHandler:
    """Feeds a SQLAlchemy read model; rows and position commit together.

    A read model fed by several sources (its own log and another service's events) has one
    writer at a time, in this process (a lock) and across replicas and a rebuild (a
    transaction-scoped advisory lock on PostgreSQL, the database's write lock on SQLite):
    otherwise two transactions could each miss the other's uncommitted row and leave the
    model inconsistent. `exclusive`: nothing else writes these tables (a rebuild's new ones),
    so no lock is taken across processes.
    """

    def __init__(self, name: str, engine: Engine, handlers: dict[str, ProjectFn],
                 exclusive: bool = False,
                 prefetch: Callable[[Rows, list[Envelope]], None] | None = None) -> None:
        self.name = name
        self.engine = engine
        self.handlers = handlers
        self.exclusive = exclusive
        self.prefetch = prefetch  # the model's `ReadModel.prefetch`

    def interested(self, event_type: str) -> bool:
        return event_type in self.handlers

    def tracked(self, source: str) -> int:
        with self.engine.connect() as conn:
            return _tracked(conn, self.name, source)

    def apply(self, envelope: Envelope) -> bool:
        return self.apply_batch([envelope]) == 1

    def apply_batch(self, envelopes: list[Envelope], conn: Connection | None = None) -> int:
        """Apply the events past the recorded position, in order, in one transaction (the
        given connection's, when several read models commit together)."""
        if conn is not None:
            return self._apply_within(conn, envelopes)
        with self.engine.begin() as own:
            return self._apply_within(own, envelopes)

    def _apply_within(self, conn: Connection, envelopes: list[Envelope]) -> int:
        source = envelopes[0]["source"]
        with _model_lock(self.engine, self.name):
            statements = _together_statements((self.name,))
            if conn.dialect.name == "postgresql":
                # The lock, then the position read under it: one round trip.
                current = int(dict(_locked_positions(conn, statements, source,
                                                     lock=not self.exclusive)).get(
                    self.name, 0))
            else:
                if not self.exclusive:
                    _sqlite_write_lock(conn)
                current = _tracked(conn, self.name, source)
            rows = Rows(conn)
            if self.prefetch is not None:
                self.prefetch(rows, [e for e in envelopes if int(e["position"]) > current])
            applied, last = 0, current
            for envelope in envelopes:
                position = int(envelope["position"])
                if position <= last:
                    continue
                handler = self.handlers.get(envelope["type"])
                if handler is not None:
                    handler(rows, envelope)
                    applied += 1
                last = position
            if current and last > current and conn.dialect.name == "postgresql":
                _flush_and_move(conn, rows, statements, source, last)
                return applied
            rows.flush()
            if last > current:
                _set_tracked(conn, self.name, source, current, last)
        return applied


def apply_together(handlers: list[ProjectionHandler], conn: Connection,
                   envelopes: list[Envelope]) -> bool:
    """Apply a run of one source's events to several read models in one transaction, with one
    statement each to lock, read and move their positions (a command's own read models).

    Only when every model stands right before the run; False (nothing written) otherwise, and
    the caller falls back to catching up one model at a time.
    """
    source = envelopes[0]["source"]
    first, last = int(envelopes[0]["position"]), int(envelopes[-1]["position"])
    names = [h.name for h in handlers]
    with models_locked(handlers):
        statements = _together_statements(tuple(names))
        postgres = conn.dialect.name == "postgresql"
        pt = projection_tracking
        if postgres:
            tracked = dict(_locked_positions(conn, statements, source))
        else:
            _sqlite_write_lock(conn)
            tracked = dict(conn.execute(statements.positions,
                                        {"of_source": source}).tuples().all())
        if any(int(tracked.get(name, 0)) != first - 1 for name in names):
            return False
        rows = Rows(conn)
        for handler in handlers:
            if handler.prefetch is not None:
                handler.prefetch(rows, envelopes)
        for envelope in envelopes:
            for handler in handlers:
                project = handler.handlers.get(envelope["type"])
                if project is not None:
                    project(rows, envelope)
        if postgres and len(tracked) == len(names):
            _flush_and_move(conn, rows, statements, source, last)
            return True
        rows.flush()
        if len(tracked) == len(names):
            conn.execute(statements.move, {"of_source": source, "to_position": last})
        else:
            known = [name for name in names if name in tracked]
            if known:
                conn.execute(pt.update().where(and_(pt.c.projection.in_(known),
                                                    pt.c.source == source)).values(position=last))
            conn.execute(pt.insert(), [{"projection": n, "source": source, "position": last}
                                       for n in names if n not in tracked])
    return True


class _Together:
    """The statements `apply_together` runs for one set of read models, built once: SQLAlchemy
    otherwise rebuilds and re-keys them on every commit."""

    def __init__(self, names: tuple[str, ...]) -> None:
        pt = projection_tracking
        mine = and_(pt.c.projection.in_(names), pt.c.source == bindparam("of_source"))
        self.positions = select(pt.c.projection, pt.c.position).where(mine)
        self.move = pt.update().where(mine).values(position=bindparam("to_position"))
        # PostgreSQL: straight to the driver, to be pipelined; the lock is PostgreSQL's only.
        self._raw_locks: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.raw_positions = (f"SELECT projection, position FROM {pt.name} "
                              "WHERE projection = ANY(%s) AND source = %s")
        self.raw_move = (f"UPDATE {pt.name} SET position = %s "
                         "WHERE projection = ANY(%s) AND source = %s")
        self.names = list(names)

    def raw_lock(self, namespace: str) -> tuple[str, tuple[int, ...]]:
        """The statement locking these read models, with the keys of one deployment's
        (`lock_namespace`): a process may serve read models of several (tests do)."""
        found = self._raw_locks.get(namespace)
        if found is None:
            # Sorted: every transaction that locks several models locks them in the same order.
            keys = tuple(advisory_key(name, namespace) for name in sorted(set(self.names)))
            found = self._raw_locks[namespace] = (
                "SELECT " + ", ".join("pg_advisory_xact_lock(%s::bigint)" for _ in keys), keys)
        return found


_TOGETHER: dict[tuple[str, ...], _Together] = {}


def _together_statements(names: tuple[str, ...]) -> _Together:
    found = _TOGETHER.get(names)
    if found is None:
        found = _TOGETHER[names] = _Together(names)
    return found


@contextlib.contextmanager
def pipelined(conn: Connection) -> Iterator[Any]:
    """The driver connection of a PostgreSQL transaction in pipeline mode: statements sent
    meanwhile go out together and are waited for once, when the block ends (where an error
    is raised). Only driver statements inside: SQLAlchemy reads a result as it executes."""
    raw = conn.connection.driver_connection
    with raw.pipeline():
        yield raw


def _locked_positions(conn: Connection, statements: _Together,
                      source: str, lock: bool = True) -> list[tuple[str, int]]:
    """Lock the read models (transaction-scoped advisory locks), then read their positions:
    two statements, one round trip. The read is a statement of its own, after the locks, so
    it sees what the previous holder committed."""
    with pipelined(conn) as raw, raw.cursor() as locking, raw.cursor() as reading:
        if lock:
            locking.execute(*statements.raw_lock(lock_namespace(conn)))
        reading.execute(statements.raw_positions, (statements.names, source))
        return [(name, int(position)) for name, position in reading.fetchall()]


def _sqlite_write_lock(conn: Connection) -> None:
    """Take SQLite's write lock before reading the positions. The driver opens a transaction
    only at the first write, so the read would otherwise come before the lock, and a rebuild
    swapping its tables in between would have this transaction apply events again and move
    a position back."""
    raw = conn.connection.driver_connection
    if not raw.in_transaction:
        raw.execute("BEGIN IMMEDIATE")


def _flush_and_move(conn: Connection, rows: Rows, statements: _Together, source: str,
                    last: int) -> None:
    """The models' pending writes and their positions moved to `last`: one round trip (every
    model already has a position row for `source`)."""
    with pipelined(conn) as raw, raw.cursor() as cursor:
        rows.flush()
        cursor.execute(statements.raw_move, (last, statements.names, source))


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


def projection_handlers(model: ReadModel, engine: Engine, exclusive: bool = False, *,
                        own: str | None = None) -> dict[str, ProjectionHandler]:
    """A read model's handlers, {source: handler}, writing through `engine`; `exclusive` for
    tables nothing else writes (a rebuild's). `own`: the service's name; the events of every
    other source reach the handlers with text a read model can store (`storable`)."""
    return {source: ProjectionHandler(
                model.name, engine,
                fns if source == own else {kind: storable(fn) for kind, fn in fns.items()},
                exclusive=exclusive, prefetch=model.prefetch)
            for source, fns in model.handlers().items()}


def storable(project: ProjectFn) -> ProjectFn:
    """A handler that sees another service's event without NUL characters, which PostgreSQL
    text cannot hold: one such event must not stall a read model. The service's own events
    need no scan: its contracts refuse NUL (`contracts.fields.Text`) before they are recorded.
    """

    def handler(rows: Rows, envelope: Envelope) -> None:
        data = envelope.get("data")
        if isinstance(data, dict) and _has_nul(data):
            envelope = {**envelope, "data": _without_nul(data)}
        project(rows, envelope)

    return handler


def _has_nul(value: Any) -> bool:
    # Scanning is cheaper than copying, and events with NUL are rare.
    for item in value.values() if isinstance(value, dict) else value:
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                return True
        elif (kind is dict or kind is list) and _has_nul(item):
            return True
    return False


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {key: _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value
