"""`make run` as a newcomer sees it: the embedded platform's demo installer has a site whose door
phones are online, with a firmware version and a door log, without anything else running."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.cluster import Platform
from tests.support.harness import eventually, free_port


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    running = Platform("", "", tmp_path_factory.mktemp("demo") / "var", free_port(),
                       embedded=True,
                       extra_env={"CONCIERGE_HEARTBEAT_SECONDS": "1"})
    running.start()
    yield running
    running.stop()


def demo_session(platform: Platform) -> str:
    def login() -> Any:
        status, session = platform.call("POST", "/api/v1/auth/login",
                                        {"username": "demo-installer",
                                         "password": "demo-installer-pw"})
        return session["token"] if status == 200 else None

    return str(eventually(login, timeout=60))


def test_the_demo_site_s_door_phones_come_online_and_open_doors(platform: Platform) -> None:
    token = demo_session(platform)

    def site() -> Any:
        status, page = platform.call("GET", "/api/v1/communities?q=Demo%20Court", token=token)
        return page["items"][0]["id"] if status == 200 and page["items"] else None

    community = eventually(site, timeout=60)

    def online() -> list[dict[str, Any]] | None:
        status, page = platform.call("GET", f"/api/v1/communities/{community}/devices",
                                     token=token)
        items = page["items"] if status == 200 else []
        ready = len(items) == 3 and all(item["status"] == "online" for item in items)
        return items if ready else None

    devices = eventually(online, timeout=60)
    assert {d["name"] for d in devices} == {"Gate", "Lobby", "Back door"}
    assert all(d["firmware"] and d["ip"] and d["last_connection"] for d in devices)

    def doors() -> int:
        status, page = platform.call("GET", f"/api/v1/communities/{community}/door-logs",
                                     token=token)
        return int(page["total"]) if status == 200 else 0

    eventually(lambda: doors() >= 1, timeout=60)


def test_the_demo_door_phones_answer_a_reboot(platform: Platform) -> None:
    """In the embedded mode too, a command goes through notify's push to the device, whose
    acknowledgement moves it to succeeded."""
    token = demo_session(platform)
    community = eventually(lambda: (lambda r: r[1]["items"][0]["id"] if r[0] == 200 and r[1][
        "items"] else None)(platform.call("GET", "/api/v1/communities?q=Demo%20Court",
                                          token=token)), timeout=60)
    status, page = platform.call("GET", f"/api/v1/communities/{community}/devices?q=Gate",
                                 token=token)
    assert status == 200 and page["items"], page
    device = page["items"][0]["id"]
    status, queued = platform.call("POST", f"/api/v1/devices/{device}/commands",
                                   {"kind": "reboot"}, token)
    assert status == 201, queued

    def done() -> Any:
        status, found = platform.call("GET", f"/api/v1/commands/{queued['id']}", token=token)
        return found if status == 200 and found["state"] == "succeeded" else None

    found = eventually(done, timeout=60)
    assert [step["state"] for step in found["history"]][-1] == "succeeded"
