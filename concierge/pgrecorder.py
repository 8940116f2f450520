"""The PostgreSQL factory and process recorder every service's store uses (PERSISTENCE_MODULE,
PROCESS_RECORDER_TOPIC).

eventsourcing's recorder sends `NOTIFY` with every insert for its LISTEN-based subscriptions;
nothing here listens (subscribers learn of new events from the bus and read the log), so that
statement is dropped from every command's transaction.

It also sends the events' array in binary: the library's `%s` makes psycopg dump the array of
(id, version, topic, state) rows as text, escaping every byte of every state, which cost more
than the rest of a command's insert (measured: 94 us against 12 us for three 1 kB events).
"""

from __future__ import annotations

from typing import Any

from eventsourcing.postgres import PostgresFactory as LibraryFactory
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.utils import Environment, EnvType
from psycopg.sql import SQL

from concierge.idempotency import PostgresAnswers


class PostgresFactory(LibraryFactory):
    """The library's factory, with `application_name` (CONCIERGE_APPLICATION_NAME) on every
    connection of its pool, which the library has no setting for."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        name = self.env.get("CONCIERGE_APPLICATION_NAME")
        kwargs = self.datastore.pool.kwargs
        if name and isinstance(kwargs, dict):  # the pool is not open yet: no connection lacks it
            kwargs["application_name"] = name


class QuietProcessRecorder(PostgresAnswers, PostgresProcessRecorder):
    """Also keeps the answers of keyed commands (`concierge.idempotency`), written in the
    transaction that records their events, as the tracking record is."""

    _binary_insert: Any = None

    def create_table(self) -> None:
        super().create_table()
        self.create_answers_table()

    def _insert_events(self, curs: Any, stored_events: Any, **kwargs: Any) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        answers = kwargs.get("answers")
        if answers:
            self.insert_answers(curs, answers)

    def _notify_channel(self, curs: Any) -> None:
        return None

    def _insert_stored_events(self, curs: Any, stored_events: Any, **kwargs: Any) -> None:
        """The library's insert (table lock, then the events), the array sent in binary."""
        self._lock_table(curs)
        rows = [self.construct_pg_stored_event(s.originator_id, s.originator_version, s.topic,
                                               s.state)
                for s in stored_events]
        curs.execute(self._insert_in_binary(curs), (rows,))

    def _insert_in_binary(self, curs: Any) -> Any:
        if self._binary_insert is None:
            text = self.insert_events_statement.as_string(curs)
            if text.count("%s") != 1:
                raise RuntimeError(f"unexpected eventsourcing insert statement: {text}")
            self._binary_insert = SQL(text.replace("%s", "%b"))  # type: ignore[arg-type]
        return self._binary_insert
