"""The SQLite process recorder every embedded service's store uses (PROCESS_RECORDER_TOPIC).

The library's, plus the answers of keyed commands (`concierge.idempotency`), written in the
transaction that records their events, as the tracking record is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.sqlite import SQLiteProcessRecorder

from concierge.idempotency import SQLiteAnswers


class AnsweringProcessRecorder(SQLiteAnswers, SQLiteProcessRecorder):
    def create_table(self) -> None:
        super().create_table()
        self.create_answers_table()

    def _insert_events(self, c: Any, stored_events: Any, **kwargs: Any) -> Sequence[int] | None:
        returning = super()._insert_events(c, stored_events, **kwargs)
        answers = kwargs.get("answers")
        if answers:
            self.insert_answers(c, answers)
        return returning
