"""Device traffic on the real broker and database: devices publish to `devices.traffic`, the
devices service ingests it in batches, derives online status, records only the transitions,
keeps door and call logs once per message, and sends every bad message to the dead letters with
its reason, without stopping.

One process per service (`concierge run`), heartbeats every second with a tolerance of 2, so a
silent device is offline after 2 s.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from bench.cluster import ROOT, Platform
from concierge.devicesim import TrafficPublisher, message
from tests.support.harness import eventually, free_port

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

SERVICES = ("accounts", "topology", "devices", "gateway")
RNG = __import__("random").Random(7)


@pytest.fixture(scope="module")
def platform(rabbit_uri: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Platform]:
    data_dir: Path = tmp_path_factory.mktemp("traffic") / "var"
    running = Platform(rabbit_uri, postgres_url, data_dir, free_port(), services=SERVICES,
                       log_dir=data_dir.parent / "logs",
                       extra_env={"CONCIERGE_HEARTBEAT_SECONDS": "1",
                                  "CONCIERGE_OFFLINE_TOLERANCE": "2"})
    running.start()
    yield running
    running.stop()


@pytest.fixture
def publisher(platform: Platform) -> Iterator[TrafficPublisher]:
    made = TrafficPublisher(platform.env["AMQP_URI"], platform.amqp_prefix)
    yield made
    made.close()


def site_with_devices(platform: Platform, count: int) -> dict[str, Any]:
    """A new installer with `count` door phones in one building: ids, MACs and token."""
    macs = [f"0A{uuid.uuid4().hex[:10].upper()}" for _ in range(count)]
    _, token = platform.installer_with_macs(macs)
    community, building = platform.community_with_building(token, f"Traffic {uuid.uuid4().hex[:6]}")
    devices = []
    for n, mac in enumerate(macs):
        status, device = platform.call("POST", f"/api/v1/buildings/{building}/devices",
                                       {"type": 0, "mac": mac, "name": f"Door {n}"}, token)
        assert status == 201, device
        devices.append(device["id"])
    return {"token": token, "community": community, "building": building, "macs": macs,
            "devices": devices}


def detail(platform: Platform, site: dict[str, Any], device: str) -> dict[str, Any]:
    status, found = platform.call("GET", f"/api/v1/devices/{device}", token=site["token"])
    assert status == 200, found
    return found


def history_types(platform: Platform, site: dict[str, Any], device: str) -> list[str]:
    status, page = platform.call("GET", f"/api/v1/devices/{device}/history?per_page=100",
                                 token=site["token"])
    assert status == 200, page
    return [entry["type"] for entry in page["items"]]


def traffic_report(platform: Platform) -> dict[str, Any]:
    done = subprocess.run([platform._concierge(), "traffic"], env=platform.env, cwd=ROOT,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(done.stdout)


def refused(platform: Platform) -> dict[str, int]:
    return {row["reason"]: row["count"] for row in traffic_report(platform)["refused"]}


def test_a_heartbeat_brings_a_device_online_and_silence_takes_it_offline(
        platform: Platform, publisher: TrafficPublisher) -> None:
    site = site_with_devices(platform, 2)
    (mac, quiet), (device, other) = site["macs"], site["devices"]
    assert detail(platform, site, device)["status"] == "offline"

    publisher.publish(mac, "status", message("status", RNG, firmware="29.30.2.805",
                                             ip="10.1.2.3"))
    for _ in range(3):
        publisher.publish(mac, "heartbeat", message("heartbeat", RNG))
    shown = eventually(lambda: (lambda d: d if d["status"] == "online" else None)(
        detail(platform, site, device)))
    assert (shown["firmware"], shown["ip"], shown["model"]) == ("29.30.2.805", "10.1.2.3",
                                                                "R29C")
    assert shown["last_connection"] is not None
    _, page = platform.call("GET", f"/api/v1/buildings/{site['building']}/devices",
                                 token=site["token"])
    statuses = {item["mac"]: item["status"] for item in page["items"]}
    assert statuses == {mac: "online", quiet: "offline"}

    # Silent for longer than 1 s x 2: offline, within the detector's pass.
    eventually(lambda: detail(platform, site, device)["status"] == "offline", timeout=15)
    eventually(lambda: history_types(platform, site, device)[-2:] == [
        "DeviceCameOnline", "DeviceWentOffline"], timeout=15)
    publisher.publish(mac, "heartbeat", message("heartbeat", RNG))
    eventually(lambda: history_types(platform, site, device)[-1] == "DeviceCameOnline")
    transitions = [t for t in history_types(platform, site, device) if "Online" in t
                   or "Offline" in t]
    # Heartbeats are never events: five messages, three transitions.
    assert transitions == ["DeviceCameOnline", "DeviceWentOffline", "DeviceCameOnline"]
    assert history_types(platform, site, other) == ["DeviceAdded"]


def door(mac_id: str, at: str, **fields: Any) -> dict[str, Any]:
    return message("door", RNG, id=mac_id, time=at, **fields)


def test_door_and_call_logs_keep_each_message_once_per_scope_and_time_range(
        platform: Platform, publisher: TrafficPublisher) -> None:
    site = site_with_devices(platform, 2)
    (mac, other_mac), (device, _other) = site["macs"], site["devices"]
    base = time.time() - 3600
    for n in range(5):
        at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(base + n * 60))
        publisher.publish(mac, "door", door(f"door-{n}", at))
    publisher.publish(mac, "door", door("door-0", "2026-01-01T00:00:00+00:00"))  # a replay
    publisher.publish(other_mac, "call", message("call", RNG, id="call-1"))
    logs = f"/api/v1/communities/{site['community']}/door-logs"

    def total(path: str) -> int:
        status, page = platform.call("GET", path, token=site["token"])
        assert status == 200, page
        return int(page["total"])

    eventually(lambda: total(logs) == 5)
    status, page = platform.call("GET", f"{logs}?per_page=2", token=site["token"])
    assert [entry["message_id"] for entry in page["items"]] == ["door-4", "door-3"]
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + 60))
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + 180))
    status, ranged = platform.call("GET", f"{logs}?from={start}&to={end}",
                                   token=site["token"])
    assert [entry["message_id"] for entry in ranged["items"]] == ["door-2", "door-1"]
    assert total(f"/api/v1/devices/{device}/door-logs") == 5
    assert total(f"/api/v1/buildings/{site['building']}/door-logs") == 5
    eventually(lambda: total(f"/api/v1/buildings/{site['building']}/call-logs") == 1)
    status, empty = platform.call("GET", f"{logs}?from={end}&to={start}", token=site["token"])
    assert status == 200 and empty["total"] == 0
    status, bad = platform.call("GET", f"{logs}?from=yesterday", token=site["token"])
    assert status == 422 and "from" in bad["errors"]
    eventually(lambda: refused(platform).get("replayed", 0) >= 1)


def test_bad_traffic_goes_to_the_dead_letters_and_good_traffic_still_flows(
        platform: Platform, publisher: TrafficPublisher) -> None:
    site = site_with_devices(platform, 1)
    [mac], [device] = site["macs"], site["devices"]
    before = Counter(refused(platform))
    publisher.publish(mac, "heartbeat", b"{not json")
    publisher.publish(mac, "dance", message("heartbeat", RNG))
    publisher.publish("0FFFFFFFFFFF", "heartbeat", message("heartbeat", RNG))
    publisher.publish(mac, "status", b"{" + b" " * 5000 + b"}")
    publisher.publish(mac, "heartbeat", message("heartbeat", RNG, at=time.time() - 10 * 86_400))
    publisher.publish(mac, "door", message("door", RNG, relay=99))
    publisher.publish(mac, "status", message("status", RNG, firmware="29.30.9.999"))
    eventually(lambda: detail(platform, site, device)["firmware"] == "29.30.9.999")

    def grew() -> Counter[str]:
        now = Counter(refused(platform))
        now.subtract(before)
        return now

    eventually(lambda: grew() == Counter({"malformed": 2, "unknown_kind": 1,
                                          "unknown_mac": 1, "oversized": 1, "replayed": 1}))
    conn = pika.BlockingConnection(pika.URLParameters(platform.env["AMQP_URI"]))
    try:
        channel = conn.channel()
        reasons = []
        while True:
            method, props, _body = channel.basic_get(
                f"{platform.amqp_prefix}devices.traffic.dead", auto_ack=True)
            if method is None:
                break
            reasons.append(props.headers["x-reason"])
        assert Counter(reasons) >= Counter({"malformed": 2, "unknown_kind": 1,
                                            "unknown_mac": 1, "oversized": 1, "replayed": 1})
    finally:
        conn.close()


def test_devices_killed_mid_batch_loses_no_door_opening_and_repeats_none(
        platform: Platform, publisher: TrafficPublisher) -> None:
    """3,000 door openings are published while devices is killed (SIGKILL) mid-stream and
    started again: every one is in the log, once, and the device came online once."""
    site = site_with_devices(platform, 1)
    [mac], [device] = site["macs"], site["devices"]
    at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    index = platform.services.index("devices")
    for n in range(3000):
        publisher.publish(mac, "door", door(f"kill-{n}", at))
        if n == 1000:
            publisher.pump()
            time.sleep(0.3)
            os.kill(platform.procs[index].pid, signal.SIGKILL)
            platform.procs[index].wait(10)
    platform.start_service("devices")

    def total() -> int:
        status, page = platform.call("GET", f"/api/v1/devices/{device}/door-logs?per_page=1",
                                     token=site["token"])
        return int(page["total"]) if status == 200 else -1

    eventually(lambda: total() == 3000, timeout=120)
    # The restart may take longer than the tolerance (offline, then online again), but no
    # transition is ever recorded twice in a row.
    transitions = [t for t in history_types(platform, site, device) if t != "DeviceAdded"]
    assert transitions[0] == "DeviceCameOnline"
    assert all(a != b for a, b in itertools.pairwise(transitions)), transitions


def test_the_ingest_survives_a_broker_restart_under_load(platform: Platform) -> None:
    """3,000 door openings wait in the durable queue while the broker stops and starts
    mid-stream: every one reaches the log once, and traffic sent afterwards is taken."""
    site = site_with_devices(platform, 1)
    [mac], [device] = site["macs"], site["devices"]
    at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    before = TrafficPublisher(platform.env["AMQP_URI"], platform.amqp_prefix)
    try:
        for n in range(3000):
            before.publish(mac, "door", door(f"restart-{n}", at))
        before.pump()
    finally:
        before.close()
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)

    def total() -> int:
        status, page = platform.call("GET", f"/api/v1/devices/{device}/door-logs?per_page=1",
                                     token=site["token"])
        return int(page["total"]) if status == 200 else -1

    eventually(lambda: total() == 3000, timeout=180)
    def connected() -> TrafficPublisher | None:
        try:
            return TrafficPublisher(platform.env["AMQP_URI"], platform.amqp_prefix)
        except pika.exceptions.AMQPError:  # the broker is still starting
            return None

    after = eventually(connected, timeout=60)
    try:
        after.publish(mac, "status", message("status", RNG, firmware="29.30.7.7"))
        after.pump()
    finally:
        after.close()
    eventually(lambda: detail(platform, site, device)["firmware"] == "29.30.7.7", timeout=120)
    assert total() == 3000
