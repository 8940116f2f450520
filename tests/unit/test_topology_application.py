"""Topology application: commands and queries on the embedded SQLite store, no broker.

Each test acts as an installer (`context.acting`) and asserts on what the store then holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from concierge import context
from concierge.config import Settings
from concierge.storage import store_env
from contracts.errors import Conflict, Forbidden, Invalid, NotFound
from services.topology.application import TopologyApplication

LUNA = str(uuid.uuid4())
MARK = str(uuid.uuid4())


def installer(installer_id: str = LUNA, actor: str = "installer:luna") -> dict[str, Any]:
    return {"actor": actor, "correlation_id": f"req-{uuid.uuid4()}", "installer_id": installer_id,
            "role": "installer"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TopologyApplication]:
    application = TopologyApplication(env=store_env("topology", Settings(data_dir=tmp_path)))
    yield application
    application.close()


@pytest.fixture
def luna() -> Iterator[None]:
    with context.acting(installer()):
        yield


def resident(**fields: Any) -> dict[str, Any]:
    return {"first_name": "Lily", "last_name": "Green", "email": "lily@example.com"} | fields


def a_site(app: TopologyApplication) -> tuple[str, str, str]:
    """A premium community with Building A and APT 101."""
    community = app.create_community({"name": "Seaside", "feature_plan": "premium"})
    building = app.add_building(community, {"name": "Building A"})
    apartment = app.add_apartment(building, {"number": "101", "resident": resident()})
    return community, building, apartment


def types_of(app: TopologyApplication, after: int = 0) -> list[str]:
    return [record.type for record in app.read(after)]


# --- community -------------------------------------------------------------------------------


def test_an_installer_creates_a_community_that_belongs_to_them(app: TopologyApplication,
                                                               luna: None) -> None:
    community_id = app.create_community({"name": "Seaside", "feature_plan": "basic",
                                         "time_zone": "Europe/Vienna"})

    community = app.get_community(community_id)
    assert community["installer_id"] == LUNA
    assert (community["name"], community["feature_plan"], community["time_zone"]) == (
        "Seaside", "basic", "Europe/Vienna")
    assert community["scan_indoor_monitor_qr_code"] is True  # the manual's default
    assert community["building_count"] == 0
    assert types_of(app) == ["CommunityCreated"]


def test_a_community_is_edited(app: TopologyApplication, luna: None) -> None:
    community_id = app.create_community({"name": "Seaside", "feature_plan": "basic"})

    app.edit_community(community_id, {"name": "Seaside Park", "feature_plan": "premium",
                                      "landline_service": True, "address": {"city": "Götzis"}})

    community = app.get_community(community_id)
    assert (community["name"], community["feature_plan"], community["landline_service"]) == (
        "Seaside Park", "premium", True)
    assert community["address"]["city"] == "Götzis"
    assert types_of(app) == ["CommunityCreated", "CommunityEdited"]


def test_a_community_is_deleted_only_once_it_holds_no_buildings(app: TopologyApplication,
                                                                luna: None) -> None:
    community, building, apartment = a_site(app)
    before = app.max_position()

    with pytest.raises(Conflict):
        app.delete_community(community)
    assert app.max_position() == before  # a refused command saves nothing

    app.delete_apartment(apartment)
    app.delete_building(building)
    app.delete_community(community)
    with pytest.raises(NotFound):
        app.get_community(community)
    assert types_of(app, before) == ["ApartmentDeleted", "ApartmentNumberReleased",
                                     "BuildingDeleted", "BuildingNameReleased", "CommunityDeleted"]


# --- building --------------------------------------------------------------------------------


def test_a_building_is_added_renamed_and_deleted(app: TopologyApplication, luna: None) -> None:
    community = app.create_community({"name": "Seaside", "feature_plan": "premium"})

    building = app.add_building(community, {"name": "Building A", "ground_floor": "G1"})
    app.edit_building(building, {"name": "Tower A", "floor_start": 2})

    assert app.get_building(building) | {"created_at": None, "modified_at": None} == {
        "id": building, "community_id": community, "installer_id": LUNA, "name": "Tower A",
        "ground_floor": "G1", "floor_start": 2, "apartment_count": 0,
        "created_at": None, "modified_at": None,
    }
    assert app.get_community(community)["building_count"] == 1
    app.delete_building(building)
    assert app.get_community(community)["building_count"] == 0
    with pytest.raises(NotFound):
        app.get_building(building)


def test_building_names_are_unique_in_a_community(app: TopologyApplication, luna: None) -> None:
    community = app.create_community({"name": "Seaside", "feature_plan": "premium"})
    app.add_building(community, {"name": "Building A"})
    other = app.add_building(community, {"name": "Building B"})

    with pytest.raises(Conflict) as caught:
        app.add_building(community, {"name": " building a "})
    assert "name" in caught.value.errors
    with pytest.raises(Conflict):
        app.edit_building(other, {"name": "BUILDING A"})


def test_a_building_holding_apartments_is_not_deleted(app: TopologyApplication,
                                                      luna: None) -> None:
    _community, building, _apartment = a_site(app)

    with pytest.raises(Conflict):
        app.delete_building(building)
    assert app.get_building(building)["apartment_count"] == 1


# --- apartment -------------------------------------------------------------------------------


def test_an_apartment_is_added_with_its_resident_in_one_save(app: TopologyApplication,
                                                             luna: None) -> None:
    community = app.create_community({"name": "Seaside", "feature_plan": "premium"})
    building = app.add_building(community, {"name": "Building A"})
    before = app.max_position()

    apartment_id = app.add_apartment(building, {"number": "2#123", "floor": "G0",
                                                "resident": resident(mobile="14587444")})

    records = app.read(before)
    assert {r.type for r in records} == {"ApartmentAdded", "ResidentAdded",
                                         "ApartmentNumberReserved"}
    apartment = app.get_apartment(apartment_id)
    assert (apartment["number"], apartment["floor"], apartment["building_id"]) == (
        "2#123", "G0", building)
    assert apartment["resident"]["mobile"] == "14587444"
    assert apartment["app_status"] is None  # no read model wired in this test
    assert app.get_building(building)["apartment_count"] == 1


def test_apt_numbers_are_unique_in_a_building_until_deleted(app: TopologyApplication,
                                                            luna: None) -> None:
    _community, building, apartment = a_site(app)

    with pytest.raises(Conflict) as caught:
        app.add_apartment(building, {"number": "101", "resident": resident()})
    assert "number" in caught.value.errors

    app.delete_apartment(apartment)
    again = app.add_apartment(building, {"number": "101", "resident": resident()})
    assert app.get_apartment(again)["number"] == "101"
    with pytest.raises(NotFound):
        app.get_apartment(apartment)


def test_an_apartment_and_its_resident_are_edited(app: TopologyApplication, luna: None) -> None:
    _community, building, apartment = a_site(app)
    app.add_apartment(building, {"number": "102", "resident": resident()})

    app.edit_apartment(apartment, {"number": "103", "name": "The Green",
                                   "resident": {"last_name": "Brown"}})

    edited = app.get_apartment(apartment)
    assert (edited["number"], edited["name"], edited["resident"]["last_name"]) == (
        "103", "The Green", "Brown")
    with pytest.raises(Conflict):
        app.edit_apartment(apartment, {"number": "102"})
    # The old number is free again in the building.
    app.add_apartment(building, {"number": "101", "resident": resident()})


def test_the_basic_plan_needs_an_indoor_monitor_in_every_apartment(app: TopologyApplication,
                                                                   luna: None) -> None:
    community = app.create_community({"name": "Seaside", "feature_plan": "basic"})
    building = app.add_building(community, {"name": "Building A"})

    with pytest.raises(Invalid) as caught:
        app.add_apartment(building, {"number": "101", "resident": resident()})
    assert "indoor_monitor_mac" in caught.value.errors
    apartment = app.add_apartment(building, {"number": "101", "resident": resident(),
                                             "indoor_monitor_mac": "0c:11:05:0b:98:14"})
    assert app.get_apartment(apartment)["indoor_monitor_mac"] == "0C11050B9814"


def test_a_reset_clears_contact_data_and_keeps_the_names(app: TopologyApplication,
                                                         luna: None) -> None:
    _community, _building, apartment = a_site(app)
    app.edit_apartment(apartment, {"resident": {"mobile": "123", "country": "AT",
                                                "landlines": ["1458333"]}})

    app.reset_apartment(apartment)

    after = app.get_apartment(apartment)["resident"]
    assert (after["first_name"], after["last_name"]) == ("Lily", "Green")
    assert (after["email"], after["mobile"], after["country"], after["landlines"]) == (
        None, None, None, [])


def test_the_history_lists_changes_oldest_first_with_who_made_them(
        app: TopologyApplication) -> None:
    with context.acting(installer(actor="installer:luna")):
        _community, _building, apartment = a_site(app)
    with context.acting(installer(actor="sub-installer:lin")):
        app.edit_apartment(apartment, {"resident": {"first_name": "Judy"}})
        app.reset_apartment(apartment)

        history = app.apartment_history(apartment)["items"]

    assert [(h["type"], h["actor"]) for h in history] == [
        ("ApartmentAdded", "installer:luna"),
        ("ResidentAdded", "installer:luna"),
        ("ResidentEdited", "sub-installer:lin"),
        ("ApartmentReset", "sub-installer:lin"),
    ]
    assert [h["occurred_at"] for h in history] == sorted(h["occurred_at"] for h in history)
    assert history[2]["data"]["changes"] == {"first_name": "Judy"}
    assert history[3]["data"]["cleared_fields"] == ["email", "mobile", "country", "landlines"]
    assert all("__meta__" not in h["data"] and "timestamp" not in h["data"] for h in history)


# --- scoping ---------------------------------------------------------------------------------

# Every call that takes an id, as (name, call).
ID_CALLS: list[tuple[str, str, Callable[[TopologyApplication, str], Any]]] = [
    ("community", "get_community", lambda app, i: app.get_community(i)),
    ("community", "edit_community", lambda app, i: app.edit_community(i, {"name": "Mine"})),
    ("community", "delete_community", lambda app, i: app.delete_community(i)),
    ("community", "add_building", lambda app, i: app.add_building(i, {"name": "B"})),
    ("building", "get_building", lambda app, i: app.get_building(i)),
    ("building", "edit_building", lambda app, i: app.edit_building(i, {"name": "Mine"})),
    ("building", "delete_building", lambda app, i: app.delete_building(i)),
    ("building", "add_apartment",
     lambda app, i: app.add_apartment(i, {"number": "9", "resident": resident()})),
    ("apartment", "get_apartment", lambda app, i: app.get_apartment(i)),
    ("apartment", "edit_apartment", lambda app, i: app.edit_apartment(i, {"name": "Mine"})),
    ("apartment", "reset_apartment", lambda app, i: app.reset_apartment(i)),
    ("apartment", "delete_apartment", lambda app, i: app.delete_apartment(i)),
    ("apartment", "apartment_history", lambda app, i: app.apartment_history(i)),
]


@pytest.mark.parametrize(("kind", "name", "call"), ID_CALLS, ids=[c[1] for c in ID_CALLS])
def test_another_installer_finds_nothing_and_changes_nothing(
        app: TopologyApplication, kind: str, name: str,
        call: Callable[[TopologyApplication, str], Any]) -> None:
    with context.acting(installer(LUNA)):
        community, building, apartment = a_site(app)
    before = app.max_position()
    ids = {"community": community, "building": building, "apartment": apartment}

    with context.acting(installer(MARK)), pytest.raises(NotFound):
        call(app, ids[kind])
    assert app.max_position() == before


@pytest.mark.parametrize("bad_id", ["", "not-a-uuid", "'; drop table x;--", str(uuid.uuid4()),
                                    None, 42, "0" * 1000])
@pytest.mark.parametrize(("kind", "name", "call"), ID_CALLS, ids=[c[1] for c in ID_CALLS])
def test_a_bad_or_unknown_id_is_not_found(app: TopologyApplication, luna: None, kind: str,
                                          name: str, call: Callable[..., Any],
                                          bad_id: Any) -> None:
    with pytest.raises(NotFound):
        call(app, bad_id)


@pytest.mark.parametrize(("kind", "name", "call"), ID_CALLS, ids=[c[1] for c in ID_CALLS])
def test_an_id_of_another_kind_is_not_found(app: TopologyApplication, luna: None, kind: str,
                                            name: str, call: Callable[..., Any]) -> None:
    community, building, apartment = a_site(app)
    wrong = {"community": apartment, "building": community, "apartment": building}[kind]

    with pytest.raises(NotFound):
        call(app, wrong)


@pytest.mark.parametrize("ctx", [
    {"actor": "distributor:d", "role": "distributor", "installer_id": LUNA},
    {"actor": "installer:luna", "role": "installer", "installer_id": None},
    {"actor": "installer:luna", "role": "installer", "installer_id": "luna"},
    None,
], ids=["distributor", "no-installer", "bad-installer-id", "system"])
def test_only_an_installer_manages_topology(app: TopologyApplication, ctx: Any) -> None:
    with context.acting(installer(LUNA)):
        community, _building, _apartment = a_site(app)

    with context.acting(ctx):
        with pytest.raises(Forbidden):
            app.create_community({"name": "X", "feature_plan": "basic"})
        with pytest.raises(Forbidden):
            app.get_community(community)
        with pytest.raises(Forbidden):
            app.edit_community(community, {"name": "X"})


# --- bad input -------------------------------------------------------------------------------


def test_bad_fields_are_named_and_nothing_is_saved(app: TopologyApplication, luna: None) -> None:
    with pytest.raises(Invalid) as caught:
        app.create_community({"name": " ", "feature_plan": "gold"})
    assert sorted(caught.value.errors) == ["feature_plan", "name"]

    community, building, apartment = a_site(app)
    before = app.max_position()
    with pytest.raises(Invalid) as caught:
        app.add_apartment(building, {"number": "#12", "resident": {"first_name": "Lily"}})
    assert sorted(caught.value.errors) == ["number", "resident"]
    with pytest.raises(Invalid) as caught:
        app.edit_apartment(apartment, {"floor": 500, "colour": "red"})
    assert sorted(caught.value.errors) == ["colour", "floor"]
    with pytest.raises(Invalid) as caught:
        app.edit_community(community, {"landline_service": True, "feature_plan": "basic"})
    assert "landline_service" in caught.value.errors
    assert app.max_position() == before
