"""Each service's own event store, built on the eventsourcing library.

SQLite file under the data folder by default; with CONCIERGE_DATABASE_URL, the service's own
schema in PostgreSQL. Every store is a *process* recorder so a subscriber can record the position
it has processed in the same transaction as the events it produces.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

import orjson
from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    project_aggregate,
)
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    Notification,
    OperationalError,
    Recording,
    StoredEvent,
    Tracking,
)

from concierge import context, green, idempotency, library
from concierge.config import Settings
from concierge.idempotency import Answer
from concierge.records import META_KEY, StoredRecord, plain
from concierge.unit import GroupCommit, UnitOfWork, UnitRepository

log = logging.getLogger(__name__)

R = TypeVar("R")
# A unit that lost an optimistic-concurrency race to another replica runs again this many
# times in all, after a random pause of up to RETRY_PAUSE_SECONDS times its attempt number.
COMMIT_ATTEMPTS = 10
RETRY_PAUSE_SECONDS = 0.005
# After a lost race, units take the events table's lock before they run for this long.
CONTENDED_SECONDS = 10.0
# Own read models projected inside the transaction that records the events: entered before the
# transaction (it holds what must not move meanwhile), it yields a function that projects the
# just-stored records on the transaction's connection, and it takes effect once that commits.
InCommit = Callable[[], contextlib.AbstractContextManager[Callable[[Any, list["StoredRecord"]],
                                                                   None]]]
# A part of a unit of work: who runs it, and what it does (its result and the aggregates whose
# new events are its effect).
Part = tuple[context.CallContext, Callable[[], tuple[Any, Sequence[Any]]]]


class StampingMapper(Mapper):
    """Adds who/why metadata to each stored event and hides it from the domain on the way back."""

    def to_stored_event(self, domain_event: Any) -> Any:
        attributes = object.__getattribute__(domain_event, "__dict__")
        if META_KEY not in attributes:  # not stamped by a unit of work (`ServiceApplication`)
            attributes[META_KEY] = stamp()
        try:
            return super().to_stored_event(domain_event)
        finally:
            attributes.pop(META_KEY, None)

    def to_domain_event(self, stored_event: Any) -> Any:
        domain_event = super().to_domain_event(stored_event)
        object.__getattribute__(domain_event, "__dict__").pop(META_KEY, None)
        return domain_event

    def decode_state(self, state: bytes) -> dict[str, Any]:
        """The raw attributes of a stored event, metadata included, as JSON-safe values (ids
        and instants as text): what envelopes and history carry."""
        if self.cipher:
            state = self.cipher.decrypt(state)
        if self.compressor:
            state = self.compressor.decompress(state)
        decoder = self.__dict__.get("_plain_decoder")
        if decoder is None:
            decoder = self.__dict__["_plain_decoder"] = PlainDecoder(self.transcoder)
        return decoder.decode(state)


def stamp() -> dict[str, str]:
    """Who and why, for the events recorded now: from the current call context."""
    ctx = context.current()
    return {"actor": ctx.actor, "correlation_id": ctx.correlation_id}


class PlainDecoder:
    """Decodes stored event state straight to JSON-safe values.

    The library's decoder builds a UUID or datetime for every tagged value, which envelopes
    then turn back into text; here the tags become text directly (the same text: a UUID's
    canonical form, the ISO string that was stored), several times faster on rebuilds.

    orjson parses and a walk replaces the tags: twice as fast as the standard decoder's
    per-object hook, which was a quarter of a rebuild. orjson turns an integer beyond 64 bits
    into a float and refuses NaN, so a state holding any float (rare: the domain has none
    today) or anything orjson refuses is decoded again by the standard decoder, exactly.
    """

    def __init__(self, transcoder: Any) -> None:
        self.transcoder = transcoder
        self.decoder = json.JSONDecoder(object_hook=self._tagged)

    def decode(self, state: bytes) -> dict[str, Any]:
        try:
            parsed = orjson.loads(state)
            if type(parsed) is dict:
                return self._walk(parsed)
        except (orjson.JSONDecodeError, _Inexact):
            pass
        return self.decoder.decode(bytes(state).decode("utf8"))

    def _walk(self, node: dict[str, Any] | list[Any]) -> Any:
        """`_tagged` applied bottom-up to every object, as the standard decoder's hook is."""
        for key, value in node.items() if type(node) is dict else enumerate(node):
            kind = type(value)
            if kind is dict or kind is list:
                node[key] = self._walk(value)  # type: ignore[index]
            elif kind is float:
                raise _Inexact
        return self._tagged(node) if type(node) is dict and len(node) == 2 else node

    def _tagged(self, d: dict[str, Any]) -> Any:
        if len(d) != 2 or "_type_" not in d or "_data_" not in d:
            return d
        name, data = d["_type_"], d["_data_"]
        if name == "uuid_hex":
            h = data.lower()
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        if name in ("datetime_iso", "decimal_str"):
            return data
        return plain(self.transcoder.names[name].decode(data))


class _Inexact(Exception):
    """orjson may have read a number differently from the standard decoder."""


# Aggregates are cached and fast-forwarded with the events stored since, so a long stream is not
# replayed from its start on every command (also correct when other replicas write).
CACHE_ENV = {"AGGREGATE_CACHE_MAXSIZE": "5000", "AGGREGATE_CACHE_FASTFORWARD": "y"}


def store_env(service: str, settings: Settings) -> dict[str, str]:
    """The eventsourcing settings of one service's store."""
    return {**CACHE_ENV, **_persistence_env(service, settings)}


def _persistence_env(service: str, settings: Settings) -> dict[str, str]:
    if settings.uses_postgres:
        pg = settings.postgres_parts()
        schema = settings.schema_for(service)
        ensure_postgres_schema(settings, schema)
        return {
            # The library's factory, naming its connections (`application_name`).
            "PERSISTENCE_MODULE": "concierge.pgrecorder:PostgresFactory",
            "CONCIERGE_APPLICATION_NAME": settings.application_name(service),
            "POSTGRES_DBNAME": pg["dbname"],
            "POSTGRES_HOST": pg["host"],
            "POSTGRES_PORT": pg["port"],
            "POSTGRES_USER": pg["user"],
            "POSTGRES_PASSWORD": pg["password"],
            "POSTGRES_SCHEMA": schema,
            # One connection kept; up to CONCIERGE_DB_POOL_SIZE under load, each closed
            # after ten idle minutes (psycopg_pool's max_idle).
            "POSTGRES_POOL_SIZE": "1",
            "POSTGRES_MAX_OVERFLOW": str(settings.db_pool_size - 1),
            # Not POSTGRES_ENABLE_DB_FUNCTIONS: in eventsourcing 9.5.6 that faster path skips the
            # tracking record, so a subscriber would lose its idempotence on PostgreSQL
            # (tests/integration/test_store.py proves tracking is kept).
            "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
            "PROCESS_RECORDER_TOPIC": "concierge.pgrecorder:QuietProcessRecorder",
            "CREATE_TABLE": "y",
        }
    path = settings.service_dir(service) / "events.sqlite3"
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(path),
        "PROCESS_RECORDER_TOPIC": "concierge.sqliterecorder:AnsweringProcessRecorder",
        "CREATE_TABLE": "y",
    }


def ensure_postgres_schema(settings: Settings, schema: str) -> None:
    import psycopg

    pg = settings.postgres_parts()
    with psycopg.connect(
        host=pg["host"],
        port=int(pg["port"]),
        user=pg["user"],
        password=pg["password"] or None,
        dbname=pg["dbname"],
        autocommit=True,
        application_name=settings.application_name("setup"),
    ) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


class _ProjectionFailed(Exception):
    """Own read models failed inside the commit: the commit is redone without them."""


class LogEntry(NamedTuple):
    """One raw entry of the log, as read (a tuple: the library's frozen dataclass costs more
    to build than the rest of a row's reading)."""

    id: int
    originator_id: str
    originator_version: int
    topic: str
    state: bytes


class ServiceApplication(Application):
    """Base of every context's application: tracking-capable store, stamped events, listeners.

    `engine` is the database of the context's read models, given at construction (the chassis
    does, from the context's declaration, `concierge.contexts`); an application built without
    one (a unit test of the domain) has no read side.
    """

    # Reading the log 1000 at a time is 5.6x faster on PostgreSQL than the default 10; rebuilds
    # read 5000 at a time (fewer transactions); callers still choose their own limit.
    log_section_size = 5000
    service_name = "service"

    def __init__(self, env: dict[str, str] | None = None, engine: Any = None) -> None:
        self.engine = engine
        # Brings the context's own read models up to its log now (set by the chassis when it
        # wires the context): a command that reads them right after a write calls it.
        self.catch_up_read_models: Callable[[], None] = lambda: None
        self._listeners: list[Callable[[list[StoredRecord]], None]] = []
        self._save_lock = threading.RLock()
        self.group_commit = GroupCommit(self._commit_waiting)
        self._in_commit: tuple[Any, InCommit] | None = None
        # Until when units lock the events table before they run (`run_unit`).
        self._contended_until = 0.0
        # The transaction `_events_locked` holds in this green thread, if any.
        self._held = threading.local()
        # The records a commit in this green thread decoded for its projection, for `_notify`.
        self._decoded = threading.local()
        super().__init__(env=env)

    def project_in_commit(self, engine: Any, in_commit: InCommit) -> None:
        """On PostgreSQL: record events through `engine` (the read models' database, the same
        one) and project own read models in that transaction (`InCommit`), instead of in a
        second transaction after it. SQLite stores keep the two transactions."""
        if self._postgres_datastore() is not None:
            self._in_commit = (engine, in_commit)

    def construct_repository(self) -> Any:
        return UnitRepository(super().construct_repository())

    def construct_mapper(self) -> Mapper:
        return self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=StampingMapper
        )

    def construct_recorder(self) -> Any:
        return self.factory.process_recorder()

    # -- writing ---------------------------------------------------------------------------
    def record(self, *objs: Any, tracking: Tracking | None = None) -> list[int]:
        """Save aggregates' pending events (and a tracking position) in one transaction."""
        processing_event = ProcessingEvent(tracking=tracking)
        processing_event.collect_events(*objs)
        recordings = self._record(processing_event)
        self._notify(recordings)
        return [r.notification.id for r in recordings]

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        recordings = super().save(*objs, **kwargs)
        return recordings

    def execute(self, command: Callable[[], tuple[R, Sequence[Any]]]) -> R:
        """Run a command (it returns its result and the aggregates it changed) and record its
        events. Commands that arrive while another commits are committed together next, in
        one transaction (`concierge.unit.GroupCommit`); each caller gets its own outcome."""
        return self.group_commit.execute(command)

    def _commit_waiting(self, batch: list[Any]) -> None:
        failure: Exception | None = None
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                with self.serialised():
                    results = self.run_unit([(w.ctx, w.command) for w in batch])
            except IntegrityError as exc:
                # Another replica wrote one of these aggregates first. The unit recorded
                # nothing; run it again against the aggregates as that replica left them
                # (the repository fast-forwards them), so only a real conflict, which the
                # domain then refuses by name, reaches a caller.
                failure = exc
                self._contended_until = time.monotonic() + CONTENDED_SECONDS
                green.sleep(random.uniform(0, RETRY_PAUSE_SECONDS * (attempt + 1)))
                continue
            except Exception as exc:
                failure = exc
                break
            for waiting, result in zip(batch, results, strict=True):
                waiting.succeed(result)
            return
        assert failure is not None
        if len(batch) == 1:
            batch[0].fail(failure)
            return
        for waiting in batch:  # each alone: its own outcome, nothing of a failed one kept
            self._commit_waiting([waiting])

    def run_unit(self, parts: Sequence[Part], tracking: Tracking | None = None,
                 lookups: Sequence[UUID] = ()) -> list[Any]:
        """See `_run_unit`. While this service loses races to another replica (a conflict in
        the last CONTENDED_SECONDS), the unit takes the events table's lock before its parts
        run, so it cannot lose again: on a hot aggregate (one building's apartments) two
        replicas otherwise threw away a third of their commits."""
        if self._in_commit is None or time.monotonic() >= self._contended_until:
            return self._run_unit(parts, tracking, lookups, self._notify)
        recorded: list[Any] = []
        try:
            with self._events_locked():
                results = self._run_unit(parts, tracking, lookups, recorded.append)
        except _ProjectionFailed:
            # Nothing was kept; without the lock the commit falls back as it always has.
            return self._run_unit(parts, tracking, lookups, self._notify)
        for recordings in recorded:  # after the commit: the relay must not see them before
            self._notify(recordings)
        return results

    @contextlib.contextmanager
    def _events_locked(self) -> Iterator[None]:
        """A transaction that holds the events table's lock (the one every insert takes) from
        before the unit's parts load their aggregates until its commit; `_record_and_project`
        records in it. The own models' in-process locks come first, as in every commit."""
        assert self._in_commit is not None
        engine, in_commit = self._in_commit
        recorder: Any = self.recorder
        with in_commit() as project, engine.begin() as conn:
            with conn.connection.driver_connection.cursor() as curs:
                library.lock_events_table(recorder, curs)
            self._held.commit = (project, conn)
            try:
                yield
            finally:
                self._held.commit = None
        self._decoded.records = getattr(self._decoded, "projected", None)

    def _run_unit(self, parts: Sequence[Part], tracking: Tracking | None,
                  lookups: Sequence[UUID],
                  notify: Callable[[Sequence[Any]], None]) -> list[Any]:
        """Run `parts` in order against one set of in-memory aggregates and record all their
        events (and `tracking`) in one transaction; their results, in order. `lookups`: ids
        the parts will ask for, checked in one query first (those without events then cost
        the parts no query each).

        Raises the first failure, with nothing recorded: the caller runs the parts again one
        by one. Callers hold `serialised()`.
        """
        unit = UnitOfWork(absent=self.absent_streams(lookups))
        repository: UnitRepository = self.repository  # type: ignore[assignment]
        repository.unit = unit
        results = []
        try:
            for ctx, part in parts:
                with context.acting(ctx):
                    results.append(self._run_part(unit, ctx, part))
        finally:
            repository.unit = None
        if unit.events or tracking is not None or unit.answers:
            processing_event = ProcessingEvent(tracking=tracking)
            processing_event.events.extend(unit.events)
            processing_event.aggregates.update(unit.aggregates)
            if unit.answers:
                processing_event.saved_kwargs["answers"] = unit.answers
            notify(self._record(processing_event))
        return results

    def _run_part(self, unit: UnitOfWork, ctx: context.CallContext,
                  part: Callable[[], tuple[Any, Sequence[Any]]]) -> Any:
        """One part of a unit: not run once its caller has stopped waiting, answered from
        store when its idempotency key was answered before, else run and its events staged."""
        if ctx.expired():
            raise context.Expired(f"{ctx.correlation_id}: the caller stopped waiting before "
                                  "the command ran; nothing was recorded")
        key = self._answer_key(ctx)
        if key is not None:
            answer = self._answered(unit, key, ctx.request_digest or "")
            if answer is not None:
                return answer.result
        result, aggregates = part()
        unit.stage(aggregates, stamp())
        if key is not None:
            unit.answers.append(Answer(key, ctx.request_digest or "", result, time.time()))
        return result

    def _answer_key(self, ctx: context.CallContext) -> str | None:
        if ctx.idempotency_key is None or not hasattr(self.recorder, "select_answer"):
            return None
        return idempotency.key_for(ctx.account_id or ctx.actor, ctx.idempotency_key)

    def _answered(self, unit: UnitOfWork, key: str, request: str) -> Answer | None:
        """The fresh answer kept under `key` (by an earlier part of this unit, or in store);
        KeyReused when it answered another request."""
        found = next((a for a in reversed(unit.answers) if a.key == key), None)
        if found is None:
            found = self.recorder.select_answer(key)
        if found is None or not found.fresh():
            return None
        if found.request != request:
            raise idempotency.KeyReused()
        return found

    def _record(self, processing_event: ProcessingEvent[Any]) -> list[Recording[Any]]:
        if self._in_commit is None or not processing_event.events:
            return super()._record(processing_event)
        try:
            recordings = self._record_and_project(processing_event)
        except _ProjectionFailed:
            if getattr(self._held, "commit", None) is not None:
                raise  # the library's insert would wait for our own lock: `run_unit` redoes it
            log.exception("%s: own read models not projected with the commit; projecting "
                          "after it", self.service_name)
            return super()._record(processing_event)
        if self.repository.cache and not self.repository.fastforward:
            for aggregate_id, aggregate in processing_event.aggregates.items():
                self.repository.cache.put(aggregate_id, aggregate)
        return recordings

    def _record_and_project(self, processing_event: ProcessingEvent[Any]
                            ) -> list[Recording[Any]]:
        """The library's insert (tracking, table lock, events), on a read-model connection,
        then the own read models' projection, then one commit."""
        assert self._in_commit is not None
        held = getattr(self._held, "commit", None)
        if held is not None:  # inside `_events_locked`: its transaction commits later
            project, conn = held
            return self._insert_and_project(conn, project, processing_event)
        engine, in_commit = self._in_commit
        with in_commit() as project, engine.begin() as conn:
            recordings = self._insert_and_project(conn, project, processing_event)
        self._decoded.records = self._decoded.projected
        return recordings

    def _insert_and_project(self, conn: Any, project: Callable[[Any, list[StoredRecord]], None],
                            processing_event: ProcessingEvent[Any]) -> list[Recording[Any]]:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg.types.composite import register_composite

        recorder: Any = self.recorder
        events = processing_event.events
        stored = [self.mapper.to_stored_event(e) for e in events]
        raw = conn.connection.driver_connection
        for info in recorder.datastore.psycopg_type_adapters.values():
            if not raw.adapters.types.get(info.oid):
                register_composite(info, raw)
        # Pipelined, as the library's own insert is: the tracking row, the table lock and
        # the events go out together instead of a round trip each.
        failure: Exception | None = None
        ids: Any = None
        try:
            with raw.pipeline() as pipeline:
                with raw.cursor(row_factory=dict_row) as curs:
                    library.insert_tracking(recorder, curs, stored,
                                            tracking=processing_event.tracking,
                                            **processing_event.saved_kwargs)
                with raw.cursor(row_factory=dict_row) as curs:
                    try:
                        library.insert_stored_events(recorder, curs, stored)
                        pipeline.sync()  # a conflict is raised here, not at the commit
                        ids = library.fetch_inserted_ids(recorder, curs, stored)
                    except Exception as exc:  # re-raised once the pipeline has ended
                        failure = exc
        except Exception as exc:  # the tracking row refused, or the pipeline's own end
            failure = failure or exc
        if isinstance(failure, psycopg.IntegrityError):
            raise IntegrityError(str(failure)) from failure
        if isinstance(failure, psycopg.OperationalError | psycopg.InterfaceError):
            conn.invalidate()
            raise OperationalError(str(failure)) from failure
        if failure is not None:
            raise failure
        recordings = [
            Recording(event, Notification(id=nid, originator_id=s.originator_id,
                                          originator_version=s.originator_version,
                                          topic=s.topic, state=s.state))
            for event, s, nid in zip(events, stored, ids, strict=True)
        ]
        # Projections read the events, never the write model (which still holds what the
        # store held before this commit).
        records = [self.decode(r.notification) for r in recordings]
        try:
            project(conn, records)
        except Exception as exc:
            raise _ProjectionFailed from exc
        self._decoded.projected = records
        return recordings

    def _notify(self, recordings: Sequence[Any]) -> None:
        if not recordings or not self._listeners:
            return
        decoded, self._decoded.records = getattr(self._decoded, "records", None), None
        if decoded is None or [r.position for r in decoded] != [r.notification.id
                                                                for r in recordings]:
            decoded = [self.decode(r.notification) for r in recordings]
        records = sorted(decoded, key=lambda record: record.position)
        for listener in list(self._listeners):
            listener(records)

    def on_recorded(self, listener: Callable[[list[StoredRecord]], None]) -> None:
        """Call `listener(records)` with what each commit stored, oldest first (it wakes the
        relay and brings own read models up to date)."""
        self._listeners.append(listener)

    # -- tracking --------------------------------------------------------------------------
    def tracked_position(self, source: str) -> int:
        return self.recorder.max_tracking_id(source) or 0

    def record_position(self, source: str, position: int) -> bool:
        """Record that `source`'s event at `position` needed no change here; False if seen."""
        try:
            self.record(tracking=Tracking(source, position))
        except IntegrityError:
            return False
        return True

    # -- reading ---------------------------------------------------------------------------
    def store_id(self) -> str | None:
        """This incarnation of the store: a digest of its first event (its stream, version and
        time), so a wiped and recreated store gets a new one. None while the log is empty."""
        known = self.__dict__.get("_store_id")
        if known is not None:
            return known
        first = self.read_notifications(0, 1)
        if not first:
            return None
        state = self.mapper.decode_state(first[0].state)
        identity = f"{first[0].id}:{first[0].originator_id}:{first[0].originator_version}:"
        identity += str(state.get("timestamp"))
        self.__dict__["_store_id"] = hashlib.sha256(identity.encode()).hexdigest()[:32]
        return self.__dict__["_store_id"]

    def absent_streams(self, ids: Sequence[UUID]) -> set[UUID]:
        """Which of `ids` have no events, in one query (PostgreSQL; elsewhere none is known,
        and each lookup asks the store itself)."""
        if not ids:
            return set()
        rows = self._postgres_rows(
            "exists", "SELECT DISTINCT originator_id FROM {events} WHERE originator_id = ANY(%s)",
            (list(ids),))
        if rows is None:
            return set()
        return set(ids) - {UUID(str(row[0])) for row in rows}

    def get_many(self, ids: Sequence[UUID]) -> dict[UUID, Any]:
        """The aggregates with these ids, as stored now, reconstructed from one query on
        PostgreSQL (one query each elsewhere); ids without events are left out.

        For a pass over many aggregates at once (the mailer's due emails): the repository asks
        once per aggregate. These are fresh objects, not the repository's cached ones.
        """
        if not ids:
            return {}
        rows = self._postgres_rows(
            "many", "SELECT originator_id, originator_version, topic, state FROM {events} "
            "WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version",
            (list(ids),))
        if rows is None:
            found = {}
            for aggregate_id in ids:
                with contextlib.suppress(AggregateNotFoundError):
                    found[aggregate_id] = self.repository.get(aggregate_id)
            return found
        events: dict[UUID, list[Any]] = {}
        for row in rows:
            stored = StoredEvent(originator_id=row[0], originator_version=row[1], topic=row[2],
                                 state=_bytes(row[3]))
            events.setdefault(UUID(str(row[0])), []).append(self.mapper.to_domain_event(stored))
        found = {}
        for aggregate_id, stream in events.items():
            aggregate = project_aggregate(None, stream)
            if aggregate is not None:
                found[aggregate_id] = aggregate
        return found

    def load_related(self, item_id: UUID | None, *attributes: str) -> None:
        """Say, before loading `item_id`, that the aggregates it names in `attributes` (ids
        set for good: an apartment's building and community) are loaded with it: when it is
        cached, they are all brought up to date in one query (`load_together`) instead of
        one each. Nothing happens otherwise; the loads that follow find what they find."""
        if item_id is None:
            return
        repository: UnitRepository = self.repository  # type: ignore[assignment]
        item = repository.cached(item_id)
        if item is not None:
            named = (getattr(item, name, None) for name in attributes)
            self.load_together([item_id, *(i for i in named if isinstance(i, UUID))])

    def load_together(self, ids: Sequence[UUID]) -> None:
        """Bring the cached aggregates among `ids` up to date with one query, into the current
        unit of work, where the repository would ask once for each (a command on an apartment
        needs its building and community: one round trip instead of two or three).

        What the repository does for each, done for all at once: under each one's fast-forward
        lock, the events past its cached version are applied to the cached object, and the unit
        gets a copy. Ids not cached, already in the unit, or asked outside a unit (or off
        PostgreSQL) are left to the repository's own `get`.
        """
        repository: UnitRepository = self.repository  # type: ignore[assignment]
        unit, inner = repository.unit, repository.inner
        if (unit is None or not inner.cache or not inner.fastforward
                or self._postgres_datastore() is None):
            return
        cached: dict[UUID, Any] = {}
        for aggregate_id in sorted(set(ids), key=str):  # one lock order for every caller
            if aggregate_id not in unit.aggregates:
                with contextlib.suppress(KeyError):
                    cached[aggregate_id] = inner.cache.get(aggregate_id)
        if len(cached) < 2:  # one query either way
            return
        with contextlib.ExitStack() as held:
            for aggregate_id in cached:  # the repository's own locks, in one order
                held.enter_context(library.fastforward_locked(inner, aggregate_id))
            rows = self._postgres_rows(
                "newer", "SELECT e.originator_id, e.originator_version, e.topic, e.state "
                "FROM {events} e JOIN unnest(%s::uuid[], %s::int8[]) AS c(id, version) "
                "ON e.originator_id = c.id AND e.originator_version > c.version "
                "ORDER BY e.originator_id, e.originator_version",
                (list(cached), [a.version for a in cached.values()]))
            newer: dict[UUID, list[Any]] = {}
            for row in rows or ():
                stored = StoredEvent(originator_id=row[0], originator_version=row[1],
                                     topic=row[2], state=_bytes(row[3]))
                newer.setdefault(UUID(str(row[0])), []).append(
                    self.mapper.to_domain_event(stored))
            for aggregate_id, aggregate in cached.items():
                if aggregate_id in newer:
                    aggregate = project_aggregate(aggregate, newer[aggregate_id])
                if aggregate is not None:  # else the repository's own get says not found
                    unit.aggregates[aggregate_id] = (copy.deepcopy(aggregate)
                                                     if inner.deepcopy_from_cache else aggregate)

    def max_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    def read(self, after: int = 0, limit: int = 1000) -> list[StoredRecord]:
        """Decoded log entries after `after`, oldest first."""
        return [self.decode(n) for n in self.read_notifications(after, limit)]

    def read_notifications(self, after: int = 0, limit: int = 1000) -> list[LogEntry]:
        """Raw log entries after `after`: callers decode only those they need."""
        limit = max(1, min(limit, self.log_section_size))
        # The library's query, with plain tuple rows in binary (its dict rows, state copies,
        # hex-encoded states and UUID objects were a fifth of a rebuild's time).
        rows = self._postgres_rows(
            "read", "SELECT notification_id, originator_id::text, originator_version, topic, "
            "state FROM {events} WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
            (after, limit), binary=True)
        if rows is not None:
            return list(map(LogEntry._make, rows))
        return [LogEntry(n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
                for n in self.recorder.select_notifications(start=after, limit=limit,
                                                            inclusive_of_start=False)]

    def _postgres_datastore(self) -> Any:
        """The library's PostgreSQL datastore of this store, or None on any other store."""
        datastore = getattr(self.recorder, "datastore", None)
        return datastore if hasattr(datastore, "schema") else None

    def _postgres_rows(self, name: str, query: str, params: tuple[Any, ...],
                       binary: bool = False) -> list[tuple[Any, ...]] | None:
        """Tuple rows of a query over the library's events table, `{events}` in `query`
        (eventsourcing 9.5 layout), composed once per `name`; None when the store is not on
        PostgreSQL."""
        datastore = self._postgres_datastore()
        if datastore is None:
            return None
        from psycopg import sql
        from psycopg.rows import tuple_row

        statements = self.__dict__.setdefault("_pg_statements", {})
        statement = statements.get(name)
        if statement is None:
            statement = statements[name] = sql.SQL(query).format(  # type: ignore[arg-type]
                events=sql.Identifier(datastore.schema, self.recorder.events_table_name))
        with datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(statement, params, prepare=True, binary=binary)
            return curs.fetchall()

    def iter_log(self, after: int = 0, batch: int = 1000) -> Iterator[StoredRecord]:
        while True:
            records = self.read(after, batch)
            if not records:
                return
            yield from records
            after = records[-1].position

    def stream(self, stream_id: UUID | str, after: int = 0,
               limit: int | None = None) -> list[StoredRecord]:
        """One aggregate's events, oldest first, decoded with their metadata; `after` and
        `limit` read only the versions past `after`, at most `limit` of them."""
        stored = self.recorder.select_events(UUID(str(stream_id)), gt=after or None,
                                             limit=limit)
        return [
            StoredRecord(0, str(s.originator_id), s.originator_version, s.topic,
                         self.mapper.decode_state(s.state))
            for s in stored
        ]

    def decode(self, notification: LogEntry | Notification) -> StoredRecord:
        return StoredRecord(
            position=notification.id,
            stream_id=str(notification.originator_id),
            stream_version=notification.originator_version,
            topic=notification.topic,
            state=self.mapper.decode_state(notification.state),
        )

    @contextlib.contextmanager
    def serialised(self) -> Iterator[None]:
        """Serialise read-check-write sequences inside one process (optimistic locking still
        protects against other processes)."""
        with self._save_lock:
            yield


def _bytes(value: Any) -> bytes:
    """A bytea column as bytes (psycopg may give a memoryview)."""
    return value if type(value) is bytes else bytes(value)
