"""People and access end to end through the gateway, on both ways of running: a sub-installer's
welcome email carries a password nothing else ever showed; the sub-installer works on its
installer's sites as itself; a reset and a delete end its sessions at once; an account changes
its password and logs out everywhere."""

from __future__ import annotations

import email
import email.policy
import re
import uuid
from pathlib import Path
from typing import Any

from bench.cluster import Platform
from tests.e2e.test_portal import new_installer
from tests.support.harness import eventually

PASSWORD_LINE = re.compile(r"^\s*Password:\s*(\S+)\s*$", re.MULTILINE)


def mailed_password(platform: Platform, address: str, nth: int = 1) -> str:
    """The password of the `nth` password email sent to `address`, read from the mail folder
    as the recipient would read it."""

    def found() -> list[str]:
        folder = platform.data_dir / "mail"
        passwords = []
        for path in sorted(folder.glob("*.eml"), key=lambda p: p.stat().st_mtime) \
                if folder.exists() else []:
            message: Any = email.message_from_bytes(Path(path).read_bytes(),
                                                    policy=email.policy.default)
            if message["To"] != address:
                continue
            body = message.get_body(("plain",)).get_content()
            passwords += PASSWORD_LINE.findall(body)
        return passwords if len(passwords) >= nth else []

    return eventually(found)[nth - 1]


def test_a_sub_installer_works_on_its_installer_s_sites_until_it_is_deleted(
        platform: Platform) -> None:
    _, token, installer = new_installer(platform)
    name = f"sub{uuid.uuid4().hex[:8]}"
    address = f"{name}@example.org"
    status, created = platform.call("POST", "/api/v1/sub-installers",
                                    {"username": name, "email": address, "phone": "123"}, token)
    assert status == 201, created
    assert "password" not in created and created["installer_id"] == installer
    status, problem = platform.call("POST", "/api/v1/sub-installers",
                                    {"username": name, "email": address}, token)
    assert status == 409 and list(problem["errors"]) == ["username"]
    status, problem = platform.call("POST", "/api/v1/sub-installers",
                                    {"username": "x y", "email": "nope", "phone": "a"}, token)
    assert status == 422 and set(problem["errors"]) == {"username", "email", "phone"}

    password = mailed_password(platform, address)
    assert len(password) == 12
    status, session = platform.call("POST", "/api/v1/auth/login",
                                    {"username": name, "password": password})
    assert status == 200 and session["role"] == "sub_installer"
    sub = session["token"]

    # The installer's data, as the installer sees it; what it does is its own act.
    status, community = platform.call("POST", "/api/v1/communities",
                                      {"name": "Sub Court", "feature_plan": "premium"}, sub)
    assert status == 201
    status, mine = platform.call("GET", f"/api/v1/communities/{community['id']}", None, token)
    assert status == 200 and mine["name"] == "Sub Court"
    status, building = platform.call(
        "POST", f"/api/v1/communities/{community['id']}/buildings", {"name": "A"}, sub)
    assert status == 201
    status, apartment = platform.call(
        "POST", f"/api/v1/buildings/{building['id']}/apartments",
        {"number": "101", "resident": {"first_name": "Ann", "last_name": "Lee"}}, sub)
    assert status == 201
    status, history = platform.call("GET", f"/api/v1/apartments/{apartment['id']}/history",
                                    None, token)
    assert status == 200 and {h["actor"] for h in history["items"]} == {f"sub_installer:{name}"}
    # Its own account is not its to manage.
    for method, path in (("GET", "/api/v1/sub-installers"),
                         ("POST", f"/api/v1/sub-installers/{created['id']}/reset-password"),
                         ("DELETE", f"/api/v1/sub-installers/{created['id']}")):
        assert platform.call(method, path, None, sub)[0] == 403, path

    status, listed = platform.call("GET", f"/api/v1/sub-installers?q={name[3:]}", None, token)
    assert status == 200 and [i["username"] for i in listed["items"]] == [name]
    status, edited = platform.call("PATCH", f"/api/v1/sub-installers/{created['id']}",
                                   {"phone": "456"}, token)
    assert status == 200 and edited["phone"] == "456" and edited["email"] == address

    # A reset: the old password and every session stop; the new one arrives by email.
    status, _ = platform.call("POST", f"/api/v1/sub-installers/{created['id']}/reset-password",
                              None, token)
    assert status == 204
    assert eventually(lambda: platform.call("GET", "/api/v1/dashboard", None, sub)[0] == 401)
    assert platform.call("POST", "/api/v1/auth/login",
                         {"username": name, "password": password})[0] == 401
    new_password = mailed_password(platform, address, nth=2)
    assert new_password != password
    status, session = platform.call("POST", "/api/v1/auth/login",
                                    {"username": name, "password": new_password})
    assert status == 200
    sub = session["token"]

    status, _ = platform.call("DELETE", f"/api/v1/sub-installers/{created['id']}", None, token)
    assert status == 204
    assert eventually(lambda: platform.call("GET", "/api/v1/dashboard", None, sub)[0] == 401)
    assert platform.call("POST", "/api/v1/auth/login",
                         {"username": name, "password": new_password})[0] == 401
    assert platform.call("GET", f"/api/v1/sub-installers/{created['id']}", None,
                         token)[0] == 404
    # The community the sub-installer made stays the installer's.
    assert platform.call("GET", f"/api/v1/communities/{community['id']}", None,
                         token)[0] == 200


def test_an_account_changes_its_password_and_logs_out_everywhere(platform: Platform) -> None:
    name, token, installer = new_installer(platform)
    other = platform.call("POST", "/api/v1/auth/login",
                          {"username": name, "password": "installer-pw-1"})[1]["token"]
    status, me = platform.call("GET", "/api/v1/account", None, token)
    assert status == 200 and (me["id"], me["role"], me["installer_id"]) == (
        installer, "installer", installer)
    status, problem = platform.call("POST", "/api/v1/account/password",
                                    {"current_password": "wrong", "new_password": "new-pw-123"},
                                    token)
    assert status == 422 and list(problem["errors"]) == ["current_password"]
    status, _ = platform.call("POST", "/api/v1/account/password",
                              {"current_password": "installer-pw-1",
                               "new_password": "new-pw-123"}, token)
    assert status == 204
    assert platform.call("GET", "/api/v1/dashboard", None, token)[0] == 200
    assert eventually(lambda: platform.call("GET", "/api/v1/dashboard", None, other)[0] == 401)
    assert platform.call("POST", "/api/v1/auth/login",
                         {"username": name, "password": "installer-pw-1"})[0] == 401
    status, session = platform.call("POST", "/api/v1/auth/login",
                                    {"username": name, "password": "new-pw-123"})
    assert status == 200
    status, _ = platform.call("POST", "/api/v1/auth/logout-everywhere", None, token)
    assert status == 204
    for ended in (token, session["token"]):
        assert eventually(lambda ended=ended: platform.call("GET", "/api/v1/dashboard", None,
                                                            ended)[0] == 401)


def test_a_forgotten_password_is_reset_with_the_emailed_link(platform: Platform) -> None:
    name, token, _ = new_installer(platform)
    for username in (name, f"ghost{uuid.uuid4().hex[:6]}"):  # answered alike
        status, body = platform.call("POST", "/api/v1/auth/forgot-password",
                                     {"username": username})
        assert (status, body) == (202, None)

    def link() -> str:
        folder = platform.data_dir / "mail"
        for path in folder.glob("*.eml") if folder.exists() else []:
            message: Any = email.message_from_bytes(path.read_bytes(),
                                                    policy=email.policy.default)
            if message["To"] == f"{name}@example.org" and "reset" in message["Subject"].lower():
                text = message.get_body(("plain",)).get_content()
                return re.search(r"token=(\S+)", text).group(1)  # type: ignore[union-attr]
        return ""

    reset_token = eventually(link)
    status, problem = platform.call("POST", "/api/v1/auth/reset-password",
                                    {"token": reset_token + "x", "new_password": "reset-pw-123"})
    assert status == 422 and list(problem["errors"]) == ["token"]
    status, _ = platform.call("POST", "/api/v1/auth/reset-password",
                              {"token": reset_token, "new_password": "reset-pw-123"})
    assert status == 204
    assert eventually(lambda: platform.call("GET", "/api/v1/dashboard", None, token)[0] == 401)
    assert platform.call("POST", "/api/v1/auth/login",
                         {"username": name, "password": "reset-pw-123"})[0] == 200
    assert platform.call("POST", "/api/v1/auth/reset-password",
                         {"token": reset_token, "new_password": "again-pw-123"})[0] == 422


def a_site(platform: Platform, token: str, name: str) -> tuple[str, str, str]:
    status, community = platform.call("POST", "/api/v1/communities",
                                      {"name": name, "feature_plan": "premium"}, token)
    assert status == 201, community
    status, building = platform.call(
        "POST", f"/api/v1/communities/{community['id']}/buildings", {"name": "A"}, token)
    assert status == 201
    status, apartment = platform.call(
        "POST", f"/api/v1/buildings/{building['id']}/apartments",
        {"number": "101", "resident": {"first_name": "Ann", "last_name": "Lee",
                                       "email": f"ann.{uuid.uuid4().hex[:6]}@example.org"}},
        token)
    assert status == 201
    return community["id"], building["id"], apartment["id"]


def test_a_property_manager_sees_only_its_communities_and_what_its_permissions_allow(
        platform: Platform) -> None:
    _, token, installer = new_installer(platform)
    _, other_token, _ = new_installer(platform)
    seaside, building, apartment = a_site(platform, token, "Seaside")
    hillside, hill_building, hill_apartment = a_site(platform, token, "Hillside")
    foreign, _, _ = a_site(platform, other_token, "Foreign")

    address = f"pm.{uuid.uuid4().hex[:8]}@example.org"
    body: dict[str, Any] = {"first_name": "Pat", "last_name": "Lee", "email": address,
                            "communities": [{"community_id": seaside}]}
    status, problem = platform.call("POST", "/api/v1/property-managers",
                                    {**body, "communities": [{"community_id": foreign}]}, token)
    assert status == 422 and list(problem["errors"]) == ["communities"]
    status, manager = platform.call("POST", "/api/v1/property-managers", body, token)
    assert status == 201, manager
    status, session = platform.call("POST", "/api/v1/auth/login",
                                    {"username": address,
                                     "password": mailed_password(platform, address)})
    assert status == 200 and session["role"] == "property_manager"
    pm = session["token"]

    status, listed = platform.call("GET", "/api/v1/communities", None, pm)
    assert status == 200 and [c["id"] for c in listed["items"]] == [seaside]
    status, dashboard = platform.call("GET", "/api/v1/dashboard", None, pm)
    assert status == 200 and dashboard["communities"] == 1
    for path in (f"/api/v1/communities/{seaside}", f"/api/v1/communities/{seaside}/residents",
                 f"/api/v1/buildings/{building}", f"/api/v1/apartments/{apartment}",
                 f"/api/v1/apartments/{apartment}/devices",
                 f"/api/v1/apartments/{apartment}/credentials"):
        assert platform.call("GET", path, None, pm)[0] == 200, path
    # Another community of its installer's, or another installer's: not there at all.
    for path in (f"/api/v1/communities/{hillside}", f"/api/v1/buildings/{hill_building}",
                 f"/api/v1/apartments/{hill_apartment}",
                 f"/api/v1/apartments/{hill_apartment}/devices",
                 f"/api/v1/communities/{hillside}/door-logs",
                 f"/api/v1/communities/{foreign}", f"/api/v1/communities/{foreign}/residents"):
        assert platform.call("GET", path, None, pm)[0] == 404, path
    # Without Log Access Control, no logs; without Delete Account Permission, no reset.
    assert platform.call("GET", f"/api/v1/communities/{seaside}/door-logs", None, pm)[0] == 403
    assert platform.call("POST", f"/api/v1/apartments/{apartment}/reset", None, pm)[0] == 403
    # Building and running the sites stays the installer's.
    for method, path, payload in (
            ("POST", "/api/v1/communities", {"name": "Mine", "feature_plan": "premium"}),
            ("DELETE", f"/api/v1/communities/{seaside}", None),
            ("POST", f"/api/v1/communities/{seaside}/buildings", {"name": "B"}),
            ("GET", "/api/v1/mac-library", None),
            ("GET", "/api/v1/property-managers", None)):
        assert platform.call(method, path, payload, pm)[0] == 403, path
    # What it may do: keep the residents.
    status, edited = platform.call("PATCH", f"/api/v1/apartments/{apartment}",
                                   {"resident": {"first_name": "Anna"}}, pm)
    assert status == 200 and edited["resident"]["first_name"] == "Anna"

    # Given both permissions, the logs and a reset open up for its next requests.
    status, _ = platform.call("PATCH", f"/api/v1/property-managers/{manager['id']}",
                              {"communities": [{"community_id": seaside,
                                                "log_access_control": True,
                                                "delete_account": True}]}, token)
    assert status == 200
    assert eventually(lambda: platform.call(
        "GET", f"/api/v1/communities/{seaside}/door-logs", None, pm)[0] == 200)
    assert platform.call("POST", f"/api/v1/apartments/{apartment}/reset", None, pm)[0] == 200
    status, managers = platform.call("GET", f"/api/v1/property-managers?community_id={seaside}",
                                     None, token)
    assert status == 200 and [m["email"] for m in managers["items"]] == [address]
    assert manager["installer_id"] == installer

    def site_list() -> dict[str, tuple[int, list[str]]]:
        _, listed = platform.call("GET", "/api/v1/communities?sort=name", None, token)
        return {c["name"]: (c["property_manager_count"], c["property_managers"])
                for c in listed["items"]}

    # The site list shows each community's property managers and their count.
    assert eventually(lambda: site_list() == {"Hillside": (0, []),
                                              "Seaside": (1, ["Pat Lee"])})
    status, _ = platform.call("PATCH", f"/api/v1/property-managers/{manager['id']}",
                              {"last_name": "Li", "communities": [
                                  {"community_id": seaside}, {"community_id": hillside}]},
                              token)
    assert status == 200
    assert eventually(lambda: site_list() == {"Hillside": (1, ["Pat Li"]),
                                              "Seaside": (1, ["Pat Li"])})
    status, one = platform.call("GET", f"/api/v1/communities/{hillside}", None, token)
    assert one["property_managers"] == ["Pat Li"] and one["property_manager_count"] == 1

    status, _ = platform.call("DELETE", f"/api/v1/property-managers/{manager['id']}", None,
                              token)
    assert status == 204
    assert eventually(lambda: platform.call("GET", "/api/v1/dashboard", None, pm)[0] == 401)
    assert eventually(lambda: site_list() == {"Hillside": (0, []), "Seaside": (0, [])})


def test_family_members_three_free_then_402_until_reset(platform: Platform) -> None:
    _, token, _ = new_installer(platform)
    community, _, apartment = a_site(platform, token, "Family Court")

    def add(n: int) -> tuple[int, Any]:
        return platform.call("POST", f"/api/v1/apartments/{apartment}/family-members",
                             {"first_name": f"Kid{n}", "last_name": "Lee",
                              "email": f"kid{n}.{uuid.uuid4().hex[:4]}@example.org"}, token)

    # The master account comes from topology's ResidentAdded a moment later.
    first = eventually(lambda: (lambda answer: answer[1] if answer[0] == 201 else None)(add(0)))
    assert first["sip"].startswith("58")
    assert [add(n)[0] for n in (1, 2)] == [201, 201]
    status, problem = add(3)
    assert status == 402 and "Additional App" in problem["detail"]
    status, problem = platform.call("PATCH", f"/api/v1/family-members/{first['id']}",
                                    {"email": "other@example.org"}, token)
    assert status == 422 and list(problem["errors"]) == ["email"]
    assert platform.call("DELETE", f"/api/v1/family-members/{first['id']}", None, token)[0] == 204
    assert add(4)[0] == 402  # a deleted one still counts
    assert eventually(lambda: platform.call(
        "GET", f"/api/v1/communities/{community}", None, token)[1]["resident_count"] == 3)
    assert platform.call("POST", f"/api/v1/apartments/{apartment}/reset", None, token)[0] == 200
    assert eventually(lambda: add(5)[0] == 201)  # free again after the reset


def test_two_factor_login_takes_the_emailed_code(platform: Platform) -> None:
    name, token, _ = new_installer(platform)
    status, me = platform.call("PATCH", "/api/v1/account", {"two_factor": True}, token)
    assert status == 200 and me["two_factor"] is True
    status, answer = platform.call("POST", "/api/v1/auth/login",
                                   {"username": name, "password": "installer-pw-1"})
    assert status == 200 and answer["token"] is None
    challenge = answer["two_factor"]["challenge"]

    def code() -> str:
        folder = platform.data_dir / "mail"
        for path in folder.glob("*.eml") if folder.exists() else []:
            message: Any = email.message_from_bytes(path.read_bytes(),
                                                    policy=email.policy.default)
            if message["To"] == f"{name}@example.org" and "code" in message["Subject"]:
                text = message.get_body(("plain",)).get_content()
                return re.search(r"^\s*(\d{6})\s*$", text, re.MULTILINE).group(1)  # type: ignore[union-attr]
        return ""

    emailed = eventually(code)
    wrong = f"{(int(emailed) + 1) % 1_000_000:06d}"
    status, _ = platform.call("POST", "/api/v1/auth/login/verify",
                              {"challenge": challenge, "code": wrong})
    assert status == 401
    status, session = platform.call("POST", "/api/v1/auth/login/verify",
                                    {"challenge": challenge, "code": emailed})
    assert status == 200 and session["token"]
    assert platform.call("GET", "/api/v1/dashboard", None, session["token"])[0] == 200


def test_after_a_reset_no_route_tells_the_previous_tenant_s_contact(platform: Platform) -> None:
    _, token, _ = new_installer(platform)
    community, _, apartment = a_site(platform, token, "Erasure Court")
    status, _ = platform.call("PATCH", f"/api/v1/apartments/{apartment}",
                              {"resident": {"mobile": "5550142", "landlines": ["5550143"]}},
                              token)
    assert status == 200
    status, before = platform.call("GET", f"/api/v1/apartments/{apartment}", None, token)
    address = before["resident"]["email"]
    assert address and before["resident"]["mobile"] == "5550142"

    assert platform.call("POST", f"/api/v1/apartments/{apartment}/reset", None, token)[0] == 200

    def told() -> str:
        answers = [platform.call("GET", path, None, token)[1] for path in (
            f"/api/v1/apartments/{apartment}",
            f"/api/v1/apartments/{apartment}/history?per_page=100",
            f"/api/v1/communities/{community}/residents")]
        return str(answers)

    assert eventually(lambda: not any(s in told() for s in (address, "5550142", "5550143")))
    status, after = platform.call("GET", f"/api/v1/apartments/{apartment}", None, token)
    assert (after["resident"]["first_name"], after["resident"]["email"]) == ("Ann", None)
    history = platform.call("GET", f"/api/v1/apartments/{apartment}/history?per_page=100",
                            None, token)[1]["items"]
    added = next(h for h in history if h["type"] == "ResidentAdded")
    assert added["actor"].startswith("installer:") and added["data"]["email"] is None


def test_an_installer_s_settings(platform: Platform) -> None:
    _, token, _ = new_installer(platform)
    status, settings = platform.call("GET", "/api/v1/account/settings", None, token)
    assert status == 200 and settings["allow_distributor_access"] is False
    status, changed = platform.call("PATCH", "/api/v1/account/settings", {
        "time_zone": "Asia/Shanghai", "customer_service": {"phone": "5550100"},
        "allow_distributor_access": True}, token)
    assert status == 200 and (changed["time_zone"], changed["customer_service"]["phone"]) == (
        "Asia/Shanghai", "5550100")
    status, problem = platform.call("PATCH", "/api/v1/account/settings",
                                    {"time_zone": "Mars/Base"}, token)
    assert status == 422 and list(problem["errors"]) == ["time_zone"]
    assert platform.call("GET", "/api/v1/account/settings", None,
                         platform.distributor_token())[0] == 403
