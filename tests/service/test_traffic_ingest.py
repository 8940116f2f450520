"""The devices' traffic rules on an SQLite file, with a fake clock and fake transitions: what a
batch refuses and why, what presence keeps, when a device counts as come online or gone
offline, and what the retention prunes. (The same code on PostgreSQL and the broker:
tests/integration/test_device_traffic.py.)"""

from __future__ import annotations

import json
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
