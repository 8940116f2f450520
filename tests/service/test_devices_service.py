"""The devices service's RPC entrypoints, called through nameko's `worker_factory`.

Devices runs on its real wiring beside a real topology (both embedded, or both on PostgreSQL);
accounts is a fake log holding the installers' accounts. Devices reads the other two logs as it
would over RPC, and catches up on them when a command names a site it has not heard of yet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import select

from concierge.config import Settings
from concierge.rebuild import rebuild
from concierge.runtime import Wiring
from contracts.errors import Conflict, Forbidden, Invalid, NotFound
from services.devices.application import DevicesApplication
from services.devices.declaration import CONTEXT as DEVICES
from services.devices.service import DevicesService
from services.topology.declaration import CONTEXT as TOPOLOGY
from services.topology.service import TopologyService

DISTRIBUTOR = str(uuid.uuid4())
OTHER_DISTRIBUTOR = str(uuid.uuid4())
LUNA = str(uuid.uuid4())
MARK = str(uuid.uuid4())


def ctx_of(installer_id: str, actor: str) -> dict[str, Any]:
    return {"actor": actor, "correlation_id": str(uuid.uuid4()), "installer_id": installer_id,
            "role": "installer", "account_id": installer_id}


LUNA_CTX = ctx_of(LUNA, "installer:luna")
MARK_CTX = ctx_of(MARK, "installer:mark")
DIST_CTX = {"actor": "distributor:dora", "role": "distributor", "account_id": DISTRIBUTOR,
            "installer_id": None}
OTHER_DIST_CTX = {**DIST_CTX, "account_id": OTHER_DISTRIBUTOR, "actor": "distributor:otto"}


class AccountsLog:
    """A fake accounts service: the installers' accounts, read as a subscriber catches up."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def installer_created(self, installer_id: str, distributor_id: str) -> None:
        position = len(self.events) + 1
        self.events.append({
            "event_id": str(uuid.uuid4()), "type": "PortalAccountCreated", "version": 1,
            "source": "accounts", "stream_id": installer_id, "stream_version": 1,
            "position": position, "occurred_at": "2026-10-21T10:52:45+00:00",
            "actor": "distributor:dora", "correlation_id": "",
            "data": {"role": "installer", "username": f"i{position}", "email": None,
                     "created_by": distributor_id}})

    def read(self, after: int, limit: int) -> list[dict[str, Any]]:
        return [e for e in self.events if e["position"] > after][:limit]


@pytest.fixture
def store(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


both_stores = pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def accounts() -> AccountsLog:
    log = AccountsLog()
    log.installer_created(LUNA, DISTRIBUTOR)
    log.installer_created(MARK, DISTRIBUTOR)
    return log


@pytest.fixture
def wirings(request: pytest.FixtureRequest, tmp_path: Path, store: str, schema_prefix: str,
            accounts: AccountsLog) -> Iterator[tuple[Wiring, Wiring]]:
    database = request.getfixturevalue("postgres_url") if store == "postgres" else ""
    settings = Settings(data_dir=tmp_path / "var", database_url=database,
                        schema_prefix=schema_prefix)
    logs: dict[str, Callable[[int, int], list[dict[str, Any]]]] = {"accounts": accounts.read}

    def read(source: str, after: int, limit: int) -> list[dict[str, Any]]:
        return logs[source](after, limit) if source in logs else []

    topology = TOPOLOGY.wire(settings, read_remote=read)
    logs["topology"] = topology.read_log
    devices = DEVICES.wire(settings, read_remote=read)
    logs["devices"] = devices.read_log
    devices_app = devices.app
    assert isinstance(devices_app, DevicesApplication)
    topology.app.monitor_macs = devices_app.reserve_mac  # what the RPC call runs
    yield devices, topology
    devices.close()
    topology.close()


@pytest.fixture
def wiring(wirings: tuple[Wiring, Wiring]) -> Wiring:
    return wirings[0]


@pytest.fixture
def svc(wiring: Wiring) -> DevicesService:
    return worker_factory(DevicesService, runtime=wiring)


@pytest.fixture
def sites(wirings: tuple[Wiring, Wiring]) -> TopologyService:
    return worker_factory(TopologyService, runtime=wirings[1])


def a_site(sites: TopologyService, ctx: dict[str, Any] = LUNA_CTX,
           name: str = "Seaside") -> tuple[str, str, str]:
    community = sites.create_community(ctx, {"name": name, "feature_plan": "premium"})["id"]
    building = sites.add_building(ctx, community, {"name": "Building A"})["id"]
    apartment = sites.add_apartment(ctx, building, {
        "number": "101", "resident": {"first_name": "Lily", "last_name": "Green",
                                      "email": "lily@example.com"}})["id"]
    return community, building, apartment


def register(svc: DevicesService, *macs: str, installer: str = LUNA) -> None:
    for mac in macs:
        svc.register_mac(DIST_CTX, installer, {"mac": mac})


def fields_of(call: Callable[[], Any]) -> list[str]:
    with pytest.raises(Invalid) as raised:
        call()
    return sorted(raised.value.errors)


# --- the installer's whole path ------------------------------------------------------------


@both_stores
def test_an_installer_installs_devices_in_every_area(svc: DevicesService,
                                                     sites: TopologyService) -> None:
    community, building, apartment = a_site(sites)
    register(svc, "0c:11:05:0b:98:14", "0C-11-05-0B-98-15", "0c11050b9816")

    gate = svc.add_device(LUNA_CTX, "community", community,
                          {"type": 0, "mac": "0C11050B9814", "name": "Gate"})
    lobby = svc.add_device(LUNA_CTX, "building", building,
                           {"type": 50, "mac": "0c11050b9815", "name": "Lobby reader",
                            "relays": [{"name": "Main door", "dtmf": "1",
                                        "access_methods": ["pin", "rf_card"]},
                                       {"name": "Back door", "dtmf": "2"}]})
    monitor = svc.add_device(LUNA_CTX, "apartment", apartment,
                             {"type": 2, "mac": "0C:11:05:0B:98:16", "name": "Living room",
                              "arming": True, "builtin_relays": ["Light", " "],
                              "external_relay": {"model": "HF-8000", "mode": "ethernet",
                                                 "ip": "192.168.1.20", "port": 8080,
                                                 "relays": [{"name": "Garage"}]}})
    assert len({gate["sip"], lobby["sip"], monitor["sip"]}) == 3
    assert all(len(d["sip"]) == 10 and d["sip"].startswith("59")
               for d in (gate, lobby, monitor))

    detail = svc.get_device(LUNA_CTX, monitor["id"])
    assert detail["mac"] == "0C11050B9816" and detail["area"] == "apartment"
    assert detail["builtin_relays"] == ["Light"]
    assert detail["external_relay"]["relays"] == [{"name": "Garage", "function": "door"}]
    assert detail["owner"] == "Lily Green" and detail["last_connection"] is None
    gate_detail = svc.get_device(LUNA_CTX, gate["id"])
    assert gate_detail["relays"] == [{"name": "Relay1", "dtmf": "#", "enabled": True,
                                      "access_methods": ["smartplus_homepage", "talking_page",
                                                         "pin", "face", "rf_card",
                                                         "bluetooth", "nfc"]}]
    assert gate_detail["allow_monitor"] is True and gate_detail["buildings"] == "all"

    listed = svc.list_devices(LUNA_CTX, "community", community, {"sort": "name"})
    assert [d["name"] for d in listed["items"]] == ["Gate", "Living room", "Lobby reader"]
    assert listed["total"] == 3
    living = listed["items"][1]
    assert (living["building_name"], living["apartment_number"], living["resident"]) == (
        "Building A", "101", "Lily Green")
    assert svc.list_devices(LUNA_CTX, "building", building)["total"] == 2
    assert svc.list_devices(LUNA_CTX, "apartment", apartment)["total"] == 1

    edited = svc.edit_device(LUNA_CTX, lobby["id"], {"name": "Lobby", "network_group": 3})
    assert (edited["name"], edited["network_group"]) == ("Lobby", 3)
    assert [d["name"] for d in svc.list_devices(LUNA_CTX, "building", building,
                                                {"q": "lob"})["items"]] == ["Lobby"]

    macs = svc.list_macs(LUNA_CTX, {"sort": "mac"})
    assert [(m["mac"], m["in_use"]) for m in macs["items"]] == [
        ("0C11050B9814", True), ("0C11050B9815", True), ("0C11050B9816", True)]
    with pytest.raises(Conflict) as refused:
        svc.remove_mac(LUNA_CTX, "0C11050B9814")
    assert "mac" in refused.value.errors
    svc.remove_device(LUNA_CTX, gate["id"])
    with pytest.raises(NotFound):
        svc.get_device(LUNA_CTX, gate["id"])
    svc.remove_mac(LUNA_CTX, "0c:11:05:0b:98:14")
    assert svc.list_macs(LUNA_CTX)["total"] == 2
    assert svc.list_devices(LUNA_CTX, "community", community)["total"] == 2
    json.dumps([detail, listed, macs])


def test_a_mac_is_one_mac_whatever_its_separators(svc: DevicesService) -> None:
    register(svc, "0c:11:05:0b:98:14")
    for same in ("0C-11-05-0B-98-14", "0c11050b9814"):
        with pytest.raises(Conflict) as refused:
            register(svc, same)
        assert refused.value.errors == {
            "mac": ["This MAC is already in the installer's MAC library."]}
    with pytest.raises(Conflict) as taken:
        register(svc, "0C11050B9814", installer=MARK)
    assert taken.value.errors == {"mac": ["This MAC is registered to another installer."]}
    assert svc.list_macs(MARK_CTX)["total"] == 0


def test_a_distributor_registers_only_to_its_own_installers(svc: DevicesService) -> None:
    for ctx, installer in ((OTHER_DIST_CTX, LUNA), (DIST_CTX, str(uuid.uuid4())),
                           (DIST_CTX, "not-an-id")):
        with pytest.raises(NotFound):
            svc.register_mac(ctx, installer, {"mac": "0C11050B9814"})
        with pytest.raises(NotFound):
            svc.import_macs(ctx, installer, {"csv": "0C11050B9814"})
    with pytest.raises(Forbidden):
        svc.register_mac(LUNA_CTX, LUNA, {"mac": "0C11050B9814"})
    assert fields_of(lambda: svc.register_mac(DIST_CTX, LUNA, {"mac": "0C11050B98"})) == ["mac"]
    assert fields_of(lambda: svc.import_macs(DIST_CTX, LUNA, {"csv": ""})) == ["csv"]


def test_an_installer_created_a_moment_ago_is_known(svc: DevicesService,
                                                    accounts: AccountsLog) -> None:
    newcomer = str(uuid.uuid4())
    accounts.installer_created(newcomer, DISTRIBUTOR)  # not delivered: read on the miss
    svc.register_mac(DIST_CTX, newcomer, {"mac": "0C11050B9899"})
    assert svc.list_macs(ctx_of(newcomer, "installer:new"))["total"] == 1


@both_stores
def test_a_csv_reports_every_row_and_applies_the_good_ones(svc: DevicesService) -> None:
    register(svc, "0C11050B0001")
    register(svc, "0C11050B0002", installer=MARK)
    csv = ("MAC\n0c:11:05:0b:00:01\n0C11050B0002\n0C11050B0003\nnot-a-mac\n\n"
           "0c-11-05-0b-00-03\n0C11050B0004,extra column\n")
    report = svc.import_macs(DIST_CTX, LUNA, {"csv": csv})
    assert [(o["line"], o["mac"], o["outcome"]) for o in report["outcomes"]] == [
        (2, "0C11050B0001", "duplicate"), (3, "0C11050B0002", "taken"),
        (4, "0C11050B0003", "added"), (5, "not-a-mac", "malformed"),
        (7, "0C11050B0003", "duplicate"), (8, "0C11050B0004", "added")]
    assert (report["rows"], report["added"], report["duplicate"], report["taken"],
            report["malformed"]) == (6, 2, 2, 1, 1)
    assert svc.list_macs(LUNA_CTX)["total"] == 3
    again = svc.import_macs(DIST_CTX, LUNA, {"csv": csv})
    assert again["added"] == 0 and svc.list_macs(LUNA_CTX)["total"] == 3


def test_a_device_needs_a_mac_of_its_own_installer_used_by_no_other(
        svc: DevicesService, sites: TopologyService) -> None:
    community, _, _ = a_site(sites)
    register(svc, "0C11050B0001")
    register(svc, "0C11050B0002", installer=MARK)
    add = {"type": 0, "name": "Gate"}
    assert fields_of(lambda: svc.add_device(LUNA_CTX, "community", community,
                                            {**add, "mac": "0C11050B0002"})) == ["mac"]
    assert fields_of(lambda: svc.add_device(LUNA_CTX, "community", community,
                                            {**add, "mac": "0C11050B0009"})) == ["mac"]
    svc.add_device(LUNA_CTX, "community", community, {**add, "mac": "0C11050B0001"})
    with pytest.raises(Conflict) as used:
        svc.add_device(LUNA_CTX, "community", community, {**add, "mac": "0c11050b0001"})
    assert list(used.value.errors) == ["mac"]


def test_another_installers_site_and_device_are_not_found(svc: DevicesService,
                                                          sites: TopologyService) -> None:
    community, building, apartment = a_site(sites)
    register(svc, "0C11050B0001")
    device = svc.add_device(LUNA_CTX, "community", community,
                            {"type": 0, "mac": "0C11050B0001", "name": "Gate"})
    register(svc, "0C11050B0002", installer=MARK)
    for area, area_id in (("community", community), ("building", building),
                          ("apartment", apartment), ("community", "not-an-id"),
                          ("galaxy", community)):
        with pytest.raises(NotFound):
            svc.add_device(MARK_CTX, area, area_id,
                           {"type": 0, "mac": "0C11050B0002", "name": "Gate"})
        with pytest.raises(NotFound):
            svc.list_devices(MARK_CTX, area, area_id)
    for call in (lambda: svc.get_device(MARK_CTX, device["id"]),
                 lambda: svc.edit_device(MARK_CTX, device["id"], {"name": "x"}),
                 lambda: svc.remove_device(MARK_CTX, device["id"]),
                 lambda: svc.remove_mac(MARK_CTX, "0C11050B0001"),
                 lambda: svc.get_device(LUNA_CTX, "nope")):
        with pytest.raises(NotFound):
            call()


def test_bad_device_payloads_name_each_field(svc: DevicesService,
                                             sites: TopologyService) -> None:
    community, building, apartment = a_site(sites)
    register(svc, "0C11050B0001")
    base = {"type": 0, "mac": "0C11050B0001", "name": "Gate"}
    cases: list[tuple[str, str, dict[str, Any], list[str]]] = [
        ("community", community, {"type": 7, "mac": "zz", "name": " "},
         ["mac", "name", "type"]),
        ("community", community, {**base, "internet_access": False}, ["static_ip"]),
        ("community", community, {**base, "internet_access": False, "static_ip": "300.1.1.1"},
         ["static_ip"]),
        ("community", community, {**base, "relays": [{"dtmf": "12345"}] * 5}, ["relays"]),
        ("community", community, {**base, "arming": True}, ["arming"]),
        ("community", community, {**base, "type": 2, "relays": [{}]}, ["relays"]),
        ("community", community, {**base, "type": 2, "external_relay": {
            "model": "MK485", "mode": "ethernet", "relays": [{"name": "a"}]}},
         ["external_relay"]),
        ("community", community, {**base, "type": 2, "external_relay": {
            "model": "HF-8000", "relays": [{"name": "a"}] * 5}}, ["external_relay"]),
        ("community", community, {**base, "buildings": [str(uuid.uuid4())]}, ["buildings"]),
        ("community", community, {**base, "buildings": []}, ["buildings"]),
        ("building", building, {**base, "buildings": [building]}, ["buildings"]),
        ("building", building, {**base, "door_hold_open": True}, ["door_hold_open"]),
        ("apartment", apartment, {**base, "type": 3}, ["type"]),
        ("community", community, {**base, "colour": "red"}, ["colour"]),
    ]
    for area, area_id, payload, expected in cases:
        def add(area: str = area, area_id: str = area_id,
                payload: dict[str, Any] = payload) -> Any:
            return svc.add_device(LUNA_CTX, area, area_id, payload)

        assert fields_of(add) == expected, payload
    assert svc.list_devices(LUNA_CTX, "community", community)["total"] == 0


def test_a_community_device_serves_chosen_buildings(svc: DevicesService,
                                                    sites: TopologyService) -> None:
    community, building, _ = a_site(sites)
    register(svc, "0C11050B0001")
    device = svc.add_device(LUNA_CTX, "community", community,
                            {"type": 0, "mac": "0C11050B0001", "name": "Gate",
                             "buildings": [building, building]})
    assert svc.get_device(LUNA_CTX, device["id"])["buildings"] == [building]
    assert fields_of(lambda: svc.edit_device(LUNA_CTX, device["id"], {
        "buildings": [str(uuid.uuid4())]})) == ["buildings"]
    assert svc.edit_device(LUNA_CTX, device["id"], {"buildings": "all"})["buildings"] == "all"


def test_lists_page_sort_and_search_with_kept_totals(svc: DevicesService,
                                                     sites: TopologyService) -> None:
    community, _, _ = a_site(sites)
    macs = [f"0C11050B{n:04X}" for n in range(23)]
    svc.import_macs(DIST_CTX, LUNA, {"csv": "\n".join(macs)})
    added = [svc.add_device(LUNA_CTX, "community", community,
                            {"type": 0, "mac": mac, "name": f"Door {n:02d}"})
             for n, mac in enumerate(macs)]
    for sort, key in (("name", "name"), ("-name", "name"), ("mac", "mac"), ("sip", "sip"),
                      ("-created_at", "created_at"), ("created_at", "created_at")):
        seen = []
        for page in (1, 2, 3):
            got = svc.list_devices(LUNA_CTX, "community", community,
                                   {"sort": sort, "page": page, "per_page": 10})
            assert got["total"] == 23
            seen += [item[key] for item in got["items"]]
        assert seen == sorted(seen, reverse=sort.startswith("-")), sort
        assert len(seen) == 23
    sip = added[5]["sip"]
    assert [d["sip"] for d in svc.list_devices(LUNA_CTX, "community", community,
                                               {"q": sip})["items"]] == [sip]
    assert svc.list_devices(LUNA_CTX, "community", community, {"q": "door 1"})["total"] == 10
    assert svc.list_devices(LUNA_CTX, "community", community, {"q": "%"})["total"] == 0
    assert svc.list_macs(LUNA_CTX, {"q": "0b:00:1"})["total"] == 7  # 0010 .. 0016
    assert svc.list_macs(LUNA_CTX, {"in_use": False})["total"] == 0


def test_bad_list_queries_name_the_field(svc: DevicesService, sites: TopologyService) -> None:
    community, _, _ = a_site(sites)
    for query, field in (({"sort": "colour"}, "sort"), ({"page": 0}, "page"),
                         ({"per_page": 1000}, "per_page"), ({"type": 9}, "type")):
        assert fields_of(lambda q=query: svc.list_devices(LUNA_CTX, "community", community,
                                                          q)) == [field]
    assert fields_of(lambda: svc.list_macs(LUNA_CTX, {"sort": "name"})) == ["sort"]


def test_a_device_in_a_building_created_a_moment_ago_is_added(
        svc: DevicesService, sites: TopologyService, wiring: Wiring) -> None:
    """Nothing delivered topology's events to devices: the command reads them on the miss."""
    register(svc, "0C11050B0001", "0C11050B0002")  # devices has read the logs up to here
    _community, building, apartment = a_site(sites)
    svc.add_device(LUNA_CTX, "building", building,
                   {"type": 0, "mac": "0C11050B0001", "name": "Lobby"})
    svc.add_device(LUNA_CTX, "apartment", apartment,
                   {"type": 1, "mac": "0C11050B0002", "name": "Front door",
                    "door_hold_open": True})


def deliver(wiring: Wiring) -> None:
    """What the bus does: devices applies topology's and accounts' events in log order."""
    for source in ("accounts", "topology"):
        for sub in wiring.subscriptions[source]:
            sub.catch_up()


def test_topology_counts_the_devices_of_each_community(
        svc: DevicesService, sites: TopologyService, wirings: tuple[Wiring, Wiring]) -> None:
    topology = wirings[1]
    community, building, apartment = a_site(sites)
    other, _, _ = a_site(sites, name="Hillside")
    register(svc, *(f"0C11050B000{n}" for n in range(4)))
    ids = [svc.add_device(LUNA_CTX, area, area_id,
                          {"type": kind, "mac": f"0C11050B000{n}", "name": f"D{n}"})["id"]
           for n, (area, area_id, kind) in enumerate((
               ("community", community, 0), ("building", building, 0),
               ("apartment", apartment, 2), ("community", other, 3)))]

    def counted() -> tuple[int, int, int]:
        for _ in range(2):  # a second delivery of the same events moves nothing
            for sub in topology.subscriptions["devices"]:
                sub.catch_up()
        return (sites.get_community(LUNA_CTX, community)["device_count"],
                sites.get_community(LUNA_CTX, other)["device_count"],
                sites.dashboard(LUNA_CTX)["devices"])

    assert counted() == (3, 1, 4)
    svc.remove_device(LUNA_CTX, ids[1])
    assert counted() == (2, 1, 3)
    listed = sites.list_communities(LUNA_CTX, {"sort": "name"})["items"]
    assert [c["device_count"] for c in listed] == [1, 2]


def test_a_deleted_site_takes_no_new_device(svc: DevicesService, sites: TopologyService,
                                            wiring: Wiring) -> None:
    _community, _building, apartment = a_site(sites)
    register(svc, "0C11050B0001")
    sites.delete_apartment(LUNA_CTX, apartment)
    deliver(wiring)
    with pytest.raises(NotFound):
        svc.add_device(LUNA_CTX, "apartment", apartment,
                       {"type": 1, "mac": "0C11050B0001", "name": "Door"})


def test_a_site_deleted_a_moment_ago_is_gone_before_its_event_arrives(
        svc: DevicesService, sites: TopologyService, wiring: Wiring) -> None:
    """The caller saw the delete acknowledged; devices has not had the event from the bus."""
    community, building, apartment = a_site(sites)
    other, _, _ = a_site(sites, name="Hillside")
    deliver(wiring)
    for area, area_id in (("community", community), ("building", building),
                          ("apartment", apartment)):
        assert svc.list_devices(LUNA_CTX, area, area_id)["total"] == 0
    sites.delete_community(LUNA_CTX, community, True)
    for area, area_id in (("community", community), ("building", building),
                          ("apartment", apartment)):
        with pytest.raises(NotFound):
            svc.list_devices(LUNA_CTX, area, area_id)
        with pytest.raises(NotFound):
            svc.traffic_log(LUNA_CTX, "door", area, area_id)
    assert svc.list_devices(LUNA_CTX, "community", other)["total"] == 0


@both_stores
def test_a_rebuild_leaves_the_same_rows(svc: DevicesService, sites: TopologyService,
                                        wiring: Wiring) -> None:
    community, building, apartment = a_site(sites)
    svc.import_macs(DIST_CTX, LUNA, {"csv": "\n".join(f"0C11050B{n:04X}" for n in range(6))})
    ids = [svc.add_device(LUNA_CTX, area, area_id,
                          {"type": kind, "mac": f"0C11050B{n:04X}", "name": f"D{n}"})["id"]
           for n, (area, area_id, kind) in enumerate((("community", community, 0),
                                                      ("building", building, 50),
                                                      ("apartment", apartment, 2)))]
    svc.remove_device(LUNA_CTX, ids[0])
    svc.remove_mac(LUNA_CTX, "0C11050B0005")
    sites.edit_building(LUNA_CTX, building, {"name": "Tower"})
    deliver(wiring)
    before = _rows(wiring)
    rebuild(wiring)
    assert _rows(wiring) == before
    assert [d["building_name"] for d in svc.list_devices(LUNA_CTX, "community",
                                                          community)["items"]] == ["Tower"] * 2


def _rows(wiring: Wiring) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with wiring.engine.connect() as conn:
        for model in wiring.read_models:
            for table in model.metadata.sorted_tables:
                out[table.name] = sorted(tuple(map(str, r)) for r in conn.execute(select(table)))
    return out


# --- the indoor monitor an APT is added with ---------------------------------------------------


def basic_site(sites: TopologyService) -> tuple[str, str]:
    community = sites.create_community(LUNA_CTX, {"name": "Basic", "feature_plan": "basic"})["id"]
    building = sites.add_building(LUNA_CTX, community, {"name": "A"})["id"]
    return community, building


def apt(number: str, mac: str | None, **fields: Any) -> dict[str, Any]:
    return {"number": number, "indoor_monitor_mac": mac, **fields,
            "resident": {"first_name": "Lily", "last_name": "Green"}}


def test_an_apartment_s_indoor_monitor_becomes_a_device(
        svc: DevicesService, sites: TopologyService, wiring: Wiring) -> None:
    _, building = basic_site(sites)
    with pytest.raises(Invalid) as foreign:
        sites.add_apartment(LUNA_CTX, building, apt("101", "0C11050B0001"))
    assert list(foreign.value.errors) == ["indoor_monitor_mac"]
    register(svc, "0C11050B0001", "0C11050B0002")
    added = sites.add_apartment(LUNA_CTX, building, apt(
        "101", "0c:11:05:0b:00:01", indoor_monitor_name="Hall", indoor_monitor_relays=["Light"],
        indoor_monitor_arming_function=True))["id"]
    deliver(wiring)
    (monitor,) = svc.list_devices(LUNA_CTX, "apartment", added)["items"]
    assert (monitor["mac"], monitor["name"], monitor["type"]) == ("0C11050B0001", "Hall", 2)
    detail = svc.get_device(LUNA_CTX, monitor["id"])
    assert (detail["arming"], detail["builtin_relays"]) == (True, ["Light"])
    assert svc.list_macs(LUNA_CTX, {"in_use": True})["total"] == 1

    with pytest.raises(Conflict) as used:  # the MAC of another APT's monitor
        sites.add_apartment(LUNA_CTX, building, apt("102", "0C11050B0001"))
    assert list(used.value.errors) == ["indoor_monitor_mac"]
    with pytest.raises(Conflict) as number:  # topology's own refusal keeps no MAC
        sites.add_apartment(LUNA_CTX, building, apt("101", "0C11050B0002"))
    assert list(number.value.errors) == ["number"]
    sites.add_apartment(LUNA_CTX, building, apt("102", "0C11050B0002"))


def test_a_new_monitor_mac_replaces_the_monitor_and_frees_the_old_one(
        svc: DevicesService, sites: TopologyService, wiring: Wiring) -> None:
    _, building = basic_site(sites)
    register(svc, "0C11050B0001", "0C11050B0002", "0C11050B0003")
    added = sites.add_apartment(LUNA_CTX, building, apt("101", "0C11050B0001"))["id"]
    deliver(wiring)
    sites.edit_apartment(LUNA_CTX, added, {"indoor_monitor_mac": "0C11050B0002"})
    deliver(wiring)
    assert [d["mac"] for d in svc.list_devices(LUNA_CTX, "apartment", added)["items"]] == [
        "0C11050B0002"]
    assert [m["mac"] for m in svc.list_macs(LUNA_CTX, {"in_use": False})["items"]] == [
        "0C11050B0003", "0C11050B0001"]
    with pytest.raises(Invalid) as foreign:
        sites.edit_apartment(LUNA_CTX, added, {"indoor_monitor_mac": "0C11050B0099"})
    assert list(foreign.value.errors) == ["indoor_monitor_mac"]


def test_a_deleted_apartment_takes_its_devices_and_frees_their_macs(
        svc: DevicesService, sites: TopologyService, wiring: Wiring) -> None:
    community, building = basic_site(sites)
    register(svc, "0C11050B0001", "0C11050B0002", "0C11050B0003")
    added = sites.add_apartment(LUNA_CTX, building, apt("101", "0C11050B0001"))["id"]
    deliver(wiring)
    svc.add_device(LUNA_CTX, "apartment", added,
                   {"type": 1, "mac": "0C11050B0002", "name": "Door"})
    svc.add_device(LUNA_CTX, "building", building,
                   {"type": 0, "mac": "0C11050B0003", "name": "Lobby"})
    sites.delete_apartment(LUNA_CTX, added)
    deliver(wiring)
    assert [d["name"] for d in svc.list_devices(LUNA_CTX, "community", community)["items"]] == [
        "Lobby"]
    assert svc.list_macs(LUNA_CTX, {"in_use": False})["total"] == 2


def test_a_building_or_community_with_contents_goes_only_when_confirmed(
        svc: DevicesService, sites: TopologyService, wiring: Wiring) -> None:
    community, building, apartment = a_site(sites)
    other = sites.add_building(LUNA_CTX, community, {"name": "Building B"})["id"]
    register(svc, *(f"0C11050B000{n}" for n in range(4)))
    for n, (area, area_id, kind) in enumerate((
            ("apartment", apartment, 2), ("building", building, 0), ("building", other, 0),
            ("community", community, 0))):
        svc.add_device(LUNA_CTX, area, area_id,
                       {"type": kind, "mac": f"0C11050B000{n}", "name": f"D{n}"})
    with pytest.raises(Conflict) as kept:
        sites.delete_building(LUNA_CTX, building)
    assert list(kept.value.errors) == ["cascade"] and "1 APT" in kept.value.detail
    with pytest.raises(Conflict) as whole:
        sites.delete_community(LUNA_CTX, community)
    assert "2 building(s) and 1 APT(s)" in whole.value.detail

    sites.delete_building(LUNA_CTX, building, True)
    deliver(wiring)
    assert sorted(d["name"] for d in svc.list_devices(LUNA_CTX, "community", community)[
        "items"]) == ["D2", "D3"]
    assert svc.list_macs(LUNA_CTX, {"in_use": True})["total"] == 2
    with pytest.raises(NotFound):
        sites.get_apartment(LUNA_CTX, apartment)

    sites.delete_community(LUNA_CTX, community, True)
    deliver(wiring)
    assert svc.list_macs(LUNA_CTX, {"in_use": False})["total"] == 4
    with pytest.raises(NotFound):
        svc.list_devices(LUNA_CTX, "community", community)
    with pytest.raises(NotFound):
        sites.get_community(LUNA_CTX, community)


# --- resident credentials ----------------------------------------------------------------------


def test_credentials_are_unique_where_doors_are_shared_and_a_reset_wipes_them(
        svc: DevicesService, sites: TopologyService, wiring: Wiring,
        wirings: tuple[Wiring, Wiring]) -> None:
    _, building, apartment = a_site(sites)
    neighbour = sites.add_apartment(LUNA_CTX, building, {
        "number": "102", "resident": {"first_name": "Ned", "last_name": "Fox"}})["id"]
    register(svc, "0C11050B0001")
    door = svc.add_device(LUNA_CTX, "apartment", apartment,
                          {"type": 1, "mac": "0C11050B0001", "name": "Door"})["id"]
    added = {kind: svc.add_credential(LUNA_CTX, apartment, {"kind": kind, "value": value,
                                                            "holder": "Lily"})["id"]
             for kind, value in (("pin", "123456"), ("rf_card", "00ab12ff"),
                                 ("face", "face-7"), ("nfc", "04a224b2c35e80"),
                                 ("bluetooth", "aa:bb:cc:dd:ee:ff"))}
    listed = svc.list_credentials(LUNA_CTX, apartment)
    assert {(c["kind"], c["value"]) for c in listed["items"]} == {
        ("pin", "123456"), ("rf_card", "00AB12FF"), ("face", "face-7"),
        ("nfc", "04A224B2C35E80"), ("bluetooth", "AABBCCDDEEFF")}

    for kind, value in (("pin", "123456"), ("rf_card", "00AB12ff"), ("nfc", "04a224b2c35e80")):
        with pytest.raises(Conflict) as shared:  # another APT of the community
            svc.add_credential(LUNA_CTX, neighbour, {"kind": kind, "value": value})
        assert list(shared.value.errors) == ["value"]
    svc.add_credential(LUNA_CTX, neighbour, {"kind": "face", "value": "face-7"})
    with pytest.raises(Conflict):  # the same APT
        svc.add_credential(LUNA_CTX, apartment, {"kind": "face", "value": "face-7"})
    assert fields_of(lambda: svc.add_credential(LUNA_CTX, apartment, {
        "kind": "pin", "value": "12"})) == ["value"]
    assert fields_of(lambda: svc.add_credential(LUNA_CTX, apartment, {
        "kind": "iris", "value": "x"})) == ["kind"]
    with pytest.raises(NotFound):
        svc.add_credential(MARK_CTX, apartment, {"kind": "pin", "value": "9999"})

    svc.remove_credential(LUNA_CTX, apartment, added["pin"])
    svc.add_credential(LUNA_CTX, neighbour, {"kind": "pin", "value": "123456"})  # free again

    deliver(wiring)
    sites.reset_apartment(LUNA_CTX, apartment)
    deliver(wiring)
    assert [c["kind"] for c in svc.list_credentials(LUNA_CTX, apartment)["items"]] == [
        "rf_card"]  # the manual's reset keeps no PIN, face, NFC or Bluetooth
    svc.add_credential(LUNA_CTX, neighbour, {"kind": "nfc", "value": "04A224B2C35E80"})
    history = svc.device_history(LUNA_CTX, door)
    assert [h["type"] for h in history["items"]] == ["DeviceAdded", "DeviceCredentialsWiped"]
    topology = wirings[1]
    for sub in topology.subscriptions["devices"]:
        sub.catch_up()
    types = [h["type"] for h in sites.apartment_history(LUNA_CTX, apartment,
                                                        {"per_page": 100})["items"]]
    assert types[-2:] == ["ApartmentReset", "ApartmentCredentialsWiped"]
    wiped = sites.apartment_history(LUNA_CTX, apartment, {"per_page": 100})["items"][-1]
    assert (wiped["data"]["kinds"], wiped["data"]["removed"]) == (
        ["pin", "face", "nfc", "bluetooth"], 3)


# --- third-party cameras and locks -------------------------------------------------------------

CAMERA = {"name": "Gate camera", "rtsp_url": "rtsp://192.168.1.64:554/stream1",
          "username": "admin", "password": "s3cret"}


def test_cameras_and_locks_in_each_area(svc: DevicesService, sites: TopologyService,
                                        wiring: Wiring) -> None:
    community, building, apartment = a_site(sites)
    register(svc, "0C11050B0001")
    door = svc.add_device(LUNA_CTX, "building", building,
                          {"type": 0, "mac": "0C11050B0001", "name": "Door"})["id"]
    camera = svc.add_third_party(LUNA_CTX, "camera", "building", building,
                                 {**CAMERA, "linked_device_id": door})["id"]
    got = svc.get_third_party(LUNA_CTX, "camera", camera)
    assert (got["rtsp_url"], got["linked_device_id"], got["password_set"]) == (
        CAMERA["rtsp_url"], door, True)
    assert "password" not in got and "s3cret" not in json.dumps(got)
    lock = svc.add_third_party(LUNA_CTX, "lock", "apartment", apartment,
                               {"brand": "salto", "lock_id": "SK-001", "name": "Front"})["id"]
    assert svc.get_third_party(LUNA_CTX, "lock", lock)["lock_id"] == "SK-001"
    with pytest.raises(Conflict) as taken:
        svc.add_third_party(LUNA_CTX, "lock", "community", community,
                            {"brand": "salto", "lock_id": "sk-001", "name": "Again"})
    assert list(taken.value.errors) == ["lock_id"]
    svc.add_third_party(LUNA_CTX, "lock", "community", community,
                        {"brand": "dormakaba", "lock_id": "SK-001", "name": "Other brand"})
    assert fields_of(lambda: svc.add_third_party(LUNA_CTX, "camera", "community", community, {
        **CAMERA, "rtsp_url": "http://x", "password": "a@b:c",
        "monitoring_terminal": "tv"})) == ["monitoring_terminal", "password", "rtsp_url"]
    assert fields_of(lambda: svc.add_third_party(LUNA_CTX, "camera", "community", community, {
        **CAMERA, "linked_device_id": str(uuid.uuid4())})) == ["linked_device_id"]
    with pytest.raises(NotFound):
        svc.get_third_party(LUNA_CTX, "lock", camera)  # a camera is no lock
    with pytest.raises(NotFound):
        svc.get_third_party(MARK_CTX, "camera", camera)

    edited = svc.edit_third_party(LUNA_CTX, "camera", camera,
                                  {"name": "Lobby camera", "linked_device_id": None})
    assert (edited["name"], edited["linked_device_id"]) == ("Lobby camera", None)
    assert [c["name"] for c in svc.list_third_party(LUNA_CTX, "camera", "community",
                                                    community)["items"]] == ["Lobby camera"]
    assert [c["name"] for c in svc.list_third_party(LUNA_CTX, "lock", "community", community,
                                                    {"sort": "name"})["items"]] == [
        "Front", "Other brand"]
    assert svc.list_third_party(LUNA_CTX, "lock", "apartment", apartment)["total"] == 1

    svc.edit_third_party(LUNA_CTX, "camera", camera, {"password": "n3w-secret",
                                                      "username": "viewer"})
    assert svc.get_third_party(LUNA_CTX, "camera", camera)["username"] == "viewer"
    sites.delete_apartment(LUNA_CTX, apartment)  # its lock goes with it, the ID is free
    deliver(wiring)
    svc.add_third_party(LUNA_CTX, "lock", "building", building,
                        {"brand": "salto", "lock_id": "SK-001", "name": "Moved"})
    svc.remove_third_party(LUNA_CTX, "camera", camera)
    assert svc.list_third_party(LUNA_CTX, "camera", "community", community)["total"] == 0


def test_no_published_event_carries_a_secret(svc: DevicesService, sites: TopologyService,
                                             wiring: Wiring) -> None:
    """What leaves devices (its log as subscribers read it) holds no PIN, card number, camera
    address or login: the contract's schemas keep them in."""
    community, _, apartment = a_site(sites)
    svc.add_credential(LUNA_CTX, apartment, {"kind": "pin", "value": "48151623"})
    svc.add_credential(LUNA_CTX, apartment, {"kind": "rf_card", "value": "DEADBEEF42"})
    camera = svc.add_third_party(LUNA_CTX, "camera", "community", community, {
        **CAMERA, "rtsp_url": "rtsp://cam.secret.example:554", "password": "pa55word"})["id"]
    svc.edit_third_party(LUNA_CTX, "camera", camera, {"password": "n3w-pa55",
                                                      "username": "hidden-user"})
    published = json.dumps(wiring.read_log(0, 1000))
    for secret in ("48151623", "DEADBEEF42", "cam.secret.example", "pa55word", "n3w-pa55",
                   "hidden-user", "admin"):
        assert secret not in published, secret
    assert "CameraLoginChanged" in published and "CredentialClaimed" in published


# --- Add Devices Using a Template ---------------------------------------------------------------


@both_stores
def test_devices_added_with_the_template_report_each_item_and_add_the_good_ones(
        svc: DevicesService, sites: TopologyService) -> None:
    community, building, apartment = a_site(sites)
    register(svc, "0C11050B9814", "0C11050893C6", "0C11050893C7", "0C11050893C8")
    svc.add_device(LUNA_CTX, "building", building,
                   {"type": 0, "mac": "0C11050893C8", "name": "Taken"})
    report = svc.import_devices(LUNA_CTX, "building", building, {"devices": (
        "Gate2,0,0C11050B9814; Own door,1,0C11050893C6;"  # single-tenant: an APT's only
        "Side door,0,0c:11:05:08:93:c7;;Twice,0,0C11050B9814;Broken item;"
        "Stranger,0,0C1105FFFFFF;Taken again,0,0C11050893C8;Bad type,9,0C11050893C6")})
    outcomes = {o["item"]: (o["outcome"], sorted(o.get("errors", {}))) for o in
                report["outcomes"]}
    assert outcomes == {1: ("added", []), 2: ("refused", ["type"]), 3: ("added", []),
                        4: ("refused", ["mac"]), 5: ("refused", ["devices"]),
                        6: ("refused", ["mac"]), 7: ("refused", ["mac"]),
                        8: ("refused", ["type"])}
    assert (report["items"], report["added"], report["refused"]) == (8, 2, 6)
    added = [o for o in report["outcomes"] if o["outcome"] == "added"]
    assert all(o["sip"].startswith("59") for o in added)
    listed = svc.list_devices(LUNA_CTX, "building", building, {"sort": "name"})
    assert [d["name"] for d in listed["items"]] == ["Gate2", "Side door", "Taken"]
    monitor = svc.import_devices(LUNA_CTX, "apartment", apartment,
                                 {"devices": "Living Room,2,0C11050893C6"})
    assert monitor["added"] == 1
    assert svc.list_devices(LUNA_CTX, "community", community)["total"] == 4
    # Every device the template added uses its MAC.
    assert [m["in_use"] for m in svc.list_macs(LUNA_CTX, {"sort": "mac"})["items"]] == [
        True, True, True, True]


def test_a_template_of_more_than_a_thousand_devices_is_refused_whole(
        svc: DevicesService, sites: TopologyService) -> None:
    _community, building, _apartment = a_site(sites)
    items = ";".join(f"D{n},0,0C11{n:08X}" for n in range(1001))
    assert fields_of(lambda: svc.import_devices(LUNA_CTX, "building", building,
                                                {"devices": items})) == ["devices"]
    assert svc.list_devices(LUNA_CTX, "building", building)["total"] == 0
