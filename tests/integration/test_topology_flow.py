"""Topology as a running nameko service: embedded bus, and real RabbitMQ + PostgreSQL.

A fake accounts service publishes app-account events and serves its log, so the Residents list
is proved to follow another service's events from the bus (and its log, when it catches up).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from nameko.rpc import rpc

from concierge.bus import make_publisher
from concierge.rebuild import rebuild
from contracts.errors import Forbidden, Invalid, NotFound
from services.topology.service import TopologyService
from tests.service.test_topology_service import AccountsLog, read_model_rows
from tests.support.harness import eventually

ACCOUNTS = AccountsLog()


class FakeAccountsService:
    """Stands in for accounts: only the log a subscriber reads to catch up."""

    name = "accounts"

    @rpc
    def read_log(self, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        return ACCOUNTS.read("accounts", int(after), int(limit))


class FakeDevicesService:
    """Stands in for devices: a log with no device in it (topology counts devices from it)."""

    name = "devices"

    @rpc
    def read_log(self, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        return []

    @rpc
    def last_position(self) -> int:
        return 0


@pytest.fixture
def accounts() -> Iterator[AccountsLog]:
    ACCOUNTS.events.clear()
    yield ACCOUNTS
    ACCOUNTS.events.clear()


def ctx_of(installer_id: str | None, role: str = "installer") -> dict[str, Any]:
    return {"actor": f"{role}:{installer_id}", "correlation_id": str(uuid.uuid4()),
            "installer_id": installer_id, "role": role}


@pytest.mark.parametrize("kind", ["embedded", "rabbit-postgres"])
def test_an_installer_sets_up_a_community_and_residents_follow_accounts(
        kind: str, stack_factory: Any, services_factory: Any, accounts: AccountsLog) -> None:
    settings = stack_factory(kind)
    services = services_factory(settings, ["topology", "accounts", "devices"])
    services.start(FakeAccountsService)
    services.start(FakeDevicesService)
    services.start(TopologyService)
    luna, mark = ctx_of(str(uuid.uuid4())), ctx_of(str(uuid.uuid4()))

    with services.rpc() as proxy:
        topology = proxy.topology
        community = topology.create_community(luna, {"name": "Seaside",
                                                     "feature_plan": "premium"})["id"]
        # The caller reads its own write at once: no waiting for the bus.
        assert [c["id"] for c in topology.list_communities(luna, {})["items"]] == [community]
        building = topology.add_building(luna, community, {"name": "Building A"})["id"]
        apartment = topology.add_apartment(luna, building, {
            "number": "601", "floor": 6, "name": "Apartment A",
            "resident": {"first_name": "Judy", "last_name": "A", "email": "judy@example.com"},
        })["id"]
        got = topology.get_apartment(luna, apartment)
        [row] = topology.list_residents(luna, community, {"per_page": 10})["items"]
        assert (row["id"], row["app_status"]) == (apartment, "unregistered")

        # Typed errors cross RPC with their field messages.
        with pytest.raises(Invalid) as caught:
            topology.add_apartment(luna, building, {"number": "#1", "resident": {}})
        assert sorted(caught.value.errors) == ["number", "resident"]
        with pytest.raises(Invalid) as caught:
            topology.list_residents(luna, community, {"page": 0})
        assert list(caught.value.errors) == ["page"]
        with pytest.raises(NotFound):
            topology.get_apartment(mark, apartment)
        with pytest.raises(NotFound):
            topology.get_community(luna, "not-an-id")
        with pytest.raises(Forbidden):
            topology.dashboard(ctx_of(None, role="distributor"))

    account = accounts.master_account_created(got)
    registered = accounts.append("MasterAccountRegistered", account)
    publisher = make_publisher(settings.amqp_uri, "accounts", settings.amqp_prefix)
    # Only the second event reaches the bus: the subscriber finds the gap and reads the log.
    publisher.publish_batch([registered])
    publisher.close()

    def registered_now() -> bool:
        with services.rpc() as proxy:
            page = proxy.topology.list_residents(luna, community, {"app_status": "registered"})
        return [r["id"] for r in page["items"]] == [apartment]

    eventually(registered_now)
    with services.rpc() as proxy:
        assert proxy.topology.get_apartment(luna, apartment)["app_status"] == "registered"
        assert proxy.topology.dashboard(luna) == {
            "communities": 1, "buildings": 1, "apartments": 1, "residents": 1, "devices": 0,
            "app_accounts": {"registered": 1, "unregistered": 0},
        }
        history = proxy.topology.apartment_history(luna, apartment)["items"]
        assert [(h["type"], h["actor"]) for h in history] == [
            ("ApartmentAdded", luna["actor"]), ("ResidentAdded", luna["actor"])]

    # An operator drops and rebuilds the read models: the same rows come back. (Each model
    # of accounts' events repairs the gap from the log in its own turn: the sites model may
    # still be at it when the residents list already shows the registration.)
    wiring = services.runtime("topology")
    eventually(lambda: bool(read_model_rows(wiring)["topology_site_accounts"]))
    live = read_model_rows(wiring)
    assert rebuild(wiring) > 0
    assert read_model_rows(wiring) == live
