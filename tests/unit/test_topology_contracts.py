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
        "RESIDENT_NAME_MAX",
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
        ("last_name", "张" * 65),
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
    apartment.note_credentials_wiped(["pin", "face", "nfc", "bluetooth"], 2)
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


# --- every limit at its boundary ---------------------------------------------------------------


def loads(schema: Any, payload: dict[str, Any]) -> bool:
    return not schema.validate(payload)


@pytest.mark.parametrize(
    ("schema", "payload", "field", "longest"),
    [
        (contract.CommunityCreate(), COMMUNITY, "name", 128),
        (contract.BuildingCreate(), {}, "name", 128),
        (contract.ApartmentCreate(), APARTMENT, "name", 64),
        (contract.ApartmentCreate(), APARTMENT, "remark", 255),
        (contract.ApartmentCreate(), APARTMENT, "indoor_monitor_name", 64),
    ],
)
def test_each_text_limit_holds_at_its_boundary(
        schema: Any, payload: dict[str, Any], field: str, longest: int) -> None:
    assert loads(schema, payload | {field: "x" * longest})
    assert not loads(schema, payload | {field: "x" * (longest + 1)})


@pytest.mark.parametrize(
    ("part", "longest"),
    [("country", 128), ("state_province", 128), ("city", 128), ("post_code", 32),
     ("street", 128)],
)
def test_each_address_part_is_optional_text_up_to_its_limit(part: str, longest: int) -> None:
    def address(value: Any) -> dict[str, Any]:
        return COMMUNITY | {"address": {part: value}}

    assert contract.CommunityCreate().load(address(" x "))["address"][part] == "x"
    assert contract.CommunityCreate().load(address(None))["address"][part] is None
    assert contract.CommunityCreate().load(address("  "))["address"][part] is None
    assert loads(contract.CommunityCreate(), address("x" * longest))
    assert list(errors_of(contract.CommunityCreate(), address("x" * (longest + 1)))) == [
        "address"]
    assert contract.CommunityEdit().load({"address": {part: " y "}}) == {"address": {part: "y"}}


@pytest.mark.parametrize(
    ("field", "lowest", "highest"),
    [("web_relay_id", 0, 50), ("indoor_monitor_network_group", 1, 99), ("call_type", 0, 5)],
)
def test_each_number_holds_at_both_ends(field: str, lowest: int, highest: int) -> None:
    for schema, payload in [(contract.ApartmentCreate(), APARTMENT),
                            (contract.ApartmentEdit(), {})]:
        assert loads(schema, payload | {field: lowest})
        assert loads(schema, payload | {field: highest})
        assert not loads(schema, payload | {field: lowest - 1})
        assert not loads(schema, payload | {field: highest + 1})


def test_a_building_floor_start_holds_at_both_ends() -> None:
    for schema in (contract.BuildingCreate(), contract.BuildingEdit()):
        for floor, accepted in [(-10, True), (128, True), (-11, False), (129, False),
                                (None, True)]:
            assert loads(schema, {"name": "A", "floor_start": floor}) is accepted, floor


def test_an_email_is_at_most_254_characters() -> None:
    longest = "x" * 244 + "@example.o"

    def resident(email: str) -> dict[str, Any]:
        return APARTMENT | {"resident": APARTMENT["resident"] | {"email": email}}

    assert len(longest) == 254
    assert loads(contract.ApartmentCreate(), resident(longest))
    assert not loads(contract.ApartmentCreate(), resident("x" + longest))


def test_a_phone_number_is_1_to_20_digits() -> None:
    def resident(**fields: Any) -> dict[str, Any]:
        return APARTMENT | {"resident": APARTMENT["resident"] | fields}

    for schema in (contract.ApartmentCreate(), contract.ApartmentEdit()):
        base = APARTMENT if isinstance(schema, contract.ApartmentCreate) else {}
        for number, accepted in [("1" * 20, True), ("1" * 21, False), ("1", True)]:
            assert loads(schema, base | resident(mobile=number)) is accepted, number
            assert loads(schema, base | resident(landlines=[number])) is accepted, number


def test_a_resident_has_at_most_three_landlines_counting_empty_ones() -> None:
    def landlines(numbers: list[str]) -> dict[str, Any]:
        return APARTMENT | {"resident": APARTMENT["resident"] | {"landlines": numbers}}

    loaded = contract.ApartmentCreate().load(landlines([" 1 ", "", "2"]))
    assert loaded["resident"]["landlines"] == ["1", "2"]
    messages = errors_of(contract.ApartmentCreate(), landlines(["1", "2", "3", ""]))
    assert messages == {"resident": {"landlines": ["At most 3 landline numbers."]}}
    assert contract.ApartmentEdit().load({"resident": {"landlines": ["", " 3 "]}}) == {
        "resident": {"landlines": ["3"]}}
    assert errors_of(contract.ApartmentEdit(), {"resident": {"landlines": ["1"] * 4}}) == {
        "resident": {"landlines": ["At most 3 landline numbers."]}}


def test_an_indoor_monitor_has_at_most_two_named_relays() -> None:
    for schema, payload in [(contract.ApartmentCreate(), APARTMENT),
                            (contract.ApartmentEdit(), {})]:
        loaded = schema.load(payload | {"indoor_monitor_relays": [" Gate ", ""]})
        assert loaded["indoor_monitor_relays"] == ["Gate"]
        assert loads(schema, payload | {"indoor_monitor_relays": ["x" * 64]})
        assert not loads(schema, payload | {"indoor_monitor_relays": ["x" * 65]})
        assert not loads(schema, payload | {"indoor_monitor_relays": ["a", "b", "c"]})


def test_a_call_sequence_has_up_to_three_sets() -> None:
    targets = list(contract.CALL_SEQUENCE_TARGETS)
    payload = APARTMENT | {"contact_preference": "sequence_call"}

    assert loads(contract.ApartmentCreate(), payload | {"call_sequence": targets})
    assert not loads(contract.ApartmentCreate(), payload | {"call_sequence": [*targets, "x"]})


# --- what may be null, and the one normal form of each value -----------------------------------


@pytest.mark.parametrize(
    "field",
    ["floor", "name", "remark", "indoor_monitor_mac", "indoor_monitor_name"],
)
def test_an_optional_apartment_field_may_be_null(field: str) -> None:
    assert contract.ApartmentCreate().load(APARTMENT | {field: None})[field] is None
    assert contract.ApartmentEdit().load({field: None}) == {field: None}


@pytest.mark.parametrize("field", ["email", "country", "mobile"])
def test_an_optional_resident_field_may_be_null_or_empty(field: str) -> None:
    for value in (None, ""):
        payload = APARTMENT | {"resident": APARTMENT["resident"] | {field: value}}
        assert contract.ApartmentCreate().load(payload)["resident"][field] is None
        assert contract.ApartmentEdit().load({"resident": {field: value}}) == {
            "resident": {field: None}}


def test_a_building_may_leave_its_floors_to_the_device() -> None:
    assert contract.BuildingEdit().load({"ground_floor": None, "floor_start": None}) == {
        "ground_floor": None, "floor_start": None}


def test_required_text_is_stored_stripped() -> None:
    assert contract.CommunityEdit().load({"name": " Sea "}) == {"name": "Sea"}
    assert contract.BuildingEdit().load({"name": " A "}) == {"name": "A"}
    assert contract.ApartmentEdit().load({"number": " 7 ", "resident": {
        "first_name": " Lily ", "last_name": " Green "}}) == {
        "number": "7", "resident": {"first_name": "Lily", "last_name": "Green"}}
    loaded = contract.ApartmentCreate().load(APARTMENT | {"number": " 7 ", "resident": {
        "first_name": " Lily ", "last_name": " Green ", "country": " at "}})
    assert (loaded["number"], loaded["resident"]["first_name"], loaded["resident"]["last_name"],
            loaded["resident"]["country"]) == ("7", "Lily", "Green", "AT")


def test_an_edit_checks_a_call_sequence_against_its_own_preference() -> None:
    payload = {"contact_preference": "group_call", "call_sequence": ["landlines"]}

    assert list(errors_of(contract.ApartmentEdit(), payload)) == ["call_sequence"]


def test_the_sort_keys_of_each_list() -> None:
    assert contract.COMMUNITY_SORTS == ("name", "created_at")
    assert contract.BUILDING_SORTS == ("name", "created_at")
    assert contract.RESIDENT_SORTS == ("number", "name", "resident", "created_at")


# --- events: every field required, null where the domain leaves a value out --------------------


def a_history_of_nulls() -> list[Any]:
    """Events whose optional values are all None, and edits that set them back to None."""
    community = Community.create(installer_id=INSTALLER, **contract.CommunityCreate().load(
        {"name": "Bare", "feature_plan": "premium"}))
    building = community.add_building(**contract.BuildingCreate().load(
        {"name": "A", "ground_floor": "G0", "floor_start": 1}))
    apartment = building.add_apartment(community, **contract.ApartmentCreate().load({
        "number": "1", "floor": 1, "name": "n", "remark": "r", "indoor_monitor_mac": MAC_TEXT,
        "indoor_monitor_name": "m", "resident": {"first_name": "A", "last_name": "B",
                                                 "email": "a@b.co", "mobile": "1",
                                                 "country": "AT"}}))
    bare = building.add_apartment(community, **contract.ApartmentCreate().load({
        "number": "2", "resident": {"first_name": "A", "last_name": "B"}}))
    apartment.edit(building, community, **contract.ApartmentEdit().load({
        "floor": None, "name": None, "remark": None, "indoor_monitor_mac": None,
        "indoor_monitor_name": None,
        "resident": {"email": None, "mobile": None, "country": None}}))
    building.edit(community, **contract.BuildingEdit().load(
        {"ground_floor": None, "floor_start": None}))
    community.edit(**contract.CommunityEdit().load({"address": {"city": "X"}}))
    return [*community.collect_events(), *building.collect_events(),
            *apartment.collect_events(), *bare.collect_events()]


MAC_TEXT = "0C:11:05:0B:98:14"


def as_sent(event: Any) -> dict[str, Any]:
    data = plain(dict(event.__dict__))
    data["timestamp"] = event.timestamp.isoformat()
    return data


def test_events_with_null_values_load() -> None:
    history = a_history_of_nulls()
    for event in history:
        contract.EVENT_SCHEMAS[type(event).__name__]().load(as_sent(event))
    nulls = {(type(e).__name__, k) for e in history for k, v in as_sent(e).items() if v is None}
    nested = {(type(e).__name__, k) for e in history
              for k, v in as_sent(e).get("changes", {}).items() if v is None}
    # The history holds a null for each optional value an event can carry.
    assert {("ApartmentAdded", k) for k in ["floor", "name", "remark", "indoor_monitor_mac",
                                            "indoor_monitor_name"]} <= nulls
    assert {("ResidentAdded", k) for k in ["email", "mobile", "country"]} <= nulls
    assert {("ApartmentEdited", k) for k in ["floor", "name", "remark", "indoor_monitor_mac",
                                             "indoor_monitor_name"]} <= nested
    assert {("ResidentEdited", k) for k in ["email", "mobile", "country"]} <= nested
    assert {("BuildingEdited", "ground_floor"), ("BuildingEdited", "floor_start")} <= nested


# Fields added after events were stored without them: older events load with their default.
CAME_LATER = {("ResidentAdded", "tenancy"), ("ResidentEdited", "tenancy"),
              ("ApartmentReset", "tenancy"), ("ApartmentReset", "first_name"),
              ("ApartmentReset", "last_name"), ("ApartmentDeleted", "tenancy")}


def test_every_field_of_an_event_is_required_unless_it_came_later() -> None:
    seen: set[str] = set()
    for event in [*a_full_history(), *a_history_of_nulls()]:
        name = type(event).__name__
        schema = contract.EVENT_SCHEMAS[name]()
        data = as_sent(event)
        for field in schema.fields:
            if (name, field) in CAME_LATER:
                assert schema.fields[field].load_default in (0, None), (name, field)
                continue
            with pytest.raises(ValidationError) as caught:
                schema.load({k: v for k, v in data.items() if k != field})
            assert field in caught.value.messages, (name, field)
        seen.add(name)
    assert seen == set(contract.EVENT_SCHEMAS)


def test_a_building_added_with_its_floors_left_to_the_device_loads() -> None:
    community = Community.create(installer_id=INSTALLER, **contract.CommunityCreate().load(
        {"name": "Bare", "feature_plan": "premium"}))
    building = community.add_building(**contract.BuildingCreate().load({"name": "A"}))
    [added] = building.collect_events()

    loaded = contract.BuildingAddedSchema().load(as_sent(added))

    assert (loaded["ground_floor"], loaded["floor_start"]) == (None, None)


def test_a_language_tag_is_named_as_such() -> None:
    message = ["Not a language tag such as 'en'."]

    assert errors_of(contract.ApartmentEdit(), {"resident": {"language": "English"}}) == {
        "resident": {"language": message}}
    payload = APARTMENT | {"resident": APARTMENT["resident"] | {"language": "English"}}
    assert errors_of(contract.ApartmentCreate(), payload) == {"resident": {"language": message}}


def test_event_data_is_checked_where_it_names_a_choice() -> None:
    created = next(e for e in a_full_history() if type(e).__name__ == "CommunityCreated")
    reset = next(e for e in a_full_history() if type(e).__name__ == "ApartmentReset")

    with pytest.raises(ValidationError):
        contract.CommunityCreatedSchema().load(as_sent(created) | {"feature_plan": "gold"})
    with pytest.raises(ValidationError):
        contract.ApartmentResetSchema().load(as_sent(reset) | {"cleared_fields": ["names"]})


def test_an_apartment_for_all_floors_and_an_address_part_added_later_load_from_events() -> None:
    community = Community.create(installer_id=INSTALLER, **contract.CommunityCreate().load(
        COMMUNITY))
    building = community.add_building(**contract.BuildingCreate().load({"name": "A"}))
    apartment = building.add_apartment(community, **contract.ApartmentCreate().load(
        APARTMENT | {"accessible_floors": ["all"]}))
    community.edit(**contract.CommunityEdit().load({"address": {"city": "X"}}))
    [added] = [e for e in apartment.collect_events() if type(e).__name__ == "ApartmentAdded"]
    [edited] = [e for e in community.collect_events() if type(e).__name__ == "CommunityEdited"]
    later = as_sent(edited)
    later["changes"]["address"]["district"] = "a later version's part"

    assert contract.ApartmentAddedSchema().load(as_sent(added))["accessible_floors"] == ["all"]
    assert "district" not in contract.CommunityEditedSchema().load(later)["changes"]["address"]
