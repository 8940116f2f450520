"""The event store keeps events and tracking together, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from concierge import context
from concierge.config import Settings
from concierge.store import store_env
from tests.support.toy import Counter, LedgerApp


@pytest.fixture(params=["sqlite", "postgres"])
def app(request: pytest.FixtureRequest, data_dir: Path, schema_prefix: str) -> LedgerApp:
    database = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    settings = Settings(data_dir=data_dir, database_url=database, schema_prefix=schema_prefix)
    return LedgerApp(env=store_env("ledger", settings))


def test_events_and_tracking_commit_together_and_a_repeat_is_refused(app: LedgerApp) -> None:
    counter = Counter("door")
    app.record(counter, tracking=Tracking("topology", 3))
    assert app.tracked_position("topology") == 3
    again = Counter("door 2")
    with pytest.raises(IntegrityError):
        app.record(again, tracking=Tracking("topology", 3))
    assert app.max_position() == 1  # the refused save left nothing behind
    assert app.record_position("topology", 4)
    assert not app.record_position("topology", 4)
    assert app.tracked_position("topology") == 4


def test_every_event_carries_who_caused_it(app: LedgerApp) -> None:
    with context.acting({"actor": "installer:luna", "correlation_id": "req-1"}):
        counter_id = app.create("gate")
    [record] = app.read(0)
    assert record.state["__meta__"] == {"actor": "installer:luna", "correlation_id": "req-1"}
    assert app.stream(counter_id)[0].state["name"] == "gate"
    assert app.repository.get(counter.id if (counter := None) else record_id(record)).name == "gate"


def record_id(record: object) -> object:
    import uuid

    return uuid.UUID(record.stream_id)  # type: ignore[attr-defined]


def test_conflicting_writes_never_both_win(app: LedgerApp) -> None:
    counter_id = app.create("lift")
    first = app.repository.get(record_id(app.read(0)[0]))
    second = app.repository.get(record_id(app.read(0)[0]))
    first.increment(1)
    second.increment(2)
    app.record(first)
    with pytest.raises(IntegrityError):
        app.record(second)
    assert app.repository.get(record_id(app.read(0)[0])).value == 1
    assert counter_id


def test_reading_the_log_returns_what_the_library_returns(app: LedgerApp) -> None:
    """The store reads PostgreSQL with its own query: same entries, same order, same bytes."""
    counter = app.create("lift")
    for _ in range(7):
        app.increment(counter)
    for after, limit in ((0, 100), (3, 2), (8, 10)):
        ours = app.read_notifications(after, limit)
        library = list(app.recorder.select_notifications(start=after, limit=limit,
                                                         inclusive_of_start=False))
        assert ours == library
    assert [r.position for r in app.read(0)] == list(range(1, 9))
