"""Rebuilding read models while their service serves them.

The models are rebuilt from the source logs into new tables: a schema of their own on
PostgreSQL (`<service schema>__rebuild`), a SQLite file of their own otherwise, each with the
chassis tables, so the projection handlers write there unchanged. The live tables go on serving
reads and taking the service's writes meanwhile. Then one transaction, holding the models' write
locks (the advisory locks the service's projections take on PostgreSQL, the database's write
lock on SQLite), puts the new tables in place of the old ones with their positions and brings
them up to the end of the logs: a reader sees the whole old model or the whole new one. A
failed or interrupted rebuild leaves the live model as it was; its new tables are dropped then,
or by the next rebuild.

Positions only move forward in that transaction (checked before it commits). The live
service's cached positions (`Subscription.position`) can then only lag behind the stored ones;
every path that applies events reads the stored position again under the same locks and skips
what is applied already, so a lagging cache costs at most one read of the log.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from sqlalchemy import bindparam, delete, select, text
from sqlalchemy.engine import Connection, Engine

from concierge import green, heap
from concierge.database import projection_tracking, read_model_versions, service_engine
from concierge.locks import leader_lock
from concierge.projection import ReadModel, advisory_key, lock_namespace
from concierge.statistics import analyse
from concierge.subscription import (
    Envelope,
    LogReader,
    ProjectionHandler,
    Subscription,
    models_locked,
    projection_handlers,
)

if TYPE_CHECKING:
    from concierge.runtime import Wiring

REBUILD_SECTION = 5000
SHADOW_SUFFIX = "__rebuild"
# How long one try at the swap's locks waits before it says who holds them and tries again.
LOCK_WAIT_SECONDS = 2.0
# Catch-up rounds after the first pass, so the swap's own catch-up, under the locks, is short.
CONVERGE_ROUNDS = 5
SETTLED = 500
# One try at the live tables' locks, kept well below PostgreSQL's deadlock_timeout (1 s).
TABLE_TRY_MS = 100
REMOTE_END_EVERY_SECONDS = 2.0


class SourceUnavailable(RuntimeError):
    """A rebuild could not read another service's log (it is not running, or not answering).

    Nothing is swapped in: the live read models stay as they were and go on serving and
    catching up; the new tables are dropped.
    """

    def __init__(self, service: str, source: str, after: int, cause: BaseException) -> None:
        self.source = source
        super().__init__(
            f"could not read the log of {source} after position {after} "
            f"({type(cause).__name__}: {cause}). Is the {source} service running? Nothing was "
            f"swapped in: the read models of {service} are as they were and go on serving; "
            f"run the rebuild again once {source} answers.")


class RebuildRefused(RuntimeError):
    """The rebuilt models would stand behind the live ones: swapping them in could make the
    running service skip events, so nothing is swapped in."""


class Interrupted(RuntimeError):
    """Ctrl+C or SIGTERM during a rebuild."""

    def __init__(self, service: str, swapped: bool) -> None:
        self.swapped = swapped
        super().__init__(
            f"interrupted after the new read models of {service} were swapped in" if swapped
            else f"interrupted: nothing was swapped in, the read models of {service} are as "
                 f"they were (the partly built ones are dropped now or by the next rebuild)")


# --- progress --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where a rebuild stands: events read so far out of the logs' ends (None when a source
    cannot tell its end), and over how many seconds."""

    done: int
    total: int | None
    seconds: float
    source: str
    final: bool = False

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate

    def line(self) -> str:
        total = f"/{self.total:,}" if self.total is not None else ""
        share = f" ({100 * min(self.done, self.total) // self.total}%)" if self.total else ""
        left = self.seconds_left
        ending = f", about {_duration(left)} left" if left is not None else ""
        return (f"{self.done:,}{total} events{share}, {self.rate:,.0f} events/s{ending} "
                f"(reading {self.source})")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


class Observer(Protocol):
    def progress(self, status: Progress) -> None: ...
    def notice(self, message: str) -> None: ...


class ProgressPrinter:
    """A rebuild's progress on a stream: one line rewritten in place on a terminal, a plain
    line every few seconds otherwise (a log file, a CI job). Notices get lines of their own."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = 0.2 if self.tty else 2.0
        self._shown = 0.0
        self._open = False  # a rewritten line is on screen, without its newline yet
        self._last: tuple[int, str] | None = None

    def progress(self, status: Progress) -> None:
        now = time.monotonic()
        if not status.final and now - self._shown < self.every:
            return
        if (status.done, status.source) == self._last:
            return  # a source's last section, said already
        self._shown, self._last = now, (status.done, status.source)
        if self.tty:
            self.stream.write("\r\033[K  " + status.line())
            self._open = True
        else:
            self.stream.write("  " + status.line() + "\n")
        self.stream.flush()

    def notice(self, message: str) -> None:
        self.close()
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


# --- the rebuild -----------------------------------------------------------------------------


def rebuild(wiring: Wiring, progress: Observer | None = None,
            only: set[str] | None = None) -> int:
    """Rebuild the service's read models (or those named in `only`) from the source logs into
    new tables and swap them in while the service serves; return how many events were read."""
    job = _Rebuild(wiring, progress, only)
    try:
        with heap.collecting_less():
            return job.run()
    except KeyboardInterrupt:
        raise Interrupted(wiring.service, job.swapped) from None


class TogetherHandler:
    """Several read models fed from one read of a source's log, each section in one
    transaction (a rebuild reads and decodes each event once, not once per model)."""

    def __init__(self, handlers: list[ProjectionHandler],
                 on_section: Callable[[int], None] | None = None) -> None:
        self.handlers = handlers
        self.names = [h.name for h in handlers]
        self.name = "+".join(self.names)
        self.on_section = on_section
        self._interest: dict[str, bool] = {}

    def interested(self, event_type: str) -> bool:
        # Asked once per event of a rebuild: remember each type's answer.
        answer = self._interest.get(event_type)
        if answer is None:
            answer = self._interest[event_type] = any(h.interested(event_type)
                                                      for h in self.handlers)
        return answer

    def tracked(self, source: str) -> int:
        return min(h.tracked(source) for h in self.handlers)

    def apply(self, envelope: Envelope) -> bool:
        return self.apply_batch([envelope]) > 0

    def apply_batch(self, envelopes: list[Envelope], conn: Any = None) -> int:
        if conn is not None:
            applied = sum(h.apply_batch(envelopes, conn=conn) for h in self.handlers)
        else:
            with self.handlers[0].engine.begin() as own:
                applied = sum(h.apply_batch(envelopes, conn=own) for h in self.handlers)
        if self.on_section is not None and envelopes:
            self.on_section(int(envelopes[-1]["position"]))
        return applied


def _explaining(read: LogReader, service: str) -> LogReader:
    """A log reader whose failures say which source could not be read (only reading errors:
    a projection's own error must not pass for an unreachable service)."""

    def read_or_explain(source: str, after: int, limit: int) -> list[Envelope]:
        try:
            return read(source, after, limit)
        except Exception as exc:
            raise SourceUnavailable(service, source, after, exc) from exc

    return read_or_explain


@dataclass
class _Feed:
    """One source's part of a rebuild: the new tables' handlers, the live ones (the swap's
    catch-up), how its log is read and where it ends."""

    source: str
    local: bool
    build: TogetherHandler
    live: TogetherHandler
    reader: LogReader
    end: Callable[[], int] | None
    sub: Subscription = field(init=False)
    batch: int = Subscription.default_batch_size

    def __post_init__(self) -> None:
        self.sub = Subscription(self.source, self.build, self.reader, self.batch)


class _Busy(Exception):
    """The swap could not take its locks in time; it is tried again."""


class _Shadow:
    """The new tables: a schema (PostgreSQL) or a SQLite file of their own, with the chassis
    tables, named as a service `<service>__rebuild` would be. Anything left by an earlier
    rebuild that did not finish is dropped first."""

    def __init__(self, wiring: Wiring, models: list[ReadModel]) -> None:
        self.settings = wiring.settings
        self.service = f"{wiring.service}{SHADOW_SUFFIX}"
        self.live_engine = wiring.engine
        self.postgres = self.settings.uses_postgres
        self._deferred: list[str] = []  # index definitions built after the replay
        self.engine: Engine | None = None
        self.clear()
        self.engine = service_engine(self.service, self.settings)
        with self.engine.begin() as conn:
            for model in models:
                model.metadata.create_all(conn)
                conn.execute(read_model_versions.insert().values(name=model.name,
                                                                 version=model.version))

    @property
    def schema(self) -> str:
        return self.settings.schema_for(self.service)

    def defer_indexes(self, models: list[ReadModel]) -> None:
        """PostgreSQL: drop the new tables' secondary indexes, keeping their definitions, so
        the replay writes rows without maintaining them; `build_indexes` then builds each in
        one pass over the full table (a trigram index, several times faster). The indexes of
        keys and constraints stay: the replay's upserts and lookups use them."""
        if not self.postgres:
            return
        assert self.engine is not None
        tables = [t.name for m in models for t in m.metadata.sorted_tables]
        with self.engine.begin() as conn:
            found = conn.execute(text(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i "
                "JOIN pg_class x ON x.relname = i.indexname "
                "JOIN pg_namespace n ON n.oid = x.relnamespace AND n.nspname = i.schemaname "
                "WHERE i.schemaname = current_schema() AND i.tablename = ANY(:tables) "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.oid) "
                "ORDER BY i.indexname"), {"tables": tables}).tuples().all()
            for name, definition in found:
                conn.exec_driver_sql(f"DROP INDEX {_quote(name)}")
                self._deferred.append(definition)

    def build_indexes(self) -> None:
        if not self._deferred:
            return
        assert self.engine is not None
        with self.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
            for definition in self._deferred:
                conn.exec_driver_sql(definition)
        self._deferred = []

    def analyse(self, models: list[ReadModel]) -> None:
        """Statistics for the new tables before they serve (`concierge.statistics`): the
        live ones' go with the tables they describe."""
        assert self.engine is not None
        with self.engine.begin() as conn:
            analyse(conn, [t.name for m in models for t in m.metadata.sorted_tables])

    @property
    def where(self) -> str:
        if self.postgres:
            return f"schema {self.schema}"
        assert self.engine is not None
        return str(self.engine.url.database)

    def clear(self) -> None:
        if self.postgres:
            with self.live_engine.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {_quote(self.schema)} CASCADE")
        else:
            shutil.rmtree(self.settings.service_dir(self.service), ignore_errors=True)

    def drop(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        with contextlib.suppress(Exception):  # the next rebuild drops what is left
            self.clear()


class _Rebuild:
    def __init__(self, wiring: Wiring, observer: Observer | None,
                 only: set[str] | None) -> None:
        known = {m.name for m in wiring.read_models}
        unknown = sorted(set(only or ()) - known)
        if unknown:
            raise ValueError(f"{wiring.service} has no read model {', '.join(unknown)}; its "
                             f"read models: {', '.join(sorted(known))}")
        self.wiring = wiring
        self.service = wiring.service
        # A model with nothing to show (a shredder of keys) has nothing to rebuild.
        self.models = [m for m in wiring.read_models if (only is None or m.name in only)
                       and m.metadata.sorted_tables]
        # By name: the order in which every writer locks several models (`models_locked`,
        # the advisory keys of `concierge.subscription._Together`).
        self.names = sorted(m.name for m in self.models)
        self.observer = observer
        self.events = 0
        self.swapped = False
        self.started = time.monotonic()
        self.reached: dict[str, int] = {}
        self.ends: dict[str, int | None] = {}
        self._asked: dict[str, float] = {}

    # -- the whole run -------------------------------------------------------------------------
    def run(self) -> int:
        if not self.models:
            return 0

        lock = leader_lock(self.service, self.wiring.settings, self.wiring.engine, "rebuild")
        self._take(lock)
        try:
            shadow = _Shadow(self.wiring, self.models)
            try:
                feeds = self._feeds(shadow)
                shadow.defer_indexes(self.models)
                self._build(feeds, shadow)
                shadow.build_indexes()
                shadow.analyse(self.models)
                self._swap(shadow, feeds)
            finally:
                shadow.drop()
        finally:
            lock.release()
        # A service in this process reads its positions again (they moved forward).
        for subs in [self.wiring.local, *self.wiring.subscriptions.values()]:
            for sub in subs:
                if getattr(sub.handler, "name", None) in self.names:
                    sub.forget_position()
        return self.events

    def _take(self, lock: Any) -> None:
        """One rebuild of a service at a time: the second waits, and says so."""
        if lock.acquire():
            return
        waited = time.monotonic()
        self._notice(f"another rebuild of {self.service} is running; waiting for it to end")
        told = waited
        while not lock.acquire():
            green.sleep(0.5)
            if time.monotonic() - told >= 30:
                told = time.monotonic()
                self._notice(f"still waiting for the other rebuild of {self.service} "
                             f"({_duration(told - waited)})")

    def _feeds(self, shadow: _Shadow) -> list[_Feed]:
        built: dict[str, list[ProjectionHandler]] = {}
        live: dict[str, list[ProjectionHandler]] = {}
        assert shadow.engine is not None
        for model in self.models:
            live_handlers = projection_handlers(model, self.wiring.engine, own=self.service)
            for source, handler in projection_handlers(model, shadow.engine, exclusive=True,
                                                       own=self.service).items():
                built.setdefault(source, []).append(handler)
                live.setdefault(source, []).append(live_handlers[source])
        feeds = []
        # The service's own log first, then the others', as the service itself catches up.
        for source in sorted(built, key=lambda s: s != self.service):
            together = TogetherHandler(built[source],
                                       on_section=lambda last, s=source: self._reached(s, last))
            if source == self.service:
                feeds.append(_Feed(source, True, together, TogetherHandler(live[source]),
                                   self.wiring.local_reader(together),
                                   self.wiring.app.max_position, REBUILD_SECTION))
                continue
            remote = self.wiring.subscriptions[source][0].read_log
            asking = getattr(remote, "last_position", None)
            end = (lambda ask=asking, s=source: ask(s)) if asking is not None else None
            feeds.append(_Feed(source, False, together, TogetherHandler(live[source]),
                               _explaining(remote, self.service), end))
        return feeds

    # -- building the new tables ---------------------------------------------------------------
    def _build(self, feeds: list[_Feed], shadow: _Shadow) -> None:
        for feed in feeds:
            self.reached[feed.source] = 0
            self.ends[feed.source] = self._first_end(feed)
        if self.observer is not None:
            ends = ", ".join(f"{f.source} at {self.ends[f.source]:,}"
                             if self.ends[f.source] is not None else f"{f.source} (end unknown)"
                             for f in feeds)
            self._notice(f"rebuilding {', '.join(self.names)} of {self.service} into new tables "
                         f"({shadow.where}) while the live ones serve; logs end: {ends}")
        for feed in feeds:
            self.events += feed.sub.catch_up()
            self._report(feed.source, final=True)
        # The logs moved on meanwhile: catch up until little is left for the swap to do
        # under the locks, where the service's writers wait.
        for _ in range(CONVERGE_ROUNDS):
            caught = sum(feed.sub.catch_up() for feed in feeds)
            self.events += caught
            if caught <= SETTLED:
                break

    def _first_end(self, feed: _Feed) -> int | None:
        if feed.end is None:
            return None
        try:
            return feed.end()
        except Exception as exc:
            if type(exc).__name__ == "MethodNotFound":  # a source from before `last_position`
                return None
            raise SourceUnavailable(self.service, feed.source, 0, exc) from exc

    def _reached(self, source: str, position: int) -> None:
        self.reached[source] = position
        if self.observer is None:
            return
        feed_end = self.ends.get(source)
        now = time.monotonic()
        if feed_end is not None and now - self._asked.get(source, 0.0) >= (
                0 if source == self.service else REMOTE_END_EVERY_SECONDS):
            self._asked[source] = now
            with contextlib.suppress(Exception):  # a progress figure is not worth failing
                self.ends[source] = (self.wiring.app.max_position() if source == self.service
                                     else self._remote_end(source))
        self._report(source)

    def _remote_end(self, source: str) -> int | None:
        remote = self.wiring.subscriptions[source][0].read_log
        return remote.last_position(source)  # type: ignore[attr-defined]

    def _report(self, source: str, final: bool = False) -> None:
        if self.observer is None:
            return
        done = sum(self.reached.values())
        ends = list(self.ends.items())
        total = (None if any(end is None for _, end in ends)
                 else sum(max(end or 0, self.reached.get(s, 0)) for s, end in ends))
        self.observer.progress(Progress(done, total, time.monotonic() - self.started, source,
                                        final))

    def _notice(self, message: str) -> None:
        if self.observer is not None:
            self.observer.notice(message)

    # -- the swap ------------------------------------------------------------------------------
    def _swap(self, shadow: _Shadow, feeds: list[_Feed]) -> None:
        self._notice(f"swapping the new tables in (locking {', '.join(self.names)})")
        while True:
            try:
                self.events += self._swap_once(shadow, feeds)
                return
            except _Busy as busy:
                self._notice(f"waiting: {busy}; trying again")
                green.sleep(0.2)

    def _swap_once(self, shadow: _Shadow, feeds: list[_Feed]) -> int:
        """One transaction: the models' locks, the new tables in place of the old ones with
        their positions, the events committed since the last section, a check that no
        position moved back. Raises `_Busy` when a lock is not had in time."""
        engine = self.wiring.engine
        postgres = engine.dialect.name == "postgresql"
        with contextlib.ExitStack() as held:
            # Before any PostgreSQL lock, as every writer (a service in this process, as in
            # tests, would otherwise wait here while holding what the swap waits for).
            held.enter_context(models_locked(h for feed in feeds for h in feed.live.handlers))
            conn = held.enter_context(engine.connect())
            if not postgres:
                assert shadow.engine is not None
                conn.exec_driver_sql("ATTACH DATABASE ? AS rebuild",
                                     (str(shadow.engine.url.database),))
                conn.commit()
                held.callback(conn.invalidate)  # not back to the pool with the shadow attached
            try:
                with conn.begin():
                    self._lock(conn, postgres)
                    before = _positions(conn, self.names)
                    if postgres:
                        self._move_in(conn, shadow)
                    else:
                        self._copy_in(conn)
                    self._replace_positions(conn, f"{_quote(shadow.schema)}." if postgres
                                            else "rebuild.")
                    caught = sum(self._catch_up_within(conn, feed, before) for feed in feeds)
                    after = _positions(conn, self.names)
                    back = [f"{name} at {source} position {after.get((name, source), 0)}, "
                            f"behind the live model's {position}"
                            for (name, source), position in sorted(before.items())
                            if after.get((name, source), 0) < position]
                    if back:
                        raise RebuildRefused(
                            f"the rebuilt read models would stand behind the live ones "
                            f"({'; '.join(back)}): has a source's store been recreated? Nothing "
                            f"was swapped in.")
            except Exception as exc:
                busy = _busy_reason(exc)
                if busy is None:
                    raise
                raise _Busy(f"{busy}{self._holders(shadow) if postgres else ''}") from exc
            self.swapped = True
        return caught

    def _lock(self, conn: Connection, postgres: bool) -> None:
        wait_ms = int(LOCK_WAIT_SECONDS * 1000)
        if not postgres:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {wait_ms}")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        # The same keys the service's projections take, and a start's `ReadModel.create`;
        # a wait beyond `lock_timeout` is reported, not silent.
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")
        for key in self._keys():
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": key})

    def _keys(self) -> list[int]:
        """The models' keys in the order the service's writers take them, then those of
        `ReadModel.create` (a replica starting), which nothing holds while it waits for more."""
        namespace = lock_namespace(self.wiring.engine)  # the deployment's
        return ([advisory_key(n, namespace) for n in self.names]
                + [advisory_key(f"schema:{n}", namespace) for n in self.names])

    def _move_in(self, conn: Connection, shadow: _Shadow) -> None:
        """PostgreSQL: the old tables dropped, the new ones moved into the service's schema
        (with their indexes and constraints); readers blocked meanwhile see the new ones."""
        live = _quote(self.wiring.settings.schema_for(self.service))
        self._lock_tables(conn)
        for model in self.models:
            model.metadata.drop_all(conn)
        for model in self.models:
            for table in model.metadata.sorted_tables:
                conn.exec_driver_sql(f"ALTER TABLE {_quote(shadow.schema)}.{_quote(table.name)} "
                                     f"SET SCHEMA {live}")

    def _lock_tables(self, conn: Connection) -> None:
        """All the live tables at once, before dropping any. A reader holds each table it has
        read until its transaction ends: taking them one by one could hold one it waits for
        while it holds another. So each try waits briefly, well within PostgreSQL's deadlock
        check, and gives back what it got before the next."""
        tables = ", ".join(_quote(t.name) for m in self.models for t in m.metadata.sorted_tables)
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                with conn.begin_nested():
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {TABLE_TRY_MS}")
                    conn.exec_driver_sql(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
                    conn.exec_driver_sql(
                        f"SET LOCAL lock_timeout = {int(LOCK_WAIT_SECONDS * 1000)}")
                    return
            except Exception as exc:
                if _busy_reason(exc) is None or time.monotonic() >= deadline:
                    raise
            green.sleep(0.02)

    def _copy_in(self, conn: Connection) -> None:
        """SQLite: the rows of the new tables copied over those of the live ones."""
        for model in self.models:
            for table in reversed(model.metadata.sorted_tables):
                conn.exec_driver_sql(f"DELETE FROM main.{_quote(table.name)}")
            for table in model.metadata.sorted_tables:
                columns = ", ".join(_quote(c.name) for c in table.columns)
                conn.exec_driver_sql(f"INSERT INTO main.{_quote(table.name)} ({columns}) "
                                     f"SELECT {columns} FROM rebuild.{_quote(table.name)}")

    def _replace_positions(self, conn: Connection, shadow_prefix: str) -> None:
        names = {"names": self.names}
        conn.execute(delete(projection_tracking).where(
            projection_tracking.c.projection.in_(self.names)))
        conn.execute(text(
            "INSERT INTO concierge_projection_tracking (projection, source, position) "
            f"SELECT projection, source, position FROM {shadow_prefix}"
            "concierge_projection_tracking WHERE projection IN :names"
        ).bindparams(bindparam("names", expanding=True)), names)
        conn.execute(delete(read_model_versions).where(
            read_model_versions.c.name.in_(self.names)))
        conn.execute(text(
            "INSERT INTO concierge_read_model_versions (name, version) "
            f"SELECT name, version FROM {shadow_prefix}concierge_read_model_versions "
            "WHERE name IN :names").bindparams(bindparam("names", expanding=True)), names)

    def _catch_up_within(self, conn: Connection, feed: _Feed,
                         before: dict[tuple[str, str], int]) -> int:
        """Apply, in the swap's transaction, what the source committed since the last section.
        The service's own log always (its writers wait on the locks, so its end is exact);
        another service's only if the live models got further in it (its later events reach
        the service from the bus and are applied past the new positions)."""
        after = _positions(conn, feed.build.names)
        position = min(after.get((name, feed.source), 0) for name in feed.build.names)
        if not feed.local and all(before.get((name, feed.source), 0) <= position
                                  for name in feed.build.names):
            return 0
        count = 0
        while True:
            # No read-ahead here: on SQLite nothing may yield while the write lock is held.
            batch = feed.reader(feed.source, position, feed.batch)
            fresh = [m for m in batch if int(m["position"]) > position]
            if fresh:
                feed.live.apply_batch(fresh, conn=conn)
                position = int(fresh[-1]["position"])
                count += len(fresh)
            if len(batch) < feed.batch:
                return count

    def _holders(self, shadow: _Shadow) -> str:
        """Who holds what the swap waits for (PostgreSQL), for the operator."""
        keys = self._keys()
        live = self.wiring.settings.schema_for(self.service)
        tables = [f"{_quote(live)}.{_quote(t.name)}" for m in self.models
                  for t in m.metadata.sorted_tables]
        try:
            with self.wiring.engine.connect() as conn:
                rows = conn.execute(text(
                    "SELECT DISTINCT a.pid, a.state, "
                    "extract(epoch FROM now() - a.xact_start)::int AS seconds "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.granted AND l.pid <> pg_backend_pid() AND ("
                    # A bigint key is held as two halves; the shift wraps as the key does.
                    " (l.locktype = 'advisory' AND l.objsubid = 1 AND "
                    "  ((l.classid::bigint << 32) | l.objid::bigint) = ANY(:keys))"
                    " OR (l.locktype = 'relation' AND l.relation = ANY("
                    "  ARRAY(SELECT to_regclass(t) FROM unnest(CAST(:tables AS text[])) t))))"
                    " ORDER BY a.pid"), {"keys": keys, "tables": tables}).all()
        except Exception:
            return ""
        if not rows:
            return ""
        held = ", ".join(f"pid {pid} ({state or 'unknown'}"
                         f"{f', for {seconds} s' if seconds is not None else ''})"
                         for pid, state, seconds in rows)
        return f", held by {held}"


def _positions(conn: Connection, names: list[str]) -> dict[tuple[str, str], int]:
    pt = projection_tracking
    rows = conn.execute(select(pt.c.projection, pt.c.source, pt.c.position).where(
        pt.c.projection.in_(names))).all()
    return {(name, source): int(position) for name, source, position in rows}


def _busy_reason(exc: BaseException) -> str | None:
    """What a lock wait that ran out of time (or a broken deadlock) was waiting for."""
    cause = getattr(exc, "orig", None) or exc
    kind = type(cause).__name__
    if kind == "LockNotAvailable":
        return "the read models' locks were not free within " + _duration(LOCK_WAIT_SECONDS)
    if kind == "DeadlockDetected":
        return "a deadlock with another transaction was broken"
    if kind == "OperationalError" and "locked" in str(cause):
        return ("SQLite's write lock was not free within " + _duration(LOCK_WAIT_SECONDS)
                + " (another writer of the service's read models holds it)")
    return None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
