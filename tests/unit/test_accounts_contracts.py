"""Accounts contracts: requests, the principal, and every event's data, field by field.

No I/O. Each limit is tested at its boundary and each event field's presence and nullness, so a
change to any rule of `contracts/accounts.py` fails a test (`make mutation`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from contracts import accounts as contract
from contracts import checked
from contracts.errors import Invalid
from services.accounts.domain import FamilySip, MasterAccount, PortalAccount
from services.accounts.security import Credentials

CREDENTIALS = Credentials.cheap()
HASH = CREDENTIALS.hash_password("correct horse")
LATER = "2030-01-01T00:00:00+00:00"
INSTALLER = {"username": "luna", "password": "x" * 8, "email": "luna@example.com"}


def refused(schema: type[Any], payload: dict[str, Any]) -> list[str]:
    """The fields the schema names as bad (empty when it loads)."""
    try:
        checked(schema, payload)
    except Invalid as exc:
        return sorted(exc.errors)
    return []


# --- requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [contract.InstallerCreate, contract.DistributorCreate])
def test_a_username_is_1_to_64_plain_characters(schema: type[Any]) -> None:
    base = {"username": "luna", "password": "x" * 8} | (
        {"email": "luna@example.com"} if schema is contract.InstallerCreate else {})
    assert refused(schema, base | {"username": "x" * 64}) == []
    assert refused(schema, base | {"username": "x" * 65}) == ["username"]
    assert refused(schema, base | {"username": ""}) == ["username"]
    assert refused(schema, {k: v for k, v in base.items() if k != "username"}) == ["username"]
    with pytest.raises(Invalid) as caught:
        checked(schema, base | {"username": "-dash"})
    assert caught.value.errors == {"username": [
        "Username may hold only letters, digits, '.', '_' and '-', starting with a letter or "
        "digit."]}


@pytest.mark.parametrize("schema", [contract.InstallerCreate, contract.DistributorCreate])
def test_a_password_is_required_and_8_to_64_characters(schema: type[Any]) -> None:
    base = INSTALLER if schema is contract.InstallerCreate else {"username": "dist"}
    assert refused(schema, base | {"password": "x" * 8}) == []
    assert refused(schema, base | {"password": "x" * 64}) == []
    assert refused(schema, base | {"password": "x" * 7}) == ["password"]
    assert refused(schema, base | {"password": "x" * 65}) == ["password"]
    assert refused(schema, {k: v for k, v in base.items() if k != "password"}) == ["password"]


def test_an_installer_email_follows_the_platforms_one_email_rule() -> None:
    longest = "x" * 64 + "@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 57 + ".org"
    assert len(longest) == 254
    assert refused(contract.InstallerCreate, INSTALLER | {"email": longest}) == []
    for bad in ["x" + longest, "luna@localhost", "nope", ""]:
        assert refused(contract.InstallerCreate, INSTALLER | {"email": bad}) == ["email"], bad
    assert refused(contract.InstallerCreate, {k: v for k, v in INSTALLER.items()
                                              if k != "email"}) == ["email"]


def test_a_login_request_needs_a_username_of_at_most_254_and_a_password_of_at_most_64() -> None:
    """A property manager's username is its email, up to an address's 254 characters."""
    good = {"username": "luna", "password": "p"}
    longest = {"username": "x" * 254, "password": "x" * 64}
    assert refused(contract.LoginRequest, good) == []
    assert refused(contract.LoginRequest, good | longest) == []
    for field in good:
        assert refused(contract.LoginRequest, good | {field: ""}) == [field]
        assert refused(contract.LoginRequest, good | {field: longest[field] + "x"}) == [field]
        assert refused(contract.LoginRequest, {k: v for k, v in good.items() if k != field}) == [
            field]


@pytest.mark.parametrize(
    ("schema", "good", "nullable"),
    [
        (contract.LoginResponse, {"token": "t", "expires_at": LATER, "role": "installer",
                                  "account_id": str(uuid4())}, {"token", "expires_at"}),
        (contract.Principal, {"account_id": str(uuid4()), "role": "distributor",
                              "username": "root", "installer_id": None}, {"installer_id"}),
    ],
)
def test_what_the_gateway_is_answered_names_every_field(
        schema: type[Any], good: dict[str, Any], nullable: set[str]) -> None:
    assert refused(schema, good) == []
    assert refused(schema, good | {"role": "admin"}) == ["role"]
    for field in good:
        assert refused(schema, {k: v for k, v in good.items() if k != field}) == [field]
        if field not in nullable:
            assert refused(schema, good | {field: None}) == [field]


# --- events ------------------------------------------------------------------------------------


def as_sent(event: Any) -> dict[str, Any]:
    data = {k: str(v) if isinstance(v, UUID) else v for k, v in event.__dict__.items()}
    data["timestamp"] = event.timestamp.isoformat()
    return data


def a_full_history() -> list[Any]:
    """Every kind of accounts event, with a null wherever one may be."""
    distributor = PortalAccount.open_distributor("dist", HASH)
    installer = distributor.create_installer("luna", "luna@example.com", HASH)
    installer.open_session("a" * 64, LATER)
    installer.close_session("a" * 64)
    installer.change_password(HASH)
    installer.set_installer_settings({"time_zone": "Europe/Paris",
                                      "allow_distributor_access": True})
    sub = installer.create_sub_installer("lin", "lin@example.com", None, HASH)
    sub.issue_password(HASH, "password:x", "sealed:v1:x", "welcome")
    sub.open_session("b" * 64, LATER)
    sub.edit_contact("lin@example.com", "123")
    sub.set_two_factor(True)
    sub.challenge_login("d" * 64, "e" * 64, "code:x", "sealed:v1:c", LATER)
    sub.answer_challenge("d" * 64, "f" * 64, datetime.fromisoformat(LATER)
                         - timedelta(minutes=1))
    sub.answer_challenge("d" * 64, "e" * 64, datetime.fromisoformat(LATER)
                         - timedelta(minutes=1))
    sub.request_reset("c" * 64, "reset:x", "sealed:v1:r", LATER)
    sub.complete_reset("c" * 64, HASH, datetime.fromisoformat(LATER) - timedelta(minutes=1))
    sub.delete()
    manager = installer.create_property_manager("pm@example.com", HASH)
    manager.set_property_manager("Pat", "Lee", "en", True, True, [
        {"community_id": str(uuid4()), "log_access_control": True}])
    account = MasterAccount.create(uuid4(), uuid4(), uuid4(), "Judy", "A", None)
    account.update_contact("Judy", "B", "judy@example.com")
    account.register(HASH)
    account.add_family_member("fm-1", "5800000001", {"first_name": "Kid", "last_name": "A",
                                                     "email": "kid@example.com"})
    account.edit_family_member("fm-1", {"mobile": "123"})
    account.add_family_member("fm-2", None, None)
    account.remove_family_member("fm-2")
    account.reset()
    account.close()
    return [*distributor.collect_events(), *installer.collect_events(),
            *sub.collect_events(), *manager.collect_events(), *account.collect_events(),
            *FamilySip("5800000001", uuid4()).collect_events()]


def test_every_event_has_a_schema_and_loads() -> None:
    history = a_full_history()

    assert {type(e).__name__ for e in history} == set(contract.EVENT_SCHEMAS)
    assert contract.EVENT_VERSION == 1
    for event in history:
        contract.EVENT_SCHEMAS[type(event).__name__]().load(as_sent(event))


def test_every_field_of_an_event_is_required_unless_it_came_later() -> None:
    for event in a_full_history():
        schema = contract.EVENT_SCHEMAS[type(event).__name__]()
        data = as_sent(event)
        for name, field in schema.fields.items():
            without = {k: v for k, v in data.items() if k != name}
            if field.load_default is None:  # added later: an older event loads without it
                assert schema.load(without)[name] is None
                continue
            with pytest.raises(contract.ValidationError) as caught:
                schema.load(without)
            assert name in caught.value.messages, (type(event).__name__, name)


@pytest.mark.parametrize(
    ("event", "field", "nullable"),
    [
        ("PortalAccountCreated", "email", True),
        ("PortalAccountCreated", "created_by", True),
        ("PortalAccountCreated", "role", False),
        ("PortalAccountCreated", "username", False),
        ("MasterAccountCreated", "email", True),
        # A shredded tenant's names read as None (concierge.vault).
        ("MasterAccountCreated", "first_name", True),
        ("MasterAccountContactChanged", "email", True),
        ("MasterAccountContactChanged", "previous_email", True),
        ("MasterAccountContactChanged", "apartment_id", True),
        ("MasterAccountContactChanged", "installer_id", True),
        ("MasterAccountContactChanged", "app_status", True),
        ("MasterAccountContactChanged", "resets", True),
        ("MasterAccountContactChanged", "last_name", True),
        ("MasterAccountClosed", "apartment_id", False),
    ],
)
def test_an_event_field_is_null_only_where_a_value_may_be_missing(
        event: str, field: str, nullable: bool) -> None:
    sent = next(as_sent(e) for e in a_full_history() if type(e).__name__ == event)
    schema = contract.EVENT_SCHEMAS[event]()

    if nullable:
        assert schema.load(sent | {field: None})[field] is None
    else:
        with pytest.raises(contract.ValidationError):
            schema.load(sent | {field: None})


@pytest.mark.parametrize(
    ("event", "field", "bad"),
    [
        ("PortalAccountCreated", "role", "admin"),
        ("SessionOpened", "expires_at", "2030-01-01T00:00:00"),
        ("MasterAccountContactChanged", "app_status", "active"),
        ("MasterAccountContactChanged", "resets", -1),
        ("FamilyMemberAdded", "family_member_id", ""),
        ("MasterAccountCreated", "apartment_id", "not-an-id"),
    ],
)
def test_an_event_field_that_names_a_choice_or_a_range_is_checked(
        event: str, field: str, bad: Any) -> None:
    sent = next(as_sent(e) for e in a_full_history() if type(e).__name__ == event)

    with pytest.raises(contract.ValidationError) as caught:
        contract.EVENT_SCHEMAS[event]().load(sent | {field: bad})
    assert field in caught.value.messages
    if field == "resets":
        assert contract.EVENT_SCHEMAS[event]().load(sent | {field: 0})[field] == 0


def test_the_limits_of_sessions_and_names() -> None:
    assert (contract.MAX_SESSIONS, contract.NAME_MAX) == (20, 64)


def test_an_event_schema_declares_every_public_attribute_of_its_event() -> None:
    library = {"originator_id", "originator_version", "originator_topic", "timestamp"}
    for event in a_full_history():
        schema = contract.EVENT_SCHEMAS[type(event).__name__]()
        public = set(as_sent(event)) - library - contract.PRIVATE_FIELDS

        assert set(schema.fields) == public, type(event).__name__


def test_the_shortest_names_load() -> None:
    assert refused(contract.LoginRequest, {"username": "l", "password": "p"}) == []
    sent = next(as_sent(e) for e in a_full_history() if type(e).__name__ == "FamilyMemberAdded")
    loaded = contract.FamilyMemberAddedSchema().load(sent | {"family_member_id": "f"})
    assert loaded["family_member_id"] == "f"
