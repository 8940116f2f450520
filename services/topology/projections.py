"""Topology read models: the Sites list, the buildings of a community, the Residents list.

Each view is self-contained (its own tables, fed by its own handlers), so any one of them can be
dropped and rebuilt alone. Counts are recounted from member rows rather than incremented, and rows
that depend on two sources (topology and accounts) are joined from both sides, so the result is
the same whichever source is replayed first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from concierge.projection import ReadModel, upsert
from contracts.errors import Invalid

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

COMMUNITY_SORTS = ("name", "created_at")
BUILDING_SORTS = ("name", "created_at")
# The Residents list sorts by APT, APT Name, Resident and Created Time (manual, User Management).
RESIDENT_SORTS = ("number", "name", "resident", "created_at")


def _sort_field(keys: Sequence[str], default: str) -> fields.String:
    options = [*keys, *(f"-{key}" for key in keys)]
    return fields.String(load_default=default, validate=validate.OneOf(options))


def _printable(value: str) -> None:
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")


class _ListQuery(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(1, PAGE_MAX))
    per_page = fields.Integer(
        load_default=PER_PAGE_DEFAULT, validate=validate.Range(1, PER_PAGE_MAX)
    )
    q = fields.String(
        load_default=None, allow_none=True, validate=[validate.Length(max=Q_MAX), _printable]
    )


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


def _upsert(conn: Connection, table: Table, keys: Sequence[str], **row: Any) -> None:
    """Insert or overwrite: a replayed event writes the same row again."""
    upsert(conn, table, keys, row)


def _instant(value: Any) -> str | None:
    """UTC ISO text with microseconds, so text order is time order on every database."""
    if not value:
        return None
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


def _page(conn: Connection, query: Any, order: list[Any], page: int, per_page: int,
          shape: Any) -> dict[str, Any]:
    total = conn.execute(select(func.count()).select_from(query.subquery())).scalar() or 0
    rows = conn.execute(query.order_by(*order).limit(per_page).offset((page - 1) * per_page))
    return {"items": [shape(row) for row in rows], "total": int(total), "page": page,
            "per_page": per_page}


def _sort_key(sort: str, allowed: Sequence[str]) -> tuple[str, bool]:
    key = sort.removeprefix("-")
    if key not in allowed:
        options = ", ".join(allowed)
        raise Invalid.field("sort", f"Must be one of: {options} (prefix '-' to reverse).")
    return key, sort.startswith("-")


def _without_nul(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL; one such character must not stall a read model."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {key: _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _data(env: Envelope) -> dict[str, Any]:
    return _without_nul(env.get("data") or {})


# --- Sites: communities ----------------------------------------------------------------------

sites_metadata = MetaData()

communities = Table(
    "topology_communities",
    sites_metadata,
    Column("id", String(36), primary_key=True),
    Column("installer_id", String(36), nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("feature_plan", Text, nullable=False),
    Column("time_zone", Text, nullable=False),
    Column("building_count", Integer, nullable=False),
    Column("apartment_count", Integer, nullable=False),
    Column("resident_count", Integer, nullable=False),
    Column("device_count", Integer, nullable=False),
    Column("property_manager_count", Integer, nullable=False),
    Column("created_at", String(40), nullable=False),
)

# What a community holds, one row each: its buildings, apartments and residents (topology's
# events), and the app accounts and family members of its residents (accounts' events).
community_units = Table(
    "topology_community_units",
    sites_metadata,
    Column("kind", String(20), primary_key=True),
    Column("unit_id", Text, primary_key=True),
    Column("community_id", String(36), nullable=False, index=True),
    Column("apartment_id", String(36), nullable=True),
)

BUILDING, APARTMENT, RESIDENT = "building", "apartment", "resident"
MASTER_ACCOUNT, FAMILY_MEMBER = "master_account", "family_member"


def _recount(conn: Connection, community_id: str) -> None:
    """Counts from the member rows: the same numbers whatever order events arrived in."""
    u = community_units
    counts = dict(conn.execute(
        select(u.c.kind, func.count()).where(u.c.community_id == community_id).group_by(u.c.kind)
    ).tuples().all())
    # Family members count while their apartment exists, whichever source spoke last.
    apartments = select(u.c.unit_id).where(and_(u.c.community_id == community_id,
                                                u.c.kind == APARTMENT))
    family = conn.execute(select(func.count()).where(and_(
        u.c.community_id == community_id, u.c.kind == FAMILY_MEMBER,
        u.c.apartment_id.in_(apartments)))).scalar() or 0
    conn.execute(update(communities).where(communities.c.id == community_id).values(
        building_count=counts.get(BUILDING, 0),
        apartment_count=counts.get(APARTMENT, 0),
        resident_count=counts.get(RESIDENT, 0) + int(family),
    ))


def _add_unit(conn: Connection, kind: str, unit_id: str, community_id: str,
              apartment_id: str | None = None) -> None:
    _upsert(conn, community_units, ("kind", "unit_id"), kind=kind, unit_id=unit_id,
            community_id=community_id, apartment_id=apartment_id)


def _drop_units(conn: Connection, kinds: Sequence[str], unit_id: str) -> None:
    u = community_units
    conn.execute(delete(u).where(and_(u.c.kind.in_(kinds), u.c.unit_id == unit_id)))


class SitesView(ReadModel):
    """Sites >> Community: name, plan, counts of buildings, APTs, end users and devices."""

    name = "topology_sites"
    metadata = sites_metadata

    def handlers(self) -> dict[str, dict[str, Any]]:
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
            },
        }

    @staticmethod
    def community_created(conn: Connection, env: Envelope) -> None:
        data = _data(env)
        _upsert(conn, communities, ("id",), id=env["stream_id"],
                installer_id=str(data["installer_id"]), name=data["name"],
                feature_plan=data["feature_plan"], time_zone=data["time_zone"],
                building_count=0, apartment_count=0, resident_count=0, device_count=0,
                property_manager_count=0, created_at=_instant(env["occurred_at"]))
        _recount(conn, env["stream_id"])

    @staticmethod
    def community_edited(conn: Connection, env: Envelope) -> None:
        changes = _data(env).get("changes") or {}
        values = {k: changes[k] for k in ("name", "feature_plan", "time_zone") if k in changes}
        if values:
            conn.execute(update(communities).where(communities.c.id == env["stream_id"])
                         .values(**values))

    @staticmethod
    def community_deleted(conn: Connection, env: Envelope) -> None:
        conn.execute(delete(communities).where(communities.c.id == env["stream_id"]))

    @staticmethod
    def building_added(conn: Connection, env: Envelope) -> None:
        community_id = str(_data(env)["community_id"])
        _add_unit(conn, BUILDING, env["stream_id"], community_id)
        _recount(conn, community_id)

    @staticmethod
    def building_deleted(conn: Connection, env: Envelope) -> None:
        _drop_units(conn, (BUILDING,), env["stream_id"])
        _recount(conn, str(_data(env)["community_id"]))

    @staticmethod
    def apartment_added(conn: Connection, env: Envelope) -> None:
        community_id = str(_data(env)["community_id"])
        _add_unit(conn, APARTMENT, env["stream_id"], community_id, env["stream_id"])
        _recount(conn, community_id)

    @staticmethod
    def resident_added(conn: Connection, env: Envelope) -> None:
        community_id = str(_data(env)["community_id"])
        _add_unit(conn, RESIDENT, env["stream_id"], community_id, env["stream_id"])
        _recount(conn, community_id)

    @staticmethod
    def apartment_deleted(conn: Connection, env: Envelope) -> None:
        _drop_units(conn, (APARTMENT, RESIDENT), env["stream_id"])
        _recount(conn, str(_data(env)["community_id"]))

    @staticmethod
    def master_account_created(conn: Connection, env: Envelope) -> None:
        data = _data(env)
        community_id = str(data["community_id"])
        _add_unit(conn, MASTER_ACCOUNT, env["stream_id"], community_id, str(data["apartment_id"]))

    @staticmethod
    def family_member_added(conn: Connection, env: Envelope) -> None:
        u = community_units
        master = conn.execute(select(u.c.community_id, u.c.apartment_id).where(and_(
            u.c.kind == MASTER_ACCOUNT, u.c.unit_id == env["stream_id"]))).first()
        if master is None:
            return
        _add_unit(conn, FAMILY_MEMBER, str(_data(env)["family_member_id"]), master.community_id,
                  master.apartment_id)
        _recount(conn, master.community_id)

    @staticmethod
    def master_account_reset(conn: Connection, env: Envelope) -> None:
        u = community_units
        master = conn.execute(select(u.c.community_id).where(and_(
            u.c.kind == MASTER_ACCOUNT, u.c.unit_id == env["stream_id"]))).first()
        for member in _data(env).get("removed_family_member_ids") or []:
            _drop_units(conn, (FAMILY_MEMBER,), str(member))
        if master is not None:
            _recount(conn, master.community_id)


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
    Column("apartment_count", Integer, nullable=False),
    Column("created_at", String(40), nullable=False),
)

building_apartments = Table(
    "topology_building_apartments",
    buildings_metadata,
    Column("apartment_id", String(36), primary_key=True),
    Column("building_id", String(36), nullable=False, index=True),
)


def _recount_building(conn: Connection, building_id: str) -> None:
    count = conn.execute(select(func.count()).where(
        building_apartments.c.building_id == building_id)).scalar() or 0
    conn.execute(update(buildings).where(buildings.c.id == building_id)
                 .values(apartment_count=int(count)))


class BuildingsView(ReadModel):
    """The buildings of each community (the tree on the left of Residents and Devices)."""

    name = "topology_buildings"
    metadata = buildings_metadata

    def handlers(self) -> dict[str, dict[str, Any]]:
        return {"topology": {
            "BuildingAdded": self.added,
            "BuildingEdited": self.edited,
            "BuildingDeleted": self.deleted,
            "ApartmentAdded": self.apartment_added,
            "ApartmentDeleted": self.apartment_deleted,
        }}

    @staticmethod
    def added(conn: Connection, env: Envelope) -> None:
        data = _data(env)
        _upsert(conn, buildings, ("id",), id=env["stream_id"],
                community_id=str(data["community_id"]), installer_id=str(data["installer_id"]),
                name=data["name"], ground_floor=data.get("ground_floor"),
                floor_start=data.get("floor_start"), apartment_count=0,
                created_at=_instant(env["occurred_at"]))
        _recount_building(conn, env["stream_id"])

    @staticmethod
    def edited(conn: Connection, env: Envelope) -> None:
        changes = _data(env).get("changes") or {}
        values = {k: changes[k] for k in ("name", "ground_floor", "floor_start") if k in changes}
        if values:
            conn.execute(update(buildings).where(buildings.c.id == env["stream_id"])
                         .values(**values))

    @staticmethod
    def deleted(conn: Connection, env: Envelope) -> None:
        conn.execute(delete(buildings).where(buildings.c.id == env["stream_id"]))

    @staticmethod
    def apartment_added(conn: Connection, env: Envelope) -> None:
        building_id = str(_data(env)["building_id"])
        _upsert(conn, building_apartments, ("apartment_id",), apartment_id=env["stream_id"],
                building_id=building_id)
        _recount_building(conn, building_id)

    @staticmethod
    def apartment_deleted(conn: Connection, env: Envelope) -> None:
        conn.execute(delete(building_apartments).where(
            building_apartments.c.apartment_id == env["stream_id"]))
        _recount_building(conn, str(_data(env)["building_id"]))


# --- Residents: apartments with their resident and app status ---------------------------------

residents_metadata = MetaData()

apartments = Table(
    "topology_apartments",
    residents_metadata,
    Column("id", String(36), primary_key=True),
    Column("building_id", String(36), nullable=False, index=True),
    Column("building_name", Text, nullable=True),
    Column("community_id", String(36), nullable=False, index=True),
    Column("installer_id", String(36), nullable=False, index=True),
    Column("number", Text, nullable=False),
    Column("name", Text, nullable=True),
    Column("floor", Text, nullable=True),
    Column("first_name", Text, nullable=True),
    Column("last_name", Text, nullable=True),
    Column("email", Text, nullable=True),
    Column("mobile", Text, nullable=True),
    Column("app_status", String(20), nullable=False),
    Column("master_account_id", String(36), nullable=True),
    Column("created_at", String(40), nullable=False),
)

# Building names as the Residents list shows them beside each APT.
apartment_buildings = Table(
    "topology_apartment_buildings",
    residents_metadata,
    Column("id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
)

# Accounts' master accounts, kept apart so an account seen before its apartment is not lost.
app_accounts = Table(
    "topology_app_accounts",
    residents_metadata,
    Column("master_account_id", String(36), primary_key=True),
    Column("apartment_id", String(36), nullable=False, index=True),
    Column("app_status", String(20), nullable=False),
)


def _account_of(conn: Connection, apartment_id: str) -> Any:
    return conn.execute(select(app_accounts).where(
        app_accounts.c.apartment_id == apartment_id)).first()


def _set_app_status(conn: Connection, master_account_id: str, status: str) -> None:
    account = conn.execute(select(app_accounts).where(
        app_accounts.c.master_account_id == master_account_id)).first()
    if account is None:
        return
    conn.execute(update(app_accounts).where(
        app_accounts.c.master_account_id == master_account_id).values(app_status=status))
    conn.execute(update(apartments).where(apartments.c.id == account.apartment_id)
                 .values(app_status=status))


class ResidentsView(ReadModel):
    """Residents: each APT with its building, resident and SmartPlus app status."""

    name = "topology_residents"
    metadata = residents_metadata

    def handlers(self) -> dict[str, dict[str, Any]]:
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
            },
        }

    @staticmethod
    def building_added(conn: Connection, env: Envelope) -> None:
        _upsert(conn, apartment_buildings, ("id",), id=env["stream_id"],
                name=_data(env)["name"])

    @staticmethod
    def building_edited(conn: Connection, env: Envelope) -> None:
        changes = _data(env).get("changes") or {}
        if "name" not in changes:
            return
        conn.execute(update(apartment_buildings).where(
            apartment_buildings.c.id == env["stream_id"]).values(name=changes["name"]))
        conn.execute(update(apartments).where(apartments.c.building_id == env["stream_id"])
                     .values(building_name=changes["name"]))

    @staticmethod
    def building_deleted(conn: Connection, env: Envelope) -> None:
        conn.execute(delete(apartment_buildings).where(
            apartment_buildings.c.id == env["stream_id"]))

    @staticmethod
    def apartment_added(conn: Connection, env: Envelope) -> None:
        data = _data(env)
        building_id = str(data["building_id"])
        building_name = conn.execute(select(apartment_buildings.c.name).where(
            apartment_buildings.c.id == building_id)).scalar()
        account = _account_of(conn, env["stream_id"])
        _upsert(conn, apartments, ("id",), id=env["stream_id"], building_id=building_id,
                building_name=building_name, community_id=str(data["community_id"]),
                installer_id=str(data["installer_id"]), number=data["number"],
                name=data.get("name"), floor=_floor_text(data.get("floor")),
                first_name=None, last_name=None, email=None, mobile=None,
                # No app account yet is, for the resident, an app not yet registered.
                app_status=account.app_status if account else UNREGISTERED,
                master_account_id=account.master_account_id if account else None,
                created_at=_instant(env["occurred_at"]))

    @staticmethod
    def resident_added(conn: Connection, env: Envelope) -> None:
        data = _data(env)
        conn.execute(update(apartments).where(apartments.c.id == env["stream_id"]).values(
            first_name=data.get("first_name"), last_name=data.get("last_name"),
            email=data.get("email"), mobile=data.get("mobile")))

    @staticmethod
    def apartment_edited(conn: Connection, env: Envelope) -> None:
        changes = _data(env).get("changes") or {}
        values: dict[str, Any] = {k: changes[k] for k in ("number", "name") if k in changes}
        if "floor" in changes:
            values["floor"] = _floor_text(changes["floor"])
        if values:
            conn.execute(update(apartments).where(apartments.c.id == env["stream_id"])
                         .values(**values))

    @staticmethod
    def resident_edited(conn: Connection, env: Envelope) -> None:
        changes = _data(env).get("changes") or {}
        values = {k: changes[k] for k in ("first_name", "last_name", "email", "mobile")
                  if k in changes}
        if values:
            conn.execute(update(apartments).where(apartments.c.id == env["stream_id"])
                         .values(**values))

    @staticmethod
    def apartment_reset(conn: Connection, env: Envelope) -> None:
        cleared = set(_data(env).get("cleared_fields") or [])
        values = {k: None for k in ("email", "mobile") if k in cleared}
        if values:
            conn.execute(update(apartments).where(apartments.c.id == env["stream_id"])
                         .values(**values))

    @staticmethod
    def apartment_deleted(conn: Connection, env: Envelope) -> None:
        conn.execute(delete(apartments).where(apartments.c.id == env["stream_id"]))

    @staticmethod
    def master_account_created(conn: Connection, env: Envelope) -> None:
        apartment_id = str(_data(env)["apartment_id"])
        _upsert(conn, app_accounts, ("master_account_id",), master_account_id=env["stream_id"],
                apartment_id=apartment_id, app_status=UNREGISTERED)
        conn.execute(update(apartments).where(apartments.c.id == apartment_id).values(
            app_status=UNREGISTERED, master_account_id=env["stream_id"]))

    @staticmethod
    def master_account_registered(conn: Connection, env: Envelope) -> None:
        _set_app_status(conn, env["stream_id"], REGISTERED)

    @staticmethod
    def master_account_reset(conn: Connection, env: Envelope) -> None:
        _set_app_status(conn, env["stream_id"], UNREGISTERED)


READ_MODELS: tuple[type[ReadModel], ...] = (SitesView, BuildingsView, ResidentsView)


# --- queries ---------------------------------------------------------------------------------


def _community_item(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "feature_plan": row.feature_plan,
        "time_zone": row.time_zone,
        "building_count": row.building_count,
        "apartment_count": row.apartment_count,
        "resident_count": row.resident_count,
        "device_count": row.device_count,
        "property_manager_count": row.property_manager_count,
        "created_at": row.created_at,
    }


def _building_item(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "community_id": row.community_id,
        "name": row.name,
        "ground_floor": row.ground_floor,
        "floor_start": row.floor_start,
        "apartment_count": row.apartment_count,
        "created_at": row.created_at,
    }


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
            return _page(conn, query, order, page, per_page, _community_item)

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
            return _page(conn, query, order, page, per_page, _building_item)

    def list_residents(self, installer_id: str, community_id: str, page: int = 1,
                       per_page: int = PER_PAGE_DEFAULT, sort: str = "number",
                       q: str | None = None, app_status: str | None = None,
                       building_id: str | None = None) -> dict[str, Any]:
        key, descending = _sort_key(sort, RESIDENT_SORTS)
        a = apartments
        query = select(a).where(and_(a.c.installer_id == installer_id,
                                     a.c.community_id == community_id))
        if app_status:
            query = query.where(a.c.app_status == app_status)
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
        c = communities
        with self.engine.connect() as conn:
            row = conn.execute(select(c).where(c.c.id == community_id)).first()
        if row is None:
            return {}
        return {name: getattr(row, name) for name in (
            "apartment_count", "resident_count", "device_count", "property_manager_count")}

    def app_status(self, apartment_id: str) -> dict[str, Any]:
        a = apartments
        with self.engine.connect() as conn:
            row = conn.execute(select(a.c.app_status, a.c.master_account_id)
                               .where(a.c.id == apartment_id)).first()
        if row is None:
            return {"app_status": UNREGISTERED, "master_account_id": None}
        return {"app_status": row.app_status, "master_account_id": row.master_account_id}

    def dashboard(self, installer_id: str) -> dict[str, Any]:
        """The Dashboard's quick view: sites, residents (end users), devices, app accounts."""
        c, a = communities, apartments
        with self.engine.connect() as conn:
            sums = conn.execute(select(
                func.count(), func.coalesce(func.sum(c.c.building_count), 0),
                func.coalesce(func.sum(c.c.apartment_count), 0),
                func.coalesce(func.sum(c.c.resident_count), 0),
                func.coalesce(func.sum(c.c.device_count), 0),
            ).where(c.c.installer_id == installer_id)).one()
            statuses = dict(conn.execute(
                select(a.c.app_status, func.count()).where(a.c.installer_id == installer_id)
                .group_by(a.c.app_status)).tuples().all())
        return {
            "communities": int(sums[0]),
            "buildings": int(sums[1]),
            "apartments": int(sums[2]),
            "residents": int(sums[3]),
            "devices": int(sums[4]),
            "app_accounts": {status: int(statuses.get(status, 0)) for status in APP_STATUSES},
        }
