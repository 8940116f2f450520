"""Writes are safe to retry, and a request is never run after its caller was told it failed.

- An `Idempotency-Key` names a command: the same key and request within 24 h answer the first
  result again and record nothing; the same key with another request is refused (422). The key
  is kept by the service that runs the command, in the transaction of its events, on both
  stores and across replicas.
- RPC requests expire with the gateway's deadline: a request left in a stopped service's queue
  is dropped by the broker, one that reaches a service late is dropped there, and a command
  whose caller's deadline passed before its turn is not run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest

from bench.cluster import Platform
from concierge import context, green, idempotency
from concierge.config import Settings
from concierge.rpc import DEADLINE_HEADER
from concierge.storage import store_env
from services.topology.application import TopologyApplication
from tests.support.harness import eventually, free_port

LUNA = str(uuid.uuid4())
LUNA_ACCOUNT = str(uuid.uuid4())


def as_luna(key: str | None = None, request: Any = None, deadline: float | None = None
            ) -> Any:
    return context.acting({
        "actor": "installer:luna", "installer_id": LUNA, "account_id": LUNA_ACCOUNT,
        "role": "installer", "correlation_id": str(uuid.uuid4()), "idempotency_key": key,
        "request_digest": idempotency.request_digest("POST", "/x", request) if key else None,
        "deadline": deadline})


def community(name: str = "Seaside") -> dict[str, Any]:
    return {"name": name, "feature_plan": "premium"}


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, data_dir: Path, schema_prefix: str) -> Settings:
    database = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    return Settings(data_dir=data_dir, database_url=database, schema_prefix=schema_prefix)


@pytest.fixture
def replicas(settings: Settings) -> Iterator[tuple[TopologyApplication, TopologyApplication]]:
    one = TopologyApplication(env=store_env("topology", settings))
    two = TopologyApplication(env=store_env("topology", settings))
    yield one, two
    one.close()
    two.close()


def created_communities(app: TopologyApplication, after: int = 0) -> int:
    return sum(1 for record in app.read(after) if record.type == "CommunityCreated")


# --- the store keeps the answer with the events ---------------------------------------------


def test_a_retry_with_the_same_key_gets_the_first_answer_and_records_nothing(
        replicas: tuple[TopologyApplication, TopologyApplication]) -> None:
    app, _ = replicas
    with as_luna("key-1", community()):
        first = app.create_community(community())
    position = app.max_position()
    with as_luna("key-1", community()):
        again = app.create_community(community())

    assert again == first
    assert app.max_position() == position
    assert created_communities(app) == 1


def test_the_same_key_with_another_request_is_refused_naming_the_header(
        replicas: tuple[TopologyApplication, TopologyApplication]) -> None:
    app, _ = replicas
    with as_luna("key-2", community()):
        app.create_community(community())
    with pytest.raises(idempotency.KeyReused) as refused, as_luna("key-2",
                                                                  community("Other")):
        app.create_community(community("Other"))

    assert refused.value.status == 422
    assert set(refused.value.errors) == {"Idempotency-Key"}
    assert created_communities(app) == 1


def test_keys_are_the_callers_own_and_requests_without_a_key_are_each_new(
        replicas: tuple[TopologyApplication, TopologyApplication]) -> None:
    app, _ = replicas
    with as_luna("key-3", community()):
        mine = app.create_community(community())
    with context.acting({"actor": "installer:mark", "installer_id": str(uuid.uuid4()),
                         "account_id": str(uuid.uuid4()), "role": "installer",
                         "idempotency_key": "key-3",
                         "request_digest": idempotency.request_digest("POST", "/x",
                                                                      community())}):
        theirs = app.create_community(community())
    with as_luna():
        app.create_community(community())
        app.create_community(community())

    assert mine != theirs
    assert created_communities(app) == 4


def test_a_key_older_than_the_window_names_a_new_request(
        replicas: tuple[TopologyApplication, TopologyApplication],
        monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = replicas
    with as_luna("key-4", community()):
        first = app.create_community(community())
    later = time.time() + idempotency.WINDOW_SECONDS + 1
    monkeypatch.setattr(idempotency.time, "time", lambda: later)
    with as_luna("key-4", community()):
        second = app.create_community(community())
    with as_luna("key-4", community()):
        third = app.create_community(community())

    assert second != first and third == second
    assert created_communities(app) == 2


def test_a_retry_on_another_replica_gets_the_first_answer(
        replicas: tuple[TopologyApplication, TopologyApplication]) -> None:
    one, two = replicas
    with as_luna("key-5", community()):
        first = one.create_community(community())
    with as_luna("key-5", community()):
        assert two.create_community(community()) == first
    assert created_communities(one) == 1


def test_a_retry_racing_its_first_attempt_on_another_replica_records_it_once(
        replicas: tuple[TopologyApplication, TopologyApplication]) -> None:
    """Both attempts run the command; the one that commits second collides on the key, runs
    again and finds the first one's answer."""
    one, two = replicas
    results: list[Any] = []

    def attempt(app: TopologyApplication) -> None:
        with as_luna("key-6", community()):
            results.append(app.create_community(community()))

    threads = [green.spawn(attempt, app) for app in (one, two, one, two)]
    for thread in threads:
        thread.wait()

    assert len(set(results)) == 1 and len(results) == 4
    assert created_communities(one) == 1


def test_an_edit_retried_gets_the_resource_as_the_first_edit_left_it(
        replicas: tuple[TopologyApplication, TopologyApplication]) -> None:
    app, _ = replicas
    with as_luna():
        community_id = app.create_community(community())
    with as_luna("key-7", {"name": "Harbour"}):
        first = app.edit_community(community_id, {"name": "Harbour"})
    with as_luna():
        app.edit_community(community_id, {"name": "Lighthouse"})
    with as_luna("key-7", {"name": "Harbour"}):
        again = app.edit_community(community_id, {"name": "Harbour"})

    assert first["name"] == "Harbour" and again == first
    with as_luna():
        assert app.get_community(community_id)["name"] == "Lighthouse"


def test_a_command_whose_caller_stopped_waiting_is_not_run(
        replicas: tuple[TopologyApplication, TopologyApplication]) -> None:
    app, _ = replicas
    position = app.max_position()
    with pytest.raises(context.Expired), as_luna(deadline=time.time() - 0.01):
        app.create_community(community())
    assert app.max_position() == position


# --- over the gateway, RabbitMQ and PostgreSQL -----------------------------------------------




@pytest.fixture(scope="module")
def platform(rabbit_uri: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Platform]:
    data_dir: Path = tmp_path_factory.mktemp("idempotency") / "var"
    running = Platform(rabbit_uri, postgres_url, data_dir, free_port(),
                       extra_env={"CONCIERGE_GATEWAY_TIMEOUT_SECONDS": "3"})
    running.start()
    yield running
    running.stop()


def call(platform: Platform, method: str, path: str, body: Any = None, token: str | None = None,
         key: str | None = None) -> tuple[int, Any]:
    return platform.call(method, path, body, token,
                         headers={"Idempotency-Key": key} if key else None)


def communities(platform: Platform, token: str) -> list[str]:
    status, page = platform.call("GET", "/api/v1/communities?per_page=100", token=token)
    assert status == 200
    return [item["id"] for item in page["items"]]


def new_installer(platform: Platform) -> str:
    return platform.installer_session(f"inst{uuid.uuid4().hex[:8]}")


def test_every_write_route_answers_a_retry_with_its_first_answer(platform: Platform) -> None:
    token = new_installer(platform)
    body = {"name": "Seaside", "feature_plan": "premium", "time_zone": "Europe/Paris"}
    first = call(platform, "POST", "/api/v1/communities", body, token, key="c-1")
    again = call(platform, "POST", "/api/v1/communities", body, token, key="c-1")
    assert first[0] == again[0] == 201 and first[1] == again[1]
    assert communities(platform, token) == [first[1]["id"]]

    other = call(platform, "POST", "/api/v1/communities", {**body, "name": "Other"}, token,
                 key="c-1")
    assert other[0] == 422 and set(other[1]["errors"]) == {"Idempotency-Key"}

    path = f"/api/v1/communities/{first[1]['id']}"
    edited = call(platform, "PATCH", path, {"name": "Harbour"}, token, key="e-1")
    assert call(platform, "PATCH", path, {"name": "Harbour"}, token, key="e-1") == edited
    assert edited[0] == 200 and edited[1]["name"] == "Harbour"

    assert call(platform, "DELETE", path, token=token, key="d-1")[0] == 204
    assert call(platform, "DELETE", path, token=token, key="d-1")[0] == 204
    assert call(platform, "DELETE", path, token=token, key="d-2")[0] == 404

    bad = call(platform, "POST", "/api/v1/communities", body, token, key="x" * 256)
    assert bad[0] == 422 and set(bad[1]["errors"]) == {"Idempotency-Key"}


def test_a_login_retried_with_its_key_gets_the_same_session(platform: Platform) -> None:
    name = f"inst{uuid.uuid4().hex[:8]}"
    platform.installer_session(name)
    credentials = {"username": name, "password": "installer-pw-1"}
    first = call(platform, "POST", "/api/v1/auth/login", credentials, key="login-1")
    again = call(platform, "POST", "/api/v1/auth/login", credentials, key="login-1")
    fresh = call(platform, "POST", "/api/v1/auth/login", credentials)
    assert first[0] == again[0] == fresh[0] == 200
    assert again[1]["token"] == first[1]["token"] != fresh[1]["token"]


def test_a_create_answered_504_is_never_run_later_and_its_retry_makes_one(
        platform: Platform) -> None:
    """Topology down: the create waits in its queue until the gateway answers 504; the broker
    drops it when the deadline passes, so topology coming back does not run it, and the retry
    with the same key makes exactly one community."""
    token = new_installer(platform)
    body = {"name": "Ghost", "feature_plan": "premium", "time_zone": "Europe/Paris"}
    platform.stop_service("topology")
    try:
        status, problem = call(platform, "POST", "/api/v1/communities", body, token, key="g-1")
        assert status == 504, problem
    finally:
        platform.start_service("topology")
    eventually(lambda: platform.call("GET", "/api/v1/communities", token=token)[0] == 200,
               timeout=60)
    status, made = call(platform, "POST", "/api/v1/communities", body, token, key="g-1")
    assert status == 201
    green.sleep(1.0)  # a request left in the queue would run as soon as topology consumes
    assert communities(platform, token) == [made["id"]]


def test_a_request_that_reaches_a_service_after_its_deadline_is_dropped(
        platform: Platform, rabbit_uri: str) -> None:
    """The broker's expiry covers a request waiting in the queue; one handed to the service
    late (its prefetch, a slow broker) is dropped by the service, by the deadline header."""
    token = new_installer(platform)
    session = _principal(platform, token)
    ctx = {"actor": f"installer:{session['username']}", "role": "installer",
           "installer_id": session["installer_id"], "account_id": session["account_id"],
           "correlation_id": str(uuid.uuid4())}
    payload = {"args": [ctx, {"name": "Late", "feature_plan": "premium"}], "kwargs": {}}
    rpc_exchange = f"{platform.amqp_prefix}nameko-rpc"  # the platform's deployment's
    with kombu.Connection(rabbit_uri) as conn:
        producer = kombu.Producer(conn.default_channel)
        producer.publish(payload, exchange=rpc_exchange, routing_key="topology.create_community",
                         serializer="json", headers={DEADLINE_HEADER: time.time() - 1},
                         reply_to="nobody", correlation_id=str(uuid.uuid4()))
        producer.publish(payload | {"args": [ctx, {"name": "On time",
                                                    "feature_plan": "premium"}]},
                         exchange=rpc_exchange, routing_key="topology.create_community",
                         serializer="json", headers={DEADLINE_HEADER: time.time() + 30},
                         reply_to="nobody", correlation_id=str(uuid.uuid4()))

    def names() -> list[str]:
        _status, page = platform.call("GET", "/api/v1/communities", token=token)
        return [item["name"] for item in page["items"]]

    eventually(lambda: names() == ["On time"], timeout=30)
    green.sleep(0.5)
    assert names() == ["On time"]


def _principal(platform: Platform, token: str) -> dict[str, Any]:
    from nameko.standalone.rpc import ClusterRpcProxy

    config = {"AMQP_URI": platform.env["AMQP_URI"], "serializer": "json",
              "rpc_exchange": f"{platform.amqp_prefix}nameko-rpc"}  # the platform's deployment
    with ClusterRpcProxy(config, timeout=10) as rpc:
        return rpc.accounts.authenticate(token)
