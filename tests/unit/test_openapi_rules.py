"""The OpenAPI document states the contracts' rules: what it allows, the contract accepts.

No I/O: the document is built from the gateway's routes as `GET /openapi.json` serves it. A
generator of requests that follows the document (Schemathesis) is never refused for a rule the
document does not state; each case below is a rule stated by a hint in code
(`contracts.fields.documented`), checked value by value against the contract itself.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from contracts import topology as contract
from services.gateway import openapi
from services.gateway.http import routes_of
from services.gateway.service import GatewayService

DOCUMENT = openapi.document(routes_of(GatewayService))
APARTMENT = {"number": "101", "resident": {"first_name": "Lily", "last_name": "Green"}}


def stated(schema_name: str, field: str, value: Any) -> bool:
    """Whether the document allows `value` for the field (the keywords our hints use)."""
    rule = DOCUMENT["components"]["schemas"][schema_name]["properties"][field]
    if "enum" in rule and value not in rule["enum"]:
        return False
    if "pattern" in rule and not re.search(rule["pattern"], value):
        return False
    return "maxLength" not in rule or len(value) <= rule["maxLength"]


@pytest.mark.parametrize(
    ("schema_name", "field", "payload", "values"),
    [
        ("CommunityCreate", "name", {"feature_plan": "basic"},
         ["Sea View", " x ", "", "   ", "\t\n", "x" * 128, "x" * 129]),
        ("CommunityCreate", "time_zone", {"name": "S", "feature_plan": "basic"},
         ["UTC", "Europe/Paris", "", "Mars/Olympus", "utc", "GMT+8"]),
        ("ApartmentCreate", "number", APARTMENT,
         ["101", "1#2", "999999", "", "#1", "1234567", "A1", "1\n"]),
        ("ResidentFields", "first_name", {"last_name": "Green"},
         ["Lily", "", "  ", "x" * 64, "x" * 65, "é" * 32]),
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
