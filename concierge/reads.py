"""How a service's application reads its own log: raw entries in order, one stream, which
streams exist, many aggregates in one query, and the position of its tracked sources.

`StoreReads` is one part of `concierge.store.ServiceApplication`. On PostgreSQL the hot reads
are plain queries over the library's events table (`_postgres_rows`); other stores take the
library's own path.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, project_aggregate
from eventsourcing.persistence import Notification, StoredEvent

from concierge.decoding import LogEntry, raw_bytes
from concierge.records import StoredRecord


class StoreReads:
    """Reading the store: its log, its streams, its tracking positions."""

    recorder: Any
    repository: Any
    mapper: Any
    log_section_size: int

    def tracked_position(self, source: str) -> int:
        return self.recorder.max_tracking_id(source) or 0

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
                                 state=raw_bytes(row[3]))
            events.setdefault(UUID(str(row[0])), []).append(self.mapper.to_domain_event(stored))
        found = {}
        for aggregate_id, stream in events.items():
            aggregate = project_aggregate(None, stream)
            if aggregate is not None:
                found[aggregate_id] = aggregate
        return found

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

