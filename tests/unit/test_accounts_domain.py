"""Accounts domain: portal accounts, sessions, residents' master accounts, and their contracts.

No I/O. Each test reads given / when / then; pending events are read with `collect_events()`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from contracts import accounts as contract
from contracts import checked
from contracts.errors import Conflict, Forbidden, Invalid, Unauthorized
from services.accounts import domain
from services.accounts.domain import FamilySip, MasterAccount, PortalAccount
from services.accounts.security import Credentials

CREDENTIALS = Credentials.cheap()
HASH = CREDENTIALS.hash_password("correct horse")
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
LATER = (NOW + timedelta(hours=8)).isoformat()


def event_names(aggregate: Any) -> list[str]:
    return [type(e).__name__ for e in aggregate.collect_events()]


def a_distributor() -> PortalAccount:
    distributor = PortalAccount.open_distributor("dist", HASH)
    distributor.collect_events()
    return distributor


def new_installer(distributor: PortalAccount, username: Any, email: Any,
                  password_hash: str = HASH) -> PortalAccount:
    """As the application creates one: the request checked by its contract schema first."""
    request = checked(contract.InstallerCreate,
                      {"username": username, "password": "correct horse", "email": email})
    return distributor.create_installer(request["username"], request["email"], password_hash)


def an_installer(username: str = "luna") -> PortalAccount:
    installer = new_installer(a_distributor(), username, "luna@example.com")
    installer.collect_events()
    return installer


def a_session() -> tuple[str, str]:
    token = CREDENTIALS.new_token()
    return token, CREDENTIALS.token_digest(token)


def a_master_account(**changes: Any) -> MasterAccount:
    resident: dict[str, Any] = {
        "apartment_id": uuid4(),
        "community_id": uuid4(),
        "installer_id": uuid4(),
        "first_name": "Judy",
        "last_name": "A",
        "email": "judy@example.com",
    }
    return MasterAccount.create(**(resident | changes))


# --- portal accounts -----------------------------------------------------------------------


def test_a_distributor_creates_an_installer() -> None:
    distributor = a_distributor()

    installer = new_installer(distributor, "Luna", "luna@example.com", HASH)

    [created] = installer.collect_events()
    assert type(created).__name__ == "PortalAccountCreated"
    assert (created.role, created.username, created.email, created.created_by) == (
        "installer",
        "Luna",
        "luna@example.com",
        distributor.id,
    )
    assert installer.installer_id == installer.id
    assert (installer.email, installer.created_by) == ("luna@example.com", distributor.id)
    assert distributor.installer_id is None
    assert distributor.collect_events() == []


def test_only_a_distributor_creates_installers() -> None:
    installer = an_installer()

    with pytest.raises(Forbidden):
        new_installer(installer, "sub", "sub@example.com", HASH)


def test_the_bootstrap_distributor_was_created_by_nobody() -> None:
    distributor = PortalAccount.open_distributor("dist", HASH)

    [created] = distributor.collect_events()
    assert (created.role, created.created_by, created.email) == ("distributor", None, None)


@pytest.mark.parametrize(
    "username",
    ["", "x" * 65, "has space", "-leading-dash", "tab\t", "naïve", "a/b", "name\n", None],
)
def test_a_username_must_be_short_plain_ascii(username: Any) -> None:
    with pytest.raises(Invalid) as caught:
        new_installer(a_distributor(), username, "luna@example.com", HASH)

    assert list(caught.value.errors) == ["username"]


@pytest.mark.parametrize("username", ["a", "x" * 64, "luna.zheng", "Luna_Z-2", "9lives"])
def test_usernames_that_are_accepted(username: str) -> None:
    installer = new_installer(a_distributor(), username, "luna@example.com", HASH)

    assert installer.username == username


@pytest.mark.parametrize("email", ["", None, "no-at-sign", "a@b", "a b@example.com", "a@@b.com"])
def test_an_installer_needs_a_valid_email(email: Any) -> None:
    with pytest.raises(Invalid) as caught:
        new_installer(a_distributor(), "luna", email, HASH)

    assert list(caught.value.errors) == ["email"]


def test_an_account_needs_a_password_hash() -> None:
    with pytest.raises(Invalid) as caught:
        new_installer(a_distributor(), "luna", "luna@example.com", "")

    assert list(caught.value.errors) == ["password"]
    with pytest.raises(Invalid) as caught:
        PortalAccount.open_distributor("dist", "")
    assert list(caught.value.errors) == ["password"]


@pytest.mark.parametrize("password", ["", "short77", "x" * 65, None])
def test_a_password_is_8_to_64_characters(password: Any) -> None:
    def distributor(password: Any) -> Any:
        return checked(contract.DistributorCreate, {"username": "dist", "password": password})

    with pytest.raises(Invalid) as caught:
        distributor(password)

    assert list(caught.value.errors) == ["password"]
    distributor("x" * 8)
    distributor("x" * 64)


def test_a_username_has_one_id_whatever_its_case() -> None:
    installer = new_installer(a_distributor(), "Luna", "luna@example.com", HASH)

    assert installer.id == PortalAccount.id_for_username("luna")
    assert PortalAccount.id_for_username("LUNA") == PortalAccount.id_for_username("luna")
    assert PortalAccount.id_for_username("luna") != PortalAccount.id_for_username("luna2")
    # Fixed namespace: the id survives restarts and other processes.
    assert PortalAccount.id_for_username("luna") == UUID("7816781e-56d2-57ed-ad39-aff61d1f339f")


# --- sessions and passwords ----------------------------------------------------------------


def test_a_login_opens_a_session_that_stores_only_the_digest() -> None:
    installer = an_installer()
    token, digest = a_session()

    installer.open_session(digest, LATER)

    [opened] = installer.collect_events()
    assert type(opened).__name__ == "SessionOpened"
    assert (opened.token_digest, opened.expires_at) == (digest, LATER)
    assert token not in installer.sessions
    installer.check_session(digest, NOW)


def test_a_logout_closes_the_session() -> None:
    installer = an_installer()
    _, digest = a_session()
    installer.open_session(digest, LATER)
    installer.collect_events()

    installer.close_session(digest)

    assert event_names(installer) == ["SessionClosed"]
    with pytest.raises(Unauthorized):
        installer.check_session(digest, NOW)
    with pytest.raises(Unauthorized):
        installer.close_session(digest)


def test_an_expired_session_is_refused() -> None:
    installer = an_installer()
    _, digest = a_session()
    installer.open_session(digest, LATER)

    with pytest.raises(Unauthorized):
        installer.check_session(digest, NOW + timedelta(hours=8))


@pytest.mark.parametrize(
    ("digest", "expires_at", "field"),
    [
        ("not-a-digest", LATER, "token"),
        ("A" * 64, LATER, "token"),
        (Credentials.token_digest("t"), "2025-01-01T20:00:00", "expires_at"),
        (Credentials.token_digest("t"), "tomorrow", "expires_at"),
    ],
)
def test_a_session_needs_a_digest_and_an_aware_expiry(
    digest: str, expires_at: str, field: str
) -> None:
    with pytest.raises(Invalid) as caught:
        an_installer().open_session(digest, expires_at)

    assert list(caught.value.errors) == [field]


def test_the_same_session_cannot_open_twice() -> None:
    installer = an_installer()
    _, digest = a_session()
    installer.open_session(digest, LATER)

    with pytest.raises(Conflict):
        installer.open_session(digest, LATER)


def test_the_oldest_session_makes_room_when_too_many_are_open() -> None:
    installer = an_installer()
    digests = [a_session()[1] for _ in range(domain.MAX_SESSIONS + 1)]
    for digest in digests[:-1]:
        installer.open_session(digest, LATER)
    installer.collect_events()

    installer.open_session(digests[-1], LATER)

    assert event_names(installer) == ["SessionClosed", "SessionOpened"]
    assert list(installer.sessions) == digests[1:]


def test_changing_the_password_keeps_only_the_new_hash() -> None:
    installer = an_installer()
    new_hash = CREDENTIALS.hash_password("battery staple")

    installer.change_password(new_hash)

    [changed] = installer.collect_events()
    assert type(changed).__name__ == "PasswordChanged"
    assert installer.password_hash == new_hash
    assert CREDENTIALS.verify_password(installer.password_hash, "battery staple")
    assert not CREDENTIALS.verify_password(installer.password_hash, "correct horse")
    with pytest.raises(Invalid):
        installer.change_password("")
    assert installer.password_hash == new_hash


# --- master accounts -----------------------------------------------------------------------


def test_a_new_resident_gets_an_unregistered_master_account() -> None:
    apartment_id, community_id = uuid4(), uuid4()

    account = a_master_account(apartment_id=apartment_id, community_id=str(community_id))

    [created] = account.collect_events()
    assert type(created).__name__ == "MasterAccountCreated"
    assert created.apartment_id == apartment_id
    assert (account.apartment_id, account.community_id) == (apartment_id, community_id)
    assert account.app_status == "unregistered"
    assert account.password_hash is None
    assert account.family_member_ids == []


def test_an_apartment_has_one_master_account_id() -> None:
    apartment_id = uuid4()

    account = a_master_account(apartment_id=str(apartment_id))

    assert account.id == MasterAccount.id_for_apartment(apartment_id)
    assert MasterAccount.id_for_apartment(str(apartment_id).upper()) == account.id
    assert MasterAccount.id_for_apartment(uuid4()) != account.id


def test_a_resident_needs_names_within_64_characters_and_a_valid_email() -> None:
    with pytest.raises(Invalid) as caught:
        a_master_account(first_name="", last_name="é" * 65, email="nope")

    assert set(caught.value.errors) == {"first_name", "last_name", "email"}
    account = a_master_account(first_name="é" * 64, last_name="x" * 64,
                               email="x" * 244 + "@example.o")
    assert (len(account.first_name), len(account.email)) == (64, 254)
    with pytest.raises(Invalid) as caught:
        a_master_account(first_name="x" * 65)
    assert list(caught.value.errors) == ["first_name"]
    with pytest.raises(Invalid) as caught:
        a_master_account(email="x" * 245 + "@example.o")
    assert list(caught.value.errors) == ["email"]


def test_a_resident_email_is_optional() -> None:
    account = a_master_account(email=None)

    assert account.email is None


def test_a_master_account_needs_real_ids() -> None:
    with pytest.raises(Invalid) as caught:
        a_master_account(community_id="not-a-uuid")

    assert list(caught.value.errors) == ["community_id"]


def test_editing_the_resident_changes_the_contact_once() -> None:
    account = a_master_account()
    account.collect_events()

    account.update_contact("Judy", "B", "judy.b@example.com")
    account.update_contact("Judy", "B", "judy.b@example.com")

    assert event_names(account) == ["MasterAccountContactChanged"]
    assert (account.last_name, account.email) == ("B", "judy.b@example.com")


def test_a_contact_change_records_every_new_value_and_the_previous_email() -> None:
    account = a_master_account()
    account.collect_events()

    account.update_contact("Jude", "B", "")

    [changed] = account.collect_events()
    assert (changed.first_name, changed.last_name, changed.email, changed.previous_email) == (
        "Jude", "B", None, "judy@example.com")
    assert (account.first_name, account.last_name, account.email) == ("Jude", "B", None)


def test_a_contact_change_is_checked_like_a_new_resident() -> None:
    account = a_master_account()
    account.collect_events()

    with pytest.raises(Invalid) as caught:
        account.update_contact("", "B", "nope")

    assert set(caught.value.errors) == {"first_name", "email"}
    assert event_names(account) == []
    assert account.email == "judy@example.com"


def test_the_resident_registers_the_app_once() -> None:
    account = a_master_account()
    account.collect_events()

    account.register(HASH)

    assert event_names(account) == ["MasterAccountRegistered"]
    assert (account.app_status, account.password_hash) == ("registered", HASH)
    with pytest.raises(Conflict):
        account.register(HASH)
    with pytest.raises(Invalid):
        a_master_account().register("")


def test_reset_empties_the_account_for_the_next_tenant() -> None:
    account = a_master_account()
    account.register(HASH)
    account.add_family_member("fm-1")
    account.add_family_member("fm-2")
    account.collect_events()

    account.reset()

    [reset] = account.collect_events()
    assert type(reset).__name__ == "MasterAccountReset"
    assert reset.removed_family_member_ids == ["fm-1", "fm-2"]
    assert account.app_status == "unregistered"
    assert account.password_hash is None
    assert account.family_member_ids == []
    # Names stay (the manual's Reset list does not remove them; topology keeps them too).
    assert (account.first_name, account.last_name, account.email) == ("Judy", "A", None)
    # The apartment link stays: the reset is for rental turnover, not deletion.
    assert account.apartment_id is not None


def test_a_family_member_is_linked_once() -> None:
    account = a_master_account()
    account.add_family_member("fm-1")

    with pytest.raises(Conflict):
        account.add_family_member("fm-1")
    for nobody in ("", None, 7):
        with pytest.raises(Invalid):
            account.add_family_member(nobody)  # type: ignore[arg-type]
    assert account.family_member_ids == ["fm-1"]


def test_a_reset_replays_to_the_same_state() -> None:
    account = a_master_account()
    account.add_family_member("fm-1")
    account.reset()
    events = account.collect_events()

    replayed: Any = None
    for stored in events:
        replayed = stored.mutate(replayed)

    assert replayed.family_member_ids == []
    assert replayed.app_status == "unregistered"
    assert replayed.version == account.version


def test_a_contact_change_tells_notify_whether_the_app_awaits_activation() -> None:
    account = a_master_account(email=None)
    account.collect_events()

    account.update_contact("Judy", "A", "judy@example.com")

    [changed] = account.collect_events()
    assert (changed.email, changed.previous_email, changed.app_status, changed.resets) == (
        "judy@example.com", None, "unregistered", 0)
    assert (changed.apartment_id, changed.installer_id) == (
        account.apartment_id, account.installer_id)


def test_each_reset_is_counted_so_the_next_address_is_activated_again() -> None:
    account = a_master_account()
    account.register(HASH)
    account.reset()
    account.collect_events()

    account.update_contact("Judy", "A", "judy@example.com")

    [changed] = account.collect_events()
    assert (changed.previous_email, changed.app_status, changed.resets) == (
        None, "unregistered", 1)


def test_a_contact_change_recorded_before_its_new_attributes_still_replays() -> None:
    account = a_master_account()
    account.update_contact("Judy", "B", "judy.b@example.com")
    created, changed = account.collect_events()
    for name in ("previous_email", "apartment_id", "installer_id", "app_status", "resets"):
        del object.__getattribute__(changed, "__dict__")[name]  # as stored by the first release

    replayed = changed.mutate(created.mutate(None))

    assert (replayed.last_name, replayed.email, replayed.resets) == ("B", "judy.b@example.com", 0)


def test_deleting_the_apartment_closes_the_account_and_its_family_members() -> None:
    account = a_master_account()
    account.register(HASH)
    account.add_family_member("fm-1")
    account.add_family_member("fm-2")
    account.collect_events()

    account.close()

    [closed] = account.collect_events()
    assert type(closed).__name__ == "MasterAccountClosed"
    assert closed.apartment_id == account.apartment_id
    assert closed.removed_family_member_ids == ["fm-1", "fm-2"]
    assert account.closed
    assert account.family_member_ids == []
    assert account.password_hash is None  # the app's login no longer works


def test_closing_twice_records_nothing() -> None:
    account = a_master_account()
    account.close()
    account.collect_events()

    account.close()

    assert account.collect_events() == []


def test_a_closed_account_ignores_late_edits_and_resets() -> None:
    account = a_master_account()
    account.close()
    account.collect_events()

    account.update_contact("Someone", "Else", "else@example.com")
    account.reset()

    assert account.collect_events() == []
    assert (account.first_name, account.email) == ("Judy", "judy@example.com")


def test_a_closed_account_cannot_register_nor_gain_family_members() -> None:
    account = a_master_account()
    account.close()
    account.collect_events()

    with pytest.raises(Conflict):
        account.register(HASH)
    with pytest.raises(Conflict):
        account.add_family_member("fm-1")
    assert account.collect_events() == []


def test_a_closed_account_replays_to_the_same_state() -> None:
    account = a_master_account()
    account.add_family_member("fm-1")
    account.close()

    replayed: Any = None
    for stored in account.collect_events():
        replayed = stored.mutate(replayed)

    assert (replayed.closed, replayed.family_member_ids, replayed.version) == (
        True, [], account.version)


# --- contracts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["USERNAME_MAX", "USERNAME_REGEX", "PASSWORD_MIN", "PASSWORD_MAX", "EMAIL_MAX",
             "NAME_MAX", "PORTAL_ROLES", "APP_STATUSES", "MAX_SESSIONS"])
def test_the_domain_keeps_no_copy_of_the_contracts_limits(name: str) -> None:
    # Absent from the domain, or the contract's own object imported: never a second definition.
    ours = getattr(contract, name)
    assert getattr(domain, name, ours) is ours


def test_login_request_errors_name_the_missing_field() -> None:
    with pytest.raises(contract.ValidationError) as caught:
        contract.LoginRequest().load({"username": "luna"})

    assert list(caught.value.messages) == ["password"]


def test_installer_create_errors_name_each_bad_field() -> None:
    with pytest.raises(contract.ValidationError) as caught:
        contract.InstallerCreate().load(
            {"username": "bad name\n", "password": "short", "email": "nope", "role": "admin"}
        )

    assert set(caught.value.messages) == {"username", "password", "email", "role"}


def test_installer_create_accepts_a_good_request() -> None:
    loaded = contract.InstallerCreate().load(
        {"username": "luna", "password": "x" * 64, "email": "luna@example.com"}
    )

    assert loaded["username"] == "luna"


def test_every_event_has_a_schema() -> None:
    events = [
        *PortalAccount.open_distributor("dist", HASH).collect_events(),
        *an_installer_with_history().collect_events(),
        *a_sub_installer_with_history().collect_events(),
        *a_property_manager().collect_events(),
        *FamilySip("5800000001", uuid4()).collect_events(),
        *master_account_with_history().collect_events(),
    ]

    assert {type(e).__name__ for e in events} == set(contract.EVENT_SCHEMAS)


def test_event_data_loads_and_ignores_private_and_unknown_fields() -> None:
    account = a_master_account()
    [created] = account.collect_events()
    # As the relay sends it: every attribute, ids as strings, plus the library's own keys.
    data = {k: str(v) if isinstance(v, UUID) else v for k, v in created.__dict__.items()}
    data["timestamp"] = NOW.isoformat()

    loaded = contract.EVENT_SCHEMAS["MasterAccountCreated"]().load(data)

    assert loaded["apartment_id"] == account.apartment_id
    assert "originator_id" not in loaded


def test_a_contact_change_published_before_its_new_fields_still_loads() -> None:
    loaded = contract.MasterAccountContactChangedSchema().load(
        {"first_name": "Judy", "last_name": "B", "email": "judy.b@example.com"})

    assert (loaded["previous_email"], loaded["app_status"], loaded["resets"]) == (
        None, None, None)


def test_a_closed_account_publishes_its_apartment_and_removed_family_members() -> None:
    account = a_master_account()
    account.add_family_member("fm-1")
    account.close()
    closed = account.collect_events()[-1]
    data = {k: str(v) if isinstance(v, UUID) else v for k, v in closed.__dict__.items()}

    loaded = contract.EVENT_SCHEMAS["MasterAccountClosed"]().load(data)

    assert loaded == {"apartment_id": account.apartment_id, "removed_family_member_ids": ["fm-1"],
                      "resets": 0}


def test_public_event_schemas_declare_no_secret() -> None:
    for schema in contract.EVENT_SCHEMAS.values():
        assert not contract.PRIVATE_FIELDS & set(schema().fields)


def an_installer_with_history() -> PortalAccount:
    installer = new_installer(a_distributor(), "luna", "luna@example.com", HASH)
    _, digest = a_session()
    installer.open_session(digest, LATER)
    installer.close_session(digest)
    installer.change_password(HASH)
    installer.set_installer_settings({"time_zone": "Europe/Paris"})
    return installer


def a_sub_installer_with_history() -> PortalAccount:
    sub = an_installer().create_sub_installer("lin", "lin@example.com", "123", HASH)
    sub.issue_password(HASH, "password:1", "sealed:v1:x", "welcome")
    sub.open_session(a_session()[1], LATER)
    sub.edit_contact("lin2@example.com", None)
    sub.set_two_factor(True)
    sub.challenge_login("d" * 64, "e" * 64, "code:x", "sealed:v1:c", LATER)
    assert not sub.answer_challenge("d" * 64, "f" * 64, NOW)
    assert sub.answer_challenge("d" * 64, "e" * 64, NOW)
    sub.request_reset("c" * 64, "reset:x", "sealed:v1:r", LATER)
    sub.complete_reset("c" * 64, HASH, NOW)
    sub.delete()
    return sub


def a_property_manager() -> PortalAccount:
    manager = an_installer().create_property_manager("Pat.Lee@example.com", HASH)
    manager.set_property_manager("Pat", "Lee", "en", False, True, [
        {"community_id": str(uuid4()), "app": True, "delete_account": False,
         "log_access_control": True}])
    return manager


KID = {"first_name": "Kid", "last_name": "B", "email": "kid@example.com", "mobile": None}


def master_account_with_history() -> MasterAccount:
    account = a_master_account()
    account.update_contact("Judy", "B", None)
    account.register(HASH)
    account.add_family_member("fm-1", "5800000001", KID)
    account.edit_family_member("fm-1", {"mobile": "123"})
    account.add_family_member("fm-2", "5800000002", KID)
    account.remove_family_member("fm-2")
    account.reset()
    account.close()
    return account
