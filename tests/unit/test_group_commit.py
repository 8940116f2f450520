"""Group commit: topology commands that arrive while another commits are recorded together.

The store is the embedded SQLite file; concurrency is green threads, as in a service. The first
commit is held open a moment so that the others queue behind it, as they do under load.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError

from concierge import context, green
from concierge.commit import COMMIT_ATTEMPTS
from concierge.config import Settings
from concierge.records import META_KEY
from concierge.storage import store_env
from contracts import checked
from contracts.errors import Conflict
from contracts.topology import ApartmentCreate
from services.topology.application import TopologyApplication

LUNA = str(uuid.uuid4())
RESIDENT = {"first_name": "Lily", "last_name": "Green", "email": "lily@example.com"}


def as_luna(request: str) -> dict[str, Any]:
    return {"actor": f"installer:luna:{request}", "correlation_id": request,
            "installer_id": LUNA, "role": "installer"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TopologyApplication]:
    application = TopologyApplication(env=store_env("topology", Settings(data_dir=tmp_path)))
    yield application
    application.close()


@pytest.fixture
def building(app: TopologyApplication) -> str:
    with context.acting(as_luna("setup")):
        community = app.create_community({"name": "Seaside", "feature_plan": "premium"})
        return app.add_building(community, {"name": "Building A"})


def hold_first_commit(app: TopologyApplication, seconds: float = 0.05) -> list[int]:
    """Slow down the first commit so that the next commands queue; returns the number of
    events of each commit."""
    sizes: list[int] = []
    record = app._record

    def slow(processing_event: Any) -> Any:
        if not sizes:
            green.sleep(seconds)
        sizes.append(len(processing_event.events))
        return record(processing_event)

    app._record = slow  # type: ignore[method-assign]
    return sizes


def at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in green threads started together; each one's result or exception."""

    def guarded(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:
            return exc

    threads = [green.spawn(guarded, call) for call in calls]
    return [thread.wait() for thread in threads]


def add(app: TopologyApplication, building: str, number: str) -> Callable[[], Any]:
    def call() -> Any:
        with context.acting(as_luna(f"req-{number}")):
            return app.add_apartment(building, {"number": number, "resident": {
                "first_name": "Lily", "last_name": f"N{number}"}})

    return call


def test_concurrent_commands_commit_together_each_event_stamped_by_its_own_caller(
        app: TopologyApplication, building: str) -> None:
    sizes = hold_first_commit(app)
    before = app.max_position()

    ids = at_once([add(app, building, f"{n}") for n in range(101, 111)])

    assert all(isinstance(i, str) for i in ids), ids
    # The first alone (held open), the nine that queued behind it together.
    per_command = sizes[0]
    assert sizes == [per_command, 9 * per_command]
    assert app.group_commit.commands - app.group_commit.units >= 8
    records = app.read(before)
    assert len(records) == 10 * per_command
    numbers = {r.state["apartment_id"]: r.state["number"] for r in records
               if r.type == "ApartmentNumberReserved"}
    assert sorted(numbers) == sorted(ids)
    for record in records:
        apartment = (record.state["apartment_id"] if record.type == "ApartmentNumberReserved"
                     else record.stream_id)
        number = numbers[apartment]
        assert record.state[META_KEY] == {"actor": f"installer:luna:req-{number}",
                                          "correlation_id": f"req-{number}"}
    with context.acting(as_luna("check")):
        assert app.get_building(building)["apartment_count"] == 10


def test_a_command_refused_in_a_group_gets_its_error_and_the_others_are_recorded_once(
        app: TopologyApplication, building: str) -> None:
    sizes = hold_first_commit(app)
    before = app.max_position()

    outcomes = at_once([add(app, building, "100"), add(app, building, "201"),
                        add(app, building, "202"), add(app, building, "201"),
                        add(app, building, "203")])

    first, second, third, repeated, fourth = outcomes
    assert isinstance(repeated, Conflict) and "number" in repeated.errors
    assert all(isinstance(i, str) for i in (first, second, third, fourth))
    # The first alone (held open); the group of four behind it failed as a whole with nothing
    # recorded, then each of its commands ran alone: three commits and one refusal.
    per_command = sizes[0]
    assert sizes == [per_command] * 4
    assert len(app.read(before)) == 4 * per_command
    with context.acting(as_luna("check")):
        numbers = sorted(app.get_apartment(i)["number"] for i in (first, second, third, fourth))
        assert numbers == ["100", "201", "202", "203"]
        assert app.get_building(building)["apartment_count"] == 4


def test_a_conflict_at_commit_runs_the_group_again(
        app: TopologyApplication, building: str) -> None:
    """Another replica wrote first: the group recorded nothing and runs again as a whole."""
    sizes: list[int] = []
    record = app._record

    def conflict_once_for_a_group(processing_event: Any) -> Any:
        sizes.append(len(processing_event.events))
        if len(sizes) == 1:
            green.sleep(0.05)
        elif len(sizes) == 2:
            raise IntegrityError("another replica wrote first")
        return record(processing_event)

    app._record = conflict_once_for_a_group  # type: ignore[method-assign]
    before = app.max_position()

    ids = at_once([add(app, building, f"{n}") for n in range(301, 305)])

    assert all(isinstance(i, str) for i in ids), ids
    per_command = sizes[0]
    assert sizes == [per_command, 3 * per_command, 3 * per_command]
    assert len(app.read(before)) == 4 * per_command  # each APT once
    # Contended now: on PostgreSQL the next units lock the events table before they run.
    assert app._contended_until > time.monotonic()


def test_a_group_that_keeps_conflicting_sends_each_command_alone(
        app: TopologyApplication, building: str) -> None:
    sizes: list[int] = []
    record = app._record

    def conflict_while_grouped(processing_event: Any) -> Any:
        sizes.append(len(processing_event.events))
        if len(sizes) == 1:
            green.sleep(0.05)
        elif len(processing_event.events) > sizes[0]:
            raise IntegrityError("another replica wrote first")
        return record(processing_event)

    app._record = conflict_while_grouped  # type: ignore[method-assign]
    before = app.max_position()

    ids = at_once([add(app, building, f"{n}") for n in range(311, 315)])

    assert all(isinstance(i, str) for i in ids), ids
    per_command = sizes[0]
    assert sizes == ([per_command] + [3 * per_command] * COMMIT_ATTEMPTS
                     + [per_command] * 3)
    assert len(app.read(before)) == 4 * per_command


def test_a_command_that_loses_every_race_is_a_conflict_with_nothing_recorded(
        app: TopologyApplication, building: str) -> None:
    attempts: list[int] = []

    def always_conflicting(processing_event: Any) -> Any:
        attempts.append(len(processing_event.events))
        raise IntegrityError("another replica wrote first")

    app._record = always_conflicting  # type: ignore[method-assign]
    before = app.max_position()

    (outcome,) = at_once([add(app, building, "321")])

    assert isinstance(outcome, IntegrityError)
    assert len(attempts) == COMMIT_ATTEMPTS
    assert app.max_position() == before


def test_one_command_at_a_time_is_one_commit_each(app: TopologyApplication,
                                                  building: str) -> None:
    sizes = hold_first_commit(app, seconds=0)

    for number in ("401", "402", "403"):
        add(app, building, number)()

    assert len(sizes) == 3 and app.group_commit.units == app.group_commit.commands


def add_command(app: TopologyApplication, building: str, number: str) -> Callable[[], Any]:
    """A command as `execute` takes it: load, call the aggregates, return them to record."""
    payload = checked(ApartmentCreate, {"number": number, "resident": {
        "first_name": "Lily", "last_name": f"N{number}"}})

    def command() -> tuple[str, list[Any]]:
        target, community = app._building_and_community(building)
        apartment = target.add_apartment(community, **payload)
        return str(apartment.id), [target, apartment]

    return command


def test_commands_executed_all_at_once_commit_together_each_as_its_own_caller(
        app: TopologyApplication, building: str) -> None:
    sizes = hold_first_commit(app, seconds=0)
    before = app.max_position()

    ids = app.execute_all([(as_luna(f"req-{n}"), add_command(app, building, n))
                           for n in ("501", "502", "503")])

    per_command = len(app.read(before)) // 3
    assert sizes == [3 * per_command]
    stamps = {r.state[META_KEY]["correlation_id"] for r in app.read(before)}
    assert stamps == {"req-501", "req-502", "req-503"}
    with context.acting(as_luna("check")):
        assert [app.get_apartment(i)["number"] for i in ids] == ["501", "502", "503"]


def test_one_refused_command_of_a_batch_fails_alone_and_its_error_is_raised(
        app: TopologyApplication, building: str) -> None:
    sizes = hold_first_commit(app, seconds=0)

    with pytest.raises(Conflict):
        app.execute_all([(as_luna(f"req-{n}"), add_command(app, building, n))
                         for n in ("601", "601", "602")])

    # The batch failed as a whole with nothing recorded, then each ran alone: two commits.
    assert (len(sizes) == 3 and sizes[0] == 0) or len(sizes) == 2
    with context.acting(as_luna("check")):
        assert app.get_building(building)["apartment_count"] == 2
    assert app.execute_all([]) == []


def test_a_pipeline_aborted_by_another_replicas_write_is_retried_as_a_lost_race(
        app: TopologyApplication, building: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library's PostgreSQL insert may report a conflicting version as "pipeline
    aborted" (an OperationalError): the command is run again, as after an IntegrityError."""
    from eventsourcing.application import Application
    from eventsourcing.persistence import OperationalError

    class PipelineAborted(Exception):  # psycopg.errors.PipelineAborted, by name
        pass

    library_record = Application._record
    failures: list[str] = []

    def aborted_once(self: Any, processing_event: Any) -> Any:
        if not failures:
            failures.append("aborted")
            raise OperationalError("pipeline aborted") from PipelineAborted()
        return library_record(self, processing_event)

    monkeypatch.setattr(Application, "_record", aborted_once)
    with context.acting(as_luna("raced")):
        apartment = app.add_apartment(building, {"number": "101", "resident": RESIDENT})
        assert app.get_apartment(apartment)["number"] == "101"
    assert failures == ["aborted"]

    def broken(self: Any, processing_event: Any) -> Any:
        raise OperationalError("server closed the connection")

    monkeypatch.setattr(Application, "_record", broken)
    with context.acting(as_luna("broken")), pytest.raises(OperationalError):
        app.add_apartment(building, {"number": "102", "resident": RESIDENT})
