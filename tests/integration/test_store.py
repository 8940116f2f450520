"""The event store keeps events and tracking together, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from concierge import context
from concierge.config import Settings
from concierge.context import CallContext
from concierge.storage import store_env
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
        assert [(n.id, n.originator_id, n.originator_version, n.topic, bytes(n.state))
                for n in ours] == [(n.id, str(n.originator_id), n.originator_version, n.topic,
                                    bytes(n.state)) for n in library]
        assert all(type(n.state) is bytes and type(n.originator_id) is str for n in ours)
    assert [r.position for r in app.read(0)] == list(range(1, 9))


def test_a_unit_sees_its_own_changes_and_records_them_once_with_each_callers_stamp(
        app: LedgerApp) -> None:
    existing = Counter("gate")
    app.record(existing)
    fresh = Counter("lift")
    missing = Counter("never saved").id
    seen: list[int] = []

    def create() -> tuple[None, list[Counter]]:
        assert fresh.id not in app.repository  # looked up in the unit, not yet recorded
        return None, [fresh]

    def bump(counter_id: object) -> Any:
        def part() -> tuple[None, list[Counter]]:
            counter = app.repository.get(counter_id)
            counter.increment(1)
            seen.append(counter.value)
            return None, [counter]

        return part

    parts = [(CallContext(actor="a", correlation_id="one"), create),
             (CallContext(actor="b", correlation_id="two"), bump(fresh.id)),
             (CallContext(actor="c", correlation_id="three"), bump(fresh.id)),
             (CallContext(actor="d", correlation_id="four"), bump(existing.id))]
    if app.absent_streams([existing.id, missing]):  # PostgreSQL answers in one query
        assert app.absent_streams([existing.id, missing, fresh.id]) == {missing, fresh.id}
    with app.serialised():
        app.run_unit(parts, tracking=Tracking("topology", 9),
                     lookups=[existing.id, fresh.id, missing])

    assert seen == [1, 2, 1]  # the second bump saw the first, made in the same unit
    records = app.read(1)
    assert [(r.type, r.state["__meta__"]["correlation_id"]) for r in records] == [
        ("CounterCreated", "one"), ("CounterIncremented", "two"),
        ("CounterIncremented", "three"), ("CounterIncremented", "four")]
    assert app.repository.get(fresh.id).value == 2
    assert app.tracked_position("topology") == 9
    assert missing not in app.repository


def test_a_failing_unit_records_nothing(app: LedgerApp) -> None:
    counter = Counter("gate")
    app.record(counter)

    def bump() -> tuple[None, list[Counter]]:
        found = app.repository.get(counter.id)
        found.increment(5)
        return None, [found]

    def refuse() -> tuple[None, list[Counter]]:
        raise ValueError("refused")

    with pytest.raises(ValueError), app.serialised():
        app.run_unit([(CallContext(), bump), (CallContext(), refuse)],
                     tracking=Tracking("topology", 1))
    assert app.max_position() == 1
    assert app.tracked_position("topology") == 0
    assert app.repository.get(counter.id).value == 0


def test_many_aggregates_are_read_as_the_repository_reads_them_one_by_one(
        app: LedgerApp) -> None:
    gate, lift = Counter("gate"), Counter("lift")
    gate.increment(2)
    app.record(gate, lift)
    lift.increment(5)
    lift.increment(1)
    app.record(lift)
    missing = Counter("never saved").id

    found = app.get_many([gate.id, lift.id, missing])

    assert set(found) == {gate.id, lift.id}
    for counter_id, counter in found.items():
        alone = app.repository.get(counter_id)
        assert (counter.name, counter.value, counter.version) == (
            alone.name, alone.value, alone.version)
    assert found[lift.id].value == 6 and found[lift.id].version == 3
    assert app.get_many([]) == {}


def test_stored_states_come_back_byte_for_byte(app: LedgerApp) -> None:
    """On PostgreSQL the events' array goes in binary (concierge.pgrecorder): what is read back
    decodes to what was recorded, whatever the text holds."""
    awkward = 'é \\ \' " {a,b} NULL \t\n 中文 \x7f ' + "x" * 5000
    counter = Counter(awkward)
    counter.increment(3)
    app.record(counter)

    stored = app.recorder.select_events(counter.id)
    assert [s.originator_version for s in stored] == [1, 2]
    for one in stored:  # the bytes are the mapper's own encoding of what they decode to
        again = app.mapper.to_stored_event(app.mapper.to_domain_event(one))
        assert (again.topic, again.state) == (one.topic, one.state)
    found = app.repository.get(counter.id)
    assert (found.name, found.value) == (awkward, 3)
