"""Topology contracts: command payloads load or name each bad field; every event has a schema.

No I/O. The schemas are the one check of a command's shape and its one normal form; the aggregates
take what they load (tests/unit/test_topology_domain.py goes through them the same way).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from contracts import topology as contract
from contracts.topology import ValidationError
from services.topology import domain
from services.topology.domain import Community

INSTALLER = UUID("8325419f-d240-4a2c-a23b-5a7ebdc343dc")

COMMUNITY = {"name": "Seaside", "feature_plan": "basic", "time_zone": "Asia/Shanghai"}
APARTMENT = {
    "number": "2#123",
    "floor": "7",
    "name": "The Green",
    "indoor_monitor_mac": "0C:11:05:0B:98:14",
    "resident": {
        "first_name": "Lily",
        "last_name": "Green",
        "email": "lily@example.com",
        "mobile": "14587444",
    },
}


def errors_of(schema: Any, payload: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        schema.load(payload)
    return caught.value.messages  # type: ignore[return-value]


def plain(value: Any) -> Any:
    """As the relay publishes event data: ids as strings, lists for tuples."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, UUID):
        return str(value)
    return value


# --- the contract is the one home of the vocabulary -------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "FEATURE_PLANS",
        "DATE_FORMATS",
        "GROUND_FLOORS",
        "FLOOR_MIN",
        "FLOOR_MAX",
        "CALL_SEQUENCE_TARGETS",
        "COMMUNITY_NAME_MAX",
        "RESIDENT_NAME_MAX_BYTES",
        "EMAIL_MAX",
        "LANDLINES_MAX",
        "COMMUNITY_DEFAULTS",
        "APARTMENT_DEFAULTS",
        "RESIDENT_DEFAULTS",
        "MAC_REGEX",
        "EMAIL_MESSAGE",
    ],
)
def test_the_domain_keeps_no_copy_of_the_contracts_vocabulary(name: str) -> None:
    # Absent from the domain, or the contract's own object imported: never a second definition.
    ours = getattr(contract, name)
    assert getattr(domain, name, ours) is ours


def test_call_type_codes_match_the_domain() -> None:
    assert {c.value: c.name.lower() for c in domain.CallType} == contract.CALL_TYPES


def test_command_schemas_declare_the_aggregates_fields() -> None:
    assert set(contract.CommunityCreate().fields) == set(contract.COMMUNITY_FIELDS)
    assert set(contract.CommunityEdit().fields) == set(contract.COMMUNITY_FIELDS)
    assert set(contract.BuildingCreate().fields) == set(contract.BUILDING_FIELDS)
    assert set(contract.ApartmentCreate().fields) == {*contract.APARTMENT_FIELDS, "resident"}
    assert set(contract.ApartmentEdit().fields) == {*contract.APARTMENT_FIELDS, "resident"}
    assert set(contract.ResidentFields().fields) == set(contract.RESIDENT_FIELDS)
    assert set(contract.ResidentEditFields().fields) == set(contract.RESIDENT_FIELDS)


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("number", "#2#123", False),
        ("number", "1234567", False),
        ("number", "12a", False),
        ("number", "2#1", True),
        ("floor", "G3", False),
        ("floor", 129, False),
        ("floor", -10, True),
        ("floor", "g2", True),
        ("indoor_monitor_mac", "0C:11-05:0B:98:14", False),
        ("indoor_monitor_mac", "0c-11-05-0b-98-14", True),
        ("remark", "x" * 256, False),
        ("call_type", 6, False),
        ("call_type", 5, True),
    ],
)
def test_the_schema_decides_the_apartment_fields(field: str, value: Any, accepted: bool) -> None:
    payload = APARTMENT | {field: value}

    assert (not contract.ApartmentCreate().validate(payload)) is accepted


def test_loaded_payloads_are_what_the_domain_takes() -> None:
    community = Community.create(
        installer_id=INSTALLER, **contract.CommunityCreate().load(COMMUNITY)
    )
    building = community.add_building(**contract.BuildingCreate().load({"name": "Building A"}))
    apartment = building.add_apartment(community, **contract.ApartmentCreate().load(APARTMENT))

    apartment.edit(
        building,
        community,
        **contract.ApartmentEdit().load({"floor": "G0", "resident": {"email": ""}}),
    )
    building.edit(community, **contract.BuildingEdit().load({"ground_floor": "G1"}))
    community.edit(**contract.CommunityEdit().load({"address": {"city": "Götzis"}}))

    assert (apartment.floor, apartment.email, apartment.indoor_monitor_mac) == (
        "G0",
        None,
        "0C11050B9814",
    )
    assert community.settings()["video_storage"] is False
    assert community.address["city"] == "Götzis"


# --- community payloads ----------------------------------------------------------------------


def test_a_community_payload_loads_with_the_manuals_defaults() -> None:
    loaded = contract.CommunityCreate().load({"name": "Seaside", "feature_plan": "premium"})

    assert loaded == {"name": "Seaside", "feature_plan": "premium", **contract.COMMUNITY_DEFAULTS}


def test_a_community_needs_a_name_and_a_feature_plan() -> None:
    assert sorted(errors_of(contract.CommunityCreate(), {})) == ["feature_plan", "name"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", "x" * 129),
        ("feature_plan", "gold"),
        ("time_zone", "GMT+8"),
        ("date_format", "Y/M/D"),
        ("time_format", "24"),
        ("access_control_permission", "private"),
        ("contact_display_order", "surname"),
        ("pin_access_mode", "face"),
        ("send_expiration_email", "yes"),
        ("video_storage", "maybe"),
        ("address", {"planet": "Earth"}),
        ("address", {"post_code": "1" * 33}),
        ("colour", "blue"),
    ],
)
def test_each_bad_community_field_is_named(field: str, value: Any) -> None:
    assert list(errors_of(contract.CommunityCreate(), COMMUNITY | {field: value})) == [field]


def test_landline_service_needs_the_premium_plan() -> None:
    payload = COMMUNITY | {"feature_plan": "basic", "landline_service": True}

    assert list(errors_of(contract.CommunityCreate(), payload)) == ["landline_service"]
    assert list(errors_of(contract.CommunityEdit(), payload)) == ["landline_service"]


def test_a_community_edit_is_partial_and_fills_in_nothing() -> None:
    assert contract.CommunityEdit().load({}) == {}
    assert contract.CommunityEdit().load({"video_storage": True}) == {"video_storage": True}
    assert list(errors_of(contract.CommunityEdit(), {"name": None})) == ["name"]
    assert list(errors_of(contract.CommunityEdit(), {"time_zone": "Nowhere"})) == ["time_zone"]


# --- building payloads -----------------------------------------------------------------------


def test_a_building_payload_loads_with_configure_on_the_device() -> None:
    loaded = contract.BuildingCreate().load({"name": "Building A"})

    assert loaded == {"name": "Building A", "ground_floor": None, "floor_start": None}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", "x" * 129),
        ("ground_floor", "G3"),
        ("floor_start", -11),
        ("floor_start", 129),
        ("floors", 3),
    ],
)
def test_each_bad_building_field_is_named(field: str, value: Any) -> None:
    payload = {"name": "Building A", field: value}

    assert list(errors_of(contract.BuildingCreate(), payload)) == [field]
    if field != "name" or value:
        assert list(errors_of(contract.BuildingEdit(), {field: value})) == [field]


def test_a_building_needs_a_name() -> None:
    assert list(errors_of(contract.BuildingCreate(), {})) == ["name"]
    assert contract.BuildingEdit().load({}) == {}


# --- apartment payloads ----------------------------------------------------------------------


def test_an_apartment_payload_loads_with_the_add_apt_forms_defaults() -> None:
    loaded = contract.ApartmentCreate().load(
        {"number": "101", "resident": {"first_name": "Lily", "last_name": "Green"}}
    )

    assert loaded == {
        "number": "101",
        **contract.APARTMENT_DEFAULTS,
        "resident": {"first_name": "Lily", "last_name": "Green", **contract.RESIDENT_DEFAULTS},
    }


def test_an_apartment_needs_a_number_and_a_resident() -> None:
    assert sorted(errors_of(contract.ApartmentCreate(), {})) == ["number", "resident"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("number", "#2#123"),
        ("number", "1234567"),
        ("number", ""),
        ("floor", -11),
        ("floor", 129),
        ("floor", "G3"),
        ("floor", True),
        ("name", "x" * 65),
        ("web_relay_id", 51),
        ("contact_preference", "broadcast"),
        ("call_sequence", ["doorbell"]),
        ("call_sequence", ["landlines", "landlines"]),
        ("call_type", 6),
        ("sip_or_ip_call", "voip"),
        ("accessible_floors", ["all", 3]),
        ("accessible_floors", [129]),
        ("remark", "x" * 256),
        ("indoor_monitor_mac", "0C11050B981"),
        ("indoor_monitor_mac", "0C11050B981Z"),
        ("indoor_monitor_name", "x" * 65),
        ("indoor_monitor_arming_function", "perhaps"),
        ("indoor_monitor_network_group", 0),
        ("indoor_monitor_relays", ["a", "b", "c"]),
        ("colour", "blue"),
    ],
)
def test_each_bad_apartment_field_is_named(field: str, value: Any) -> None:
    assert list(errors_of(contract.ApartmentCreate(), APARTMENT | {field: value})) == [field]
    if field != "number" or value:
        assert list(errors_of(contract.ApartmentEdit(), {field: value})) == [field]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("first_name", ""),
        ("first_name", "x" * 65),
        ("last_name", "张" * 22),
        ("email", "no-at-sign"),
        ("email", "a@b"),
        ("mobile", "+86 138"),
        ("country", "China"),
        ("language", "English"),
        ("landlines", ["1", "2", "3", "4"]),
        ("landlines", ["12-34"]),
        ("nickname", "Lil"),
    ],
)
def test_each_bad_resident_field_is_named_under_resident(field: str, value: Any) -> None:
    payload = APARTMENT | {"resident": APARTMENT["resident"] | {field: value}}

    messages = errors_of(contract.ApartmentCreate(), payload)

    assert list(messages) == ["resident"]
    assert list(messages["resident"]) == [field]
    edit_messages = errors_of(contract.ApartmentEdit(), {"resident": {field: value}})
    assert list(edit_messages["resident"]) == [field]


def test_a_resident_needs_first_and_last_name() -> None:
    messages = errors_of(contract.ApartmentCreate(), APARTMENT | {"resident": {}})

    assert sorted(messages["resident"]) == ["first_name", "last_name"]


def test_sequence_call_needs_a_sequence_and_group_call_refuses_one() -> None:
    sequence = APARTMENT | {"contact_preference": "sequence_call"}
    group = APARTMENT | {"call_sequence": ["indoor_monitors"]}

    assert list(errors_of(contract.ApartmentCreate(), sequence)) == ["call_sequence"]
    assert list(errors_of(contract.ApartmentCreate(), group)) == ["call_sequence"]


def test_floors_load_as_integers_or_ground_floors() -> None:
    loaded = contract.ApartmentEdit().load({"floor": "-3", "accessible_floors": ["g0", 5]})

    assert loaded == {"floor": -3, "accessible_floors": ["G0", 5]}
    assert contract.ApartmentEdit().load({"accessible_floors": ["All"]}) == {
        "accessible_floors": ["all"]
    }


def test_an_apartment_edit_is_partial_and_fills_in_nothing() -> None:
    assert contract.ApartmentEdit().load({}) == {}
    assert contract.ApartmentEdit().load({"resident": {"mobile": "144"}}) == {
        "resident": {"mobile": "144"}
    }


# --- events ----------------------------------------------------------------------------------


def a_full_history() -> list[Any]:
    """Every kind of topology event, in the order a community's life produces them."""
    community = Community.create(installer_id=INSTALLER,
                                 **contract.CommunityCreate().load(COMMUNITY))
    building = community.add_building(**contract.BuildingCreate().load({"name": "Building A"}))
    apartment = building.add_apartment(community, **contract.ApartmentCreate().load(APARTMENT))
    apartment.edit(building, community, **contract.ApartmentEdit().load(
        {"number": "102", "remark": "x", "resident": {"mobile": "1"}}))
    apartment.reset()
    building.edit(community, **contract.BuildingEdit().load({"name": "Tower A", "floor_start": 1}))
    community.edit(**contract.CommunityEdit().load(
        {"address": {"city": "Götzis"}, "video_storage": True}))
    apartment.delete(building)
    building.delete(community)
    community.delete()
    return [
        *community.collect_events(),
        *building.collect_events(),
        *apartment.collect_events(),
    ]


def test_every_event_has_a_schema() -> None:
    assert {type(e).__name__ for e in a_full_history()} == set(contract.EVENT_SCHEMAS)
    assert contract.EVENT_VERSION == 1


def test_every_events_data_loads_with_its_schema() -> None:
    for event in a_full_history():
        name = type(event).__name__
        # As the relay sends it: every attribute, ids as strings, plus the library's own keys.
        data = plain(dict(event.__dict__))
        data["timestamp"] = event.timestamp.isoformat()
        schema = contract.EVENT_SCHEMAS[name]()

        loaded = schema.load(data)

        declared = set(schema.fields)
        sent = set(data) - {"originator_id", "originator_version", "originator_topic", "timestamp"}
        assert declared == sent, name
        assert set(loaded) == declared, name


def test_an_event_schema_ignores_fields_it_does_not_know() -> None:
    [reset] = [e for e in a_full_history() if type(e).__name__ == "ApartmentReset"]
    data = plain(dict(reset.__dict__)) | {"added_in_a_later_version": 1}

    loaded = contract.ApartmentResetSchema().load(data)

    assert loaded["cleared_fields"] == ["email", "mobile", "country", "landlines"]
    assert "added_in_a_later_version" not in loaded
