"""The relay writes its confirmed position lazily; a crash before the write re-publishes, never
skips. Runs on the real broker and PostgreSQL, and on the in-process bus with SQLite."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import kombu
import pytest

from concierge.bus import exchange_name, make_publisher
from concierge.config import Settings
from concierge.locks import leader_lock
from concierge.relay import OutboxRelay
from concierge.runtime import Wiring, open_store
from tests.support.toy import LedgerApp


def _relay(settings: Settings, app: Any, engine: Any, save_seconds: float) -> OutboxRelay:
    return OutboxRelay("ledger", app, engine,
                       publisher_factory=lambda: make_publisher(settings.amqp_uri, "ledger",
                                                                settings.amqp_prefix),
                       lock=leader_lock("ledger", settings, engine), save_seconds=save_seconds)


def _saved(relay: OutboxRelay) -> int:
    relay._position = None  # read what the database holds
    return relay.position()


@pytest.mark.parametrize("kind", ["rabbit-postgres"])
def test_position_is_saved_lazily_and_a_crash_repeats_but_never_skips(
        kind: str, stack_factory: Any, tmp_path: Path) -> None:
    settings = stack_factory(kind)
    app, engine = open_store("ledger", settings, LedgerApp)
    wiring = Wiring("ledger", settings, app, engine)
    with kombu.Connection(settings.amqp_uri) as conn:
        queue = kombu.Queue(f"{settings.amqp_prefix}test.relay-lazy", exchange=kombu.Exchange(
            exchange_name("ledger", settings.amqp_prefix), type="topic", durable=True),
            routing_key="#", auto_delete=False, durable=False)
        queue(conn.default_channel).declare()
        queue(conn.default_channel).purge()
    try:
        counter = app.create("lazy")
        first = _relay(settings, app, engine, save_seconds=3600)
        assert first.lock.acquire()
        first._saved_at = time.monotonic()  # as if it had just saved
        for _ in range(4):
            app.increment(counter)
        assert first.publish_pending() == 5
        assert first.position() == 5          # confirmed in memory
        assert _saved(first) == 0             # ... not yet written: a crash now repeats 1-5
        # The crash: the lock goes, a new relay starts from the saved position.
        first.lock.release()
        first._drop_publisher()
        second = _relay(settings, app, engine, save_seconds=0)
        assert second.lock.acquire()
        app.increment(counter)
        assert second.publish_pending() == 6  # 1-5 again, then 6
        assert _saved(second) == 6            # save_seconds=0: written after each batch
        second.save_position()
        second.lock.release()
        second._drop_publisher()

        received: list[int] = []
        with kombu.Connection(settings.amqp_uri) as conn:
            bound = queue(conn.default_channel)
            while (message := bound.get(no_ack=True)) is not None:
                received.append(json.loads(message.body)["position"])
            bound.delete()
        assert sorted(set(received)) == [1, 2, 3, 4, 5, 6]
        assert len(received) == 11            # at least once: the repeat is visible
    finally:
        wiring.close()


def _drain(queue: Any, amqp_uri: str) -> list[int]:
    received: list[int] = []
    with kombu.Connection(amqp_uri) as conn:
        bound = queue(conn.default_channel)
        while (message := bound.get(no_ack=True)) is not None:
            received.append(json.loads(message.body)["position"])
    return received


@pytest.mark.parametrize("kind", ["rabbit-sqlite", "rabbit-postgres"])
def test_records_handed_over_by_a_commit_go_out_without_a_read_and_a_gap_is_read(
        kind: str, stack_factory: Any) -> None:
    settings = stack_factory(kind)
    app, engine = open_store("ledger", settings, LedgerApp)
    # Another replica on the same store: its commits are never handed to this relay.
    other, other_engine = open_store("ledger", settings, LedgerApp)
    wiring = Wiring("ledger", settings, app, engine)
    queue = kombu.Queue(f"{settings.amqp_prefix}test.relay-handover", exchange=kombu.Exchange(
        exchange_name("ledger", settings.amqp_prefix), type="topic", durable=True), routing_key="#",
        auto_delete=False, durable=False)
    with kombu.Connection(settings.amqp_uri) as conn:
        queue(conn.default_channel).declare()
        queue(conn.default_channel).purge()
    relay = _relay(settings, app, engine, save_seconds=0)
    reads: list[int] = []
    read = app.read

    def counting_read(after: int = 0, limit: int = 1000) -> Any:
        reads.append(after)
        return read(after, limit)

    app.read = counting_read  # type: ignore[method-assign]
    try:
        assert relay.lock.acquire()
        counter = app.create("handed")       # before the relay knew its position: from the log
        assert relay.publish_pending() == 1
        assert reads == [0, 1]               # read it, then found the end
        reads.clear()

        for _ in range(3):
            app.increment(counter)           # handed over, one commit at a time
        assert relay.publish_pending() == 3
        assert reads == []                   # nothing read back: the commits handed them over

        other.increment(counter)             # position 5, committed by the other replica
        app.increment(counter)               # position 6, handed over: a gap before it
        assert relay.publish_pending() == 2
        assert reads and reads[0] == 4       # the gap sent the relay to the log
        assert relay.position() == 6

        relay.lock.release()                 # standing by: commits are not kept for later
        relay._position = None
        app.increment(counter)
        assert relay._handed == []

        received = _drain(queue, settings.amqp_uri)
        assert received == [1, 2, 3, 4, 5, 6]  # in log order, each once
    finally:
        relay._drop_publisher()
        with kombu.Connection(settings.amqp_uri) as conn:
            queue(conn.default_channel).delete()
        other.close()
        other_engine.dispose()
        wiring.close()
