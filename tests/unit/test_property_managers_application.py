# ruff: noqa: F811 - the fixtures imported below are the parameters of the tests
"""Property managers through the accounts application on a real SQLite store: made by an
installer on its own communities, logged in with the emailed password, scoped by the communities
and permissions their principal carries; edited, listed, reset and deleted."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from contracts.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from services.accounts.application import AccountsApplication
from tests.unit.test_accounts_application import (  # noqa: F401 - fixtures and helpers
    app,
    clock,
    create_installer,
    wiring,
)
from tests.unit.test_sub_installers_application import as_installer, new_sub

SEASIDE, HILLSIDE, FOREIGN = (str(uuid.uuid4()) for _ in range(3))


@pytest.fixture(autouse=True)
def topology(app: AccountsApplication) -> None:
    """Topology as accounts asks it: the installer owns Seaside and Hillside, not Foreign."""
    app.unknown_communities = lambda ids: [i for i in ids if i not in (SEASIDE, HILLSIDE)]


def payload(**changes: Any) -> dict[str, Any]:
    return {"first_name": "Pat", "last_name": "Lee", "email": "Pat.Lee@example.com",
            "communities": [{"community_id": SEASIDE, "log_access_control": True}], **changes}


def new_manager(app: AccountsApplication, installer_id: str, **changes: Any
                ) -> tuple[dict[str, Any], str]:
    with as_installer(installer_id):
        manager = app.create_property_manager(payload(**changes))
    password = app.reveal_password(manager["id"], 1)
    assert password is not None
    return manager, password


def test_a_property_manager_logs_in_with_its_email_scoped_to_its_communities(
        app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    manager, password = new_manager(app, installer_id)
    assert manager["communities"] == [{"community_id": SEASIDE, "app": True,
                                       "delete_account": False, "log_access_control": True}]
    assert (manager["language"], manager["two_factor"], manager["password_reminder"]) == (
        "en", False, False)
    session = app.login("pat.lee@example.com", password)
    assert session["role"] == "property_manager"
    assert app.authenticate(session["token"]) == {
        "account_id": manager["id"], "role": "property_manager",
        "username": "pat.lee@example.com", "installer_id": installer_id,
        "communities": {SEASIDE: {"app": True, "delete_account": False,
                                  "log_access_control": True}}}


def test_only_the_installer_s_own_communities_are_assigned(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    with as_installer(installer_id), pytest.raises(Invalid) as caught:
        app.create_property_manager(payload(communities=[{"community_id": SEASIDE},
                                                         {"community_id": FOREIGN}]))
    assert list(caught.value.errors) == ["communities"] and FOREIGN in caught.value.detail
    for bad in ([], [{"community_id": SEASIDE}, {"community_id": SEASIDE}],
                [{"community_id": "nope"}]):
        with as_installer(installer_id), pytest.raises(Invalid) as caught:
            app.create_property_manager(payload(communities=bad))
        assert list(caught.value.errors) == ["communities"]


def test_an_edit_changes_the_scope_of_its_next_session(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    manager, password = new_manager(app, installer_id)
    with as_installer(installer_id):
        edited = app.edit_property_manager(manager["id"], {
            "last_name": "Li", "communities": [{"community_id": HILLSIDE,
                                                "delete_account": True}]})
        assert (edited["first_name"], edited["last_name"]) == ("Pat", "Li")
        with pytest.raises(Invalid):
            app.edit_property_manager(manager["id"], {"email": "other@example.com"})
        with pytest.raises(Invalid):
            app.edit_property_manager(manager["id"], {"communities": [
                {"community_id": FOREIGN}]})
    token = app.login("pat.lee@example.com", password)["token"]
    assert app.authenticate(token)["communities"] == {
        HILLSIDE: {"app": True, "delete_account": True, "log_access_control": False}}


def test_the_list_searches_and_filters_by_community(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    new_manager(app, installer_id)
    new_manager(app, installer_id, first_name="Ann", last_name="Bo", email="ann@example.com",
                communities=[{"community_id": HILLSIDE}, {"community_id": SEASIDE}])
    with as_installer(installer_id):
        listed = app.list_property_managers({"sort": "name"})
        assert [m["first_name"] for m in listed["items"]] == ["Ann", "Pat"]
        assert app.list_property_managers({"q": "LEE"})["total"] == 1
        only = app.list_property_managers({"community_id": HILLSIDE})
        assert [m["email"] for m in only["items"]] == ["ann@example.com"]
        assert app.list_property_managers({"community_id": SEASIDE})["total"] == 2


def test_an_email_in_use_is_a_conflict_naming_it(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    new_manager(app, installer_id)
    with as_installer(installer_id), pytest.raises(Conflict) as caught:
        app.create_property_manager(payload(email="PAT.LEE@example.com"))
    assert list(caught.value.errors) == ["email"]


def test_a_deleted_property_manager_s_sessions_end(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    manager, password = new_manager(app, installer_id)
    token = app.login("pat.lee@example.com", password)["token"]
    with as_installer(installer_id):
        app.delete_property_manager(manager["id"])
        with pytest.raises(NotFound):
            app.get_property_manager(manager["id"])
        assert app.list_property_managers({})["total"] == 0
    with pytest.raises(Unauthorized):
        app.authenticate(token)


def test_only_its_installer_manages_it(app: AccountsApplication) -> None:
    luna = create_installer(app)
    sol = create_installer(app, "sol")
    manager, _ = new_manager(app, luna)
    sub_id, _ = new_sub(app, luna)
    with as_installer(sol, "sol"):
        with pytest.raises(NotFound):
            app.get_property_manager(manager["id"])
        with pytest.raises(NotFound):
            app.get_property_manager(sub_id)  # a sub-installer is no property manager
        assert app.list_property_managers({})["total"] == 0
    from concierge import context

    with context.acting({"role": "property_manager", "account_id": manager["id"],
                         "installer_id": luna}), pytest.raises(Forbidden):
        app.list_property_managers({})
