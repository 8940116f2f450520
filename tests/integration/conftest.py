"""Stacks for integration tests: embedded, RabbitMQ + SQLite, RabbitMQ + PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from nameko.runners import ServiceRunner

from concierge import transport
from concierge.config import EMBEDDED_AMQP_URI, Settings
from concierge.contexts import stored_contexts
from concierge.rpc import ClusterRpcProxy
from tests.support.harness import reset_bus

STACKS = ["embedded", "rabbit-sqlite", "rabbit-postgres"]
BROKER_STACKS = ["rabbit-sqlite", "rabbit-postgres"]


def make_settings(kind: str, request: pytest.FixtureRequest, data_dir: Path,
                  schema_prefix: str) -> Settings:
    amqp = EMBEDDED_AMQP_URI
    database = ""
    if kind.startswith("rabbit"):
        amqp = request.getfixturevalue("rabbit_uri")
    if kind.endswith("postgres"):
        database = request.getfixturevalue("postgres_url")
    if kind == "embedded":
        transport.reset()
    # A deployment of its own per test (named after its schemas): concurrent test runs on one
    # broker never meet each other's queues, exchanges or lock keys.
    return Settings(data_dir=data_dir, amqp_uri=amqp, database_url=database,
                    deployment=schema_prefix.rstrip("_"), schema_prefix=schema_prefix,
                    relay_idle_seconds=0.2)


# Every service the integration tests run: the declared contexts, and the chassis's toy ones.
TEST_SERVICES = [*stored_contexts(), "ledger", "tally"]


@pytest.fixture
def stack_factory(request: pytest.FixtureRequest, data_dir: Path,
                  schema_prefix: str) -> Iterator[Callable[[str], Settings]]:
    made: list[Settings] = []

    def make(kind: str) -> Settings:
        made.append(make_settings(kind, request, data_dir, schema_prefix))
        return made[-1]

    yield make
    # The test's deployment leaves no exchange or queue on the broker.
    for settings in made:
        reset_bus(settings.amqp_uri, TEST_SERVICES, settings.amqp_prefix)


class Services:
    """Starts nameko services in this process, one runner each, and stops them all at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runners: dict[str, ServiceRunner] = {}
        self._cluster: Any = None
        self._proxy: Any = None

    @property
    def config(self) -> dict[str, Any]:
        return {**self.settings.nameko_config(), "CONCIERGE_SETTINGS": self.settings}

    def start(self, cls: type, key: str | None = None) -> ServiceRunner:
        runner = ServiceRunner(self.config)
        runner.add_service(cls)
        runner.start()
        self.runners[key or cls.name] = runner
        return runner

    def stop(self, key: str) -> None:
        self.runners.pop(key).stop()

    def kill(self, key: str) -> None:
        self.runners.pop(key).kill()

    def runtime(self, key: str) -> Any:
        runner = self.runners[key]
        container = next(iter(runner.containers))
        return next(d for d in container.dependencies if hasattr(d, "runner")).wiring

    @contextmanager
    def rpc(self) -> Iterator[Any]:
        # One proxy per test: each new proxy leaves a reply queue on the broker for minutes.
        if self._proxy is None:
            self._cluster = ClusterRpcProxy(self.settings.nameko_config(), timeout=30)
            self._proxy = self._cluster.start()
        yield self._proxy

    def stop_all(self) -> None:
        for key in list(self.runners):
            self.runners.pop(key).stop()
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = self._proxy = None


@pytest.fixture
def services_factory() -> Iterator[Callable[[Settings, list[str]], Services]]:
    created: list[tuple[Services, list[str]]] = []

    def make(settings: Settings, names: list[str]) -> Services:
        reset_bus(settings.amqp_uri, names, settings.amqp_prefix)
        services = Services(settings)
        created.append((services, names))
        return services

    yield make
    for services, names in created:
        services.stop_all()
        # Durable queues outlive the test: left behind, a subscriber's queue keeps filling from
        # whatever publishes to its source later (a benchmark's half a million messages once).
        reset_bus(services.settings.amqp_uri, names, services.settings.amqp_prefix)


@pytest.fixture
def opened() -> Iterator[Callable[[Any], Any]]:
    """Wirings a test opens itself (an operator's view of a store) are closed afterwards."""
    wirings: list[Any] = []

    def track(wiring: Any) -> Any:
        wirings.append(wiring)
        return wiring

    yield track
    for wiring in wirings:
        wiring.close()
