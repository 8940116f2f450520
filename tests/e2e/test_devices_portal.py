"""The installer's device path through the gateway, as the web portal walks it, on both ways of
running (embedded, and one process per service on RabbitMQ and PostgreSQL): a distributor
registers MACs, the installer installs a door phone in a building, adds a relay, searches,
edits and removes it, and the MAC is free again."""

from __future__ import annotations

import uuid

from bench.cluster import Platform
from tests.support.harness import eventually


def an_installer(platform: Platform) -> tuple[str, str]:
    """A new installer's id and session token."""
    name = f"inst{uuid.uuid4().hex[:8]}"
    status, created = platform.call("POST", "/api/v1/installers",
                                    {"username": name, "password": "installer-pw-1",
                                     "email": f"{name}@example.org"},
                                    platform.distributor_token())
    assert status == 201, created
    status, session = platform.call("POST", "/api/v1/auth/login",
                                    {"username": name, "password": "installer-pw-1"})
    assert status == 200, session
    return created["id"], session["token"]


def test_an_installer_installs_edits_and_removes_a_door_phone(platform: Platform) -> None:
    installer, token = an_installer(platform)
    distributor = platform.distributor_token()
    library = f"/api/v1/installers/{installer}/mac-library"

    status, registered = platform.call("POST", library, {"mac": "0c:11:05:0b:98:14"},
                                       distributor)
    assert status == 201, registered
    assert registered["mac"] == "0C11050B9814"
    status, again = platform.call("POST", library, {"mac": "0C-11-05-0B-98-14"}, distributor)
    assert status == 409 and "mac" in again["errors"]
    status, report = platform.call("POST", f"{library}/import", {
        "csv": "MAC\n0C11050B9815\n0C11050B9816\nnonsense\n0c11050b9815\n"}, distributor)
    assert status == 200, report
    assert [o["outcome"] for o in report["outcomes"]] == [
        "added", "added", "malformed", "duplicate"]
    status, _ = platform.call("POST", library, {"mac": "0C11050B9817"}, token)
    assert status == 403  # registering is the distributor's
    status, _ = platform.call("GET", "/api/v1/mac-library", token=distributor)
    assert status == 403

    status, macs = platform.call("GET", "/api/v1/mac-library?sort=mac", token=token)
    assert status == 200 and macs["total"] == 3
    assert [m["mac"] for m in macs["items"]] == ["0C11050B9814", "0C11050B9815",
                                                 "0C11050B9816"]

    community, building = platform.community_with_building(token, "Harbour View")
    status, bad = platform.call("POST", f"/api/v1/buildings/{building}/devices",
                                {"type": 4, "mac": "0C11050B9899", "name": "",
                                 "internet_access": False}, token)
    assert status == 422 and {"type", "name"} <= set(bad["errors"])
    status, refused = platform.call("POST", f"/api/v1/buildings/{building}/devices",
                                    {"type": 0, "mac": "0C11050B9899", "name": "Lobby"}, token)
    assert status == 422 and list(refused["errors"]) == ["mac"]  # not in the library

    status, added = platform.call("POST", f"/api/v1/buildings/{building}/devices",
                                  {"type": 0, "mac": "0C11050B9814", "name": "Lobby door"},
                                  token)
    assert status == 201, added
    device = f"/api/v1/devices/{added['id']}"
    status, info = platform.call("GET", device, token=token)
    assert status == 200
    assert (info["mac"], info["sip"], info["type_name"]) == (
        "0C11050B9814", added["sip"], "multi_tenant_door_phone")
    assert [r["name"] for r in info["relays"]] == ["Relay1"]

    relays = [*info["relays"], {"name": "Garage", "dtmf": "2", "access_methods": ["pin"]}]
    status, edited = platform.call("PATCH", device, {"relays": relays, "name": "Lobby"}, token)
    assert status == 200, edited
    assert [r["name"] for r in edited["relays"]] == ["Relay1", "Garage"]

    def listed(query: str) -> list[str]:
        status, found = platform.call("GET", f"/api/v1/communities/{community}/devices{query}",
                                      token=token)
        assert status == 200, found
        return [d["name"] for d in found["items"]]

    eventually(lambda: listed("?q=lobby") == ["Lobby"])
    assert listed(f"?q={added['sip']}") == ["Lobby"]
    assert listed("?q=0c11050b9814") == ["Lobby"]
    eventually(lambda: platform.call("GET", f"/api/v1/communities/{community}",
                                     token=token)[1]["device_count"] == 1)

    status, kept = platform.call("DELETE", "/api/v1/mac-library/0C11050B9814", token=token)
    assert status == 409 and "mac" in kept["errors"]  # a device uses it
    status, _ = platform.call("DELETE", device, token=token)
    assert status == 204
    status, _ = platform.call("GET", device, token=token)
    assert status == 404
    status, _ = platform.call("DELETE", "/api/v1/mac-library/0C11050B9814", token=token)
    assert status == 204
    eventually(lambda: listed("") == [])


def test_another_installers_devices_and_macs_are_not_found(platform: Platform) -> None:
    installer, token = an_installer(platform)
    _, stranger = an_installer(platform)
    distributor = platform.distributor_token()
    platform.call("POST", f"/api/v1/installers/{installer}/mac-library",
                  {"mac": "0C11050C0001"}, distributor)
    community, building = platform.community_with_building(token, "Quay")
    status, added = platform.call("POST", f"/api/v1/communities/{community}/devices",
                                  {"type": 0, "mac": "0C11050C0001", "name": "Gate"}, token)
    assert status == 201, added
    for method, path, body in (
            ("GET", f"/api/v1/devices/{added['id']}", None),
            ("PATCH", f"/api/v1/devices/{added['id']}", {"name": "x"}),
            ("DELETE", f"/api/v1/devices/{added['id']}", None),
            ("GET", f"/api/v1/communities/{community}/devices", None),
            ("GET", f"/api/v1/buildings/{building}/devices", None),
            ("POST", f"/api/v1/buildings/{building}/devices",
             {"type": 0, "mac": "0C11050C0001", "name": "Gate"}),
            ("DELETE", "/api/v1/mac-library/0C11050C0001", None)):
        status, problem = platform.call(method, path, body, stranger)
        assert status == 404, (method, path, problem)
    status, macs = platform.call("GET", "/api/v1/mac-library", token=stranger)
    assert status == 200 and macs["total"] == 0


def test_a_community_with_contents_is_deleted_only_when_confirmed(platform: Platform) -> None:
    installer, token = an_installer(platform)
    platform.call("POST", f"/api/v1/installers/{installer}/mac-library/import",
                  {"csv": "0C11050D0001\n0C11050D0002"}, platform.distributor_token())
    community, building = platform.community_with_building(token, "Old Mill")
    status, apartment = platform.call("POST", f"/api/v1/buildings/{building}/apartments", {
        "number": "101", "resident": {"first_name": "Ann", "last_name": "Lee"}}, token)
    assert status == 201, apartment
    for area, area_id, kind, mac in (("apartments", apartment["id"], 2, "0C11050D0001"),
                                     ("communities", community, 0, "0C11050D0002")):
        status, added = platform.call("POST", f"/api/v1/{area}/{area_id}/devices",
                                      {"type": kind, "mac": mac, "name": "D"}, token)
        assert status == 201, added

    status, kept = platform.call("DELETE", f"/api/v1/communities/{community}", token=token)
    assert status == 409 and list(kept["errors"]) == ["cascade"]
    assert "1 building(s) and 1 APT(s)" in kept["detail"]
    status, bad = platform.call("DELETE", f"/api/v1/communities/{community}?cascade=yes",
                                token=token)
    assert status == 422 and list(bad["errors"]) == ["cascade"]
    status, _ = platform.call("DELETE", f"/api/v1/communities/{community}?cascade=true",
                              token=token)
    assert status == 204
    status, _ = platform.call("GET", f"/api/v1/apartments/{apartment['id']}", token=token)
    assert status == 404

    def free() -> bool:
        _, macs = platform.call("GET", "/api/v1/mac-library?in_use=false", token=token)
        return macs["total"] == 2

    eventually(free)  # devices removed both devices and freed their MACs


def test_a_camera_linked_to_a_door_phone_never_answers_its_password(platform: Platform) -> None:
    installer, token = an_installer(platform)
    platform.call("POST", f"/api/v1/installers/{installer}/mac-library",
                  {"mac": "0C11050E0001"}, platform.distributor_token())
    _, building = platform.community_with_building(token, "Camera Court")
    status, door = platform.call("POST", f"/api/v1/buildings/{building}/devices",
                                 {"type": 0, "mac": "0C11050E0001", "name": "Door"}, token)
    assert status == 201, door
    status, bad = platform.call("POST", f"/api/v1/buildings/{building}/cameras", {
        "name": "Cam", "rtsp_url": "http://cam", "username": "u", "password": "a@b"}, token)
    assert status == 422 and {"rtsp_url", "password"} <= set(bad["errors"])
    status, camera = platform.call("POST", f"/api/v1/buildings/{building}/cameras", {
        "name": "Cam", "rtsp_url": "rtsp://10.0.0.7:554/live", "username": "admin",
        "password": "hunter2", "linked_device_id": door["id"]}, token)
    assert status == 201, camera
    status, got = platform.call("GET", f"/api/v1/cameras/{camera['id']}", token=token)
    assert status == 200 and got["linked_device_id"] == door["id"]
    assert got["password_set"] is True and "hunter2" not in str(got)
    eventually(lambda: platform.call("GET", f"/api/v1/buildings/{building}/cameras",
                                     token=token)[1]["total"] == 1)
