"""Notify's read model: every email and its delivery state (`EmailsView`), fed by notify's
own events, and its queries (`NotifyViews`), as every context has them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine

from concierge.database import projection_tracking
from concierge.projection import ReadModel, Rows
from concierge.vault import shred_on
from services.notify.domain import (
    ACTIVATION,
    CANCELLED,
    FAILED,
    PENDING,
    QUEUED,
    RETRYING,
    SENT,
    activation_account,
)

SOURCE = "notify"

metadata = MetaData()
emails = Table(
    "notify_emails", metadata,
    Column("id", String(36), primary_key=True),
    Column("position", BigInteger, nullable=False, index=True),
    Column("template", String(50), nullable=False),
    Column("recipient", String(254), nullable=True, index=True),  # None: erased
    Column("subject", Text, nullable=True),
    Column("status", String(20), nullable=False, index=True),
    Column("attempts", Integer, nullable=False),
    # Naive UTC: SQLite keeps no zone; every value here is converted on the way in and out.
    Column("queued_at", DateTime, nullable=True),
    Column("due_at", DateTime, nullable=True, index=True),
    Column("sent_at", DateTime, nullable=True),
    Column("transport", String(20), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("cause_event_id", String(36), nullable=False),
    Column("apartment_id", String(36), nullable=True, index=True),
    Column("installer_id", String(36), nullable=True, index=True),
    # The master account an activation email activates (closing it cancels the email).
    Column("master_account_id", String(36), nullable=True, index=True),
)


def _ended_tenancy(env: dict[str, Any]) -> list[str]:
    resets = env["data"].get("resets")
    if resets is None:
        return []  # recorded before tenants had keys: nothing was sealed
    ended = int(resets) - 1 if env["type"] == "MasterAccountReset" else int(resets)
    return [f"mail:{env['stream_id']}:{ended}"]


def _erase_listed(rows: Rows, env: dict[str, Any]) -> None:
    """The account's emails queued so far were the ended tenant's (the next tenant's come from
    accounts' later events, applied after this one): no address or subject of theirs stays
    listed. A rebuild of the list reads their sealed copies as None anyway; this model is not
    rebuilt (it has no tables)."""
    rows.execute(update(emails).where(emails.c.master_account_id == str(env["stream_id"]))
                 .values(recipient=None, subject=None))


NotifyKeys = shred_on({"MasterAccountReset": _ended_tenancy,
                       "MasterAccountClosed": _ended_tenancy}, "accounts", "notify_tenant_keys",
                      also=_erase_listed)


def _naive_utc(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    instant = datetime.fromisoformat(value) if isinstance(value, str) else value
    if instant.tzinfo is None:
        return instant
    return instant.astimezone(UTC).replace(tzinfo=None)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.replace(tzinfo=UTC).isoformat()


class EmailsView(ReadModel):
    """Every email and its delivery state, from notify's own events."""

    name = "notify_emails"
    # 2: master_account_id and cancelled emails; 3: a tenant's address and subject erased
    # when its tenancy ends.
    version = 3
    metadata = metadata

    def handlers(self) -> dict[str, dict[str, Any]]:
        return {"notify": {"EmailQueued": self.queued, "EmailSent": self.sent,
                           "EmailFailed": self.failed, "EmailCancelled": self.cancelled}}

    @staticmethod
    def queued(rows: Rows, env: dict[str, Any]) -> None:
        data = env["data"]
        queued_at = _naive_utc(env.get("occurred_at"))
        account = data.get("master_account_id") or activation_account(data.get("idempotency_key"))
        rows.put(emails, id=env["stream_id"], position=int(env["position"]),
                 template=data["template"], recipient=data["recipient"],
                 subject=data["subject"], status=QUEUED, attempts=0, queued_at=queued_at,
                 due_at=queued_at, sent_at=None, transport=None, last_error=None,
                 cause_event_id=data["cause_event_id"], apartment_id=data.get("apartment_id"),
                 installer_id=data.get("installer_id"),
                 master_account_id=None if account is None else str(account))

    @staticmethod
    def sent(rows: Rows, env: dict[str, Any]) -> None:
        data = env["data"]
        rows.update(emails, env["stream_id"], status=SENT,
                    sent_at=_naive_utc(data["sent_at"]), transport=data["transport"],
                    due_at=None)

    @staticmethod
    def failed(rows: Rows, env: dict[str, Any]) -> None:
        data = env["data"]
        rows.update(emails, env["stream_id"], status=FAILED if data["gave_up"] else RETRYING,
                    attempts=int(data["attempts"]), last_error=data["reason"],
                    due_at=_naive_utc(data["retry_at"]))

    @staticmethod
    def cancelled(rows: Rows, env: dict[str, Any]) -> None:
        rows.update(emails, env["stream_id"], status=CANCELLED, due_at=None)


push_metadata = MetaData()
# The device pushes waiting for the pusher: a row leaves once its push is sent or expired, so
# the pusher's question stays as small as what is waiting.
pending_pushes = Table(
    "notify_pending_pushes", push_metadata,
    Column("id", String(36), primary_key=True),
    Column("position", BigInteger, nullable=False, index=True),
    # What the push carries, so that the pusher sends it from this row alone.
    Column("command_id", String(64), nullable=False),
    Column("mac", String(12), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("params", Text, nullable=False),  # JSON
    Column("deadline", String(40), nullable=False),
)


class PendingPushesView(ReadModel):
    """The device pushes not sent yet, in the order they were queued."""

    name = "notify_pending_pushes"
    version = 2  # 2: the push's content
    metadata = push_metadata

    def handlers(self) -> dict[str, dict[str, Any]]:
        return {"notify": {"PushQueued": self.queued, "PushSent": self.done,
                           "PushExpired": self.done}}

    @staticmethod
    def queued(rows: Rows, env: dict[str, Any]) -> None:
        data = env["data"]
        rows.put(pending_pushes, id=env["stream_id"], position=int(env["position"]),
                 command_id=str(data["command_id"]), mac=str(data["mac"]),
                 kind=str(data["kind"]), params=json.dumps(data.get("params") or {}),
                 deadline=str(data["deadline"]))

    @staticmethod
    def done(rows: Rows, env: dict[str, Any]) -> None:
        rows.delete(pending_pushes, env["stream_id"])


class NotifyViews:
    """Queries over the emails read model (the mailer's due emails, the operators' list)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def pending(self, due_by: datetime | None, limit: int) -> list[UUID]:
        query = select(emails.c.id).where(emails.c.status.in_(PENDING))
        if due_by is not None:
            query = query.where(emails.c.due_at <= _naive_utc(due_by))
        query = query.order_by(emails.c.due_at, emails.c.position).limit(limit)
        with self.engine.connect() as conn:
            return [UUID(r.id) for r in conn.execute(query)]

    def pending_pushes(self, limit: int) -> list[dict[str, Any]]:
        """The pushes waiting, oldest first: id, command_id, mac, kind, params, deadline."""
        query = select(pending_pushes).order_by(pending_pushes.c.position).limit(limit)
        with self.engine.connect() as conn:
            return [{**row._mapping, "id": UUID(row.id), "params": json.loads(row.params)}
                    for row in conn.execute(query)]

    def next_due(self) -> datetime | None:
        query = select(func.min(emails.c.due_at)).where(emails.c.status.in_(PENDING))
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar()
        return None if value is None else value.replace(tzinfo=UTC)

    def pending_activation(self, master_account_id: UUID | str) -> list[UUID]:
        """The activation emails of one master account not yet sent nor given up, oldest
        first."""
        query = (select(emails.c.id)
                 .where(emails.c.master_account_id == str(UUID(str(master_account_id))),
                        emails.c.template == ACTIVATION, emails.c.status.in_(PENDING))
                 .order_by(emails.c.position))
        with self.engine.connect() as conn:
            return [UUID(r.id) for r in conn.execute(query)]

    def position(self) -> int:
        """The last position of notify's log projected here."""
        pt = projection_tracking
        query = select(pt.c.position).where(and_(pt.c.projection == EmailsView.name,
                                                 pt.c.source == SOURCE))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def search(self, query: dict[str, Any]) -> dict[str, Any]:
        where = [getattr(emails.c, key) == str(query[key])
                 for key in ("status", "recipient", "apartment_id", "installer_id")
                 if query.get(key) is not None]
        page, per_page = int(query.get("page", 1)), int(query.get("per_page", 10))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(emails).where(*where)).scalar()
            rows = conn.execute(select(emails).where(*where).order_by(emails.c.position.desc())
                                .limit(per_page).offset((page - 1) * per_page)).all()
        return {"items": [self._summary(r._mapping) for r in rows], "total": int(total or 0),
                "page": page, "per_page": per_page}

    @staticmethod
    def _summary(row: Any) -> dict[str, Any]:
        return {
            "id": row["id"], "template": row["template"], "recipient": row["recipient"],
            "subject": row["subject"], "status": row["status"], "attempts": row["attempts"],
            "queued_at": _iso(row["queued_at"]),
            "retry_at": _iso(row["due_at"]) if row["status"] == RETRYING else None,
            "sent_at": _iso(row["sent_at"]), "transport": row["transport"],
            "last_error": row["last_error"], "cause_event_id": row["cause_event_id"],
            "apartment_id": row["apartment_id"], "installer_id": row["installer_id"],
        }
