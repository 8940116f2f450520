"""Accounts read models: open sessions (for fast token checks), portal accounts, master accounts.

All three are fed by the service's own events and brought up to date inside the command that
wrote them, so a caller reads its own write (a token works as soon as `login` returns).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from sqlalchemy import Boolean, Column, DateTime, MetaData, String, Table, select
from sqlalchemy.engine import Engine

from concierge.projection import ProjectFn, ReadModel, Rows
from concierge.store import ServiceApplication
from concierge.subscription import Envelope

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

    Published events leave the token digest out (it is private), and own read models get the
    published data; so each session event syncs the account's rows from the aggregate itself.
    Syncing to the latest state converges on rebuild too: the last event of a stream syncs last.
    """

    name = "accounts_sessions"
    metadata = sessions_metadata

    def __init__(self, app: ServiceApplication) -> None:
        self.app = app

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        return {SOURCE: {"SessionOpened": self.sync, "SessionClosed": self.sync}}

    def sync(self, rows: Rows, env: Envelope) -> None:
        try:
            account = self.app.repository.get(UUID(env["stream_id"]))
        except AggregateNotFoundError:
            return
        account_id = str(account.id)
        open_now: dict[str, str] = dict(account.sessions)
        known = set(rows.execute(
            select(sessions.c.token_digest).where(
                sessions.c.account_id == account_id, sessions.c.closed.is_(False))
        ).scalars())
        installer_id = account.installer_id
        for digest in open_now.keys() - known:
            rows.put(sessions, token_digest=digest, account_id=account_id, role=account.role,
                     username=account.username,
                     installer_id=str(installer_id) if installer_id else None,
                     expires_at=_instant(open_now[digest]), closed=False)
        for digest in sorted(known - open_now.keys()):
            rows.update(sessions, digest, closed=True)


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


def read_models(app: ServiceApplication) -> list[ReadModel]:
    """Every read model of the accounts service, in the order they are brought up to date."""
    return [SessionsView(app), PortalAccountsView(), MasterAccountsView()]
