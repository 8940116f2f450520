"""Notify's application: the policies that queue emails, rendering, and the mailer's bookkeeping.

The emails read model (`EmailsView`, fed by notify's own events) tells the mailer what is due and
operators what was sent; it lives here rather than in a `projections.py` while it is this small.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from marshmallow import Schema
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
)
from sqlalchemy.engine import Engine

from concierge import context
from concierge.database import projection_tracking
from concierge.projection import ReadModel, Rows
from concierge.records import META_KEY
from concierge.store import ServiceApplication
from contracts.accounts import (
    MasterAccountClosedSchema,
    MasterAccountContactChangedSchema,
    MasterAccountCreatedSchema,
)
from contracts.errors import Invalid
from services.notify.domain import (
    ACCOUNT_CLOSED,
    ACTIVATION,
    CANCELLED,
    FAILED,
    PENDING,
    QUEUED,
    RETRYING,
    SENT,
    Email,
    activation_account,
    activation_due,
)

if TYPE_CHECKING:
    from services.notify.mailer import MailSender

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
CORRELATIONS_KEPT = 10_000

# Accounts events that may ask for an activation email (services.notify.domain.activation_due),
# and the one that cancels those still pending.
ACCOUNTS_EVENTS: dict[str, type[Schema]] = {
    "MasterAccountCreated": MasterAccountCreatedSchema,
    "MasterAccountContactChanged": MasterAccountContactChangedSchema,
    "MasterAccountClosed": MasterAccountClosedSchema,
}


class EmailsViewBehind(RuntimeError):
    """The emails view could not be brought up to the store; the delivery is retried."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def template_environment(folder: Path = TEMPLATES_DIR) -> Environment:
    """HTML templates autoescape (names and addresses are user input); text ones do not."""
    return Environment(
        loader=FileSystemLoader(str(folder)),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False,
                                     default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


class NotifyApplication(ServiceApplication):
    service_name = "notify"

    def __init__(self, env: dict[str, str] | None = None, engine: Any = None,
                 templates: Path = TEMPLATES_DIR, sender: MailSender | None = None) -> None:
        super().__init__(env=env, engine=engine)
        self.templates = template_environment(templates)
        # Where the mailer delivers (services/notify/declaration.py picks it from the settings).
        self.sender = sender
        # Read model and query both; none without a read side.
        self.emails = EmailsView(engine) if engine is not None else None
        # Email id -> correlation id of its cause, for the mailer's events (oldest dropped).
        self._correlations: dict[str, str] = {}

    # -- policies ----------------------------------------------------------------------------
    def on_accounts_event(self, envelope: dict[str, Any]) -> list[Aggregate]:
        """The activation email a master account's event asks for, queued once: one per account,
        reset and address (the rule is `activation_due`); or, when the account is closed, its
        activation emails still pending, cancelled. Its `data` arrives loaded through its
        contract schema (`ACCOUNTS_EVENTS`, by the chassis)."""
        if envelope["type"] == "MasterAccountClosed":
            return self._cancel_activation(envelope)
        return self._queue_activation(envelope, envelope["data"])

    def lookups(self, envelopes: list[dict[str, Any]]) -> list[UUID]:
        """The email ids `on_accounts_event` will look for in these events (one query for a
        whole batch instead of two per event)."""
        ids = []
        for envelope in envelopes:
            kind = str(envelope.get("type"))
            if kind not in ("MasterAccountCreated", "MasterAccountContactChanged"):
                continue
            try:
                key = activation_due(kind, envelope["stream_id"], envelope["data"])
            except (KeyError, ValueError):
                continue
            if key is not None:
                ids.append(Email.create_id(envelope["event_id"], ACTIVATION, key))
            if kind == "MasterAccountCreated":
                ids.append(Email.create_id(envelope["event_id"], ACTIVATION))
        return ids

    def _queue_activation(self, envelope: dict[str, Any], data: dict[str, Any]) -> list[Aggregate]:
        kind = str(envelope["type"])
        key = activation_due(kind, envelope["stream_id"], data)
        if key is None:
            return []
        email_id = Email.create_id(envelope["event_id"], ACTIVATION, key)
        if email_id in self.repository or self._queued_without_key(envelope):
            return []
        rendered = self.render(ACTIVATION, first_name=data["first_name"],
                               last_name=data["last_name"], email=data["email"])
        try:
            email = Email.queue(
                cause_event_id=envelope["event_id"],
                template=ACTIVATION,
                recipient=data["email"],
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                apartment_id=data.get("apartment_id"),
                installer_id=data.get("installer_id"),
                idempotency_key=key,
                master_account_id=envelope["stream_id"],
            )
        except Invalid as exc:
            log.warning("no activation email for %s: %s", envelope.get("event_id"), exc.detail)
            return []
        self._correlations[str(email.id)] = context.current().correlation_id
        return [email]

    def _cancel_activation(self, envelope: dict[str, Any]) -> list[Aggregate]:
        """Closing a master account cancels its activation emails still pending: the app account
        they activate no longer works. A repeated close finds none pending and changes nothing."""
        cancelled_at = _occurred_at(envelope)
        emails = []
        for email_id in self._pending_activation(envelope["stream_id"]):
            email = self.email(email_id)
            if email.pending:  # a mailer may have delivered it since the view was read
                email.cancel(ACCOUNT_CLOSED, cancelled_at)
                emails.append(email)
        return emails

    def _pending_activation(self, master_account_id: UUID | str) -> list[UUID]:
        """The pending activation emails of one master account, from the emails view brought up
        to the store first.

        The view is written after each commit, not in it, so it may lag (a failed projection,
        another replica's commit). Caught up, it holds every email this account's earlier
        events queued: accounts' log is applied in order, each event committed with its
        tracking before the next is applied. When it cannot be caught up, the close is retried
        rather than leaving an email to be sent.
        """
        view = self._view()
        stored = self.max_position()
        self.catch_up_read_models()
        if view.position() < stored:
            raise EmailsViewBehind(f"the emails view is behind the store ({stored})")
        return view.pending_activation(master_account_id)

    def _queued_without_key(self, envelope: dict[str, Any]) -> bool:
        """A new account's activation email queued before emails had keys (its id comes from
        the cause), found when an operator replays accounts' log."""
        if envelope.get("type") != "MasterAccountCreated":
            return False
        return Email.create_id(envelope["event_id"], ACTIVATION) in self.repository

    def render(self, template: str, **values: Any) -> Rendered:
        """Subject, plain text and HTML of one template; the subject is forced onto one line."""
        subject = self.templates.get_template(f"{template}.subject.txt").render(**values)
        subject = " ".join(subject.split())
        text = self.templates.get_template(f"{template}.txt").render(subject=subject, **values)
        html = self.templates.get_template(f"{template}.html").render(subject=subject, **values)
        return Rendered(subject=subject, text=text, html=html)

    # -- the mailer's bookkeeping -------------------------------------------------------------
    def email(self, email_id: UUID | str) -> Email:
        return self.repository.get(UUID(str(email_id)))

    def record_sent(self, email_id: UUID | str, sent_at: datetime, transport: str) -> None:
        def command() -> tuple[None, list[Any]]:
            email = self.email(email_id)
            email.mark_sent(sent_at, transport)
            return None, [email]

        with context.acting(self._mailer_context(email_id)):
            self.execute(command)

    def record_sent_many(self, delivered: list[tuple[Email, datetime]], transport: str) -> None:
        """Several deliveries in one transaction, on the emails the mailer loaded to send.

        One of them changed since it was loaded (a cancel, another mailer) makes the commit
        conflict; then each is recorded alone on its current state, as `record_sent` does.
        """

        def part(email: Email, sent_at: datetime) -> Callable[[], tuple[None, list[Any]]]:
            def mark() -> tuple[None, list[Any]]:
                email.mark_sent(sent_at, transport)
                return None, [email]

            return mark

        parts = [(context.CallContext.from_dict(self._mailer_context(email.id)),
                  part(email, sent_at)) for email, sent_at in delivered]
        try:
            with self.serialised():
                self.run_unit(parts)
        except Exception as exc:
            if len(delivered) == 1 and not isinstance(exc, IntegrityError):
                raise
            for email, sent_at in delivered:
                self.record_sent(email.id, sent_at, transport)

    def record_failure(self, email_id: UUID | str, reason: str, failed_at: datetime,
                       permanent: bool = False) -> None:
        def command() -> tuple[None, list[Any]]:
            email = self.email(email_id)
            email.mark_failed(reason, failed_at, permanent=permanent)
            return None, [email]

        with context.acting(self._mailer_context(email_id)):
            self.execute(command)

    def _mailer_context(self, email_id: UUID | str) -> dict[str, str]:
        """Delivery events keep the correlation id of the request that queued the email
        (remembered when this process queued it; read from its first event otherwise)."""
        key = str(email_id)
        correlation = self._correlations.pop(key, None)
        if correlation is None:
            meta = next((r.state.get(META_KEY) or {} for r in self.stream(email_id)), {})
            correlation = meta.get("correlation_id") or key
        self._correlations[key] = correlation
        while len(self._correlations) > CORRELATIONS_KEPT:
            del self._correlations[next(iter(self._correlations))]
        return {"actor": "notify:mailer", "correlation_id": correlation}

    def pending(self, due_by: datetime | None = None, limit: int = 100) -> list[UUID]:
        """Emails not yet sent nor given up, oldest due first; only those due by `due_by`."""
        return self._view().pending(due_by, limit)

    def next_due(self) -> datetime | None:
        return self._view().next_due()

    def list_emails(self, query: dict[str, Any]) -> dict[str, Any]:
        return self._view().search(query)

    def _view(self) -> EmailsView:
        if self.emails is None:
            raise RuntimeError("this application was built without a read side (no engine)")
        return self.emails


def _occurred_at(envelope: dict[str, Any]) -> datetime:
    """When the source recorded the event: a replay cancels with the same time."""
    try:
        instant = datetime.fromisoformat(str(envelope.get("occurred_at")))
    except ValueError:
        return datetime.now(UTC)
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


# --- the emails read model -------------------------------------------------------------------

metadata = MetaData()
emails = Table(
    "notify_emails", metadata,
    Column("id", String(36), primary_key=True),
    Column("position", BigInteger, nullable=False, index=True),
    Column("template", String(50), nullable=False),
    Column("recipient", String(254), nullable=False, index=True),
    Column("subject", Text, nullable=False),
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
    version = 2  # 2: master_account_id and cancelled emails
    metadata = metadata

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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

    # -- queries ----------------------------------------------------------------------------
    def pending(self, due_by: datetime | None, limit: int) -> list[UUID]:
        query = select(emails.c.id).where(emails.c.status.in_(PENDING))
        if due_by is not None:
            query = query.where(emails.c.due_at <= _naive_utc(due_by))
        query = query.order_by(emails.c.due_at, emails.c.position).limit(limit)
        with self.engine.connect() as conn:
            return [UUID(r.id) for r in conn.execute(query)]

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
        query = select(pt.c.position).where(and_(pt.c.projection == self.name,
                                                 pt.c.source == NotifyApplication.service_name))
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
