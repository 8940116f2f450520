"""Sub-installer accounts in the domain (manual "Sub-Installer Account"): who may make one, whose
data it works on, what an issued password, an edit, a reset and a delete record. No I/O."""

from __future__ import annotations

import pytest

from contracts import accounts as contract
from contracts import checked
from contracts.errors import Conflict, Forbidden, Invalid, Unauthorized
from services.accounts.domain import SUB_INSTALLER, PortalAccount
from tests.unit.test_accounts_domain import (
    HASH,
    LATER,
    a_distributor,
    a_session,
    an_installer,
    event_names,
)


def a_sub_installer() -> tuple[PortalAccount, PortalAccount]:
    installer = an_installer()
    sub = installer.create_sub_installer("lin", "lin@example.com", "123", HASH)
    sub.issue_password(HASH, "password:a", "sealed:v1:a", "welcome")
    sub.collect_events()
    return installer, sub


def test_a_sub_installer_works_on_its_main_installer_s_data() -> None:
    installer, sub = a_sub_installer()
    assert sub.role == SUB_INSTALLER
    assert sub.installer_id == installer.id == installer.installer_id
    assert sub.created_by == installer.id
    assert sub.sub_account_of(installer.id) and sub.sub_account_of(str(installer.id))
    assert not sub.sub_account_of(an_installer("other").id)
    assert not installer.sub_account_of(installer.id)  # the main account is no sub-account


def test_only_an_installer_makes_sub_installers() -> None:
    _, sub = a_sub_installer()
    for maker in (a_distributor(), sub):
        with pytest.raises(Forbidden):
            maker.create_sub_installer("x", "x@example.com", None, HASH)


def test_an_issued_password_counts_and_becomes_the_login() -> None:
    _, sub = a_sub_installer()
    assert (sub.password_issue, sub.password_subject) == (1, "password:a")
    sub.issue_password("other-hash", "password:b", "sealed:v1:b", "reset")
    [issued] = sub.collect_events()
    assert type(issued).__name__ == "PasswordIssued"
    assert (issued.issue, issued.reason, issued.email) == (2, "reset", "lin@example.com")
    assert (sub.password_hash, sub.password_subject) == ("other-hash", "password:b")
    sub.change_password(HASH)  # its owner chose one: the issued one is no longer wanted
    assert sub.password_subject is None
    with pytest.raises(Invalid):
        sub.issue_password("", "password:c", "sealed:v1:c", "reset")


def test_an_edit_records_only_a_change() -> None:
    _, sub = a_sub_installer()
    assert not sub.edit_contact("lin@example.com", "123")
    assert sub.collect_events() == []
    assert sub.edit_contact("lin@example.com", None)
    assert event_names(sub) == ["PortalAccountEdited"]
    assert sub.phone is None


def test_ending_sessions_ends_all_or_all_but_one() -> None:
    _, sub = a_sub_installer()
    digests = [a_session()[1] for _ in range(3)]
    for digest in digests:
        sub.open_session(digest, LATER)
    sub.collect_events()
    assert sub.end_sessions("password_changed", keep=digests[0]) == 2
    [ended] = sub.collect_events()
    assert (ended.reason, ended.count, sorted(ended.token_digests)) == (
        "password_changed", 2, sorted(digests[1:]))
    assert list(sub.sessions) == [digests[0]]
    assert sub.end_sessions("logout_everywhere") == 1
    assert sub.end_sessions("logout_everywhere") == 0
    assert event_names(sub) == ["SessionsEnded"]  # nothing recorded when none was open


def test_a_deleted_sub_installer_ends_its_sessions_and_cannot_log_in() -> None:
    _, sub = a_sub_installer()
    sub.open_session(a_session()[1], LATER)
    sub.collect_events()
    sub.delete()
    assert event_names(sub) == ["SessionsEnded", "PortalAccountDeleted"]
    assert sub.sessions == {} and sub.password_subject is None
    sub.delete()
    assert sub.collect_events() == []  # twice changes nothing
    with pytest.raises(Unauthorized):
        sub.open_session(a_session()[1], LATER)
    for change in (lambda: sub.edit_contact("x@example.com", None),
                   lambda: sub.issue_password(HASH, "password:z", "sealed:v1:z", "reset")):
        with pytest.raises(Conflict):
            change()
    assert not sub.sub_account_of(sub.created_by)


def test_only_sub_installers_are_deleted() -> None:
    with pytest.raises(Forbidden):
        an_installer().delete()


def test_the_sub_installer_request_names_each_bad_field() -> None:
    with pytest.raises(Invalid) as caught:
        checked(contract.SubInstallerCreate,
                {"username": "bad name", "email": "nope", "phone": "12ab", "password": "x"})
    assert set(caught.value.errors) == {"username", "email", "phone", "password"}
    loaded = checked(contract.SubInstallerCreate,
                     {"username": "lin", "email": "lin@example.com", "phone": ""})
    assert loaded == {"username": "lin", "email": "lin@example.com", "phone": None}
    with pytest.raises(Invalid) as caught:
        checked(contract.SubInstallerEdit, {"username": "other"})
    assert set(caught.value.errors) == {"username"}
