"""The first cross-service flow with the real services: topology -> accounts -> notify.

Adding a resident with an email makes topology publish `ResidentAdded`; accounts creates the
master account (app status unregistered); notify queues and sends one activation email (the mail
folder of the embedded default and of these tests). `ApartmentReset` reaches accounts the same way
and sends no email; `ApartmentDeleted` closes the master account; an email added to the resident
later gets its one activation email. Every test ends by asserting the final state.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from concierge.rebuild import SourceUnavailable, rebuild
from services.accounts.declaration import CONTEXT as ACCOUNTS
from services.accounts.domain import MasterAccount
from services.accounts.service import AccountsService
from services.devices.service import DevicesService
from services.notify.service import NotifyService
from services.topology.declaration import CONTEXT as TOPOLOGY
from services.topology.service import TopologyService
from tests.integration.conftest import BROKER_STACKS, STACKS
from tests.support.harness import ROOT, ServiceProcess, eventually, settings_env

SERVICES = ["topology", "accounts", "notify", "devices"]


def installer_ctx() -> dict[str, Any]:
    return {"actor": "installer:luna", "installer_id": str(uuid.uuid4()), "role": "installer",
            "correlation_id": str(uuid.uuid4())}


def mails(settings: Any) -> list[Path]:
    folder = Path(settings.data_dir) / "mail"
    return sorted(folder.glob("*.eml")) if folder.exists() else []


def start_flow(kind: str, stack_factory: Any, services_factory: Any,
               classes: tuple[type, ...] = (TopologyService, AccountsService, NotifyService,
                                            DevicesService),
               ) -> tuple[Any, Any]:
    """The settings of a fresh stack and its services, started in this process."""
    settings = stack_factory(kind)
    services = services_factory(settings, SERVICES)
    for cls in classes:
        services.start(cls)
    return settings, services


def setup_building(rpc: Any, ctx: dict[str, Any]) -> str:
    community = rpc.topology.create_community(
        ctx, {"name": "Sunrise Court", "feature_plan": "premium", "time_zone": "Europe/Paris"})
    return rpc.topology.add_building(ctx, community["id"], {"name": "A"})["id"]


def add_resident(rpc: Any, ctx: dict[str, Any], building: str, number: str,
                 email: str | None = None) -> str:
    resident: dict[str, Any] = {"first_name": "Ann", "last_name": f"Lee {number}"}
    if email:
        resident["email"] = email
    payload = {"number": number, "floor": 1, "name": f"APT {number}", "resident": resident}
    return rpc.topology.add_apartment(ctx, building, payload)["id"]


def status_of(rpc: Any, ctx: dict[str, Any], apartment: str) -> str | None:
    try:
        return rpc.accounts.get_master_account(ctx, apartment)["app_status"]
    except Exception:
        return None


@pytest.mark.parametrize("kind", STACKS)
def test_a_resident_with_an_email_gets_an_account_and_one_activation_email(
        kind: str, stack_factory: Any, services_factory: Any) -> None:
    settings, services = start_flow(kind, stack_factory, services_factory)
    ctx = installer_ctx()
    with services.rpc() as rpc:
        building = setup_building(rpc, ctx)
        apartment = add_resident(rpc, ctx, building, "101", "ann@example.org")
        no_email = add_resident(rpc, ctx, building, "102")
        eventually(lambda: status_of(rpc, ctx, apartment) == "unregistered")
        eventually(lambda: status_of(rpc, ctx, no_email) == "unregistered")
        eventually(lambda: len(mails(settings)) == 1)
        message = message_from_bytes(mails(settings)[0].read_bytes())
        assert message["To"].endswith("ann@example.org")
        assert message.is_multipart()
        # The resident list shows the account's status (a projection of accounts' events).
        page = rpc.topology.list_residents(ctx, rpc.topology.get_building(
            ctx, building)["community_id"], {"q": "Lee 101"})
        assert [item["app_status"] for item in page["items"]] == ["unregistered"]


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_the_same_events_delivered_twice_create_one_account_and_one_email(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    settings, services = start_flow(kind, stack_factory, services_factory)
    ctx = installer_ctx()
    with services.rpc() as rpc:
        building = setup_building(rpc, ctx)
        apartments = [add_resident(rpc, ctx, building, str(100 + i), f"r{i}@example.org")
                      for i in range(5)]
        eventually(lambda: len(mails(settings)) == 5)
        # An operator replays topology's whole stream, and accounts' too: every event again.
        assert opened(TOPOLOGY.wire(settings)).relay.replay(0) > 0
        assert opened(ACCOUNTS.wire(settings)).relay.replay(0) > 0
        marker = add_resident(rpc, ctx, building, "999", "marker@example.org")
        eventually(lambda: len(mails(settings)) == 6)
        eventually(lambda: status_of(rpc, ctx, marker) == "unregistered")
        assert all(status_of(rpc, ctx, a) == "unregistered" for a in apartments)
    accounts = opened(ACCOUNTS.wire(settings))
    created = [r for r in accounts.app.iter_log() if r.type == "MasterAccountCreated"]
    assert len(created) == 6
    assert len(mails(settings)) == 6


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_accounts_killed_mid_stream_ends_in_the_same_state(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    settings = stack_factory(kind)
    services = services_factory(settings, SERVICES)
    services.start(TopologyService)
    services.start(NotifyService)
    accounts = ServiceProcess(["services.accounts.service:AccountsService"], settings)
    accounts.start()
    ctx = installer_ctx()
    try:
        with services.rpc() as rpc:
            building = setup_building(rpc, ctx)
            apartments = [add_resident(rpc, ctx, building, str(1000 + i), f"k{i}@example.org")
                          for i in range(40)]
            eventually(lambda: status_of(rpc, ctx, apartments[2]) == "unregistered")
            accounts.kill()  # SIGKILL mid-stream
            # Events published while accounts is down wait in its queue.
            apartments += [add_resident(rpc, ctx, building, str(2000 + i), f"d{i}@example.org")
                           for i in range(20)]
            accounts.start()
            eventually(lambda: all(status_of(rpc, ctx, a) == "unregistered"
                                   for a in apartments), timeout=120)
            eventually(lambda: len(mails(settings)) == 60, timeout=120)
    finally:
        accounts.stop()
    store = opened(ACCOUNTS.wire(settings))
    created = [r for r in store.app.iter_log() if r.type == "MasterAccountCreated"]
    assert len(created) == 60
    assert len({r.stream_id for r in created}) == 60


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_apartment_reset_reaches_accounts_and_sends_no_email(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    settings, services = start_flow(kind, stack_factory, services_factory)
    ctx = installer_ctx()
    with services.rpc() as rpc:
        building = setup_building(rpc, ctx)
        apartment = add_resident(rpc, ctx, building, "301", "reset@example.org")
        eventually(lambda: len(mails(settings)) == 1)
        eventually(lambda: status_of(rpc, ctx, apartment) == "unregistered")
        reset = rpc.topology.reset_apartment(ctx, apartment)
        assert reset["resident"]["email"] in (None, "")
        assert reset["resident"]["first_name"] == "Ann"

        def account_reset() -> bool:
            account = rpc.accounts.get_master_account(ctx, apartment)
            return account["email"] is None and account["app_status"] == "unregistered"

        eventually(account_reset)

        def history() -> list[dict[str, Any]]:
            return rpc.topology.apartment_history(ctx, apartment, {"per_page": 100})["items"]

        # Devices wiped the APT's credentials for the reset, and the APT's history says so.
        eventually(lambda: history()[-1]["type"] == "ApartmentCredentialsWiped")
        reset_entry = history()[-2]
        assert (reset_entry["type"], reset_entry["actor"]) == ("ApartmentReset",
                                                               "installer:luna")
    store = opened(ACCOUNTS.wire(settings))
    assert [r.type for r in store.app.iter_log()].count("MasterAccountReset") == 1
    assert len(mails(settings)) == 1  # nobody is emailed about a reset


def recipients(settings: Any) -> list[str]:
    return sorted(message_from_bytes(path.read_bytes())["To"] for path in mails(settings))


def community_of(rpc: Any, ctx: dict[str, Any], building: str) -> str:
    return rpc.topology.get_building(ctx, building)["community_id"]


def replay_everything(settings: Any, opened: Any) -> None:
    """An operator re-publishes topology's and accounts' whole logs: every event a second time."""
    assert opened(TOPOLOGY.wire(settings)).relay.replay(0) > 0
    assert opened(ACCOUNTS.wire(settings)).relay.replay(0) > 0


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_a_deleted_apartment_closes_its_master_account_once(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    settings, services = start_flow(kind, stack_factory, services_factory)
    ctx = installer_ctx()
    with services.rpc() as rpc:
        building = setup_building(rpc, ctx)
        community = community_of(rpc, ctx, building)
        apartment = add_resident(rpc, ctx, building, "401", "gone@example.org")
        kept = add_resident(rpc, ctx, building, "402")
        eventually(lambda: status_of(rpc, ctx, apartment) == "unregistered")
        # A family member joins the account (accounts has no entrypoint for it yet).
        operator = opened(ACCOUNTS.wire(settings))
        account = operator.app.repository.get(MasterAccount.id_for_apartment(apartment))
        account.add_family_member("fm-1")
        operator.app.record(account)

        def end_users() -> int:
            return rpc.topology.get_community(ctx, community)["resident_count"]

        eventually(lambda: end_users() == 2 + 1)
        # Sent before the close: one still pending would be cancelled by it, never sent.
        eventually(lambda: len(mails(settings)) == 1)
        rpc.topology.delete_apartment(ctx, apartment)
        eventually(lambda: status_of(rpc, ctx, apartment) is None)
        replay_everything(settings, opened)  # ApartmentDeleted and MasterAccountClosed again
        marker = add_resident(rpc, ctx, building, "999", "marker@example.org")
        eventually(lambda: len(mails(settings)) == 2)
        eventually(lambda: end_users() == 2)  # 402 and the marker: no family member left
        assert status_of(rpc, ctx, kept) == "unregistered"
        assert status_of(rpc, ctx, marker) == "unregistered"
        page = rpc.topology.list_residents(ctx, community, {})
        assert sorted(item["number"] for item in page["items"]) == ["402", "999"]
        assert rpc.topology.dashboard(ctx)["app_accounts"] == {"registered": 0,
                                                               "unregistered": 2}
    store = opened(ACCOUNTS.wire(settings))
    closed = [r for r in store.app.iter_log() if r.type == "MasterAccountClosed"]
    assert [r.stream_id for r in closed] == [str(MasterAccount.id_for_apartment(apartment))]
    assert closed[0].state["removed_family_member_ids"] == ["fm-1"]
    assert recipients(settings) == ["gone@example.org", "marker@example.org"]  # none for a close


@pytest.mark.parametrize("kind", BROKER_STACKS)
def test_an_email_added_later_gets_one_activation_email(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    settings, services = start_flow(kind, stack_factory, services_factory)
    ctx = installer_ctx()
    with services.rpc() as rpc:
        building = setup_building(rpc, ctx)
        apartment = add_resident(rpc, ctx, building, "501")  # no email yet
        eventually(lambda: status_of(rpc, ctx, apartment) == "unregistered")
        assert mails(settings) == []

        def edit(resident: dict[str, Any]) -> None:
            rpc.topology.edit_apartment(ctx, apartment, {"resident": resident})

        edit({"email": "late@example.org"})
        eventually(lambda: len(mails(settings)) == 1)
        edit({"first_name": "Anna"})  # the same address again, with the new name
        replay_everything(settings, opened)
        marker = add_resident(rpc, ctx, building, "999", "marker@example.org")
        eventually(lambda: len(mails(settings)) == 2)
        eventually(lambda: status_of(rpc, ctx, marker) == "unregistered")
        account = rpc.accounts.get_master_account(ctx, apartment)
        assert (account["first_name"], account["email"]) == ("Anna", "late@example.org")
        # Still unregistered: another address gets its own activation email.
        edit({"email": "later@example.org"})
        eventually(lambda: len(mails(settings)) == 3)
    store = opened(ACCOUNTS.wire(settings))
    changes = [r.type for r in store.app.iter_log() if r.type == "MasterAccountContactChanged"]
    assert len(changes) == 3
    assert recipients(settings) == ["late@example.org", "later@example.org",
                                    "marker@example.org"]


@pytest.mark.parametrize("kind", ["rabbit-postgres"])
def test_topology_read_models_rebuild_to_the_same_rows(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    settings, services = start_flow(kind, stack_factory, services_factory,
                                    (TopologyService, AccountsService, DevicesService))
    ctx = installer_ctx()
    with services.rpc() as rpc:
        building = setup_building(rpc, ctx)
        for i in range(12):
            add_resident(rpc, ctx, building, str(500 + i), f"b{i}@example.org")
        community = rpc.topology.get_building(ctx, building)["community_id"]
        eventually(lambda: all(item["master_account_id"] for item in rpc.topology.list_residents(
            ctx, community, {"per_page": 100})["items"]))
        before = rpc.topology.list_residents(ctx, community, {"per_page": 100})
        dashboard = rpc.topology.dashboard(ctx)
        operator = opened(TOPOLOGY.wire(settings))
        assert rebuild(operator) > 0
        assert rpc.topology.list_residents(ctx, community, {"per_page": 100}) == before
        assert rpc.topology.dashboard(ctx) == dashboard


@pytest.mark.parametrize("kind", ["rabbit-postgres"])
def test_a_rebuild_without_accounts_says_so_and_a_second_one_finishes(
        kind: str, stack_factory: Any, services_factory: Any, opened: Any) -> None:
    """Topology's resident list is fed by accounts' log, read over RPC: with accounts down an
    operator gets a clear error naming it (no traceback), and a rebuild once it is back ends
    with the same rows as before."""
    settings, services = start_flow(kind, stack_factory, services_factory,
                                    (TopologyService, AccountsService, DevicesService))
    ctx = installer_ctx()
    with services.rpc() as rpc:
        building = setup_building(rpc, ctx)
        for i in range(3):
            add_resident(rpc, ctx, building, str(600 + i), f"c{i}@example.org")
        community = community_of(rpc, ctx, building)
        eventually(lambda: all(item["master_account_id"] for item in rpc.topology.list_residents(
            ctx, community, {"per_page": 100})["items"]))
        before = rpc.topology.list_residents(ctx, community, {"per_page": 100})
        services.stop("accounts")

        with pytest.raises(SourceUnavailable) as raised:
            rebuild(opened(TOPOLOGY.wire(settings)))
        assert raised.value.source == "accounts"
        concierge = str(Path(sys.executable).with_name("concierge"))
        done = subprocess.run([concierge, "rebuild", "topology"], env=settings_env(settings),
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        assert "could not read the log of accounts" in done.stderr
        assert "Is the accounts service running?" in done.stderr
        assert "Traceback" not in done.stderr

        services.start(AccountsService)
        assert rebuild(opened(TOPOLOGY.wire(settings))) > 0
        assert rpc.topology.list_residents(ctx, community, {"per_page": 100}) == before
