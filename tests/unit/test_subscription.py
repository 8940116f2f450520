"""The subscription's ordering rules, with an in-memory source log and handler (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from concierge.projection import ReadModel
from concierge.subscription import Subscription, projection_handlers
from tests.support.harness import FakeLog


def env(position: int, type_: str = "Added", amount: int = 1) -> dict[str, Any]:
    return {"position": position, "type": type_, "source": "src", "data": {"amount": amount},
            "event_id": f"e{position}"}


class FakeHandler:
    """Keeps a total and the positions applied; its 'transaction' is the dict update."""

    name = "fake"

    def __init__(self, persisted: int = 0, fail_on: int | None = None) -> None:
        self.persisted = persisted
        self.total = 0
        self.applied: list[int] = []
        self.fail_on = fail_on

    def interested(self, event_type: str) -> bool:
        return event_type == "Added"

    def tracked(self, source: str) -> int:
        return self.persisted

    def apply(self, envelope: dict[str, Any]) -> bool:
        if envelope["position"] == self.fail_on:
            self.fail_on = None
            raise RuntimeError("database went away")
        if envelope["position"] <= self.persisted:
            return False
        self.total += envelope["data"]["amount"]
        self.applied.append(envelope["position"])
        self.persisted = envelope["position"]
        return True


def test_in_order_deliveries_apply_once_each() -> None:
    log = FakeLog([env(1), env(2), env(3)])
    handler = FakeHandler()
    sub = Subscription("src", handler, log)
    for e in log.events:
        sub.deliver(e)
    assert handler.applied == [1, 2, 3]
    assert log.reads == 0


def test_duplicate_delivery_changes_nothing() -> None:
    log = FakeLog([env(1), env(2)])
    handler = FakeHandler()
    sub = Subscription("src", handler, log)
    for e in [env(1), env(2), env(1), env(2), env(2)]:
        sub.deliver(e)
    assert handler.applied == [1, 2]
    assert handler.total == 2


def test_gap_reads_the_source_log_and_later_copies_are_duplicates() -> None:
    log = FakeLog([env(1), env(2, amount=10), env(3, amount=100)])
    handler = FakeHandler()
    sub = Subscription("src", handler, log)
    sub.deliver(env(1))
    sub.deliver(env(3, amount=100))  # 2 was lost or is late
    sub.deliver(env(2, amount=10))
    assert handler.applied == [1, 2, 3]
    assert handler.total == 111
    assert log.reads >= 1


def test_out_of_order_deliveries_end_in_log_order() -> None:
    events = [env(i, amount=i) for i in range(1, 8)]
    log = FakeLog(events)
    handler = FakeHandler()
    sub = Subscription("src", handler, log)
    for e in reversed(events):
        sub.deliver(e)
    assert handler.applied == list(range(1, 8))
    assert handler.total == sum(range(1, 8))


def test_events_it_does_not_handle_advance_the_position_without_an_effect() -> None:
    log = FakeLog([env(1), env(2, "Renamed"), env(3)])
    handler = FakeHandler()
    sub = Subscription("src", handler, log)
    for e in log.events:
        sub.deliver(e)
    assert handler.applied == [1, 3]
    assert sub.position == 3
    assert log.reads == 0


def test_restart_resumes_from_the_persisted_position() -> None:
    log = FakeLog([env(i) for i in range(1, 6)])
    handler = FakeHandler(persisted=3)
    handler.total = 3
    sub = Subscription("src", handler, log)
    sub.deliver(env(2))  # redelivered after the crash: already applied
    sub.deliver(env(5))  # 4 was acked before the crash but never applied here
    assert handler.applied == [4, 5]
    assert handler.total == 5


def test_starting_late_catches_up_from_the_log() -> None:
    log = FakeLog([env(i) for i in range(1, 1201)])
    handler = FakeHandler()
    sub = Subscription("src", handler, log, batch_size=500)
    assert sub.catch_up() == 1200
    assert handler.applied == list(range(1, 1201))


def test_a_failed_apply_is_retried_and_applied_once() -> None:
    log = FakeLog([env(1), env(2), env(3)])
    handler = FakeHandler(fail_on=2)
    sub = Subscription("src", handler, log)
    sub.deliver(env(1))
    with pytest.raises(RuntimeError):
        sub.deliver(env(2))
    sub.deliver(env(2))  # the broker redelivers the requeued message
    sub.deliver(env(3))
    assert handler.applied == [1, 2, 3]


def test_a_stale_message_beyond_the_source_log_is_ignored_not_applied() -> None:
    """A durable queue may still hold messages of an earlier store (data folder wiped)."""
    log = FakeLog([env(1), env(2)])
    handler = FakeHandler()
    sub = Subscription("src", handler, log)
    sub.deliver(env(500, amount=1000))  # from an earlier deployment: not in this log
    assert handler.applied == [1, 2]  # the log was read and applied instead
    assert sub.position == 2
    log.events.append(env(3))
    sub.deliver(env(3))  # real events after it are not mistaken for duplicates
    assert handler.applied == [1, 2, 3]
    assert handler.total == 3


def stored(position: int, store: str, amount: int = 1) -> dict[str, Any]:
    return {**env(position, amount=amount), "store": store}


def test_a_stale_message_at_the_next_position_is_told_apart_by_its_store() -> None:
    """The case positions alone cannot catch: an earlier store's message lands exactly on the
    next position. Its store id differs from the one the source's log holds now."""
    log = FakeLog([stored(1, "new")])
    handler = FakeHandler()
    sub = Subscription("src", handler, log)
    sub.deliver(stored(1, "old", amount=1000))  # waited in the queue since before the wipe
    assert handler.applied == []
    sub.deliver(stored(1, "new"))
    assert handler.applied == [1]
    reads = log.reads
    log.events.append(stored(2, "new"))
    sub.deliver(stored(2, "new"))  # the known store: no need to ask the log again
    assert handler.applied == [1, 2] and log.reads == reads
    assert handler.total == 2


def test_a_recreated_source_store_is_learnt_again() -> None:
    log = FakeLog([stored(1, "first")])
    handler = FakeHandler()
    sub = Subscription("src", handler, log)
    sub.deliver(stored(1, "first"))
    log.events = [stored(1, "second"), stored(2, "second")]  # the source was recreated
    sub.deliver(stored(2, "second"))
    assert handler.applied == [1, 2]


def test_messages_without_a_store_id_and_an_unreachable_source_fall_back_to_positions() -> None:
    def unreachable(source: str, after: int, limit: int) -> list[dict[str, Any]]:
        raise TimeoutError("source is down")

    handler = FakeHandler()
    sub = Subscription("src", handler, unreachable)
    sub.deliver(env(1))
    sub.deliver(stored(2, "any"))
    assert handler.applied == [1, 2]


class FakeBatchHandler(FakeHandler):
    """A read model: takes a run of events in one 'transaction'."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions = 0

    def apply_batch(self, envelopes: list[dict[str, Any]], conn: Any = None) -> int:
        self.transactions += 1
        return sum(1 for e in envelopes if self.interested(e["type"]) and self.apply(e))


def test_a_batch_that_follows_on_is_applied_in_one_transaction() -> None:
    log = FakeLog([env(i) for i in range(1, 7)])
    handler = FakeBatchHandler()
    sub = Subscription("src", handler, log)
    sub.deliver_many(log.events[:4])
    assert handler.applied == [1, 2, 3, 4] and handler.transactions == 1
    sub.deliver_many([env(3), env(4)])  # redelivered: nothing happens
    assert handler.applied == [1, 2, 3, 4]
    sub.deliver_many([env(6), env(5)])  # a gap first: repaired from the log, in order
    assert handler.applied == [1, 2, 3, 4, 5, 6]
    assert sub.position == 6


def test_a_batch_with_a_stale_message_applies_the_run_before_it_only() -> None:
    log = FakeLog([stored(1, "now"), stored(2, "now")])
    handler = FakeBatchHandler()
    sub = Subscription("src", handler, log)
    sub.deliver_many([stored(1, "now"), stored(2, "before", amount=50), stored(2, "now")])
    assert handler.applied == [1, 2]
    assert handler.total == 2


class _Model(ReadModel):
    name = "seen"

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def handlers(self) -> dict[str, dict[str, Any]]:
        def record(rows: Any, envelope: dict[str, Any]) -> None:
            self.seen.append(envelope["data"])

        return {"own": {"Named": record}, "other": {"Named": record}}


def test_another_services_text_reaches_a_read_model_without_nul() -> None:
    # PostgreSQL text cannot hold NUL: one such foreign event must not stall the read model.
    model = _Model()
    handlers = projection_handlers(model, engine=None, own="own")  # type: ignore[arg-type]
    data = {"name": "Li\x00ly", "family": [{"name": "A\x00"}], "n": 1}

    handlers["other"].handlers["Named"](None, {"data": data})  # type: ignore[arg-type]
    handlers["other"].handlers["Named"](None, {"data": {"name": "Lily"}})  # type: ignore[arg-type]
    handlers["own"].handlers["Named"](None, {"data": data})  # type: ignore[arg-type]

    assert model.seen == [{"name": "Lily", "family": [{"name": "A"}], "n": 1}, {"name": "Lily"},
                          data]  # the service's own events: its contracts refused NUL already
    assert data["name"] == "Li\x00ly"  # the event itself is left as it was


def test_sync_applies_what_the_source_committed_before_the_call() -> None:
    log = FakeLog([env(1), env(2)])
    handler = FakeHandler()
    sub = Subscription("src", handler, log)
    sub.deliver(env(1))
    assert sub.sync() == 1  # 2 is committed but not delivered yet
    assert handler.applied == [1, 2]
    log.events.append(env(3))
    assert sub.sync() == 1  # a later call reads again: nothing is taken as fresh for good
    assert handler.applied == [1, 2, 3]


def test_syncs_waiting_behind_a_running_one_share_the_next_read() -> None:
    import threading

    reading, release = threading.Event(), threading.Event()
    events = [env(1)]
    reads: list[int] = []

    def slow_log(source: str, after: int, limit: int) -> list[dict[str, Any]]:
        reads.append(after)
        if len(reads) == 1:
            reading.set()
            release.wait(5)
        return [e for e in events if e["position"] > after][:limit]

    handler = FakeHandler()
    sub = Subscription("src", handler, slow_log)
    issued = threading.Semaphore(0)

    class Tickets:
        """The subscription's counter, telling the test each number it hands out."""

        def __init__(self) -> None:
            self.number, self.lock = 0, threading.Lock()

        def __next__(self) -> int:
            with self.lock:
                self.number += 1
                issued.release()
                return self.number

    sub._tickets = Tickets()  # type: ignore[assignment]
    first = threading.Thread(target=sub.sync)
    first.start()
    assert reading.wait(5)
    events.append(env(2))  # committed while the first read runs: the first may miss it
    waiting = [threading.Thread(target=sub.sync) for _ in range(3)]
    for thread in waiting:
        thread.start()
    for _ in range(5):  # the first's arrival and start, then the three arrivals
        assert issued.acquire(timeout=5)
    release.set()
    for thread in (first, *waiting):
        thread.join(5)
    assert handler.applied == [1, 2]
    assert len(reads) == 2  # the first read, then one for the three that waited
