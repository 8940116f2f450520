"""Topology read models: the Sites list, the buildings of a community, the Residents list.

Each view is self-contained (its own tables, fed by its own handlers), so any one of them can be
dropped and rebuilt alone. Counts are counted from member rows when read, never incremented, and
rows that depend on two sources (topology and accounts) are joined when read, so the result is
the same whichever source is replayed first and every write is one row by its key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from marshmallow import Schema, fields, validate
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from concierge.projection import ProjectFn, ReadModel, Rows
from contracts import fields as contract_fields
from contracts.errors import Invalid
from contracts.topology import BUILDING_SORTS, COMMUNITY_SORTS, RESIDENT_SORTS

Envelope = dict[str, Any]

REGISTERED = "registered"
UNREGISTERED = "unregistered"
APP_STATUSES = (REGISTERED, UNREGISTERED)

# --- list queries (the gateway's page, per_page, sort, q) ------------------------------------

PER_PAGE_DEFAULT = 10  # the portal's "Lines per page"
PER_PAGE_MAX = 100
# An offset past this is no list anyone pages through; the bound keeps SQL integers sane.
PAGE_MAX = 100_000
Q_MAX = 128

# COMMUNITY_SORTS, BUILDING_SORTS, RESIDENT_SORTS: the contract's (contracts/topology.py).


def _sort_field(keys: Sequence[str], default: str) -> fields.String:
    options = [*keys, *(f"-{key}" for key in keys)]
    return fields.String(load_default=default, validate=validate.OneOf(options))


class PageQuery(Schema):
    """A page of a list in a fixed order (an APT's history, oldest first): no sort, no search."""

    page = fields.Integer(load_default=1, validate=validate.Range(1, PAGE_MAX))
    per_page = fields.Integer(
        load_default=PER_PAGE_DEFAULT, validate=validate.Range(1, PER_PAGE_MAX)
    )


class _ListQuery(PageQuery):
    q = contract_fields.Text(load_default=None, allow_none=True,
                             validate=validate.Length(max=Q_MAX))


class CommunityListQuery(_ListQuery):
    """Sites >> Community: sort by name or created time, search by name."""

    sort = _sort_field(COMMUNITY_SORTS, "name")


class BuildingListQuery(_ListQuery):
    """The buildings of a community: sort by name or created time, search by name."""

    sort = _sort_field(BUILDING_SORTS, "name")


class ResidentListQuery(_ListQuery):
    """Residents of a community: filter by app status and building, search residents and APTs."""

    sort = _sort_field(RESIDENT_SORTS, "number")
    app_status = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(APP_STATUSES)
    )
    building_id = fields.UUID(load_default=None, allow_none=True)


# --- helpers ---------------------------------------------------------------------------------


def _instant(value: Any) -> str | None:
    """UTC ISO text with microseconds, so text order is time order on every database."""
    if not value:
        return None
    if (type(value) is str and len(value) == 32 and value.endswith("+00:00")
            and value[10] == "T" and value[19] == "."):
        return value  # already so: how events store their UTC time
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _floor_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _floor_value(text: str | None) -> int | str | None:
    """Floors are numbers or G0-G2; the column keeps text, callers get the contract's value."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _order(column: ColumnElement[Any], descending: bool) -> ColumnElement[Any]:
    return column.desc() if descending else column.asc()


def _contains(column: ColumnElement[Any], text: str) -> ColumnElement[bool]:
    return func.lower(column).contains(text.lower(), autoescape=True)


def _sort_key(sort: str, allowed: Sequence[str]) -> tuple[str, bool]:
    key = sort.removeprefix("-")
    if key not in allowed:
        options = ", ".join(allowed)
        raise Invalid.field("sort", f"Must be one of: {options} (prefix '-' to reverse).")
    return key, sort.startswith("-")


def _changes(env: Envelope, names: Sequence[str]) -> dict[str, Any]:
    changes = env["data"].get("changes") or {}
    return {name: changes[name] for name in names if name in changes}


# --- Sites: communities ----------------------------------------------------------------------
#
# Counts are not stored: they are counted from the member rows when a page is read (one grouped
# query per page), so a write is one keyed row and the result is the same whichever order the
# two sources' events arrive in.

sites_metadata = MetaData()

communities = Table(
    "topology_communities",
    sites_metadata,
    Column("id", String(36), primary_key=True),
    Column("installer_id", String(36), nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("feature_plan", Text, nullable=False),
    Column("time_zone", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
)

# What a community holds, one row each: its buildings, apartments and residents (topology's
# events), and the app accounts and family members of its residents (accounts' events).
community_units = Table(
    "topology_community_units",
    sites_metadata,
    Column("kind", String(20), primary_key=True),
    Column("unit_id", String(64), primary_key=True),
    Column("community_id", String(36), nullable=False, index=True),
    Column("apartment_id", String(36), nullable=True),
)

BUILDING, APARTMENT, RESIDENT = "building", "apartment", "resident"
MASTER_ACCOUNT, FAMILY_MEMBER = "master_account", "family_member"
COUNT_NAMES = ("building_count", "apartment_count", "resident_count", "device_count",
               "property_manager_count")


def _add_unit(rows: Rows, kind: str, unit_id: str, community_id: str,
              apartment_id: str | None = None) -> None:
    rows.put(community_units, kind=kind, unit_id=unit_id, community_id=community_id,
             apartment_id=apartment_id)


class SitesView(ReadModel):
    """Sites >> Community: name, plan, counts of buildings, APTs, end users and devices."""

    name = "topology_sites"
    version = 2
    metadata = sites_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {
            "topology": {
                "CommunityCreated": self.community_created,
                "CommunityEdited": self.community_edited,
                "CommunityDeleted": self.community_deleted,
                "BuildingAdded": self.building_added,
                "BuildingDeleted": self.building_deleted,
                "ApartmentAdded": self.apartment_added,
                "ResidentAdded": self.resident_added,
                "ApartmentDeleted": self.apartment_deleted,
            },
            "accounts": {
                "MasterAccountCreated": self.master_account_created,
                "FamilyMemberAdded": self.family_member_added,
                "MasterAccountReset": self.master_account_reset,
                "MasterAccountClosed": self.master_account_closed,
            },
        }

    @staticmethod
    def community_created(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.put(communities, id=env["stream_id"], installer_id=str(data["installer_id"]),
                 name=data["name"], feature_plan=data["feature_plan"],
                 time_zone=data["time_zone"], created_at=_instant(env["occurred_at"]))

    @staticmethod
    def community_edited(rows: Rows, env: Envelope) -> None:
        rows.update(communities, env["stream_id"],
                    **_changes(env, ("name", "feature_plan", "time_zone")))

    @staticmethod
    def community_deleted(rows: Rows, env: Envelope) -> None:
        rows.delete(communities, env["stream_id"])

    @staticmethod
    def building_added(rows: Rows, env: Envelope) -> None:
        _add_unit(rows, BUILDING, env["stream_id"], str(env["data"]["community_id"]))

    @staticmethod
    def building_deleted(rows: Rows, env: Envelope) -> None:
        rows.delete(community_units, BUILDING, env["stream_id"])

    @staticmethod
    def apartment_added(rows: Rows, env: Envelope) -> None:
        community_id = str(env["data"]["community_id"])
        _add_unit(rows, APARTMENT, env["stream_id"], community_id, env["stream_id"])

    @staticmethod
    def resident_added(rows: Rows, env: Envelope) -> None:
        community_id = str(env["data"]["community_id"])
        _add_unit(rows, RESIDENT, env["stream_id"], community_id, env["stream_id"])

    @staticmethod
    def apartment_deleted(rows: Rows, env: Envelope) -> None:
        rows.delete(community_units, APARTMENT, env["stream_id"])
        rows.delete(community_units, RESIDENT, env["stream_id"])

    @staticmethod
    def master_account_created(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        _add_unit(rows, MASTER_ACCOUNT, env["stream_id"], str(data["community_id"]),
                  str(data["apartment_id"]))

    @staticmethod
    def family_member_added(rows: Rows, env: Envelope) -> None:
        master = rows.get(community_units, MASTER_ACCOUNT, env["stream_id"])
        if master is None:
            return
        _add_unit(rows, FAMILY_MEMBER, str(env["data"]["family_member_id"]),
                  master["community_id"], master["apartment_id"])

    @staticmethod
    def master_account_reset(rows: Rows, env: Envelope) -> None:
        for member in env["data"].get("removed_family_member_ids") or []:
            rows.delete(community_units, FAMILY_MEMBER, str(member))

    @staticmethod
    def master_account_closed(rows: Rows, env: Envelope) -> None:
        # Family members are counted only while their APT exists, so the count is right
        # whether this or topology's ApartmentDeleted arrives first.
        SitesView.master_account_reset(rows, env)
        rows.delete(community_units, MASTER_ACCOUNT, env["stream_id"])


def _community_counts(conn: Connection, community_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """The counts of each community, from its member rows: residents are the APTs' residents
    plus the family members of APTs that still exist (whichever source spoke last)."""
    counts = {cid: dict.fromkeys(COUNT_NAMES, 0) for cid in community_ids}
    if not community_ids:
        return counts
    u = community_units
    grouped = conn.execute(
        select(u.c.community_id, u.c.kind, func.count())
        .where(and_(u.c.community_id.in_(community_ids),
                    u.c.kind.in_((BUILDING, APARTMENT, RESIDENT))))
        .group_by(u.c.community_id, u.c.kind))
    names = {BUILDING: "building_count", APARTMENT: "apartment_count",
             RESIDENT: "resident_count"}
    for community_id, kind, count in grouped:
        counts[community_id][names[kind]] += int(count)
    apartments_alive = select(u.c.unit_id).where(and_(u.c.community_id.in_(community_ids),
                                                      u.c.kind == APARTMENT))
    family = conn.execute(
        select(u.c.community_id, func.count())
        .where(and_(u.c.community_id.in_(community_ids), u.c.kind == FAMILY_MEMBER,
                    u.c.apartment_id.in_(apartments_alive)))
        .group_by(u.c.community_id))
    for community_id, count in family:
        counts[community_id]["resident_count"] += int(count)
    return counts


# --- buildings -------------------------------------------------------------------------------

buildings_metadata = MetaData()

buildings = Table(
    "topology_buildings",
    buildings_metadata,
    Column("id", String(36), primary_key=True),
    Column("community_id", String(36), nullable=False, index=True),
    Column("installer_id", String(36), nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("ground_floor", Text, nullable=True),
    Column("floor_start", Integer, nullable=True),
    Column("created_at", String(40), nullable=False),
)

building_apartments = Table(
    "topology_building_apartments",
    buildings_metadata,
    Column("apartment_id", String(36), primary_key=True),
    Column("building_id", String(36), nullable=False, index=True),
)


class BuildingsView(ReadModel):
    """The buildings of each community (the tree on the left of Residents and Devices)."""

    name = "topology_buildings"
    version = 2
    metadata = buildings_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {"topology": {
            "BuildingAdded": self.added,
            "BuildingEdited": self.edited,
            "BuildingDeleted": self.deleted,
            "ApartmentAdded": self.apartment_added,
            "ApartmentDeleted": self.apartment_deleted,
        }}

    @staticmethod
    def added(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.put(buildings, id=env["stream_id"], community_id=str(data["community_id"]),
                 installer_id=str(data["installer_id"]), name=data["name"],
                 ground_floor=data.get("ground_floor"), floor_start=data.get("floor_start"),
                 created_at=_instant(env["occurred_at"]))

    @staticmethod
    def edited(rows: Rows, env: Envelope) -> None:
        rows.update(buildings, env["stream_id"],
                    **_changes(env, ("name", "ground_floor", "floor_start")))

    @staticmethod
    def deleted(rows: Rows, env: Envelope) -> None:
        rows.delete(buildings, env["stream_id"])

    @staticmethod
    def apartment_added(rows: Rows, env: Envelope) -> None:
        rows.put(building_apartments, apartment_id=env["stream_id"],
                 building_id=str(env["data"]["building_id"]))

    @staticmethod
    def apartment_deleted(rows: Rows, env: Envelope) -> None:
        rows.delete(building_apartments, env["stream_id"])


def _apartment_counts(conn: Connection, building_ids: Sequence[str]) -> dict[str, int]:
    if not building_ids:
        return {}
    ba = building_apartments
    grouped = conn.execute(select(ba.c.building_id, func.count())
                           .where(ba.c.building_id.in_(building_ids))
                           .group_by(ba.c.building_id))
    return {building_id: int(count) for building_id, count in grouped}


# --- Residents: apartments with their resident and app status ---------------------------------
#
# The building's name and the resident's app status live in their own keyed rows and are
# joined when the list is read, so a building rename or an account event is one row write.

residents_metadata = MetaData()

apartments = Table(
    "topology_apartments",
    residents_metadata,
    Column("id", String(36), primary_key=True),
    Column("building_id", String(36), nullable=False, index=True),
    Column("community_id", String(36), nullable=False, index=True),
    Column("installer_id", String(36), nullable=False, index=True),
    Column("number", Text, nullable=False),
    Column("name", Text, nullable=True),
    Column("floor", Text, nullable=True),
    Column("first_name", Text, nullable=True),
    Column("last_name", Text, nullable=True),
    Column("email", Text, nullable=True),
    Column("mobile", Text, nullable=True),
    Column("created_at", String(40), nullable=False),
)

# Building names as the Residents list shows them beside each APT.
apartment_buildings = Table(
    "topology_apartment_buildings",
    residents_metadata,
    Column("id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
)

# Accounts' master accounts (one per APT), kept apart so an account seen before its apartment
# is not lost.
app_accounts = Table(
    "topology_app_accounts",
    residents_metadata,
    Column("master_account_id", String(36), primary_key=True),
    Column("apartment_id", String(36), nullable=False, index=True),
    Column("app_status", String(20), nullable=False),
)


class ResidentsView(ReadModel):
    """Residents: each APT with its building, resident and SmartPlus app status."""

    name = "topology_residents"
    version = 2
    metadata = residents_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {
            "topology": {
                "BuildingAdded": self.building_added,
                "BuildingEdited": self.building_edited,
                "BuildingDeleted": self.building_deleted,
                "ApartmentAdded": self.apartment_added,
                "ResidentAdded": self.resident_added,
                "ApartmentEdited": self.apartment_edited,
                "ResidentEdited": self.resident_edited,
                "ApartmentReset": self.apartment_reset,
                "ApartmentDeleted": self.apartment_deleted,
            },
            "accounts": {
                "MasterAccountCreated": self.master_account_created,
                "MasterAccountRegistered": self.master_account_registered,
                "MasterAccountReset": self.master_account_reset,
                "MasterAccountClosed": self.master_account_closed,
            },
        }

    @staticmethod
    def building_added(rows: Rows, env: Envelope) -> None:
        rows.put(apartment_buildings, id=env["stream_id"], name=env["data"]["name"])

    @staticmethod
    def building_edited(rows: Rows, env: Envelope) -> None:
        rows.update(apartment_buildings, env["stream_id"], **_changes(env, ("name",)))

    @staticmethod
    def building_deleted(rows: Rows, env: Envelope) -> None:
        rows.delete(apartment_buildings, env["stream_id"])

    @staticmethod
    def apartment_added(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.put(apartments, id=env["stream_id"], building_id=str(data["building_id"]),
                 community_id=str(data["community_id"]), installer_id=str(data["installer_id"]),
                 number=data["number"], name=data.get("name"),
                 floor=_floor_text(data.get("floor")), created_at=_instant(env["occurred_at"]))

    @staticmethod
    def resident_added(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.update(apartments, env["stream_id"], first_name=data.get("first_name"),
                    last_name=data.get("last_name"), email=data.get("email"),
                    mobile=data.get("mobile"))

    @staticmethod
    def apartment_edited(rows: Rows, env: Envelope) -> None:
        values = _changes(env, ("number", "name", "floor"))
        if "floor" in values:
            values["floor"] = _floor_text(values["floor"])
        rows.update(apartments, env["stream_id"], **values)

    @staticmethod
    def resident_edited(rows: Rows, env: Envelope) -> None:
        rows.update(apartments, env["stream_id"],
                    **_changes(env, ("first_name", "last_name", "email", "mobile")))

    @staticmethod
    def apartment_reset(rows: Rows, env: Envelope) -> None:
        cleared = set(env["data"].get("cleared_fields") or [])
        rows.update(apartments, env["stream_id"],
                    **{k: None for k in ("email", "mobile") if k in cleared})

    @staticmethod
    def apartment_deleted(rows: Rows, env: Envelope) -> None:
        rows.delete(apartments, env["stream_id"])

    @staticmethod
    def master_account_created(rows: Rows, env: Envelope) -> None:
        rows.put(app_accounts, master_account_id=env["stream_id"],
                 apartment_id=str(env["data"]["apartment_id"]), app_status=UNREGISTERED)

    @staticmethod
    def master_account_registered(rows: Rows, env: Envelope) -> None:
        rows.update(app_accounts, env["stream_id"], app_status=REGISTERED)

    @staticmethod
    def master_account_reset(rows: Rows, env: Envelope) -> None:
        rows.update(app_accounts, env["stream_id"], app_status=UNREGISTERED)

    @staticmethod
    def master_account_closed(rows: Rows, env: Envelope) -> None:
        # A closed account records nothing more, so no later event can bring this row back.
        rows.delete(app_accounts, env["stream_id"])


READ_MODELS: tuple[type[ReadModel], ...] = (SitesView, BuildingsView, ResidentsView)

# No app account yet is, for the resident, an app not yet registered.
_app_status = func.coalesce(app_accounts.c.app_status, UNREGISTERED).label("app_status")
_residents_source = (
    apartments
    .outerjoin(apartment_buildings, apartment_buildings.c.id == apartments.c.building_id)
    .outerjoin(app_accounts, app_accounts.c.apartment_id == apartments.c.id)
)
_residents_columns = [*apartments.c, apartment_buildings.c.name.label("building_name"),
                      _app_status, app_accounts.c.master_account_id]


# --- queries ---------------------------------------------------------------------------------


def _page(conn: Connection, query: Any, order: list[Any], page: int, per_page: int,
          shape: Callable[[Any], dict[str, Any]],
          enrich: Callable[[Connection, list[dict[str, Any]]], None] | None = None,
          ) -> dict[str, Any]:
    total = conn.execute(select(func.count()).select_from(query.subquery())).scalar() or 0
    rows = conn.execute(query.order_by(*order).limit(per_page).offset((page - 1) * per_page))
    items = [shape(row) for row in rows]
    if enrich is not None:
        enrich(conn, items)
    return {"items": items, "total": int(total), "page": page, "per_page": per_page}


def _community_item(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "feature_plan": row.feature_plan,
        "time_zone": row.time_zone,
        **dict.fromkeys(COUNT_NAMES, 0),
        "created_at": row.created_at,
    }


def _with_community_counts(conn: Connection, items: list[dict[str, Any]]) -> None:
    counts = _community_counts(conn, [item["id"] for item in items])
    for item in items:
        item.update(counts[item["id"]])


def _building_item(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "community_id": row.community_id,
        "name": row.name,
        "ground_floor": row.ground_floor,
        "floor_start": row.floor_start,
        "apartment_count": 0,
        "created_at": row.created_at,
    }


def _with_apartment_counts(conn: Connection, items: list[dict[str, Any]]) -> None:
    counts = _apartment_counts(conn, [item["id"] for item in items])
    for item in items:
        item["apartment_count"] = counts.get(item["id"], 0)


def _resident_item(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "building_id": row.building_id,
        "building_name": row.building_name,
        "community_id": row.community_id,
        "number": row.number,
        "name": row.name,
        "floor": _floor_value(row.floor),
        "first_name": row.first_name,
        "last_name": row.last_name,
        "email": row.email,
        "mobile": row.mobile,
        "app_status": row.app_status,
        "master_account_id": row.master_account_id,
        "created_at": row.created_at,
    }


class TopologyViews:
    """Queries over the read models, always scoped to one installer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def list_communities(self, installer_id: str, page: int = 1,
                         per_page: int = PER_PAGE_DEFAULT, sort: str = "name",
                         q: str | None = None) -> dict[str, Any]:
        key, descending = _sort_key(sort, COMMUNITY_SORTS)
        c = communities
        query = select(c).where(c.c.installer_id == installer_id)
        if q and q.strip():
            query = query.where(_contains(c.c.name, q.strip()))
        column = func.lower(c.c.name) if key == "name" else c.c.created_at
        order = [_order(column, descending), _order(c.c.id, descending)]
        with self.engine.connect() as conn:
            return _page(conn, query, order, page, per_page, _community_item,
                         _with_community_counts)

    def list_buildings(self, installer_id: str, community_id: str, page: int = 1,
                       per_page: int = PER_PAGE_DEFAULT, sort: str = "name",
                       q: str | None = None) -> dict[str, Any]:
        key, descending = _sort_key(sort, BUILDING_SORTS)
        b = buildings
        query = select(b).where(and_(b.c.installer_id == installer_id,
                                     b.c.community_id == community_id))
        if q and q.strip():
            query = query.where(_contains(b.c.name, q.strip()))
        column = func.lower(b.c.name) if key == "name" else b.c.created_at
        order = [_order(column, descending), _order(b.c.id, descending)]
        with self.engine.connect() as conn:
            return _page(conn, query, order, page, per_page, _building_item,
                         _with_apartment_counts)

    def list_residents(self, installer_id: str, community_id: str, page: int = 1,
                       per_page: int = PER_PAGE_DEFAULT, sort: str = "number",
                       q: str | None = None, app_status: str | None = None,
                       building_id: str | None = None) -> dict[str, Any]:
        key, descending = _sort_key(sort, RESIDENT_SORTS)
        a = apartments
        query = select(*_residents_columns).select_from(_residents_source).where(
            and_(a.c.installer_id == installer_id, a.c.community_id == community_id))
        if app_status:
            query = query.where(func.coalesce(app_accounts.c.app_status, UNREGISTERED)
                                == app_status)
        if building_id:
            query = query.where(a.c.building_id == str(building_id))
        if q and q.strip():
            text = q.strip()
            full_name = a.c.first_name + " " + a.c.last_name
            query = query.where(or_(
                _contains(full_name, text), _contains(a.c.email, text),
                _contains(a.c.name, text), _contains(a.c.number, text),
            ))
        columns: dict[str, list[Any]] = {
            # Shorter first, so APT 99 comes before APT 101 (numbers are text: "2#123").
            "number": [func.length(a.c.number), a.c.number],
            "name": [func.lower(func.coalesce(a.c.name, "")), func.length(a.c.number), a.c.number],
            "resident": [func.lower(func.coalesce(a.c.first_name, "")),
                         func.lower(func.coalesce(a.c.last_name, ""))],
            "created_at": [a.c.created_at],
        }
        order = [_order(col, descending) for col in [*columns[key], a.c.id]]
        with self.engine.connect() as conn:
            return _page(conn, query, order, page, per_page, _resident_item)

    def community_counts(self, community_id: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            exists = conn.execute(select(communities.c.id).where(
                communities.c.id == community_id)).first()
            if exists is None:
                return {}
            return _community_counts(conn, [community_id])[community_id]

    def app_status(self, apartment_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(app_accounts.c.app_status, app_accounts.c.master_account_id)
                               .where(app_accounts.c.apartment_id == apartment_id)).first()
        if row is None:
            return {"app_status": UNREGISTERED, "master_account_id": None}
        return {"app_status": row.app_status, "master_account_id": row.master_account_id}

    def dashboard(self, installer_id: str) -> dict[str, Any]:
        """The Dashboard's quick view: sites, residents (end users), devices, app accounts."""
        c, a = communities, apartments
        with self.engine.connect() as conn:
            community_ids = list(conn.execute(
                select(c.c.id).where(c.c.installer_id == installer_id)).scalars())
            totals = dict.fromkeys(COUNT_NAMES, 0)
            for counts in _community_counts(conn, community_ids).values():
                for name, value in counts.items():
                    totals[name] += value
            statuses = dict(conn.execute(
                select(_app_status, func.count())
                .select_from(a.outerjoin(app_accounts, app_accounts.c.apartment_id == a.c.id))
                .where(a.c.installer_id == installer_id)
                .group_by(_app_status)).tuples().all())
        return {
            "communities": len(community_ids),
            "buildings": totals["building_count"],
            "apartments": totals["apartment_count"],
            "residents": totals["resident_count"],
            "devices": totals["device_count"],
            "app_accounts": {status: int(statuses.get(status, 0)) for status in APP_STATUSES},
        }
