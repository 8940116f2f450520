"""The gateway over HTTP, with small fake topology and accounts services on the in-process bus.

The fakes keep their state in dicts, load payloads with the same contract schemas as the real
services and raise the same contract errors, so these tests pin the gateway's side of the RPC
contract (names, arguments, answers) and every HTTP status it promises.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import socket
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from nameko.exceptions import RemoteError, UnknownService
from nameko.rpc import rpc
from nameko.runners import ServiceRunner

from concierge import transport
from concierge.config import EMBEDDED_AMQP_URI
from concierge.rpc import command, translated
from contracts.accounts import (
    AccountEdit,
    InstallerCreate,
    LoginRequest,
    LoginVerify,
    PasswordChange,
    PasswordForgotten,
    PasswordReset,
)
from contracts.errors import (
    ERROR_TYPES,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
)
from contracts.topology import (
    ApartmentCreate,
    ApartmentEdit,
    BuildingCreate,
    BuildingEdit,
    CommunityCreate,
    CommunityEdit,
)
from services.gateway import openapi
from services.gateway.http import (
    ERROR_STATUS,
    MAX_BODY_BYTES,
    SESSION_CACHE_CONFIG_KEY,
    BodyTooSlow,
    Malformed,
    SessionCache,
    problem_from,
    routes_of,
)
from services.gateway.service import GatewayService

PROBLEM_KEYS = {"type", "title", "status", "detail", "errors"}
DISTRIBUTOR_ID = str(uuid.uuid4())
INSTALLER_ID = str(uuid.uuid4())
OTHER_INSTALLER_ID = str(uuid.uuid4())


# --- fakes ---------------------------------------------------------------------------------


@dataclass
class State:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    communities: dict[str, dict[str, Any]] = field(default_factory=dict)
    buildings: dict[str, dict[str, Any]] = field(default_factory=dict)
    apartments: dict[str, dict[str, Any]] = field(default_factory=dict)


STATE = State()


def _user(username: str, password: str, role: str, account_id: str,
          installer_id: str | None) -> dict[str, Any]:
    return {"password": password, "principal": {
        "account_id": account_id, "role": role, "username": username,
        "installer_id": installer_id}}


def _reset_state() -> None:
    global STATE
    STATE = State()
    STATE.users = {
        "acme": _user("acme", "distributor-pw", "distributor", DISTRIBUTOR_ID, None),
        "luna": _user("luna", "installer-pw", "installer", INSTALLER_ID, INSTALLER_ID),
        "sol": _user("sol", "installer-pw", "installer", OTHER_INSTALLER_ID, OTHER_INSTALLER_ID),
    }


class FakeAccounts:
    name = "accounts"

    @rpc
    @translated
    def login(self, payload: dict[str, Any], ctx: Any = None) -> dict[str, Any]:
        request = LoginRequest().load(payload)
        user = STATE.users.get(request["username"])
        if user is None or user["password"] != request["password"]:
            raise Unauthorized("Wrong username or password.")
        token = secrets.token_urlsafe(24)
        STATE.sessions[token] = user["principal"]
        principal = user["principal"]
        return {"token": token, "expires_at": "2030-01-01T00:00:00+00:00",
                "role": principal["role"], "account_id": principal["account_id"]}

    @rpc
    def authenticate(self, token: str) -> dict[str, Any]:
        principal = STATE.sessions.get(token)
        if principal is None:
            raise Unauthorized("Not logged in.")
        return principal

    @rpc
    def logout(self, token: str) -> None:
        if STATE.sessions.pop(token, None) is None:
            raise Unauthorized("Not logged in.")

    @rpc
    @command
    def verify_login(self, ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        LoginVerify().load(payload)
        raise Unauthorized("Wrong or expired code: log in again for a new one.")

    @rpc
    @command
    def edit_account(self, ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return {"id": ctx["account_id"], **AccountEdit().load(payload)}

    @rpc
    @command
    def forgot_password(self, ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        PasswordForgotten().load(payload)

    @rpc
    @command
    def reset_password(self, ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        PasswordReset().load(payload)
        raise Invalid.field("token", "This link is not valid.")

    @rpc
    @command
    def logout_everywhere(self, ctx: dict[str, Any]) -> int:
        ended = [t for t, p in STATE.sessions.items() if p["account_id"] == ctx["account_id"]]
        for token in ended:
            del STATE.sessions[token]
        return len(ended)

    @rpc
    @command
    def account(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"id": ctx["account_id"], "role": ctx["role"]}

    @rpc
    @command
    def change_password(self, ctx: dict[str, Any], token: str, payload: dict[str, Any]) -> None:
        PasswordChange().load(payload)  # a bad body is 422 naming its fields, as accounts says
        raise Invalid.field("current_password", "Wrong password.")

    @rpc
    @command
    def create_installer(self, ctx: dict[str, Any], payload: dict[str, Any]) -> str:
        if ctx.get("role") != "distributor" or ctx.get("account_id") != DISTRIBUTOR_ID:
            raise Forbidden("Only a distributor may create installers.")
        request = InstallerCreate().load(payload)
        if request["username"] in STATE.users:
            raise Conflict("That username is taken.", {"username": ["That username is taken."]})
        account_id = str(uuid.uuid4())
        STATE.users[request["username"]] = _user(
            request["username"], request["password"], "installer", account_id, account_id)
        return account_id


def _page(rows: list[dict[str, Any]], query: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in rows if query.get("q", "").lower() in str(r.get("name", "")).lower()]
    sort = query.get("sort", "name")
    rows.sort(key=lambda r: str(r.get(sort.lstrip("-"), "")), reverse=sort.startswith("-"))
    start = (query["page"] - 1) * query["per_page"]
    return {"items": rows[start:start + query["per_page"]], "total": len(rows),
            "page": query["page"], "per_page": query["per_page"]}


def _mine(table: dict[str, dict[str, Any]], ctx: dict[str, Any], key: str) -> dict[str, Any]:
    row = table.get(key)
    if row is None or row["installer_id"] != ctx.get("installer_id"):
        raise NotFound("Not found.")
    return row


class FakeTopology:
    name = "topology"

    @rpc
    @command
    def dashboard(self, ctx: dict[str, Any]) -> dict[str, Any]:
        mine = [c for c in STATE.communities.values() if c["installer_id"] == ctx["installer_id"]]
        return {"communities": len(mine)}

    @rpc
    @command
    def list_communities(self, ctx: dict[str, Any], query: dict[str, Any]) -> dict[str, Any]:
        mine = [c for c in STATE.communities.values() if c["installer_id"] == ctx["installer_id"]]
        return _page(mine, query)

    @rpc
    @command
    def create_community(self, ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, str]:
        data = CommunityCreate().load(payload)
        if data["name"] == "Explode":
            raise RuntimeError("secret internals: connection string postgres://x")
        if any(c["name"] == data["name"] for c in STATE.communities.values()):
            raise Conflict("A community with this name exists.", {"name": ["Taken."]})
        key = str(uuid.uuid4())
        STATE.communities[key] = {**data, "id": key, "installer_id": ctx["installer_id"],
                                  "actor": ctx["actor"], "correlation_id": ctx["correlation_id"]}
        return {"id": key}

    @rpc
    @command
    def get_community(self, ctx: dict[str, Any], community_id: str) -> dict[str, Any]:
        return _mine(STATE.communities, ctx, community_id)

    @rpc
    @command
    def edit_community(self, ctx: dict[str, Any], community_id: str,
                       payload: dict[str, Any]) -> dict[str, Any]:
        community = _mine(STATE.communities, ctx, community_id)
        community.update(CommunityEdit().load(payload))
        return community

    @rpc
    @command
    def delete_community(self, ctx: dict[str, Any], community_id: str,
                         cascade: bool = False) -> None:
        _mine(STATE.communities, ctx, community_id)
        del STATE.communities[community_id]

    @rpc
    @command
    def list_buildings(self, ctx: dict[str, Any], community_id: str,
                       query: dict[str, Any]) -> dict[str, Any]:
        _mine(STATE.communities, ctx, community_id)
        rows = [b for b in STATE.buildings.values() if b["community_id"] == community_id]
        return _page(rows, query)

    @rpc
    @command
    def add_building(self, ctx: dict[str, Any], community_id: str,
                     payload: dict[str, Any]) -> dict[str, str]:
        _mine(STATE.communities, ctx, community_id)
        data = BuildingCreate().load(payload)
        if any(b["community_id"] == community_id and b["name"] == data["name"]
               for b in STATE.buildings.values()):
            raise Conflict("A building with this name exists.", {"name": ["Taken."]})
        key = str(uuid.uuid4())
        STATE.buildings[key] = {**data, "id": key, "community_id": community_id,
                                "installer_id": ctx["installer_id"]}
        return {"id": key}

    @rpc
    @command
    def get_building(self, ctx: dict[str, Any], building_id: str) -> dict[str, Any]:
        return _mine(STATE.buildings, ctx, building_id)

    @rpc
    @command
    def edit_building(self, ctx: dict[str, Any], building_id: str,
                      payload: dict[str, Any]) -> dict[str, Any]:
        building = _mine(STATE.buildings, ctx, building_id)
        building.update(BuildingEdit().load(payload))
        return building

    @rpc
    @command
    def delete_building(self, ctx: dict[str, Any], building_id: str,
                        cascade: bool = False) -> None:
        _mine(STATE.buildings, ctx, building_id)
        del STATE.buildings[building_id]

    @rpc
    @command
    def add_apartment(self, ctx: dict[str, Any], building_id: str,
                      payload: dict[str, Any]) -> dict[str, str]:
        building = _mine(STATE.buildings, ctx, building_id)
        data = ApartmentCreate().load(payload)
        if any(a["building_id"] == building_id and a["number"] == data["number"]
               for a in STATE.apartments.values()):
            raise Conflict("This APT number is taken.", {"number": ["Taken."]})
        key = str(uuid.uuid4())
        STATE.apartments[key] = {**data, "id": key, "building_id": building_id,
                                 "community_id": building["community_id"],
                                 "installer_id": ctx["installer_id"],
                                 "app_status": "unregistered", "history": ["ApartmentAdded"]}
        return {"id": key}

    @rpc
    @command
    def get_apartment(self, ctx: dict[str, Any], apartment_id: str) -> dict[str, Any]:
        apartment = _mine(STATE.apartments, ctx, apartment_id)
        return {k: v for k, v in apartment.items() if k != "history"}

    @rpc
    @command
    def edit_apartment(self, ctx: dict[str, Any], apartment_id: str,
                       payload: dict[str, Any]) -> dict[str, Any]:
        apartment = _mine(STATE.apartments, ctx, apartment_id)
        changes = ApartmentEdit().load(payload)
        apartment["resident"].update(changes.pop("resident", {}))
        apartment.update(changes)
        apartment["history"].append("ApartmentEdited")
        return self.get_apartment(ctx, apartment_id)

    @rpc
    @command
    def delete_apartment(self, ctx: dict[str, Any], apartment_id: str) -> None:
        _mine(STATE.apartments, ctx, apartment_id)
        del STATE.apartments[apartment_id]

    @rpc
    @command
    def reset_apartment(self, ctx: dict[str, Any], apartment_id: str) -> dict[str, Any]:
        apartment = _mine(STATE.apartments, ctx, apartment_id)
        apartment["resident"].update(email=None, mobile=None, country=None, landlines=[])
        apartment["history"].append("ApartmentReset")
        return self.get_apartment(ctx, apartment_id)

    @rpc
    @command
    def apartment_history(self, ctx: dict[str, Any], apartment_id: str,
                          query: dict[str, Any]) -> dict[str, Any]:
        rows = [{"type": t} for t in _mine(STATE.apartments, ctx, apartment_id)["history"]]
        start = (query["page"] - 1) * query["per_page"]
        return {"items": rows[start:start + query["per_page"]], "total": len(rows),
                "page": query["page"], "per_page": query["per_page"]}

    @rpc
    @command
    def list_residents(self, ctx: dict[str, Any], community_id: str,
                       query: dict[str, Any]) -> dict[str, Any]:
        _mine(STATE.communities, ctx, community_id)
        rows = [
            {"apartment_id": a["id"], "building_id": a["building_id"], "number": a["number"],
             "name": f"{a['resident']['first_name']} {a['resident']['last_name']}",
             "app_status": a["app_status"]}
            for a in STATE.apartments.values()
            if a["community_id"] == community_id
            and query.get("app_status", a["app_status"]) == a["app_status"]
            and query.get("building_id", a["building_id"]) == a["building_id"]
        ]
        return _page(rows, {**query, "sort": query.get("sort", "number")})


class FakeDevices:
    """Stands in for devices: nothing is ever found (the gateway's own checks are tested here;
    devices' rules in tests/service/test_devices_service.py), the MAC library is empty."""

    name = "devices"

    @rpc
    @command
    def list_macs(self, ctx: dict[str, Any], query: dict[str, Any]) -> dict[str, Any]:
        return _page([], query)

    def _missing(self, ctx: dict[str, Any], *args: Any) -> Any:
        raise NotFound("Not found.")

    register_mac = import_macs = remove_mac = add_device = get_device = edit_device = (
        remove_device) = list_devices = device_history = add_credential = list_credentials = (
        remove_credential) = add_third_party = list_third_party = get_third_party = (
        edit_third_party) = remove_third_party = rpc(command(_missing))


# --- running it ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    transport.reset()
    port = _free_port()
    config = {
        "AMQP_URI": EMBEDDED_AMQP_URI,
        "WEB_SERVER_ADDRESS": f"127.0.0.1:{port}",
        "serializer": "json",
        # Long enough that a cached session cannot expire between two requests of a test.
        SESSION_CACHE_CONFIG_KEY: 600,
    }
    runner = ServiceRunner(config)
    for cls in (GatewayService, FakeTopology, FakeAccounts, FakeDevices):
        runner.add_service(cls)
    runner.start()
    yield f"http://127.0.0.1:{port}"
    runner.stop()
    transport.reset()


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    _reset_state()


class Client:
    """A tiny HTTP client: every call returns the response; JSON bodies or raw bytes."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.token = token
        self.http = requests.Session()

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> requests.Response:
        sent = dict(headers or {})
        if self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        return self.http.request(method, self.base_url + path, data=data, headers=sent,
                                 timeout=30, allow_redirects=False)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.request("PATCH", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)


def login(base_url: str, username: str, password: str) -> Client:
    response = Client(base_url).post("/api/v1/auth/login",
                                     {"username": username, "password": password})
    assert response.status_code == 200, response.text
    return Client(base_url, response.json()["token"])


@pytest.fixture
def installer(base_url: str) -> Client:
    return login(base_url, "luna", "installer-pw")


@pytest.fixture
def distributor(base_url: str) -> Client:
    return login(base_url, "acme", "distributor-pw")


def assert_problem(response: requests.Response, status: int,
                   fields: tuple[str, ...] = ()) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) == PROBLEM_KEYS
    assert body["status"] == status
    assert body["type"].startswith("urn:concierge:problem:")
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str)
    for name in fields:
        assert name in body["errors"], body
        assert body["errors"][name], body
    return body


def new_community(client: Client, name: str = "Sunrise", **extra: Any) -> str:
    response = client.post("/api/v1/communities",
                           {"name": name, "feature_plan": "premium", **extra})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def new_building(client: Client, community_id: str, name: str = "A") -> str:
    response = client.post(f"/api/v1/communities/{community_id}/buildings", {"name": name})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def apartment_payload(number: str = "101", **extra: Any) -> dict[str, Any]:
    return {"number": number,
            "resident": {"first_name": "Ada", "last_name": "Lovelace",
                         "email": "ada@example.com"}, **extra}


def new_apartment(client: Client, building_id: str, number: str = "101") -> str:
    response = client.post(f"/api/v1/buildings/{building_id}/apartments",
                           apartment_payload(number))
    assert response.status_code == 201, response.text
    return response.json()["id"]


# --- service routes and routing errors -----------------------------------------------------


def test_healthz_answers_without_a_token(base_url: str) -> None:
    response = Client(base_url).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_route_is_a_404_problem(base_url: str, installer: Client) -> None:
    assert_problem(installer.get("/api/v1/nothing-here"), 404)
    assert_problem(Client(base_url).get("/"), 404)


def test_wrong_method_is_a_405_problem_naming_the_allowed_ones(installer: Client) -> None:
    body = installer.request("PUT", "/api/v1/communities")
    assert_problem(body, 405)
    assert set(body.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert_problem(installer.request("OPTIONS", "/api/v1/dashboard"), 405)


def test_an_id_that_is_not_a_uuid_is_no_route(installer: Client) -> None:
    assert_problem(installer.get("/api/v1/communities/not-a-uuid"), 404)
    assert_problem(installer.get("/api/v1/apartments/123/history"), 404)


# --- authentication ------------------------------------------------------------------------


def test_login_answers_the_token_and_who(base_url: str) -> None:
    response = Client(base_url).post("/api/v1/auth/login",
                                     {"username": "luna", "password": "installer-pw"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_at", "role", "account_id"}
    assert body["role"] == "installer"
    assert body["account_id"] == INSTALLER_ID


def test_login_refusals(base_url: str) -> None:
    client = Client(base_url)
    wrong = client.post("/api/v1/auth/login", {"username": "luna", "password": "nope"})
    assert assert_problem(wrong, 401)["detail"] == "Wrong username or password."
    assert_problem(client.post("/api/v1/auth/login", {"username": "luna"}), 422, ("password",))
    assert_problem(client.post("/api/v1/auth/login",
                               {"username": "luna", "password": "x", "remember": True}),
                   422, ("remember",))
    assert_problem(client.post("/api/v1/auth/login", {"username": "", "password": ""}),
                   422, ("username", "password"))


def test_requests_without_a_valid_token_are_401(base_url: str) -> None:
    anonymous = Client(base_url)
    body = anonymous.get("/api/v1/dashboard")
    assert_problem(body, 401)
    assert body.headers["WWW-Authenticate"] == "Bearer"
    for header in ["Bearer", "Bearer nonsense", "Basic dXNlcjpwdw==", "bearer  ",
                   "Bearer " + "x" * 600, "Bearer t\u00e9st"]:
        response = anonymous.get("/api/v1/dashboard", headers={"Authorization": header})
        assert_problem(response, 401)


def test_authentication_comes_before_validation(base_url: str) -> None:
    response = Client(base_url).post("/api/v1/communities", raw=b"{not json")
    assert_problem(response, 401)


def test_a_session_is_cached_and_a_logout_here_ends_it_at_once(base_url: str) -> None:
    first = login(base_url, "luna", "installer-pw")
    assert first.get("/api/v1/dashboard").status_code == 200
    # Closed behind the gateway's back (another replica, an expiry): the cache still knows it.
    del STATE.sessions[first.token]
    assert first.get("/api/v1/dashboard").status_code == 200

    second = login(base_url, "luna", "installer-pw")
    assert second.get("/api/v1/dashboard").status_code == 200
    assert second.post("/api/v1/auth/logout").status_code == 204
    assert second.token not in STATE.sessions
    assert_problem(second.get("/api/v1/dashboard"), 401)
    assert_problem(second.post("/api/v1/auth/logout"), 401)


def test_logout_needs_a_token(base_url: str) -> None:
    assert_problem(Client(base_url).post("/api/v1/auth/logout"), 401)


def test_session_cache_expires_forgets_and_stays_bounded() -> None:
    now = [0.0]
    cache = SessionCache(ttl=5, size=3, clock=lambda: now[0])
    cache.put("a", {"role": "installer"})
    assert cache.get("a") == {"role": "installer"}
    now[0] = 5.0
    assert cache.get("a") is None

    cache.put("b", {"n": 1})
    cache.forget("b")
    assert cache.get("b") is None
    cache.put("b", {"n": 1})  # a request that authenticated before the logout finished
    assert cache.get("b") is None
    now[0] = 10.1
    cache.put("b", {"n": 2})
    assert cache.get("b") == {"n": 2}

    for token in "cdefg":
        cache.put(token, {"t": token})
    assert len(cache._entries) <= 3
    assert cache.get("g") == {"t": "g"}
    assert SessionCache(ttl=0).get("x") is None


# --- errors --------------------------------------------------------------------------------


def test_error_table_agrees_with_the_contracts() -> None:
    for cls in ERROR_TYPES.values():
        assert ERROR_STATUS[cls] == cls.status
    assert ERROR_STATUS[Malformed] == 400
    assert ERROR_STATUS[BodyTooSlow] == BodyTooSlow.status == 408


def test_a_busy_service_says_when_to_come_back() -> None:
    response = problem_from(RemoteError("Busy", "Too many logins at once."), "rid")
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    assert json.loads(response.get_data())["detail"] == "Too many logins at once."


@pytest.mark.parametrize(("error", "status"), [
    (UnknownService("topology"), 503),
    (RemoteError("Conflict", "Taken."), 409),  # a contract error nameko could not rebuild
    (RemoteError("KeyError", "'secret'"), 500),
    (Forbidden("No."), 403),
    (type("NameTaken", (Conflict,), {})("Taken.", {"name": ["Taken."]}), 409),
    (ValueError("secret"), 500),
])
def test_errors_map_through_the_one_table(error: Exception, status: int) -> None:
    response = problem_from(error, "rid")
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    body = json.loads(response.get_data())
    assert set(body) == PROBLEM_KEYS and body["status"] == status
    assert "secret" not in body["detail"]


@pytest.mark.parametrize("raw", [
    b"{not json", b"", b"\xff\xfe{}", b'{"name": NaN}', b'{"name": 1e400}', b"[[[",
])
def test_a_body_that_is_not_json_is_a_400_naming_body(installer: Client, raw: bytes) -> None:
    assert_problem(installer.post("/api/v1/communities", raw=raw), 400, ("body",))


@pytest.mark.parametrize("body", [[], ["name"], "text", 42, None, True])
def test_a_body_that_is_not_an_object_is_a_400(installer: Client, body: Any) -> None:
    response = installer.post("/api/v1/communities", raw=json.dumps(body).encode())
    assert_problem(response, 400, ("body",))


def test_nesting_and_size_are_bounded(installer: Client) -> None:
    deep = b'{"address": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert_problem(installer.post("/api/v1/communities", raw=deep), 400, ("body",))
    deep_but_parsable = b'{"address": ' + b"[" * 100 + b"]" * 100 + b"}"
    assert_problem(installer.post("/api/v1/communities", raw=deep_but_parsable), 400, ("body",))
    huge = json.dumps({"name": "x" * (MAX_BODY_BYTES + 1)}).encode()
    assert_problem(installer.post("/api/v1/communities", raw=huge), 413, ("body",))


def test_text_no_store_can_keep_is_refused_naming_the_field(installer: Client) -> None:
    body = assert_problem(
        installer.post("/api/v1/communities", {"name": "a\x00b", "feature_plan": "basic"}),
        422, ("name",))
    assert body["errors"]["name"] == [
        "Text may not contain NUL characters or unpaired surrogates."]
    surrogate = b'{"name": "\\ud800", "feature_plan": "basic"}'
    assert_problem(installer.post("/api/v1/communities", raw=surrogate), 422, ("name",))
    nested = installer.post("/api/v1/communities", {
        "name": "N", "feature_plan": "basic", "address": {"city": "\x00"}})
    assert assert_problem(nested, 422)["errors"] == {"address": {"city": [
        "Text may not contain NUL characters or unpaired surrogates."]}}


def test_schema_errors_name_each_field(installer: Client) -> None:
    response = installer.post("/api/v1/communities", {
        "feature_plan": "gold", "time_zone": "Mars/Olympus", "colour": "red"})
    body = assert_problem(response, 422, ("name", "feature_plan", "time_zone", "colour"))
    assert body["errors"]["colour"] == ["Unknown field."]
    rule_across_fields = installer.post("/api/v1/communities", {
        "name": "N", "feature_plan": "basic", "landline_service": True})
    assert_problem(rule_across_fields, 422, ("landline_service",))


def test_an_unexpected_failure_is_a_bare_500(installer: Client) -> None:
    response = installer.post("/api/v1/communities", {"name": "Explode", "feature_plan": "basic"},
                              headers={"X-Request-Id": "trace-500"})
    body = assert_problem(response, 500)
    assert "secret" not in response.text and "postgres" not in response.text
    assert "trace-500" in body["detail"]


def test_the_request_id_travels_as_correlation_id(installer: Client) -> None:
    response = installer.post("/api/v1/communities", {"name": "Traced", "feature_plan": "basic"},
                              headers={"X-Request-Id": "req-42"})
    assert response.headers["X-Request-Id"] == "req-42"
    community = installer.get(f"/api/v1/communities/{response.json()['id']}").json()
    assert community["correlation_id"] == "req-42"
    assert community["actor"] == "installer:luna"

    odd = installer.get("/api/v1/dashboard", headers={"X-Request-Id": "bad id\twith spaces"})
    assert uuid.UUID(odd.headers["X-Request-Id"])


# --- installers ----------------------------------------------------------------------------


def test_a_distributor_creates_installers(distributor: Client, installer: Client) -> None:
    payload = {"username": "nova", "password": "long-enough", "email": "nova@example.com"}
    response = distributor.post("/api/v1/installers", payload)
    assert response.status_code == 201
    assert uuid.UUID(response.json()["id"])
    assert STATE.users["nova"]["principal"]["role"] == "installer"

    assert_problem(distributor.post("/api/v1/installers", payload), 409, ("username",))
    assert_problem(distributor.post("/api/v1/installers", {**payload, "username": "n2",
                                                           "email": "not-an-email"}),
                   422, ("email",))
    assert_problem(distributor.post("/api/v1/installers", {**payload, "username": "n3",
                                                           "password": "short"}),
                   422, ("password",))
    assert_problem(installer.post("/api/v1/installers", {**payload, "username": "n4"}), 403)
    assert "n4" not in STATE.users


# --- communities ---------------------------------------------------------------------------


def test_community_lifecycle(installer: Client) -> None:
    response = installer.post("/api/v1/communities", {"name": "Sunrise",
                                                      "feature_plan": "premium"})
    assert response.status_code == 201
    community_id = response.json()["id"]
    assert response.headers["Location"] == f"/api/v1/communities/{community_id}"

    got = installer.get(f"/api/v1/communities/{community_id}")
    assert got.status_code == 200
    assert got.json()["name"] == "Sunrise"
    assert got.json()["time_zone"] == "UTC"  # the contract's default, filled by the service

    edited = installer.patch(f"/api/v1/communities/{community_id}",
                             {"name": "Sunset", "landline_service": True})
    assert edited.status_code == 200
    assert edited.json()["name"] == "Sunset"
    assert_problem(installer.patch(f"/api/v1/communities/{community_id}", {"nmae": "x"}),
                   422, ("nmae",))
    assert_problem(installer.post("/api/v1/communities", {"name": "Sunset",
                                                          "feature_plan": "basic"}),
                   409, ("name",))

    assert installer.delete(f"/api/v1/communities/{community_id}").status_code == 204
    assert_problem(installer.get(f"/api/v1/communities/{community_id}"), 404)
    assert_problem(installer.delete(f"/api/v1/communities/{community_id}"), 404)
    assert_problem(installer.patch(f"/api/v1/communities/{uuid.uuid4()}", {"name": "x"}), 404)


def test_an_installer_never_sees_another_installers_community(base_url: str,
                                                              installer: Client) -> None:
    community_id = new_community(installer)
    other = login(base_url, "sol", "installer-pw")
    assert_problem(other.get(f"/api/v1/communities/{community_id}"), 404)
    assert other.get("/api/v1/communities").json()["total"] == 0
    assert other.get("/api/v1/dashboard").json() == {"communities": 0}
    assert installer.get("/api/v1/dashboard").json() == {"communities": 1}


def test_lists_page_with_defaults(installer: Client) -> None:
    for n in range(12):
        new_community(installer, f"C{n:02d}")
    first = installer.get("/api/v1/communities").json()
    assert (first["total"], first["page"], first["per_page"], len(first["items"])) == (
        12, 1, 10, 10)
    second = installer.get("/api/v1/communities?page=2&per_page=5&sort=-name").json()
    assert (second["page"], second["per_page"]) == (2, 5)
    assert [c["name"] for c in second["items"]] == ["C06", "C05", "C04", "C03", "C02"]
    found = installer.get("/api/v1/communities?q=c1").json()
    assert sorted(c["name"] for c in found["items"]) == ["C10", "C11"]


@pytest.mark.parametrize(("query", "param"), [
    ("page=0", "page"), ("page=-1", "page"), ("page=x", "page"), ("page=1.5", "page"),
    ("page=", "page"), ("page=100001", "page"), ("per_page=101", "per_page"),
    ("per_page=0", "per_page"), ("per_page=ten", "per_page"), ("sort=name;drop", "sort"),
    ("q=" + "x" * 129, "q"), ("pgae=2", "pgae"), ("page=1&page=2", "page"),
    ("q=%00", "q"),
])
def test_list_parameters_are_validated(installer: Client, query: str, param: str) -> None:
    assert_problem(installer.get(f"/api/v1/communities?{query}"), 422, (param,))


# --- buildings, apartments, residents ------------------------------------------------------


def test_building_lifecycle(installer: Client) -> None:
    community_id = new_community(installer)
    response = installer.post(f"/api/v1/communities/{community_id}/buildings",
                              {"name": "A", "ground_floor": "G1", "floor_start": 2})
    assert response.status_code == 201
    building_id = response.json()["id"]
    assert response.headers["Location"] == f"/api/v1/buildings/{building_id}"
    assert_problem(installer.post(f"/api/v1/communities/{community_id}/buildings",
                                  {"name": "A"}), 409, ("name",))
    assert_problem(installer.post(f"/api/v1/communities/{community_id}/buildings",
                                  {"name": "B", "floor_start": 500}), 422, ("floor_start",))
    assert_problem(installer.post(f"/api/v1/communities/{uuid.uuid4()}/buildings",
                                  {"name": "B"}), 404)

    listed = installer.get(f"/api/v1/communities/{community_id}/buildings?per_page=1").json()
    assert (listed["total"], listed["per_page"], listed["items"][0]["id"]) == (1, 1, building_id)
    assert installer.get(f"/api/v1/buildings/{building_id}").json()["ground_floor"] == "G1"
    edited = installer.patch(f"/api/v1/buildings/{building_id}", {"name": "Tower"})
    assert edited.status_code == 200 and edited.json()["name"] == "Tower"
    assert_problem(installer.patch(f"/api/v1/buildings/{building_id}", {"ground_floor": "G9"}),
                   422, ("ground_floor",))
    assert installer.delete(f"/api/v1/buildings/{building_id}").status_code == 204
    assert_problem(installer.get(f"/api/v1/buildings/{building_id}"), 404)


def test_apartment_lifecycle(installer: Client) -> None:
    building_id = new_building(installer, new_community(installer))
    response = installer.post(f"/api/v1/buildings/{building_id}/apartments",
                              apartment_payload("101", floor="g1"))
    assert response.status_code == 201
    apartment_id = response.json()["id"]
    assert response.headers["Location"] == f"/api/v1/apartments/{apartment_id}"
    assert_problem(installer.post(f"/api/v1/buildings/{building_id}/apartments",
                                  apartment_payload("101")), 409, ("number",))
    bad = installer.post(f"/api/v1/buildings/{building_id}/apartments",
                         {"number": "#1", "resident": {"first_name": "A"}})
    body = assert_problem(bad, 422, ("number", "resident"))
    assert "last_name" in body["errors"]["resident"]

    got = installer.get(f"/api/v1/apartments/{apartment_id}").json()
    assert (got["number"], got["floor"], got["resident"]["email"]) == (
        "101", "G1", "ada@example.com")
    edited = installer.patch(f"/api/v1/apartments/{apartment_id}",
                             {"name": "Penthouse", "resident": {"mobile": "5551234"}})
    assert edited.status_code == 200
    assert (edited.json()["name"], edited.json()["resident"]["mobile"]) == ("Penthouse", "5551234")
    nested = installer.patch(f"/api/v1/apartments/{apartment_id}",
                             {"resident": {"email": "nope"}})
    assert assert_problem(nested, 422)["errors"] == {"resident": {"email": [
        "Not a valid email address."]}}

    reset = installer.post(f"/api/v1/apartments/{apartment_id}/reset")
    assert reset.status_code == 200
    assert reset.json()["resident"]["email"] is None
    history = installer.get(f"/api/v1/apartments/{apartment_id}/history").json()
    assert history == {"items": [{"type": "ApartmentAdded"}, {"type": "ApartmentEdited"},
                                 {"type": "ApartmentReset"}],
                       "total": 3, "page": 1, "per_page": 10}

    assert installer.delete(f"/api/v1/apartments/{apartment_id}").status_code == 204
    assert_problem(installer.get(f"/api/v1/apartments/{apartment_id}"), 404)
    assert_problem(installer.post(f"/api/v1/apartments/{apartment_id}/reset"), 404)


def test_residents_list_filters(installer: Client) -> None:
    community_id = new_community(installer)
    a, b = new_building(installer, community_id, "A"), new_building(installer, community_id, "B")
    for number in ("101", "102"):
        new_apartment(installer, a, number)
    registered = new_apartment(installer, b, "201")
    STATE.apartments[registered]["app_status"] = "registered"

    url = f"/api/v1/communities/{community_id}/residents"
    everyone = installer.get(url).json()
    assert (everyone["total"], everyone["per_page"]) == (3, 10)
    in_b = installer.get(f"{url}?{urlencode({'building_id': b})}").json()
    assert [r["number"] for r in in_b["items"]] == ["201"]
    assert installer.get(f"{url}?app_status=registered").json()["total"] == 1
    assert_problem(installer.get(f"{url}?app_status=maybe"), 422, ("app_status",))
    assert_problem(installer.get(f"{url}?building_id=nope"), 422, ("building_id",))
    assert_problem(installer.get(f"/api/v1/communities/{uuid.uuid4()}/residents"), 404)


# --- OpenAPI -------------------------------------------------------------------------------

REQUEST_SCHEMAS = {
    ("POST", "/api/v1/auth/login"): "LoginRequest",
    ("POST", "/api/v1/installers"): "InstallerCreate",
    ("POST", "/api/v1/communities"): "CommunityCreate",
    ("PATCH", "/api/v1/communities/{community_id}"): "CommunityEdit",
    ("POST", "/api/v1/communities/{community_id}/buildings"): "BuildingCreate",
    ("PATCH", "/api/v1/buildings/{building_id}"): "BuildingEdit",
    ("POST", "/api/v1/buildings/{building_id}/apartments"): "ApartmentCreate",
    ("PATCH", "/api/v1/apartments/{apartment_id}"): "ApartmentEdit",
}
JSON_SCHEMA_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check_schema(node: Any, where: str) -> None:
    """The JSON Schema keywords we emit, used the way 2020-12 defines them."""
    assert isinstance(node, dict), where
    kinds = node.get("type")
    if kinds is not None:
        listed = kinds if isinstance(kinds, list) else [kinds]
        assert set(listed) <= JSON_SCHEMA_TYPES, where
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in node:
            assert isinstance(node[key], int) and node[key] >= 0, where
    if "enum" in node:
        assert isinstance(node["enum"], list) and node["enum"], where
    if "required" in node:
        assert set(node["required"]) <= set(node.get("properties", {})), where
    if "pattern" in node:
        assert "\\Z" not in node["pattern"], where  # not ECMA-262
    for name, sub in node.get("properties", {}).items():
        _check_schema(sub, f"{where}.{name}")
    if "items" in node:
        _check_schema(node["items"], f"{where}[]")
    for sub in node.get("anyOf", []):
        _check_schema(sub, f"{where}|")


def test_openapi_document_describes_every_route(base_url: str) -> None:
    response = Client(base_url).get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert {"title", "version"} <= set(doc["info"])

    operations = {(method.upper(), path): op for path, item in doc["paths"].items()
                  for method, op in item.items()}
    declared = {(r.method, openapi.openapi_path(r.path)[0]) for r in routes_of(GatewayService)}
    assert set(operations) == declared
    assert len(declared) == 98
    assert len({op["operationId"] for op in operations.values()}) == len(operations)

    for (method, path), op in operations.items():
        where = f"{method} {path}"
        statuses = set(op["responses"])
        assert any(s.startswith("2") for s in statuses), where
        assert "500" in statuses, where
        names = {p["name"] for p in op["parameters"] if p["in"] == "path"}
        assert names == set(path.replace("}", "{").split("{")[1::2]), where
        assert all(p["required"] for p in op["parameters"] if p["in"] == "path"), where
        if op["security"]:
            assert op["security"] == [{"bearer": []}]
            assert "401" in statuses, where
        if "requestBody" in op:
            assert {"400", "422"} <= statuses, where
        keys = [p for p in op["parameters"] if p["name"] == "Idempotency-Key"]
        if method in ("POST", "PATCH", "DELETE"):
            assert [(p["in"], p["required"]) for p in keys] == [("header", False)], where
            assert "422" in statuses, where
        else:
            assert keys == [], where
        for status, answer in op["responses"].items():
            if int(status) >= 400:
                problem = _resolve(doc, answer["$ref"])
                assert "application/problem+json" in problem["content"], where

    for key, schema in REQUEST_SCHEMAS.items():
        body = operations[key]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{schema}"}
    public = {k for k, op in operations.items() if not op["security"]}
    assert public == {("GET", "/healthz"), ("GET", "/openapi.json"),
                      ("POST", "/api/v1/auth/login"), ("POST", "/api/v1/auth/forgot-password"),
                      ("POST", "/api/v1/auth/reset-password"),
                      ("POST", "/api/v1/auth/login/verify")}
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "The token from POST /api/v1/auth/login."}

    for ref in set(_refs(doc)):
        assert _resolve(doc, ref) is not None, ref
    for name, schema in doc["components"]["schemas"].items():
        _check_schema(schema, name)
    for op in operations.values():
        for parameter in op["parameters"]:
            _check_schema(parameter["schema"], parameter["name"])


def test_openapi_schemas_mirror_the_contracts(base_url: str) -> None:
    schemas = Client(base_url).get("/openapi.json").json()["components"]["schemas"]
    create = schemas["CommunityCreate"]
    assert create["additionalProperties"] is False
    assert set(create["properties"]) == set(CommunityCreate().fields)
    assert set(create["required"]) == {"name", "feature_plan"}
    assert create["properties"]["name"]["maxLength"] == 128
    assert create["properties"]["feature_plan"]["enum"] == ["basic", "premium"]
    assert create["properties"]["address"]["$ref"] == "#/components/schemas/Address"
    assert schemas["Address"]["properties"]["city"]["type"] == ["string", "null"]
    apartment = schemas["ApartmentCreate"]["properties"]
    assert apartment["resident"] == {"$ref": "#/components/schemas/ResidentFields"}
    assert apartment["web_relay_id"] == {"type": "integer", "minimum": 0, "maximum": 50,
                                         "default": 0}
    assert apartment["indoor_monitor_relays"]["maxItems"] == 2
    assert apartment["floor"]["anyOf"][-1] == {"type": "null"}
    assert "ResidentEditFields" in schemas
    installer = schemas["InstallerCreate"]["properties"]
    assert installer["email"]["format"] == "email"
    assert installer["password"]["minLength"] == 8
    assert installer["username"]["pattern"].endswith("$")
    assert "required" not in schemas["CommunityEdit"]
    assert set(schemas["Problem"]["required"]) == PROBLEM_KEYS
    assert schemas["LoginResponse"]["properties"]["expires_at"]["format"] == "date-time"


def test_the_document_states_the_rules_the_contracts_check_in_code(base_url: str) -> None:
    """A request made to the document is not refused for a rule it does not state: blank
    names, NUL, time zones, APT numbers, the sort keys of each list (Schemathesis found each)."""
    doc = Client(base_url).get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    name = schemas["CommunityCreate"]["properties"]["name"]
    zone = schemas["CommunityCreate"]["properties"]["time_zone"]
    number = schemas["ApartmentCreate"]["properties"]["number"]
    first_name = schemas["ResidentFields"]["properties"]["first_name"]
    remark = schemas["ApartmentCreate"]["properties"]["remark"]
    for rule, accepted, refused in [
            (name["pattern"], ["Sea View", " x "], ["", "   ", "\t\n", "Sea\x00View"]),
            # white space around a number is stripped, by the server and so by the document
            (number["pattern"], ["101", "1#2", "999999", " 1"], ["", "#1", "1234567", "A1"]),
            (first_name["pattern"], ["Lily"], ["", "  ", "Li\x00ly"]),
            (remark["pattern"], ["", "gate code"], ["gate\x00code"])]:
        pattern = re.compile(rule)
        assert all(pattern.search(text) for text in accepted), rule
        assert not any(pattern.search(text) for text in refused), rule
    assert "Europe/Paris" in zone["enum"] and "UTC" in zone["enum"] and "" not in zone["enum"]
    assert first_name["maxLength"] == 64
    # Each holds in the contract too: what the document refuses, the contract refuses.
    errors = CommunityCreate().validate({"name": "   ", "feature_plan": "basic",
                                         "time_zone": "Mars/Olympus"})
    assert set(errors) == {"name", "time_zone"}
    sorts = {path: next(p for p in ops["get"]["parameters"] if p["name"] == "sort")["schema"]
             for path, ops in doc["paths"].items()
             if "get" in ops and any(p["name"] == "sort" for p in ops["get"]["parameters"])}
    assert sorts["/api/v1/communities"]["enum"] == ["name", "created_at", "-name", "-created_at"]
    assert sorts["/api/v1/communities/{community_id}/residents"]["enum"][:4] == [
        "number", "name", "resident", "created_at"]
    q = next(p for p in doc["paths"]["/api/v1/communities"]["get"]["parameters"]
             if p["name"] == "q")
    assert not re.search(q["schema"]["pattern"], "a\x00")


# --- nothing a user sends yields a 500 ---------------------------------------------------------

WEIRD_TEXT = ["", " ", "\x00", "\ud800", "é", "💥", "#1", "G1", "all", "-10", "129", "null",
              "0" * 7, "a" * 300, "x" * 5000, "<script>", "' OR 1=1 --", "../../etc/passwd",
              str(uuid.uuid4()), "2024-01-01T00:00:00Z", "sequence_call", "landlines"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.randrange(12 if depth < 3 else 9)
    if roll == 0:
        return None
    if roll == 1:
        return rng.choice([True, False])
    if roll == 2:
        return rng.choice([0, 1, -1, 2, 50, 99, 128, 129, -11, 10**20, -(10**30), 2**63])
    if roll == 3:
        return rng.choice([0.5, -1.5, 1e300, -1e-300, 3.0])
    if roll in (4, 5, 6):
        return rng.choice(WEIRD_TEXT)
    if roll in (7, 8):
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(20)))
    if roll == 9:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(["first_name", "city", "x", ""]): _value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def _mutate(rng: random.Random, valid: dict[str, Any], known: list[str]) -> Any:
    body = json.loads(json.dumps(valid))
    for _ in range(rng.randrange(4)):
        action = rng.randrange(4)
        if action == 0 and body:
            body.pop(rng.choice(list(body)))
        elif action == 1:
            body[rng.choice(known)] = _value(rng)
        elif action == 2:
            body[rng.choice(["unknown", "id", "installer_id", "__proto__"])] = _value(rng)
        elif isinstance(body.get("resident"), dict):
            body["resident"][rng.choice(["first_name", "email", "landlines", "x"])] = _value(rng)
    return body


RAW_BODIES = [b"", b"{", b"}", b"[]", b"null", b"0", b'"x"', b"\xff", b"{\"a\":}", b"NaN",
              b'{"name": Infinity}', b"{}" * 3, b"\xef\xbb\xbf{}", b'{"a": 1e99999}',
              b'{"name": "' + b"9" * 5000 + b'"}', b'{"web_relay_id": ' + b"9" * 5000 + b"}"]


def _query(rng: random.Random) -> str:
    names = ["page", "per_page", "sort", "q", "app_status", "building_id", "x", "page"]
    pairs = []
    for _ in range(rng.randrange(4)):
        value = _value(rng)
        pairs.append((rng.choice(names),
                       value if isinstance(value, str) else json.dumps(value)))
    text = urlencode(pairs, errors="surrogatepass")
    return rng.choice([text, text + "&%ff=%fe", text.replace("=", "", 1), "page=%00", text])


def test_garbage_never_yields_a_500(base_url: str, installer: Client,
                                    distributor: Client) -> None:
    rng = random.Random(20240611)
    community_id = new_community(installer, "Fuzz")
    building_id = new_building(installer, community_id)
    apartment_id = new_apartment(installer, building_id)
    ids = {"community_id": community_id, "building_id": building_id,
           "apartment_id": apartment_id, "installer_id": str(uuid.uuid4()),
           "device_id": str(uuid.uuid4()), "credential_id": str(uuid.uuid4()),
           "camera_id": str(uuid.uuid4()), "lock_id": str(uuid.uuid4()),
           "command_id": str(uuid.uuid4()), "account_id": str(uuid.uuid4()),
           "family_member_id": str(uuid.uuid4()),
           "mac": "0C11050B9814"}
    valid = {
        "LoginRequest": {"username": "luna", "password": "installer-pw"},
        "InstallerCreate": {"username": "fz", "password": "long-enough",
                            "email": "f@example.com"},
        "CommunityCreate": {"name": "N", "feature_plan": "premium"},
        "CommunityEdit": {"name": "N2"},
        "BuildingCreate": {"name": "B"},
        "BuildingEdit": {"name": "B2"},
        "ApartmentCreate": apartment_payload("301"),
        "ApartmentEdit": {"name": "x", "resident": {"email": "a@b.co"}},
        "MacRegister": {"mac": "0C11050B9814"},
        "MacImport": {"csv": "0C11050B9814"},
        "DeviceImport": {"devices": "Gate,0,0C11050B9814"},
        "CommandCreate": {"kind": "reboot"},
        "DeviceCreate": {"type": 0, "mac": "0C11050B9814", "name": "Gate"},
        "DeviceEdit": {"name": "Gate"},
        "CredentialCreate": {"kind": "pin", "value": "1234"},
        "CameraCreate": {"name": "C", "rtsp_url": "rtsp://10.0.0.2:554", "username": "u",
                         "password": "p"},
        "CameraEdit": {"name": "C2"},
        "LockCreate": {"brand": "salto", "lock_id": "L1", "name": "L"},
        "LockEdit": {"name": "L2"},
        "SubInstallerCreate": {"username": "fzsub", "email": "f@example.com"},
        "SubInstallerEdit": {"phone": "123"},
        "PasswordChange": {"current_password": "nope", "new_password": "long-enough-1"},
        "PasswordForgotten": {"username": "luna"},
        "PasswordReset": {"token": "x.y", "new_password": "long-enough-1"},
        "PropertyManagerCreate": {"first_name": "P", "last_name": "M", "email": "p@x.org",
                                  "communities": [{"community_id": community_id}]},
        "PropertyManagerEdit": {"first_name": "Q"},
        "FamilyMemberCreate": {"first_name": "K", "last_name": "L", "email": "k@x.org"},
        "FamilyMemberEdit": {"mobile": "123"},
        "LoginVerify": {"challenge": "x.y", "code": "123456"},
        "AccountEdit": {"two_factor": False},
        "InstallerSettings": {"time_zone": "Europe/Paris"},
    }
    failures: list[str] = []
    cases = 0
    routes = routes_of(GatewayService)
    # Deletes last, so the other routes meet live resources too.
    for route in sorted(routes, key=lambda r: r.method == "DELETE"):
        client = distributor if route.roles else installer
        for _ in range(200):
            values = {name: rng.choice([value, value, str(uuid.uuid4())])
                      for name, value in ids.items()}
            path = openapi.openapi_path(route.path)[0].format(**values)
            if route.query is not None or rng.random() < 0.2:
                path += "?" + _query(rng)
            raw: bytes | None = None
            if route.body is not None:
                schema = route.body.__name__
                if rng.random() < 0.15:
                    raw = rng.choice(RAW_BODIES)
                else:
                    known = list(route.body().fields)
                    body = _mutate(rng, valid[schema], known)
                    raw = json.dumps(body).encode("utf-8", "surrogatepass")
            headers = {"X-Request-Id": rng.choice(["ok-1", "bad id", "\u00e9", "x" * 300])}
            response = client.request(route.method, path, raw=raw, headers=headers)
            cases += 1
            if route.method == "POST" and route.name == "logout" and response.status_code == 204:
                client.token = login(base_url, "luna", "installer-pw").token
            if response.status_code >= 500:
                failures.append(f"{route.method} {path} {raw!r:.200} -> {response.text}")
            elif response.status_code >= 400:
                assert_problem(response, response.status_code)
    assert cases == 200 * len(routes)
    assert not failures, "\n".join(failures[:10])

