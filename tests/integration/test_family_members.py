"""Family members of a resident's master account (manual "Add/Edit/Delete Family Members"),
through accounts' application fed by topology's real events: three free accounts, the fourth
refused until an Additional App is paid for; a reset frees them again and a delete does not; the
email stays; each has a unique SIP number; only the APT's installer (or a property manager of
its community) reaches them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from concierge import context
from contracts.accounts import FREE_FAMILY_MEMBERS
from contracts.errors import Forbidden, Invalid, NotFound, PaymentRequired
from tests.integration.test_accounts_service import INSTALLER, OTHER_INSTALLER, RESIDENT, Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    opened = Stack(tmp_path)
    yield opened
    opened.close()


def installer(installer_id: str = INSTALLER) -> Any:
    return context.acting({"actor": "installer:luna", "role": "installer",
                           "account_id": installer_id, "installer_id": installer_id})


def an_apartment(stack: Stack) -> str:
    apartment = stack.topology.add_apartment(INSTALLER, "101", RESIDENT)
    stack.deliver_all()
    return apartment


def kid(n: int) -> dict[str, Any]:
    return {"first_name": f"Kid{n}", "last_name": "Green", "email": f"kid{n}@example.com"}


def test_three_are_free_and_the_fourth_needs_an_additional_app(stack: Stack) -> None:
    apartment = an_apartment(stack)
    with installer():
        added = [stack.accounts.add_family_member(apartment, kid(n))
                 for n in range(FREE_FAMILY_MEMBERS)]
        with pytest.raises(PaymentRequired) as caught:
            stack.accounts.add_family_member(apartment, kid(9))
        assert "Additional App" in caught.value.detail
        listed = stack.accounts.list_family_members(apartment)
    assert [m["email"] for m in listed["items"]] == [f"kid{n}@example.com" for n in range(3)]
    assert listed["free_left"] == 0
    sips = [m["sip"] for m in added]
    assert len(set(sips)) == 3 and all(s.startswith("58") and len(s) == 10 for s in sips)


def test_a_delete_keeps_the_free_account_used_and_a_reset_frees_them(stack: Stack) -> None:
    apartment = an_apartment(stack)
    with installer():
        first = stack.accounts.add_family_member(apartment, kid(0))
        stack.accounts.remove_family_member(first["id"])
        assert stack.accounts.list_family_members(apartment) == {
            "items": [], "total": 0, "free_left": FREE_FAMILY_MEMBERS - 1}
        for n in range(1, FREE_FAMILY_MEMBERS):
            stack.accounts.add_family_member(apartment, kid(n))
        with pytest.raises(PaymentRequired):  # "it charges after deleting"
            stack.accounts.add_family_member(apartment, kid(8))
        with pytest.raises(NotFound):
            stack.accounts.get_family_member(first["id"])
    stack.topology.reset(apartment)
    stack.deliver_all()
    with installer():
        assert stack.accounts.list_family_members(apartment)["items"] == []
        for n in range(FREE_FAMILY_MEMBERS):  # "free to create ... after resetting"
            stack.accounts.add_family_member(apartment, kid(10 + n))


def test_names_and_mobile_change_the_email_does_not(stack: Stack) -> None:
    apartment = an_apartment(stack)
    with installer():
        member = stack.accounts.add_family_member(apartment, {**kid(0), "mobile": "5550199"})
        edited = stack.accounts.edit_family_member(member["id"], {"first_name": "Kim",
                                                                  "mobile": None})
        assert (edited["first_name"], edited["mobile"], edited["email"]) == (
            "Kim", None, "kid0@example.com")
        for bad, field in (({"email": "new@example.com"}, "email"),
                           ({"first_name": ""}, "first_name"), ({"mobile": "x1"}, "mobile")):
            with pytest.raises(Invalid) as caught:
                stack.accounts.edit_family_member(member["id"], bad)
            assert list(caught.value.errors) == [field]
        with pytest.raises(Invalid) as caught:
            stack.accounts.add_family_member(apartment, {"first_name": "A"})
        assert set(caught.value.errors) == {"last_name", "email"}


def test_nothing_personal_of_a_family_member_is_published(stack: Stack) -> None:
    apartment = an_apartment(stack)
    with installer():
        member = stack.accounts.add_family_member(apartment, {**kid(0), "mobile": "5550199"})
    published = str(stack.wiring.read_log(0, 1000))
    assert member["id"] in published and member["sip"] in published
    assert "kid0@example.com" not in published and "5550199" not in published


def test_only_the_apt_s_installer_or_its_community_s_manager_reaches_them(stack: Stack) -> None:
    apartment = an_apartment(stack)
    with installer():
        member = stack.accounts.add_family_member(apartment, kid(0))
    community = str(stack.master_account(apartment).community_id)
    with installer(OTHER_INSTALLER):
        for act in (lambda: stack.accounts.list_family_members(apartment),
                    lambda: stack.accounts.add_family_member(apartment, kid(1)),
                    lambda: stack.accounts.get_family_member(member["id"]),
                    lambda: stack.accounts.remove_family_member(member["id"])):
            with pytest.raises(NotFound):
                act()
    manager = {"actor": "property_manager:pm", "role": "property_manager",
               "installer_id": INSTALLER}
    with context.acting({**manager, "communities": {"other": {"delete_account": True}}}), \
            pytest.raises(NotFound):
        stack.accounts.get_family_member(member["id"])
    with context.acting({**manager, "communities": {community: {"delete_account": False}}}):
        assert stack.accounts.get_family_member(member["id"])["email"] == "kid0@example.com"
        with pytest.raises(Forbidden):
            stack.accounts.remove_family_member(member["id"])
    with context.acting({"actor": "distributor:root", "role": "distributor"}), \
            pytest.raises(Forbidden):
        stack.accounts.list_family_members(apartment)


def test_a_reset_or_a_delete_leaves_nothing_of_the_tenant_in_accounts(stack: Stack) -> None:
    from concierge.rebuild import rebuild

    apartment = an_apartment(stack)
    with installer():
        stack.accounts.add_family_member(apartment, {**kid(0), "mobile": "5550199"})
    notes = stack.accounts.recorder.select_notifications(1, 100_000)
    raw = b"".join(bytes(n.state) for n in notes)
    gone = ("lily@example.com", "kid0@example.com", "5550199")
    assert not any(s.encode() in raw for s in (*gone, "Lily", "Kid0"))  # sealed from the start
    assert "lily@example.com" in str(stack.wiring.read_log(0, 1000))  # open while it lives

    stack.topology.reset(apartment)
    stack.deliver_all()
    account = stack.master_account(apartment)
    assert (account.email, account.first_name, account.family) == (None, "Lily", {})
    told = str(stack.wiring.read_log(0, 1000))  # what a replay would publish
    assert not any(s in told for s in gone)
    rebuild(stack.wiring)
    assert stack.accounts.views is not None
    row = stack.accounts.views.master_account(apartment)
    assert row is not None and (row["email"], row["first_name"]) == (None, "Lily")
    again = stack.accounts.repository.get(account.id)  # from its events, as after a restart
    assert (again.email, again.first_name, again.last_name) == (None, "Lily", "Green")

    stack.topology.delete(apartment)
    stack.deliver_all()
    assert not any(s in str(stack.wiring.read_log(0, 1000)) for s in ("Lily", "Green"))
