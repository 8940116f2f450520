"""Accounts read models: open sessions (for fast token checks), portal accounts, master accounts.

All three are fed by the service's own events and brought up to date inside the command that
wrote them, so a caller reads its own write (a token works as soon as `login` returns).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, MetaData, String, Table, select
from sqlalchemy.engine import Engine

from concierge.projection import ProjectFn, ReadModel, Rows
from concierge.subscription import Envelope
from services.accounts.domain import INSTALLER

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
)

portal_metadata = MetaData()
portal_accounts = Table(
    "portal_accounts", portal_metadata,
    Column("id", String(36), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("username", String(64), nullable=False),
    Column("email", String(254), nullable=True),
    Column("created_by", String(36), nullable=True),
)

master_metadata = MetaData()
master_accounts = Table(
    "master_accounts", master_metadata,
    Column("id", String(36), primary_key=True),
    Column("apartment_id", String(36), nullable=False, unique=True),
    Column("community_id", String(36), nullable=False, index=True),
    Column("installer_id", String(36), nullable=False, index=True),
    Column("first_name", String(255), nullable=False),
    Column("last_name", String(255), nullable=False),
    Column("email", String(254), nullable=True),
    Column("app_status", String(20), nullable=False),
)


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
    version = 2  # 2: fed by the events alone (session_owners), no longer by the aggregate
    metadata = sessions_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {SOURCE: {"PortalAccountCreated": self.account_created,
                         "SessionOpened": self.opened, "SessionClosed": self.closed}}

    @staticmethod
    def account_created(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.put(session_owners, account_id=env["stream_id"], role=data["role"],
                 username=data["username"])

    @staticmethod
    def opened(rows: Rows, env: Envelope) -> None:
        owner = rows.get(session_owners, env["stream_id"])
        if owner is None:
            raise LookupError(f"session opened for unknown account {env['stream_id']}")
        data = env["data"]
        rows.put(sessions, token_digest=data["token_digest"], account_id=env["stream_id"],
                 role=owner["role"], username=owner["username"],
                 installer_id=env["stream_id"] if owner["role"] == INSTALLER else None,
                 expires_at=_instant(data["expires_at"]), closed=False)

    @staticmethod
    def closed(rows: Rows, env: Envelope) -> None:
        rows.update(sessions, env["data"]["token_digest"], closed=True)


class PortalAccountsView(ReadModel):
    """Distributors and installers, for lists and for scoping by who created whom."""

    name = "accounts_portal_accounts"
    metadata = portal_metadata

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {SOURCE: {"PortalAccountCreated": self.created}}

    @staticmethod
    def created(rows: Rows, env: Envelope) -> None:
        data = env["data"]
        rows.put(portal_accounts, id=env["stream_id"], role=data["role"],
                 username=data["username"], email=data.get("email"),
                 created_by=data.get("created_by"))


class MasterAccountsView(ReadModel):
    """Residents' app accounts by apartment, with the app status the resident list shows; only
    accounts that still work (a closed account's row is removed)."""

    name = "accounts_master_accounts"
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
        # Names stay: the manual's Reset list does not remove them.
        _set(rows, env, email=None, app_status="unregistered")

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

    def portal_account(self, account_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(portal_accounts).where(portal_accounts.c.id == account_id)
            ).one_or_none()
        return dict(row._mapping) if row is not None else None


def read_models(app: Any = None) -> list[ReadModel]:
    """Every read model of the accounts service, in the order they are brought up to date."""
    return [SessionsView(), PortalAccountsView(), MasterAccountsView()]
