"""Topology read models: the Sites list, the buildings of a community, the Residents list.

Each view is self-contained (its own tables, fed by its own handlers), so any one of them can be
dropped and rebuilt alone. Lists follow docs/chassis.md "Lists that stay flat as sites grow": an
index per sort, kept totals, a search column. Counts are kept by the handlers as a sum of per-APT
weights, so they are the same whichever source is replayed first; what a list shows from another
source (an app status) is read for the page's rows by key.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from marshmallow import Schema, fields, validate
from sqlalchemy import (
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    func,
    literal_column,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from concierge.lists import containing, page_of, sort_field, sort_key, trigram_index
from concierge.projection import ProjectFn, ReadModel, Rows
from concierge.vault import shred_on
from contracts import fields as contract_fields
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

    sort = sort_field(COMMUNITY_SORTS, "name")


class BuildingListQuery(_ListQuery):
    """The buildings of a community: sort by name or created time, search by name."""

    sort = sort_field(BUILDING_SORTS, "name")


class ResidentListQuery(_ListQuery):
    """Residents of a community: filter by app status and building, search residents and APTs."""

    sort = sort_field(RESIDENT_SORTS, "number")
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



def _changes(env: Envelope, names: Sequence[str]) -> dict[str, Any]:
    changes = env["data"].get("changes") or {}
    return {name: changes[name] for name in names if name in changes}


# --- Sites: communities ---------------------------------------------------------------------
#
# Counts are kept, not counted when read: each APT has a row that both sources write (topology:
# added, resident, deleted; accounts: its app account, family members, registration), and what
# the APT adds to its community's counts is a function of that row alone (`_weight`). Every
# handler that changes the row moves the counts by the weight after minus the weight before, so
# the counts are always the sum over the community's rows, whichever source speaks first.
# (Each event is applied once: its position is recorded in the same transaction.)

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

community_counts = Table(
    "topology_community_counts",
    sites_metadata,
    Column("community_id", String(36), primary_key=True),
    Column("buildings", Integer, nullable=False, default=0),
    Column("apartments", Integer, nullable=False, default=0),
    Column("residents", Integer, nullable=False, default=0),  # end users: residents, family
    Column("registered", Integer, nullable=False, default=0),  # APTs whose app is registered
    Column("devices", Integer, nullable=False, default=0),  # devices in any of its areas
)

# Devices' devices: which community each is installed in (a second DeviceAdded, or a
# DeviceRemoved of a device never seen, then moves nothing).
site_devices = Table(
    "topology_site_devices",
    sites_metadata,
    Column("device_id", String(36), primary_key=True),
    Column("community_id", String(36), nullable=False),
)

# Accounts' property managers: who each is and which communities it works on (the site list's
# "Property Managers" column and its count).
site_managers = Table(
    "topology_site_managers",
    sites_metadata,
    Column("account_id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
    Column("communities", Text, nullable=False),  # JSON list of community ids
)
community_managers = Table(
    "topology_community_managers",
    sites_metadata,
    Column("community_id", String(36), primary_key=True),
    Column("account_id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
)

# One row per APT that either source has spoken of.
site_apartments = Table(
    "topology_site_apartments",
    sites_metadata,
    Column("apartment_id", String(36), primary_key=True),
    Column("community_id", String(36), nullable=False),
    Column("alive", Boolean, nullable=False, default=False),  # added and not deleted
    Column("has_resident", Boolean, nullable=False, default=False),
    Column("master_account_id", String(36), nullable=True),
    Column("family_members", Integer, nullable=False, default=0),
    Column("registered", Boolean, nullable=False, default=False),
)

# Accounts' master accounts: which APT each belongs to.
site_accounts = Table(
    "topology_site_accounts",
    sites_metadata,
    Column("master_account_id", String(36), primary_key=True),
    Column("apartment_id", String(36), nullable=False),
)

COUNT_NAMES = ("building_count", "apartment_count", "resident_count", "device_count",
               "property_manager_count")
_COUNTED = ("apartments", "residents", "registered")


def _weight(row: dict[str, Any] | None) -> tuple[int, int, int]:
    """What an APT adds to its community's apartments, end users and registered apps."""
    if row is None or not row["alive"]:
        return (0, 0, 0)
    return (1, int(row["has_resident"]) + row["family_members"], int(row["registered"]))


def _count(rows: Rows, community_id: str, **deltas: int) -> None:
    counts = rows.get(community_counts, community_id) or {
        "community_id": community_id, "buildings": 0, "devices": 0,
        **dict.fromkeys(_COUNTED, 0)}
    for name, delta in deltas.items():
        counts[name] += delta
    rows.put(community_counts, **counts)


def _change_apartment(rows: Rows, apartment_id: str, community_id: str | None,
                      **changes: Any) -> None:
    """Change an APT's row (made if missing) and move its community's counts to match."""
    row = rows.get(site_apartments, apartment_id)
    if row is None:
        if community_id is None:
            return
        row = {"apartment_id": apartment_id, "community_id": community_id, "alive": False,
               "has_resident": False, "master_account_id": None, "family_members": 0,
               "registered": False}
    before = _weight(row)
    row.update(changes)
    after = _weight(row)
    if after != before:
        _count(rows, row["community_id"], **{name: new - old for name, new, old
                                             in zip(_COUNTED, after, before, strict=True)})
    if not row["alive"] and row["master_account_id"] is None and not row["family_members"]:
        rows.delete(site_apartments, apartment_id)  # nothing left to count: as if never seen
    else:
        rows.put(site_apartments, **row)


_APARTMENT_EVENTS = ("ApartmentAdded", "ResidentAdded", "ApartmentDeleted")
_COUNTED_EVENTS = (*_APARTMENT_EVENTS, "BuildingAdded", "BuildingDeleted")


class SitesView(ReadModel):
    """Sites >> Community: name, plan, counts of buildings, APTs, end users and devices."""

    name = "topology_sites"
    # 3: counts kept per community; 4: devices counted from devices' events; 5: property
    # managers from accounts' events; 6: a deleted family member is no end user any more.
    version = 6
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
                "MasterAccountRegistered": self.master_account_registered,
                "FamilyMemberAdded": self.family_member_added,
                "FamilyMemberRemoved": self.family_member_removed,
                "MasterAccountReset": self.master_account_reset,
                "MasterAccountClosed": self.master_account_closed,
                "PropertyManagerSet": self.manager_set,
                "PortalAccountDeleted": self.manager_deleted,
            },
            "devices": {
                "DeviceAdded": self.device_added,
                "DeviceRemoved": self.device_removed,
            },
        }

    @staticmethod
    def manager_set(rows: Rows, env: Envelope) -> None:
        data, account = env["data"], env["stream_id"]
        name = f"{data['first_name']} {data['last_name']}".strip()
        now = sorted({str(a["community_id"]) for a in data["communities"]})
        before = rows.get(site_managers, account)
        for community in json.loads(before["communities"]) if before else []:
            if community not in now:
                rows.delete(community_managers, community, account)
        for community in now:
            rows.put(community_managers, community_id=community, account_id=account, name=name)
        rows.put(site_managers, account_id=account, name=name, communities=json.dumps(now))

    @staticmethod
    def manager_deleted(rows: Rows, env: Envelope) -> None:
        before = rows.get(site_managers, env["stream_id"])
        if before is None:
            return  # not a property manager (a sub-installer), or never seen
        for community in json.loads(before["communities"]):
            rows.delete(community_managers, community, env["stream_id"])
        rows.delete(site_managers, env["stream_id"])

    @staticmethod
    def device_added(rows: Rows, env: Envelope) -> None:
        if rows.get(site_devices, env["stream_id"]) is not None:
            return
        community_id = str(env["data"]["community_id"])
        rows.put(site_devices, device_id=env["stream_id"], community_id=community_id)
        _count(rows, community_id, devices=1)

    @staticmethod
    def device_removed(rows: Rows, env: Envelope) -> None:
        found = rows.get(site_devices, env["stream_id"])
        if found is None:
            return
        rows.delete(site_devices, env["stream_id"])
        if rows.get(community_counts, found["community_id"]) is not None:  # not deleted since
            _count(rows, found["community_id"], devices=-1)

    @staticmethod
    def prefetch(rows: Rows, envelopes: list[Envelope]) -> None:
        """The APT rows and accounts a batch will read, in one query each."""
        apartments_, accounts, sites = [], [], []
        for env in envelopes:
            if env["source"] == "devices":
                continue  # a few rows a batch: read as the handlers ask
            if env["source"] == "topology":
                if env["type"] in _APARTMENT_EVENTS:
                    apartments_.append(env["stream_id"])
                if env["type"] in _COUNTED_EVENTS:
                    sites.append(str(env["data"].get("community_id")))
            else:
                accounts.append(env["stream_id"])
                if env["type"] == "MasterAccountCreated":
                    apartments_.append(str(env["data"].get("apartment_id")))
                    sites.append(str(env["data"].get("community_id")))
        rows.prefetch(site_apartments, apartments_)
        rows.prefetch(site_accounts, accounts)
        rows.prefetch(community_counts, sites)

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
        rows.delete(community_counts, env["stream_id"])

    @staticmethod
    def building_added(rows: Rows, env: Envelope) -> None:
        _count(rows, str(env["data"]["community_id"]), buildings=1)

    @staticmethod
    def building_deleted(rows: Rows, env: Envelope) -> None:
        _count(rows, str(env["data"]["community_id"]), buildings=-1)

    @staticmethod
    def apartment_added(rows: Rows, env: Envelope) -> None:
        _change_apartment(rows, env["stream_id"], str(env["data"]["community_id"]), alive=True)

    @staticmethod
    def resident_added(rows: Rows, env: Envelope) -> None:
        _change_apartment(rows, env["stream_id"], str(env["data"]["community_id"]),
                          has_resident=True)

    @staticmethod
    def apartment_deleted(rows: Rows, env: Envelope) -> None:
        _change_apartment(rows, env["stream_id"], str(env["data"]["community_id"]),
                          alive=False, has_resident=False)

    @staticmethod
    def master_account_created(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        apartment_id = str(data["apartment_id"])
        rows.put(site_accounts, master_account_id=env["stream_id"], apartment_id=apartment_id)
        _change_apartment(rows, apartment_id, str(data["community_id"]),
                          master_account_id=env["stream_id"])

    @staticmethod
    def _account_apartment(rows: Rows, env: Envelope) -> str | None:
        account = rows.get(site_accounts, env["stream_id"])
        return None if account is None else str(account["apartment_id"])

    @staticmethod
    def master_account_registered(rows: Rows, env: Envelope) -> None:
        apartment_id = SitesView._account_apartment(rows, env)
        if apartment_id is not None:
            _change_apartment(rows, apartment_id, None, registered=True)

    @staticmethod
    def family_member_added(rows: Rows, env: Envelope) -> None:
        apartment_id = SitesView._account_apartment(rows, env)
        row = rows.get(site_apartments, apartment_id) if apartment_id else None
        if row is not None:
            _change_apartment(rows, apartment_id, None,  # type: ignore[arg-type]
                              family_members=row["family_members"] + 1)

    @staticmethod
    def family_member_removed(rows: Rows, env: Envelope) -> None:
        apartment_id = SitesView._account_apartment(rows, env)
        row = rows.get(site_apartments, apartment_id) if apartment_id else None
        if row is not None:
            _change_apartment(rows, apartment_id, None,  # type: ignore[arg-type]
                              family_members=max(0, row["family_members"] - 1))

    @staticmethod
    def master_account_reset(rows: Rows, env: Envelope) -> None:
        apartment_id = SitesView._account_apartment(rows, env)
        row = rows.get(site_apartments, apartment_id) if apartment_id else None
        if row is not None:
            removed = len(env["data"].get("removed_family_member_ids") or [])
            _change_apartment(rows, apartment_id, None,  # type: ignore[arg-type]
                              family_members=max(0, row["family_members"] - removed),
                              registered=False)

    @staticmethod
    def master_account_closed(rows: Rows, env: Envelope) -> None:
        apartment_id = SitesView._account_apartment(rows, env)
        rows.delete(site_accounts, env["stream_id"])
        row = rows.get(site_apartments, apartment_id) if apartment_id else None
        if row is not None:
            _change_apartment(rows, apartment_id, None,  # type: ignore[arg-type]
                              master_account_id=None, family_members=0, registered=False)


def _community_counts(conn: Connection, community_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """The kept counts of each community, by key."""
    counts = {cid: dict.fromkeys(COUNT_NAMES, 0) for cid in community_ids}
    if not community_ids:
        return counts
    cc = community_counts
    for row in conn.execute(select(cc).where(cc.c.community_id.in_(community_ids))):
        counts[row.community_id].update(
            building_count=row.buildings, apartment_count=row.apartments,
            resident_count=row.residents, device_count=row.devices)
    cm = community_managers
    names: dict[str, list[str]] = {cid: [] for cid in community_ids}
    for row in conn.execute(select(cm.c.community_id, cm.c.name)
                            .where(cm.c.community_id.in_(community_ids))
                            .order_by(cm.c.community_id, cm.c.name, cm.c.account_id)):
        names[row.community_id].append(row.name)
    for cid in community_ids:
        counts[cid]["property_manager_count"] = len(names[cid])
        counts[cid]["property_managers"] = names[cid]  # type: ignore[assignment]
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
    # The list's indexes (below) start with the community: they serve its filter too.
    Column("community_id", String(36), nullable=False),
    Column("installer_id", String(36), nullable=False),
    Column("number", Text, nullable=False),
    Column("name", Text, nullable=True),
    Column("floor", Text, nullable=True),
    Column("first_name", Text, nullable=True),
    Column("last_name", Text, nullable=True),
    Column("email", Text, nullable=True),
    Column("mobile", Text, nullable=True),
    Column("created_at", String(40), nullable=False),
    # What the list's search looks in, lower case, kept by the handlers (`_search_text`).
    Column("search", Text, nullable=False, default=""),
    Column("registered", Boolean, nullable=False, default=False),  # its app (app_accounts)
)

# Building names as the Residents list shows them beside each APT.
apartment_buildings = Table(
    "topology_apartment_buildings",
    residents_metadata,
    Column("id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
)

# Each APT's app account (accounts' events), by APT: kept apart from the APT's row so that an
# account seen before its APT is not lost; the APT's row copies whether it is registered, which
# the list filters on.
app_accounts = Table(
    "topology_app_accounts",
    residents_metadata,
    Column("apartment_id", String(36), primary_key=True),
    Column("master_account_id", String(36), nullable=False),
    Column("app_status", String(20), nullable=False),
)

# Which APT each master account belongs to (accounts' later events name only the account).
master_apartments = Table(
    "topology_master_apartments",
    residents_metadata,
    Column("master_account_id", String(36), primary_key=True),
    Column("apartment_id", String(36), nullable=False),
)

# How many APTs each scope holds, the list's total when no search narrows it: a community, a
# building, and "<community>/registered" (its APTs whose app is registered).
apartment_totals = Table(
    "topology_apartment_totals",
    residents_metadata,
    Column("scope_id", String(64), primary_key=True),
    Column("apartments", Integer, nullable=False),
)


def _registered_scope(community_id: str) -> str:
    return f"{community_id}/{REGISTERED}"


def _move_total(rows: Rows, scope: str, delta: int) -> None:
    found = rows.get(apartment_totals, scope)
    total = (found["apartments"] if found else 0) + delta
    if total:
        rows.put(apartment_totals, scope_id=scope, apartments=total)
    else:  # no row for none: the same rows whatever order the sources are read in
        rows.delete(apartment_totals, scope)


def _add_to_totals(rows: Rows, data: dict[str, Any], delta: int, registered: bool) -> None:
    community_id = str(data["community_id"])
    for scope in (community_id, str(data["building_id"])):
        _move_total(rows, scope, delta)
    if registered:
        _move_total(rows, _registered_scope(community_id), delta)


def _registered_now(rows: Rows, apartment_id: str, registered: bool) -> None:
    """The APT's row follows its app account (if the APT is there), and so does the total."""
    row = rows.get(apartments, apartment_id)
    if row is None or row["registered"] == registered:
        return
    rows.update(apartments, apartment_id, registered=registered)
    _move_total(rows, _registered_scope(row["community_id"]), 1 if registered else -1)


def _account_apartment(rows: Rows, master_account_id: str) -> str | None:
    """The APT of this master account, if it is still that APT's account."""
    found = rows.get(master_apartments, master_account_id)
    if found is None:
        return None
    app = rows.get(app_accounts, found["apartment_id"])
    if app is None or app["master_account_id"] != master_account_id:
        return None
    return str(found["apartment_id"])


# What the Residents list sorts and searches by: expressions without bound parameters, so the
# indexes below serve them (concierge.lists).
_NONE = literal_column("''")
RESIDENT_ORDERS: dict[str, list[ColumnElement[Any]]] = {
    # Shorter first, so APT 99 comes before APT 101 (numbers are text: "2#123").
    "number": [func.length(apartments.c.number), apartments.c.number],
    "name": [func.lower(func.coalesce(apartments.c.name, _NONE)),
             func.length(apartments.c.number), apartments.c.number],
    "resident": [func.lower(func.coalesce(apartments.c.first_name, _NONE)),
                 func.lower(func.coalesce(apartments.c.last_name, _NONE))],
    "created_at": [apartments.c.created_at],
}
for _key, _expressions in RESIDENT_ORDERS.items():
    Index(f"ix_topology_apartments_by_{_key}", apartments.c.community_id, *_expressions,
          apartments.c.id)
trigram_index(apartments, "ix_topology_apartments_search", apartments.c.search)
_SEARCHED = ("first_name", "last_name", "email", "name", "number")


def _search_text(row: dict[str, Any]) -> str:
    """The resident's full name, email, APT name and number, one per line (a search box holds
    one line, so no query matches across two of them)."""
    full_name = f"{row.get('first_name') or ''} {row.get('last_name') or ''}"
    return "\n".join((full_name, row.get("email") or "", row.get("name") or "",
                      row.get("number") or "")).lower()


def _searchable(rows: Rows, apartment_id: str) -> None:
    row = rows.get(apartments, apartment_id)
    if row is not None:
        rows.update(apartments, apartment_id, search=_search_text(row))


class ResidentsView(ReadModel):
    """Residents: each APT with its building, resident and SmartPlus app status."""

    name = "topology_residents"
    version = 3  # 3: search column, registered flag, totals, the indexes of sorts and search
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
    def prefetch(rows: Rows, envelopes: list[Envelope]) -> None:
        """The rows a batch reads (APTs, their accounts, the totals they move), a query each."""
        added, changed, masters, scopes = [], [], [], []
        created: dict[str, str] = {}  # master accounts created in this batch: their APTs
        for env in envelopes:  # (an event no handler takes may come undecoded: no "data")
            kind = env["type"]
            if env["source"] != "topology":
                if kind == "MasterAccountCreated":
                    created[env["stream_id"]] = str(env["data"].get("apartment_id"))
                elif kind in _ACCOUNT_CHANGES:
                    if env["stream_id"] in created:
                        changed.append(created[env["stream_id"]])
                    else:
                        masters.append(env["stream_id"])
            elif kind in ("ApartmentAdded", "ApartmentDeleted"):
                data = env["data"]
                (added if kind == "ApartmentAdded" else changed).append(env["stream_id"])
                scopes += [str(data.get("community_id")), str(data.get("building_id")),
                           _registered_scope(str(data.get("community_id")))]
        rows.prefetch(master_apartments, masters)
        for master in masters:  # held now: no query
            found = rows.get(master_apartments, master)
            if found is not None:
                changed.append(str(found["apartment_id"]))
        rows.prefetch(app_accounts, added + changed)
        rows.prefetch(apartments, changed)  # a new APT's row is written whole, not read
        for apartment_id in changed:
            row = rows.get(apartments, apartment_id)
            if row is not None:
                scopes.append(_registered_scope(row["community_id"]))
        rows.prefetch(apartment_totals, scopes)

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
        app = rows.get(app_accounts, env["stream_id"])
        registered = app is not None and app["app_status"] == REGISTERED
        rows.put(apartments, id=env["stream_id"], building_id=str(data["building_id"]),
                 community_id=str(data["community_id"]), installer_id=str(data["installer_id"]),
                 number=data["number"], name=data.get("name"),
                 floor=_floor_text(data.get("floor")), created_at=_instant(env["occurred_at"]),
                 search=_search_text(data), registered=registered)
        _add_to_totals(rows, data, 1, registered)

    @staticmethod
    def resident_added(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.update(apartments, env["stream_id"], first_name=data.get("first_name"),
                    last_name=data.get("last_name"), email=data.get("email"),
                    mobile=data.get("mobile"))
        _searchable(rows, env["stream_id"])

    @staticmethod
    def apartment_edited(rows: Rows, env: Envelope) -> None:
        values = _changes(env, ("number", "name", "floor"))
        if "floor" in values:
            values["floor"] = _floor_text(values["floor"])
        rows.update(apartments, env["stream_id"], **values)
        if values.keys() & set(_SEARCHED):
            _searchable(rows, env["stream_id"])

    @staticmethod
    def resident_edited(rows: Rows, env: Envelope) -> None:
        values = _changes(env, ("first_name", "last_name", "email", "mobile"))
        rows.update(apartments, env["stream_id"], **values)
        if values.keys() & set(_SEARCHED):
            _searchable(rows, env["stream_id"])

    @staticmethod
    def apartment_reset(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        cleared = set(data.get("cleared_fields") or [])
        values: dict[str, Any] = {k: None for k in ("email", "mobile") if k in cleared}
        if data.get("tenancy"):
            # The names the next tenancy keeps: what a rebuild reads once the previous
            # tenant's key is gone (its ResidentAdded then reads as None).
            values.update(first_name=data.get("first_name"), last_name=data.get("last_name"))
        rows.update(apartments, env["stream_id"], **values)
        if values:
            _searchable(rows, env["stream_id"])

    @staticmethod
    def apartment_deleted(rows: Rows, env: Envelope) -> None:
        row = rows.get(apartments, env["stream_id"])
        if row is None:
            return
        rows.delete(apartments, env["stream_id"])
        _add_to_totals(rows, env["data"], -1, row["registered"])

    @staticmethod
    def master_account_created(rows: Rows, env: Envelope) -> None:
        apartment_id = str(env["data"]["apartment_id"])
        rows.put(master_apartments, master_account_id=env["stream_id"], apartment_id=apartment_id)
        rows.put(app_accounts, apartment_id=apartment_id, master_account_id=env["stream_id"],
                 app_status=UNREGISTERED)
        # The APT's row needs no change: a registered account before this one was closed
        # first (accounts' log is in order), and closing cleared the flag.

    @staticmethod
    def _status(rows: Rows, env: Envelope, status: str) -> None:
        apartment_id = _account_apartment(rows, env["stream_id"])
        if apartment_id is not None:
            rows.update(app_accounts, apartment_id, app_status=status)
            _registered_now(rows, apartment_id, status == REGISTERED)

    @staticmethod
    def master_account_registered(rows: Rows, env: Envelope) -> None:
        ResidentsView._status(rows, env, REGISTERED)

    @staticmethod
    def master_account_reset(rows: Rows, env: Envelope) -> None:
        ResidentsView._status(rows, env, UNREGISTERED)

    @staticmethod
    def master_account_closed(rows: Rows, env: Envelope) -> None:
        # A closed account records nothing more, so no later event can bring these rows back.
        apartment_id = _account_apartment(rows, env["stream_id"])
        rows.delete(master_apartments, env["stream_id"])
        if apartment_id is not None:
            rows.delete(app_accounts, apartment_id)
            _registered_now(rows, apartment_id, False)


_ACCOUNT_CHANGES = ("MasterAccountRegistered", "MasterAccountReset", "MasterAccountClosed")

def _ended_tenancy(env: Envelope) -> list[str]:
    """The tenant a reset or a delete ends: its key goes (concierge.vault)."""
    data = env["data"]
    tenancy = int(data.get("tenancy") or 0)
    if env["type"] == "ApartmentReset":
        return [f"tenant:{env['stream_id']}:{tenancy - 1}"] if tenancy else []
    return [f"tenant:{env['stream_id']}:{tenancy}"]


TenantKeys = shred_on({"ApartmentReset": _ended_tenancy, "ApartmentDeleted": _ended_tenancy},
                      "topology", "topology_tenant_keys")

READ_MODELS: tuple[type[ReadModel], ...] = (SitesView, BuildingsView, ResidentsView,
                                            TenantKeys)


# --- queries ---------------------------------------------------------------------------------


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
        "building_name": None,
        "community_id": row.community_id,
        "number": row.number,
        "name": row.name,
        "floor": _floor_value(row.floor),
        "first_name": row.first_name,
        "last_name": row.last_name,
        "email": row.email,
        "mobile": row.mobile,
        "app_status": UNREGISTERED,
        "master_account_id": None,
        "created_at": row.created_at,
    }


def _with_buildings_and_apps(conn: Connection, items: list[dict[str, Any]]) -> None:
    """The page's building names and app statuses, by key (joined after the limit)."""
    ab, aa = apartment_buildings, app_accounts
    names = dict(conn.execute(select(ab.c.id, ab.c.name).where(
        ab.c.id.in_({item["building_id"] for item in items}))).tuples().all())
    apps = {row.apartment_id: row for row in conn.execute(
        select(aa.c.apartment_id, aa.c.app_status, aa.c.master_account_id)
        .where(aa.c.apartment_id.in_([item["id"] for item in items])))}
    for item in items:
        item["building_name"] = names.get(item["building_id"])
        app = apps.get(item["id"])
        if app is not None:
            item["app_status"] = app.app_status
            item["master_account_id"] = app.master_account_id


def _kept_total(conn: Connection, scope: str) -> int:
    return int(conn.execute(select(apartment_totals.c.apartments).where(
        apartment_totals.c.scope_id == scope)).scalar() or 0)


class TopologyViews:
    """Queries over the read models, always scoped to one installer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def list_communities(self, installer_id: str, page: int = 1,
                         per_page: int = PER_PAGE_DEFAULT, sort: str = "name",
                         q: str | None = None, only: list[str] | None = None
                         ) -> dict[str, Any]:
        """`only`: a property manager's communities (None: all the installer's)."""
        key, descending = sort_key(sort, COMMUNITY_SORTS)
        c = communities
        query = select(c).where(c.c.installer_id == installer_id)
        if only is not None:
            query = query.where(c.c.id.in_(only))
        if q and q.strip():
            query = query.where(containing(func.lower(c.c.name), q.strip().lower()))
        column = func.lower(c.c.name) if key == "name" else c.c.created_at
        with self.engine.connect() as conn:
            return page_of(conn, query, [column, c.c.id], descending, page, per_page,
                           _community_item, enrich=_with_community_counts)

    def list_buildings(self, installer_id: str, community_id: str, page: int = 1,
                       per_page: int = PER_PAGE_DEFAULT, sort: str = "name",
                       q: str | None = None) -> dict[str, Any]:
        key, descending = sort_key(sort, BUILDING_SORTS)
        b = buildings
        query = select(b).where(and_(b.c.installer_id == installer_id,
                                     b.c.community_id == community_id))
        if q and q.strip():
            query = query.where(containing(func.lower(b.c.name), q.strip().lower()))
        column = func.lower(b.c.name) if key == "name" else b.c.created_at
        with self.engine.connect() as conn:
            return page_of(conn, query, [column, b.c.id], descending, page, per_page,
                           _building_item, enrich=_with_apartment_counts)

    def list_residents(self, installer_id: str, community_id: str, page: int = 1,
                       per_page: int = PER_PAGE_DEFAULT, sort: str = "number",
                       q: str | None = None, app_status: str | None = None,
                       building_id: str | None = None) -> dict[str, Any]:
        key, descending = sort_key(sort, RESIDENT_SORTS)
        a = apartments
        # The application has checked that the community is the installer's: its APTs are.
        query = select(a).where(a.c.community_id == community_id)
        if app_status:
            query = query.where(a.c.registered.is_(app_status == REGISTERED))
        if building_id:
            query = query.where(a.c.building_id == str(building_id))
        text = " ".join((q or "").split())
        if text:
            query = query.where(containing(a.c.search, text.lower()))
        with self.engine.connect() as conn:
            total = None  # counted: a search, or a status within a building
            if not text and not (app_status and building_id):
                total = _kept_total(conn, str(building_id) if building_id else community_id)
                if app_status:
                    registered = _kept_total(conn, _registered_scope(community_id))
                    total = registered if app_status == REGISTERED else total - registered
            return page_of(conn, query, [*RESIDENT_ORDERS[key], a.c.id], descending, page,
                           per_page, _resident_item, total=total,
                           enrich=_with_buildings_and_apps)

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

    def dashboard(self, installer_id: str, only: list[str] | None = None) -> dict[str, Any]:
        """The Dashboard's quick view: sites, residents (end users), devices, app accounts;
        `only` a property manager's communities."""
        c, cc = communities, community_counts
        scope = c.c.installer_id == installer_id
        if only is not None:
            scope = and_(scope, c.c.id.in_(only))
        with self.engine.connect() as conn:
            found = conn.execute(
                select(func.count(c.c.id), func.sum(cc.c.buildings), func.sum(cc.c.apartments),
                       func.sum(cc.c.residents), func.sum(cc.c.registered),
                       func.sum(cc.c.devices))
                .select_from(c.outerjoin(cc, cc.c.community_id == c.c.id))
                .where(scope)).one()
        sites, buildings_, apartments_, residents, registered, devices = (int(v or 0)
                                                                          for v in found)
        return {
            "communities": sites,
            "buildings": buildings_,
            "apartments": apartments_,
            "residents": residents,
            "devices": devices,
            "app_accounts": {REGISTERED: registered, UNREGISTERED: apartments_ - registered},
        }
