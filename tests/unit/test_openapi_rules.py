"""The OpenAPI document states the contracts' rules: what it allows, the contract accepts.

No I/O: the document is built from the gateway's routes as `GET /openapi.json` serves it. A
generator of requests that follows the document (Schemathesis) is never refused for a rule the
document does not state; each case below is a rule stated by a hint in code
(`contracts.fields.documented`), checked value by value against the contract itself.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import pytest

from contracts import topology as contract
from contracts.fields import SPACE_CLASS, ecma
from services.gateway import openapi
from services.gateway.http import routes_of
from services.gateway.service import GatewayService

DOCUMENT = openapi.document(routes_of(GatewayService))
NAMES = {"first_name": "Lily", "last_name": "Green"}
APARTMENT = {"number": "101", "resident": NAMES}


def stated(schema_name: str, field: str, value: Any) -> bool:
    """Whether the document allows `value` for the field, as a JSON Schema validator reads it
    (ECMA-262 patterns)."""
    rule = DOCUMENT["components"]["schemas"][schema_name]["properties"][field]
    return bool(jsonschema_rs.Draft202012Validator(rule).is_valid(value))


@pytest.mark.parametrize(
    ("schema_name", "field", "payload", "values"),
    [
        ("CommunityCreate", "name", {"feature_plan": "basic"},
         ["Sea View", " x ", "", "   ", "\t\n", "x" * 128, "x" * 129]),
        ("CommunityCreate", "time_zone", {"name": "S", "feature_plan": "basic"},
         ["UTC", "Europe/Paris", "", "Mars/Olympus", "utc", "GMT+8"]),
        ("ApartmentCreate", "number", APARTMENT,
         ["101", "1#2", "999999", "", "#1", "1234567", "A1", "1\n", " 101\x1c", "1\n2"]),
        ("ResidentFields", "first_name", {"last_name": "Green"},
         ["Lily", "", "  ", "x" * 64, "x" * 65, "é" * 64, "é" * 65, " " + "x" * 64, "\x1c",
          "\ufeff"]),
        ("ResidentFields", "email", NAMES,
         ["lily@example.com", "", " lily@example.com\t", "  ", "lily", "l@e.c\x00", "\x1cl@e.c",
          "l\x1c@e.c", "\ufeffl@e.c", "l@e.c\n", "l@e.c\nx"]),
        ("ResidentFields", "mobile", NAMES,
         ["0612345678", "", " 06 ", "\u300006", "06-12", "0" * 20, "0" * 21, "٣"]),
        ("ApartmentCreate", "indoor_monitor_mac", APARTMENT,
         ["0C:11:05:0B:98:14", "0c-11-05-0b-98-14", "0c11050b9814", " 0c11050b9814 ", "",
          "0c11050b981", "0c:11-05:0b:98:14", "\x850c11050b9814"]),
    ],
)
def test_what_the_document_allows_the_contract_accepts(
        schema_name: str, field: str, payload: dict[str, Any], values: list[str]) -> None:
    schema = {"CommunityCreate": contract.CommunityCreate, "ApartmentCreate":
              contract.ApartmentCreate, "ResidentFields": contract.ResidentFields}[schema_name]()
    allowed = [value for value in values if stated(schema_name, field, value)]
    refused = [value for value in values if not stated(schema_name, field, value)]

    assert all(not schema.validate(payload | {field: value}) for value in allowed), allowed
    # and it states the rule rather than allowing everything
    assert all(schema.validate(payload | {field: value}) for value in refused), refused
    assert refused


def test_the_document_names_each_call_type_code() -> None:
    rule = DOCUMENT["components"]["schemas"]["ApartmentCreate"]["properties"]["call_type"]

    assert "0=smartplus_and_indoor_monitors" in rule["description"]


def test_the_documents_white_space_is_what_the_server_strips() -> None:
    # ECMA-262's `\s` is another set (no \x1c-\x1f or \x85, but \ufeff): the document spells
    # Python's out, so a JSON Schema tool and the server agree on what is blank.
    spelled = re.compile(f"[{SPACE_CLASS}]")
    everything = map(chr, range(0x110000))
    assert [c for c in everything if spelled.match(c)] == [
        c for c in map(chr, range(0x110000)) if c.isspace()]
    assert r"\s" not in ecma(r"^[^@\s]+\s\S\Z") and ecma(r"^a\Z").endswith("$")


SEQUENCE = {"contact_preference": "sequence_call"}


@pytest.mark.parametrize(("schema_name", "payload"), [
    ("CommunityCreate", {"name": "S", "feature_plan": "basic", "landline_service": True}),
    ("CommunityCreate", {"name": "S", "feature_plan": "premium", "landline_service": True}),
    ("CommunityCreate", {"name": "S", "feature_plan": "basic", "landline_service": False}),
    ("CommunityEdit", {"feature_plan": "basic", "landline_service": True}),
    ("CommunityEdit", {"landline_service": True}),  # the stored plan decides
    ("ApartmentCreate", APARTMENT | {"call_sequence": ["landlines"]}),
    ("ApartmentCreate", APARTMENT | SEQUENCE | {"call_sequence": ["landlines"]}),
    ("ApartmentCreate", APARTMENT | SEQUENCE),
    ("ApartmentCreate", APARTMENT | SEQUENCE | {"call_sequence": []}),
    ("ApartmentCreate", APARTMENT | {"contact_preference": "group_call", "call_sequence": []}),
    ("ApartmentCreate", APARTMENT | SEQUENCE | {"call_sequence": ["landlines", "landlines"]}),
    ("ApartmentCreate", APARTMENT | {"accessible_floors": ["all", 3]}),
    ("ApartmentCreate", APARTMENT | {"accessible_floors": ["all"]}),
    ("ApartmentCreate", APARTMENT | {"accessible_floors": [3, 3.0]}),  # one floor, once
    ("ApartmentCreate", APARTMENT | {"floor": 7.0, "web_relay_id": 2.0}),
    ("ApartmentCreate", APARTMENT | {"floor": 7.5}),
    ("ApartmentEdit", {"contact_preference": "group_call", "call_sequence": ["landlines"]}),
    ("ApartmentEdit", SEQUENCE | {"call_sequence": []}),
    ("ApartmentEdit", SEQUENCE | {"call_sequence": ["indoor_monitors"]}),
    ("ApartmentEdit", SEQUENCE),  # the stored sequence decides
    ("ApartmentEdit", {"contact_preference": "group_call"}),  # clears the stored sequence
    ("ApartmentEdit", {"call_sequence": ["landlines"]}),  # the stored preference decides
])
def test_the_document_and_the_contract_agree_across_fields(
        schema_name: str, payload: dict[str, Any]) -> None:
    validator = jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema_name}", "components": DOCUMENT["components"]})
    refused = getattr(contract, schema_name)().validate(payload)

    assert validator.is_valid(payload) == (not refused), refused


def test_an_operation_names_the_fields_it_also_checks_against_what_is_stored() -> None:
    operations = {f"{method} {path}": op for path, ops in DOCUMENT["paths"].items()
                  for method, op in ops.items()}
    stated = {name: op["x-state-rules"] for name, op in operations.items()
              if "x-state-rules" in op}

    assert stated == {
        "patch /api/v1/communities/{community_id}": ["landline_service"],
        "post /api/v1/buildings/{building_id}/apartments": ["indoor_monitor_mac"],
        "patch /api/v1/apartments/{apartment_id}": ["call_sequence", "indoor_monitor_mac"],
        **{f"post /api/v1/{area}/{{{key}}}/devices": [
            "buildings", "door_hold_open", "mac", "type"]
           for area, key in (("communities", "community_id"), ("buildings", "building_id"),
                             ("apartments", "apartment_id"))},
        "patch /api/v1/devices/{device_id}": [
            "arming", "buildings", "builtin_relays", "door_hold_open", "external_relay",
            "relays", "security_relay", "static_ip"],
        "post /api/v1/apartments/{apartment_id}/credentials": ["value"],
        **{f"post /api/v1/{area}/{{{key}}}/{kind}": rules
           for area, key in (("communities", "community_id"), ("buildings", "building_id"),
                             ("apartments", "apartment_id"))
           for kind, rules in (("cameras", ["linked_device_id"]),
                               ("locks", ["linked_device_id", "lock_id"]))},
        "patch /api/v1/cameras/{camera_id}": ["linked_device_id"],
        "patch /api/v1/locks/{lock_id}": ["linked_device_id"],
        "post /api/v1/property-managers": ["communities"],
        "patch /api/v1/property-managers/{account_id}": ["communities"],
        "post /api/v1/account/password": ["current_password", "new_password"],
        "post /api/v1/auth/reset-password": ["token"],
    }
    assert "basic plan" in operations["post /api/v1/buildings/{building_id}/apartments"][
        "description"]


def test_two_schemas_of_one_name_are_refused_rather_than_renamed() -> None:
    # apispec would call the second "Thing1"; a client generator would then name it so.
    from apispec import APISpec
    from marshmallow import Schema, fields

    def thing() -> type[Schema]:
        return type("Thing", (Schema,), {"x": fields.Integer()})

    plugin = openapi._ContractPlugin(schema_name_resolver=openapi._schema_name)
    spec = APISpec(title="t", version="1", openapi_version=openapi.OPENAPI_VERSION,
                   plugins=[plugin])
    components = openapi.Components(spec, plugin.converter)
    first = thing()
    assert components.ref(first) == components.ref(first) == {
        "$ref": "#/components/schemas/Thing"}
    with pytest.raises(ValueError, match="both named Thing"):
        components.ref(thing())
