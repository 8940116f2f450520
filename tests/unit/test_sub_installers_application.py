# ruff: noqa: F811 - the fixtures imported below are the parameters of the tests
"""Sub-installers through the accounts application on a real SQLite store: the password made,
sealed and revealed only while it is the login; scoping to the main installer; edit, reset and
delete; nothing secret in what is published."""

from __future__ import annotations

import json
from typing import Any

import pytest

from concierge import context
from concierge.runtime import Wiring
from contracts.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from services.accounts.application import (
    LOGIN_FAILED,
    PASSWORD_ALPHABET,
    AccountsApplication,
    generated_password,
)
from services.accounts.domain import PortalAccount
from tests.unit.test_accounts_application import (  # noqa: F401 - fixtures and helpers
    app,
    clock,
    create_installer,
    published_types,
    wiring,
)


def as_installer(installer_id: str, username: str = "luna") -> Any:
    return context.acting({"actor": f"installer:{username}", "role": "installer",
                           "account_id": installer_id, "installer_id": installer_id})


def new_sub(app: AccountsApplication, installer_id: str, username: str = "lin",
            email: str = "lin@example.com") -> tuple[str, str]:
    """A sub-installer and the password its welcome email would carry."""
    with as_installer(installer_id):
        sub = app.create_sub_installer({"username": username, "email": email, "phone": "123"})
    password = app.reveal_password(sub["id"], 1)
    assert password is not None
    return sub["id"], password


def test_the_made_password_logs_in_to_the_main_installer_s_data(
        app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    sub_id, password = new_sub(app, installer_id)
    session = app.login("lin", password)
    assert session["role"] == "sub_installer"
    assert app.authenticate(session["token"]) == {
        "account_id": sub_id, "role": "sub_installer", "username": "lin",
        "installer_id": installer_id}


def test_several_sub_installers_are_logged_in_at_once(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    sub_id, password = new_sub(app, installer_id)
    other_id, other_password = new_sub(app, installer_id, "kim", "kim@example.com")
    tokens = [app.login("lin", password)["token"], app.login("kim", other_password)["token"],
              app.login("luna", "luna-password")["token"]]
    assert [app.authenticate(t)["installer_id"] for t in tokens] == [installer_id] * 3
    assert {app.authenticate(t)["account_id"] for t in tokens} == {sub_id, other_id,
                                                                   installer_id}


def test_a_used_password_is_revealed_no_more(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    sub_id, password = new_sub(app, installer_id)
    assert app.reveal_password(sub_id, 2) is None  # not issued
    assert app.reveal_password(sub_id, "1") is None  # an issue is a number
    app.login("lin", password)
    assert app.reveal_password(sub_id, 1) is None  # it reached its owner: the key is gone


def test_nothing_published_or_answered_holds_the_password(wiring: Wiring,
                                                          app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    with as_installer(installer_id):
        answer = app.create_sub_installer({"username": "lin", "email": "lin@example.com"})
    password = app.reveal_password(answer["id"], 1)
    assert password and password not in json.dumps(answer)
    published = json.dumps(wiring.read_log(0, 1000), default=str)
    assert password not in published
    assert "password_sealed" not in published and "password_subject" not in published
    assert published_types(wiring)[-2:] == ["PortalAccountCreated", "PasswordIssued"]


def test_only_the_main_installer_manages_sub_accounts(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    sub_id, _ = new_sub(app, installer_id)
    for ctx in ({"actor": "sub_installer:lin", "role": "sub_installer", "account_id": sub_id,
                 "installer_id": installer_id},
                {"actor": "distributor:root", "role": "distributor"}):
        with context.acting(ctx), pytest.raises(Forbidden):
            app.create_sub_installer({"username": "x1", "email": "x@example.com"})
        with context.acting(ctx), pytest.raises(Forbidden):
            app.list_sub_installers({})


def test_another_installer_s_sub_account_is_not_found(app: AccountsApplication) -> None:
    luna = create_installer(app)
    sol = create_installer(app, "sol")
    sub_id, _ = new_sub(app, luna)
    with as_installer(sol, "sol"):
        for act in (lambda: app.get_sub_installer(sub_id),
                    lambda: app.edit_sub_installer(sub_id, {"phone": "9"}),
                    lambda: app.reset_sub_installer_password(sub_id),
                    lambda: app.delete_sub_installer(sub_id),
                    lambda: app.get_sub_installer(luna),  # a main account is no sub-account
                    lambda: app.get_sub_installer("not-an-id")):
            with pytest.raises(NotFound):
                act()
        assert app.list_sub_installers({})["total"] == 0


def test_a_taken_username_is_a_conflict_naming_it(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    new_sub(app, installer_id)
    for taken in ("lin", "LIN", "luna", "root"):
        with as_installer(installer_id), pytest.raises(Conflict) as caught:
            app.create_sub_installer({"username": taken, "email": "x@example.com"})
        assert list(caught.value.errors) == ["username"]


def test_the_list_searches_sorts_and_pages(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    for name in ("lin", "kim", "alin", "bo"):
        new_sub(app, installer_id, name, f"{name}@example.com")
    with as_installer(installer_id):
        listed = app.list_sub_installers({"sort": "username"})
        assert [i["username"] for i in listed["items"]] == ["alin", "bo", "kim", "lin"]
        assert listed["items"][0]["email"] == "alin@example.com"
        found = app.list_sub_installers({"q": "LIN", "sort": "-username"})
        assert [i["username"] for i in found["items"]] == ["lin", "alin"]
        paged = app.list_sub_installers({"sort": "username", "page": 2, "per_page": 3})
        assert (paged["total"], [i["username"] for i in paged["items"]]) == (4, ["lin"])
        newest = app.list_sub_installers({})
        assert newest["items"][0]["username"] == "bo"
        with pytest.raises(Invalid) as caught:
            app.list_sub_installers({"sort": "email"})
        assert list(caught.value.errors) == ["sort"]


def test_an_edit_changes_the_contact_and_keeps_the_account(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    sub_id, _ = new_sub(app, installer_id)
    with as_installer(installer_id):
        edited = app.edit_sub_installer(sub_id, {"email": "lin2@example.com", "phone": None})
        assert (edited["email"], edited["phone"], edited["username"]) == (
            "lin2@example.com", None, "lin")
        assert app.list_sub_installers({})["items"][0]["email"] == "lin2@example.com"
        for bad in ({"username": "x"}, {"email": "nope"}, {"email": None}):
            with pytest.raises(Invalid):
                app.edit_sub_installer(sub_id, bad)


def test_a_reset_ends_every_session_and_only_the_new_password_works(
        app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    sub_id, password = new_sub(app, installer_id)
    tokens = [app.login("lin", password)["token"] for _ in range(2)]
    with as_installer(installer_id):
        app.reset_sub_installer_password(sub_id)
    for token in tokens:
        with pytest.raises(Unauthorized):
            app.authenticate(token)
    new_password = app.reveal_password(sub_id, 2)
    assert new_password and new_password != password
    with pytest.raises(Unauthorized):
        app.login("lin", password)
    assert app.login("lin", new_password)["role"] == "sub_installer"


def test_a_delete_ends_its_sessions_at_once_and_frees_nothing(
        app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    sub_id, password = new_sub(app, installer_id)
    token = app.login("lin", password)["token"]
    with as_installer(installer_id):
        app.delete_sub_installer(sub_id)
        assert app.list_sub_installers({})["total"] == 0
        with pytest.raises(NotFound):
            app.delete_sub_installer(sub_id)
        with pytest.raises(Conflict):  # the username stays taken: its history is kept
            app.create_sub_installer({"username": "lin", "email": "x@example.com"})
    with pytest.raises(Unauthorized):
        app.authenticate(token)
    with pytest.raises(Unauthorized) as caught:
        app.login("lin", password)
    assert caught.value.detail == LOGIN_FAILED  # as for an unknown username
    assert app.reveal_password(sub_id, 1) is None


def test_made_passwords_are_long_mixed_and_unambiguous() -> None:
    made = {generated_password() for _ in range(200)}
    assert len(made) == 200
    for password in made:
        assert len(password) == 12 and set(password) <= set(PASSWORD_ALPHABET)
        assert any(c.isdigit() for c in password) and any(c.isupper() for c in password)


def test_the_sub_installer_s_events_name_it_as_the_actor(wiring: Wiring,
                                                         app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    _, password = new_sub(app, installer_id)
    app.login("lin", password)
    opened = [e for e in wiring.read_log(0, 1000) if e["type"] == "SessionOpened"][-1]
    assert opened["actor"] == "sub_installer:lin"
    assert opened["stream_id"] == str(PortalAccount.id_for_username("lin"))
