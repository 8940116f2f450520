"""Two replicas of topology on one database and broker, as the README's distributed mode allows:
concurrent writes neither deadlock the replicas nor reach the caller as false conflicts.

Each replica is its own `concierge run topology` process beside accounts, notify and the
gateway, so locks are taken exactly as in production: per process in memory, across processes
in PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.cluster import Platform
from contracts import checked
from contracts.topology import ApartmentCreate
from tests.support.harness import eventually, free_port

pytestmark = [pytest.mark.broker, pytest.mark.postgres]




@pytest.fixture(scope="module")
def replicated(rabbit_uri: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Platform]:
    data_dir: Path = tmp_path_factory.mktemp("replicas") / "var"
    platform = Platform(rabbit_uri, postgres_url, data_dir, free_port(),
                        services=("accounts", "topology", "topology", "devices", "notify",
                                  "gateway"))
    platform.start()
    yield platform
    platform.stop()


def apartment(number: str, email: str) -> dict[str, Any]:
    return {"number": number, "floor": 1, "name": f"APT {number}",
            "resident": {"first_name": "Ann", "last_name": "Lee", "email": email}}


def in_parallel(count: int, work: Any) -> list[Any]:
    results: list[Any] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        for outcome in work(k):
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_apartments_in_one_building_all_succeed_on_two_replicas(
        replicated: Platform) -> None:
    """Distinct APT numbers never conflict: a replica that loses the race on the building
    retries inside the service. Residents with emails send accounts' events back to both
    replicas' read models while they commit (the interleaving that deadlocked them)."""
    token = replicated.installer_session(f"inst{uuid.uuid4().hex[:8]}")
    community_id, building_id = replicated.community_with_building(
        token, f"Replicas {uuid.uuid4().hex[:6]}")

    def client(k: int) -> Iterator[tuple[int, Any]]:
        for i in range(25):
            number = f"{k + 1}{i:02d}"
            status, body = replicated.call(
                "POST", f"/api/v1/buildings/{building_id}/apartments",
                apartment(number, f"r{number}@example.org"), token)
            yield status, (body or {}).get("detail")

    results = in_parallel(4, client)
    assert Counter(status for status, _ in results) == {201: 100}, Counter(results)
    status, residents = replicated.call(
        "GET", f"/api/v1/communities/{community_id}/residents?per_page=1", token=token)
    assert status == 200 and residents["total"] == 100
    status, building = replicated.call("GET", f"/api/v1/buildings/{building_id}", token=token)
    assert status == 200 and building["apartment_count"] == 100


def test_identical_creates_on_two_replicas_make_one_apartment_and_real_conflicts(
        replicated: Platform) -> None:
    """Twenty identical creates: one 201, and nineteen 409s that name the APT number (the
    domain's refusal, not a lost race), and the replicas still answer afterwards."""
    token = replicated.installer_session(f"inst{uuid.uuid4().hex[:8]}")
    community_id, building_id = replicated.community_with_building(
        token, f"Replicas {uuid.uuid4().hex[:6]}")

    def client(_k: int) -> Iterator[tuple[int, tuple[str, ...]]]:
        status, body = replicated.call("POST", f"/api/v1/buildings/{building_id}/apartments",
                                       apartment("501", "same@example.org"), token)
        yield status, tuple(sorted((body or {}).get("errors") or {}))

    results = in_parallel(20, client)
    assert Counter(results) == {(201, ()): 1, (409, ("number",)): 19}, Counter(results)
    for number in ("502", "503"):  # no replica is stuck
        status, _ = replicated.call("POST", f"/api/v1/buildings/{building_id}/apartments",
                                    apartment(number, f"r{number}@example.org"), token)
        assert status == 201
    status, residents = replicated.call(
        "GET", f"/api/v1/communities/{community_id}/residents?per_page=1", token=token)
    assert status == 200 and residents["total"] == 3


# --- a replica that lost a race locks first ---------------------------------------------------


@pytest.fixture
def two_wirings(postgres_url: str, data_dir: Path, schema_prefix: str) -> Iterator[Any]:
    from concierge.config import Settings
    from services.topology.declaration import CONTEXT

    settings = Settings(data_dir=data_dir, database_url=postgres_url,
                        schema_prefix=schema_prefix)
    one = CONTEXT.wire(settings)
    two = CONTEXT.wire(settings)
    yield one, two
    one.close()
    two.close()


def test_a_replica_that_lost_a_race_runs_its_units_under_the_events_lock(
        two_wirings: Any) -> None:
    """While contended, a unit holds the events table's lock from before its parts load
    their aggregates: the other replica's write to the same building waits for it (and then
    retries), so this unit's parts run once. Without the lock they ran twice."""
    from concierge import context, green

    one, two = two_wirings
    installer = str(uuid.uuid4())
    acting = {"actor": "installer:luna", "installer_id": installer, "role": "installer"}
    with context.acting(acting):
        community = one.app.create_community({"name": "Seaside", "feature_plan": "premium"})
        building_id = one.app.add_building(community, {"name": "A"})
    one.app._contended_until = float("inf")  # as after a lost race
    runs: list[int] = []
    loaded = green.Wakeup()
    release = green.Wakeup()

    def slow_add() -> Any:
        with context.acting(acting):
            def part() -> tuple[str, list[Any]]:
                runs.append(1)
                building, community_ = one.app._building_and_community(building_id)
                loaded.set()
                release.wait(10, 0)
                apartment = building.add_apartment(community_, **checked(
                    ApartmentCreate, {"number": "101", "resident": _resident("101")}))
                return str(apartment.id), [building, apartment]

            return one.app.execute(part)

    def other_add() -> Any:
        with context.acting(acting):
            return two.app.add_apartment(building_id, {"number": "102",
                                                       "resident": _resident("102")})

    first = green.spawn(slow_add)
    loaded.wait(10, 0)
    second = green.spawn(other_add)
    green.sleep(0.3)  # the other replica reaches the events lock and waits there
    release.set()
    ids = {first.wait(), second.wait()}

    assert runs == [1]
    with context.acting(acting):
        numbers = sorted(one.app.get_apartment(i)["number"] for i in ids)
        assert numbers == ["101", "102"]
        assert two.app.get_building(building_id)["apartment_count"] == 2


def _resident(number: str) -> dict[str, Any]:
    return {"first_name": "Ann", "last_name": f"Lee{number}", "email": f"r{number}@example.org"}


# --- one consumer at a time on a subscription queue -------------------------------------------


@pytest.mark.parametrize("declared_before", [False, True])
def test_replicas_sharing_a_subscription_queue_take_turns_not_events(
        rabbit_uri: str, declared_before: bool) -> None:
    """Replicas of a subscriber share its queue, but one consumes every event (RabbitMQ's
    single active consumer): round-robin, each saw every other event as a gap and read the
    source's log to fill it. A queue an earlier release declared without that argument is
    declared anew."""
    import kombu

    from concierge import green
    from concierge.bus import ConsumerLoop, encode, exchange_name, subscription_queue

    prefix = f"t{uuid.uuid4().hex[:8]}."
    queue = subscription_queue("tally", "ledger", prefix)
    if declared_before:
        with kombu.Connection(rabbit_uri) as conn:
            kombu.Queue(queue.name, exchange=queue.exchange, routing_key="#",
                        durable=True)(conn.channel()).declare()
    received: dict[int, list[int]] = {0: [], 1: []}

    def handler(replica: int) -> Any:
        return lambda batch: received[replica].extend(int(m["position"]) for m in batch)

    loops = [ConsumerLoop(rabbit_uri, queue, handler(i)) for i in (0, 1)]
    try:
        for loop in loops:
            loop.declare()
        threads = [green.spawn(loop.run) for loop in loops]
        eventually(lambda: all(loop.ready for loop in loops))
        with kombu.Connection(rabbit_uri) as conn:
            producer = kombu.Producer(conn.channel())
            for position in range(1, 101):
                producer.publish(encode({"position": position, "type": "CounterIncremented"}),
                                 exchange=exchange_name("ledger", prefix),
                                 routing_key="CounterIncremented",
                                 content_type="application/json")
        eventually(lambda: len(received[0]) + len(received[1]) == 100)
        assert sorted([received[0], received[1]], key=len) == [[], list(range(1, 101))]
    finally:
        for loop in loops:
            loop.stop()
        for thread in threads:
            thread.wait()
        with kombu.Connection(rabbit_uri) as conn:
            channel = conn.channel()
            channel.queue_delete(queue.name)
            channel.exchange_delete(exchange_name("ledger", prefix))
