"""Several read models fed by one source take a delivery in one transaction, and fall back to
one at a time (repairing gaps from the log) whenever they do not all stand right before it.
On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, event, select

from concierge.config import Settings
from concierge.database import service_engine
from concierge.projection import ReadModel, Rows
from concierge.runtime import dispatcher
from concierge.subscription import Subscription, projection_handlers
from tests.support.harness import FakeLog
from tests.support.toy import CountersView, counters

names_metadata = MetaData()
names = Table("toy_names", names_metadata,
              Column("id", String(36), primary_key=True),
              Column("name", String(100), nullable=False))


class NamesView(ReadModel):
    """A second read model of the same source, interested in one event type only."""

    name = "toy_names"
    metadata = names_metadata

    def handlers(self) -> dict[str, dict[str, Any]]:
        return {"ledger": {"CounterCreated": self.created}}

    @staticmethod
    def created(rows: Rows, env: dict[str, Any]) -> None:
        rows.put(names, id=env["stream_id"], name=env["data"]["name"])


def ledger_events(stream: str, increments: int) -> list[dict[str, Any]]:
    events = [{"type": "CounterCreated", "source": "ledger", "position": 1, "stream_id": stream,
               "data": {"name": "lobby"}}]
    events += [{"type": "CounterIncremented", "source": "ledger", "position": 2 + i,
                "stream_id": stream, "data": {"by": 1}} for i in range(increments)]
    return events


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, data_dir: Path, schema_prefix: str) -> Settings:
    database = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    return Settings(data_dir=data_dir, database_url=database, schema_prefix=schema_prefix)


def wire(settings: Settings, log: FakeLog) -> tuple[Any, list[Subscription], list[int]]:
    engine = service_engine("tally", settings)
    subs = []
    for model in (CountersView(), NamesView()):
        model.create(engine)
        [(source, handler)] = projection_handlers(model, engine).items()
        subs.append(Subscription(source, handler, log))
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    return engine, subs, commits


def delivered(settings: Settings, increments: int) -> tuple[Any, ...]:
    """A counter's stream of events in a log, the two models wired to it, and the dispatcher
    the bus would hand deliveries to."""
    stream = str(uuid.uuid4())
    log = FakeLog(ledger_events(stream, increments))
    engine, subs, commits = wire(settings, log)
    return stream, log, engine, subs, commits, dispatcher(subs)


def view(engine: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return (conn.execute(select(counters.c.name, counters.c.value)).all(),
                conn.execute(select(names.c.name)).all())


def test_a_run_that_follows_on_goes_to_every_model_in_one_transaction(
        settings: Settings) -> None:
    _, log, engine, subs, commits, handle = delivered(settings, 3)
    try:
        [sub.position for sub in subs]  # positions known before the delivery
        commits.clear()

        handle(log.events)
        handle(log.events)  # the same delivery again: nothing changes

        assert commits == [1]
        assert view(engine) == ([("lobby", 3)], [("lobby",)])
        assert [sub.position for sub in subs] == [4, 4]
        assert [sub.applied for sub in subs] == [4, 1]  # each counts what it handled
        assert log.reads == 0
    finally:
        engine.dispose()


def test_a_gap_or_a_model_moved_elsewhere_falls_back_to_one_model_at_a_time(
        settings: Settings) -> None:
    stream, log, engine, subs, _, handle = delivered(settings, 4)
    try:
        handle(log.events[:1])
        handle(log.events[3:])  # positions 4 and 5 arrive before 2 and 3: read from the log
        assert view(engine) == ([("lobby", 4)], [("lobby",)])
        assert log.reads > 0

        # Another replica's subscription moved one model on, unseen by this one.
        more = {"type": "CounterIncremented", "source": "ledger", "position": 6,
                "stream_id": stream, "data": {"by": 10}}
        log.events.append(more)
        other = Subscription("ledger", subs[0].handler, log)
        other.deliver(more)
        handle([more])  # this replica still thinks position 5: each model checks alone

        assert view(engine) == ([("lobby", 14)], [("lobby",)])  # applied once, not twice
        assert [sub.position for sub in subs] == [6, 6]
    finally:
        engine.dispose()
