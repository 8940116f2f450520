"""The devices' traffic rules on an SQLite file, with a fake clock and fake transitions: what a
batch refuses and why, what presence keeps, when a device counts as come online or gone
offline, and what the retention prunes. (The same code on PostgreSQL and the broker:
tests/integration/test_device_traffic.py.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from concierge.ingest import Incoming, refusal_counts
from services.devices.projections import device_metadata
from services.devices.projections import devices as device_rows
from services.devices.traffic import (
    INGEST,
    OfflineDetector,
    TrafficIngest,
    acks,
    call_log,
    create_tables,
    door_log,
    presence,
    status_of,
)

NOW = 1_800_000_000.0
MAC, OTHER = "0C11050B9814", "0C11050B9815"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Transitions:
    """Stands in for the devices application: records what it was asked, answers every id."""

    def __init__(self) -> None:
        self.online: list[dict[str, float]] = []
        self.offline: list[dict[str, float]] = []

    def came_online(self, seen: dict[str, float]) -> list[str]:
        self.online.append(dict(seen))
        return list(seen)

    def went_offline(self, silent: dict[str, float]) -> list[str]:
        self.offline.append(dict(silent))
        return list(silent)


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    made = create_engine(f"sqlite:///{tmp_path / 'devices.db'}")
    device_metadata.create_all(made)
    create_tables(made)
    with made.begin() as conn:
        for device, mac in (("d-1", MAC), ("d-2", OTHER)):
            conn.execute(device_rows.insert().values(
                id=device, installer_id="i", community_id="c", building_id="b",
                apartment_id=None, area="building", type=0, mac=mac, name=device, sip="59",
                created_at="2026-12-07T00:00:00Z", search=device))
    return made


def body(kind: str = "heartbeat", at: float = NOW, **fields: Any) -> bytes:
    from datetime import UTC, datetime

    sent = datetime.fromtimestamp(at, UTC).isoformat()
    extra = {"door": {"relay": 1, "access_method": "pin", "credential_kind": "pin",
                      "result": "success", "time": sent},
             "call": {"caller": "5900000001", "callee": "101", "start": sent, "duration": 3,
                      "answered": True},
             "status": {"model": "R29C", "firmware": "29.30.2.805", "ip": "10.0.0.2",
                        "uptime": 5}}.get(kind, {})
    return json.dumps({"v": 1, "id": "m-1", "at": sent, **extra, **fields}).encode()


def count(engine: Any, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def test_a_batch_refuses_each_bad_message_with_its_reason_and_keeps_the_rest(
        engine: Any) -> None:
    clock, moves = Clock(), Transitions()
    ingest = TrafficIngest(engine, moves.came_online, replay_seconds=3600, clock=clock)
    batch = [
        Incoming(f"{MAC}.heartbeat", body()),
        Incoming(f"{MAC}.heartbeat", b"{broken"),
        Incoming(f"{MAC}.sing", body()),
        Incoming("FFFFFFFFFFFF.heartbeat", body()),
        Incoming(f"{MAC}.heartbeat", body(at=NOW - 3601)),
        Incoming(f"{MAC}.door", body("door", id="door-1")),
        Incoming(f"{MAC}.door", body("door", id="door-1")),
        Incoming(f"{OTHER}.call", body("call", id="call-1")),
        Incoming(f"{OTHER}.status", body("status", firmware="29.30.9.1")),
    ]
    refusals = ingest.handle(batch)
    assert sorted((r.index, r.reason) for r in refusals) == [
        (1, "malformed"), (2, "unknown_kind"), (3, "unknown_mac"), (4, "replayed"),
        (6, "replayed")]
    assert count(engine, door_log) == 1 and count(engine, call_log) == 1
    counts = {row["reason"]: row["count"] for row in refusal_counts(engine, INGEST)}
    assert counts == {"malformed": 1, "unknown_kind": 1, "unknown_mac": 1, "replayed": 2}
    with engine.connect() as conn:
        seen = {row.device_id: row for row in conn.execute(select(presence))}
    assert set(seen) == {"d-1", "d-2"}
    assert seen["d-2"].firmware == "29.30.9.1" and seen["d-1"].firmware is None
    assert all(row.last_seen == NOW for row in seen.values())
    assert moves.online == [{"d-1": NOW, "d-2": NOW}]

    # The same batch again (a redelivery): nothing kept twice, no transition asked again.
    clock.now += 10
    again = ingest.handle(batch)
    assert count(engine, door_log) == 1 and count(engine, call_log) == 1
    assert sorted(r.index for r in again if r.reason == "replayed") == [4, 5, 6, 7]
    assert moves.online == [{"d-1": NOW, "d-2": NOW}]
    with engine.connect() as conn:
        assert conn.execute(select(presence.c.last_seen).where(
            presence.c.device_id == "d-1")).scalar() == NOW + 10


def test_silence_longer_than_the_tolerance_takes_a_device_offline_once(engine: Any) -> None:
    clock, moves = Clock(), Transitions()
    ingest = TrafficIngest(engine, moves.came_online, clock=clock)
    detector = OfflineDetector(engine, moves.went_offline, moves.came_online,
                               offline_after=90, retention_days=30, clock=clock)
    ingest.handle([Incoming(f"{MAC}.heartbeat", body()), Incoming(f"{OTHER}.heartbeat", body())])
    clock.now = NOW + 90
    detector.step()
    assert moves.offline == []  # exactly the tolerance: still online
    ingest.handle([Incoming(f"{OTHER}.heartbeat", body(at=NOW + 90))])
    clock.now = NOW + 91
    detector.step()
    assert moves.offline == [{"d-1": NOW}]
    detector.step()
    assert moves.offline == [{"d-1": NOW}]  # recorded once
    with engine.connect() as conn:
        row = conn.execute(select(presence).where(presence.c.device_id == "d-1")).one()
    assert status_of(row, clock.now, 90)["status"] == "offline"
    ingest.handle([Incoming(f"{MAC}.heartbeat", body(at=NOW + 91))])
    assert moves.online[-1] == {"d-1": NOW + 91}


def test_retention_prunes_old_log_lines_and_removed_devices_presence(engine: Any) -> None:
    clock, moves = Clock(), Transitions()
    ingest = TrafficIngest(engine, moves.came_online, replay_seconds=40 * 86_400, clock=clock)
    detector = OfflineDetector(engine, moves.went_offline, moves.came_online,
                               offline_after=90, retention_days=30, clock=clock)
    ingest.handle([Incoming(f"{MAC}.door", body("door", id="old", at=NOW - 31 * 86_400)),
                   Incoming(f"{MAC}.door", body("door", id="new", at=NOW - 29 * 86_400)),
                   Incoming(f"{OTHER}.heartbeat", body())])
    with engine.begin() as conn:
        conn.execute(device_rows.delete().where(device_rows.c.id == "d-2"))
    removed = detector.prune()
    assert removed == {"devices_door_log": 1, "devices_call_log": 0, "devices_acks": 0,
                       "devices_upgrade_progress": 0, "devices_presence": 1}
    with engine.connect() as conn:
        assert list(conn.execute(select(door_log.c.message_id)).scalars()) == ["new"]


# --- command acknowledgements: kept once, handed to the commands, swept when that failed ------


class Commands:
    """Stands in for the devices application's commands: records the acks it was handed, or
    fails while `down`."""

    def __init__(self) -> None:
        self.handed: list[list[dict[str, Any]]] = []
        self.down = False
        self.expired = 0

    def acknowledged(self, found: list[dict[str, Any]]) -> int:
        if self.down:
            raise RuntimeError("the event store is away")
        self.handed.append([dict(ack) for ack in found])
        return len(found)

    def expire(self) -> int:
        self.expired += 1
        return 0


def ack(message_id: str, command_id: str = "c-1", outcome: str = "succeeded",
        at: float = NOW, detail: str | None = None) -> bytes:
    return body("ack", at=at, id=message_id, command_id=command_id, outcome=outcome,
                detail=detail)


def applied(engine: Any) -> dict[str, bool]:
    with engine.connect() as conn:
        return {row.message_id: bool(row.applied)
                for row in conn.execute(select(acks.c.message_id, acks.c.applied))}


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def test_an_ack_is_kept_once_handed_to_its_command_and_marked_applied(engine: Any) -> None:
    clock, moves, commands = Clock(), Transitions(), Commands()
    ingest = TrafficIngest(engine, moves.came_online, clock=clock,
                           acknowledged=commands.acknowledged)
    batch = [Incoming(f"{MAC}.ack", ack("a-2", "c-1", "succeeded", NOW - 2, "done")),
             Incoming(f"{OTHER}.ack", ack("a-1", "c-2", "received", NOW - 5))]
    assert ingest.handle(batch) == []
    # Oldest first, whatever order the batch brought them in.
    assert commands.handed == [[
        {"command_id": "c-2", "device_id": "d-2", "outcome": "received", "detail": None,
         "at": iso(NOW - 5)},
        {"command_id": "c-1", "device_id": "d-1", "outcome": "succeeded", "detail": "done",
         "at": iso(NOW - 2)}]]
    assert applied(engine) == {"a-1": True, "a-2": True}

    # The same messages again (a redelivery): refused as replays, not handed over again.
    clock.now += 10
    again = ingest.handle(batch)
    assert sorted((r.index, r.reason) for r in again) == [(0, "replayed"), (1, "replayed")]
    assert len(commands.handed) == 1 and count(engine, acks) == 2
    # A new ack (another message id) for the same command is handed over: the command
    # itself decides it is no news.
    ingest.handle([Incoming(f"{MAC}.ack", ack("a-3", "c-1", "succeeded", NOW + 10))])
    assert [[a["command_id"] for a in handed] for handed in commands.handed] == [
        ["c-2", "c-1"], ["c-1"]]
    assert applied(engine) == {"a-1": True, "a-2": True, "a-3": True}


def test_an_ack_the_commands_could_not_take_is_swept_after_the_grace(engine: Any) -> None:
    clock, moves, commands = Clock(), Transitions(), Commands()
    ingest = TrafficIngest(engine, moves.came_online, clock=clock,
                           acknowledged=commands.acknowledged)
    detector = OfflineDetector(engine, moves.went_offline, moves.came_online,
                               offline_after=90, retention_days=30, clock=clock,
                               acknowledged=commands.acknowledged, expire=commands.expire,
                               ack_grace=5.0)
    commands.down = True
    assert ingest.handle([Incoming(f"{MAC}.ack", ack("a-1", "c-1", "failed",
                                                     detail="no space"))]) == []
    assert commands.handed == [] and applied(engine) == {"a-1": False}  # kept, not lost
    commands.down = False
    clock.now = NOW + 5  # not older than the grace yet: the ingest may still be applying it
    assert detector.sweep_acks() == 0
    assert commands.handed == [] and applied(engine) == {"a-1": False}
    clock.now = NOW + 5.5
    assert detector.sweep_acks() == 1
    assert commands.handed == [[{"command_id": "c-1", "device_id": "d-1", "outcome": "failed",
                                 "detail": "no space", "at": iso(NOW)}]]
    assert applied(engine) == {"a-1": True}
    assert detector.sweep_acks() == 0  # applied: swept once
    assert len(commands.handed) == 1


def test_a_sweep_that_fails_again_leaves_the_ack_for_the_next(engine: Any) -> None:
    clock, moves, commands = Clock(), Transitions(), Commands()
    ingest = TrafficIngest(engine, moves.came_online, clock=clock,
                           acknowledged=commands.acknowledged)
    detector = OfflineDetector(engine, moves.went_offline, moves.came_online,
                               offline_after=90, retention_days=30, clock=clock,
                               acknowledged=commands.acknowledged, ack_grace=5.0)
    commands.down = True
    ingest.handle([Incoming(f"{MAC}.ack", ack("a-1"))])
    clock.now = NOW + 60
    assert detector.sweep_acks() == 1
    assert applied(engine) == {"a-1": False}
    commands.down = False
    detector.step()  # the detector's own pass sweeps too
    assert [[a["command_id"] for a in handed] for handed in commands.handed] == [["c-1"]]
    assert applied(engine) == {"a-1": True}


def test_the_detector_s_pass_expires_commands_and_keeps_going_while_many_did(
        engine: Any) -> None:
    clock, moves, commands = Clock(), Transitions(), Commands()
    detector = OfflineDetector(engine, moves.went_offline, moves.came_online,
                               offline_after=90, retention_days=30, clock=clock,
                               expire=commands.expire, batch=3)
    assert detector.step() > 0
    assert commands.expired == 1
    detector.step()
    assert commands.expired == 2
    busy = OfflineDetector(engine, moves.went_offline, moves.came_online,
                           offline_after=90, retention_days=30, clock=clock,
                           expire=lambda: 3, batch=3)
    assert busy.step() == 0.0  # a full batch expired: more may wait
