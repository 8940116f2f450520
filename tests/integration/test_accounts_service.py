"""Accounts reacting to topology's events, and the accounts service over RabbitMQ + PostgreSQL.

Topology's events come from the real topology aggregates saved in a real event store, turned into
envelopes by the chassis with topology's contract schemas: exactly what topology publishes. The
topology application is written elsewhere, so a small stand-in application records them here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from concierge import context
from concierge.config import Settings
from concierge.contexts import BoundedContext
from concierge.envelope import Publishable, build
from concierge.rpc import rpc
from concierge.runtime import Runtime, ServiceBase
from concierge.storage import store_env
from concierge.store import ServiceApplication
from concierge.subscription import Envelope, LogReader, ProcessHandler, Subscription
from contracts import checked
from contracts import topology as topology_contract
from contracts.errors import Conflict, NotFound, Unauthorized
from services.accounts.application import TOPOLOGY_EVENTS, AccountsApplication
from services.accounts.declaration import CONTEXT as ACCOUNTS
from services.accounts.domain import MasterAccount
from services.accounts.security import Credentials
from services.accounts.service import AccountsService
from services.topology.domain import Community
from tests.support.harness import eventually

CREDENTIALS = Credentials.cheap()
INSTALLER = "5f0c3c52-8a55-4b4e-9a43-6f2f0c1d7e11"
OTHER_INSTALLER = "0d9a3f70-2a4b-4a43-8a5e-1b2c3d4e5f60"
RESIDENT = {"first_name": "Lily", "last_name": "Green", "email": "lily@example.com",
            "mobile": "5550100", "landlines": ["5550101"]}


class TopologyStandIn(ServiceApplication):
    """Topology's event store with topology's real aggregates, standing in for its application."""

    service_name = "topology"

    def add_apartment(self, installer_id: str, number: str, resident: dict[str, Any]) -> str:
        with self.serialised():
            community = Community.create(installer_id=installer_id, **checked(
                topology_contract.CommunityCreate, {"name": "Seaside", "feature_plan": "premium"}))
            building = community.add_building(
                **checked(topology_contract.BuildingCreate, {"name": "Building A"}))
            apartment = building.add_apartment(community, **checked(
                topology_contract.ApartmentCreate, {"number": number, "resident": resident}))
            self.record(community, building, apartment)
        return str(apartment.id)

    def edit_resident(self, apartment_id: str, **changes: Any) -> None:
        with self.serialised():
            apartment = self.repository.get(UUID(apartment_id))
            building = self.repository.get(apartment.building_id)
            community = self.repository.get(apartment.community_id)
            apartment.edit(building, community,
                           **checked(topology_contract.ApartmentEdit, {"resident": changes}))
            self.record(apartment, building)

    def reset(self, apartment_id: str) -> None:
        with self.serialised():
            apartment = self.repository.get(UUID(apartment_id))
            apartment.reset()
            self.record(apartment)

    def delete(self, apartment_id: str) -> None:
        with self.serialised():
            apartment = self.repository.get(UUID(apartment_id))
            building = self.repository.get(apartment.building_id)
            apartment.delete(building)
            self.record(apartment, building)


def topology_log(store: TopologyStandIn) -> LogReader:
    """Topology's `read_log`: its stored events as the envelopes it publishes."""
    publishable = Publishable(topology_contract.EVENT_SCHEMAS)

    def read(source: str, after: int, limit: int) -> list[Envelope]:
        assert source == "topology"
        return [build("topology", r, publishable=publishable) for r in store.read(after, limit)]

    return read


class Stack:
    """Topology's store, the wired accounts application, and accounts' topology subscription."""

    def __init__(self, data_dir: Path) -> None:
        settings = Settings(data_dir=data_dir)
        self.topology = TopologyStandIn(env=store_env("topology", settings))
        self.wiring = ACCOUNTS.wire(settings, credentials=CREDENTIALS)
        app = self.wiring.app
        assert isinstance(app, AccountsApplication)
        self.accounts = app
        self.read_topology = topology_log(self.topology)
        self.subscription = self.subscribe()

    def subscribe(self) -> Subscription:
        handler = ProcessHandler("accounts", self.accounts, set(TOPOLOGY_EVENTS),
                                 self.accounts.on_topology_event, lookups=self.accounts.lookups)
        return Subscription("topology", handler, self.read_topology)

    def published(self, after: int = 0) -> list[Envelope]:
        return self.read_topology("topology", after, 1000)

    def deliver_all(self, after: int = 0) -> None:
        for envelope in self.published(after):
            self.subscription.deliver(envelope)

    def accounts_events(self, after: int = 0) -> list[str]:
        return [e["type"] for e in self.wiring.read_log(after, 1000)]

    def master_account(self, apartment_id: str) -> MasterAccount:
        account = self.accounts.repository.get(MasterAccount.id_for_apartment(apartment_id))
        assert isinstance(account, MasterAccount)
        return account

    def close(self) -> None:
        self.wiring.close()
        self.topology.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    opened = Stack(tmp_path)
    yield opened
    opened.close()


# --- the policy on topology's events (SQLite, no broker) -----------------------------------


def test_resident_added_creates_one_master_account_even_when_delivered_twice(
        stack: Stack) -> None:
    apartment_id = stack.topology.add_apartment(INSTALLER, "101", RESIDENT)

    stack.deliver_all()
    stack.deliver_all()
    stack.subscribe().catch_up()  # a restarted subscriber reads the log from its position

    assert stack.accounts_events() == ["MasterAccountCreated"]
    assert stack.accounts.get_master_account(apartment_id, INSTALLER) == {
        "id": str(MasterAccount.id_for_apartment(apartment_id)),
        "apartment_id": apartment_id,
        "community_id": str(stack.master_account(apartment_id).community_id),
        "installer_id": INSTALLER,
        "first_name": "Lily",
        "last_name": "Green",
        "email": "lily@example.com",
        "app_status": "unregistered",
    }


def test_a_second_resident_added_for_the_same_apartment_changes_nothing(stack: Stack) -> None:
    # Tracking aside (e.g. a replay from another store), the policy itself is idempotent.
    stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    [added] = [e for e in stack.published() if e["type"] == "ResidentAdded"]
    stack.deliver_all()

    assert stack.accounts.on_topology_event(added) == []


def test_a_batch_looks_its_master_accounts_up_together(stack: Stack) -> None:
    first = stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    second = stack.topology.add_apartment(INSTALLER, "102", RESIDENT)
    published = stack.published()
    malformed = {**published[0], "type": "ResidentAdded", "stream_id": "not-a-uuid"}
    other = {**published[0], "type": "BuildingAdded"}

    assert stack.accounts.lookups([*published, malformed, other]) == [
        MasterAccount.id_for_apartment(e["stream_id"]) for e in published
        if e["type"] in TOPOLOGY_EVENTS]
    assert MasterAccount.id_for_apartment(first) in stack.accounts.lookups(published)

    stack.subscription.deliver_many(published)  # one unit, the lookups checked first

    assert stack.accounts_events() == ["MasterAccountCreated", "MasterAccountCreated"]
    assert stack.master_account(second).apartment_id == UUID(second)


def test_a_lost_delivery_is_read_from_topology_log(stack: Stack) -> None:
    apartment_id = stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    stack.topology.edit_resident(apartment_id, last_name="Brown")

    stack.subscription.deliver(stack.published()[-1])  # only the last event arrives

    account = stack.master_account(apartment_id)
    assert (account.first_name, account.last_name) == ("Lily", "Brown")


def test_resident_edited_updates_the_contact_only_when_it_changes(stack: Stack) -> None:
    apartment_id = stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    stack.deliver_all()
    seen = stack.topology.max_position()

    stack.topology.edit_resident(apartment_id, mobile="5550199")
    stack.topology.edit_resident(apartment_id, email="lily.green@example.com", first_name="Lil")
    stack.deliver_all(seen)

    assert stack.accounts_events() == ["MasterAccountCreated", "MasterAccountContactChanged"]
    row = stack.accounts.get_master_account(apartment_id, INSTALLER)
    assert (row["first_name"], row["last_name"], row["email"]) == (
        "Lil", "Green", "lily.green@example.com")


def test_apartment_reset_unregisters_the_app_and_keeps_the_names(stack: Stack) -> None:
    apartment_id = stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    stack.deliver_all()
    account = stack.master_account(apartment_id)
    account.register(CREDENTIALS.hash_password("app-password"))
    account.add_family_member("fm-1")
    account.add_family_member("fm-2")
    stack.accounts.record(account)
    before = stack.accounts.max_position()
    seen = stack.topology.max_position()

    stack.topology.reset(apartment_id)
    stack.deliver_all(seen)
    stack.deliver_all(seen)

    # One reset and nothing else: no event here for notify to send an email about.
    assert stack.accounts_events(before) == ["MasterAccountReset"]
    account = stack.master_account(apartment_id)
    assert account.app_status == "unregistered"
    assert account.family_member_ids == []
    assert account.password_hash is None
    assert (account.first_name, account.last_name, account.email) == ("Lily", "Green", None)
    row = stack.accounts.get_master_account(apartment_id, INSTALLER)
    assert (row["first_name"], row["last_name"], row["email"], row["app_status"]) == (
        "Lily", "Green", None, "unregistered")


def test_apartment_deleted_closes_the_master_account_once_even_when_delivered_twice(
        stack: Stack) -> None:
    apartment_id = stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    stack.deliver_all()
    account = stack.master_account(apartment_id)
    account.register(CREDENTIALS.hash_password("app-password"))
    account.add_family_member("fm-1")
    stack.accounts.record(account)
    before = stack.accounts.max_position()
    seen = stack.topology.max_position()

    stack.topology.delete(apartment_id)
    stack.deliver_all(seen)
    stack.deliver_all(seen)
    stack.subscribe().catch_up()
    [deleted] = [e for e in stack.published(seen) if e["type"] == "ApartmentDeleted"]
    stack.accounts.record(*stack.accounts.on_topology_event(deleted))  # past the tracking too

    assert stack.accounts_events(before) == ["MasterAccountClosed"]
    [closed] = stack.wiring.read_log(before, 10)
    assert closed["data"] == {"apartment_id": apartment_id, "removed_family_member_ids": ["fm-1"],
                              "resets": 0}
    account = stack.master_account(apartment_id)
    assert (account.closed, account.family_member_ids, account.password_hash) == (True, [], None)
    # The app account no longer exists for the portal.
    with pytest.raises(NotFound):
        stack.accounts.get_master_account(apartment_id, INSTALLER)


def test_events_that_arrive_after_the_close_change_nothing(stack: Stack) -> None:
    # E.g. an operator's replay of an older store: the tracking does not stop them.
    apartment_id = stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    stack.topology.edit_resident(apartment_id, email="lily.green@example.com")
    stack.topology.reset(apartment_id)
    stack.topology.delete(apartment_id)
    stack.deliver_all()
    before = stack.accounts.max_position()

    for envelope in stack.published():
        stack.accounts.record(*stack.accounts.on_topology_event(envelope))

    assert stack.accounts.max_position() == before
    assert stack.accounts_events() == ["MasterAccountCreated", "MasterAccountContactChanged",
                                       "MasterAccountReset", "MasterAccountClosed"]


def test_the_contact_change_carries_what_notify_needs(stack: Stack) -> None:
    apartment_id = stack.topology.add_apartment(INSTALLER, "101", {**RESIDENT, "email": None})
    stack.deliver_all()
    seen = stack.topology.max_position()

    stack.topology.edit_resident(apartment_id, email="lily@example.com")
    stack.deliver_all(seen)

    changed = stack.wiring.read_log(0, 10)[-1]
    assert changed["type"] == "MasterAccountContactChanged"
    assert changed["data"] == {
        "first_name": "Lily", "last_name": "Green", "email": "lily@example.com",
        "previous_email": None, "apartment_id": apartment_id, "installer_id": INSTALLER,
        "app_status": "unregistered", "resets": 0,
    }


def test_a_master_account_is_visible_only_to_its_installer(stack: Stack) -> None:
    apartment_id = stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    stack.deliver_all()

    for installer_id in (OTHER_INSTALLER, None, "not-an-id"):
        with pytest.raises(NotFound):
            stack.accounts.get_master_account(apartment_id, installer_id)
    with pytest.raises(NotFound):
        stack.accounts.get_master_account(str(UUID(int=7)), INSTALLER)


def test_events_for_an_apartment_without_master_account_are_skipped(stack: Stack) -> None:
    # Accounts came up after the apartment was added and its events were never delivered.
    apartment_id = stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    stack.topology.reset(apartment_id)
    reset = stack.published()[-1]

    assert reset["type"] == "ApartmentReset"
    assert stack.accounts.on_topology_event(reset) == []



def test_a_resident_accounts_refuses_is_logged_and_skipped(stack: Stack) -> None:
    # Topology checks the same rules, so this should not happen; if it does, the stream goes on.
    stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    [added] = [e for e in stack.published() if e["type"] == "ResidentAdded"]
    refused = {**added, "stream_id": str(UUID(int=9)),
               "data": {**added["data"], "apartment_id": str(UUID(int=9)), "email": "not-mail"}}

    assert stack.accounts.on_topology_event(refused) == []

# --- the service over RabbitMQ and PostgreSQL ----------------------------------------------


TOPOLOGY_STAND_IN = BoundedContext(
    name="topology",
    service=f"{__name__}:TopologyStandInService",
    application=TopologyStandIn,
    event_schemas=topology_contract.EVENT_SCHEMAS,
)


class TopologyStandInService(ServiceBase):
    name = "topology"
    runtime = Runtime(TOPOLOGY_STAND_IN.wire)

    @rpc
    def add_apartment(self, installer_id: str, number: str, resident: dict[str, Any]) -> str:
        with context.acting({"actor": f"installer:{installer_id}"}):
            return self.runtime.app.add_apartment(installer_id, number, resident)

    @rpc
    def reset(self, apartment_id: str) -> None:
        self.runtime.app.reset(apartment_id)


def test_the_accounts_service_over_rabbitmq_and_postgresql(
        stack_factory: Any, services_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCIERGE_PASSWORD_HASH", "fast")
    settings = replace(stack_factory("rabbit-postgres"),
                       bootstrap_distributor="root:root-password")
    services = services_factory(settings, ["accounts", "topology"])
    services.start(AccountsService)
    services.start(TopologyStandInService)

    with services.rpc() as proxy:
        with pytest.raises(Unauthorized) as wrong:
            proxy.accounts.login({"username": "root", "password": "nope"})
        with pytest.raises(Unauthorized) as unknown:
            proxy.accounts.login({"username": "nobody", "password": "root-password"})
        assert wrong.value.detail == unknown.value.detail

        root = proxy.accounts.login({"username": "root", "password": "root-password"})
        principal = proxy.accounts.authenticate(root["token"])
        assert (principal["role"], principal["installer_id"]) == ("distributor", None)
        distributor_ctx = {"actor": "distributor:root", "role": "distributor",
                           "account_id": principal["account_id"], "installer_id": None}
        installer_id = proxy.accounts.create_installer(
            distributor_ctx,
            {"username": "luna", "password": "luna-password", "email": "luna@example.com"})
        with pytest.raises(Conflict) as taken:
            proxy.accounts.create_installer(
                distributor_ctx,
                {"username": "LUNA", "password": "luna-password", "email": "l@example.com"})
        assert list(taken.value.errors) == ["username"]

        session = proxy.accounts.login({"username": "luna", "password": "luna-password"})
        luna = proxy.accounts.authenticate(session["token"])
        assert luna["installer_id"] == installer_id
        luna_ctx = {"actor": "installer:luna", "role": "installer",
                    "account_id": installer_id, "installer_id": installer_id}

        apartment_id = proxy.topology.add_apartment(installer_id, "101", RESIDENT)

        def master_account() -> dict[str, Any] | None:
            try:
                return proxy.accounts.get_master_account(luna_ctx, apartment_id)
            except NotFound:
                return None

        created = eventually(master_account)
        assert (created["first_name"], created["email"], created["app_status"]) == (
            "Lily", "lily@example.com", "unregistered")
        with pytest.raises(NotFound):
            proxy.accounts.get_master_account(distributor_ctx, apartment_id)

        proxy.topology.reset(apartment_id)
        reset = eventually(lambda: (row := master_account()) and row["email"] is None and row)
        assert (reset["first_name"], reset["last_name"], reset["app_status"]) == (
            "Lily", "Green", "unregistered")

        proxy.accounts.logout(session["token"])
        with pytest.raises(Unauthorized):
            proxy.accounts.authenticate(session["token"])
