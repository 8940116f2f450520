"""Notify's application: the policies that queue emails, rendering, and the mailer's bookkeeping.

The emails read model (`services/notify/projections.py`, fed by notify's own events) tells the
mailer what is due and operators what was sent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from marshmallow import Schema

from concierge import context
from concierge.records import META_KEY
from concierge.store import ServiceApplication
from concierge.vault import Personal, PersonalData
from contracts.accounts import (
    LoginChallengedSchema,
    MasterAccountClosedSchema,
    MasterAccountContactChangedSchema,
    MasterAccountCreatedSchema,
    MasterAccountResetSchema,
    PasswordIssuedSchema,
    PasswordResetRequestedSchema,
)
from contracts.devices import CommandQueuedSchema
from contracts.errors import Invalid
from services.notify.domain import (
    ACCOUNT_CLOSED,
    ACCOUNT_RESET,
    ACTIVATION,
    LOGIN_CODE,
    PASSWORD_RESET_LINK,
    PORTAL_PASSWORD,
    SECRET_MARK,
    DevicePush,
    Email,
    activation_due,
)
from services.notify.projections import NotifyViews

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
    "MasterAccountReset": MasterAccountResetSchema,
    "PasswordIssued": PasswordIssuedSchema,
    "PasswordResetRequested": PasswordResetRequestedSchema,
    "LoginChallenged": LoginChallengedSchema,
}
# Accounts events whose email carries a secret, with the template and what the secret is.
SECRET_EMAILS = {"PasswordIssued": (PORTAL_PASSWORD, "password", "issue"),
                 "PasswordResetRequested": (PASSWORD_RESET_LINK, "reset_link", "request"),
                 "LoginChallenged": (LOGIN_CODE, "login_code", "challenge")}


# Devices' commands, each pushed to its device once (services/notify/pusher.py).
DEVICES_EVENTS: dict[str, type[Schema]] = {"CommandQueued": CommandQueuedSchema}


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


def tenant_mail(attributes: dict[str, Any]) -> str | None:
    """The key of an activation email's tenant (its master account and resets: the
    activation key names both); other emails hold no resident's data."""
    key = str(attributes.get("idempotency_key") or "")
    prefix, _, rest = key.partition(":")
    account, _, rest = rest.partition(":")
    resets = rest.partition(":")[0]
    if prefix != ACTIVATION or not account or not resets.isdigit():
        return None
    return f"mail:{account}:{resets}"


# A resident's address and the bodies naming it, sealed with the tenancy's key: the reset or
# close of its master account destroys it (NotifyKeys), and the email reads as None.
PERSONAL_DATA = PersonalData({"Email.EmailQueued": Personal(
    tenant_mail, ("recipient", "subject", "text", "html", "idempotency_key"))})


class NotifyApplication(ServiceApplication):
    service_name = "notify"
    personal_data = PERSONAL_DATA

    def __init__(self, env: dict[str, str] | None = None, engine: Any = None,
                 templates: Path = TEMPLATES_DIR, sender: MailSender | None = None,
                 portal_url: str = "http://127.0.0.1:8000") -> None:
        super().__init__(env=env, engine=engine)
        self.portal_url = portal_url
        self.templates = template_environment(templates)
        # Where the mailer delivers (services/notify/declaration.py picks it from the settings).
        self.sender = sender
        # The emails read model's queries; none without a read side.
        self.views = NotifyViews(engine) if engine is not None else None
        # Email id -> correlation id of its cause, for the mailer's events (oldest dropped).
        self._correlations: dict[str, str] = {}

    # -- policies ----------------------------------------------------------------------------
    def on_accounts_event(self, envelope: dict[str, Any]) -> list[Aggregate]:
        """The activation email a master account's event asks for, queued once: one per account,
        reset and address (the rule is `activation_due`); or, when the account is closed, its
        activation emails still pending, cancelled. Its `data` arrives loaded through its
        contract schema (`ACCOUNTS_EVENTS`, by the chassis)."""
        if envelope["type"] in ("MasterAccountClosed", "MasterAccountReset"):
            # Closed, or reset for the next tenant: what the account's activation emails
            # still pending would activate is gone, and so is the address (its key goes).
            return self._cancel_activation(envelope)
        if envelope["type"] in SECRET_EMAILS:
            return self._queue_secret_email(envelope, envelope["data"])
        return self._queue_activation(envelope, envelope["data"])

    def _queue_secret_email(self, envelope: dict[str, Any], data: dict[str, Any]
                            ) -> list[Aggregate]:
        """One email per issued password or reset link, with a mark where the secret goes:
        accounts answers for it when the mailer sends (services/notify/mailer.py), so neither
        notify's store nor the bus ever holds it."""
        if not data.get("email"):
            return []
        template, kind, counter = SECRET_EMAILS[envelope["type"]]
        account_id, issue = str(envelope["stream_id"]), int(data[counter])
        key = f"{template}:{account_id}:{issue}"
        email_id = Email.create_id(envelope["event_id"], template, key)
        if email_id in self.repository:
            return []
        actor = str(envelope.get("actor") or "")
        inviter = actor.partition(":")[2] if actor.startswith("installer:") else ""
        rendered = self.render(template, username=data.get("username") or "",
                               reason=data.get("reason"), role=data.get("role"),
                               password=SECRET_MARK,
                               link=f"{self.portal_url}/reset-password?token={SECRET_MARK}",
                               expires_at=data.get("expires_at"),
                               inviter=f"Installer {inviter}" if inviter else "Your installer")
        try:
            email = Email.queue(cause_event_id=envelope["event_id"], template=template,
                                recipient=data["email"], subject=rendered.subject,
                                text=rendered.text, html=rendered.html, idempotency_key=key,
                                secret={"kind": kind, "account_id": account_id,
                                        "issue": issue})
        except Invalid as exc:
            log.warning("no password email for %s: %s", envelope.get("event_id"), exc.detail)
            return []
        self._correlations[str(email.id)] = context.current().correlation_id
        return [email]

    def cancel_email(self, email_id: UUID | str, reason: str, at: datetime) -> None:
        """A pending email that will not be sent after all (what it carries is gone)."""
        def command() -> tuple[None, list[Any]]:
            email = self.email(email_id)
            email.cancel(reason, at)
            return None, [email]

        with context.acting(self._mailer_context(email_id)):
            self.execute(command)

    def lookups(self, envelopes: list[dict[str, Any]]) -> list[UUID]:
        """The email ids `on_accounts_event` will look for in these events (one query for a
        whole batch instead of two per event)."""
        ids = []
        for envelope in envelopes:
            kind = str(envelope.get("type"))
            if kind in SECRET_EMAILS:
                template, _, counter = SECRET_EMAILS[kind]
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    ids.append(Email.create_id(envelope["event_id"], template,
                                               f"{template}:{envelope['stream_id']}:"
                                               f"{int(envelope['data'][counter])}"))
                continue
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
        reason = ACCOUNT_CLOSED if envelope["type"] == "MasterAccountClosed" else ACCOUNT_RESET
        emails = []
        for email_id in self._pending_activation(envelope["stream_id"]):
            email = self.email(email_id)
            if email.pending:  # a mailer may have delivered it since the view was read
                email.cancel(reason, cancelled_at)
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
        with context.acting(self._mailer_context(email_id)):
            self.execute(self._sent(email_id, sent_at, transport))

    def record_sent_many(self, delivered: Sequence[tuple[Email, datetime]],
                         transport: str) -> None:
        """Several deliveries, committed together; each on the email's current state, so one
        that changed since the mailer loaded it (a cancel, another mailer) fails alone."""
        self.execute_all([(self._mailer_context(email.id), self._sent(email.id, sent_at, transport))
                          for email, sent_at in delivered])

    def _sent(self, email_id: UUID | str, sent_at: datetime, transport: str
              ) -> Callable[[], tuple[None, list[Any]]]:
        def command() -> tuple[None, list[Any]]:
            email = self.email(email_id)
            email.mark_sent(sent_at, transport)
            return None, [email]

        return command

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

    # -- device pushes -----------------------------------------------------------------------
    def on_devices_event(self, envelope: dict[str, Any]) -> list[Aggregate]:
        """A command devices queued: its push, made once (its id is derived from the
        command's, and the chassis records it with the event's tracking position)."""
        data = envelope["data"]
        command_id = envelope["stream_id"]
        if self._find(DevicePush.create_id(command_id)) is not None:
            return []
        return [DevicePush(command_id=command_id, device_id=str(data["device_id"]),
                           mac=str(data["mac"]), kind=str(data["kind"]),
                           params=dict(data["params"]), deadline=str(data["deadline"]))]

    def _find(self, aggregate_id: UUID) -> Any:
        found = self.get_many([aggregate_id])
        return found.get(aggregate_id)

    def pending_pushes(self, limit: int = 500) -> list[dict[str, Any]]:
        """Pushes not yet sent nor expired, oldest first, with what each carries."""
        return self._view().pending_pushes(limit)

    def record_pushes(self, sent: Sequence[UUID], expired: Sequence[UUID], at: datetime) -> None:
        """What the pusher did, in one commit: these pushes are sent, those expired."""
        def command() -> tuple[None, list[Any]]:
            found = self.get_many([*sent, *expired])
            changed = [push for uid in sent if isinstance(push := found.get(uid), DevicePush)
                       and push.mark_sent(at)]
            changed += [push for uid in expired if isinstance(push := found.get(uid), DevicePush)
                        and push.mark_expired(at)]
            return None, changed

        with context.acting({"actor": "notify:pusher", "role": "system"}):
            self.execute(command)

    def pending(self, due_by: datetime | None = None, limit: int = 100) -> list[UUID]:
        """Emails not yet sent nor given up, oldest due first; only those due by `due_by`."""
        return self._view().pending(due_by, limit)

    def next_due(self) -> datetime | None:
        return self._view().next_due()

    def list_emails(self, query: dict[str, Any]) -> dict[str, Any]:
        return self._view().search(query)

    def _view(self) -> NotifyViews:
        if self.views is None:
            raise RuntimeError("this application was built without a read side (no engine)")
        return self.views


def _occurred_at(envelope: dict[str, Any]) -> datetime:
    """When the source recorded the event: a replay cancels with the same time."""
    try:
        instant = datetime.fromisoformat(str(envelope.get("occurred_at")))
    except ValueError:
        return datetime.now(UTC)
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)
