"""Bad actors through the gateway (issue 19, part 7), on both ways of running (embedded, and one
process per service on RabbitMQ and PostgreSQL).

Installer A has two communities, each with a building, an APT and its resident (and a family
member, where the gateway has those routes), a door phone, a camera, a lock, a credential and a
command sent to the door phone; installer B has one such community; each has a sub-installer
and a property manager, given its first community alone with every permission there. A's
sub-installer, A's property manager, A itself and a distributor call every route that names an
id, with B's real ids (and, for the property manager, with the ids of A's other community) and
with ids that exist nowhere. The answer for a real id must be the answer for an id that
exists nowhere, ids blanked: 404, or 403 on a route that is not for the caller's role at all;
never a 2xx, a 409, a 422, a 500 or another detail that says the id is real. Ids in bodies and
queries (a device to link, a MAC to install, a community to give a property manager) are
probed alike. After each test, everything both installers own reads as it did before.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from bench.cluster import Platform
from services.gateway.http import Route, routes_of
from services.gateway.service import GatewayService
from tests.e2e.test_hostile_clients import VALID_BODIES
from tests.e2e.test_people_and_access import mailed_password
from tests.support.harness import eventually

PLACEHOLDER = re.compile(r"<(uuid|string):([a-z_]+)>")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
MAC = re.compile(r"\b[0-9A-F]{12}\b", re.I)
# Reads first, then changes, deletions last: a leak shows on the read before a write could
# hide it.
METHOD_ORDER = {"GET": 0, "POST": 1, "PATCH": 2, "PUT": 2, "DELETE": 3}
ROUTES = sorted((r for r in routes_of(GatewayService) if r.auth and r.roles),
                key=lambda r: METHOD_ORDER[r.method])
ID_ROUTES = [r for r in ROUTES if PLACEHOLDER.search(r.path)]


def a_mac() -> str:
    return "0C1105" + "".join(random.choice("0123456789ABCDEF") for _ in range(6))


# --- the world: two installers and what they own -------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One community and one of everything in it: the ids a route's path can name."""

    community_id: str
    building_id: str
    apartment_id: str
    device_id: str
    command_id: str
    camera_id: str
    lock_id: str
    credential_id: str
    mac: str
    lock_serial: str
    family_member_id: str | None  # None: the gateway has no family-member routes

    def ids(self) -> dict[str, str]:
        return {"community_id": self.community_id, "building_id": self.building_id,
                "apartment_id": self.apartment_id, "device_id": self.device_id,
                "command_id": self.command_id, "camera_id": self.camera_id,
                "lock_id": self.lock_id, "credential_id": self.credential_id, "mac": self.mac,
                **({"family_member_id": self.family_member_id}
                   if self.family_member_id else {})}


@dataclass(frozen=True)
class Login:
    account_id: str
    username: str
    password: str
    token: str


@dataclass(frozen=True)
class Tenant:
    installer_id: str
    token: str
    sites: tuple[Site, ...]
    sub: Login
    manager: Login

    def ids(self, site: int = 0) -> dict[str, str]:
        """Every placeholder of a route's path, filled with this installer's own ids."""
        return {**self.sites[site].ids(), "installer_id": self.installer_id,
                "sub_installer": self.sub.account_id, "property_manager": self.manager.account_id}


@dataclass(frozen=True)
class World:
    a: Tenant
    b: Tenant
    distributor: str


def ok(answer: tuple[int, Any], status: int = 201) -> Any:
    assert answer[0] == status, answer
    return answer[1]


def a_site(platform: Platform, token: str, installer_id: str, name: str) -> Site:
    mac = a_mac()
    ok(platform.call("POST", f"/api/v1/installers/{installer_id}/mac-library", {"mac": mac},
                     platform.distributor_token()))
    community = ok(platform.call("POST", "/api/v1/communities",
                                 {"name": name, "feature_plan": "premium"}, token))["id"]
    building = ok(platform.call("POST", f"/api/v1/communities/{community}/buildings",
                                {"name": f"{name} A"}, token))["id"]
    apartment = ok(platform.call(
        "POST", f"/api/v1/buildings/{building}/apartments",
        {"number": "101", "name": f"{name} 101",
         "resident": {"first_name": "Ann", "last_name": name,
                      "email": f"ann.{uuid.uuid4().hex[:8]}@example.org"}}, token))["id"]
    device = ok(platform.call("POST", f"/api/v1/buildings/{building}/devices",
                              {"type": 0, "mac": mac, "name": f"{name} gate"}, token))["id"]
    camera = ok(platform.call("POST", f"/api/v1/buildings/{building}/cameras",
                              {"name": f"{name} cam", "rtsp_url": "rtsp://10.0.0.7:554/live",
                               "username": "admin", "password": "hunter2",
                               "linked_device_id": device}, token))["id"]
    serial = f"L{uuid.uuid4().hex[:10]}"
    lock = ok(platform.call("POST", f"/api/v1/apartments/{apartment}/locks",
                            {"brand": "salto", "lock_id": serial, "name": f"{name} lock"},
                            token))["id"]
    credential = ok(platform.call("POST", f"/api/v1/apartments/{apartment}/credentials",
                                  {"kind": "pin", "value": f"{random.randrange(10**6):06d}",
                                   "holder": "Ann"}, token))["id"]
    command = ok(platform.call("POST", f"/api/v1/devices/{device}/commands",
                               {"kind": "reboot"}, token))["id"]
    family = None
    if any(route.name == "add_family_member" for route in ROUTES):
        def added() -> str | None:  # once the resident's app account exists
            status, member = platform.call(
                "POST", f"/api/v1/apartments/{apartment}/family-members",
                {"first_name": "Kim", "last_name": name,
                 "email": f"kim.{uuid.uuid4().hex[:8]}@example.org"}, token)
            assert status in (201, 404), (status, member)
            return member["id"] if status == 201 else None

        family = eventually(added)
    return Site(community, building, apartment, device, command, camera, lock, credential, mac,
                serial, family)


def logged_in(platform: Platform, account_id: str, username: str, address: str) -> Login:
    password = mailed_password(platform, address)
    session = ok(platform.call("POST", "/api/v1/auth/login",
                               {"username": username, "password": password}), 200)
    return Login(account_id, username, password, session["token"])


def a_tenant(platform: Platform, names: tuple[str, ...]) -> Tenant:
    name = f"inst{uuid.uuid4().hex[:8]}"
    installer = ok(platform.call("POST", "/api/v1/installers",
                                 {"username": name, "password": "installer-pw-1",
                                  "email": f"{name}@example.org"},
                                 platform.distributor_token()))["id"]
    token = ok(platform.call("POST", "/api/v1/auth/login",
                             {"username": name, "password": "installer-pw-1"}), 200)["token"]
    sites = tuple(a_site(platform, token, installer, site) for site in names)
    sub_name = f"sub{uuid.uuid4().hex[:8]}"
    sub = ok(platform.call("POST", "/api/v1/sub-installers",
                           {"username": sub_name, "email": f"{sub_name}@example.org"},
                           token))["id"]
    address = f"pm.{uuid.uuid4().hex[:8]}@example.org"
    every_permission = {"app": True, "delete_account": True, "log_access_control": True}
    manager = ok(platform.call("POST", "/api/v1/property-managers",
                               {"first_name": "Pat", "last_name": names[0], "email": address,
                                "communities": [{"community_id": sites[0].community_id,
                                                 **every_permission}]}, token))["id"]
    return Tenant(installer, token, sites,
                  logged_in(platform, sub, sub_name, f"{sub_name}@example.org"),
                  logged_in(platform, manager, address, address))


@pytest.fixture(scope="module")
def world(platform: Platform) -> World:
    return World(a=a_tenant(platform, ("Alder", "Aspen")), b=a_tenant(platform, ("Birch",)),
                 distributor=platform.distributor_token())


# --- what the owners see: unchanged by anything the others try ---------------------------------

# Fields that move on by themselves (a command is sent, a device goes on line), not by a request.
VOLATILE = {"state", "updated_at", "history", "detail", "status", "last_connection", "firmware",
            "ip", "model"}


def stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def site_view(platform: Platform, token: str, site: Site) -> dict[str, Any]:
    paths = [f"/api/v1/communities/{site.community_id}",
             f"/api/v1/communities/{site.community_id}/buildings",
             f"/api/v1/communities/{site.community_id}/residents",
             f"/api/v1/communities/{site.community_id}/devices",
             f"/api/v1/buildings/{site.building_id}",
             f"/api/v1/buildings/{site.building_id}/cameras",
             f"/api/v1/apartments/{site.apartment_id}",
             f"/api/v1/apartments/{site.apartment_id}/history?per_page=100",
             f"/api/v1/apartments/{site.apartment_id}/locks",
             f"/api/v1/apartments/{site.apartment_id}/credentials",
             f"/api/v1/devices/{site.device_id}",
             f"/api/v1/devices/{site.device_id}/history?per_page=100",
             f"/api/v1/devices/{site.device_id}/commands?per_page=100",
             f"/api/v1/commands/{site.command_id}",
             f"/api/v1/cameras/{site.camera_id}",
             f"/api/v1/locks/{site.lock_id}"]
    if site.family_member_id:
        paths += [f"/api/v1/apartments/{site.apartment_id}/family-members",
                  f"/api/v1/family-members/{site.family_member_id}"]
    return {path: stable(platform.call("GET", path, None, token)) for path in paths}


def tenant_view(platform: Platform, tenant: Tenant) -> dict[str, Any]:
    paths = ["/api/v1/dashboard", "/api/v1/communities?sort=name", "/api/v1/mac-library",
             "/api/v1/sub-installers", "/api/v1/property-managers",
             f"/api/v1/sub-installers/{tenant.sub.account_id}",
             f"/api/v1/property-managers/{tenant.manager.account_id}"]
    view = {path: stable(platform.call("GET", path, None, tenant.token)) for path in paths}
    for site in tenant.sites:
        view.update(site_view(platform, tenant.token, site))
    return view


def both_views(platform: Platform, world: World) -> dict[str, Any]:
    return {"A": tenant_view(platform, world.a), "B": tenant_view(platform, world.b)}


def settled_views(platform: Platform, world: World) -> dict[str, Any]:
    """What both installers see once what their setup set going has finished (the devices'
    configuration commands, the projections)."""
    seen = [both_views(platform, world)]

    def still() -> bool:
        time.sleep(0.5)
        seen.append(both_views(platform, world))
        return seen[-1] == seen[-2]

    eventually(still, timeout=60)
    return seen[-1]


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [f"{owner} {path}: {before[owner][path]} -> {after[owner].get(path)}"
            for owner in before for path in before[owner]
            if before[owner][path] != after[owner].get(path)]


def assert_untouched(platform: Platform, world: World, before: dict[str, Any]) -> None:
    """Both installers' data as it was, and B's sub-accounts still log in as before."""
    time.sleep(0.5)  # anything a request set going has landed
    assert not changed(before, both_views(platform, world))
    for login in (world.b.sub, world.b.manager, world.a.sub, world.a.manager):
        assert platform.call("GET", "/api/v1/account", None, login.token)[0] == 200, login
        assert platform.call("POST", "/api/v1/auth/login",
                             {"username": login.username, "password": login.password}
                             )[0] == 200, login


# --- probing -------------------------------------------------------------------------------------


def fill(path: str, ids: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(2)
        if name == "account_id":
            name = "sub_installer" if "/sub-installers/" in path else "property_manager"
        return ids[name]

    return PLACEHOLDER.sub(one, path)


def nowhere() -> dict[str, str]:
    """Ids (and a MAC) that name nothing at all."""
    names = ("community_id", "building_id", "apartment_id", "device_id", "command_id",
             "camera_id", "lock_id", "credential_id", "family_member_id", "installer_id",
             "sub_installer", "property_manager")
    return {name: str(uuid.uuid4()) for name in names} | {"mac": a_mac()}


def body_for(route: Route) -> dict[str, Any] | None:
    if route.body is None:
        return None
    body = dict(VALID_BODIES[route.body.__name__])
    if route.body.__name__ in ("SubInstallerCreate", "PropertyManagerCreate", "InstallerCreate",
                               "FamilyMemberCreate"):
        tag = uuid.uuid4().hex[:8]  # a free login: only the caller decides the answer
        body.update({"email": f"probe{tag}@example.org"}
                    | ({"username": f"probe{tag}"} if "username" in body else {}))
    return body


def shape(answer: tuple[int, Any]) -> tuple[int, str]:
    """An answer with the ids and MACs it names blanked: what else it says must not depend on
    whether the id is real."""
    status, body = answer
    text = UUID.sub("<id>", repr(body))
    return status, MAC.sub("<mac>", text)


def variants(route: Route) -> list[str]:
    """The query strings a route is probed with: none, and the one that reaches furthest."""
    if route.query is not None and "cascade" in route.query().fields:
        return ["", "?cascade=true"]
    return [""]


def probe(platform: Platform, token: str, route: Route, real: dict[str, str], expected: int,
          own: dict[str, str] | None = None) -> list[str]:
    """The route with `real` ids (those of `own` kept as they are) and with ids that exist
    nowhere: a finding for each answer that differs, or is not `expected`."""
    findings = []
    for query in variants(route):
        body = body_for(route)
        real_path = fill(route.path, {**real, **(own or {})}) + query
        answer = platform.call(route.method, real_path, body, token)
        fake_path = fill(route.path, {**nowhere(), **(own or {})}) + query
        control = platform.call(route.method, fake_path, body, token)
        if answer[0] != expected or shape(answer) != shape(control):
            findings.append(f"{route.name}: {route.method} {real_path} -> {answer}; "
                            f"an id that exists nowhere -> {control}; expected {expected}")
    return findings


def expected_status(route: Route, role: str) -> int:
    return 404 if role in route.roles else 403


def probe_every_route(platform: Platform, token: str, role: str, real: dict[str, str],
                      own: dict[str, str], routes: list[Route] | None = None) -> list[str]:
    """Every route that names an id, with the ids of `real`; a route naming two ids (an APT's
    credential) also with the caller's own APT and a credential of `real`'s."""
    findings = []
    for route in PROBED_ROUTES if routes is None else routes:
        expected = expected_status(route, role)
        findings += probe(platform, token, route, real, expected)
        names = [m.group(2) for m in PLACEHOLDER.finditer(route.path)]
        if len(names) > 1 and role in route.roles:
            findings += probe(platform, token, route, real, expected,
                              own={name: own[name] for name in names[:-1]})
    return findings


# A family member's id of another installer's (or of a community not given to a property
# manager) is answered as an unknown id, detail included (these probes once found the details
# told them apart); probed in a test of their own.
TELLS_FAMILY_MEMBERS_APART = {"get_family_member", "edit_family_member", "remove_family_member"}
PROBED_ROUTES = [r for r in ID_ROUTES if r.name not in TELLS_FAMILY_MEMBERS_APART]


@pytest.fixture(scope="module")
def before(platform: Platform, world: World) -> dict[str, Any]:
    """Both installers' views, each read by its owner: every id probed is real."""
    views = settled_views(platform, world)
    refused = [f"{owner} {path}: {answer}" for owner, paths in views.items()
               for path, answer in paths.items() if answer[0] != 200]
    assert not refused, refused
    return views


def test_every_id_a_route_names_is_probed() -> None:
    """A route naming a kind of id this test does not make would fail every probe below."""
    names = {m.group(2) for route in ID_ROUTES for m in PLACEHOLDER.finditer(route.path)}
    assert names <= {"account_id", *nowhere()}, names
    assert len(ID_ROUTES) >= 60


def test_a_sub_installer_reaches_nothing_of_another_installer_s(
        platform: Platform, world: World, before: dict[str, Any]) -> None:
    findings = probe_every_route(platform, world.a.sub.token, "sub_installer", world.b.ids(),
                                 world.a.ids())
    assert not findings, "\n".join(findings)
    assert_untouched(platform, world, before)


def test_a_property_manager_reaches_nothing_of_another_installer_s(
        platform: Platform, world: World, before: dict[str, Any]) -> None:
    findings = probe_every_route(platform, world.a.manager.token, "property_manager",
                                 world.b.ids(), world.a.ids())
    assert not findings, "\n".join(findings)
    assert_untouched(platform, world, before)


def test_a_property_manager_reaches_none_of_its_installer_s_communities_not_given_to_it(
        platform: Platform, world: World, before: dict[str, Any]) -> None:
    findings = probe_every_route(platform, world.a.manager.token, "property_manager",
                                 world.a.ids(site=1), world.a.ids())
    assert not findings, "\n".join(findings)
    # What it was given stays open to it: the 404s above are not a manager locked out.
    given = world.a.sites[0]
    for path in (f"/api/v1/communities/{given.community_id}/devices",
                 f"/api/v1/communities/{given.community_id}/door-logs",
                 f"/api/v1/apartments/{given.apartment_id}/credentials",
                 f"/api/v1/locks/{given.lock_id}", f"/api/v1/cameras/{given.camera_id}",
                 f"/api/v1/commands/{given.command_id}"):
        assert platform.call("GET", path, None, world.a.manager.token)[0] == 200, path
    assert_untouched(platform, world, before)


def test_an_installer_reaches_nothing_of_another_installer_s(
        platform: Platform, world: World, before: dict[str, Any]) -> None:
    findings = probe_every_route(platform, world.a.token, "installer", world.b.ids(),
                                 world.a.ids())
    assert not findings, "\n".join(findings)
    assert_untouched(platform, world, before)


def test_a_distributor_cannot_act_as_an_installer(
        platform: Platform, world: World, before: dict[str, Any]) -> None:
    """Every route that is not a distributor's is 403 to it, with B's real ids, with ids that
    exist nowhere, and on the routes that name no id."""
    findings = []
    for route in ROUTES:
        if "distributor" in route.roles:
            continue
        if PLACEHOLDER.search(route.path):
            findings += probe(platform, world.distributor, route, world.b.ids(), 403)
        else:
            for query in variants(route):
                answer = platform.call(route.method, route.path + query, body_for(route),
                                       world.distributor)
                if answer[0] != 403:
                    findings.append(f"{route.name}: {route.method} {route.path}{query} -> "
                                    f"{answer}; expected 403")
    assert not findings, "\n".join(findings)
    assert_untouched(platform, world, before)


def test_a_family_member_of_another_installer_s_is_answered_as_an_unknown_id(
        platform: Platform, world: World, before: dict[str, Any]) -> None:
    routes = [r for r in ID_ROUTES if r.name in TELLS_FAMILY_MEMBERS_APART]
    if not routes:
        pytest.skip("the gateway has no family-member routes")
    a, b = world.a, world.b
    findings = [*probe_every_route(platform, a.sub.token, "sub_installer", b.ids(), a.ids(),
                                   routes),
                *probe_every_route(platform, a.manager.token, "property_manager", b.ids(),
                                   a.ids(), routes),
                *probe_every_route(platform, a.manager.token, "property_manager",
                                   a.ids(site=1), a.ids(), routes),
                *probe_every_route(platform, a.token, "installer", b.ids(), a.ids(), routes)]
    assert_untouched(platform, world, before)
    assert not findings, "\n".join(findings)


# --- ids in bodies and queries -------------------------------------------------------------------

Request = tuple[str, Any]  # a path and a body


def told_apart(platform: Platform, token: str, method: str, request: Any, real: str,
               fake: str) -> list[str]:
    """`request(value)` with another's real value, and with one that names nothing: the
    answers must not differ, and a write with it must not be taken."""
    answer = platform.call(method, *request(real), token)
    control = platform.call(method, *request(fake), token)
    refused_all = isinstance(answer[1], dict) and answer[1].get("added") == 0  # an import
    taken = method != "GET" and answer[0] < 400 and not refused_all
    if taken or answer[0] >= 500 or shape(answer) != shape(control):
        return [f"{method} {request(real)} -> {answer}; with {fake} -> {control}"]
    return []


def installer_body_probes(own: Site, other: Site) -> list[tuple[str, Any, str, str]]:
    """What an installer or a sub-installer sends naming another's device or MAC from within
    its own site."""
    def lock(device: str) -> Request:
        return (f"/api/v1/apartments/{own.apartment_id}/locks",
                {"brand": "salto", "lock_id": f"P{uuid.uuid4().hex[:10]}", "name": "Probe",
                 "linked_device_id": device})

    def apartment(mac: str) -> Request:
        return (f"/api/v1/buildings/{own.building_id}/apartments",
                {"number": "901", "indoor_monitor_mac": mac,
                 "resident": {"first_name": "Pro", "last_name": "Be"}})

    device, mac = other.device_id, other.mac
    return [
        ("POST", lambda d: (f"/api/v1/buildings/{own.building_id}/cameras",
                            {**VALID_BODIES["CameraCreate"], "linked_device_id": d}), device),
        ("PATCH", lambda d: (f"/api/v1/cameras/{own.camera_id}", {"linked_device_id": d}),
         device),
        ("POST", lock, device),
        ("PATCH", lambda d: (f"/api/v1/locks/{own.lock_id}", {"linked_device_id": d}), device),
        ("POST", lambda m: (f"/api/v1/buildings/{own.building_id}/devices",
                            {"type": 0, "mac": m, "name": "Probe"}), mac),
        ("POST", lambda m: (f"/api/v1/buildings/{own.building_id}/devices/import",
                            {"devices": f"Probe,0,{m}"}), mac),
        ("POST", apartment, mac),
        ("PATCH", lambda m: (f"/api/v1/apartments/{own.apartment_id}",
                             {"indoor_monitor_mac": m}), mac),
    ]


def test_another_installer_s_ids_in_a_body_or_a_query_are_unknown_ids(
        platform: Platform, world: World, before: dict[str, Any]) -> None:
    """A device to link a camera or a lock to, a MAC to install or make an indoor monitor, a
    community to give a property manager or filter them by: another installer's is answered
    as one that exists nowhere, and never taken."""
    a, b = world.a, world.b
    own, other = a.sites[0], b.sites[0]
    findings = []
    for token in (a.sub.token, a.token):
        for method, request, real in installer_body_probes(own, other):
            fake = a_mac() if real == other.mac else str(uuid.uuid4())
            findings += told_apart(platform, token, method, request, real, fake)
    for method, request in (
            ("POST", lambda c: ("/api/v1/property-managers",
                                {**body_for_name("PropertyManagerCreate"),
                                 "communities": [{"community_id": c}]})),
            ("PATCH", lambda c: (f"/api/v1/property-managers/{a.manager.account_id}",
                                 {"communities": [{"community_id": c}]})),
            ("GET", lambda c: (f"/api/v1/property-managers?community_id={c}", None))):
        findings += told_apart(platform, a.token, method, request, other.community_id,
                               str(uuid.uuid4()))
    findings += told_apart(platform, a.manager.token, "PATCH",
                           lambda m: (f"/api/v1/apartments/{own.apartment_id}",
                                      {"indoor_monitor_mac": m}), other.mac, a_mac())
    assert not findings, "\n".join(findings)
    assert_untouched(platform, world, before)


def test_filtering_residents_by_another_installer_s_building_tells_nothing_of_it(
        platform: Platform, world: World, before: dict[str, Any]) -> None:
    """GET /communities/{own}/residents?building_id={another's}: answered as for a building
    that exists nowhere (no item, total 0), whoever asks: the installer, its sub-installer,
    its property manager (with another installer's building, or one of a community not
    given to it)."""
    a, own = world.a, world.a.sites[0].community_id
    findings = []
    for token, building in ((a.token, world.b.sites[0].building_id),
                            (a.sub.token, world.b.sites[0].building_id),
                            (a.manager.token, world.b.sites[0].building_id),
                            (a.manager.token, a.sites[1].building_id)):
        findings += told_apart(
            platform, token, "GET",
            lambda b: (f"/api/v1/communities/{own}/residents?building_id={b}", None),
            building, str(uuid.uuid4()))
    assert_untouched(platform, world, before)
    assert not findings, "\n".join(findings)


def body_for_name(schema: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    return {**VALID_BODIES[schema], "email": f"probe{tag}@example.org"}


def test_another_installer_s_lock_is_not_claimed_and_not_described(
        platform: Platform, world: World, before: dict[str, Any]) -> None:
    """A lock's device ID is one area's at a time, whoever's (devices' LockClaim, per brand):
    installer A cannot assign B's lock and take control of it. The refusal names the field
    alone, nothing of B's (its lock, area, names)."""
    a, other = world.a, world.b.sites[0]
    for token in (a.token, a.sub.token):
        status, problem = platform.call(
            "POST", f"/api/v1/apartments/{a.sites[0].apartment_id}/locks",
            {"brand": "salto", "lock_id": other.lock_serial.lower(), "name": "Mine"}, token)
        assert status == 409 and list(problem["errors"]) == ["lock_id"], problem
        told = repr(problem)
        assert not any(secret in told for secret in (
            *other.ids().values(), world.b.installer_id, "Birch")), problem
    assert_untouched(platform, world, before)
