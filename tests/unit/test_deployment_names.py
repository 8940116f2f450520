"""One setting names a deployment: its exchanges, queues, schemas, lock keys and connections."""

from __future__ import annotations

from typing import Any

import pytest

from concierge.bus import events_exchange, subscription_queue
from concierge.config import Settings
from concierge.projection import advisory_key
from concierge.rpc import AtMostOnceRpcConsumer, ReplyListener, StandaloneReplyListener


def test_without_a_deployment_name_every_name_is_what_it_always_was() -> None:
    settings = Settings.from_env({})
    assert settings.amqp_prefix == "" and settings.schema_prefix == ""
    assert settings.nameko_config()["rpc_exchange"] == "nameko-rpc"
    assert events_exchange("topology", settings.amqp_prefix).name == "topology.events"
    queue = subscription_queue("accounts", "topology", settings.amqp_prefix)
    assert (queue.name, queue.exchange.name) == ("concierge.accounts--topology",
                                                 "topology.events")
    assert advisory_key("topology_sites", settings.lock_namespace) == advisory_key(
        "topology_sites")
    assert settings.application_name("topology") == "concierge-topology"


def test_a_deployment_name_prefixes_the_broker_names_schemas_and_lock_keys() -> None:
    settings = Settings.from_env({"CONCIERGE_DEPLOYMENT": "blue"})
    assert settings.schema_for("topology") == "blue_topology"
    assert settings.nameko_config()["rpc_exchange"] == "blue.nameko-rpc"
    queue = subscription_queue("accounts", "topology", settings.amqp_prefix)
    assert (queue.name, queue.exchange.name) == ("blue.concierge.accounts--topology",
                                                 "blue.topology.events")
    assert advisory_key("topology_sites", settings.lock_namespace) != advisory_key(
        "topology_sites")
    assert settings.application_name("topology") == "concierge-blue-topology"


def test_an_explicit_schema_prefix_wins_over_the_deployment_name() -> None:
    settings = Settings.from_env({"CONCIERGE_DEPLOYMENT": "blue",
                                  "CONCIERGE_SCHEMA_PREFIX": "legacy_"})
    assert settings.schema_for("notify") == "legacy_notify"
    assert settings.amqp_prefix == "blue."
    # The locks guard the tables: deployments sharing schemas share their locks.
    assert settings.lock_namespace == "legacy_"


@pytest.mark.parametrize("name", ["Blue", "blue-eu", "1blue", "a" * 31, "blue.eu"])
def test_a_deployment_name_that_cannot_name_a_schema_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="CONCIERGE_DEPLOYMENT"):
        Settings.from_env({"CONCIERGE_DEPLOYMENT": name})


def test_a_pool_of_one_connection_is_refused() -> None:
    assert Settings.from_env({"CONCIERGE_DB_POOL_SIZE": "4"}).db_pool_size == 4
    with pytest.raises(ValueError, match="CONCIERGE_DB_POOL_SIZE"):
        Settings.from_env({"CONCIERGE_DB_POOL_SIZE": "1"})


class FakeQueueConsumer:
    def __init__(self) -> None:
        self.providers: list[Any] = []

    def register_provider(self, provider: Any) -> None:
        self.providers.append(provider)


class FakeContainer:
    service_name = "gateway"

    def __init__(self, settings: Settings) -> None:
        self.config = settings.nameko_config()


@pytest.mark.parametrize("cls", [ReplyListener, AtMostOnceRpcConsumer])
def test_nameko_rpc_queues_carry_the_prefix(cls: type) -> None:
    extension = cls()
    extension.container = FakeContainer(Settings(deployment="blue"))
    extension.queue_consumer = FakeQueueConsumer()
    extension.setup()
    assert extension.queue.name.startswith("blue.rpc")
    assert extension.queue.exchange.name == "blue.nameko-rpc"
    assert extension.queue_consumer.providers == [extension]


def test_a_standalone_proxy_reply_queue_carries_the_prefix() -> None:
    listener = StandaloneReplyListener(timeout=1)
    listener.container = FakeContainer(Settings(deployment="blue"))
    listener.queue_consumer = FakeQueueConsumer()
    listener.setup()
    assert listener.queue.name.startswith("blue.rpc.reply-gateway-")
