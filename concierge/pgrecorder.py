"""The PostgreSQL process recorder every service's store uses (PROCESS_RECORDER_TOPIC).

eventsourcing's recorder sends `NOTIFY` with every insert for its LISTEN-based subscriptions;
nothing here listens (subscribers learn of new events from the bus and read the log), so that
statement is dropped from every command's transaction.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.postgres import PostgresProcessRecorder


class QuietProcessRecorder(PostgresProcessRecorder):
    def _notify_channel(self, curs: Any) -> None:
        return None
