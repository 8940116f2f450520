"""Devices on the real broker and database, as production runs it: two replicas of devices, an
operator replaying topology's and devices' streams, and a replica killed mid-stream.

The platform is one `concierge run` process per service (two for devices) behind the gateway.
Every test ends on the final state: one device per MAC, one indoor monitor per Basic-plan APT,
each MAC's use recorded once, and topology's device counts equal to the devices that exist.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.cluster import ROOT, Platform
from tests.support.harness import eventually, free_port

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

SERVICES = ("accounts", "topology", "devices", "devices", "gateway")


@pytest.fixture(scope="module")
def replicated(rabbit_uri: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Platform]:
    data_dir: Path = tmp_path_factory.mktemp("devices-replicas") / "var"
    platform = Platform(rabbit_uri, postgres_url, data_dir, free_port(), services=SERVICES)
    platform.start()
    yield platform
    platform.stop()


def an_installer(platform: Platform, macs: list[str]) -> tuple[str, str]:
    """A new installer with `macs` in its library: its id and session token."""
    return platform.installer_with_macs(macs)


def macs_of(prefix: int, count: int) -> list[str]:
    return [f"0D{prefix:02X}{n:08X}" for n in range(count)]


def in_parallel(count: int, work: Callable[[int], Iterator[Any]]) -> list[Any]:
    results: list[Any] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        for outcome in work(k):
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def operator(platform: Platform, *args: str) -> str:
    """A `concierge` command run by an operator against this platform's deployment."""
    done = subprocess.run([platform._concierge(), *args], env=platform.env, cwd=ROOT,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def devices_events(platform: Platform, kind: str) -> list[dict[str, Any]]:
    lines = operator(platform, "events", "devices").splitlines()
    return [event for event in map(json.loads, lines) if event["type"] == kind]


def device_count(platform: Platform, token: str, community: str) -> int:
    status, found = platform.call("GET", f"/api/v1/communities/{community}", token=token)
    assert status == 200, found
    return int(found["device_count"])


def listed(platform: Platform, token: str, area: str) -> list[dict[str, Any]]:
    status, page = platform.call("GET", f"/api/v1/{area}/devices?per_page=100", token=token)
    assert status == 200, page
    return page["items"]


def test_concurrent_adds_on_two_replicas_each_make_one_device(replicated: Platform) -> None:
    """Four clients add 60 door phones to one building through two devices replicas: all
    succeed with distinct SIP numbers, and topology counts 60."""
    macs = macs_of(1, 60)
    _, token = an_installer(replicated, macs)
    community, building = replicated.community_with_building(token, "Replica Towers")

    def client(k: int) -> Iterator[tuple[int, str | None]]:
        for mac in macs[k::4]:
            status, body = replicated.call("POST", f"/api/v1/buildings/{building}/devices",
                                           {"type": 0, "mac": mac, "name": f"Door {mac[-4:]}"},
                                           token)
            yield status, (body or {}).get("sip")

    results = in_parallel(4, client)
    assert Counter(status for status, _ in results) == {201: 60}, Counter(results)
    assert len({sip for _, sip in results}) == 60
    assert sorted(d["mac"] for d in listed(replicated, token, f"buildings/{building}")) == macs
    eventually(lambda: device_count(replicated, token, community) == 60)


def test_one_mac_added_twenty_times_at_once_makes_one_device(replicated: Platform) -> None:
    """Twenty identical adds race on two replicas: one 201, nineteen 409s naming `mac` (the
    domain's refusal, never a lost race reaching the caller)."""
    [mac] = macs_of(2, 1)
    _, token = an_installer(replicated, [mac])
    community, building = replicated.community_with_building(token, "One MAC Court")

    def client(_k: int) -> Iterator[tuple[int, tuple[str, ...]]]:
        status, body = replicated.call("POST", f"/api/v1/buildings/{building}/devices",
                                       {"type": 0, "mac": mac, "name": "Gate"}, token)
        yield status, tuple(sorted((body or {}).get("errors") or {}))

    results = in_parallel(20, client)
    assert Counter(results) == {(201, ()): 1, (409, ("mac",)): 19}, Counter(results)
    [device] = listed(replicated, token, f"buildings/{building}")
    assert device["mac"] == mac
    assert len([e for e in devices_events(replicated, "MacAssigned")
                if e["data"].get("mac") == mac]) == 1
    eventually(lambda: device_count(replicated, token, community) == 1)


def basic_apartment(number: str, mac: str) -> dict[str, Any]:
    return {"number": number, "floor": 1, "name": f"APT {number}", "indoor_monitor_mac": mac,
            "resident": {"first_name": "Ann", "last_name": f"Lee {number}"}}


def basic_building(platform: Platform, token: str, name: str) -> tuple[str, str]:
    status, community = platform.call("POST", "/api/v1/communities",
                                      {"name": name, "feature_plan": "basic",
                                       "time_zone": "Europe/Paris"}, token)
    assert status == 201, community
    status, building = platform.call("POST", f"/api/v1/communities/{community['id']}/buildings",
                                     {"name": "A"}, token)
    assert status == 201, building
    return community["id"], building["id"]


def monitors(platform: Platform, token: str, apartments: list[str]) -> dict[str, list[str]]:
    return {a: [d["mac"] for d in listed(platform, token, f"apartments/{a}")]
            for a in apartments}


def test_replayed_streams_install_and_count_each_monitor_once(replicated: Platform) -> None:
    """An operator re-publishes topology's and devices' whole streams: every Basic-plan APT
    still has exactly one indoor monitor, no MAC is assigned twice, and topology's count is
    the number of devices, not of deliveries."""
    macs = macs_of(3, 12)
    installer, token = an_installer(replicated, macs)
    community, building = basic_building(replicated, token, "Replay Gardens")
    apartments = []
    for n, mac in enumerate(macs):
        status, created = replicated.call("POST", f"/api/v1/buildings/{building}/apartments",
                                          basic_apartment(str(100 + n), mac), token)
        assert status == 201, created
        apartments.append(created["id"])
    expected = {a: [mac] for a, mac in zip(apartments, macs, strict=True)}
    eventually(lambda: monitors(replicated, token, apartments) == expected)
    eventually(lambda: device_count(replicated, token, community) == 12)
    added_before = len(devices_events(replicated, "DeviceAdded"))

    assert "re-published" in operator(replicated, "replay", "topology")
    assert "re-published" in operator(replicated, "replay", "devices")
    # A marker after the replays: once it is in, everything replayed before it was handled.
    [marker] = macs_of(4, 1)
    status, _ = replicated.call("POST", f"/api/v1/installers/{installer}/mac-library",
                                {"mac": marker}, replicated.distributor_token())
    assert status == 201
    status, created = replicated.call("POST", f"/api/v1/buildings/{building}/apartments",
                                      basic_apartment("999", marker), token)
    assert status == 201, created
    eventually(lambda: listed(replicated, token, f"apartments/{created['id']}") != [])
    eventually(lambda: device_count(replicated, token, community) == 13)

    assert monitors(replicated, token, apartments) == expected
    assert len(devices_events(replicated, "DeviceAdded")) == added_before + 1
    assigned = Counter(e["data"].get("mac") for e in devices_events(replicated, "MacAssigned"))
    assert all(assigned[mac] == 1 for mac in [*macs, marker]), assigned
    assert device_count(replicated, token, community) == 13


def test_a_replica_killed_mid_stream_loses_no_removal_and_repeats_none(
        replicated: Platform) -> None:
    """APTs are deleted while one devices replica is killed (SIGKILL) and the other is stopped:
    the deletions wait in devices' queue, and once devices is back every APT's monitor is
    removed exactly once and its MAC is free again."""
    macs = macs_of(5, 30)
    _, token = an_installer(replicated, macs)
    community, building = basic_building(replicated, token, "Kill Switch Park")
    apartments = []
    for n, mac in enumerate(macs):
        status, created = replicated.call("POST", f"/api/v1/buildings/{building}/apartments",
                                          basic_apartment(str(200 + n), mac), token)
        assert status == 201, created
        apartments.append(created["id"])
    eventually(lambda: device_count(replicated, token, community) == 30)

    devices = [i for i, name in enumerate(replicated.services) if name == "devices"]
    first = replicated.procs[devices[0]]
    for n, apartment in enumerate(apartments):
        if n == 10:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        if n == 15:
            replicated.stop_service("devices")
        status, _ = replicated.call("DELETE", f"/api/v1/apartments/{apartment}", token=token)
        assert status == 204
    replicated.start_service("devices")

    eventually(lambda: device_count(replicated, token, community) == 0, timeout=90)
    removed = Counter(e["stream_id"] for e in devices_events(replicated, "DeviceRemoved"))
    assert len(removed) == 30 and set(removed.values()) == {1}, removed
    freed = Counter(e["data"].get("mac") for e in devices_events(replicated, "MacFreed"))
    assert all(freed[mac] == 1 for mac in macs), freed
    status, library = replicated.call("GET", "/api/v1/mac-library?in_use=true&per_page=100",
                                      token=token)
    assert status == 200 and library["total"] == 0, library
