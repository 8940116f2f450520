"""The chassis guarantees, proved on the real broker and databases with the toy services.

Each test ends by asserting the final state: totals equal to what was sent, every event applied
exactly once (the tally keeps the id of each event it applied), read models equal to the log.
"""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from typing import Any

import kombu
import pytest
from nameko.exceptions import IncorrectSignature, MethodNotFound

from concierge import green
from concierge.bus import ConfirmingPublisher, exchange_name, subscription_queue_name
from concierge.rebuild import rebuild
from concierge.runtime import rpc_log_reader
from tests.integration.conftest import BROKER_STACKS, STACKS
from tests.support.harness import ServiceProcess, eventually
from tests.support.toy import (
    SLOW_COMMANDS_STARTED,
    LedgerService,
    TallyService,
    bootstrap_ledger,
    bootstrap_tally,
)


def ledger_and_tally(kind: str, stack_factory: Any, services_factory: Any) -> tuple[Any, Any]:
    """The ledger and the tally running on a stack of `kind`: (its settings, the services)."""
    settings = stack_factory(kind)
    services = services_factory(settings, ["ledger", "tally"])
    services.start(LedgerService)
    services.start(TallyService)
    return settings, services


def tally_is(services: Any, counter_id: str, total: int, seen: int) -> bool:
    with services.rpc() as rpc:
        state = rpc.tally.total(counter_id)
    assert state["unique"] == state["seen"], f"an event was applied twice: {state}"
    return state["total"] == total and state["seen"] == seen


def view_of(services: Any) -> dict[str, tuple[int, int]]:
    with services.rpc() as rpc:
        return {r["id"]: (r["value"], r["increments"]) for r in rpc.tally.view()}


@pytest.mark.parametrize("kind", STACKS)
def test_events_flow_from_one_service_to_another(kind: str, stack_factory: Any,
                                                 services_factory: Any, opened: Any) -> None:
    _, services = ledger_and_tally(kind, stack_factory, services_factory)
    with services.rpc() as rpc:
        counter = rpc.ledger.create("lobby door")
        for _ in range(30):
            rpc.ledger.increment(counter, 2)
    eventually(lambda: tally_is(services, counter, 60, 30))
    eventually(lambda: view_of(services) == {counter: (60, 30)})


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_the_same_events_delivered_again_change_nothing(kind: str, stack_factory: Any,
                                                        services_factory: Any, opened: Any) -> None:
    settings, services = ledger_and_tally(kind, stack_factory, services_factory)
    with services.rpc() as rpc:
        counter = rpc.ledger.create("gate")
        for _ in range(10):
            rpc.ledger.increment(counter, 1)
    eventually(lambda: tally_is(services, counter, 10, 10))

    # An operator replays the whole stream: every event arrives a second time.
    operator = opened(bootstrap_ledger(settings))
    assert operator.relay.replay(0) == 11
    with services.rpc() as rpc:
        rpc.ledger.increment(counter, 5)  # queued behind the replayed copies
    eventually(lambda: tally_is(services, counter, 15, 11))
    eventually(lambda: view_of(services) == {counter: (15, 11)})


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_a_message_that_is_not_an_envelope_is_dropped_and_the_stream_goes_on(
        kind: str, stack_factory: Any, services_factory: Any) -> None:
    settings, services = ledger_and_tally(kind, stack_factory, services_factory)
    with services.rpc() as rpc:
        counter = rpc.ledger.create("bike shed")
        rpc.ledger.increment(counter, 1)
    eventually(lambda: tally_is(services, counter, 1, 1))
    # Someone else publishes to the ledger's exchange: bytes that are not JSON, JSON that is
    # not an object, JSON nested past the parser's depth.
    with kombu.Connection(settings.amqp_uri) as conn:
        producer = conn.Producer()
        for body, content_type in [(b"\xff\xfe not json", "application/octet-stream"),
                                   (b"[1, 2, 3]", "application/json"),
                                   (b"[" * 100_000 + b"]" * 100_000, "application/json")]:
            producer.publish(body, exchange=exchange_name("ledger", settings.amqp_prefix),
                             routing_key="CounterIncremented", content_type=content_type,
                             content_encoding="binary")
    with services.rpc() as rpc:
        for _ in range(5):
            rpc.ledger.increment(counter, 2)
    eventually(lambda: tally_is(services, counter, 11, 6))
    eventually(lambda: view_of(services) == {counter: (11, 6)})
    # Nothing was requeued to come back: the tally's queue drains to empty.
    with kombu.Connection(settings.amqp_uri) as conn:
        queue = kombu.Queue(subscription_queue_name("tally", "ledger", settings.amqp_prefix),
                            no_declare=True)(conn.default_channel)
        eventually(lambda: queue.queue_declare(passive=True).message_count == 0)


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_lost_and_out_of_order_deliveries_are_repaired_from_the_log(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    settings = stack_factory(kind)
    services = services_factory(settings, ["ledger", "tally"])
    # The test holds the ledger's leader lock, so the ledger's own relay never publishes:
    # this test decides what reaches the bus, and in which order.
    outsider = opened(bootstrap_ledger(settings))
    assert outsider.relay.lock.acquire()
    services.start(LedgerService)
    services.start(TallyService)
    with services.rpc() as rpc:
        counter = rpc.ledger.create("garage")
        for i in range(1, 21):
            rpc.ledger.increment(counter, i)
    log = outsider.read_log(0, 100)
    assert len(log) == 21
    shuffled = log[1:]
    random.Random(7).shuffle(shuffled)
    publisher = ConfirmingPublisher(settings.amqp_uri, "ledger", prefix=settings.amqp_prefix)
    publisher.publish_batch(shuffled[:12])  # a third of them are never delivered at all
    publisher.close()
    eventually(lambda: tally_is(services, counter, sum(range(1, 21)), 20))
    eventually(lambda: view_of(services) == {counter: (sum(range(1, 21)), 20)})
    outsider.relay.lock.release()


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_events_published_while_a_subscriber_is_down_are_processed_when_it_returns(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    _, services = ledger_and_tally(kind, stack_factory, services_factory)
    with services.rpc() as rpc:
        counter = rpc.ledger.create("pool")
        rpc.ledger.increment(counter, 1)
    eventually(lambda: tally_is(services, counter, 1, 1))
    services.stop("tally")
    with services.rpc() as rpc:
        for _ in range(25):
            rpc.ledger.increment(counter, 1)
    services.start(TallyService)
    eventually(lambda: tally_is(services, counter, 26, 26))
    eventually(lambda: view_of(services) == {counter: (26, 26)})


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_a_subscriber_killed_mid_stream_ends_in_the_same_state(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    settings = stack_factory(kind)
    services = services_factory(settings, ["ledger", "tally"])
    services.start(LedgerService)
    tally = ServiceProcess(["tests.support.toy:TallyService"], settings)
    tally.start()
    try:
        with services.rpc() as rpc:
            counter = rpc.ledger.create("elevator")
            for _ in range(15):
                rpc.ledger.increment_many(counter, 100)

        def progressed() -> bool:
            with services.rpc() as rpc:
                return rpc.tally.total(counter)["seen"] >= 100

        eventually(progressed)
        tally.kill()  # SIGKILL: no clean shutdown, unacked messages go back to the queue
        with services.rpc() as rpc:
            for _ in range(5):
                rpc.ledger.increment_many(counter, 100)
        tally.start()
        eventually(lambda: tally_is(services, counter, 2000, 2000), timeout=120)
        eventually(lambda: view_of(services) == {counter: (2000, 2000)})
    finally:
        tally.stop()


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_only_one_relay_publishes_and_another_takes_over(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    settings = stack_factory(kind)
    services = services_factory(settings, ["ledger", "tally"])
    with kombu.Connection(settings.amqp_uri) as conn:
        queue = kombu.Queue(f"{settings.amqp_prefix}test.relay-watch", exchange=kombu.Exchange(
            exchange_name("ledger", settings.amqp_prefix), type="topic", durable=True),
            routing_key="#", auto_delete=False, durable=False)
        queue(conn.default_channel).declare()
        queue(conn.default_channel).purge()
    services.start(LedgerService, key="replica-1")
    green.sleep(0.5)
    services.start(LedgerService, key="replica-2")
    # Events are recorded beside the replicas, not through their RPC: this test is about the
    # relay (what a killed replica's RPC does is test_a_command_whose_replica_dies_...).
    writer = opened(bootstrap_ledger(settings)).app
    counter = writer.create("relay")
    for _ in range(20):
        writer.increment(counter, 1)
    relays = [services.runtime(k).relay for k in ("replica-1", "replica-2")]
    eventually(lambda: sum(r.published for r in relays) == 21)
    assert sorted(r.published for r in relays) == [0, 21]
    leader = "replica-1" if relays[0].published else "replica-2"
    follower = "replica-2" if leader == "replica-1" else "replica-1"
    services.kill(leader)
    for _ in range(5):
        writer.increment(counter, 1)
    follower_wiring = services.runtime(follower)
    eventually(lambda: follower_wiring.relay.position() == 26, timeout=60)

    received: list[dict[str, Any]] = []
    with kombu.Connection(settings.amqp_uri) as conn:
        bound = queue(conn.default_channel)
        while (message := bound.get(no_ack=True)) is not None:
            received.append(json.loads(message.body))
        bound.delete()
    # Every ledger the suite creates publishes to this exchange; the envelope names its store.
    ours = follower_wiring.app.store_id()
    positions = sorted({m["position"] for m in received if m["store"] == ours})
    assert positions == list(range(1, 27))  # nothing lost; a takeover may repeat, never skip
    assert follower_wiring.app.max_position() == 26


@pytest.mark.parametrize("kind", ["rabbit-sqlite"])
def test_relay_and_subscribers_survive_a_broker_restart(kind: str, stack_factory: Any,
                                                        services_factory: Any, opened: Any) -> None:
    settings, services = ledger_and_tally(kind, stack_factory, services_factory)
    with services.rpc() as rpc:
        counter = rpc.ledger.create("broker")
        rpc.ledger.increment(counter, 1)
    eventually(lambda: tally_is(services, counter, 1, 1))
    writer = opened(bootstrap_ledger(settings)).app  # writes to the store without the bus
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    try:
        for _ in range(10):
            writer.increment(counter, 1)
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True,
                       timeout=120)
    eventually(lambda: tally_is(services, counter, 11, 11), timeout=120)


@pytest.mark.parametrize("kind", STACKS)
def test_read_models_can_be_dropped_and_rebuilt(kind: str, stack_factory: Any,
                                                services_factory: Any, opened: Any) -> None:
    settings, services = ledger_and_tally(kind, stack_factory, services_factory)
    with services.rpc() as rpc:
        first = rpc.ledger.create("a")
        second = rpc.ledger.create("b")
        for _ in range(7):
            rpc.ledger.increment(first, 3)
        rpc.ledger.increment(second, 4)
    expected = {first: (21, 7), second: (4, 1)}
    eventually(lambda: view_of(services) == expected)
    operator = opened(bootstrap_tally(settings))
    assert rebuild(operator) == 10
    assert view_of(services) == expected


@pytest.mark.parametrize("kind", ["rabbit-postgres"])
def test_a_message_from_an_earlier_store_is_ignored_even_at_the_next_position(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    """A wiped and recreated store starts its positions again; a message the old store left in
    a durable queue may land exactly on the next position. Its store id gives it away."""
    settings = stack_factory(kind)
    services = services_factory(settings, ["ledger", "tally"])
    outsider = opened(bootstrap_ledger(settings))
    assert outsider.relay.lock.acquire()  # this test decides what reaches the bus
    services.start(LedgerService)
    services.start(TallyService)
    with services.rpc() as rpc:
        counter = rpc.ledger.create("attic")
    [created] = outsider.read_log(0, 10)
    assert created["store"] == outsider.app.store_id()
    publisher = ConfirmingPublisher(settings.amqp_uri, "ledger", prefix=settings.amqp_prefix)
    publisher.publish_batch([created])
    with services.rpc() as rpc:
        rpc.ledger.increment(counter, 2)
    [real] = outsider.read_log(1, 10)
    # What an earlier store of the ledger wrote at the same position, still in the queue.
    stale = {**real, "store": "0" * 32, "event_id": str(uuid.uuid4()),
             "data": {**real["data"], "by": 1000}}
    publisher.publish_batch([stale, real])
    publisher.close()
    eventually(lambda: tally_is(services, counter, 2, 1))
    green.sleep(0.5)
    assert tally_is(services, counter, 2, 1)
    outsider.relay.lock.release()


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_the_log_reader_serves_green_threads_reading_at_once(
        kind: str, stack_factory: Any, services_factory: Any) -> None:
    """A service's consumer loops and its startup catch-up share one reader of other services'
    logs; calls that overlap each get their own answer instead of fighting over its socket."""
    settings = stack_factory(kind)
    services = services_factory(settings, ["ledger"])
    services.start(LedgerService)
    with services.rpc() as rpc:
        counter = rpc.ledger.create("boiler room")
        for i in range(1, 6):
            rpc.ledger.increment(counter, i)
    read = rpc_log_reader(settings)
    assert len(read("ledger", 0, 10)) == 6  # the reader is connected before the rush
    threads = [green.spawn(read, "ledger", after, 2) for after in (0, 1, 2, 3, 4) * 4]
    answers = [thread.wait() for thread in threads]
    for after, answer in zip((0, 1, 2, 3, 4) * 4, answers, strict=True):
        assert [env["position"] for env in answer] == [after + 1, after + 2]


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_a_command_whose_replica_dies_is_not_run_again_by_another(
        kind: str, stack_factory: Any, services_factory: Any) -> None:
    """nameko acks a request after its reply, so a replica dying mid-command would hand the
    request to the next replica, which would run the command a second time. Requests are taken
    off the queue when they arrive: the command runs at most once (its caller gets no answer)."""
    settings = stack_factory(kind)
    services = services_factory(settings, ["ledger"])
    services.start(LedgerService, key="replica-1")
    services.start(LedgerService, key="replica-2")
    wirings = {id(services.runtime(k)): k for k in ("replica-1", "replica-2")}
    with services.rpc() as rpc:
        counter = rpc.ledger.create("lift")
        started = len(SLOW_COMMANDS_STARTED)
        rpc.ledger.increment_slowly.call_async(counter, 1.0)
        eventually(lambda: len(SLOW_COMMANDS_STARTED) > started)
        dying = wirings[SLOW_COMMANDS_STARTED[started]]
        survivor = services.runtime("replica-2" if dying == "replica-1" else "replica-1")
        services.kill(dying)
        green.sleep(3.0)  # time for a redelivered request to run to its end on the survivor
        assert SLOW_COMMANDS_STARTED[started:] == [SLOW_COMMANDS_STARTED[started]]
        assert survivor.app.max_position() == 1  # only the counter's creation
        rpc.ledger.increment(counter, 5)  # the survivor still serves new requests
    assert survivor.app.max_position() == 2


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_requests_refused_before_any_work_still_get_their_error(
        kind: str, stack_factory: Any, services_factory: Any) -> None:
    """A request is acked when it arrives; one nameko refuses before running anything (no such
    method, wrong arguments) is answered with its error once, and the service goes on."""
    settings = stack_factory(kind)
    services = services_factory(settings, ["ledger"])
    services.start(LedgerService)
    with services.rpc() as rpc:
        with pytest.raises(MethodNotFound):
            rpc.ledger.no_such_command()
        with pytest.raises(IncorrectSignature):
            rpc.ledger.increment()
        counter = rpc.ledger.create("porch")
        rpc.ledger.increment(counter, 2)
    assert services.runtime("ledger").app.max_position() == 2
