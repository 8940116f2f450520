"""End to end through the gateway, as the web portal uses it, on both ways of running:
the embedded default (`concierge up`, one process) and one process per service on RabbitMQ and
PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from bench.cluster import Platform
from tests.support.harness import eventually


def mails(platform: Platform) -> list[Path]:
    folder = platform.data_dir / "mail"
    return sorted(folder.glob("*.eml")) if folder.exists() else []


def new_installer(platform: Platform) -> tuple[str, str, str]:
    name = f"inst{uuid.uuid4().hex[:8]}"
    status, created = platform.call("POST", "/api/v1/installers",
                                    {"username": name, "password": "installer-pw-1",
                                     "email": f"{name}@example.org"},
                                    platform.distributor_token())
    assert status == 201, created
    status, session = platform.call("POST", "/api/v1/auth/login",
                                    {"username": name, "password": "installer-pw-1"})
    assert status == 200, session
    return name, session["token"], created["id"]


def test_an_installer_sets_up_a_community_and_a_resident_gets_an_account(
        platform: Platform) -> None:
    name, token, installer = new_installer(platform)
    status, bad = platform.call("POST", "/api/v1/communities",
                                {"name": "", "feature_plan": "gold", "time_zone": "Mars/Base"},
                                token)
    assert status == 422
    assert {"name", "feature_plan", "time_zone"} <= set(bad["errors"])

    status, community = platform.call("POST", "/api/v1/communities",
                                      {"name": "Sunrise Court", "feature_plan": "basic",
                                       "time_zone": "Europe/Paris"}, token)
    assert status == 201
    status, building = platform.call(
        "POST", f"/api/v1/communities/{community['id']}/buildings", {"name": "A"}, token)
    assert status == 201
    apartment_body: dict[str, Any] = {
        "number": "101", "floor": 1, "name": "A101",
        "resident": {"first_name": "Ann", "last_name": "Lee", "email": "ann@example.org"}}
    status, problem = platform.call("POST", f"/api/v1/buildings/{building['id']}/apartments",
                                    apartment_body, token)
    assert status == 422  # the Basic plan needs an indoor monitor in every apartment
    assert "indoor_monitor_mac" in problem["errors"]
    apartment_body["indoor_monitor_mac"] = "0c:11:05:aa:bb:cc"
    status, problem = platform.call("POST", f"/api/v1/buildings/{building['id']}/apartments",
                                    apartment_body, token)
    assert status == 422  # a MAC not in the installer's MAC library
    assert list(problem["errors"]) == ["indoor_monitor_mac"]
    status, _ = platform.call("POST", f"/api/v1/installers/{installer}/mac-library",
                              {"mac": "0C1105AABBCC"}, platform.distributor_token())
    assert status == 201
    status, apartment = platform.call(
        "POST", f"/api/v1/buildings/{building['id']}/apartments", apartment_body, token)
    assert status == 201
    status, _ = platform.call("POST", f"/api/v1/buildings/{building['id']}/apartments",
                              apartment_body, token)
    assert status == 409  # the APT number is taken in this building

    def monitor() -> list[dict[str, Any]]:  # the Basic plan's indoor monitor, a real device
        _, page = platform.call("GET", f"/api/v1/apartments/{apartment['id']}/devices", None,
                                token)
        return page["items"]

    [installed] = eventually(monitor)
    assert (installed["mac"], installed["type_name"]) == ("0C1105AABBCC", "indoor_monitor")

    def resident_has_account() -> list[dict[str, Any]]:
        _, page = platform.call("GET", f"/api/v1/communities/{community['id']}/residents",
                                None, token)
        return [i for i in page["items"] if i["master_account_id"]]

    [resident] = eventually(resident_has_account)
    assert resident["app_status"] == "unregistered"
    assert resident["email"] == "ann@example.org"
    eventually(lambda: len(mails(platform)) >= 1)
    assert any(b"ann@example.org" in m.read_bytes() for m in mails(platform))

    status, history = platform.call("GET", f"/api/v1/apartments/{apartment['id']}/history",
                                    None, token)
    assert status == 200
    assert [h["type"] for h in history["items"]][:2] == ["ApartmentAdded", "ResidentAdded"]
    assert {h["actor"] for h in history["items"]} == {f"installer:{name}"}

    sent_before = len(mails(platform))
    status, reset = platform.call("POST", f"/api/v1/apartments/{apartment['id']}/reset",
                                  None, token)
    assert status == 200
    assert reset["resident"]["email"] is None
    assert reset["indoor_monitor_mac"] == "0C1105AABBCC"  # the apartment's settings are kept

    def history() -> list[str]:
        _, page = platform.call("GET", f"/api/v1/apartments/{apartment['id']}/history", None,
                                token)
        return [item["type"] for item in page["items"]]

    # Devices wipes the APT's credentials for the reset, and the APT's history says so next.
    assert eventually(lambda: history()[-2:] == ["ApartmentReset", "ApartmentCredentialsWiped"])
    status, _ = platform.call("DELETE", f"/api/v1/buildings/{building['id']}", None, token)
    assert status == 409  # it still holds an apartment
    assert len(mails(platform)) == sent_before  # nobody is emailed about a reset

    status, dashboard = platform.call("GET", "/api/v1/dashboard", None, token)
    assert status == 200
    assert dashboard["communities"] == 1 and dashboard["apartments"] == 1


def test_installers_never_see_each_others_data(platform: Platform) -> None:
    _, owner, _ = new_installer(platform)
    _, other, _ = new_installer(platform)
    status, community = platform.call("POST", "/api/v1/communities",
                                      {"name": "Private", "feature_plan": "premium",
                                       "time_zone": "UTC"}, owner)
    assert status == 201
    for method, path in [("GET", f"/api/v1/communities/{community['id']}"),
                         ("PATCH", f"/api/v1/communities/{community['id']}"),
                         ("DELETE", f"/api/v1/communities/{community['id']}"),
                         ("GET", f"/api/v1/communities/{community['id']}/residents")]:
        status, problem = platform.call(method, path, {} if method == "PATCH" else None, other)
        assert status == 404, (method, path, problem)
    _, listing = platform.call("GET", "/api/v1/communities", None, other)
    assert listing["total"] == 0


def test_bad_requests_get_problem_details_never_a_500(platform: Platform) -> None:
    status, problem = platform.call("GET", "/api/v1/communities")
    assert status == 401 and problem["status"] == 401
    _, token, _ = new_installer(platform)
    status, problem = platform.call("GET", "/api/v1/communities?page=0&per_page=1000", None,
                                    token)
    assert status == 422 and {"page", "per_page"} <= set(problem["errors"])
    status, problem = platform.call("GET", f"/api/v1/apartments/{uuid.uuid4()}", None, token)
    assert status == 404
    status, spec = platform.call("GET", "/openapi.json")
    assert status == 200 and "/api/v1/buildings/{building_id}/apartments" in spec["paths"]
