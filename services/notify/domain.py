"""Notify: emails the cloud sends, from queued to sent (or given up).

Plain Python. An email's id is derived (uuid5) from what makes it unique: its idempotency key when
the rule that asks for it gives one (activation: account, resets, address), else the event that
caused it and its template. A redelivered or replayed cause finds the email it already queued
instead of queueing a twin, and a resend after a crash carries the same id (and Message-ID).
Rendering and sending happen outside: the aggregate holds the rendered message and the facts of
each delivery attempt. An email still pending can be cancelled (its master account was closed):
it is then never due and never sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import event

from concierge.domain import Aggregate
from contracts.accounts import APP_STATUSES
from contracts.errors import Conflict, Invalid
from contracts.fields import EMAIL_PATTERN
from contracts.notify import STATUSES, TEMPLATES

# Fixed forever: changing it would give every queued email a new id and send it again.
NOTIFY_NAMESPACE = UUID("9d3c1f52-7a0e-4b8d-8e21-5f6a0c4d2b97")

# The vocabulary is the contracts' (contracts/notify.py, contracts/accounts.py), defined once.
ACTIVATION, PORTAL_PASSWORD, PASSWORD_RESET_LINK, LOGIN_CODE = TEMPLATES
# Where a secret goes in a rendered body: the stored email holds this mark, never the secret,
# which the mailer asks its owner for when it sends (`Email.secret`).
SECRET_MARK = "[[secret]]"
# Why an email still pending is cancelled when its resident's tenancy ended: its address and
# bodies were erased with the tenant's key.
ERASED = "its resident's personal data was erased (the APT was reset or deleted)"
# Why an email carrying a secret is cancelled: its owner no longer answers for it.
SECRET_GONE = "what it carries (a password, a link) is no longer the account's"
UNREGISTERED = APP_STATUSES[0]
QUEUED, RETRYING, SENT, FAILED, CANCELLED = STATUSES  # FAILED: given up
PENDING = (QUEUED, RETRYING)

# Why an activation email is cancelled: the APT was deleted, so the app account it activates
# no longer works.
ACCOUNT_CLOSED = "master account closed"
# ... or reset for the next tenant (its app is to be set up again, by someone else).
ACCOUNT_RESET = "master account reset"

# Back-off after the n-th failed attempt: 1, 2, 4, ... minutes, never more than an hour apart.
# After MAX_ATTEMPTS failures (about two hours of a mail server down) the email is given up.
MAX_ATTEMPTS = 8
FIRST_RETRY = timedelta(minutes=1)
LONGEST_WAIT = timedelta(hours=1)
REASON_MAX = 500

EMAIL_MAX = 254
TEMPLATE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,49}")
SUBJECT_MAX = 255


def retry_delay(attempts: int) -> timedelta:
    """How long to wait after the `attempts`-th failure before the next try."""
    return min(FIRST_RETRY * 2 ** max(attempts - 1, 0), LONGEST_WAIT)


def activation_key(master_account_id: UUID | str, resets: int, address: str) -> str:
    """What one activation email is unique for; case is ignored, as mail servers do in practice."""
    return f"{ACTIVATION}:{UUID(str(master_account_id))}:{int(resets)}:{address.strip().lower()}"


def activation_account(idempotency_key: str | None) -> UUID | None:
    """The master account an activation key names, or None for any other key (or none).

    Emails queued before they recorded their master account are found again this way.
    """
    prefix, _, rest = (idempotency_key or "").partition(":")
    if prefix != ACTIVATION:
        return None
    try:
        return UUID(rest.partition(":")[0])
    except ValueError:
        return None


def activation_due(event_type: str, master_account_id: UUID | str,
                   data: Mapping[str, Any]) -> str | None:
    """The key of the activation email an accounts event asks for, or None when none is due.

    One activation email per master account, reset and address:
    - a new account with an email gets one;
    - an edit that adds or changes the email of an account whose app is still unregistered gets
      one to the new address, unless that address already had one since the last reset (a replay,
      a second edit to the same address, or going back to an earlier one sends nothing new);
    - a registered account gets none (its app is set up), nor does an edit keeping the address;
    - a reset emails nobody (manual: "the user is not going to receive the reset email"), but the
      next address entered after it gets one, even a known one: the app "needs to be
      re-initialized".
    Contact changes recorded before accounts published the app status carry none: nothing is due.
    """
    address = data.get("email")
    if not address:
        return None
    if event_type == "MasterAccountCreated":
        return activation_key(master_account_id, 0, address)
    if event_type != "MasterAccountContactChanged":
        return None
    if data.get("app_status") != UNREGISTERED or data.get("resets") is None:
        return None
    previous = data.get("previous_email")
    if previous and previous.strip().lower() == address.strip().lower():
        return None
    return activation_key(master_account_id, data["resets"], address)


def _validate_recipient(recipient: Any) -> None:
    # One address, no line breaks: it goes straight into the To header.
    if (not isinstance(recipient, str) or len(recipient) > EMAIL_MAX
            or not EMAIL_PATTERN.fullmatch(recipient)):
        raise Invalid.field("recipient", "Not a valid email address.")


def _validate_subject(subject: Any) -> None:
    if not isinstance(subject, str) or not subject.strip():
        raise Invalid.field("subject", "A subject is required.")
    if len(subject) > SUBJECT_MAX or "\r" in subject or "\n" in subject:
        raise Invalid.field("subject", f"A subject is one line of at most {SUBJECT_MAX} "
                                       "characters.")


def _validate_instant(value: Any, field: str) -> None:
    # A naive time would compare wrongly with the retry schedule of another zone.
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise Invalid.field(field, "A time with its UTC offset is required.")


class Email(Aggregate):
    """One message to one recipient, caused by one event and rendered from one template."""

    @staticmethod
    def create_id(cause_event_id: UUID | str, template: str,
                  idempotency_key: str | None = None) -> UUID:
        """The one id an email with this key can have; without a key, this cause and template.

        Emails queued before keys existed have the second kind: it never changes, or a replay of
        their cause would queue them again.
        """
        if idempotency_key:
            return uuid5(NOTIFY_NAMESPACE, f"email-key:{idempotency_key}")
        return uuid5(NOTIFY_NAMESPACE, f"email:{UUID(str(cause_event_id))}:{template}")

    @classmethod
    def queue(
        cls,
        *,
        cause_event_id: UUID | str,
        template: str,
        recipient: str,
        subject: str,
        text: str,
        html: str,
        apartment_id: UUID | None = None,
        installer_id: UUID | None = None,
        idempotency_key: str | None = None,
        master_account_id: UUID | str | None = None,
        secret: dict[str, Any] | None = None,
    ) -> Email:
        """A rendered email waiting for the mailer; `master_account_id` is the account an
        activation email activates (closing that account cancels it)."""
        try:
            cause = UUID(str(cause_event_id))
        except ValueError:
            raise Invalid.field("cause_event_id", "Not a valid event id.") from None
        if not isinstance(template, str) or not TEMPLATE_PATTERN.fullmatch(template):
            raise Invalid.field("template", "Not a template name.")
        _validate_recipient(recipient)
        _validate_subject(subject)
        if not isinstance(text, str) or not text.strip():
            raise Invalid.field("text", "The plain-text body is required.")
        if not isinstance(html, str) or not html.strip():
            raise Invalid.field("html", "The HTML body is required.")
        if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                            or not idempotency_key.strip()):
            raise Invalid.field("idempotency_key", "Not an idempotency key.")
        account: UUID | None = None
        if master_account_id is not None:
            try:
                account = UUID(str(master_account_id))
            except ValueError:
                raise Invalid.field("master_account_id", "Not a valid account id.") from None
        return cls(
            cause_event_id=cause,
            template=template,
            recipient=recipient,
            subject=subject,
            text=text,
            html=html,
            apartment_id=apartment_id,
            installer_id=installer_id,
            idempotency_key=idempotency_key,
            master_account_id=account,
            secret=dict(secret) if secret else None,
        )

    @event("EmailQueued")
    def __init__(
        self,
        cause_event_id: UUID,
        template: str,
        recipient: str,
        subject: str,
        text: str,
        html: str,
        apartment_id: UUID | None,
        installer_id: UUID | None,
        idempotency_key: str | None = None,  # added later: older EmailQueued replay with None
        master_account_id: UUID | None = None,  # likewise (their activation key names it)
        secret: dict[str, Any] | None = None,  # likewise: what SECRET_MARK stands for
    ) -> None:
        self.cause_event_id = cause_event_id
        self.secret = secret
        self.idempotency_key = idempotency_key
        self.master_account_id = master_account_id
        self.template = template
        self.recipient = recipient
        self.subject = subject
        self.text = text
        self.html = html
        self.apartment_id = apartment_id
        self.installer_id = installer_id
        self.status = QUEUED
        self.attempts = 0
        self.retry_at: datetime | None = None
        self.last_error: str | None = None
        self.sent_at: datetime | None = None
        self.transport: str | None = None
        self.cancelled_at: datetime | None = None
        self.cancel_reason: str | None = None

    @property
    def pending(self) -> bool:
        """Still to be sent: neither delivered, given up nor cancelled."""
        return self.status in PENDING

    @property
    def account(self) -> UUID | None:
        """The master account this email activates, also for emails queued before it was
        recorded; None for any other email."""
        return self.master_account_id or activation_account(self.idempotency_key)

    def is_due(self, now: datetime) -> bool:
        """Pending, and not waiting out the back-off of a failed attempt."""
        return self.pending and (self.retry_at is None or self.retry_at <= now)

    def mark_sent(self, sent_at: datetime, transport: str) -> None:
        """The transport accepted the message. Reported twice (a race of two mailers), the
        second report records nothing: the email was sent, once as far as we know.

        Reported after a cancel, it is still recorded: the mailer handed the message over
        before the cancel reached it, and the log must say the resident got it.
        """
        _validate_instant(sent_at, "sent_at")
        if not isinstance(transport, str) or not transport:
            raise Invalid.field("transport", "The transport is required.")
        if self.status == SENT:
            return
        self._record_sent(sent_at=sent_at, transport=transport)

    @event("EmailSent")
    def _record_sent(self, sent_at: datetime, transport: str) -> None:
        self.status = SENT
        self.sent_at = sent_at
        self.transport = transport
        self.retry_at = None

    def mark_failed(self, reason: str, failed_at: datetime, permanent: bool = False) -> None:
        """An attempt failed: retry after a back-off, or give up after MAX_ATTEMPTS (at once when
        the failure is permanent, such as a recipient the mail server refuses)."""
        _validate_instant(failed_at, "failed_at")
        if self.status == CANCELLED:
            return  # an attempt that raced the cancel: there is nothing left to retry
        if self.status == SENT:
            raise Conflict("The email was already sent.")
        if self.status == FAILED:
            raise Conflict("The email was already given up.")
        attempts = self.attempts + 1
        gave_up = permanent or attempts >= MAX_ATTEMPTS
        self._record_failure(
            reason=(str(reason) or "unknown error")[:REASON_MAX],
            attempts=attempts,
            failed_at=failed_at,
            retry_at=None if gave_up else failed_at + retry_delay(attempts),
            gave_up=gave_up,
        )

    @event("EmailFailed")
    def _record_failure(self, reason: str, attempts: int, failed_at: datetime,
                        retry_at: datetime | None, gave_up: bool) -> None:
        self.attempts = attempts
        self.last_error = reason
        self.retry_at = retry_at
        self.status = FAILED if gave_up else RETRYING

    def cancel(self, reason: str, cancelled_at: datetime) -> None:
        """Not to be sent after all (its master account was closed). Only a pending email is
        cancelled: a sent, given-up or already cancelled one records nothing, so a repeated or
        replayed cause changes nothing."""
        _validate_instant(cancelled_at, "cancelled_at")
        if not isinstance(reason, str) or not reason.strip():
            raise Invalid.field("reason", "A reason is required.")
        if not self.pending:
            return
        self._record_cancelled(reason=reason[:REASON_MAX], cancelled_at=cancelled_at)

    @event("EmailCancelled")
    def _record_cancelled(self, reason: str, cancelled_at: datetime) -> None:
        self.status = CANCELLED
        self.cancelled_at = cancelled_at
        self.cancel_reason = reason
        self.retry_at = None


class DevicePush(Aggregate):
    """A command that devices queued, to be pushed to its device once (contracts/traffic.py,
    "Pushes"): pending, then sent, or expired when its deadline passed first.

    Its id is derived from the command's: a replayed or redelivered `CommandQueued` finds the
    push it already made, so no stream replay pushes twice.
    """

    @staticmethod
    def create_id(command_id: str, **_: Any) -> UUID:
        return uuid5(NOTIFY_NAMESPACE, f"push:{command_id}")

    @event("PushQueued")
    def __init__(self, command_id: str, device_id: str, mac: str, kind: str,
                 params: dict[str, Any], deadline: str) -> None:
        self.command_id = command_id
        self.device_id = device_id
        self.mac = mac
        self.kind = kind
        self.params = params
        self.deadline = deadline
        self.state = "pending"

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    def seconds_left(self, now: datetime) -> float:
        return (datetime.fromisoformat(self.deadline) - now).total_seconds()

    def mark_sent(self, at: datetime) -> bool:
        if not self.pending:
            return False
        self._sent(command_id=self.command_id, device_id=self.device_id, mac=self.mac,
                   sent_at=at.isoformat())
        return True

    @event("PushSent")
    def _sent(self, command_id: str, device_id: str, mac: str, sent_at: str) -> None:
        self.state = "sent"

    def mark_expired(self, at: datetime) -> bool:
        if not self.pending:
            return False
        self._expired(command_id=self.command_id, device_id=self.device_id,
                      expired_at=at.isoformat())
        return True

    @event("PushExpired")
    def _expired(self, command_id: str, device_id: str, expired_at: str) -> None:
        self.state = "expired"
