"""How a service's application records: group commit, retries of lost races, idempotency
answers, and its own read models projected in the transaction that records their events.

`Commits` is one part of `concierge.store.ServiceApplication`; it uses the store's reads
(`concierge.reads.StoreReads`) and the library's insert steps (`concierge.library`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    OperationalError,
    Recording,
    Tracking,
)

from concierge import context, green, idempotency, library
from concierge.decoding import stamp
from concierge.idempotency import Answer
from concierge.records import StoredRecord
from concierge.unit import UnitOfWork, UnitRepository

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



class _ProjectionFailed(Exception):
    """Own read models failed inside the commit: the commit is redone without them."""



class Commits:
    """Writing: every path by which events reach the store (`record`, `execute`, `run_unit`),
    and the listeners each commit tells (`on_recorded`)."""

    # Set up by ServiceApplication.__init__ (`init_commits`).
    _listeners: list[Callable[[list[StoredRecord]], None]]
    _save_lock: Any
    _in_commit: tuple[Any, InCommit] | None
    _contended_until: float
    _held: threading.local
    _decoded: threading.local
    recorder: Any
    repository: Any
    mapper: Any
    service_name: str

    def init_commits(self) -> None:
        self._listeners = []
        self._save_lock = threading.RLock()
        self._in_commit = None
        # Until when units lock the events table before they run (`run_unit`).
        self._contended_until = 0.0
        # The transaction `_events_locked` holds in this green thread, if any.
        self._held = threading.local()
        # The records a commit in this green thread decoded for its projection, for `_notify`.
        self._decoded = threading.local()

    def project_in_commit(self, engine: Any, in_commit: InCommit) -> None:
        """On PostgreSQL: record events through `engine` (the read models' database, the same
        one) and project own read models in that transaction (`InCommit`), instead of in a
        second transaction after it. SQLite stores keep the two transactions."""
        if self._postgres_datastore() is not None:
            self._in_commit = (engine, in_commit)

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

    def execute_all(self, commands: Sequence[tuple[Any, Callable[[], tuple[Any, Sequence[Any]]]]]
                    ) -> list[Any]:
        """Several commands, each with its call context, committed together (one transaction
        unless more wait than one holds); each has its own outcome, as if executed alone, and
        the first failure is raised once all are done (notify's mailer records a batch of
        deliveries so)."""
        return self.group_commit.execute_all(commands)

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
            try:
                return super()._record(processing_event)
            except OperationalError as exc:
                # The library's insert pipelines its statements; when another replica wrote
                # the same aggregate version first, psycopg may report the pipeline aborted
                # rather than the unique violation. Nothing was recorded: a lost race, retried.
                if type(exc.__cause__).__name__ == "PipelineAborted":  # psycopg.errors
                    raise IntegrityError(str(exc)) from exc
                raise
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

    def record_position(self, source: str, position: int) -> bool:
        """Record that `source`'s event at `position` needed no change here; False if seen."""
        try:
            self.record(tracking=Tracking(source, position))
        except IntegrityError:
            return False
        return True

    @contextlib.contextmanager
    def serialised(self) -> Iterator[None]:
        """Serialise read-check-write sequences inside one process (optimistic locking still
        protects against other processes)."""
        with self._save_lock:
            yield

