"""Devices' rules without I/O: the MAC library's ownership and use, where devices go, which
settings each type has, and the shapes the contract takes (MACs, CSV rows, relays)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from marshmallow import ValidationError

from contracts import checked
from contracts.devices import (
    ACCESS_METHODS,
    EVENT_SCHEMAS,
    DeviceCreate,
    DeviceEdit,
    MacImport,
    mac_rows,
    normal_mac,
)
from contracts.errors import Conflict, Invalid, NotFound
from services.devices.application import new_sip
from services.devices.domain import Command, Device, KnownCommunity, Mac

LUNA, MARK = str(uuid.uuid4()), str(uuid.uuid4())
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def community(*buildings: str) -> KnownCommunity:
    site = KnownCommunity(community_id=str(uuid.uuid4()), installer_id=LUNA, name="Seaside")
    for building in buildings:
        site.know_building(building_id=building, name=f"B {building[:4]}")
    return site


def install(area: str = "community", site: KnownCommunity | None = None,
            **payload: Any) -> Device:
    settings = checked(DeviceCreate, {"type": 0, "mac": "0C11050B9814", "name": "Gate",
                                      **payload})
    return Device.install(sip=new_sip(), installer_id=LUNA, community=site or community(),
                          area=area, building_id=None, apartment_id=None, settings=settings)


# --- MACs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0c:11:05:0b:98:14", "0C-11-05-0B-98-14", "0c11050b9814",
                                  " 0C11050B9814 "])
def test_every_written_form_of_a_mac_is_one_mac(text: str) -> None:
    assert normal_mac(text) == "0C11050B9814"


@pytest.mark.parametrize("text", ["", "0C11050B981", "0C11050B98145", "0C:11-05:0B:98:14",
                                  "0C11050B98G4", "0C:11:05:0B:98", "0C 11 05 0B 98 14"])
def test_anything_else_is_no_mac(text: str) -> None:
    assert normal_mac(text) is None


def test_a_mac_has_one_id_whatever_its_owner() -> None:
    assert Mac.id_for("0C11050B9814") == Mac(mac="0C11050B9814", installer_id=LUNA,
                                             distributor_id=None).id
    assert Mac.id_for("0C11050B9814") != Mac.id_for("0C11050B9815")


def test_a_mac_is_used_by_one_device_of_its_owner() -> None:
    mac = Mac(mac="0C11050B9814", installer_id=LUNA, distributor_id=None)
    with pytest.raises(Invalid) as foreign:
        mac.assign("d1", MARK, NOW)
    assert list(foreign.value.errors) == ["mac"]
    mac.assign("d1", LUNA, NOW)
    with pytest.raises(Conflict) as used:
        mac.assign("d2", LUNA, NOW)
    assert list(used.value.errors) == ["mac"]
    mac.free("d2")  # another device's freeing changes nothing
    assert mac.device_id == "d1"
    mac.free("d1")
    mac.assign("d2", LUNA, NOW)
    assert mac.device_id == "d2"


def test_a_mac_kept_for_an_apartment_goes_to_that_apartment_until_it_lapses() -> None:
    mac = Mac(mac="0C11050B9814", installer_id=LUNA, distributor_id=None)
    with pytest.raises(Invalid):
        mac.reserve("apt-1", MARK, NOW)
    mac.reserve("apt-1", LUNA, NOW)
    mac.reserve("apt-1", LUNA, NOW)  # asked again (a retried request): still its
    with pytest.raises(Conflict) as kept:
        mac.reserve("apt-2", LUNA, NOW + timedelta(minutes=9))
    assert list(kept.value.errors) == ["mac"]
    with pytest.raises(Conflict):
        mac.assign("d1", LUNA, NOW, apartment_id=None)
    mac.assign("d1", LUNA, NOW + timedelta(minutes=1), apartment_id="apt-1")
    assert (mac.device_id, mac.reserved_for) == ("d1", None)
    lapsed = Mac(mac="0C11050B9815", installer_id=LUNA, distributor_id=None)
    lapsed.reserve("apt-1", LUNA, NOW)
    lapsed.assign("d2", LUNA, NOW + timedelta(minutes=11))  # its APT never came
    assert lapsed.device_id == "d2"


def test_a_mac_in_use_stays_in_the_library() -> None:
    mac = Mac(mac="0C11050B9814", installer_id=LUNA, distributor_id=None)
    mac.assign("d1", LUNA, NOW)
    with pytest.raises(Conflict):
        mac.release(LUNA)
    with pytest.raises(NotFound):
        mac.release(MARK)
    mac.free("d1")
    mac.release(LUNA)
    assert mac.released and not mac.owned_by(LUNA)
    with pytest.raises(Invalid):
        mac.assign("d3", LUNA, NOW)  # released: in nobody's library


def test_a_registered_mac_is_a_duplicate_or_taken_and_a_released_one_is_free() -> None:
    mac = Mac(mac="0C11050B9814", installer_id=LUNA, distributor_id="dora")
    assert (mac.outcome_for(LUNA), mac.outcome_for(MARK)) == ("duplicate", "taken")
    with pytest.raises(Conflict) as taken:
        mac.register_again(MARK, "dora")
    assert taken.value.errors == {"mac": ["This MAC is registered to another installer."]}
    mac.release(LUNA)
    mac.register_again(MARK, "dora")
    assert mac.owned_by(MARK) and not mac.owned_by(LUNA)


def test_csv_rows_skip_a_header_and_blank_lines_and_keep_line_numbers() -> None:
    text = 'MAC,Note\n\n"0C11050B9814",door\n  \n0c-11-05-0b-98-15;x\nbad\n'
    assert mac_rows(text) == [(3, "0C11050B9814"), (5, "0c-11-05-0b-98-15"), (6, "bad")]
    assert mac_rows("0C11050B9814\nMAC") == [(1, "0C11050B9814"), (2, "MAC")]
    with pytest.raises(Invalid):
        checked(MacImport, {"csv": ""})


# --- devices -----------------------------------------------------------------------------------


def test_sip_numbers_are_ten_digits_and_name_the_device() -> None:
    numbers = {new_sip() for _ in range(200)}
    assert len(numbers) == 200
    assert all(len(n) == 10 and n.isdigit() and n.startswith("59") for n in numbers)
    assert Device.id_for_sip("5900000001") != Device.id_for_sip("5900000002")


def test_a_device_s_id_is_its_sip_number_s() -> None:
    device = install()
    assert device.id == Device.id_for_sip(device.sip)


@pytest.mark.parametrize(("area", "kind", "allowed"), [
    ("community", 0, True), ("community", 1, False), ("community", 2, True),
    ("community", 3, True), ("community", 50, True), ("building", 1, False),
    ("building", 3, True), ("apartment", 0, False), ("apartment", 1, True),
    ("apartment", 2, True), ("apartment", 3, False), ("apartment", 50, True)])
def test_each_area_takes_its_types(area: str, kind: int, allowed: bool) -> None:
    if allowed:
        assert install(area, type=kind).type == kind
    else:
        with pytest.raises(Invalid) as refused:
            install(area, type=kind)
        assert list(refused.value.errors) == ["type"]


def test_a_community_device_serves_its_community_s_buildings_only() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    site = community(a, b)
    assert install(site=site, buildings=[a]).buildings == [a]
    with pytest.raises(Invalid) as stranger:
        install(site=site, buildings=[a, str(uuid.uuid4())])
    assert list(stranger.value.errors) == ["buildings"]
    with pytest.raises(Invalid):
        install("building", site=site, buildings=[a])
    assert install("building", site=site).buildings == "all"


def test_door_hold_open_is_for_an_apartment_s_door_phone() -> None:
    assert install("apartment", type=1, door_hold_open=True).door_hold_open
    for area in ("community", "building"):
        with pytest.raises(Invalid) as refused:
            install(area, door_hold_open=True)
        assert list(refused.value.errors) == ["door_hold_open"]


def test_a_door_phone_gets_one_relay_a_monitor_none() -> None:
    phone = install()
    assert phone.relays == [{"name": "Relay1", "dtmf": "#", "enabled": True,
                             "access_methods": list(ACCESS_METHODS)}]
    assert install(type=2).relays == []


def test_an_edit_keeps_each_type_s_settings_and_says_what_changed() -> None:
    monitor = install(type=2)
    with pytest.raises(Invalid) as refused:
        monitor.edit(community(), checked(DeviceEdit, {"relays": [{"name": "A"}]}))
    assert list(refused.value.errors) == ["relays"]
    phone = install()
    with pytest.raises(Invalid) as arming:
        phone.edit(community(), checked(DeviceEdit, {"arming": True}))
    assert list(arming.value.errors) == ["arming"]
    with pytest.raises(Invalid) as ip:
        phone.edit(community(), checked(DeviceEdit, {"internet_access": False}))
    assert list(ip.value.errors) == ["static_ip"]
    assert phone.edit(community(), checked(DeviceEdit, {
        "internet_access": False, "static_ip": "10.0.0.9", "name": "Gate"})) == {
        "internet_access": False, "static_ip": "10.0.0.9"}
    assert phone.edit(community(), {"name": "Gate"}) == {}
    assert phone.version == 2  # one DeviceEdited, none for the edit that changed nothing


def test_the_contract_refuses_each_bad_setting_by_name() -> None:
    def refused(**payload: Any) -> list[str]:
        with pytest.raises(Invalid) as raised:
            checked(DeviceCreate, {"type": 0, "mac": "0C11050B9814", "name": "Gate",
                                   **payload})
        return sorted(raised.value.errors)

    assert refused(type=4) == ["type"]
    assert refused(relays=[{}] * 5) == ["relays"]
    assert refused(relays=[{"dtmf": "12345"}]) == ["relays"]
    assert refused(relays=[{"access_methods": ["telepathy"]}]) == ["relays"]
    assert refused(static_ip="10.0.0.256") == ["static_ip"]
    assert refused(static_ip="010.0.0.1") == ["static_ip"]
    assert refused(buildings="some") == ["buildings"]
    assert refused(buildings=["B1"]) == ["buildings"]
    assert refused(type=2, external_relay={"model": "MK485", "relays": [{"name": "a"}] * 9}
                   ) == ["external_relay"]
    assert refused(type=2, external_relay={"model": "MK485", "mode": "ethernet",
                                           "relays": [{"name": "a"}]}) == ["external_relay"]
    assert refused(type=2, external_relay={"model": "HF-8000", "mode": "ethernet",
                                           "relays": [{"name": "a"}]}) == ["external_relay"]
    assert refused(type=2, builtin_relays=["a", "b", "c"]) == ["builtin_relays"]
    assert refused(network_group=0) == ["network_group"]
    assert refused(contact_display="everyone") == ["contact_display"]
    ok = checked(DeviceCreate, {"type": 2, "mac": "0C11050B9814", "name": "Hall",
                                "external_relay": {"model": "MK485", "relays": [
                                    {"name": f"R{n}"} for n in range(8)]}})
    assert len(ok["external_relay"]["relays"]) == 8 and ok["external_relay"]["mode"] == "rs485"


@pytest.mark.parametrize(("url", "valid"), [
    ("rtsp://192.168.1.64:554", True), ("rtsp://cam.example.com:8554/live/ch1", True),
    ("rtsp://cam", True), ("rtsp://[fe80::1]:554", True), ("http://cam:554", False),
    ("rtsp://:554", False), ("rtsp://cam:0", False), ("rtsp://cam:65536", False),
    ("rtsp://cam:554 /x", False), ("rtsp://-cam", False), ("RTSP://cam", False)])
def test_a_camera_s_address_is_rtsp_host_and_port(url: str, valid: bool) -> None:
    from contracts.devices import CameraCreate

    payload = {"name": "C", "rtsp_url": url, "username": "u", "password": "p"}
    if valid:
        assert checked(CameraCreate, payload)["rtsp_url"] == url
    else:
        with pytest.raises(Invalid) as refused:
            checked(CameraCreate, payload)
        assert list(refused.value.errors) == ["rtsp_url"]


@pytest.mark.parametrize("password", ["a@b", "a:b", "a/b", ""])
def test_a_camera_s_password_has_no_at_colon_or_slash(password: str) -> None:
    from contracts.devices import CameraCreate

    with pytest.raises(Invalid) as refused:
        checked(CameraCreate, {"name": "C", "rtsp_url": "rtsp://c", "username": "u",
                               "password": password})
    assert list(refused.value.errors) == ["password"]


# --- remote operations as durable commands ----------------------------------------------------


def command(device: Device | None = None, deadline_seconds: int = 3600,
            command_id: uuid.UUID | None = None) -> Command:
    made = Command.for_device(device or install(), "reboot", {}, NOW, deadline_seconds,
                              command_id=command_id)
    made.collect_events()  # what follows records only the moves under test
    return made


def recorded(aggregate: Any) -> list[str]:
    return [type(e).__name__ for e in aggregate.collect_events()]


def test_a_new_command_is_queued_with_one_history_entry_and_its_deadline() -> None:
    device = install()
    queued = Command.for_device(device, "reboot", {"x": 1}, NOW, 90)
    assert recorded(queued) == ["CommandQueued"]
    assert (queued.state, queued.final, queued.detail) == ("queued", False, None)
    assert [entry["state"] for entry in queued.history] == ["queued"]
    assert queued.device_id == str(device.id) and queued.mac == device.mac
    assert (queued.installer_id, queued.community_id) == (LUNA, device.community_id)
    assert (queued.kind, queued.params) == ("reboot", {"x": 1})
    assert datetime.fromisoformat(queued.deadline) == NOW + timedelta(seconds=90)


def test_a_command_moves_sent_delivered_succeeded_each_once() -> None:
    moving = command()
    assert moving.sent("t1") is True
    assert moving.state == "sent" and recorded(moving) == ["CommandSent"]
    assert moving.acknowledged("received", "t2") is True
    assert moving.state == "delivered" and recorded(moving) == ["CommandDelivered"]
    assert moving.acknowledged("succeeded", "t3", "done") is True
    assert (moving.state, moving.detail, moving.final) == ("succeeded", "done", True)
    assert recorded(moving) == ["CommandSucceeded"]
    assert [(e["state"], e["at"], e["detail"]) for e in moving.history] == [
        ("queued", moving.history[0]["at"], None), ("sent", "t1", None),
        ("delivered", "t2", None), ("succeeded", "t3", "done")]


def test_an_ack_that_is_no_news_records_nothing() -> None:
    moving = command()
    moving.sent("t1")
    assert moving.sent("t1") is False  # notify's "sent" twice
    moving.acknowledged("received", "t2")
    version = moving.version
    moving.collect_events()
    assert moving.acknowledged("received", "t2") is False  # the same ack again
    assert moving.sent("t3") is False  # a late "sent" after "delivered"
    assert moving.state == "delivered" and moving.version == version
    assert recorded(moving) == []
    assert len(moving.history) == 3


@pytest.mark.parametrize("late", [("received", "t9"), ("succeeded", "t9"), ("failed", "t9")])
def test_nothing_moves_a_succeeded_command(late: tuple[str, str]) -> None:
    done = command()
    done.acknowledged("succeeded", "t1", "ok")
    done.collect_events()
    version = done.version
    assert done.acknowledged(*late, "late") is False
    assert done.sent("t9") is False
    assert (done.state, done.detail, done.version) == ("succeeded", "ok", version)
    assert recorded(done) == []


@pytest.mark.parametrize(("outcome", "event_name"), [("succeeded", "CommandSucceeded"),
                                                     ("failed", "CommandFailed")])
def test_an_outcome_straight_from_queued_ends_the_command(outcome: str,
                                                          event_name: str) -> None:
    quick = command()
    assert quick.acknowledged(outcome, "t1", "why") is True
    assert recorded(quick) == [event_name]
    assert (quick.state, quick.detail, quick.final) == (outcome, "why", True)
    assert [e["state"] for e in quick.history] == ["queued", outcome]  # delivered skipped
    assert quick.acknowledged("received", "t2") is False
    assert quick.state == outcome


def test_a_failed_command_stays_failed() -> None:
    failed = command()
    failed.sent("t1")
    failed.acknowledged("failed", "t2", "busy")
    failed.collect_events()
    assert failed.acknowledged("succeeded", "t3") is False
    assert failed.expire(NOW + timedelta(days=30)) is False
    assert (failed.state, failed.detail) == ("failed", "busy")
    assert recorded(failed) == []


def test_an_unknown_outcome_changes_nothing() -> None:
    moving = command()
    version = moving.version
    assert moving.acknowledged("maybe", "t1") is False
    assert moving.acknowledged("sent", "t1") is False
    assert (moving.state, moving.version) == ("queued", version)
    assert recorded(moving) == []


def test_a_command_expires_at_its_deadline_not_before_and_not_once_ended() -> None:
    waiting = command(deadline_seconds=60)
    assert waiting.expire(NOW + timedelta(seconds=59)) is False
    assert waiting.state == "queued" and recorded(waiting) == []
    assert waiting.expire(NOW + timedelta(seconds=60)) is True
    assert (waiting.state, waiting.final) == ("expired", True)
    assert recorded(waiting) == ["CommandExpired"]
    assert waiting.history[-1]["at"] == (NOW + timedelta(seconds=60)).isoformat()
    assert waiting.expire(NOW + timedelta(seconds=61)) is False  # expired once
    assert waiting.acknowledged("succeeded", "t1") is False  # an ack after it expired
    assert recorded(waiting) == []
    late = command(deadline_seconds=60)
    late.sent("t1")
    late.collect_events()
    assert late.expire(NOW + timedelta(hours=1)) is True  # long after: expired too
    assert recorded(late) == ["CommandExpired"]
    done = command(deadline_seconds=60)
    done.acknowledged("succeeded", "t1")
    done.collect_events()
    assert done.expire(NOW + timedelta(hours=1)) is False
    assert done.state == "succeeded" and recorded(done) == []


def test_a_removed_device_takes_no_command() -> None:
    gone = install()
    gone.remove()
    with pytest.raises(NotFound):
        Command.for_device(gone, "reboot", {}, NOW, 3600)


def test_a_config_sync_s_id_comes_from_its_device_and_cause() -> None:
    assert Command.id_for_sync("d-1", "e-1") == Command.id_for_sync("d-1", "e-1")
    assert Command.id_for_sync("d-1", "e-1") != Command.id_for_sync("d-1", "e-2")
    assert Command.id_for_sync("d-1", "e-1") != Command.id_for_sync("d-2", "e-1")
    device = install()
    wanted = Command.id_for_sync(str(device.id), "e-1")
    assert command(device, command_id=wanted).id == wanted
    assert command(device).id != command(device).id  # asked by hand: a new id each time


def test_kept_autop_commands_merge_by_key_and_an_unchanged_set_is_no_news() -> None:
    device = install()
    device.collect_events()
    assert device.keep_autop(["A.b = 1", "C = 2"]) is True
    assert device.autop == ["A.b = 1", "C = 2"]
    assert recorded(device) == ["AutopKept"]
    assert device.keep_autop(["C=3", "D = x", "A.b = 4"]) is True
    assert device.autop == ["A.b = 4", "C = 3", "D = x"]  # last wins, first order kept
    device.collect_events()
    version = device.version
    assert device.keep_autop(["C = 3", "D=x"]) is False
    assert device.keep_autop([]) is False
    assert device.version == version and recorded(device) == []
    assert device.autop == ["A.b = 4", "C = 3", "D = x"]


# --- the events of remote operations, as the contract reads them ------------------------------

ENVELOPE = {"originator_id", "originator_version", "originator_topic", "timestamp"}


def as_sent(event: Any) -> dict[str, Any]:
    data = {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in event.__dict__.items()}
    data["timestamp"] = event.timestamp.isoformat()
    return data


def a_history_of_commands() -> list[Any]:
    """Every event of a command's life and of kept Autop commands, null details included."""
    device = install()
    device.collect_events()
    done = Command.for_device(device, "connection_type", {"connection_type": "TLS"}, NOW, 60)
    done.sent("t1")
    done.acknowledged("received", "t2")
    done.acknowledged("succeeded", "t3")
    failed = command(device)
    failed.acknowledged("failed", "t4")
    expired = command(device, deadline_seconds=60)
    expired.expire(NOW + timedelta(hours=1))
    device.keep_autop(["A.b = 1"])
    return [*done.collect_events(), *failed.collect_events(), *expired.collect_events(),
            *device.collect_events()]


def test_every_command_event_loads_whole_by_its_schema() -> None:
    history = a_history_of_commands()
    assert [type(e).__name__ for e in history] == [
        "CommandQueued", "CommandSent", "CommandDelivered", "CommandSucceeded", "CommandFailed",
        "CommandExpired", "AutopKept"]
    for event in history:
        data = as_sent(event)
        loaded = EVENT_SCHEMAS[type(event).__name__]().load(data)
        assert loaded == {k: v for k, v in data.items() if k not in ENVELOPE}, data


def test_every_field_of_a_command_event_is_required_but_its_detail() -> None:
    for event in a_history_of_commands():
        schema = EVENT_SCHEMAS[type(event).__name__]()
        data = as_sent(event)
        for name in set(data) - ENVELOPE - {"detail"}:
            with pytest.raises(ValidationError) as refused:
                schema.load({k: v for k, v in data.items() if k != name})
            assert list(refused.value.messages) == [name], (type(event).__name__, name)
