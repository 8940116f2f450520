"""On PostgreSQL a commit records its events and projects the service's own read models in one
transaction; a projection that fails does not cost the events, and a conflict projects nothing.
SQLite keeps projecting after the commit (the same outcome, two transactions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError, Tracking
from sqlalchemy import event, select

from concierge.config import Settings
from concierge.runtime import Wiring, assemble, open_store
from tests.integration.test_deliver_together import NamesView, names
from tests.support.toy import Counter, CountersView, LedgerApp, counters


class FragileNames(NamesView):
    """Refuses to project a counter named "boom" while `broken` is set."""

    broken = True

    @classmethod
    def created(cls, rows: Any, env: dict[str, Any]) -> None:  # type: ignore[override]
        if env["data"]["name"] == "boom" and cls.broken:
            raise RuntimeError("this read model cannot take it yet")
        NamesView.created(rows, env)

    def handlers(self) -> dict[str, dict[str, Any]]:
        return {"ledger": {"CounterCreated": self.created}}


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, data_dir: Path, schema_prefix: str) -> Settings:
    database = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    return Settings(data_dir=data_dir, database_url=database, schema_prefix=schema_prefix)


def ledger(settings: Settings, *models: Any) -> Wiring:
    app, engine = open_store("ledger", settings, LedgerApp)
    return assemble(Wiring("ledger", settings, app, engine,
                           read_models=list(models or (CountersView(), NamesView()))))


def view(wiring: Wiring) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with wiring.engine.connect() as conn:
        return (conn.execute(select(counters.c.name, counters.c.value)).all(),
                conn.execute(select(names.c.name)).all())


def test_a_commit_and_its_own_read_models_are_one_transaction_on_postgresql(
        settings: Settings) -> None:
    wiring = ledger(settings)
    app: Any = wiring.app
    commits: list[int] = []
    event.listen(wiring.engine, "commit", lambda _conn: commits.append(1))
    reads: list[int] = []
    read = app.read_notifications
    app.read_notifications = lambda *a, **k: reads.append(1) or read(*a, **k)
    separate: list[int] = []  # inserts through the library's own connection pool
    insert = app.recorder.insert_events
    app.recorder.insert_events = lambda *a, **k: separate.append(1) or insert(*a, **k)
    try:
        counter = app.create("lobby")
        app.increment(counter, 2)

        assert view(wiring) == ([("lobby", 2)], [("lobby",)])  # read your own write
        assert reads == []
        assert [sub.position for sub in wiring.local] == [2, 2]
        assert commits == [1, 1]  # one commit per command on the read models' database ...
        if settings.uses_postgres:
            assert separate == []  # ... which recorded the events too
        else:
            assert separate == [1, 1]  # ... after the events' own, in the SQLite event store
            assert app._in_commit is None
    finally:
        wiring.close()


def test_a_projection_that_fails_in_the_commit_does_not_cost_the_events(
        settings: Settings) -> None:
    FragileNames.broken = True
    wiring = ledger(settings, CountersView(), FragileNames())
    app: Any = wiring.app
    try:
        app.create("boom")  # recorded; the read models stay behind, nothing half-applied

        # One event (on PostgreSQL at position 2: the first attempt's sequence number is
        # spent, a gap every reader of the log steps over). After the commit each model
        # catches up in its own transaction: the sound one has it, the broken one nothing.
        [recorded] = app.read(0)
        assert recorded.type == "CounterCreated"
        assert view(wiring) == ([("boom", 0)], [])

        FragileNames.broken = False
        wiring.catch_up_local()  # what the next commit or the background loop does

        assert view(wiring) == ([("boom", 0)], [("boom",)])
        assert [sub.position for sub in wiring.local] == [recorded.position] * 2
    finally:
        FragileNames.broken = True
        wiring.close()


def test_a_commit_projects_in_the_commit_after_another_replica_moved_the_models(
        postgres_url: str, data_dir: Path, schema_prefix: str) -> None:
    """What this process remembers of the models' positions lags behind another replica's
    commits; the commit still projects its own events in its transaction (the database says
    where the models stand), with no read of the log. (Replicas need PostgreSQL.)"""
    settings = Settings(data_dir=data_dir, database_url=postgres_url, schema_prefix=schema_prefix)
    one, two = ledger(settings), ledger(settings)
    try:
        counter = one.app.create("lobby")
        for _ in range(3):
            two.app.increment(counter)
        reads: list[int] = []
        read = one.app.read_notifications
        one.app.read_notifications = lambda *a, **k: reads.append(1) or read(*a, **k)

        one.app.increment(counter)

        assert reads == []
        assert view(one) == ([("lobby", 4)], [("lobby",)])
        assert [sub.position for sub in one.local] == [5, 5]
    finally:
        two.close()
        one.close()


def test_a_conflict_at_commit_projects_nothing(settings: Settings) -> None:
    wiring = ledger(settings)
    other = ledger(settings)  # another replica on the same store
    app: Any = wiring.app
    try:
        counter = app.create("lobby")
        stale = other.app.repository.get(UUID(counter))
        app.increment(counter)
        stale.increment(5)

        with pytest.raises(IntegrityError):
            other.app.record(stale)

        assert app.max_position() == 2
        assert view(wiring) == ([("lobby", 1)], [("lobby",)])
        other.catch_up_local()
        assert view(other) == ([("lobby", 1)], [("lobby",)])
        assert [sub.position for sub in other.local] == [2, 2]
    finally:
        other.close()
        wiring.close()


def test_an_event_tracked_before_is_refused_with_nothing_recorded_or_projected(
        settings: Settings) -> None:
    """A policy's unit carries the source's position: one already recorded (a replica applied
    the same event) refuses the whole commit, events and projection alike."""
    wiring = ledger(settings)
    app: Any = wiring.app
    try:
        app.record(Counter("lobby"), tracking=Tracking("topology", 3))
        with pytest.raises(IntegrityError):
            app.record(Counter("again"), tracking=Tracking("topology", 3))
        app.record(Counter("later"), tracking=Tracking("topology", 4))

        assert [r.state["name"] for r in app.read(0)] == ["lobby", "later"]
        assert app.tracked_position("topology") == 4
        counted, named = view(wiring)
        assert (sorted(counted), sorted(named)) == ([("later", 0), ("lobby", 0)],
                                                    [("later",), ("lobby",)])
    finally:
        wiring.close()
