"""Remote operations on the real broker and database, end to end: the installer queues a
command through the gateway, devices records it, notify pushes it to the device's mailbox on
`devices.push`, a simulated device acknowledges it on `devices.traffic`, and the command moves
to succeeded. Also: notify down while commands wait (delivered when it returns, or expired by
their deadline), acks duplicated and out of order, Autop commands kept without duplicates, the
config sync that follows an APT's reset, and a replay of devices' events that pushes nothing
twice.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.cluster import ROOT, Platform
from concierge.devicesim import DeviceSimulator, TrafficPublisher, message
from tests.support.harness import eventually, free_port

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

SERVICES = ("accounts", "topology", "devices", "notify", "gateway")
RNG = __import__("random").Random(11)


@pytest.fixture(scope="module")
def platform(rabbit_uri: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Platform]:
    data_dir: Path = tmp_path_factory.mktemp("commands") / "var"
    running = Platform(rabbit_uri, postgres_url, data_dir, free_port(), services=SERVICES,
                       log_dir=data_dir.parent / "logs",
                       extra_env={"CONCIERGE_HEARTBEAT_SECONDS": "1",
                                  "CONCIERGE_OFFLINE_TOLERANCE": "2"})
    running.start()
    yield running
    running.stop()  # it drops the push queues of the deployment's devices


def new_macs(count: int) -> list[str]:
    return [f"0B{uuid.uuid4().hex[:10].upper()}" for _ in range(count)]


def site_with_devices(platform: Platform, count: int) -> dict[str, Any]:
    macs = new_macs(count)
    _, token = platform.installer_with_macs(macs)
    community, building = platform.community_with_building(token,
                                                           f"Cmd {uuid.uuid4().hex[:6]}")
    devices = []
    for n, mac in enumerate(macs):
        status, device = platform.call("POST", f"/api/v1/buildings/{building}/devices",
                                       {"type": 0, "mac": mac, "name": f"Door {n}"}, token)
        assert status == 201, device
        devices.append(device["id"])
    return {"token": token, "community": community, "building": building, "macs": macs,
            "devices": devices}


def queue(platform: Platform, site: dict[str, Any], device: str, **body: Any) -> dict[str, Any]:
    status, command = platform.call("POST", f"/api/v1/devices/{device}/commands", body,
                                    site["token"])
    assert status == 201, command
    return command


def command(platform: Platform, site: dict[str, Any], command_id: str) -> dict[str, Any]:
    status, found = platform.call("GET", f"/api/v1/commands/{command_id}", token=site["token"])
    assert status == 200, found
    return found


def settled(platform: Platform, site: dict[str, Any], command_id: str, state: str,
            timeout: float = 30) -> dict[str, Any]:
    return eventually(lambda: (lambda c: c if c["state"] == state else None)(
        command(platform, site, command_id)), timeout=timeout)


def simulate(platform: Platform, macs: list[str], acked: int, seconds: float = 30,
             **options: Any) -> DeviceSimulator:
    """Simulated devices answering their pushes until they acknowledged `acked` of them (and
    half a second more, for anything that should not come)."""
    simulator = DeviceSimulator(platform.env["AMQP_URI"], macs, platform.amqp_prefix,
                                **options)
    try:
        simulator.run(seconds, out=None, until=lambda: simulator.progress.acked >= acked)
        simulator.run(0.5, out=None)
    finally:
        simulator.close()
    return simulator


def states(found: dict[str, Any]) -> list[str]:
    return [step["state"] for step in found["history"]]


def test_a_reboot_goes_from_queued_to_succeeded_through_notify_and_the_device(
        platform: Platform) -> None:
    site = site_with_devices(platform, 2)
    (mac, other_mac), (device, other) = site["macs"], site["devices"]
    queued = queue(platform, site, device, kind="reboot")
    assert queued["state"] == "queued" and queued["mac"] == mac

    simulator = simulate(platform, [mac, other_mac], acked=1)
    done = settled(platform, site, queued["id"], "succeeded")
    # "sent" is recorded when notify's PushSent reaches devices: before or after the device's
    # acks; after them it changes nothing.
    assert states(done)[0] == "queued" and states(done)[-2:] == ["delivered", "succeeded"]
    assert set(states(done)) <= {"queued", "sent", "delivered", "succeeded"}
    assert simulator.progress.pushes == 1 and simulator.progress.by_kind == {"reboot": 1}
    status, page = platform.call("GET", f"/api/v1/devices/{device}/commands",
                                 token=site["token"])
    assert status == 200 and [c["id"] for c in page["items"]] == [queued["id"]]
    assert page["items"][0]["state"] == "succeeded"
    status, page = platform.call("GET", f"/api/v1/devices/{other}/commands",
                                 token=site["token"])
    assert status == 200 and page["total"] == 0
    # Another installer sees no such command.
    _, stranger = platform.installer_with_macs(new_macs(1))
    status, _ = platform.call("GET", f"/api/v1/commands/{queued['id']}", token=stranger)
    assert status == 404


def test_bad_commands_are_refused_naming_the_field(platform: Platform) -> None:
    site = site_with_devices(platform, 1)
    device = site["devices"][0]
    for body, field in (({"kind": "connection_type"}, "connection_type"),
                        ({"kind": "connection_type", "connection_type": "SCTP"},
                         "connection_type"),
                        ({"kind": "autop"}, "commands"),
                        ({"kind": "autop", "commands": ["no equals sign"]}, "commands"),
                        ({"kind": "config_sync"}, "kind"),
                        ({"kind": "reboot", "deadline_seconds": 1}, "deadline_seconds")):
        status, problem = platform.call("POST", f"/api/v1/devices/{device}/commands", body,
                                        site["token"])
        assert status == 422, (body, problem)
        assert field in problem["errors"], (body, problem)
    status, _ = platform.call("POST", f"/api/v1/devices/{uuid.uuid4()}/commands",
                              {"kind": "reboot"}, site["token"])
    assert status == 404


def test_kept_autop_commands_keep_one_value_per_key_and_one_time_ones_are_not_kept(
        platform: Platform) -> None:
    site = site_with_devices(platform, 1)
    [mac], [device] = site["macs"], site["devices"]
    first = queue(platform, site, device, kind="autop",
                  commands=["Config.A.B = 1", "Config.C.D=2", "Config.A.B = 3"])
    assert first["params"] == {"commands": ["Config.A.B = 3", "Config.C.D = 2"], "once": False}
    queue(platform, site, device, kind="autop", commands=["Config.C.D = 2", "Config.E.F = x"])
    once = queue(platform, site, device, kind="autop", commands=["Config.Z.Z = 9"], once=True)
    status, shown = platform.call("GET", f"/api/v1/devices/{device}", token=site["token"])
    assert status == 200
    assert shown["autop"] == ["Config.A.B = 3", "Config.C.D = 2", "Config.E.F = x"]
    simulator = simulate(platform, [mac], acked=3)
    assert simulator.progress.by_kind == {"autop": 3}
    settled(platform, site, once["id"], "succeeded")


def test_commands_wait_for_notify_and_expire_by_their_deadline(platform: Platform) -> None:
    """Notify is down while two commands are queued: the one whose deadline passes meanwhile
    expires and is never pushed; the other is pushed when notify returns, and succeeds."""
    site = site_with_devices(platform, 1)
    [mac], [device] = site["macs"], site["devices"]
    platform.stop_service("notify")
    try:
        short = queue(platform, site, device, kind="reboot", deadline_seconds=5)
        long = queue(platform, site, device, kind="connection_type", connection_type="TLS")
        expired = settled(platform, site, short["id"], "expired", timeout=30)
        assert states(expired) == ["queued", "expired"]
        assert command(platform, site, long["id"])["state"] == "queued"
    finally:
        platform.start_service("notify")
    simulator = simulate(platform, [mac], acked=1)
    assert simulator.progress.by_kind == {"connection_type": 1}
    done = settled(platform, site, long["id"], "succeeded")
    assert states(done)[-1] == "succeeded"
    assert command(platform, site, short["id"])["state"] == "expired"


def test_duplicate_and_out_of_order_acks_move_a_command_once_and_only_forward(
        platform: Platform) -> None:
    site = site_with_devices(platform, 2)
    (mac, other_mac), (device, _) = site["macs"], site["devices"]
    # Long enough for notify's push to be sent (and drained below) first.
    queued = queue(platform, site, device, kind="reset")
    settled(platform, site, queued["id"], "sent")
    publisher = TrafficPublisher(platform.env["AMQP_URI"], platform.amqp_prefix)
    try:
        def ack(from_mac: str, outcome: str, message_id: str | None = None) -> None:
            body = message("ack", RNG, command_id=queued["id"], outcome=outcome, detail=None)
            if message_id:
                body["id"] = message_id
            publisher.publish(from_mac, "ack", body)

        ack(other_mac, "failed")  # another device's word on it: changes nothing
        ack(mac, "succeeded", "done-1")
        ack(mac, "succeeded", "done-1")  # the same message again: a replay
        ack(mac, "received")  # late
        ack(mac, "failed")  # after the end
        ack(mac, "succeeded")  # the same outcome, another message
        publisher.pump()
    finally:
        publisher.close()
    done = settled(platform, site, queued["id"], "succeeded")
    time.sleep(2)  # anything still in flight lands
    done = command(platform, site, queued["id"])
    assert states(done) == ["queued", "sent", "succeeded"], done["history"]


def test_an_apartment_reset_queues_one_config_sync_per_device_that_serves_it(
        platform: Platform) -> None:
    macs = new_macs(3)
    _, token = platform.installer_with_macs(macs)
    site = {"token": token}
    community, building = platform.community_with_building(token, f"Sync {uuid.uuid4().hex[:6]}")
    status, apartment = platform.call("POST", f"/api/v1/buildings/{building}/apartments", {
        "number": "101", "resident": {"first_name": "Ana", "last_name": "Lee",
                                      "email": f"{uuid.uuid4().hex[:8]}@example.org"}}, token)
    assert status == 201, apartment
    ids = {}
    for area, area_id, kind, mac in (("apartments", apartment["id"], 1, macs[0]),
                                     ("buildings", building, 0, macs[1]),
                                     ("communities", community, 0, macs[2])):
        status, device = platform.call("POST", f"/api/v1/{area}/{area_id}/devices",
                                       {"type": kind, "mac": mac, "name": area}, token)
        assert status == 201, device
        ids[area] = device["id"]

    def syncs(device: str) -> list[dict[str, Any]]:
        status, page = platform.call("GET", f"/api/v1/devices/{device}/commands",
                                     token=token)
        assert status == 200, page
        return [c for c in page["items"] if c["kind"] == "config_sync"]

    status, _ = platform.call("POST", f"/api/v1/apartments/{apartment['id']}/reset", {}, token)
    assert status in (200, 204), _
    for device in ids.values():
        eventually(lambda device=device: len(syncs(device)) == 1, timeout=30)
    simulator = simulate(platform, macs, acked=3)
    assert simulator.progress.by_kind == {"config_sync": 3}
    for device in ids.values():
        eventually(lambda device=device: syncs(device)[0]["state"] == "succeeded")
        assert command(platform, site, syncs(device)[0]["id"])["kind"] == "config_sync"


def test_a_replay_of_devices_events_pushes_nothing_twice(platform: Platform) -> None:
    site = site_with_devices(platform, 1)
    [mac], [device] = site["macs"], site["devices"]
    queued = queue(platform, site, device, kind="reboot")
    simulate(platform, [mac], acked=1)
    settled(platform, site, queued["id"], "succeeded")
    done = subprocess.run([platform._concierge(), "replay", "devices"], env=platform.env,
                          cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    again = DeviceSimulator(platform.env["AMQP_URI"], [mac], platform.amqp_prefix)
    try:
        again.run(4, out=None)
    finally:
        again.close()
    assert again.progress.pushes == 0
    assert states(command(platform, site, queued["id"]))[-1] == "succeeded"


def test_two_replicas_of_devices_and_notify_push_each_command_once_and_lose_no_traffic(
        platform: Platform) -> None:
    """A second devices replica (both consume the traffic queue) and a second notify replica
    (one pusher at a time): 40 commands to 8 devices, while the devices open doors, each
    pushed once and succeeded; every door opening is in the log once."""
    extra = [platform.run("devices"), platform.run("notify")]
    try:
        site = site_with_devices(platform, 8)
        queued = [queue(platform, site, site["devices"][n % 8], kind="reboot")
                  for n in range(40)]
        publisher = TrafficPublisher(platform.env["AMQP_URI"], platform.amqp_prefix)
        try:
            for n in range(400):
                publisher.publish(site["macs"][n % 8], "door", message("door", RNG,
                                                                       id=f"two-{n}"))
            publisher.pump()
        finally:
            publisher.close()
        simulator = simulate(platform, site["macs"], acked=40, seconds=60)
        assert simulator.progress.pushes == 40 and simulator.progress.duplicates == 0
        for each in queued:
            settled(platform, site, each["id"], "succeeded")

        def doors() -> int:
            status, page = platform.call(
                "GET", f"/api/v1/communities/{site['community']}/door-logs?per_page=1",
                token=site["token"])
            return int(page["total"]) if status == 200 else -1

        eventually(lambda: doors() == 400, timeout=60)
        time.sleep(1)
        assert doors() == 400
    finally:
        for proc in extra:
            proc.terminate()
            proc.wait(20)


def test_the_simulate_command_registers_devices_through_the_gateway_and_answers_them(
        platform: Platform) -> None:
    """`concierge simulate devices --register`: N door phones added through the public API,
    then answering a reboot sent to one of them; its summary counts the acknowledgement."""
    import json
    import subprocess as sp

    proc = sp.Popen([platform._concierge(), "simulate", "devices", "--devices", "3",
                     "--duration", "20", "--register", platform.base], env=platform.env,
                    cwd=ROOT, stdout=sp.PIPE, stderr=sp.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        registered = json.loads(first)
        assert registered["registered"] == 3
        token = registered["installer_token"]
        status, page = platform.call(
            "GET", f"/api/v1/buildings/{registered['building']}/devices", token=token)
        assert status == 200 and page["total"] == 3
        device = page["items"][0]["id"]
        site = {"token": token}
        queued = queue(platform, site, device, kind="reboot")
        settled(platform, site, queued["id"], "succeeded")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["devices"] == 3 and summary["acked"] == 1
    assert summary["by_kind"] == {"reboot": 1}
