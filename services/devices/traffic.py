"""Device traffic in devices: who is online, the door and call logs, and what devices answer to
commands (contracts/traffic.py is the message contract).

Traffic is not events: a heartbeat changes no fact, and thousands arrive each second. It lands in
tables of its own (not read models: a rebuild of the read models from the logs cannot bring it
back, so it never drops them), written one transaction per batch by the chassis' ingest loop
(`concierge.ingest`). Only the transitions are facts: a device heard from while it stood offline
records `DeviceCameOnline`, a device silent for longer than the heartbeat interval times the
tolerance records `DeviceWentOffline` (the offline detector, one replica at a time). The status a
list shows is derived from the last time the device was heard from, never a stored flag.

A redelivered batch changes nothing twice: presence keeps the latest time, a door opening or a
call is kept once per device and message id, and the transitions are checked against the
device's own state before they are recorded.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    inspect,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from concierge.ingest import Incoming, Refusal, count_refusals
from concierge.lists import page_of
from contracts import traffic
from contracts.traffic import Refused, parse, split_key
from services.devices.projections import devices as device_rows

log = logging.getLogger(__name__)

INGEST = "devices.traffic"  # the exchange and queue, after the deployment's prefix
# A message sent longer ago than this is a replay (the ingest's default; settings override).
REPLAY_SECONDS = 86_400.0
# Which device uses a MAC, kept this long in memory: traffic from a MAC whose device was removed
# in the meantime may land on that device for as long (its presence row goes with the next
# prune; a door opening then stays in the log of the community it happened in).
MAC_CACHE_SECONDS = 10.0
MAC_CACHE_SIZE = 500_000

traffic_metadata = MetaData()
presence = Table(
    "devices_presence", traffic_metadata,
    Column("device_id", String(36), primary_key=True),
    Column("mac", String(12), nullable=False),
    Column("last_seen", Float, nullable=False),  # epoch seconds the cloud last heard it
    Column("reported", String(8)),  # the last transition recorded: online, offline or none
    Column("model", String(64)),
    Column("firmware", String(64)),
    Column("ip", String(45)),
    Column("uptime", BigInteger),
)
Index("ix_devices_presence_reported", presence.c.reported, presence.c.last_seen)


def _log_table(name: str, *columns: Column[Any]) -> Table:
    table = Table(
        name, traffic_metadata,
        Column("device_id", String(36), primary_key=True),
        Column("message_id", String(64), primary_key=True),
        Column("mac", String(12), nullable=False),
        Column("community_id", String(36), nullable=False),
        Column("building_id", String(36)),
        Column("apartment_id", String(36)),
        Column("time", Float, nullable=False),
        *columns,
    )
    for scope in ("community_id", "building_id", "apartment_id", "device_id"):
        Index(f"ix_{name}_{scope}", table.c[scope], table.c.time, table.c.message_id)
    Index(f"ix_{name}_time", table.c.time)
    return table


door_log = _log_table(
    "devices_door_log",
    Column("relay", Integer, nullable=False),
    Column("access_method", String(24), nullable=False),
    Column("credential_kind", String(16), nullable=False),
    Column("result", String(8), nullable=False),
)
call_log = _log_table(
    "devices_call_log",
    Column("caller", String(64), nullable=False),
    Column("callee", String(64), nullable=False),
    Column("duration", Integer, nullable=False),
    Column("answered", Boolean, nullable=False),
)
# What devices answered about commands and upgrades, for the commands and firmware that read them.
acks = _log_table(
    "devices_acks",
    Column("command_id", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", String(256)),
    # Whether the command it names has taken it: the ingest applies an ack right after its
    # batch commits; one a crash left unapplied is applied by the sweep (OfflineDetector).
    Column("applied", Boolean, nullable=False),
)
Index("ix_devices_acks_unapplied", acks.c.applied, acks.c.time)
upgrades = _log_table(
    "devices_upgrade_progress",
    Column("command_id", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("progress", Integer, nullable=False),
)
LOGS = {"door": door_log, "call": call_log, "ack": acks, "upgrade": upgrades}


# One statement for a whole batch on PostgreSQL: arrays in, the previous transitions out.
_PRESENCE_UPSERT = """
INSERT INTO devices_presence AS p (device_id, mac, last_seen, model, firmware, ip, uptime)
SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[], %s::text[], %s::text[], %s::text[],
                     %s::int8[])
ON CONFLICT (device_id) DO UPDATE SET
    mac = excluded.mac, last_seen = greatest(p.last_seen, excluded.last_seen),
    model = coalesce(excluded.model, p.model), firmware = coalesce(excluded.firmware, p.firmware),
    ip = coalesce(excluded.ip, p.ip), uptime = coalesce(excluded.uptime, p.uptime)
RETURNING device_id, reported
"""


def create_tables(engine: Engine) -> None:
    from concierge.ingest import dead_letter_metadata

    with engine.begin() as conn:
        have = inspect(conn).get_table_names()
        if acks.name in have and "applied" not in {
                c["name"] for c in inspect(conn).get_columns(acks.name)}:
            # Acks kept before commands took them: applied, there is nothing to move.
            conn.execute(text(f"ALTER TABLE {acks.name} ADD COLUMN applied BOOLEAN "
                              "NOT NULL DEFAULT TRUE"))
        traffic_metadata.create_all(conn)
        dead_letter_metadata.create_all(conn)


def _insert(conn: Connection, table: Table) -> Any:
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def _row_of(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """A log row's own columns from a message of `kind`."""
    if kind == "door":
        return {"time": data["time"].timestamp(), "relay": data["relay"],
                "access_method": data["access_method"],
                "credential_kind": data["credential_kind"], "result": data["result"]}
    if kind == "call":
        return {"time": data["start"].timestamp(), "caller": data["caller"],
                "callee": data["callee"], "duration": data["duration"],
                "answered": data["answered"]}
    if kind == "ack":
        return {"time": data["at"].timestamp(), "command_id": data["command_id"],
                "outcome": data["outcome"], "detail": data["detail"], "applied": False}
    return {"time": data["at"].timestamp(), "command_id": data["command_id"],
            "version": data["version"], "state": data["state"], "progress": data["progress"]}


Acknowledge = Callable[[list[dict[str, Any]]], int]


def _no_commands(acks: list[dict[str, Any]]) -> int:
    return 0


class TrafficIngest:
    """Takes a batch of traffic in one transaction (`handle`), then records the transitions
    it showed. `came_online(seen)` records `DeviceCameOnline` for devices not online yet
    (device id -> when it was heard) and answers the ids now online; `acknowledged(acks)`
    moves the commands the batch's new acks name (command id, device id, outcome, at,
    detail)."""

    def __init__(self, engine: Engine, came_online: Callable[[dict[str, float]], Iterable[str]],
                 replay_seconds: float = REPLAY_SECONDS,
                 clock: Callable[[], float] = time.time,
                 acknowledged: Acknowledge = _no_commands) -> None:
        self.engine = engine
        self.came_online = came_online
        self.acknowledged = acknowledged
        self.replay_seconds = replay_seconds
        self.clock = clock
        self._known: dict[str, tuple[float, dict[str, Any]]] = {}  # MAC -> (until, device)

    def handle(self, batch: list[Incoming]) -> list[Refusal]:
        now = self.clock()
        refusals: list[Refusal] = []
        taken: list[tuple[int, str, str, dict[str, Any]]] = []
        for index, message in enumerate(batch):
            try:
                mac, kind = split_key(message.routing_key)
                data = parse(kind, message.body)
            except Refused as refused:
                refusals.append(Refusal(index, refused.reason, refused.detail))
                continue
            if data["at"].timestamp() < now - self.replay_seconds:
                refusals.append(Refusal(index, traffic.REPLAYED,
                                        f"sent {data['at'].isoformat()}, before the replay "
                                        "window"))
                continue
            taken.append((index, mac, kind, data))
        with self.engine.begin() as conn:
            known = self._devices(conn, {mac for _, mac, _, _ in taken}, now)
            seen: dict[str, dict[str, Any]] = {}
            logs: dict[str, dict[tuple[str, str], tuple[int, dict[str, Any]]]] = {}
            for index, mac, kind, data in taken:
                device = known.get(mac)
                if device is None:
                    refusals.append(Refusal(index, traffic.UNKNOWN_MAC,
                                            f"{mac}: no device has this MAC"))
                    continue
                entry = seen.get(device["device_id"])
                if entry is None:
                    entry = seen[device["device_id"]] = {
                        "device_id": device["device_id"], "mac": mac, "last_seen": now,
                        "model": None, "firmware": None, "ip": None, "uptime": None}
                if kind == "status":
                    entry.update(model=data["model"], firmware=data["firmware"],
                                 ip=str(data["ip"]), uptime=data["uptime"])
                elif kind in LOGS:
                    key = (device["device_id"], data["id"])
                    rows = logs.setdefault(kind, {})
                    if key in rows:
                        refusals.append(Refusal(index, traffic.REPLAYED,
                                                f"message {data['id']} twice in one batch"))
                        continue
                    rows[key] = (index, {**device, "message_id": data["id"],
                                         **_row_of(kind, data)})
            waiting = self._upsert_presence(conn, list(seen.values()))
            fresh_acks: list[dict[str, Any]] = []
            for kind, rows in logs.items():
                refused = self._insert_log(conn, LOGS[kind], rows)
                refusals += refused
                if kind == "ack":
                    dropped = {refusal.index for refusal in refused}
                    fresh_acks = [row for index, row in rows.values() if index not in dropped]
            count_refusals(conn, INGEST, refusals)
        if waiting:
            self._came_online({d: seen[d]["last_seen"] for d in waiting})
        if fresh_acks:
            apply_acks(self.engine, self.acknowledged, fresh_acks)
        return refusals

    def _came_online(self, seen: dict[str, float]) -> None:
        online = list(self.came_online(seen))
        if online:
            with self.engine.begin() as conn:
                conn.execute(update(presence).where(presence.c.device_id.in_(online))
                             .values(reported="online"))

    def _devices(self, conn: Connection, macs: set[str], now: float
                 ) -> dict[str, dict[str, Any]]:
        """The devices using these MACs: from the devices list, kept for `MAC_CACHE_SECONDS`
        (a MAC no device uses is asked for again each time, so a new device counts at once)."""
        found: dict[str, dict[str, Any]] = {}
        missing = []
        for mac in macs:
            cached = self._known.get(mac)
            if cached is not None and cached[0] > now:
                found[mac] = cached[1]
            else:
                missing.append(mac)
        if missing:
            d = device_rows
            rows = conn.execute(select(d.c.id, d.c.mac, d.c.community_id, d.c.building_id,
                                       d.c.apartment_id).where(d.c.mac.in_(missing)))
            if len(self._known) > MAC_CACHE_SIZE:
                self._known.clear()
            for row in rows:
                device = {"device_id": row.id, "mac": row.mac, "community_id": row.community_id,
                          "building_id": row.building_id, "apartment_id": row.apartment_id}
                found[row.mac] = device
                self._known[row.mac] = (now + MAC_CACHE_SECONDS, device)
        return found

    @staticmethod
    def _upsert_presence(conn: Connection, rows: list[dict[str, Any]]) -> list[str]:
        """Record when each device was heard (and its status); the devices whose last
        recorded transition is not "online"."""
        if not rows:
            return []
        if conn.dialect.name == "postgresql":
            cursor = conn.connection.driver_connection.cursor()
            cursor.execute(_PRESENCE_UPSERT, [[row[name] for row in rows] for name in (
                "device_id", "mac", "last_seen", "model", "firmware", "ip", "uptime")])
            return [device for device, reported in cursor.fetchall() if reported != "online"]
        ids = [row["device_id"] for row in rows]
        online = set(conn.execute(select(presence.c.device_id).where(
            presence.c.device_id.in_(ids), presence.c.reported == "online")).scalars())
        statement = sqlite_insert(presence)
        new = statement.excluded
        conn.execute(statement.on_conflict_do_update(
            index_elements=[presence.c.device_id],
            set_={"mac": new.mac,
                  "last_seen": func.max(presence.c.last_seen, new.last_seen),
                  **{name: func.coalesce(new[name], presence.c[name])
                     for name in ("model", "firmware", "ip", "uptime")}}),
            [{**row, "reported": None} for row in rows])
        return [d for d in ids if d not in online]

    @staticmethod
    def _insert_log(conn: Connection, table: Table,
                    rows: dict[tuple[str, str], tuple[int, dict[str, Any]]]) -> list[Refusal]:
        """Keep each message once: one already kept is a replay."""
        if conn.dialect.name == "postgresql":
            names = [column.name for column in table.columns]
            cursor = conn.connection.driver_connection.cursor()
            cursor.execute(_log_insert(table), [[row[name] for _index, row in rows.values()]
                                                for name in names])
            kept = set(cursor.fetchall())
            return [Refusal(index, traffic.REPLAYED, f"message {key[1]} was taken before")
                    for key, (index, _row) in rows.items() if key not in kept]
        kept = set(conn.execute(select(table.c.device_id, table.c.message_id).where(
            tuple_(table.c.device_id, table.c.message_id).in_(list(rows)))).tuples())
        refusals = [Refusal(index, traffic.REPLAYED, f"message {key[1]} was taken before")
                    for key, (index, _row) in rows.items() if key in kept]
        fresh = [row for key, (_index, row) in rows.items() if key not in kept]
        if fresh:
            conn.execute(_insert(conn, table).on_conflict_do_nothing(), fresh)
        return refusals


def apply_acks(engine: Engine, acknowledged: Acknowledge, rows: list[dict[str, Any]]) -> None:
    """Hand kept acks to the commands they name (oldest first), then mark them applied. A
    failure leaves them unapplied for the sweep: an ack is never lost, and applying one twice
    moves nothing twice (a command's states only go forward)."""
    rows = sorted(rows, key=lambda row: row["time"])
    try:
        acknowledged([{"command_id": row["command_id"], "device_id": row["device_id"],
                       "outcome": row["outcome"], "detail": row["detail"],
                       "at": datetime.fromtimestamp(row["time"], UTC).isoformat()}
                      for row in rows])
        with engine.begin() as conn:
            conn.execute(update(acks).where(tuple_(acks.c.device_id, acks.c.message_id).in_(
                [(row["device_id"], row["message_id"]) for row in rows])).values(applied=True))
    except Exception as exc:  # the sweep applies them later
        log.warning("%d acks not applied yet (%s: %s)", len(rows), type(exc).__name__, exc)


_ARRAY_TYPES = {String: "text", Float: "float8", Integer: "int4", BigInteger: "int8",
                Boolean: "bool"}


@functools.cache
def _log_insert(table: Table) -> str:
    """A log's whole batch in one statement on PostgreSQL; it answers the rows it kept."""
    names = [column.name for column in table.columns]
    arrays = ", ".join(f"%s::{_ARRAY_TYPES[type(column.type)]}[]" for column in table.columns)
    return (f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays}) "
            "ON CONFLICT DO NOTHING RETURNING device_id, message_id")


class OfflineDetector:
    """Turns silence into `DeviceWentOffline`: a device last heard more than `offline_after`
    seconds ago whose last transition was "online". `went_offline(silent)` records them (device
    id -> last heard) and answers the ids now offline. It also prunes the logs older than
    `retention_days` now and then, expires the commands past their deadline (`expire`), and
    applies acks left unapplied (`acknowledged`). One replica runs it at a time (the caller's
    leader loop)."""

    def __init__(self, engine: Engine, went_offline: Callable[[dict[str, float]], Iterable[str]],
                 came_online: Callable[[dict[str, float]], Iterable[str]],
                 offline_after: float, retention_days: float,
                 clock: Callable[[], float] = time.time, batch: int = 500,
                 prune_every: float = 3600.0, acknowledged: Acknowledge = _no_commands,
                 expire: Callable[[], int] = lambda: 0, ack_grace: float = 5.0) -> None:
        self.engine = engine
        self.acknowledged = acknowledged
        self.expire = expire
        self.ack_grace = ack_grace
        self.went_offline = went_offline
        self.came_online = came_online
        self.offline_after = offline_after
        self.retention_days = retention_days
        self.clock = clock
        self.batch = batch
        self.prune_every = prune_every
        self._pruned_at = float("-inf")

    def step(self) -> float:
        """One pass: the seconds to wait before the next (0 when there is more to do)."""
        now = self.clock()
        threshold = now - self.offline_after
        with self.engine.connect() as conn:
            silent = dict(conn.execute(
                select(presence.c.device_id, presence.c.last_seen)
                .where(presence.c.reported == "online", presence.c.last_seen < threshold)
                .order_by(presence.c.last_seen).limit(self.batch)).tuples().all())
        if silent:
            offline = list(self.went_offline(silent))
            with self.engine.begin() as conn:
                if offline:
                    conn.execute(update(presence).where(presence.c.device_id.in_(offline))
                                 .values(reported="offline"))
                # Heard from again while this pass recorded their silence: online again.
                back = dict(conn.execute(select(presence.c.device_id, presence.c.last_seen).where(
                    presence.c.device_id.in_(offline),
                    presence.c.last_seen >= threshold)).tuples().all())
            if back:
                online = list(self.came_online(back))
                if online:
                    with self.engine.begin() as conn:
                        conn.execute(update(presence).where(presence.c.device_id.in_(online))
                                     .values(reported="online"))
        if now - self._pruned_at >= self.prune_every:
            self.prune(now)
        swept = self.sweep_acks(now)
        expired = self.expire()
        busy = len(silent) >= self.batch or swept >= self.batch or expired >= self.batch
        return 0.0 if busy else min(1.0, self.offline_after / 10)

    def sweep_acks(self, now: float | None = None) -> int:
        """Apply the acks that a crash (or a failed command) left unapplied, once they are
        older than the grace (the ingest applies the others itself, at once)."""
        now = self.clock() if now is None else now
        with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(
                select(acks).where(acks.c.applied.is_(False), acks.c.time < now - self.ack_grace)
                .order_by(acks.c.time).limit(self.batch))]
        if rows:
            apply_acks(self.engine, self.acknowledged, rows)
        return len(rows)

    def prune(self, now: float | None = None) -> dict[str, int]:
        """Drop the log lines older than the retention, and the presence of removed devices."""
        now = self.clock() if now is None else now
        self._pruned_at = now
        cutoff = now - self.retention_days * 86_400
        removed: dict[str, int] = {}
        with self.engine.begin() as conn:
            for table in LOGS.values():
                removed[table.name] = conn.execute(
                    delete(table).where(table.c.time < cutoff)).rowcount or 0
            removed[presence.name] = conn.execute(delete(presence).where(
                presence.c.device_id.not_in(select(device_rows.c.id)))).rowcount or 0
        if any(removed.values()):
            log.info("traffic retention: %s", removed)
        return removed


def status_of(row: Any, now: float, offline_after: float) -> dict[str, Any]:
    """What a device list shows of a device's traffic (presence row or None)."""
    if row is None:
        return {"status": "offline", "last_connection": None, "firmware": None, "ip": None,
                "model": None}
    return {"status": "online" if row.last_seen >= now - offline_after else "offline",
            "last_connection": _iso(row.last_seen), "firmware": row.firmware, "ip": row.ip,
            "model": row.model}


def presence_of(conn: Connection, device_ids: Iterable[str]) -> dict[str, Any]:
    ids = list(device_ids)
    if not ids:
        return {}
    return {row.device_id: row for row in conn.execute(
        select(presence).where(presence.c.device_id.in_(ids)))}


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


LOG_COLUMNS = {
    "door": ("relay", "access_method", "credential_kind", "result"),
    "call": ("caller", "callee", "duration", "answered"),
}


def log_page(engine: Engine, kind: str, scope: str, scope_id: str, since: float | None,
             until: float | None, page: int, per_page: int) -> dict[str, Any]:
    """A page of the door or call log of a community, building, APT or device, newest first,
    within [since, until)."""
    table = LOGS[kind]
    query = select(table).where(table.c[f"{scope}_id"] == scope_id)
    if since is not None:
        query = query.where(table.c.time >= since)
    if until is not None:
        query = query.where(table.c.time < until)
    time_name = "time" if kind == "door" else "start"

    def shape(row: Any) -> dict[str, Any]:
        return {"device_id": row.device_id, "mac": row.mac, "message_id": row.message_id,
                "community_id": row.community_id, "building_id": row.building_id,
                "apartment_id": row.apartment_id, time_name: _iso(row.time),
                **{name: row[name] for name in LOG_COLUMNS[kind]}}

    with engine.connect() as conn:
        return page_of(conn, query, [table.c.time, table.c.device_id, table.c.message_id],
                       True, page, per_page, lambda row: shape(row._mapping))
