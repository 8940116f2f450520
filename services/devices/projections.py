"""Devices' read models: the MAC library and the device lists, with the sites' names they show.

Both lists follow the residents list (docs/chassis.md, "Lists that stay flat as sites grow"): an
index per sort that starts with the list's scope, `concierge.lists.page_of`, totals kept per
scope by the handlers, and a search column (lower-case name, MAC and SIP of a device; the MAC of
a library entry) read through a trigram index. Building names, APT numbers and residents come
from topology's events into tables of their own, read by key for a page's rows only.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from marshmallow import Schema, fields, validate
from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, func, select
from sqlalchemy.engine import Connection, Engine

from concierge.lists import containing, page_of, sort_field, sort_key, trigram_index
from concierge.projection import ProjectFn, ReadModel, Rows
from contracts import fields as contract_fields
from contracts.devices import (
    COMMAND_STATES,
    DEVICE_SORTS,
    DEVICE_TYPES,
    MAC_SORTS,
    THIRD_PARTY_SORTS,
)

Envelope = dict[str, Any]
PER_PAGE_DEFAULT = 10
PER_PAGE_MAX = 100
PAGE_MAX = 100_000
Q_MAX = 128
STATUSES = ("online", "offline")


class HistoryQuery(Schema):
    """A page of a device's history, oldest first."""

    page = fields.Integer(load_default=1, validate=validate.Range(1, PAGE_MAX))
    per_page = fields.Integer(load_default=PER_PAGE_DEFAULT,
                              validate=validate.Range(1, PER_PAGE_MAX))


class _ListQuery(HistoryQuery):
    q = contract_fields.Text(load_default=None, allow_none=True,
                             validate=validate.Length(max=Q_MAX))


class MacListQuery(_ListQuery):
    """MAC Library: newest first by default, search by MAC (any part, any separators)."""

    sort = sort_field(MAC_SORTS, "-created_at")
    in_use = fields.Boolean(load_default=None, allow_none=True)


class TrafficLogQuery(HistoryQuery):
    """A page of a door or call log, newest first, within [from, to)."""

    since = fields.AwareDateTime(load_default=None)
    until = fields.AwareDateTime(load_default=None)


class DeviceListQuery(_ListQuery):
    """Intercom devices of an area: search by MAC, name or SIP; sort by name or created time
    (the manual's two), or MAC and SIP."""

    sort = sort_field(DEVICE_SORTS, "-created_at")
    type = fields.Integer(load_default=None, allow_none=True,
                          validate=validate.OneOf(tuple(DEVICE_TYPES)))



def _instant(value: Any) -> str:
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _mac_search(text: str) -> str:
    """What a MAC search looks for: the typed text without separators, upper-case."""
    return "".join(ch for ch in text if ch not in ":- ").upper()


# --- the MAC library ---------------------------------------------------------------------------

mac_metadata = MetaData()
macs = Table(
    "devices_macs", mac_metadata,
    Column("id", String(36), primary_key=True),  # the MAC's stream
    Column("mac", String(12), nullable=False),
    Column("installer_id", String(36), nullable=False),
    Column("distributor_id", String(36)),
    Column("device_id", String(36)),
    Column("created_at", String(40), nullable=False),
)
Index("ix_devices_macs_by_mac", macs.c.installer_id, macs.c.mac, macs.c.id)
Index("ix_devices_macs_by_created_at", macs.c.installer_id, macs.c.created_at, macs.c.mac)
trigram_index(macs, "ix_devices_macs_search", macs.c.mac)
mac_totals = Table(
    "devices_mac_totals", mac_metadata,
    Column("installer_id", String(36), primary_key=True),
    Column("macs", Integer, nullable=False),
)
MAC_ORDERS = {"mac": [macs.c.mac], "created_at": [macs.c.created_at, macs.c.mac]}  # + id


def _move(rows: Rows, table: Table, key_column: str, count_column: str, key: str,
          delta: int) -> None:
    found = rows.get(table, key)
    total = (found[count_column] if found else 0) + delta
    if total:
        rows.put(table, **{key_column: key, count_column: total})
    else:
        rows.delete(table, key)


class MacLibraryView(ReadModel):
    """MAC Library: each installer's MACs, whether a device uses them, and how many it has."""

    name = "devices_mac_library"
    version = 1
    metadata = mac_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {"devices": {"MacRegistered": self.registered,
                            "MacRegisteredAgain": self.registered,
                            "MacAssigned": self.assigned, "MacFreed": self.freed,
                            "MacReleased": self.released}}

    @staticmethod
    def prefetch(rows: Rows, envelopes: list[Envelope]) -> None:
        # A rebuild hands over every event of the log, some as bare positions: ours only.
        ours = [e for e in envelopes if e.get("type") in _MAC_EVENTS]
        rows.prefetch(macs, [e["stream_id"] for e in ours])
        rows.prefetch(mac_totals, [str(e["data"]["installer_id"]) for e in ours
                                   if e["data"].get("installer_id")])

    @staticmethod
    def registered(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        if rows.get(macs, env["stream_id"]) is not None:
            return
        rows.put(macs, id=env["stream_id"], mac=data["mac"],
                 installer_id=str(data["installer_id"]),
                 distributor_id=_text(data.get("distributor_id")), device_id=None,
                 created_at=_instant(env["occurred_at"]))
        _move(rows, mac_totals, "installer_id", "macs", str(data["installer_id"]), 1)

    @staticmethod
    def assigned(rows: Rows, env: Envelope) -> None:
        rows.update(macs, env["stream_id"], device_id=str(env["data"]["device_id"]))

    @staticmethod
    def freed(rows: Rows, env: Envelope) -> None:
        rows.update(macs, env["stream_id"], device_id=None)

    @staticmethod
    def released(rows: Rows, env: Envelope) -> None:
        found = rows.get(macs, env["stream_id"])
        if found is None:
            return
        rows.delete(macs, env["stream_id"])
        _move(rows, mac_totals, "installer_id", "macs", found["installer_id"], -1)


_MAC_EVENTS = frozenset(MacLibraryView().handlers()["devices"])


def _mac_item(row: Any) -> dict[str, Any]:
    return {"id": row.id, "mac": row.mac, "installer_id": row.installer_id,
            "device_id": row.device_id, "in_use": row.device_id is not None,
            "created_at": row.created_at}


# --- the device lists --------------------------------------------------------------------------

device_metadata = MetaData()
devices = Table(
    "devices_devices", device_metadata,
    Column("id", String(36), primary_key=True),
    Column("installer_id", String(36), nullable=False),
    Column("community_id", String(36), nullable=False),
    Column("building_id", String(36)),
    Column("apartment_id", String(36)),
    Column("area", String(16), nullable=False),
    Column("type", Integer, nullable=False),
    Column("mac", String(12), nullable=False),
    Column("name", String(64), nullable=False),
    Column("sip", String(16), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("search", String(200), nullable=False),
)
DEVICE_ORDERS = {"name": [func.lower(devices.c.name)], "mac": [devices.c.mac],
                 "sip": [devices.c.sip], "created_at": [devices.c.created_at]}
for _key, _expressions in DEVICE_ORDERS.items():
    Index(f"ix_devices_devices_by_{_key}", devices.c.community_id, *_expressions, devices.c.id)
Index("ix_devices_devices_mac", devices.c.mac)  # the traffic ingest's lookup
Index("ix_devices_devices_building", devices.c.building_id, devices.c.created_at, devices.c.id)
Index("ix_devices_devices_apartment", devices.c.apartment_id, devices.c.created_at,
      devices.c.id)
trigram_index(devices, "ix_devices_devices_search", devices.c.search)
# How many devices each scope holds (a community, a building, an APT): a list's total.
device_totals = Table(
    "devices_device_totals", device_metadata,
    Column("scope_id", String(36), primary_key=True),
    Column("devices", Integer, nullable=False),
)
# The names a device list shows beside each device, from topology's events.
site_buildings = Table(
    "devices_site_buildings", device_metadata,
    Column("id", String(36), primary_key=True),
    Column("community_id", String(36), nullable=False),
    Column("name", String(128), nullable=False),
)
site_apartments = Table(
    "devices_site_apartments", device_metadata,
    Column("id", String(36), primary_key=True),
    Column("number", String(16), nullable=False),
    Column("name", String(64)),
    Column("first_name", String(64)),
    Column("last_name", String(64)),
)


# Third-party cameras and locks, per area (a camera's address and login are not kept here).
third_party = Table(
    "devices_third_party", device_metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("installer_id", String(36), nullable=False),
    Column("community_id", String(36), nullable=False),
    Column("building_id", String(36)),
    Column("apartment_id", String(36)),
    Column("area", String(16), nullable=False),
    Column("name", String(64), nullable=False),
    Column("brand", String(16)),
    Column("lock_id", String(64)),
    Column("linked_device_id", String(36)),
    Column("created_at", String(40), nullable=False),
)
Index("ix_devices_third_party_by_created_at", third_party.c.community_id, third_party.c.kind,
      third_party.c.created_at, third_party.c.id)


def _search_text(name: str, mac: str, sip: str) -> str:
    return "\n".join((name.lower(), mac.lower(), sip))


def _scopes(row: dict[str, Any]) -> list[str]:
    return [s for s in (row["community_id"], row.get("building_id"), row.get("apartment_id"))
            if s]


class DevicesView(ReadModel):
    """Intercom devices per community, building and APT, with the sites' names they show."""

    name = "devices_devices"
    version = 3  # 2: third-party cameras and locks; 3: an index by MAC
    metadata = device_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {
            "devices": {"DeviceAdded": self.added, "DeviceEdited": self.edited,
                        "DeviceRemoved": self.removed,
                        "ThirdPartyDeviceAdded": self.third_party_added,
                        "ThirdPartyDeviceEdited": self.third_party_edited,
                        "ThirdPartyDeviceRemoved": self.third_party_removed},
            "topology": {"BuildingAdded": self.building_added,
                         "BuildingEdited": self.building_edited,
                         "BuildingDeleted": self.building_deleted,
                         "ApartmentAdded": self.apartment_added,
                         "ApartmentEdited": self.apartment_edited,
                         "ResidentAdded": self.resident_changed,
                         "ResidentEdited": self.resident_changed,
                         "ApartmentDeleted": self.apartment_deleted},
        }

    @staticmethod
    def prefetch(rows: Rows, envelopes: list[Envelope]) -> None:
        ids, scopes = [], []
        for env in envelopes:
            if env.get("type") in _DEVICE_EVENTS and env["source"] == "devices":
                ids.append(env["stream_id"])
                data = env["data"]
                scopes += [str(data[k]) for k in ("community_id", "building_id", "apartment_id")
                           if data.get(k)]
        rows.prefetch(devices, ids)
        rows.prefetch(device_totals, scopes)

    # -- devices' own events ----------------------------------------------------------------
    @staticmethod
    def added(rows: Rows, env: Envelope) -> None:
        data, device_id = env["data"], env["stream_id"]
        if rows.get(devices, device_id) is not None:
            return
        row = {"id": device_id, "installer_id": str(data["installer_id"]),
               "community_id": str(data["community_id"]),
               "building_id": _text(data.get("building_id")),
               "apartment_id": _text(data.get("apartment_id")), "area": data["area"],
               "type": int(data["type"]), "mac": data["mac"], "name": data["name"],
               "sip": data["sip"], "created_at": _instant(env["occurred_at"]),
               "search": _search_text(data["name"], data["mac"], data["sip"])}
        rows.put(devices, **row)
        for scope in _scopes(row):
            _move(rows, device_totals, "scope_id", "devices", scope, 1)

    @staticmethod
    def edited(rows: Rows, env: Envelope) -> None:
        changes = env["data"].get("changes") or {}
        row = rows.get(devices, env["stream_id"])
        if row is None or "name" not in changes:
            return
        rows.update(devices, env["stream_id"], name=changes["name"],
                    search=_search_text(changes["name"], row["mac"], row["sip"]))

    @staticmethod
    def removed(rows: Rows, env: Envelope) -> None:
        row = rows.get(devices, env["stream_id"])
        if row is None:
            return
        rows.delete(devices, env["stream_id"])
        for scope in _scopes(row):
            _move(rows, device_totals, "scope_id", "devices", scope, -1)

    # -- cameras and locks ------------------------------------------------------------------
    @staticmethod
    def third_party_added(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.put(third_party, id=env["stream_id"], kind=data["kind"],
                 installer_id=str(data["installer_id"]),
                 community_id=str(data["community_id"]),
                 building_id=_text(data.get("building_id")),
                 apartment_id=_text(data.get("apartment_id")), area=data["area"],
                 name=data["name"], brand=data.get("brand"), lock_id=data.get("lock_id"),
                 linked_device_id=_text(data.get("linked_device_id")),
                 created_at=_instant(env["occurred_at"]))

    @staticmethod
    def third_party_edited(rows: Rows, env: Envelope) -> None:
        changes = env["data"].get("changes") or {}
        values = {k: (_text(v) if k == "linked_device_id" else v) for k, v in changes.items()
                  if k in ("name", "linked_device_id")}
        if values:
            rows.update(third_party, env["stream_id"], **values)

    @staticmethod
    def third_party_removed(rows: Rows, env: Envelope) -> None:
        rows.delete(third_party, env["stream_id"])

    # -- topology's events: the names beside each device ------------------------------------
    @staticmethod
    def building_added(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.put(site_buildings, id=env["stream_id"], community_id=str(data["community_id"]),
                 name=data["name"])

    @staticmethod
    def building_edited(rows: Rows, env: Envelope) -> None:
        changes = env["data"].get("changes") or {}
        if "name" in changes:
            rows.update(site_buildings, env["stream_id"], name=changes["name"])

    @staticmethod
    def building_deleted(rows: Rows, env: Envelope) -> None:
        rows.delete(site_buildings, env["stream_id"])

    @staticmethod
    def apartment_added(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.put(site_apartments, id=env["stream_id"], number=data["number"],
                 name=data.get("name"), first_name=None, last_name=None)

    @staticmethod
    def apartment_edited(rows: Rows, env: Envelope) -> None:
        changes = env["data"].get("changes") or {}
        values = {k: changes[k] for k in ("number", "name") if k in changes}
        if values:
            rows.update(site_apartments, env["stream_id"], **values)

    @staticmethod
    def resident_changed(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        values = data.get("changes") if env["type"] == "ResidentEdited" else data
        names = {k: (values or {})[k] for k in ("first_name", "last_name") if k in (values or {})}
        if names:
            rows.update(site_apartments, env["stream_id"], **names)

    @staticmethod
    def apartment_deleted(rows: Rows, env: Envelope) -> None:
        rows.delete(site_apartments, env["stream_id"])


_DEVICE_EVENTS = frozenset({"DeviceAdded", "DeviceEdited", "DeviceRemoved"})  # prefetched


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _device_item(row: Any) -> dict[str, Any]:
    return {"id": row.id, "mac": row.mac, "name": row.name, "type": row.type,
            "type_name": DEVICE_TYPES.get(row.type), "sip": row.sip, "area": row.area,
            "community_id": row.community_id, "building_id": row.building_id,
            "building_name": None, "apartment_id": row.apartment_id, "apartment_number": None,
            "resident": None, "status": "offline", "last_connection": None,
            "firmware": None, "ip": None, "model": None, "created_at": row.created_at}


def _with_sites(conn: Connection, items: list[dict[str, Any]]) -> None:
    """The page's building names, APT numbers and residents, by key (after the limit)."""
    b, a = site_buildings, site_apartments
    names = dict(conn.execute(select(b.c.id, b.c.name).where(
        b.c.id.in_({i["building_id"] for i in items if i["building_id"]}))).tuples().all())
    homes = {row.id: row for row in conn.execute(select(a).where(
        a.c.id.in_({i["apartment_id"] for i in items if i["apartment_id"]})))}
    for item in items:
        item["building_name"] = names.get(item["building_id"])
        home = homes.get(item["apartment_id"])
        if home is not None:
            item["apartment_number"] = home.number
            item["resident"] = " ".join(n for n in (home.first_name, home.last_name)
                                        if n) or None


def _third_party_item(row: Any) -> dict[str, Any]:
    return {"id": row.id, "kind": row.kind, "name": row.name, "area": row.area,
            "community_id": row.community_id, "building_id": row.building_id,
            "apartment_id": row.apartment_id, "brand": row.brand, "lock_id": row.lock_id,
            "linked_device_id": row.linked_device_id, "created_at": row.created_at}


class ThirdPartyListQuery(_ListQuery):
    """Cameras or locks of an area, newest first; search by name."""

    sort = sort_field(THIRD_PARTY_SORTS, "-created_at")


# --- remote operations -------------------------------------------------------------------------

command_metadata = MetaData()
commands = Table(
    "devices_commands", command_metadata,
    Column("id", String(36), primary_key=True),  # the command's stream
    Column("device_id", String(36), nullable=False),
    Column("installer_id", String(36), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("queued_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
    Column("deadline", Float, nullable=False),  # epoch seconds: what the expiry sweep asks for
    Column("detail", String(256)),
)
Index("ix_devices_commands_by_device", commands.c.device_id, commands.c.queued_at, commands.c.id)
Index("ix_devices_commands_open", commands.c.state, commands.c.deadline)
COMMAND_MOVES = {"CommandSent": "sent", "CommandDelivered": "delivered",
                 "CommandSucceeded": "succeeded", "CommandFailed": "failed",
                 "CommandExpired": "expired"}
OPEN_STATES = ("queued", "sent", "delivered")


class CommandQuery(HistoryQuery):
    """A page of a device's commands, newest first; one state or all."""

    state = fields.String(load_default=None, allow_none=True,
                          validate=validate.OneOf(COMMAND_STATES))


class CommandsView(ReadModel):
    """Each device's remote operations and their states, and which are open past their
    deadline (the expiry sweep's question)."""

    name = "devices_commands"
    version = 1
    metadata = command_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {"devices": {"CommandQueued": self.queued,
                            **{kind: self.moved for kind in COMMAND_MOVES}}}

    @staticmethod
    def prefetch(rows: Rows, envelopes: list[Envelope]) -> None:
        rows.prefetch(commands, [e["stream_id"] for e in envelopes
                                 if e.get("type") in _COMMAND_EVENTS])

    @staticmethod
    def queued(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        if rows.get(commands, env["stream_id"]) is not None:
            return
        at = _instant(env["occurred_at"])
        rows.put(commands, id=env["stream_id"], device_id=str(data["device_id"]),
                 installer_id=str(data["installer_id"]), kind=data["kind"], state="queued",
                 queued_at=at, updated_at=at,
                 deadline=dt.datetime.fromisoformat(data["deadline"]).timestamp(), detail=None)

    @staticmethod
    def moved(rows: Rows, env: Envelope) -> None:
        if rows.get(commands, env["stream_id"]) is None:
            return
        detail = env["data"].get("detail")
        rows.update(commands, env["stream_id"], state=COMMAND_MOVES[env["type"]],
                    updated_at=_instant(env["data"].get("at") or env["occurred_at"]),
                    detail=detail[:256] if isinstance(detail, str) else None)


_COMMAND_EVENTS = frozenset(CommandsView().handlers()["devices"])


def _command_item(row: Any) -> dict[str, Any]:
    return {"id": row.id, "device_id": row.device_id, "kind": row.kind, "state": row.state,
            "queued_at": row.queued_at, "updated_at": row.updated_at,
            "deadline": dt.datetime.fromtimestamp(row.deadline, dt.UTC).isoformat(),
            "detail": row.detail}


class DevicesViews:
    """Queries over devices' read models."""

    def __init__(self, engine: Engine, offline_after: float = 90.0) -> None:
        self.engine = engine
        # A device last heard longer ago than this is offline (heartbeat interval x tolerance).
        self.offline_after = offline_after

    def _enrich(self, conn: Connection, items: list[dict[str, Any]]) -> None:
        """A page's site names, then each device's traffic: status, last connection,
        firmware, IP and model (services/devices/traffic.py)."""
        from services.devices.traffic import presence_of, status_of

        _with_sites(conn, items)
        seen = presence_of(conn, (item["id"] for item in items))
        now = time.time()
        for item in items:
            item.update(status_of(seen.get(item["id"]), now, self.offline_after))

    def list_macs(self, installer_id: str, page: int = 1, per_page: int = PER_PAGE_DEFAULT,
                  sort: str = "-created_at", q: str | None = None,
                  in_use: bool | None = None) -> dict[str, Any]:
        key, descending = sort_key(sort, MAC_SORTS)
        m = macs
        query = select(m).where(m.c.installer_id == installer_id)
        text = _mac_search(q or "")
        total = None
        if text:
            query = query.where(containing(m.c.mac, text))
        if in_use is not None:
            query = query.where(m.c.device_id.isnot(None) if in_use else m.c.device_id.is_(None))
        with self.engine.connect() as conn:
            if not text and in_use is None:
                total = int(conn.execute(select(mac_totals.c.macs).where(
                    mac_totals.c.installer_id == installer_id)).scalar() or 0)
            return page_of(conn, query, [*MAC_ORDERS[key], m.c.id], descending, page, per_page,
                           _mac_item, total=total)

    def list_devices(self, community_id: str, building_id: str | None = None,
                     apartment_id: str | None = None, page: int = 1,
                     per_page: int = PER_PAGE_DEFAULT, sort: str = "-created_at",
                     q: str | None = None, type: int | None = None) -> dict[str, Any]:
        key, descending = sort_key(sort, DEVICE_SORTS)
        d = devices
        query = select(d).where(d.c.community_id == community_id)
        scope = community_id
        if building_id:
            query, scope = query.where(d.c.building_id == building_id), building_id
        if apartment_id:
            query, scope = query.where(d.c.apartment_id == apartment_id), apartment_id
        text = " ".join((q or "").split()).lower()
        if text:
            query = query.where(containing(d.c.search, text))
        if type is not None:
            query = query.where(d.c.type == type)
        with self.engine.connect() as conn:
            total = None
            if not text and type is None:
                total = int(conn.execute(select(device_totals.c.devices).where(
                    device_totals.c.scope_id == scope)).scalar() or 0)
            return page_of(conn, query, [*DEVICE_ORDERS[key], d.c.id], descending, page,
                           per_page, _device_item, total=total, enrich=self._enrich)

    def list_third_party(self, kind: str, community_id: str, building_id: str | None = None,
                         apartment_id: str | None = None, page: int = 1,
                         per_page: int = PER_PAGE_DEFAULT, sort: str = "-created_at",
                         q: str | None = None) -> dict[str, Any]:
        key, descending = sort_key(sort, THIRD_PARTY_SORTS)
        t = third_party
        query = select(t).where(t.c.community_id == community_id, t.c.kind == kind)
        if building_id:
            query = query.where(t.c.building_id == building_id)
        if apartment_id:
            query = query.where(t.c.apartment_id == apartment_id)
        text = " ".join((q or "").split()).lower()
        if text:
            query = query.where(containing(func.lower(t.c.name), text))
        order = [func.lower(t.c.name)] if key == "name" else [t.c.created_at]
        with self.engine.connect() as conn:
            return page_of(conn, query, [*order, t.c.id], descending, page, per_page,
                           _third_party_item)

    def traffic_log(self, kind: str, scope: str, scope_id: str, since: float | None,
                    until: float | None, page: int, per_page: int) -> dict[str, Any]:
        from services.devices.traffic import log_page

        return log_page(self.engine, kind, scope, scope_id, since, until, page, per_page)

    def community_of_building(self, building_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(site_buildings.c.community_id).where(
                site_buildings.c.id == building_id)).scalar()

    def list_commands(self, device_id: str, page: int = 1, per_page: int = PER_PAGE_DEFAULT,
                      state: str | None = None) -> dict[str, Any]:
        c = commands
        query = select(c).where(c.c.device_id == device_id)
        if state is not None:
            query = query.where(c.c.state == state)
        with self.engine.connect() as conn:
            return page_of(conn, query, [c.c.queued_at, c.c.id], True, page, per_page,
                           _command_item)

    def open_commands(self, kind: str | None = None, device_ids: list[str] | None = None,
                      due_by: float | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Commands not ended yet: of these devices, of one kind, or past `due_by`."""
        c = commands
        query = select(c.c.id, c.c.device_id, c.c.kind, c.c.state).where(
            c.c.state.in_(OPEN_STATES))
        if kind is not None:
            query = query.where(c.c.kind == kind)
        if device_ids is not None:
            query = query.where(c.c.device_id.in_(device_ids))
        if due_by is not None:
            query = query.where(c.c.deadline <= due_by).order_by(c.c.deadline)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query.limit(limit))]

    def device_seen(self, device_id: str) -> dict[str, Any]:
        """The device's owner (the resident of its APT) and traffic, as listed."""
        with self.engine.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.id == device_id)).first()
            if row is None:
                return {}
            item = _device_item(row)
            self._enrich(conn, [item])
        return {"owner": item["resident"], **{k: item[k] for k in (
            "status", "last_connection", "firmware", "ip", "model")}}


READ_MODELS = (MacLibraryView, DevicesView, CommandsView)
