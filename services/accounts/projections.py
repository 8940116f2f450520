"""Accounts read models: open sessions (for fast token checks), portal accounts, master accounts.

All three are fed by the service's own events and brought up to date inside the command that
wrote them, so a caller reads its own write (a token works as soon as `login` returns).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Engine

from concierge.lists import containing, page_of, sort_key
from concierge.projection import ProjectFn, ReadModel, Rows
from concierge.subscription import Envelope
from concierge.vault import shred_on
from contracts.accounts import PM_SORTS, SUB_ACCOUNT_SORTS
from services.accounts.domain import INSTALLER, PROPERTY_MANAGER, SUB_INSTALLER

SOURCE = "accounts"

sessions_metadata = MetaData()
sessions = Table(
    "sessions", sessions_metadata,
    Column("token_digest", String(64), primary_key=True),
    Column("account_id", String(36), nullable=False, index=True),
    Column("role", String(20), nullable=False),
    Column("username", String(64), nullable=False),
    Column("installer_id", String(36), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("closed", Boolean, nullable=False),
)

session_owners = Table(
    "session_owners", sessions_metadata,
    Column("account_id", String(36), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("username", String(64), nullable=False),
    Column("installer_id", String(36), nullable=True),
)

portal_metadata = MetaData()
portal_accounts = Table(
    "portal_accounts", portal_metadata,
    Column("id", String(36), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("username", String(64), nullable=False),
    Column("email", String(254), nullable=True),
    Column("created_by", String(36), nullable=True, index=True),
    Column("phone", String(32), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=True),
)

property_managers = Table(
    "property_managers", portal_metadata,
    Column("id", String(36), primary_key=True),
    Column("installer_id", String(36), nullable=False, index=True),
    Column("email", String(254), nullable=False),
    Column("first_name", String(255), nullable=False),
    Column("last_name", String(255), nullable=False),
    Column("language", String(20), nullable=False),
    Column("password_reminder", Boolean, nullable=False),
    Column("two_factor", Boolean, nullable=False),
    # [{community_id, app, delete_account, log_access_control}] as JSON text.
    Column("communities", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=True),
)

master_metadata = MetaData()
master_accounts = Table(
    "master_accounts", master_metadata,
    Column("id", String(36), primary_key=True),
    Column("apartment_id", String(36), nullable=False, unique=True),
    Column("community_id", String(36), nullable=False, index=True),
    Column("installer_id", String(36), nullable=False, index=True),
    Column("first_name", String(255), nullable=True),  # None: a shredded tenant's
    Column("last_name", String(255), nullable=True),
    Column("email", String(254), nullable=True),
    Column("app_status", String(20), nullable=False),
)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _occurred(env: Envelope) -> datetime | None:
    value = env.get("occurred_at")
    return _instant(value) if value else None


def _instant(value: datetime | str) -> datetime:
    """UTC, aware; SQLite hands back naive datetimes for what was written in UTC."""
    instant = datetime.fromisoformat(value) if isinstance(value, str) else value
    if instant.tzinfo is None:
        return instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


class SessionsView(ReadModel):
    """Open and closed sessions by token digest, so `authenticate` is one primary-key read.

    Own read models see every attribute of the service's events, private ones included (they
    never leave it): the token digests of SessionOpened and SessionClosed, and, from
    PortalAccountCreated, who each account is (`session_owners`). A login beyond the session
    limit records the oldest session's SessionClosed before its own SessionOpened.
    """

    name = "accounts_sessions"
    # 2: fed by the events alone (session_owners), no longer by the aggregate; 3: a
    # sub-installer's sessions work on its main installer's data, and end all at once; 4: so
    # do a property manager's.
    version = 4
    metadata = sessions_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {SOURCE: {"PortalAccountCreated": self.account_created,
                         "SessionOpened": self.opened, "SessionClosed": self.closed,
                         "SessionsEnded": self.ended}}

    @staticmethod
    def account_created(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        installer = {INSTALLER: env["stream_id"], SUB_INSTALLER: data.get("created_by"),
                     PROPERTY_MANAGER: data.get("created_by")}.get(data["role"])
        rows.put(session_owners, account_id=env["stream_id"], role=data["role"],
                 username=data["username"], installer_id=_text(installer))

    @staticmethod
    def opened(rows: Rows, env: Envelope) -> None:
        owner = rows.get(session_owners, env["stream_id"])
        if owner is None:
            raise LookupError(f"session opened for unknown account {env['stream_id']}")
        data = env["data"]
        rows.put(sessions, token_digest=data["token_digest"], account_id=env["stream_id"],
                 role=owner["role"], username=owner["username"],
                 installer_id=owner["installer_id"],
                 expires_at=_instant(data["expires_at"]), closed=False)

    @staticmethod
    def closed(rows: Rows, env: Envelope) -> None:
        rows.update(sessions, env["data"]["token_digest"], closed=True)

    @staticmethod
    def ended(rows: Rows, env: Envelope) -> None:
        for digest in env["data"]["token_digests"]:
            rows.update(sessions, digest, closed=True)


class PortalAccountsView(ReadModel):
    """Portal accounts that still work, for lists (an installer's sub-accounts) and for
    scoping by who created whom; a deleted account's row goes."""

    name = "accounts_portal_accounts"
    # 2: phone and creation time (the sub-account list), deleted accounts go; 3: property
    # managers with their communities.
    version = 3
    metadata = portal_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {SOURCE: {"PortalAccountCreated": self.created,
                         "PortalAccountEdited": self.edited,
                         "PortalAccountDeleted": self.deleted,
                         "PropertyManagerSet": self.manager_set}}

    @staticmethod
    def manager_set(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        account = rows.get(portal_accounts, env["stream_id"])
        rows.put(property_managers, id=env["stream_id"],
                 installer_id=str(data["installer_id"]),
                 email=(account or {}).get("email") or "", first_name=data["first_name"],
                 last_name=data["last_name"], language=data["language"],
                 password_reminder=bool(data["password_reminder"]),
                 two_factor=bool(data["two_factor"]),
                 communities=json.dumps(data["communities"], sort_keys=True),
                 created_at=(account or {}).get("created_at"))

    @staticmethod
    def created(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.put(portal_accounts, id=env["stream_id"], role=data["role"],
                 username=data["username"], email=data.get("email"),
                 created_by=_text(data.get("created_by")), phone=data.get("phone"),
                 created_at=_occurred(env))

    @staticmethod
    def edited(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.update(portal_accounts, env["stream_id"], email=data.get("email"),
                    phone=data.get("phone"))

    @staticmethod
    def deleted(rows: Rows, env: Envelope) -> None:
        rows.delete(portal_accounts, env["stream_id"])
        rows.delete(property_managers, env["stream_id"])


class MasterAccountsView(ReadModel):
    """Residents' app accounts by apartment, with the app status the resident list shows; only
    accounts that still work (a closed account's row is removed)."""

    name = "accounts_master_accounts"
    version = 2  # 2: names as the reset keeps them (a shredded tenant's read as None)
    metadata = master_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {SOURCE: {
            "MasterAccountCreated": self.created,
            "MasterAccountContactChanged": self.contact_changed,
            "MasterAccountRegistered": self.registered,
            "MasterAccountReset": self.reset,
            "MasterAccountClosed": self.closed,
        }}

    @staticmethod
    def created(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.put(master_accounts, id=env["stream_id"], apartment_id=data["apartment_id"],
                 community_id=data["community_id"], installer_id=data["installer_id"],
                 first_name=data["first_name"], last_name=data["last_name"],
                 email=data.get("email"), app_status="unregistered")

    @staticmethod
    def contact_changed(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        _set(rows, env, first_name=data["first_name"], last_name=data["last_name"],
             email=data.get("email"))

    @staticmethod
    def registered(rows: Rows, env: Envelope) -> None:
        _set(rows, env, app_status="registered")

    @staticmethod
    def reset(rows: Rows, env: Envelope) -> None:
        # Names stay: the manual's Reset list does not remove them. The reset records them
        # again for the next tenancy (what a rebuild reads once the previous key is gone).
        data = env["data"]
        names = ({"first_name": data.get("first_name"), "last_name": data.get("last_name")}
                 if data.get("resets") is not None else {})
        _set(rows, env, email=None, app_status="unregistered", **names)

    @staticmethod
    def closed(rows: Rows, env: Envelope) -> None:
        # A deleted APT's resident has no app account any more; the store keeps its history.
        rows.delete(master_accounts, env["stream_id"])


def _set(rows: Rows, env: Envelope, **values: Any) -> None:
    rows.update(master_accounts, env["stream_id"], **values)


class AccountsViews:
    """The queries the application answers from the read models."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self, token_digest: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sessions).where(sessions.c.token_digest == token_digest)
            ).one_or_none()
        if row is None:
            return None
        found = dict(row._mapping)
        found["expires_at"] = _instant(found["expires_at"])
        return found

    def master_account(self, apartment_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(master_accounts).where(master_accounts.c.apartment_id == apartment_id)
            ).one_or_none()
        return dict(row._mapping) if row is not None else None

    def sub_installers(self, installer_id: str, page: int = 1, per_page: int = 10,
                       sort: str = "-created_at", q: str | None = None) -> dict[str, Any]:
        """The installer's sub-accounts (manual: Users > Sub Account), searched by account."""
        key, descending = sort_key(sort, SUB_ACCOUNT_SORTS)
        p = portal_accounts
        query = select(p).where(p.c.created_by == installer_id, p.c.role == SUB_INSTALLER)
        if q:
            query = query.where(containing(func.lower(p.c.username), q.lower()))
        order = {"username": [p.c.username], "created_at": [p.c.created_at]}[key]
        with self.engine.connect() as conn:
            return page_of(conn, query, [*order, p.c.id], descending, page, per_page,
                           sub_installer_item)

    def property_managers(self, installer_id: str, page: int = 1, per_page: int = 10,
                          sort: str = "-created_at", q: str | None = None,
                          community_id: Any = None) -> dict[str, Any]:
        """The installer's property managers, searched by name or email; one community's."""
        key, descending = sort_key(sort, PM_SORTS)
        m = property_managers
        query = select(m).where(m.c.installer_id == installer_id)
        if q:
            text = q.lower()
            query = query.where(or_(containing(func.lower(m.c.first_name), text),
                                    containing(func.lower(m.c.last_name), text),
                                    containing(func.lower(m.c.email), text)))
        if community_id is not None:
            query = query.where(containing(m.c.communities, f'"{community_id}"'))
        order = {"name": [m.c.first_name, m.c.last_name], "email": [m.c.email],
                 "created_at": [m.c.created_at]}[key]
        with self.engine.connect() as conn:
            return page_of(conn, query, [*order, m.c.id], descending, page, per_page,
                           property_manager_item)

    def scopes(self, account_id: str) -> dict[str, dict[str, bool]]:
        """A property manager's communities, each with its permissions there."""
        with self.engine.connect() as conn:
            found = conn.execute(select(property_managers.c.communities).where(
                property_managers.c.id == account_id)).scalar_one_or_none()
        assignments = json.loads(found) if found else []
        return {a["community_id"]: {k: bool(a.get(k)) for k in
                                    ("app", "delete_account", "log_access_control")}
                for a in assignments}

    def portal_account(self, account_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(portal_accounts).where(portal_accounts.c.id == account_id)
            ).one_or_none()
        return dict(row._mapping) if row is not None else None


def property_manager_item(row: Any) -> dict[str, Any]:
    found = row._mapping
    created = found["created_at"]
    return {"id": found["id"], "email": found["email"], "first_name": found["first_name"],
            "last_name": found["last_name"], "language": found["language"],
            "password_reminder": found["password_reminder"], "two_factor": found["two_factor"],
            "installer_id": found["installer_id"],
            "communities": json.loads(found["communities"]),
            "created_at": _instant(created).isoformat() if created is not None else None}


def sub_installer_item(row: Any) -> dict[str, Any]:
    found = row._mapping
    created = found["created_at"]
    return {"id": found["id"], "username": found["username"], "email": found["email"],
            "phone": found["phone"], "installer_id": found["created_by"],
            "created_at": _instant(created).isoformat() if created is not None else None}


def _ended_tenancy(env: Envelope) -> list[str]:
    """The tenant a reset or a close ends: its key goes (concierge.vault)."""
    resets = env["data"].get("resets")
    if resets is None:
        return []  # recorded before tenants had keys: nothing was sealed
    if env["type"] == "MasterAccountReset":
        return [f"master:{env['stream_id']}:{int(resets) - 1}"]
    return [f"master:{env['stream_id']}:{int(resets)}"]


AccountsKeys = shred_on({"MasterAccountReset": _ended_tenancy,
                         "MasterAccountClosed": _ended_tenancy}, SOURCE, "accounts_tenant_keys")


def read_models(app: Any = None) -> list[ReadModel]:
    """Every read model of the accounts service, in the order they are brought up to date."""
    return [SessionsView(), PortalAccountsView(), MasterAccountsView(), AccountsKeys()]
