"""Request schemas take integers only as JSON integers and text only as storable text.

No I/O. marshmallow's lenient Integer would store 2.5 as 2 and "3" as 3, something the caller
never sent; a NUL reaching PostgreSQL fails the command deep in the store. Both must come back as
an error naming the field, for RPC callers as much as for the gateway's. Query strings are the one
place numbers arrive as text: the gateway's list query keeps accepting them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from marshmallow import Schema, ValidationError, fields

from contracts import accounts, notify, topology
from contracts.fields import NUL_MESSAGE, SURROGATE_MESSAGE, Integer, Text
from services.gateway.http import ListQuery, ResidentsQuery

RESIDENT = {"first_name": "Lily", "last_name": "Green"}
APARTMENT = {"number": "101", "indoor_monitor_mac": "0C11050B9814", "resident": RESIDENT}
INSTALLER = {"username": "luna", "password": "correct-horse", "email": "luna@example.com"}

# Every schema a caller's request is loaded with (nested ones are reached through these).
REQUEST_SCHEMAS: list[type[Schema]] = [
    topology.CommunityCreate,
    topology.CommunityEdit,
    topology.BuildingCreate,
    topology.BuildingEdit,
    topology.ApartmentCreate,
    topology.ApartmentEdit,
    accounts.LoginRequest,
    accounts.InstallerCreate,
    notify.EmailQuery,
]

INTEGER_FIELDS: list[tuple[type[Schema], dict[str, Any], str]] = [
    (topology.BuildingCreate, {"name": "A"}, "floor_start"),
    (topology.BuildingEdit, {}, "floor_start"),
    (topology.ApartmentCreate, APARTMENT, "web_relay_id"),
    (topology.ApartmentCreate, APARTMENT, "call_type"),
    (topology.ApartmentCreate, APARTMENT, "indoor_monitor_network_group"),
    (topology.ApartmentEdit, {}, "web_relay_id"),
    (topology.ApartmentEdit, {}, "call_type"),
    (topology.ApartmentEdit, {}, "indoor_monitor_network_group"),
    (notify.EmailQuery, {}, "page"),
    (notify.EmailQuery, {}, "per_page"),
]


def errors_of(schema: type[Schema], payload: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        schema().load(payload)
    return caught.value.messages  # type: ignore[return-value]


def leaf_fields(field: fields.Field, path: str) -> Iterator[tuple[str, fields.Field]]:
    """The field and, through Nested and List, every field it contains."""
    if isinstance(field, fields.Nested):
        for name, inner in field.schema.fields.items():
            yield from leaf_fields(inner, f"{path}.{name}")
    elif isinstance(field, fields.List):
        yield from leaf_fields(field.inner, f"{path}[]")
    else:
        yield path, field


def request_fields() -> Iterator[tuple[str, fields.Field]]:
    for schema in REQUEST_SCHEMAS:
        for name, field in schema().fields.items():
            yield from leaf_fields(field, f"{schema.__name__}.{name}")


# --- strict integers -------------------------------------------------------------------------


def test_every_request_integer_is_strict_and_every_string_is_text() -> None:
    """The rule, checked on every field, so a field added later cannot slip back to lenient."""
    integers = [p for p, f in request_fields() if isinstance(f, fields.Integer)]
    lenient = [p for p, f in request_fields() if isinstance(f, fields.Integer) and not f.strict]
    plain = [p for p, f in request_fields()
             if isinstance(f, fields.String) and not isinstance(f, Text)]
    assert integers  # the walk found them
    assert lenient == []
    assert plain == []


@pytest.mark.parametrize(("schema", "base", "name"), INTEGER_FIELDS,
                         ids=[f"{s.__name__}.{n}" for s, _, n in INTEGER_FIELDS])
@pytest.mark.parametrize("sent", [2.5, "3", 3.5e-300, True])
def test_an_integer_field_refuses_a_fraction_or_text_naming_the_field(
        schema: type[Schema], base: dict[str, Any], name: str, sent: Any) -> None:
    errors = errors_of(schema, {**base, name: sent})
    assert errors == {name: ["Not a valid integer."]}


@pytest.mark.parametrize(("schema", "base", "name"), INTEGER_FIELDS,
                         ids=[f"{s.__name__}.{n}" for s, _, n in INTEGER_FIELDS])
@pytest.mark.parametrize("sent", [3, 3.0])  # JSON Schema: 3.0 is an integer
def test_an_integer_field_accepts_an_integer(
        schema: type[Schema], base: dict[str, Any], name: str, sent: Any) -> None:
    loaded = schema().load({**base, name: sent})[name]
    assert loaded == 3 and type(loaded) is int


def test_strict_integers_still_refuse_booleans() -> None:
    assert errors_of(topology.BuildingEdit, {"floor_start": True}) == {
        "floor_start": ["Not a valid integer."]}


def test_integer_is_strict_unless_asked_otherwise() -> None:
    assert Integer().strict is True
    assert Integer(strict=False).deserialize("3") == 3


@pytest.mark.parametrize("schema", [ListQuery, ResidentsQuery])
def test_the_gateway_query_string_still_takes_numbers_as_text(schema: type[Schema]) -> None:
    """Query parameters always arrive as text; the gateway turns them into integers itself."""
    assert schema().load({"page": "2", "per_page": "25"}) == {"page": 2, "per_page": 25}


def test_event_schemas_stay_lenient() -> None:
    """Event data was written by the service itself; subscribers must not trip over it."""
    loaded = topology.BuildingAddedSchema().load({
        "community_id": "5c3bd3b3-8c58-4d4b-9a53-1f3f2f1d1b51",
        "installer_id": "8325419f-d240-4a2c-a23b-5a7ebdc343dc",
        "building_id": "0b7a0f1e-76d3-4e0a-bd8e-0c5a1d26a2a3",
        "name": "A", "ground_floor": None, "floor_start": "3",
    })
    assert loaded["floor_start"] == 3


# --- text every store can keep ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "payload", "expected"),
    [
        (topology.CommunityCreate, {"name": "Sea\x00side", "feature_plan": "basic"},
         {"name": [NUL_MESSAGE]}),
        (topology.CommunityEdit, {"address": {"city": "Xia\x00men"}},
         {"address": {"city": [NUL_MESSAGE]}}),
        (topology.BuildingCreate, {"name": "\x00"}, {"name": [NUL_MESSAGE]}),
        (topology.ApartmentCreate, {**APARTMENT, "remark": "gate\x00code"},
         {"remark": [NUL_MESSAGE]}),
        (topology.ApartmentCreate,
         {**APARTMENT, "resident": {**RESIDENT, "first_name": "Li\x00ly"}},
         {"resident": {"first_name": [NUL_MESSAGE]}}),
        (topology.ApartmentEdit, {"resident": {"email": "lily\x00@example.com"}},
         {"resident": {"email": [NUL_MESSAGE]}}),
        (topology.ApartmentEdit, {"indoor_monitor_relays": ["Door", "Ga\x00te"]},
         {"indoor_monitor_relays": {1: [NUL_MESSAGE]}}),
        (accounts.LoginRequest, {"username": "luna\x00", "password": "pw"},
         {"username": [NUL_MESSAGE]}),
        (accounts.InstallerCreate, {**INSTALLER, "password": "correct\x00horse"},
         {"password": [NUL_MESSAGE]}),
        (accounts.InstallerCreate, {**INSTALLER, "email": "luna\x00@example.com"},
         {"email": [NUL_MESSAGE]}),
        (notify.EmailQuery, {"recipient": "lily\x00@example.com"},
         {"recipient": [NUL_MESSAGE]}),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_nul_is_refused_naming_the_field(
        schema: type[Schema], payload: dict[str, Any], expected: dict[str, Any]) -> None:
    assert errors_of(schema, payload) == expected


def test_an_unpaired_surrogate_is_refused_naming_the_field() -> None:
    errors = errors_of(topology.ApartmentEdit, {"name": "Green\ud800"})
    assert errors == {"name": [SURROGATE_MESSAGE]}


def test_nul_is_reported_rather_than_a_pattern_message() -> None:
    """The username pattern would also refuse it, but would not say why."""
    errors = errors_of(accounts.InstallerCreate, {**INSTALLER, "username": "lu\x00na"})
    assert errors == {"username": [NUL_MESSAGE]}


def test_ordinary_text_still_loads() -> None:
    loaded = topology.ApartmentCreate().load({
        **APARTMENT, "name": "Zoë's 李 flat", "remark": "line one\nline two\tend",
        "resident": {**RESIDENT, "first_name": "Zoë"},
    })
    assert loaded["name"] == "Zoë's 李 flat"
    assert loaded["remark"] == "line one\nline two\tend"
    assert loaded["resident"]["first_name"] == "Zoë"
    assert accounts.InstallerCreate().load(INSTALLER) == INSTALLER


def test_text_keeps_marshmallow_string_errors() -> None:
    assert errors_of(topology.BuildingEdit, {"name": 5}) == {"name": ["Not a valid string."]}
