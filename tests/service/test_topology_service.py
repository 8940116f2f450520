"""The topology service's RPC entrypoints, called through nameko's `worker_factory`.

The service runs on its real wiring (embedded SQLite store and read models); the accounts service
is a fake log whose events the read models catch up on, as they would from the bus.
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
from services.topology.declaration import CONTEXT as TOPOLOGY
from services.topology.service import TopologyService

LUNA = str(uuid.uuid4())
MARK = str(uuid.uuid4())


def ctx_of(installer_id: str | None = LUNA, role: str = "installer",
           actor: str = "installer:luna") -> dict[str, Any]:
    return {"actor": actor, "correlation_id": str(uuid.uuid4()), "installer_id": installer_id,
            "role": role}


LUNA_CTX = ctx_of(LUNA)
MARK_CTX = ctx_of(MARK, actor="installer:mark")


class AccountsLog:
    """A fake accounts service: its log, read the way a subscriber catches up."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def append(self, event_type: str, stream_id: str, **data: Any) -> dict[str, Any]:
        position = len(self.events) + 1
        envelope = {
            "event_id": str(uuid.uuid4()), "type": event_type, "version": 1,
            "source": "accounts", "stream_id": stream_id, "stream_version": position,
            "position": position, "occurred_at": "2024-10-21T10:52:45+00:00",
            "actor": "accounts:system", "correlation_id": "", "data": data,
        }
        self.events.append(envelope)
        return envelope

    def read(self, source: str, after: int, limit: int) -> list[dict[str, Any]]:
        if source != "accounts":
            return []  # devices: no device is installed in these tests
        return [e for e in self.events if e["position"] > after][:limit]

    def master_account_created(self, apartment: dict[str, Any]) -> str:
        account_id = str(uuid.uuid4())
        self.append("MasterAccountCreated", account_id, apartment_id=apartment["id"],
                    community_id=apartment["community_id"],
                    installer_id=apartment["installer_id"],
                    first_name=apartment["resident"]["first_name"],
                    last_name=apartment["resident"]["last_name"],
                    email=apartment["resident"]["email"])
        return account_id


def deliver_accounts(wiring: Wiring) -> None:
    """What the bus would do: the read models apply accounts' events in log order."""
    for sub in wiring.subscriptions["accounts"]:
        sub.catch_up()


def read_model_rows(wiring: Wiring) -> dict[str, list[tuple[Any, ...]]]:
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with wiring.engine.connect() as conn:
        for model in wiring.read_models:
            for table in model.metadata.sorted_tables:
                rows[table.name] = sorted(tuple(r) for r in conn.execute(select(table)))
    return rows


@pytest.fixture
def accounts() -> AccountsLog:
    return AccountsLog()


@pytest.fixture
def store(request: pytest.FixtureRequest) -> str:
    """SQLite unless a test asks for both (`both_stores`): read models must work on each."""
    return getattr(request, "param", "sqlite")


both_stores = pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def wiring(request: pytest.FixtureRequest, tmp_path: Path, store: str, schema_prefix: str,
           accounts: AccountsLog) -> Iterator[Wiring]:
    database = request.getfixturevalue("postgres_url") if store == "postgres" else ""
    settings = Settings(data_dir=tmp_path / "var", database_url=database,
                        schema_prefix=schema_prefix)
    wired = TOPOLOGY.wire(settings, read_remote=accounts.read)
    yield wired
    wired.close()


@pytest.fixture
def svc(wiring: Wiring) -> TopologyService:
    return worker_factory(TopologyService, runtime=wiring)


def resident(**fields: Any) -> dict[str, Any]:
    return {"first_name": "Lily", "last_name": "Green", "email": "lily@example.com"} | fields


def a_site(svc: TopologyService, ctx: dict[str, Any] = LUNA_CTX,
           name: str = "Seaside") -> tuple[str, str, str]:
    community = svc.create_community(ctx, {"name": name, "feature_plan": "premium"})["id"]
    building = svc.add_building(ctx, community, {"name": "Building A"})["id"]
    apartment = svc.add_apartment(ctx, building, {"number": "101", "resident": resident()})["id"]
    return community, building, apartment


# --- every entrypoint, happy path ------------------------------------------------------------


@both_stores
def test_an_installer_builds_a_community_through_every_entrypoint(svc: TopologyService) -> None:
    ctx = LUNA_CTX
    created = svc.create_community(ctx, {"name": "Seaside", "feature_plan": "basic",
                                         "time_zone": "Asia/Shanghai"})
    community = created["id"]
    edited = svc.edit_community(ctx, community, {"feature_plan": "premium"})
    assert (edited["name"], edited["feature_plan"]) == ("Seaside", "premium")
    assert svc.get_community(ctx, community)["time_zone"] == "Asia/Shanghai"

    building = svc.add_building(ctx, community, {"name": "Building A"})["id"]
    assert svc.edit_building(ctx, building, {"name": "Tower A"})["name"] == "Tower A"
    assert svc.get_building(ctx, building)["community_id"] == community
    assert [b["name"] for b in svc.list_buildings(ctx, community, {})["items"]] == ["Tower A"]

    apartment = svc.add_apartment(ctx, building, {"number": "601", "floor": 6,
                                                  "name": "Apartment A",
                                                  "resident": resident(mobile="144")})["id"]
    got = svc.get_apartment(ctx, apartment)
    assert (got["number"], got["floor"], got["resident"]["mobile"], got["app_status"]) == (
        "601", 6, "144", "unregistered")
    assert svc.edit_apartment(ctx, apartment, {"resident": {"first_name": "Judy"}})[
        "resident"]["first_name"] == "Judy"
    reset = svc.reset_apartment(ctx, apartment)
    assert (reset["resident"]["email"], reset["resident"]["mobile"]) == (None, None)
    assert [h["type"] for h in svc.apartment_history(ctx, apartment)["items"]] == [
        "ApartmentAdded", "ResidentAdded", "ResidentEdited", "ApartmentReset"]

    [row] = svc.list_residents(ctx, community, {})["items"]
    assert (row["number"], row["building_name"], row["first_name"], row["email"]) == (
        "601", "Tower A", "Judy", None)
    [site] = svc.list_communities(ctx, {})["items"]
    assert (site["building_count"], site["apartment_count"], site["resident_count"]) == (1, 1, 1)
    assert svc.dashboard(ctx)["apartments"] == 1

    assert svc.delete_apartment(ctx, apartment) is None
    assert svc.delete_building(ctx, building) is None
    assert svc.delete_community(ctx, community) is None
    assert svc.list_communities(ctx, {})["total"] == 0
    assert svc.dashboard(ctx) == {"communities": 0, "buildings": 0, "apartments": 0,
                                  "residents": 0, "devices": 0,
                                  "app_accounts": {"registered": 0, "unregistered": 0}}


def test_every_answer_is_json(svc: TopologyService) -> None:
    community, building, apartment = a_site(svc)
    answers = [
        svc.get_community(LUNA_CTX, community), svc.get_building(LUNA_CTX, building),
        svc.get_apartment(LUNA_CTX, apartment), svc.apartment_history(LUNA_CTX, apartment),
        svc.list_communities(LUNA_CTX, None), svc.list_buildings(LUNA_CTX, community, None),
        svc.list_residents(LUNA_CTX, community, None), svc.dashboard(LUNA_CTX),
    ]
    assert json.loads(json.dumps(answers)) == answers


def test_a_community_holding_buildings_is_not_deleted(svc: TopologyService) -> None:
    community, _building, _apartment = a_site(svc)

    with pytest.raises(Conflict):
        svc.delete_community(LUNA_CTX, community)
    assert svc.get_community(LUNA_CTX, community)["building_count"] == 1


@both_stores
def test_two_replicas_adding_the_same_apt_number_at_once_never_both_win(
        svc: TopologyService, wiring: Wiring, accounts: AccountsLog) -> None:
    community, building, _apartment = a_site(svc)
    replica = TOPOLOGY.wire(wiring.settings, read_remote=accounts.read)
    other = worker_factory(TopologyService, runtime=replica)
    save = replica.app._record

    def save_after_the_other_replica(processing_event: Any) -> Any:
        # The other replica commits between our read of the building and our save.
        svc.add_apartment(LUNA_CTX, building, {"number": "102", "resident": resident()})
        return save(processing_event)

    replica.app._record = save_after_the_other_replica  # type: ignore[method-assign]
    try:
        with pytest.raises(Conflict):
            other.add_apartment(LUNA_CTX, building, {"number": "102",
                                                     "resident": resident(first_name="Eve")})
    finally:
        replica.close()

    rows = svc.list_residents(LUNA_CTX, community, {})["items"]
    assert [(r["number"], r["first_name"]) for r in rows] == [("101", "Lily"), ("102", "Lily")]
    assert svc.get_building(LUNA_CTX, building)["apartment_count"] == 2


# --- scoping and bad ids ---------------------------------------------------------------------

ID_RPCS: list[tuple[str, str, tuple[Any, ...]]] = [
    ("community", "get_community", ()),
    ("community", "edit_community", ({"name": "Mine"},)),
    ("community", "delete_community", ()),
    ("community", "add_building", ({"name": "Mine"},)),
    ("community", "list_buildings", ({},)),
    ("community", "list_residents", ({},)),
    ("building", "get_building", ()),
    ("building", "edit_building", ({"name": "Mine"},)),
    ("building", "delete_building", ()),
    ("building", "add_apartment", ({"number": "9", "resident": resident()},)),
    ("apartment", "get_apartment", ()),
    ("apartment", "edit_apartment", ({"name": "Mine"},)),
    ("apartment", "reset_apartment", ()),
    ("apartment", "delete_apartment", ()),
    ("apartment", "apartment_history", ()),
]
RPC_IDS = [rpc for _kind, rpc, _args in ID_RPCS]


@pytest.mark.parametrize(("kind", "rpc", "args"), ID_RPCS, ids=RPC_IDS)
def test_another_installer_gets_not_found_for_every_id(svc: TopologyService, wiring: Wiring,
                                                       kind: str, rpc: str,
                                                       args: tuple[Any, ...]) -> None:
    community, building, apartment = a_site(svc)
    ids = {"community": community, "building": building, "apartment": apartment}
    before = wiring.app.max_position()

    with pytest.raises(NotFound):
        getattr(svc, rpc)(MARK_CTX, ids[kind], *args)
    assert wiring.app.max_position() == before
    assert svc.list_communities(MARK_CTX, {})["total"] == 0
    assert svc.dashboard(MARK_CTX)["apartments"] == 0


@pytest.mark.parametrize("bad_id", ["nope", "", None, 7, [], {"id": 1}, str(uuid.uuid4())])
@pytest.mark.parametrize(("kind", "rpc", "args"), ID_RPCS, ids=RPC_IDS)
def test_a_bad_id_is_not_found_never_a_crash(svc: TopologyService, kind: str, rpc: str,
                                             args: tuple[Any, ...], bad_id: Any) -> None:
    with pytest.raises(NotFound):
        getattr(svc, rpc)(LUNA_CTX, bad_id, *args)


def test_a_distributor_is_forbidden(svc: TopologyService) -> None:
    community, _building, _apartment = a_site(svc)
    distributor = ctx_of(None, role="distributor", actor="distributor:d")

    with pytest.raises(Forbidden):
        svc.create_community(distributor, {"name": "X", "feature_plan": "basic"})
    with pytest.raises(Forbidden):
        svc.get_community(distributor, community)
    with pytest.raises(Forbidden):
        svc.list_communities(distributor, {})
    with pytest.raises(Forbidden):
        svc.dashboard(distributor)


# --- bad payloads and queries ----------------------------------------------------------------


def fields_of(call: Callable[[], Any]) -> list[str]:
    with pytest.raises(Invalid) as caught:
        call()
    return sorted(caught.value.errors)


def test_bad_payloads_are_invalid_and_name_each_field(svc: TopologyService,
                                                      wiring: Wiring) -> None:
    community, building, apartment = a_site(svc)
    before = wiring.app.max_position()

    assert fields_of(lambda: svc.create_community(LUNA_CTX, {})) == ["feature_plan", "name"]
    assert fields_of(lambda: svc.create_community(
        LUNA_CTX, {"name": "X", "feature_plan": "basic", "landline_service": True})) == [
        "landline_service"]
    assert fields_of(lambda: svc.create_community(LUNA_CTX, None)) == ["_schema"]
    assert fields_of(lambda: svc.create_community(LUNA_CTX, "Seaside")) == ["_schema"]
    assert fields_of(lambda: svc.edit_community(LUNA_CTX, community, {"colour": "red"})) == [
        "colour"]
    assert fields_of(lambda: svc.add_building(LUNA_CTX, community, {"name": "x" * 129})) == [
        "name"]
    assert fields_of(lambda: svc.edit_building(LUNA_CTX, building, {"floor_start": 999})) == [
        "floor_start"]
    assert fields_of(lambda: svc.add_apartment(
        LUNA_CTX, building, {"number": "#1", "resident": {"first_name": "Lily"}})) == [
        "number", "resident"]
    assert fields_of(lambda: svc.edit_apartment(
        LUNA_CTX, apartment, {"floor": "G7", "resident": {"email": "not-an-email"}})) == [
        "floor", "resident"]
    assert wiring.app.max_position() == before


@pytest.mark.parametrize(("query", "field"), [
    ({"page": 0}, "page"),
    ({"page": "first"}, "page"),
    ({"page": 10**30}, "page"),
    ({"per_page": 101}, "per_page"),
    ({"per_page": 0}, "per_page"),
    ({"sort": "device_count"}, "sort"),
    ({"sort": "--name"}, "sort"),
    ({"q": "x" * 500}, "q"),
    ({"app_status": "active"}, "app_status"),
    ({"building_id": "building-a"}, "building_id"),
    ({"colour": "red"}, "colour"),
])
def test_bad_list_queries_are_invalid_and_name_the_field(svc: TopologyService,
                                                         query: dict[str, Any],
                                                         field: str) -> None:
    community, _building, _apartment = a_site(svc)

    assert field in fields_of(lambda: svc.list_residents(LUNA_CTX, community, query))
    if field not in {"app_status", "building_id"}:
        assert field in fields_of(lambda: svc.list_communities(LUNA_CTX, query))
        assert field in fields_of(lambda: svc.list_buildings(LUNA_CTX, community, query))


@both_stores
def test_text_with_nul_is_refused_not_stored(svc: TopologyService, wiring: Wiring) -> None:
    community, _building, apartment = a_site(svc)
    before = wiring.app.max_position()

    assert fields_of(lambda: svc.create_community(
        LUNA_CTX, {"name": "Sea\x00side", "feature_plan": "basic"})) == ["name"]
    assert fields_of(lambda: svc.edit_apartment(
        LUNA_CTX, apartment, {"resident": {"first_name": "Li\x00ly"}})) == ["resident"]
    assert fields_of(lambda: svc.list_residents(LUNA_CTX, community, {"q": "a\x00"})) == ["q"]
    assert wiring.app.max_position() == before


def test_a_query_that_is_not_a_mapping_is_invalid(svc: TopologyService) -> None:
    assert fields_of(lambda: svc.list_communities(LUNA_CTX, "page=2")) == ["_schema"]


# --- lists -----------------------------------------------------------------------------------


def names_of(page: dict[str, Any], key: str = "name") -> list[Any]:
    return [item[key] for item in page["items"]]


@both_stores
def test_a_new_community_is_listed_at_once(svc: TopologyService) -> None:
    community = svc.create_community(LUNA_CTX, {"name": "Seaside", "feature_plan": "basic"})["id"]

    assert names_of(svc.list_communities(LUNA_CTX, {}), "id") == [community]
    building = svc.add_building(LUNA_CTX, community, {"name": "A"})["id"]
    assert names_of(svc.list_buildings(LUNA_CTX, community, {}), "id") == [building]
    svc.add_apartment(LUNA_CTX, building, {"number": "1", "indoor_monitor_mac": "0C11050B9814",
                                           "resident": resident()})
    assert svc.list_residents(LUNA_CTX, community, {})["total"] == 1


@both_stores
def test_communities_are_paged_sorted_and_searched(svc: TopologyService) -> None:
    names = [f"Site {i:02d}" for i in range(12)] + ["akuvox Park"]
    for name in names:
        svc.create_community(LUNA_CTX, {"name": name, "feature_plan": "basic"})
    svc.create_community(MARK_CTX, {"name": "Site of Mark", "feature_plan": "basic"})

    first = svc.list_communities(LUNA_CTX, {"per_page": 5})
    assert (first["total"], first["page"], first["per_page"]) == (13, 1, 5)
    assert names_of(first) == ["akuvox Park", "Site 00", "Site 01", "Site 02", "Site 03"]
    last = svc.list_communities(LUNA_CTX, {"page": "3", "per_page": "5"})
    assert names_of(last) == ["Site 09", "Site 10", "Site 11"]
    assert svc.list_communities(LUNA_CTX, {"page": 4, "per_page": 5})["items"] == []
    assert names_of(svc.list_communities(LUNA_CTX, {"sort": "-name", "per_page": 2})) == [
        "Site 11", "Site 10"]
    newest = svc.list_communities(LUNA_CTX, {"sort": "-created_at", "per_page": 1})
    assert names_of(newest) == ["akuvox Park"]
    assert names_of(svc.list_communities(LUNA_CTX, {"sort": "created_at", "per_page": 1})) == [
        "Site 00"]
    assert names_of(svc.list_communities(LUNA_CTX, {"q": "PARK"})) == ["akuvox Park"]
    assert svc.list_communities(LUNA_CTX, {"q": "%"})["total"] == 0  # no wildcards
    assert svc.list_communities(LUNA_CTX, {"q": "mark"})["total"] == 0  # Mark's stays Mark's


@pytest.fixture
def residents(svc: TopologyService) -> dict[str, str]:
    """Two buildings of a premium community, with residents to search and sort."""
    community = svc.create_community(LUNA_CTX, {"name": "Seaside", "feature_plan": "premium"})[
        "id"]
    a = svc.add_building(LUNA_CTX, community, {"name": "Building A"})["id"]
    b = svc.add_building(LUNA_CTX, community, {"name": "Building B"})["id"]
    ids = {"community": community, "a": a, "b": b}
    for building, number, name, first, last, email in [
        (a, "101", "The Green", "Lily", "Green", "lily@example.com"),
        (a, "99", None, "Judy", "Zed", "judy@example.com"),
        (b, "2#12", "Corner", "Adam", "Brown", None),
        (b, "1001", "Penthouse", "Zoe", "Adams", "zoe@akuvox.com"),
    ]:
        ids[number] = svc.add_apartment(LUNA_CTX, building, {
            "number": number, "name": name,
            "resident": {"first_name": first, "last_name": last, "email": email}})["id"]
    return ids


@both_stores
def test_residents_are_sorted_by_apt_apt_name_resident_and_time(
        svc: TopologyService, residents: dict[str, str]) -> None:
    def numbers(sort: str) -> list[str]:
        page = svc.list_residents(LUNA_CTX, residents["community"], {"sort": sort})
        return names_of(page, "number")

    assert numbers("number") == ["99", "101", "1001", "2#12"]
    assert numbers("-number") == ["2#12", "1001", "101", "99"]
    assert numbers("name") == ["99", "2#12", "1001", "101"]  # no name, Corner, Penthouse, ...
    assert numbers("resident") == ["2#12", "99", "101", "1001"]  # Adam, Judy, Lily, Zoe
    assert numbers("created_at") == ["101", "99", "2#12", "1001"]
    assert numbers("-created_at") == ["1001", "2#12", "99", "101"]


@both_stores
def test_residents_are_searched_paged_and_filtered(svc: TopologyService,
                                                   residents: dict[str, str]) -> None:
    def found(**query: Any) -> list[str]:
        return names_of(svc.list_residents(LUNA_CTX, residents["community"], query), "number")

    assert found(q="lily green") == ["101"]  # first and last name together
    assert found(q="ADAMS") == ["1001"]
    assert found(q="akuvox.com") == ["1001"]
    assert found(q="corner") == ["2#12"]  # APT name
    assert found(q="2#1") == ["2#12"]  # APT number
    assert found(q="") == ["99", "101", "1001", "2#12"]
    assert found(building_id=residents["b"]) == ["1001", "2#12"]
    assert found(building_id=str(uuid.uuid4())) == []
    page = svc.list_residents(LUNA_CTX, residents["community"], {"per_page": 3, "page": 2})
    assert (names_of(page, "number"), page["total"], page["per_page"]) == (["2#12"], 4, 3)
    assert svc.list_residents(LUNA_CTX, residents["community"], {})["per_page"] == 10


@both_stores
def test_a_search_for_like_wildcards_and_quotes_finds_them_as_text(
        svc: TopologyService, residents: dict[str, str]) -> None:
    svc.add_apartment(LUNA_CTX, residents["a"], {
        "number": "7", "name": "50%_off/x 'q'", "resident": resident(first_name="Al")})

    def found(q: str) -> list[str]:
        page = svc.list_residents(LUNA_CTX, residents["community"], {"q": q})
        return names_of(page, "number")

    for q in ("%_off/", "50%", "_off", "/x", "'q'", "OFF/X 'Q"):
        assert found(q) == ["7"], q
    for q in ("%%", "5_%", "x/", "''"):
        assert found(q) == [], q


@both_stores
def test_counts_and_totals_stay_when_events_come_twice_or_after_a_restart(
        svc: TopologyService, wiring: Wiring, accounts: AccountsLog,
        residents: dict[str, str]) -> None:
    """The kept counts move by each event once: a redelivered event (the bus after a crash)
    and a subscriber that forgot its place in memory (a restart) change nothing."""
    lily = svc.get_apartment(LUNA_CTX, residents["101"])
    account = accounts.master_account_created(lily)
    accounts.append("MasterAccountRegistered", account)
    accounts.append("FamilyMemberAdded", account, family_member_id="fm-1")
    deliver_accounts(wiring)
    community = residents["community"]

    def seen() -> tuple[Any, ...]:
        registered = svc.list_residents(LUNA_CTX, community, {"app_status": "registered"})
        return (svc.dashboard(LUNA_CTX), svc.list_residents(LUNA_CTX, community, {})["total"],
                registered["total"], names_of(registered, "number"))

    before = seen()
    assert before[0]["residents"] == 4 + 1 and before[0]["app_accounts"]["registered"] == 1
    assert before[1:] == (4, 1, ["101"])
    for sub in wiring.subscriptions["accounts"]:
        for envelope in accounts.events:  # each delivered again, one by one
            sub.deliver(envelope)
        sub.forget_position()  # as after a restart: read the log again from its start
        sub.catch_up()
    for sub in wiring.local:
        sub.forget_position()
        sub.catch_up()
    assert seen() == before


@both_stores
def test_every_page_of_every_sort_is_the_full_list_cut_in_order(
        svc: TopologyService, residents: dict[str, str]) -> None:
    """Pages in the back half are read from the end (concierge.lists): cut together, the
    pages are the whole list, in either direction, with or without a filter."""
    for n in range(17):
        svc.add_apartment(LUNA_CTX, residents["a" if n % 3 else "b"], {
            "number": f"{5 + n % 5}#{n}", "name": f"Apt {n % 4}",
            "resident": {"first_name": "Ann" if n % 2 else "Bob", "last_name": "Same"}})
    community = residents["community"]
    for query in ({}, {"q": "ann"}, {"building_id": residents["b"]}):
        for sort in ("number", "-number", "name", "-name", "resident", "-resident",
                     "created_at", "-created_at"):
            whole = svc.list_residents(LUNA_CTX, community, {**query, "sort": sort,
                                                              "per_page": 100})
            assert whole["total"] == len(whole["items"]) > 3
            for per_page in (1, 4, 7):
                pages = [svc.list_residents(LUNA_CTX, community, {
                    **query, "sort": sort, "per_page": per_page, "page": page})
                    for page in range(1, whole["total"] // per_page + 3)]
                assert {p["total"] for p in pages} == {whole["total"]}
                cut = [item for p in pages for item in p["items"]]
                assert cut == whole["items"], (query, sort, per_page)
    reversed_ = svc.list_residents(LUNA_CTX, community, {"sort": "-number", "per_page": 100})
    forward = svc.list_residents(LUNA_CTX, community, {"sort": "number", "per_page": 100})
    assert reversed_["items"] == forward["items"][::-1]
    before = forward["total"]
    svc.delete_apartment(LUNA_CTX, residents["99"])
    after = svc.list_residents(LUNA_CTX, community, {"per_page": 100})
    assert after["total"] == before - 1 == len(after["items"])
    in_a = svc.list_residents(LUNA_CTX, community, {"building_id": residents["a"],
                                                    "per_page": 100})
    assert in_a["total"] == len(in_a["items"]) == 1 + 11  # 101, and n % 3 != 0 of 17


@both_stores
def test_app_status_follows_the_accounts_events(svc: TopologyService, wiring: Wiring,
                                                accounts: AccountsLog,
                                                residents: dict[str, str]) -> None:
    lily = svc.get_apartment(LUNA_CTX, residents["101"])
    zoe = svc.get_apartment(LUNA_CTX, residents["1001"])
    lily_account = accounts.master_account_created(lily)
    zoe_account = accounts.master_account_created(zoe)
    accounts.append("MasterAccountRegistered", lily_account)
    accounts.append("MasterAccountRegistered", zoe_account)
    accounts.append("MasterAccountReset", zoe_account, removed_family_member_ids=[])
    deliver_accounts(wiring)

    def statuses(app_status: str) -> list[str]:
        page = svc.list_residents(LUNA_CTX, residents["community"], {"app_status": app_status})
        return names_of(page, "number")

    assert statuses("registered") == ["101"]
    assert statuses("unregistered") == ["99", "1001", "2#12"]
    got = svc.get_apartment(LUNA_CTX, residents["101"])
    assert (got["app_status"], got["master_account_id"]) == ("registered", lily_account)
    assert svc.dashboard(LUNA_CTX)["app_accounts"] == {"registered": 1, "unregistered": 3}


@both_stores
def test_family_members_count_as_end_users_while_their_apartment_exists(
        svc: TopologyService, wiring: Wiring, accounts: AccountsLog,
        residents: dict[str, str]) -> None:
    lily = svc.get_apartment(LUNA_CTX, residents["101"])
    account = accounts.master_account_created(lily)
    accounts.append("FamilyMemberAdded", account, family_member_id="fm-1")
    accounts.append("FamilyMemberAdded", account, family_member_id="fm-2")
    deliver_accounts(wiring)

    def end_users() -> int:
        return svc.list_communities(LUNA_CTX, {})["items"][0]["resident_count"]

    assert end_users() == 4 + 2
    accounts.append("MasterAccountReset", account, removed_family_member_ids=["fm-1"])
    deliver_accounts(wiring)
    assert end_users() == 4 + 1
    svc.delete_apartment(LUNA_CTX, residents["101"])
    assert end_users() == 3
    assert svc.dashboard(LUNA_CTX)["residents"] == 3


def rows_naming(wiring: Wiring, *ids: str) -> list[tuple[Any, ...]]:
    """The Sites and Residents rows that name any of these master account or member ids."""
    rows = read_model_rows(wiring)
    return [row for table in ("topology_site_apartments", "topology_site_accounts",
                              "topology_app_accounts", "topology_master_apartments")
            for row in rows[table] if set(ids) & set(row)]


@both_stores
@pytest.mark.parametrize("first", ["accounts", "topology"])
def test_a_closed_account_leaves_the_counts_whichever_source_speaks_first(
        svc: TopologyService, wiring: Wiring, accounts: AccountsLog,
        residents: dict[str, str], first: str) -> None:
    lily = svc.get_apartment(LUNA_CTX, residents["101"])
    account = accounts.master_account_created(lily)
    accounts.append("MasterAccountRegistered", account)
    accounts.append("FamilyMemberAdded", account, family_member_id="fm-1")
    deliver_accounts(wiring)

    def end_users() -> int:
        return svc.list_communities(LUNA_CTX, {})["items"][0]["resident_count"]

    assert end_users() == 4 + 1

    def close() -> None:
        accounts.append("MasterAccountClosed", account, apartment_id=lily["id"],
                        removed_family_member_ids=["fm-1"])
        deliver_accounts(wiring)

    def delete() -> None:
        svc.delete_apartment(LUNA_CTX, residents["101"])

    for step in ((close, delete) if first == "accounts" else (delete, close)):
        step()

    assert end_users() == 3
    assert svc.dashboard(LUNA_CTX)["app_accounts"] == {"registered": 0, "unregistered": 3}
    assert rows_naming(wiring, account, "fm-1") == []


@both_stores
def test_the_dashboard_counts_the_installers_sites(svc: TopologyService) -> None:
    a_site(svc, name="Seaside")
    community, building, _apartment = a_site(svc, name="Hillside")
    svc.add_building(LUNA_CTX, community, {"name": "Building B"})
    svc.add_apartment(LUNA_CTX, building, {"number": "102", "resident": resident()})
    a_site(svc, MARK_CTX, name="Mark's")

    assert svc.dashboard(LUNA_CTX) == {
        "communities": 2, "buildings": 3, "apartments": 3, "residents": 3, "devices": 0,
        "app_accounts": {"registered": 0, "unregistered": 3},
    }
    assert svc.dashboard(MARK_CTX)["communities"] == 1


@both_stores
def test_counts_and_names_follow_edits_and_deletes(svc: TopologyService) -> None:
    community, building, apartment = a_site(svc)
    other = svc.add_apartment(LUNA_CTX, building, {"number": "102", "resident": resident()})["id"]
    svc.edit_building(LUNA_CTX, building, {"name": "Tower A"})
    svc.edit_apartment(LUNA_CTX, apartment, {"number": "201", "floor": "G1", "name": "Loft",
                                             "resident": {"email": "new@example.com"}})
    svc.delete_apartment(LUNA_CTX, other)
    svc.edit_community(LUNA_CTX, community, {"name": "Seaside Park"})

    [row] = svc.list_residents(LUNA_CTX, community, {})["items"]
    assert (row["number"], row["floor"], row["name"], row["building_name"], row["email"]) == (
        "201", "G1", "Loft", "Tower A", "new@example.com")
    [site] = svc.list_communities(LUNA_CTX, {})["items"]
    assert (site["name"], site["building_count"], site["apartment_count"]) == (
        "Seaside Park", 1, 1)
    [tower] = svc.list_buildings(LUNA_CTX, community, {})["items"]
    assert tower["apartment_count"] == 1


# --- rebuild ---------------------------------------------------------------------------------


def a_busy_history(svc: TopologyService, wiring: Wiring, accounts: AccountsLog) -> None:
    community, building, apartment = a_site(svc)
    second = svc.add_apartment(LUNA_CTX, building, {"number": "102", "resident": resident()})["id"]
    spare = svc.add_building(LUNA_CTX, community, {"name": "Spare"})["id"]
    svc.edit_building(LUNA_CTX, building, {"name": "Tower A"})
    svc.edit_apartment(LUNA_CTX, apartment, {"resident": {"mobile": "123"}})
    svc.reset_apartment(LUNA_CTX, apartment)
    account = accounts.master_account_created(svc.get_apartment(LUNA_CTX, apartment))
    accounts.append("MasterAccountRegistered", account)
    accounts.append("FamilyMemberAdded", account, family_member_id="fm-1")
    accounts.master_account_created(svc.get_apartment(LUNA_CTX, second))
    gone = svc.add_apartment(LUNA_CTX, building, {"number": "103", "resident": resident()})
    closed = accounts.master_account_created(svc.get_apartment(LUNA_CTX, gone["id"]))
    accounts.append("FamilyMemberAdded", closed, family_member_id="fm-3")
    deliver_accounts(wiring)
    svc.delete_apartment(LUNA_CTX, gone["id"])
    accounts.append("MasterAccountClosed", closed, apartment_id=gone["id"],
                    removed_family_member_ids=["fm-3"])
    deliver_accounts(wiring)
    svc.delete_building(LUNA_CTX, spare)
    a_site(svc, MARK_CTX, name="Mark's")


@both_stores
def test_rebuilt_read_models_equal_the_live_ones(svc: TopologyService, wiring: Wiring,
                                                 accounts: AccountsLog) -> None:
    a_busy_history(svc, wiring, accounts)
    live = read_model_rows(wiring)
    assert live["topology_apartments"] and live["topology_app_accounts"]

    assert rebuild(wiring) > 0

    assert read_model_rows(wiring) == live


@both_stores
def test_the_read_models_do_not_depend_on_which_source_comes_first(
        svc: TopologyService, wiring: Wiring, accounts: AccountsLog) -> None:
    a_busy_history(svc, wiring, accounts)
    live = read_model_rows(wiring)

    # Drop everything, then replay accounts' log before topology's own.
    for model in wiring.read_models:
        model.drop(wiring.engine)
        model.create(wiring.engine)
    remote = [s for subs in wiring.subscriptions.values() for s in subs]
    for sub in [*remote, *wiring.local]:
        sub.forget_position()
        sub.catch_up()

    assert read_model_rows(wiring) == live


# --- a tenant's personal data after a reset or a delete (crypto-shredding) -------------------


def raw_store(wiring: Wiring) -> bytes:
    """Every byte the event store holds, as a backup of it would."""
    notes = wiring.app.recorder.select_notifications(1, 100_000)
    return b"".join(bytes(n.state) for n in notes)


@both_stores
def test_a_reset_or_a_delete_leaves_nothing_of_the_tenant_anywhere(
        svc: TopologyService, wiring: Wiring) -> None:
    _, _, apartment = a_site(svc)
    svc.edit_apartment(LUNA_CTX, apartment, {"resident": {
        "mobile": "5550100", "landlines": ["5550101"], "country": "FR"}})
    secrets_ = ("lily@example.com", "5550100", "5550101", "Lily", "Green")
    # Sealed in the store from the start; read back in the open while the tenant lives.
    assert not any(s.encode() in raw_store(wiring) for s in secrets_)
    assert svc.get_apartment(LUNA_CTX, apartment)["resident"]["mobile"] == "5550100"
    assert "lily@example.com" in json.dumps(wiring.read_log(0, 1000))

    reset = svc.reset_apartment(LUNA_CTX, apartment)
    assert (reset["resident"]["email"], reset["resident"]["mobile"]) == (None, None)
    # The names stay (manual), recorded again for the next tenancy.
    assert (reset["resident"]["first_name"], reset["resident"]["last_name"]) == ("Lily",
                                                                                 "Green")
    history = svc.apartment_history(LUNA_CTX, apartment, {"per_page": 100})
    told = json.dumps(history)
    gone = ("lily@example.com", "5550100", "5550101")
    assert not any(s in told for s in gone), told
    added = next(h for h in history["items"] if h["type"] == "ResidentAdded")
    assert added["actor"] == "installer:luna" and added["data"]["email"] is None  # who, when
    assert not any(s in json.dumps(wiring.read_log(0, 1000)) for s in gone)  # a replay
    rows = json.dumps(read_model_rows(wiring), default=str)
    assert not any(s in rows for s in gone)
    rebuild(wiring)
    rows = json.dumps(read_model_rows(wiring), default=str)
    assert not any(s in rows for s in gone) and "Lily" in rows  # the kept names, rebuilt
    # Loaded afresh from its events, as by another replica or after a restart.
    fresh = TOPOLOGY.wire(wiring.settings, read_remote=lambda *_: [])
    try:
        again = worker_factory(TopologyService, runtime=fresh).get_apartment(LUNA_CTX,
                                                                             apartment)
    finally:
        fresh.close()
    assert (again["resident"]["email"], again["resident"]["landlines"],
            again["resident"]["first_name"]) == (None, [], "Lily")

    svc.edit_apartment(LUNA_CTX, apartment, {"resident": {"email": "next@example.com"}})
    svc.delete_apartment(LUNA_CTX, apartment)
    everything = json.dumps(wiring.read_log(0, 1000)) + json.dumps(
        read_model_rows(wiring), default=str)
    assert not any(s in everything for s in ("next@example.com", "Lily", "Green"))
    with pytest.raises(NotFound):
        svc.apartment_history(LUNA_CTX, apartment, {})
    fresh = TOPOLOGY.wire(wiring.settings, read_remote=lambda *_: [])
    try:
        with pytest.raises(NotFound):  # its events replay with nothing of the tenant
            worker_factory(TopologyService, runtime=fresh).get_apartment(LUNA_CTX, apartment)
    finally:
        fresh.close()
