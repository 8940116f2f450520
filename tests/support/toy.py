"""A two-service toy used to prove the chassis guarantees without any real context; the
smallest complete example of a context's declaration (docs/new-context.md).

`ledger` records counter increments; `tally` reacts to them (an event-sourced policy with
tracking) and keeps a read model of ledger events (a projection with tracking). Run one service in
its own process with `python -m concierge.serve tests.support.toy:TallyService` to kill it.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event
from sqlalchemy import Column, Integer, MetaData, String, Table, select

from concierge import context, green
from concierge.config import Settings
from concierge.contexts import BoundedContext, Policy
from concierge.projection import ReadModel, Rows
from concierge.rpc import rpc
from concierge.runtime import Runtime, ServiceBase, Wiring
from concierge.store import ServiceApplication

NS = uuid.UUID("0b7f1f7e-0000-4000-8000-000000000001")


class Counter(Aggregate):
    @event("CounterCreated")
    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    @event("CounterIncremented")
    def increment(self, by: int) -> None:
        self.value += by


class Tally(Aggregate):
    """Per counter: the sum of increments seen by the tally service."""

    @staticmethod
    def create_id(counter_id: str, name: str = "") -> uuid.UUID:
        return uuid.uuid5(NS, counter_id)

    @event("TallyOpened")
    def __init__(self, counter_id: str, name: str) -> None:
        self.counter_id = counter_id
        self.name = name
        self.total = 0
        self.seen: list[str] = []

    @event("TallyAdded")
    def add(self, amount: int, event_id: str) -> None:
        self.total += amount
        self.seen.append(event_id)


class LedgerApp(ServiceApplication):
    service_name = "ledger"

    # Each command returns its result and the aggregates it changed; `execute` records them
    # (with group commit, and runs it again when another replica wrote first).
    def create(self, name: str) -> str:
        def command() -> tuple[str, list[Any]]:
            counter = Counter(name)
            return str(counter.id), [counter]

        return self.execute(command)

    def increment(self, counter_id: str, by: int = 1) -> None:
        def command() -> tuple[None, list[Any]]:
            counter = self.repository.get(uuid.UUID(counter_id))
            counter.increment(by)
            return None, [counter]

        self.execute(command)

    def increment_many(self, counter_id: str, times: int) -> None:
        def command() -> tuple[None, list[Any]]:
            counter = self.repository.get(uuid.UUID(counter_id))
            for _ in range(times):
                counter.increment(1)
            return None, [counter]

        self.execute(command)


class TallyApp(ServiceApplication):
    service_name = "tally"

    def on_ledger_event(self, envelope: dict[str, Any]) -> list[Any]:
        data = envelope["data"]
        if envelope["type"] == "CounterCreated":
            return [Tally(envelope["stream_id"], data["name"])]
        tally = self.repository.get(Tally.create_id(envelope["stream_id"]))
        tally.add(int(data["by"]), envelope["event_id"])
        return [tally]

    def total(self, counter_id: str) -> dict[str, Any]:
        try:
            tally = self.repository.get(Tally.create_id(counter_id))
        except AggregateNotFoundError:
            return {"total": 0, "seen": 0, "unique": 0}
        return {"total": tally.total, "seen": len(tally.seen), "unique": len(set(tally.seen))}

metadata = MetaData()
counters = Table(
    "toy_counters", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("value", Integer, nullable=False),
    Column("increments", Integer, nullable=False),
)


class CountersView(ReadModel):
    """Ledger's counters as the tally service sees them (a projection of another service)."""

    name = "toy_counters"
    metadata = metadata

    def handlers(self) -> dict[str, dict[str, Any]]:
        return {"ledger": {"CounterCreated": self.created,
                           "CounterIncremented": self.incremented}}

    @staticmethod
    def created(rows: Rows, env: dict[str, Any]) -> None:
        rows.put(counters, id=env["stream_id"], name=env["data"]["name"], value=0, increments=0)

    @staticmethod
    def incremented(rows: Rows, env: dict[str, Any]) -> None:
        # Read-modify-write: the batch's own earlier writes are seen before they are flushed.
        row = rows.get(counters, env["stream_id"])
        if row is None:
            raise LookupError(f"counter {env['stream_id']} was incremented before it existed")
        rows.update(counters, env["stream_id"], value=row["value"] + int(env["data"]["by"]),
                    increments=row["increments"] + 1)


LEDGER = BoundedContext(
    name="ledger",
    service="tests.support.toy:LedgerService",
    application=LedgerApp,
)
TALLY = BoundedContext(
    name="tally",
    service="tests.support.toy:TallyService",
    application=TallyApp,
    read_models=lambda app: [CountersView()],
    policies=[Policy("ledger", {"CounterCreated", "CounterIncremented"}, "on_ledger_event")],
)


def bootstrap_ledger(settings: Settings, service: str = "ledger") -> Wiring:
    """The ledger's wiring; another `service` name gives a ledger with its own store and
    exchange (the relay benchmark's, which no test queue is bound to)."""
    return dataclasses.replace(LEDGER, name=service).wire(settings)


def bootstrap_tally(settings: Settings) -> Wiring:
    return TALLY.wire(settings)


SLOW_COMMANDS_STARTED: list[int] = []


class LedgerService(ServiceBase):
    name = "ledger"
    runtime = Runtime(LEDGER.wire)

    @rpc
    def create(self, name: str) -> str:
        with context.acting({"actor": "tester"}):
            return self.runtime.app.create(name)

    @rpc
    def increment(self, counter_id: str, by: int = 1) -> None:
        with context.acting({"actor": "tester"}):
            self.runtime.app.increment(counter_id, by)

    @rpc
    def increment_many(self, counter_id: str, times: int) -> None:
        self.runtime.app.increment_many(counter_id, times)

    @rpc
    def increment_slowly(self, counter_id: str, seconds: float) -> None:
        """A command that takes a while, so a test can kill its replica in the middle; each
        replica that starts it is noted in SLOW_COMMANDS_STARTED (by its wiring's id)."""
        SLOW_COMMANDS_STARTED.append(id(self.runtime))
        green.sleep(seconds)
        with context.acting({"actor": "tester"}):
            self.runtime.app.increment(counter_id, 1)

    @rpc
    def slow_commands_started(self) -> int:
        """How many slow commands this process has started (a test in another process waits
        for one to be under way)."""
        return len(SLOW_COMMANDS_STARTED)


class TallyService(ServiceBase):
    name = "tally"
    runtime = Runtime(TALLY.wire)

    @rpc
    def total(self, counter_id: str) -> dict[str, Any]:
        return self.runtime.app.total(counter_id)

    @rpc
    def view(self) -> list[dict[str, Any]]:
        with self.runtime.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(counters))]
