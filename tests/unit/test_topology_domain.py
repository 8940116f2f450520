"""Topology domain: communities, buildings, apartments and residents, as the manual describes them.

No I/O. Each test reads given / when / then; pending events are read with `collect_events()`.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import Application

from contracts import checked
from contracts import topology as contract
from contracts.errors import Conflict, Invalid, NotFound
from contracts.topology import (
    ApartmentCreate,
    ApartmentEdit,
    BuildingCreate,
    BuildingEdit,
    CommunityCreate,
    CommunityEdit,
)
from services.topology.domain import Apartment, Building, CallType, Community

INSTALLER = UUID("8325419f-d240-4a2c-a23b-5a7ebdc343dc")
MAC = "0C11050B9814"


# Commands reach the aggregates as the application passes them: loaded by their contract schema,
# which checks their shape (a bad one is Invalid, naming each field) and fills in the defaults.
EDITS = {Community: CommunityEdit, Building: BuildingEdit, Apartment: ApartmentEdit}


def create(*, installer_id: Any, community_id: UUID | None = None, **fields: Any) -> Community:
    return Community.create(installer_id=installer_id, community_id=community_id,
                            **checked(CommunityCreate, fields))


def add_building(community: Community, *, building_id: UUID | None = None,
                 **fields: Any) -> Building:
    return community.add_building(building_id=building_id, **checked(BuildingCreate, fields))


def new_apartment(building: Building, community: Community, *,
                  apartment_id: UUID | None = None, **fields: Any) -> Apartment:
    return building.add_apartment(community, apartment_id=apartment_id,
                                  **checked(ApartmentCreate, fields))


def edit(aggregate: Any, *parents: Any, **changes: Any) -> None:
    linked = {key: changes.pop(key) for key in ["resident_has_linked_sites"] if key in changes}
    aggregate.edit(*parents, **linked, **checked(EDITS[type(aggregate)], changes))


def names(*aggregates: Any) -> list[str]:
    return [type(e).__name__ for aggregate in aggregates for e in aggregate.collect_events()]


def a_community(**fields: Any) -> Community:
    community = create(
        installer_id=INSTALLER, **({"name": "Seaside", "feature_plan": "premium"} | fields)
    )
    community.collect_events()
    return community


def a_building(community: Community, name: str = "Building A", **fields: Any) -> Building:
    building = add_building(community, name=name, **fields)
    community.collect_events()
    building.collect_events()
    return building


def resident(**fields: Any) -> dict[str, Any]:
    return {"first_name": "Lily", "last_name": "Green", "email": "lily@example.com"} | fields


def add_apartment(
    building: Building, community: Community, number: str = "101", **fields: Any
) -> Apartment:
    fields.setdefault("resident", resident())
    return new_apartment(building, community, number=number, **fields)


def an_apartment(**fields: Any) -> tuple[Apartment, Building, Community]:
    community = a_community()
    building = a_building(community)
    apartment = add_apartment(building, community, **fields)
    apartment.collect_events()
    building.collect_events()
    return apartment, building, community


def invalid_fields(caught: pytest.ExceptionInfo[Invalid]) -> list[str]:
    return sorted(caught.value.errors)


# --- community -------------------------------------------------------------------------------


def test_an_installer_creates_a_community_with_the_manuals_defaults() -> None:
    community = create(
        installer_id=str(INSTALLER), name="Seaside", feature_plan="basic", time_zone="Asia/Shanghai"
    )

    [created] = community.collect_events()
    assert type(created).__name__ == "CommunityCreated"
    assert (created.community_id, created.installer_id) == (community.id, INSTALLER)
    assert (created.name, created.feature_plan, created.time_zone) == (
        "Seaside",
        "basic",
        "Asia/Shanghai",
    )
    assert created.address == dict.fromkeys(contract.ADDRESS_PARTS)
    assert created.time_format == "24_hour"
    assert created.pin_access_mode == "pin"
    # "It is enabled by default" (Scan indoor monitor QR code to register app account).
    assert created.scan_indoor_monitor_qr_code is True
    assert created.landline_service is False
    assert community.settings() == {
        "name": "Seaside",
        "feature_plan": "basic",
        "time_zone": "Asia/Shanghai",
        **{k: v for k, v in contract.COMMUNITY_DEFAULTS.items() if k != "time_zone"},
    }


def test_every_advanced_setting_can_be_chosen_at_creation() -> None:
    advanced = {
        "video_storage": True,
        "community_calls": True,
        "access_control_permission": "public_area_only",
        "contact_display_order": "last_name_first_name",
        "pin_access_mode": "apt_pin",
        "pay_by_pm": True,
        "send_expiration_email": "pm_only",
        "send_renew_email": True,
        "akubela_smart_home": True,
        "scan_indoor_monitor_qr_code": False,
        "dormakaba_integration": True,
        "date_format": "day_month_year",
        "time_format": "12_hour",
        "landline_service": True,
    }

    community = a_community(**advanced)

    assert {k: getattr(community, k) for k in advanced} == advanced


def test_a_community_needs_a_name_and_a_feature_plan() -> None:
    with pytest.raises(Invalid) as caught:
        create(installer_id=INSTALLER)

    assert invalid_fields(caught) == ["feature_plan", "name"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 129, None, 7])
def test_a_community_name_is_1_to_128_characters(name: Any) -> None:
    with pytest.raises(Invalid) as caught:
        a_community(name=name)

    assert invalid_fields(caught) == ["name"]
    assert a_community(name="x" * 128).name == "x" * 128


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("feature_plan", "gold"),
        ("time_zone", "GMT+8"),
        ("time_zone", "Mars/Olympus_Mons"),
        ("date_format", "Y/M/D"),
        ("time_format", "24"),
        ("access_control_permission", "private_only"),
        ("contact_display_order", "surname"),
        ("pin_access_mode", "face"),
        ("send_expiration_email", "yes"),
        ("video_storage", "on"),
        ("community_calls", 1),
        ("pay_by_pm", None),
        ("send_renew_email", "true"),
        ("akubela_smart_home", 0),
        ("scan_indoor_monitor_qr_code", "no"),
        ("dormakaba_integration", []),
        ("landline_service", "on"),
        ("address", "Street 1"),
        ("address", {"planet": "Earth"}),
        ("address", {"city": "x" * 129}),
        ("address", {"post_code": "1" * 33}),
        ("colour", "blue"),
    ],
)
def test_each_bad_community_setting_is_named(field: str, value: Any) -> None:
    with pytest.raises(Invalid) as caught:
        a_community(**{field: value})

    assert invalid_fields(caught) == [field]


def test_the_time_zone_is_an_iana_name() -> None:
    assert a_community(time_zone="Europe/Vienna").time_zone == "Europe/Vienna"


def test_the_address_is_optional_and_every_part_is_optional() -> None:
    community = a_community(address={"country": "Austria", "city": " Götzis "})

    assert community.address == {
        "country": "Austria",
        "state_province": None,
        "city": "Götzis",
        "post_code": None,
        "street": None,
    }


def test_landline_service_is_a_premium_feature() -> None:
    with pytest.raises(Invalid) as caught:
        a_community(feature_plan="basic", landline_service=True)

    assert invalid_fields(caught) == ["landline_service"]


def test_a_community_with_landlines_cannot_drop_to_the_basic_plan() -> None:
    community = a_community(landline_service=True)

    with pytest.raises(Invalid) as caught:
        edit(community, feature_plan="basic")

    assert invalid_fields(caught) == ["landline_service"]
    edit(community, feature_plan="basic", landline_service=False)
    assert (community.feature_plan, community.landline_service) == ("basic", False)


def test_an_edit_records_only_what_changed() -> None:
    community = a_community(address={"city": "Götzis"})

    edit(community, name="Seaside", video_storage=True, address={"street": "111"})

    [edited] = community.collect_events()
    assert type(edited).__name__ == "CommunityEdited"
    assert (edited.community_id, edited.installer_id) == (community.id, INSTALLER)
    # Address parts merge: the street is added, the city stays.
    assert edited.changes == {
        "video_storage": True,
        "address": {
            "country": None,
            "state_province": None,
            "city": "Götzis",
            "post_code": None,
            "street": "111",
        },
    }
    assert community.video_storage is True


def test_an_edit_that_changes_nothing_records_nothing() -> None:
    community = a_community()

    edit(community, name="Seaside", feature_plan="premium")

    assert names(community) == []


def test_an_edit_refuses_bad_and_unknown_fields() -> None:
    community = a_community()

    with pytest.raises(Invalid) as caught:
        edit(community, name="", time_zone="Nowhere", colour="blue")

    assert invalid_fields(caught) == ["colour", "name", "time_zone"]
    assert names(community) == []


def test_a_community_belongs_to_an_installer_id() -> None:
    with pytest.raises(Invalid) as caught:
        create(installer_id="luna", name="Seaside", feature_plan="basic")

    assert invalid_fields(caught) == ["installer_id"]


@pytest.mark.parametrize(
    ("plan", "akubela", "required"),
    [("basic", False, True), ("basic", True, False), ("premium", False, False)],
)
def test_the_basic_plan_requires_an_indoor_monitor_unless_akubela_hides_devices(
    plan: str, akubela: bool, required: bool
) -> None:
    community = a_community(feature_plan=plan, akubela_smart_home=akubela)

    assert community.requires_indoor_monitor is required


def test_a_community_is_deleted_once_it_holds_no_buildings() -> None:
    community = a_community()
    building = a_building(community)

    with pytest.raises(Conflict, match="Community still holds 1 buildings"):
        community.delete()

    building.delete(community)
    community.delete()

    assert names(community) == ["BuildingNameReleased", "CommunityDeleted"]
    with pytest.raises(NotFound):
        edit(community, name="Gone")
    with pytest.raises(NotFound):
        add_building(community, name="Building B")
    with pytest.raises(NotFound):
        community.delete()
    assert names(community) == []


# --- building --------------------------------------------------------------------------------


def test_a_community_adds_a_building_and_reserves_its_name() -> None:
    community = a_community()

    building = add_building(community, name=" Building A ")

    [reserved] = community.collect_events()
    [added] = building.collect_events()
    assert type(reserved).__name__ == "BuildingNameReserved"
    assert (reserved.building_id, reserved.name) == (building.id, "Building A")
    assert type(added).__name__ == "BuildingAdded"
    assert (added.building_id, added.community_id, added.installer_id) == (
        building.id,
        community.id,
        INSTALLER,
    )
    # "Configure On the Device" is the form's preselection for both.
    assert (added.name, added.ground_floor, added.floor_start) == ("Building A", None, None)
    assert community.buildings == {building.id: "Building A"}
    assert community.building_count == 1


@pytest.mark.parametrize("name", ["", " ", "x" * 129, None])
def test_a_building_name_is_1_to_128_characters(name: Any) -> None:
    community = a_community()

    with pytest.raises(Invalid) as caught:
        add_building(community, name=name)

    assert invalid_fields(caught) == ["name"]
    assert names(community) == []
    assert add_building(community, name="x" * 128).name == "x" * 128


@pytest.mark.parametrize("ground_floor", ["G0", "G1", "G2"])
def test_a_building_ground_floor_is_g0_g1_or_g2(ground_floor: str) -> None:
    building = a_building(a_community(), ground_floor=ground_floor)

    assert building.ground_floor == ground_floor


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ground_floor", "G3"),
        ("ground_floor", "g1"),  # as the portal's choice names it, unlike an APT's floor
        ("ground_floor", 0),
        ("floor_start", -11),
        ("floor_start", 129),
        ("floor_start", "1"),
        ("floor_start", True),
        ("floors", 10),
    ],
)
def test_each_bad_building_field_is_named(field: str, value: Any) -> None:
    with pytest.raises(Invalid) as caught:
        add_building(a_community(), name="Building A", **{field: value})

    assert invalid_fields(caught) == [field]


@pytest.mark.parametrize("floor_start", [-10, 0, 1, 128, None])
def test_floors_may_start_from_minus_10_to_128(floor_start: int | None) -> None:
    assert a_building(a_community(), floor_start=floor_start).floor_start == floor_start


@pytest.mark.parametrize("twin", ["Building A", "building a", "  BUILDING A "])
def test_building_names_are_unique_in_a_community_whatever_the_case(twin: str) -> None:
    community = a_community()
    a_building(community, "Building A")

    with pytest.raises(Conflict) as caught:
        add_building(community, name=twin)

    assert list(caught.value.errors) == ["name"]
    assert names(community) == []
    a_building(a_community(), twin)  # another community may use it


def test_a_building_is_renamed_and_its_floors_edited() -> None:
    community = a_community()
    building = a_building(community)

    edit(building, community, name="Tower A", ground_floor="G1", floor_start=2)

    [edited] = building.collect_events()
    [renamed] = community.collect_events()
    assert type(edited).__name__ == "BuildingEdited"
    assert edited.changes == {"name": "Tower A", "ground_floor": "G1", "floor_start": 2}
    assert (edited.building_id, edited.community_id, edited.installer_id) == (
        building.id,
        community.id,
        INSTALLER,
    )
    assert type(renamed).__name__ == "BuildingNameChanged"
    assert (renamed.name, renamed.previous_name) == ("Tower A", "Building A")
    assert community.buildings == {building.id: "Tower A"}


def test_a_building_cannot_take_another_buildings_name() -> None:
    community = a_community()
    a_building(community, "Building A")
    building_b = a_building(community, "Building B")

    with pytest.raises(Conflict):
        edit(building_b, community, name="BUILDING A")

    edit(building_b, community, name="building b")  # its own name, another case
    assert names(building_b, community) == ["BuildingEdited", "BuildingNameChanged"]


def test_a_building_edit_that_changes_nothing_records_nothing() -> None:
    community = a_community()
    building = a_building(community)

    edit(building, community, name=" Building A ", floor_start=None)

    assert names(building, community) == []


def test_a_building_cannot_be_deleted_while_it_holds_apartments() -> None:
    community = a_community()
    building = a_building(community)
    add_apartment(building, community, "101")
    add_apartment(building, community, "102")
    building.collect_events()

    with pytest.raises(Conflict, match="Building still holds 2 apartments"):
        building.delete(community)

    assert names(building, community) == []


def test_an_empty_building_is_deleted_and_its_name_freed() -> None:
    community = a_community()
    building = a_building(community)

    building.delete(community)

    [deleted] = building.collect_events()
    [released] = community.collect_events()
    assert type(deleted).__name__ == "BuildingDeleted"
    assert (deleted.building_id, deleted.community_id, deleted.name) == (
        building.id,
        community.id,
        "Building A",
    )
    assert type(released).__name__ == "BuildingNameReleased"
    assert community.buildings == {}
    a_building(community, "Building A")
    with pytest.raises(NotFound):
        add_apartment(building, community)
    with pytest.raises(NotFound):
        edit(building, community, name="Again")
    with pytest.raises(NotFound):
        building.delete(community)
    assert names(building, community) == []


def test_a_building_is_managed_only_through_its_own_community() -> None:
    community = a_community()
    building = a_building(community)
    other = a_community(name="Elsewhere")

    with pytest.raises(NotFound):
        edit(building, other, name="Mine now")
    with pytest.raises(NotFound):
        building.delete(other)
    with pytest.raises(NotFound):
        add_apartment(building, other)


# --- adding an apartment and its resident ----------------------------------------------------


def test_a_building_adds_an_apartment_with_its_resident() -> None:
    community = a_community()
    building = a_building(community)

    apartment = add_apartment(building, community, "2#123", floor=7, name="The Green")

    added, resident_added = apartment.collect_events()
    [reserved] = building.collect_events()
    ids = (apartment.id, building.id, community.id, INSTALLER)
    assert type(added).__name__ == "ApartmentAdded"
    assert (added.apartment_id, added.building_id, added.community_id, added.installer_id) == ids
    assert (added.number, added.floor, added.name) == ("2#123", 7, "The Green")
    assert type(resident_added).__name__ == "ResidentAdded"
    assert (
        resident_added.apartment_id,
        resident_added.building_id,
        resident_added.community_id,
        resident_added.installer_id,
    ) == ids
    assert (resident_added.first_name, resident_added.last_name, resident_added.email) == (
        "Lily",
        "Green",
        "lily@example.com",
    )
    assert type(reserved).__name__ == "ApartmentNumberReserved"
    assert (reserved.apartment_id, reserved.number) == (apartment.id, "2#123")
    assert building.apartments == {"2#123": apartment.id}
    assert building.apartment_count == 1


def test_an_apartment_takes_the_add_apt_forms_preselections() -> None:
    apartment, _, _ = an_apartment()

    assert apartment.settings() == {"number": "101", **contract.APARTMENT_DEFAULTS}
    assert apartment.call_type == CallType.SMARTPLUS_AND_INDOOR_MONITORS == 0
    assert (apartment.contact_preference, apartment.sip_or_ip_call) == ("group_call", "ip_call")
    assert apartment.resident() == {
        "first_name": "Lily",
        "last_name": "Green",
        "email": "lily@example.com",
        "language": "en",
        "country": None,
        "mobile": None,
        "landlines": [],
    }


def test_every_add_apt_field_can_be_set() -> None:
    fields = {
        "floor": "G1",
        "name": "The Green",
        "web_relay_id": 3,
        "contact_preference": "sequence_call",
        "call_sequence": ["indoor_monitors", "master_and_family_accounts", "landlines"],
        "call_type": 5,
        "sip_or_ip_call": "sip_call",
        "accessible_floors": [1, 7, "G0"],
        "remark": "tenant",
        "indoor_monitor_mac": MAC,
        "indoor_monitor_name": "Living Room",
        "indoor_monitor_arming_function": True,
        "indoor_monitor_network_group": 2,
        "indoor_monitor_relays": ["Front door", "Garage"],
    }
    people = resident(language="zh-CN", country="cn", mobile="14587444", landlines=["1458333"])

    apartment, _, _ = an_apartment(resident=people, **fields)

    assert apartment.settings() == {"number": "101", **fields}
    assert apartment.resident() == people | {"country": "CN"}


@pytest.mark.parametrize("number", ["1", "101", "123456", "2#123", "1#####", " 101 "])
def test_an_apt_number_is_1_to_6_digits_and_hashes(number: str) -> None:
    apartment, _, _ = an_apartment(number=number)

    assert apartment.number == number.strip()


@pytest.mark.parametrize(
    "number", ["", "#2#123", "#", "1234567", "12a", "1 2", "\uff11\uff10\uff11", None, 101]
)
def test_a_bad_apt_number_is_refused(number: Any) -> None:
    community = a_community()
    building = a_building(community)

    with pytest.raises(Invalid) as caught:
        add_apartment(building, community, number)

    assert invalid_fields(caught) == ["number"]
    assert names(building) == []


def test_an_apt_number_must_not_start_with_hash_for_apt_pin_door_phones() -> None:
    with pytest.raises(Invalid) as caught:
        an_apartment(number="#2#123")

    assert "must not start with '#'" in caught.value.errors["number"][0]


def test_an_apt_number_is_unique_in_its_building() -> None:
    community = a_community()
    building = a_building(community)
    add_apartment(building, community, "101")
    building.collect_events()

    with pytest.raises(Conflict) as caught:
        add_apartment(building, community, "101")

    assert list(caught.value.errors) == ["number"]
    assert names(building) == []
    other_building = a_building(community, "Building B")
    add_apartment(other_building, community, "101")  # the same number elsewhere is fine


@pytest.mark.parametrize(
    ("given", "stored"),
    [(-10, -10), (0, 0), (128, 128), ("7", 7), ("G0", "G0"), ("g2", "G2"), (None, None)],
)
def test_a_floor_is_minus_10_to_128_or_g0_to_g2(given: Any, stored: Any) -> None:
    apartment, _, _ = an_apartment(floor=given)

    assert apartment.floor == stored


@pytest.mark.parametrize("floor", [-11, 129, "G3", "ground", True, 1.5, [1]])
def test_a_floor_out_of_range_is_refused(floor: Any) -> None:
    with pytest.raises(Invalid) as caught:
        an_apartment(floor=floor)

    assert invalid_fields(caught) == ["floor"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ([], []),
        (["all"], ["all"]),
        (["All"], ["all"]),
        ([-10, 128, "G0", "G1", "G2"], [-10, 128, "G0", "G1", "G2"]),
        ([1, "1", 7], [1, 7]),
    ],
)
def test_accessible_floors_are_floors_or_all_floors(given: list[Any], stored: list[Any]) -> None:
    apartment, _, _ = an_apartment(accessible_floors=given)

    assert apartment.accessible_floors == stored


@pytest.mark.parametrize("floors", [["all", 1], [129], ["G3"], "all", [True]])
def test_bad_accessible_floors_are_refused(floors: Any) -> None:
    with pytest.raises(Invalid) as caught:
        an_apartment(accessible_floors=floors)

    assert invalid_fields(caught) == ["accessible_floors"]


@pytest.mark.parametrize("code", list(range(6)))
def test_call_type_codes_are_0_to_5(code: int) -> None:
    apartment, _, _ = an_apartment(call_type=code)

    assert apartment.call_type == code
    assert CallType(code).value == code


def test_call_types_are_named_as_in_the_import_template() -> None:
    assert CallType(1).name == "PHONE_AND_INDOOR_MONITORS"
    assert CallType(5).name == "INDOOR_MONITORS_WITH_SMARTPLUS_BACKUP_THEN_PHONE"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("call_type", 6),
        ("call_type", -1),
        ("call_type", "1"),
        ("call_type", True),
        ("web_relay_id", -1),
        ("web_relay_id", 51),
        ("contact_preference", "broadcast"),
        ("sip_or_ip_call", "voip"),
        ("name", "x" * 65),
        ("remark", "x" * 256),
        ("indoor_monitor_name", "x" * 65),
        ("indoor_monitor_network_group", 0),
        ("indoor_monitor_relays", ["Relay1", "Relay2", "Relay3"]),
        ("indoor_monitor_arming_function", "yes"),
        ("call_sequence", ["indoor_monitors", "indoor_monitors"]),
        ("call_sequence", ["doorbell"]),
        ("colour", "blue"),
    ],
)
def test_each_bad_apartment_field_is_named(field: str, value: Any) -> None:
    with pytest.raises(Invalid) as caught:
        an_apartment(**{field: value})

    assert invalid_fields(caught) == [field]


def test_a_remark_is_up_to_255_characters() -> None:
    apartment, _, _ = an_apartment(remark="x" * 255, name="y" * 64)

    assert len(apartment.remark or "") == 255


def test_sequence_call_needs_a_sequence_of_up_to_three_sets() -> None:
    with pytest.raises(Invalid) as caught:
        an_apartment(contact_preference="sequence_call")
    assert invalid_fields(caught) == ["call_sequence"]

    with pytest.raises(Invalid) as caught:
        an_apartment(call_sequence=["indoor_monitors"])  # group call
    assert invalid_fields(caught) == ["call_sequence"]

    with pytest.raises(Invalid) as caught:
        an_apartment(
            contact_preference="sequence_call",
            call_sequence=[*contract.CALL_SEQUENCE_TARGETS, "indoor_monitors"],
        )
    assert invalid_fields(caught) == ["call_sequence"]


# --- indoor monitor MAC ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mac", ["0C11050B9814", "0c11050b9814", "0C:11:05:0B:98:14", "0c-11-05-0b-98-14"]
)
def test_an_indoor_monitor_mac_is_normalised(mac: str) -> None:
    apartment, _, _ = an_apartment(indoor_monitor_mac=mac)

    assert apartment.indoor_monitor_mac == MAC


@pytest.mark.parametrize(
    "mac",
    ["0C11050B981", "0C11050B98145", "0C11050B981G", "0C:11:05:0B:98", "0C:11-05:0B:98:14", 12],
)
def test_a_bad_indoor_monitor_mac_is_refused(mac: Any) -> None:
    with pytest.raises(Invalid) as caught:
        an_apartment(indoor_monitor_mac=mac)

    assert invalid_fields(caught) == ["indoor_monitor_mac"]


def test_the_basic_plan_requires_an_indoor_monitor_mac_in_every_apartment() -> None:
    community = a_community(feature_plan="basic")
    building = a_building(community)

    with pytest.raises(Invalid) as caught:
        add_apartment(building, community, "101")

    assert invalid_fields(caught) == ["indoor_monitor_mac"]
    assert add_apartment(building, community, "101", indoor_monitor_mac=MAC).indoor_monitor_mac


def test_akubela_smart_home_lifts_the_basic_plans_monitor_requirement() -> None:
    community = a_community(feature_plan="basic", akubela_smart_home=True)

    apartment = add_apartment(a_building(community), community)

    assert apartment.indoor_monitor_mac is None


def test_an_apartment_of_a_basic_community_cannot_lose_its_monitor() -> None:
    community = a_community(feature_plan="basic")
    building = a_building(community)
    apartment = add_apartment(building, community, indoor_monitor_mac=MAC)

    with pytest.raises(Invalid) as caught:
        edit(apartment, building, community, indoor_monitor_mac=None)

    assert invalid_fields(caught) == ["indoor_monitor_mac"]
    edit(apartment, building, community, indoor_monitor_mac="0C:11:05:08:93:C6")
    assert apartment.indoor_monitor_mac == "0C11050893C6"


# --- resident --------------------------------------------------------------------------------


def test_an_apartment_needs_a_resident_with_first_and_last_name() -> None:
    community = a_community()
    building = a_building(community)

    with pytest.raises(Invalid) as missing:
        new_apartment(building, community, number="101")
    with pytest.raises(Invalid) as nameless:
        add_apartment(building, community, resident={"email": "lily@example.com"})

    assert missing.value.errors == {"resident": ["Missing data for required field."]}
    assert sorted(nameless.value.errors["resident"]) == ["first_name", "last_name"]


@pytest.mark.parametrize(
    "name",
    ["", "  ", "x" * 65, "张" * 65, None, 5],
)
def test_resident_names_are_required_and_at_most_64_characters(name: Any) -> None:
    with pytest.raises(Invalid) as caught:
        an_apartment(resident=resident(first_name=name, last_name=name))

    assert sorted(caught.value.errors["resident"]) == ["first_name", "last_name"]
    apartment, _, _ = an_apartment(resident=resident(first_name="x" * 64, last_name="张" * 64))
    assert apartment.first_name == "x" * 64


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "no-at-sign"),
        ("email", "a@b"),
        ("email", "a b@example.com"),
        ("email", "x" * 250 + "@example.com"),
        ("mobile", "+86 138"),
        ("mobile", "1" * 21),
        ("country", "China"),
        ("country", "C"),
        ("language", "English"),
        ("language", ""),
        ("landlines", ["1", "2", "3", "4"]),
        ("landlines", ["12-34"]),
        ("landlines", "123"),
        ("nickname", "Lil"),
    ],
)
def test_each_bad_resident_field_is_named(field: str, value: Any) -> None:
    with pytest.raises(Invalid) as caught:
        an_apartment(resident=resident(**{field: value}))

    assert caught.value.errors == {"resident": {field: caught.value.errors["resident"][field]}}


def test_a_resident_has_up_to_three_landlines() -> None:
    apartment, _, _ = an_apartment(resident=resident(landlines=["1", "22", "333"]))

    assert apartment.landlines == ["1", "22", "333"]


def test_email_mobile_and_country_are_optional() -> None:
    apartment, _, _ = an_apartment(
        resident={"first_name": "Lily", "last_name": "Green", "email": "", "mobile": None}
    )

    assert (apartment.email, apartment.mobile, apartment.country) == (None, None, None)


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(Invalid) as caught:
        an_apartment(number="#1", floor=200, resident={"first_name": "", "last_name": "G"})

    assert sorted(caught.value.errors) == ["floor", "number", "resident"]
    assert list(caught.value.errors["resident"]) == ["first_name"]


# --- editing ---------------------------------------------------------------------------------


def test_editing_an_apartment_records_what_changed_of_it_and_of_its_resident() -> None:
    apartment, building, community = an_apartment()

    edit(apartment,
        building,
        community,
        floor=6,
        remark="tenant",
        resident={"last_name": "Grey", "mobile": "144"},
    )

    edited, resident_edited = apartment.collect_events()
    assert type(edited).__name__ == "ApartmentEdited"
    assert edited.changes == {"floor": 6, "remark": "tenant"}
    assert (edited.apartment_id, edited.building_id, edited.community_id) == (
        apartment.id,
        building.id,
        community.id,
    )
    assert type(resident_edited).__name__ == "ResidentEdited"
    assert resident_edited.changes == {"last_name": "Grey", "mobile": "144"}
    assert resident_edited.installer_id == INSTALLER
    assert names(building) == []


def test_an_apartment_edit_that_changes_nothing_records_nothing() -> None:
    apartment, building, community = an_apartment()

    edit(apartment, building, community, number="101", resident={"first_name": "Lily"})

    assert names(apartment, building) == []


def test_renumbering_moves_the_reservation_in_the_building() -> None:
    apartment, building, community = an_apartment(number="101")
    taken = add_apartment(building, community, "102")
    building.collect_events()

    with pytest.raises(Conflict):
        edit(apartment, building, community, number="102")
    edit(apartment, building, community, number="103")

    [changed] = building.collect_events()
    assert type(changed).__name__ == "ApartmentNumberChanged"
    assert (changed.number, changed.previous_number) == ("103", "101")
    assert building.apartments == {"102": taken.id, "103": apartment.id}


def test_switching_back_to_group_call_drops_the_sequence() -> None:
    apartment, building, community = an_apartment(
        contact_preference="sequence_call", call_sequence=["indoor_monitors"]
    )

    edit(apartment, building, community, contact_preference="group_call")

    assert apartment.call_sequence == []


def test_a_sequence_call_apartment_keeps_its_sequence_when_other_fields_change() -> None:
    apartment, building, community = an_apartment(
        contact_preference="sequence_call", call_sequence=["indoor_monitors"]
    )

    edit(apartment, building, community, remark="Corner flat")

    assert apartment.call_sequence == ["indoor_monitors"]


def test_the_call_sequence_is_checked_against_the_stored_contact_preference() -> None:
    # Each edit alone is a valid payload; only the stored APT makes it wrong.
    group, building, community = an_apartment()
    with pytest.raises(Invalid) as caught:
        edit(group, building, community, call_sequence=["landlines"])
    assert caught.value.errors == {
        "call_sequence": ["A call sequence applies only to Sequence Call."]}

    with pytest.raises(Invalid) as caught:
        edit(group, building, community, contact_preference="sequence_call")
    assert caught.value.errors == {
        "call_sequence": ["Sequence Call needs at least one call set."]}

    sequence = add_apartment(building, community, "102", contact_preference="sequence_call",
                             call_sequence=["landlines"])
    sequence.collect_events()
    with pytest.raises(Invalid) as caught:
        edit(sequence, building, community, call_sequence=[])
    assert caught.value.errors == {
        "call_sequence": ["Sequence Call needs at least one call set."]}
    assert names(group, sequence) == []


def test_an_edit_event_shares_no_list_or_dict_with_the_aggregate() -> None:
    apartment, building, community = an_apartment(accessible_floors=[1])
    community.collect_events()

    edit(apartment, building, community, accessible_floors=[2, 3])
    edit(community, address={"city": "Götzis"})
    apartment.accessible_floors.append(4)
    community.address["city"] = "Dornbirn"

    [apartment_edited] = apartment.collect_events()
    [community_edited] = community.collect_events()
    assert apartment_edited.changes == {"accessible_floors": [2, 3]}
    assert community_edited.changes["address"]["city"] == "Götzis"


def test_an_apartment_edit_refuses_bad_fields_and_names_them() -> None:
    apartment, building, community = an_apartment()

    with pytest.raises(Invalid) as caught:
        edit(apartment, building, community, floor=-11, resident={"email": "x", "first_name": ""})

    assert caught.value.errors.keys() == {"floor", "resident"}
    assert sorted(caught.value.errors["resident"]) == ["email", "first_name"]
    assert names(apartment) == []


def test_a_resident_with_linked_sites_keeps_email_mobile_and_country() -> None:
    apartment, building, community = an_apartment()

    with pytest.raises(Conflict) as caught:
        edit(apartment,
            building,
            community,
            resident_has_linked_sites=True,
            resident={"email": "new@example.com", "country": "AT"},
        )

    assert sorted(caught.value.errors["resident"]) == ["country", "email"]
    edit(apartment,
        building, community, resident_has_linked_sites=True, resident={"first_name": "Judy"}
    )
    assert names(apartment) == ["ResidentEdited"]


def test_an_apartment_is_edited_only_through_its_own_building() -> None:
    apartment, _, community = an_apartment()
    other = a_building(community, "Building B")

    with pytest.raises(NotFound):
        edit(apartment, other, community, remark="moved?")
    with pytest.raises(NotFound):
        apartment.delete(other)


# --- reset -----------------------------------------------------------------------------------


def test_reset_clears_exactly_the_contact_details_the_manual_lists() -> None:
    apartment, _, _ = an_apartment(
        floor=6,
        call_type=4,
        sip_or_ip_call="sip_call",
        accessible_floors=[1, 6],
        remark="tenant",
        indoor_monitor_mac=MAC,
        resident=resident(language="de", country="AT", mobile="144", landlines=["1", "2", "3"]),
    )
    settings_before = apartment.settings()

    apartment.reset()

    [reset] = apartment.collect_events()
    assert type(reset).__name__ == "ApartmentReset"
    assert (reset.apartment_id, reset.building_id, reset.community_id, reset.installer_id) == (
        apartment.id,
        apartment.building_id,
        apartment.community_id,
        INSTALLER,
    )
    # Removed: "Emails, mobile numbers, country/region, and landlines."
    assert reset.cleared_fields == ["email", "mobile", "country", "landlines"]
    assert (apartment.email, apartment.mobile, apartment.country, apartment.landlines) == (
        None,
        None,
        None,
        [],
    )
    # Kept: SIP Call or IP Call, language, the With Indoor Monitor feature, and the rest.
    assert apartment.settings() == settings_before
    assert (apartment.first_name, apartment.last_name, apartment.language) == (
        "Lily",
        "Green",
        "de",
    )


def test_after_a_reset_the_next_tenant_is_entered_by_editing() -> None:
    apartment, building, community = an_apartment()
    apartment.reset()
    apartment.collect_events()

    edit(apartment,
        building,
        community,
        resident={"first_name": "Judy", "last_name": "A", "email": "judy@example.com"},
    )

    [edited] = apartment.collect_events()
    assert edited.changes == {"first_name": "Judy", "last_name": "A", "email": "judy@example.com"}


# --- delete ----------------------------------------------------------------------------------


def test_deleting_an_apartment_frees_its_number() -> None:
    apartment, building, community = an_apartment(number="601")

    apartment.delete(building)

    [deleted] = apartment.collect_events()
    [released] = building.collect_events()
    assert type(deleted).__name__ == "ApartmentDeleted"
    assert (deleted.apartment_id, deleted.building_id, deleted.number) == (
        apartment.id,
        building.id,
        "601",
    )
    assert type(released).__name__ == "ApartmentNumberReleased"
    assert building.apartments == {}
    add_apartment(building, community, "601")


def test_a_deleted_apartment_takes_no_more_commands() -> None:
    apartment, building, community = an_apartment()
    apartment.delete(building)

    with pytest.raises(NotFound):
        apartment.reset()
    with pytest.raises(NotFound):
        edit(apartment, building, community, remark="x")
    with pytest.raises(NotFound):
        apartment.delete(building)


# --- the whole story, through an event store -------------------------------------------------


def test_events_are_json_friendly_and_replay_to_the_same_state() -> None:
    app = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    community = create(
        installer_id=INSTALLER, name="Seaside", feature_plan="premium", address={"city": "Götzis"}
    )
    building = add_building(community, name="Building A", ground_floor="G0", floor_start=1)
    apartment = add_apartment(
        building,
        community,
        "2#1",
        floor="G1",
        accessible_floors=["G0", 3],
        resident=resident(landlines=["1"]),
    )
    edit(apartment, building, community, number="2#2", resident={"mobile": "144"})
    apartment.reset()
    edit(community, address={"street": "111"}, video_storage=True)

    app.save(community, building, apartment)

    replayed = app.repository.get(apartment.id)
    assert (replayed.settings(), replayed.resident()) == (
        apartment.settings(),
        apartment.resident(),
    )
    assert app.repository.get(building.id).apartments == {"2#2": apartment.id}
    assert app.repository.get(community.id).settings() == community.settings()


def test_an_id_may_be_chosen_by_the_caller_for_idempotent_retries() -> None:
    community_id, building_id, apartment_id = uuid4(), uuid4(), uuid4()
    community = create(
        installer_id=INSTALLER, community_id=community_id, name="S", feature_plan="premium"
    )
    building = add_building(community, building_id=building_id, name="A")
    apartment = add_apartment(building, community, apartment_id=apartment_id)

    assert (community.id, building.id, apartment.id) == (community_id, building_id, apartment_id)
