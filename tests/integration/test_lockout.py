"""Failed attempts and lockouts on both stores: counted per key within a window, locked at the
limit for the lockout, forgotten on success, and counted right by concurrent callers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from concierge.config import Settings
from concierge.database import service_engine
from concierge.lockout import Lockout, Rule

RULE = Rule(limit=3, window=timedelta(minutes=15), lockout=timedelta(minutes=10))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def made(request: pytest.FixtureRequest, data_dir: Path, schema_prefix: str
         ) -> tuple[Lockout, Clock]:
    database = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    settings = Settings(data_dir=data_dir, database_url=database, schema_prefix=schema_prefix)
    settings.service_dir("accounts").mkdir(parents=True, exist_ok=True)
    clock = Clock()
    return Lockout(service_engine("accounts", settings), clock), clock


def test_the_failure_that_reaches_the_limit_locks_for_the_lockout(
        made: tuple[Lockout, Clock]) -> None:
    lockout, clock = made
    assert lockout.failed([("user:luna", RULE)]) == 0
    assert lockout.failed([("user:luna", RULE)]) == 0
    assert lockout.locked_for(["user:luna"]) == 0
    assert lockout.failed([("user:luna", RULE)]) == 600
    assert lockout.locked_for(["user:luna", "addr:1"]) == 600
    assert lockout.locked_for(["user:other"]) == 0
    clock.now += timedelta(minutes=4)
    assert lockout.locked_for(["user:luna"]) == 360
    clock.now += timedelta(minutes=6)
    assert lockout.locked_for(["user:luna"]) == 0
    assert lockout.failed([("user:luna", RULE)]) == 0  # counting starts again


def test_failures_outside_the_window_do_not_add_up(made: tuple[Lockout, Clock]) -> None:
    lockout, clock = made
    for _ in range(2):
        lockout.failed([("user:luna", RULE)])
    clock.now += timedelta(minutes=16)
    assert lockout.failed([("user:luna", RULE)]) == 0
    assert lockout.failed([("user:luna", RULE)]) == 0
    assert lockout.failed([("user:luna", RULE)]) == 600


def test_a_success_forgets_the_keys_it_names_but_not_a_lock(made: tuple[Lockout, Clock]) -> None:
    lockout, clock = made
    lockout.failed([("user:luna", RULE), ("addr:1", RULE)])
    lockout.failed([("user:luna", RULE), ("addr:1", RULE)])
    lockout.forget(["user:luna"])
    assert lockout.failed([("user:luna", RULE), ("addr:1", RULE)]) == 600  # addr:1 kept count
    assert lockout.locked_for(["user:luna"]) == 0
    lockout.forget(["addr:1"])
    assert lockout.locked_for(["addr:1"]) == 600  # a success never lifts a lockout
    clock.now += timedelta(minutes=11)
    lockout.forget(["addr:1"])
    assert lockout.failed([("addr:1", RULE)]) == 0


def test_concurrent_failures_are_each_counted(made: tuple[Lockout, Clock]) -> None:
    lockout, _ = made
    many = Rule(limit=1000, window=timedelta(minutes=15), lockout=timedelta(minutes=1))
    threads = [threading.Thread(target=lambda: [lockout.failed([("user:x", many)])
                                                for _ in range(10)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    edge = Rule(limit=81, window=timedelta(minutes=15), lockout=timedelta(minutes=1))
    assert lockout.failed([("user:x", edge)]) == 60  # the 81st: all 80 before were counted
